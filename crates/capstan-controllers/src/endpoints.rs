//! The Endpoints controller (upstream's `pkg/controller/endpoint`): for every Service with a
//! selector, an Endpoints object of the same name listing the matching pods' IPs, ready ones in
//! `addresses` and the others in `notReadyAddresses`, grouped into subsets by resolved ports.
//! Also holds the Service-keyed work loop and pod helpers shared with `endpointslice`.

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt::Display;
use std::future::Future;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use crate::replicaset::Trigger;

/// Periodic resync of every Service (repairs hand-edited or deleted objects).
const RESYNC: Duration = Duration::from_secs(30);
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Label marking the Endpoints/slices of a headless Service (upstream's).
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";

#[derive(Debug, thiserror::Error)]
pub enum EndpointsError {
    #[error("reading Endpoints {0}")]
    Get(String, #[source] kube::Error),
    #[error("writing Endpoints {0}")]
    Write(String, #[source] kube::Error),
    #[error("deleting Endpoints {0}")]
    Delete(String, #[source] kube::Error),
}

/// The changes that wake a Service-keyed controller.
pub struct ServiceTriggers {
    pub services: Trigger<Service>,
    pub pods: Trigger<Pod>,
}

/// Run the Endpoints controller until `stop`.
pub async fn run(
    client: Client,
    pods: Store<Pod>,
    services: Store<Service>,
    triggers: ServiceTriggers,
    stop: CancellationToken,
) {
    let (p, s) = (pods.clone(), services.clone());
    run_service_loop(
        "endpoints",
        services,
        triggers,
        stop,
        move |ns: String, name: String| {
            let (client, p, s) = (client.clone(), p.clone(), s.clone());
            async move { sync(&client, &p, &s, &ns, &name).await }
        },
    )
    .await
}

/// Runs `sync(namespace, name)` for every Service key woken by `triggers` (a pod event wakes
/// every Service of its namespace, so a pod whose labels stop matching is dropped too), one at
/// a time, retrying failures with backoff and resyncing everything periodically. Deleted
/// Services are synced too (unlike kube-runtime's `Controller`), so their objects can go.
pub(crate) async fn run_service_loop<F, Fut, E>(
    what: &'static str,
    services: Store<Service>,
    mut triggers: ServiceTriggers,
    stop: CancellationToken,
    mut sync: F,
) where
    F: FnMut(String, String) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Display,
{
    tokio::select! {
        _ = stop.cancelled() => return,
        r = services.wait_until_ready() => if r.is_err() { return },
    }
    let mut queue = Queue::default();
    let mut next_resync = Instant::now();
    loop {
        if Instant::now() >= next_resync {
            for s in services.state() {
                queue.push(s.namespace().unwrap_or_default(), s.name_any());
            }
            next_resync = Instant::now() + RESYNC;
        }
        queue.promote_due();
        // Take whatever triggers are ready without waiting, so a burst coalesces.
        let mut closed = false;
        loop {
            match triggers.services.next().now_or_never() {
                Some(Some(Ok(s))) => queue.push(s.namespace().unwrap_or_default(), s.name_any()),
                Some(None) => closed = true,
                _ => break,
            }
            if closed {
                break;
            }
        }
        loop {
            match triggers.pods.next().now_or_never() {
                Some(Some(Ok(p))) => queue.push_namespace(&services, &p),
                Some(None) => closed = true,
                _ => break,
            }
            if closed {
                break;
            }
        }
        if closed || stop.is_cancelled() {
            return;
        }
        if let Some((ns, name)) = queue.pop() {
            let result = tokio::select! {
                _ = stop.cancelled() => return,
                r = sync(ns.clone(), name.clone()) => r,
            };
            match result {
                Ok(()) => queue.succeeded(&ns, &name),
                Err(e) => {
                    let delay = queue.failed(ns.clone(), name.clone());
                    tracing::warn!(controller = what, service = %format!("{ns}/{name}"),
                        error = %e, ?delay, "sync failed");
                }
            }
            continue;
        }
        let wake = queue
            .next_retry()
            .map_or(next_resync, |t| t.min(next_resync));
        tokio::select! {
            _ = stop.cancelled() => return,
            s = triggers.services.next() => match s {
                Some(Ok(s)) => queue.push(s.namespace().unwrap_or_default(), s.name_any()),
                Some(Err(_)) => {}
                None => return,
            },
            p = triggers.pods.next() => match p {
                Some(Ok(p)) => queue.push_namespace(&services, &p),
                Some(Err(_)) => {}
                None => return,
            },
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
    }
}

/// A deduplicating FIFO of Service keys with per-key retry backoff.
#[derive(Default)]
struct Queue {
    order: VecDeque<(String, String)>,
    queued: HashSet<(String, String)>,
    /// Keys waiting for a retry, and when.
    retry_at: HashMap<(String, String), Instant>,
    /// Consecutive failures per key (cleared on success).
    failures: HashMap<(String, String), u32>,
}

impl Queue {
    fn push(&mut self, ns: String, name: String) {
        let key = (ns, name);
        if self.queued.insert(key.clone()) {
            self.order.push_back(key);
        }
    }

    fn push_namespace(&mut self, services: &Store<Service>, pod: &Pod) {
        let ns = pod.namespace().unwrap_or_default();
        for s in services.state() {
            if s.namespace().as_deref() == Some(ns.as_str()) {
                self.push(ns.clone(), s.name_any());
            }
        }
    }

    fn pop(&mut self) -> Option<(String, String)> {
        let key = self.order.pop_front()?;
        self.queued.remove(&key);
        Some(key)
    }

    fn succeeded(&mut self, ns: &str, name: &str) {
        let key = (ns.to_string(), name.to_string());
        self.failures.remove(&key);
        self.retry_at.remove(&key);
    }

    /// Records a failure and returns the delay before the retry.
    fn failed(&mut self, ns: String, name: String) -> Duration {
        let key = (ns, name);
        let n = self.failures.entry(key.clone()).or_insert(0);
        *n = n.saturating_add(1);
        let delay = BACKOFF_BASE
            .saturating_mul(1u32 << (*n).min(16).saturating_sub(1))
            .min(BACKOFF_MAX);
        self.retry_at.insert(key, Instant::now() + delay);
        delay
    }

    /// Moves retries whose time has come into the queue.
    fn promote_due(&mut self) {
        let now = Instant::now();
        let due: Vec<(String, String)> = self
            .retry_at
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            self.retry_at.remove(&key);
            self.push(key.0, key.1);
        }
    }

    fn next_retry(&self) -> Option<Instant> {
        self.retry_at.values().min().copied()
    }
}

/// The Service's selector, if it has a non-empty one and is not an ExternalName Service.
pub(crate) fn selector_of(svc: &Service) -> Option<&BTreeMap<String, String>> {
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    spec.selector.as_ref().filter(|s| !s.is_empty())
}

/// Pods of the Service's namespace matching `selector`, sorted by name.
pub(crate) fn selected_pods(
    pods: &Store<Pod>,
    ns: &str,
    selector: &BTreeMap<String, String>,
) -> Vec<std::sync::Arc<Pod>> {
    let mut out: Vec<_> = pods
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(ns))
        .filter(|p| {
            let labels = p.labels();
            selector.iter().all(|(k, v)| labels.get(k) == Some(v))
        })
        .collect();
    out.sort_by_key(|p| p.name_any());
    out
}

/// The pod's primary IP, if it has one.
pub(crate) fn pod_ip(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    status
        .pod_ip
        .clone()
        .filter(|ip| !ip.is_empty())
        .or_else(|| status.pod_ips.as_ref()?.first().map(|p| p.ip.clone()))
}

/// Whether the pod's Ready condition is True.
pub(crate) fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Whether the pod finished for good (upstream's `ShouldPodBeInEndpoints` excludes these).
pub(crate) fn pod_finished(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    matches!(phase, Some("Succeeded") | Some("Failed"))
}

/// The endpoint ports of `pod` for each Service port: `targetPort` as a number, or a named
/// container port of the pod with the same protocol (ports the pod lacks are left out).
/// Sorted, so pods with the same ports compare equal.
pub(crate) fn resolve_ports(svc: &Service, pod: &Pod) -> Vec<EndpointPort> {
    let Some(spec) = svc.spec.as_ref() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for sp in spec.ports.iter().flatten() {
        let protocol = sp.protocol.clone().unwrap_or_else(|| "TCP".into());
        let port = match &sp.target_port {
            None => Some(sp.port),
            Some(IntOrString::Int(n)) if *n == 0 => Some(sp.port),
            Some(IntOrString::Int(n)) => Some(*n),
            Some(IntOrString::String(name)) => match name.parse::<i32>() {
                Ok(n) => Some(n),
                Err(_) => named_port(pod, name, &protocol),
            },
        };
        if let Some(port) = port {
            out.push(EndpointPort {
                name: sp.name.clone().filter(|n| !n.is_empty()),
                port,
                protocol: Some(protocol),
                app_protocol: sp.app_protocol.clone(),
            });
        }
    }
    out.sort_by(|a, b| (&a.name, a.port, &a.protocol).cmp(&(&b.name, b.port, &b.protocol)));
    out
}

fn named_port(pod: &Pod, name: &str, protocol: &str) -> Option<i32> {
    let spec = pod.spec.as_ref()?;
    spec.containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| {
            p.name.as_deref() == Some(name) && p.protocol.as_deref().unwrap_or("TCP") == protocol
        })
        .map(|p| p.container_port)
}

/// The reference an endpoint carries to its pod.
pub(crate) fn target_ref(pod: &Pod) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".into()),
        namespace: pod.namespace(),
        name: Some(pod.name_any()),
        uid: pod.uid(),
        ..ObjectReference::default()
    }
}

/// The pod's hostname when it asks for one under this Service (`hostname` + `subdomain`).
pub(crate) fn endpoint_hostname(svc: &Service, pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let hostname = spec.hostname.as_deref().filter(|h| !h.is_empty())?;
    (spec.subdomain.as_deref() == Some(svc.name_any().as_str())
        && pod.namespace() == svc.namespace())
    .then(|| hostname.to_string())
}

/// Labels of the objects derived from a Service: its own plus the headless marker.
pub(crate) fn derived_labels(svc: &Service) -> BTreeMap<String, String> {
    let mut labels = svc.labels().clone();
    let headless = svc
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_deref())
        .is_some_and(|ip| ip == "None");
    if headless {
        labels.insert(HEADLESS_LABEL.into(), String::new());
    } else {
        labels.remove(HEADLESS_LABEL);
    }
    labels
}

