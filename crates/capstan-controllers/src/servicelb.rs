//! ServiceLB, the built-in load balancer (k3s's role): every LoadBalancer Service without a
//! loadBalancerClass gets status.loadBalancer.ingress = the InternalIPs of the Ready nodes (VIP
//! mode), and the service proxy on each node serves those addresses. Services that stop being
//! LoadBalancers lose the ingress again.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{LoadBalancerIngress, Node, Service};
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::{self, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Level-triggered: reconcile everything this often even without events.
const RESYNC: Duration = Duration::from_secs(30);
/// Coalesces bursts of events into one pass.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

async fn reflect<K>(api: Api<K>, writer: Writer<K>, changed: Arc<Notify>, stop: CancellationToken)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer);
    let mut stream = std::pin::pin!(stream);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            ev = stream.next() => match ev {
                Some(Ok(_)) => changed.notify_one(),
                Some(Err(e)) => tracing::debug!(error = %e, "servicelb watch"),
                None => return,
            },
        }
    }
}

/// The InternalIPs of Ready nodes, sorted.
pub fn node_addresses(nodes: &[Arc<Node>]) -> Vec<String> {
    let mut out = BTreeSet::new();
    for n in nodes {
        let Some(status) = n.status.as_ref() else {
            continue;
        };
        let ready = status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        if !ready {
            continue;
        }
        for a in status.addresses.iter().flatten() {
            if a.type_ == "InternalIP" {
                out.insert(a.address.clone());
            }
        }
    }
    out.into_iter().collect()
}

/// The ingress `svc` should have, or None when ServiceLB leaves it alone.
pub fn desired_ingress(svc: &Service, addresses: &[String]) -> Option<Vec<LoadBalancerIngress>> {
    let spec = svc.spec.as_ref()?;
    if spec.load_balancer_class.is_some() {
        return None;
    }
    if spec.type_.as_deref() != Some("LoadBalancer") {
        return Some(Vec::new());
    }
    Some(
        addresses
            .iter()
            .map(|ip| LoadBalancerIngress {
                ip: Some(ip.clone()),
                ip_mode: Some("VIP".into()),
                ..Default::default()
            })
            .collect(),
    )
}

fn current_ingress(svc: &Service) -> Vec<LoadBalancerIngress> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.clone())
        .unwrap_or_default()
}

async fn reconcile(client: &Client, services: &Store<Service>, nodes: &Store<Node>) {
    let addresses = node_addresses(&nodes.state());
    for svc in services.state() {
        let Some(want) = desired_ingress(&svc, &addresses) else {
            continue;
        };
        if current_ingress(&svc) == want {
            continue;
        }
        let (Some(ns), Some(name)) = (&svc.metadata.namespace, &svc.metadata.name) else {
            continue;
        };
        let api: Api<Service> = Api::namespaced(client.clone(), ns);
        let patch = serde_json::json!({"status": {"loadBalancer": {"ingress": want}}});
        match api
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                tracing::info!(service = %format!("{ns}/{name}"), ingress = ?addresses, "servicelb: ingress set")
            }
            Err(e) => {
                tracing::warn!(service = %format!("{ns}/{name}"), error = %e, "servicelb: setting ingress")
            }
        }
    }
}

/// [`run`] when `enabled`, else nothing.
pub async fn run_if(enabled: bool, client: Client, stop: CancellationToken) {
    if enabled {
        run(client, stop).await;
    }
}

/// Runs ServiceLB until `stop`.
pub async fn run(client: Client, stop: CancellationToken) {
    let changed = Arc::new(Notify::new());
    let (services, svc_writer) = reflector::store::<Service>();
    let (nodes, node_writer) = reflector::store::<Node>();
    let watches = [
        tokio::spawn(reflect(
            Api::<Service>::all(client.clone()),
            svc_writer,
            changed.clone(),
            stop.clone(),
        )),
        tokio::spawn(reflect(
            Api::<Node>::all(client.clone()),
            node_writer,
            changed.clone(),
            stop.clone(),
        )),
    ];
    let synced = tokio::select! {
        _ = stop.cancelled() => false,
        r = async { services.wait_until_ready().await.and(nodes.wait_until_ready().await) } => r.is_ok(),
    };
    if synced {
        loop {
            reconcile(&client, &services, &nodes).await;
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(MIN_INTERVAL) => {}
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = changed.notified() => {}
                _ = tokio::time::sleep(RESYNC) => {}
            }
        }
    }
    stop.cancel();
    for w in watches {
        let _ = w.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(ip: &str, ready: bool) -> Arc<Node> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": ip},
                "status": {
                    "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": "h"}],
                    "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]
                }
            }))
            .unwrap(),
        )
    }

    #[test]
    fn ingress_is_the_ready_nodes_internal_ips_in_vip_mode() {
        let addrs = node_addresses(&[
            node("10.0.0.2", true),
            node("10.0.0.1", true),
            node("10.0.0.3", false),
        ]);
        assert_eq!(addrs, ["10.0.0.1", "10.0.0.2"]);
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "s", "namespace": "d"},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}
        }))
        .unwrap();
        let want = desired_ingress(&svc, &addrs).unwrap();
        assert_eq!(want.len(), 2);
        assert_eq!(want[0].ip.as_deref(), Some("10.0.0.1"));
        assert_eq!(want[0].ip_mode.as_deref(), Some("VIP"));
    }

    #[test]
    fn other_classes_are_left_alone_and_other_types_lose_ingress() {
        let class: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "s"},
            "spec": {"type": "LoadBalancer", "loadBalancerClass": "example.com/lb"}
        }))
        .unwrap();
        assert!(desired_ingress(&class, &["10.0.0.1".into()]).is_none());
        let cip: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "s"}, "spec": {"type": "ClusterIP"}
        }))
        .unwrap();
        assert_eq!(desired_ingress(&cip, &["10.0.0.1".into()]), Some(vec![]));
    }
}