/// Whether this is the `default/kubernetes` Service, whose endpoints the API servers own.
pub(crate) fn is_apiserver_service(ns: &str, name: &str) -> bool {
    ns == "default" && name == "kubernetes"
}

/// The subsets for a Service from its selected pods.
pub fn desired_subsets(svc: &Service, pods: &[std::sync::Arc<Pod>]) -> Vec<EndpointSubset> {
    let publish_not_ready = svc
        .spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false);
    let has_ports = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .is_some_and(|p| !p.is_empty());
    // Keyed by the serialized port list so equal port sets share a subset.
    let mut groups: BTreeMap<String, EndpointSubset> = BTreeMap::new();
    for pod in pods {
        if pod_finished(pod) || (pod.metadata.deletion_timestamp.is_some() && !publish_not_ready) {
            continue;
        }
        let Some(ip) = pod_ip(pod) else { continue };
        let ports = resolve_ports(svc, pod);
        if has_ports && ports.is_empty() {
            continue;
        }
        let address = EndpointAddress {
            ip,
            hostname: endpoint_hostname(svc, pod),
            node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            target_ref: Some(target_ref(pod)),
        };
        let key = serde_json::to_string(&ports).unwrap_or_default();
        let subset = groups.entry(key).or_insert_with(|| EndpointSubset {
            ports: (!ports.is_empty()).then_some(ports),
            ..EndpointSubset::default()
        });
        let list = if publish_not_ready || pod_ready(pod) {
            subset.addresses.get_or_insert_with(Vec::new)
        } else {
            subset.not_ready_addresses.get_or_insert_with(Vec::new)
        };
        list.push(address);
    }
    let mut subsets: Vec<EndpointSubset> = groups.into_values().collect();
    for s in &mut subsets {
        for list in [&mut s.addresses, &mut s.not_ready_addresses]
            .into_iter()
            .flatten()
        {
            list.sort_by(|a, b| a.ip.cmp(&b.ip));
        }
    }
    subsets
}

async fn sync(
    client: &Client,
    pods: &Store<Pod>,
    services: &Store<Service>,
    ns: &str,
    name: &str,
) -> Result<(), EndpointsError> {
    if is_apiserver_service(ns, name) {
        return Ok(());
    }
    let key = format!("{ns}/{name}");
    let api = Api::<Endpoints>::namespaced(client.clone(), ns);
    let Some(svc) = services.get(&ObjectRef::new(name).within(ns)) else {
        // The Service is gone: so are its Endpoints (upstream sets no ownerReference).
        return match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
            Err(e) => Err(EndpointsError::Delete(key, e)),
        };
    };
    let Some(selector) = selector_of(&svc) else {
        // Endpoints of Services without a selector belong to whoever wrote them.
        return Ok(());
    };
    let subsets = desired_subsets(&svc, &selected_pods(pods, ns, selector));
    let labels = derived_labels(&svc);
    let existing = match api.get_opt(name).await {
        Ok(e) => e,
        Err(e) => return Err(EndpointsError::Get(key, e)),
    };
    let subsets_opt = (!subsets.is_empty()).then_some(subsets);
    match existing {
        None => {
            let mut ep = Endpoints {
                subsets: subsets_opt,
                ..Endpoints::default()
            };
            ep.metadata.name = Some(name.to_string());
            ep.metadata.labels = Some(labels);
            match api.create(&PostParams::default(), &ep).await {
                Ok(_) => Ok(()),
                Err(e) => Err(EndpointsError::Write(key, e)),
            }
        }
        Some(mut ep) => {
            let same_subsets =
                ep.subsets.as_ref().filter(|s| !s.is_empty()) == subsets_opt.as_ref();
            if same_subsets && ep.labels() == &labels {
                return Ok(());
            }
            ep.subsets = subsets_opt;
            ep.metadata.labels = Some(labels);
            ep.meta_mut().managed_fields = None;
            match api.replace(name, &PostParams::default(), &ep).await {
                Ok(_) => Ok(()),
                Err(e) => Err(EndpointsError::Write(key, e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn pod(name: &str, ip: &str, ready: bool, port_name: &str, port: i32) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}")},
                "spec": {"containers": [{"name": "c", "image": "i",
                    "ports": [{"name": port_name, "containerPort": port}]}]},
                "status": {"podIP": ip, "conditions": [
                    {"type": "Ready", "status": if ready { "True" } else { "False" }}]}
            }))
            .unwrap(),
        )
    }

    fn svc(target: serde_json::Value, publish: bool) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "s", "namespace": "ns"},
            "spec": {"selector": {"app": "a"}, "publishNotReadyAddresses": publish,
                "ports": [{"name": "web", "port": 80, "targetPort": target}]}
        }))
        .unwrap()
    }

    #[test]
    fn queue_dedups_and_backs_off() {
        let mut q = Queue::default();
        q.push("a".into(), "x".into());
        q.push("a".into(), "x".into());
        assert_eq!(q.pop(), Some(("a".into(), "x".into())));
        assert_eq!(q.pop(), None);
        let first = q.failed("a".into(), "x".into());
        let second = q.failed("a".into(), "x".into());
        assert!(second > first && q.next_retry().is_some());
        q.promote_due();
        assert_eq!(q.pop(), None, "not due yet");
        q.succeeded("a", "x");
        assert!(q.next_retry().is_none() && q.failures.is_empty());
    }

    #[test]
    fn named_ports_split_subsets_and_readiness_splits_addresses() {
        let pods = vec![
            pod("a", "10.0.0.2", true, "http", 8080),
            pod("b", "10.0.0.1", false, "http", 8080),
            pod("c", "10.0.0.3", true, "http", 9090),
            pod("d", "10.0.0.4", true, "other", 1),
        ];
        let subsets = desired_subsets(&svc(serde_json::json!("http"), false), &pods);
        assert_eq!(subsets.len(), 2);
        let s8080 = subsets
            .iter()
            .find(|s| s.ports.as_ref().unwrap()[0].port == 8080)
            .unwrap();
        assert_eq!(s8080.addresses.as_ref().unwrap()[0].ip, "10.0.0.2");
        assert_eq!(
            s8080.not_ready_addresses.as_ref().unwrap()[0].ip,
            "10.0.0.1"
        );
        let published = desired_subsets(&svc(serde_json::json!(8080), true), &pods);
        assert_eq!(published.len(), 1);
        assert_eq!(published[0].addresses.as_ref().unwrap().len(), 4);
        assert!(published[0].not_ready_addresses.is_none());
    }
}
