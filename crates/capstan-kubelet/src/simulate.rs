//! Simulated nodes (the kwok role): registers N Nodes with chosen capacity, labels and taints,
//! keeps their Leases fresh, and marks pods bound to them Running with a fake pod IP without
//! starting anything. For scale tests and capacity planning; it meets the cluster only at the API.

use futures::{StreamExt, stream};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Namespace of node heartbeat Leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// Label every simulated node carries, so they are easy to find and remove.
pub const SIMULATED_LABEL: &str = "capstan.io/simulated";

#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    #[error("registering node {node}")]
    Register {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("bad option: {0}")]
    Option(String),
}

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimulateOptions {
    pub count: usize,
    pub name_prefix: String,
    pub cpu: String,
    pub memory: String,
    pub pods: String,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    pub lease_interval: Duration,
    /// API requests in flight at once (registration, renewals, pod status).
    pub concurrency: usize,
}

impl Default for SimulateOptions {
    fn default() -> Self {
        SimulateOptions {
            count: 1,
            name_prefix: "sim-node-".into(),
            cpu: "32".into(),
            memory: "256Gi".into(),
            pods: "110".into(),
            labels: BTreeMap::new(),
            taints: Vec::new(),
            lease_interval: Duration::from_secs(10),
            concurrency: 32,
        }
    }
}

/// Parses `key=value:Effect` (or `key:Effect`) as kubectl taint does.
pub fn parse_taint(s: &str) -> Result<Taint, SimulateError> {
    let (kv, effect) = s
        .rsplit_once(':')
        .ok_or_else(|| SimulateError::Option(format!("taint {s:?}: want key=value:Effect")))?;
    if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
        return Err(SimulateError::Option(format!(
            "taint {s:?}: unknown effect {effect:?}"
        )));
    }
    let (key, value) = match kv.split_once('=') {
        Some((k, v)) => (k, Some(v.to_string())),
        None => (kv, None),
    };
    if key.is_empty() {
        return Err(SimulateError::Option(format!("taint {s:?}: empty key")));
    }
    Ok(Taint {
        key: key.into(),
        value,
        effect: effect.into(),
        time_added: None,
    })
}

/// The node's name, and its pod IP range `10.X.Y.0/24` (X from 64 up, so 48k nodes fit).
fn node_name(o: &SimulateOptions, i: usize) -> String {
    format!("{}{i}", o.name_prefix)
}

fn pod_cidr(i: usize) -> (u8, u8) {
    ((64 + i / 256) as u8, (i % 256) as u8)
}

fn node_object(o: &SimulateOptions, i: usize) -> Value {
    let name = node_name(o, i);
    let mut labels = o.labels.clone();
    labels.insert("kubernetes.io/hostname".into(), name.clone());
    labels.insert("kubernetes.io/os".into(), "linux".into());
    labels.insert("kubernetes.io/arch".into(), "amd64".into());
    labels.insert(SIMULATED_LABEL.into(), "true".into());
    let (x, y) = pod_cidr(i);
    let now = jiff::Timestamp::now().to_string();
    let resources =
        json!({"cpu": o.cpu, "memory": o.memory, "pods": o.pods, "ephemeral-storage": "100Gi"});
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": labels, "annotations": {"capstan.io/simulated": "true"}},
        "spec": {"podCIDR": format!("10.{x}.{y}.0/24"), "podCIDRs": [format!("10.{x}.{y}.0/24")], "taints": o.taints},
        "status": {
            "capacity": resources, "allocatable": resources,
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "simulated node is ready",
                 "lastHeartbeatTime": now, "lastTransitionTime": now},
                {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory", "message": "", "lastHeartbeatTime": now, "lastTransitionTime": now},
                {"type": "DiskPressure", "status": "False", "reason": "KubeletHasNoDiskPressure", "message": "", "lastHeartbeatTime": now, "lastTransitionTime": now},
                {"type": "PIDPressure", "status": "False", "reason": "KubeletHasSufficientPID", "message": "", "lastHeartbeatTime": now, "lastTransitionTime": now}
            ],
            "addresses": [{"type": "InternalIP", "address": format!("10.{x}.{y}.1")}, {"type": "Hostname", "address": name}],
            "nodeInfo": {"machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "simulated",
                         "osImage": "Capstan simulated node", "containerRuntimeVersion": "simulated://1.0",
                         "kubeletVersion": "v1.33.0", "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64"},
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}}
        }
    })
}

async fn register(client: &Client, o: &SimulateOptions, i: usize) -> Result<(), SimulateError> {
    let name = node_name(o, i);
    let err = |source| SimulateError::Register {
        node: name.clone(),
        source,
    };
    let nodes: Api<Node> = Api::all(client.clone());
    let obj: Node = serde_json::from_value(node_object(o, i))
        .map_err(|e| SimulateError::Option(format!("node object: {e}")))?;
    match nodes.create(&PostParams::default(), &obj).await {
        Ok(created)
            if created
                .status
                .as_ref()
                .and_then(|s| s.allocatable.as_ref())
                .is_some() => {}
        Ok(_) => set_status(&nodes, o, i, &name).await.map_err(err)?,
        Err(kube::Error::Api(e)) if e.code == 409 => {
            // Already there (a restart): refresh its status.
            set_status(&nodes, o, i, &name).await.map_err(err)?
        }
        Err(e) => return Err(err(e)),
    }
    renew_lease(client, &name, o.lease_interval)
        .await
        .map_err(err)
}

async fn set_status(
    nodes: &Api<Node>,
    o: &SimulateOptions,
    i: usize,
    name: &str,
) -> Result<(), kube::Error> {
    let status = json!({"status": node_object(o, i)["status"].clone()});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .map(|_| ())
}

async fn renew_lease(client: &Client, node: &str, interval: Duration) -> Result<(), kube::Error> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let now = jiff::Timestamp::now().to_string();
    let duration = (interval.as_secs() * 4).max(40);
    let patch = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": node, "namespace": LEASE_NAMESPACE},
        "spec": {"holderIdentity": node, "leaseDurationSeconds": duration, "renewTime": now}
    });
    match leases
        .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => {
            let lease: Lease = serde_json::from_value(patch).map_err(kube::Error::SerdeError)?;
            leases
                .create(&PostParams::default(), &lease)
                .await
                .map(|_| ())
        }
        Err(e) => Err(e),
    }
}

async fn ensure_lease_namespace(client: &Client) {
    let ns: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let obj = serde_json::from_value(json!({"metadata": {"name": LEASE_NAMESPACE}}));
    if let Ok(obj) = obj
        && let Err(e) = ns.create(&PostParams::default(), &obj).await
        && !matches!(&e, kube::Error::Api(r) if r.code == 409)
    {
        tracing::warn!(error = %e, "creating namespace {LEASE_NAMESPACE}");
    }
}

/// The status a running simulated pod reports.
fn running_status(pod: &Pod, ip: &str, host_ip: &str) -> Value {
    let now = jiff::Timestamp::now().to_string();
    let cond = |t: &str| json!({"type": t, "status": "True", "lastProbeTime": null, "lastTransitionTime": now});
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let statuses: Vec<Value> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .map(|c| {
            json!({
                "name": c.name, "image": c.image.clone().unwrap_or_default(), "imageID": "",
                "containerID": format!("simulated://{uid}-{}", c.name),
                "ready": true, "started": true, "restartCount": 0,
                "state": {"running": {"startedAt": now}}
            })
        })
        .collect();
    json!({"status": {
        "phase": "Running",
        "conditions": [cond("PodReadyToStartContainers"), cond("Initialized"), cond("Ready"), cond("ContainersReady"), cond("PodScheduled")],
        "hostIP": host_ip, "hostIPs": [{"ip": host_ip}],
        "podIP": ip, "podIPs": [{"ip": ip}],
        "startTime": now,
        "containerStatuses": statuses
    }})
}

/// Per-node next pod IP (last octet 2..=254, wrapping).
struct IpAllocator {
    next: HashMap<String, u8>,
}

impl IpAllocator {
    fn next(&mut self, node: &str, index: usize) -> (String, String) {
        let (x, y) = pod_cidr(index);
        let n = self.next.entry(node.to_string()).or_insert(2);
        let ip = format!("10.{x}.{y}.{n}");
        *n = if *n >= 254 { 2 } else { *n + 1 };
        (ip, format!("10.{x}.{y}.1"))
    }
}

async fn run_pods(
    client: Client,
    o: Arc<SimulateOptions>,
    nodes: Arc<HashMap<String, usize>>,
    stop: CancellationToken,
) {
    let api: Api<Pod> = Api::all(client.clone());
    let sem = Arc::new(Semaphore::new(o.concurrency.max(1)));
    let mut ips = IpAllocator {
        next: HashMap::new(),
    };
    let mut started: HashSet<String> = HashSet::new();
    let stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .applied_objects();
    let mut stream = std::pin::pin!(stream);
    loop {
        let pod = tokio::select! {
            _ = stop.cancelled() => return,
            p = stream.next() => match p {
                None => return,
                Some(Err(e)) => { tracing::debug!(error = %e, "simulated nodes: pod watch"); continue }
                Some(Ok(p)) => p,
            },
        };
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            continue;
        };
        let Some(&index) = nodes.get(&node) else {
            continue;
        };
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let Ok(permit) = sem.clone().acquire_owned().await else {
            return;
        };
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        if pod.metadata.deletion_timestamp.is_some() {
            // Nothing runs: finish the graceful deletion at once, as a kubelet would after stop.
            started.remove(&uid);
            tokio::spawn(async move {
                let dp = DeleteParams {
                    grace_period_seconds: Some(0),
                    preconditions: Some(Preconditions {
                        uid: Some(uid),
                        resource_version: None,
                    }),
                    ..Default::default()
                };
                let _ = pods.delete(&name, &dp).await;
                drop(permit);
            });
            continue;
        }
        let phase = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .unwrap_or("Pending");
        if phase != "Pending" || !started.insert(uid) {
            continue;
        }
        let (ip, host_ip) = ips.next(&node, index);
        let patch = running_status(&pod, &ip, &host_ip);
        tokio::spawn(async move {
            if let Err(e) = pods
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                tracing::debug!(pod = %name, error = %e, "simulated nodes: marking a pod Running");
            }
            drop(permit);
        });
    }
}

async fn run_leases(
    client: Client,
    o: Arc<SimulateOptions>,
    names: Vec<String>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(o.lease_interval) => {}
        }
        let renewals = stream::iter(names.iter().cloned())
            .map(|n| {
                let client = client.clone();
                let interval = o.lease_interval;
                async move {
                    if let Err(e) = renew_lease(&client, &n, interval).await {
                        tracing::debug!(node = %n, error = %e, "simulated nodes: renewing a Lease");
                    }
                }
            })
            .buffer_unordered(o.concurrency.max(1))
            .for_each(|_| async {});
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = renewals => {}
        }
    }
}

/// Registers the nodes, then keeps their Leases fresh and their pods Running until `stop`.
/// `on_ready` is called once every node is registered.
pub async fn run_simulated_nodes(
    client: Client,
    options: SimulateOptions,
    stop: CancellationToken,
    on_ready: impl FnOnce(),
) -> Result<(), SimulateError> {
    let o = Arc::new(options);
    ensure_lease_namespace(&client).await;
    let names: Vec<String> = (0..o.count).map(|i| node_name(&o, i)).collect();
    let index: Arc<HashMap<String, usize>> = Arc::new(
        names
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, n)| (n, i))
            .collect(),
    );
    // Pods may be bound as soon as the first node exists: watch before registering.
    let pods = tokio::spawn(run_pods(client.clone(), o.clone(), index, stop.clone()));
    let results: Vec<Result<(), SimulateError>> = stream::iter(0..o.count)
        .map(|i| {
            let (client, o) = (client.clone(), o.clone());
            async move { register(&client, &o, i).await }
        })
        .buffer_unordered(o.concurrency.max(1))
        .collect()
        .await;
    if let Some(Err(e)) = results.into_iter().find(|r| r.is_err()) {
        stop.cancel();
        let _ = pods.await;
        return Err(e);
    }
    tracing::info!(count = o.count, prefix = %o.name_prefix, "simulated nodes registered");
    on_ready();
    let leases = tokio::spawn(run_leases(client, o, names, stop.clone()));
    stop.cancelled().await;
    let _ = pods.await;
    let _ = leases.await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taints_parse_like_kubectl() {
        let t = parse_taint("dedicated=gpu:NoSchedule").unwrap();
        assert_eq!(
            (t.key.as_str(), t.value.as_deref(), t.effect.as_str()),
            ("dedicated", Some("gpu"), "NoSchedule")
        );
        let t = parse_taint("spot:PreferNoSchedule").unwrap();
        assert_eq!(
            (t.key.as_str(), t.value, t.effect.as_str()),
            ("spot", None, "PreferNoSchedule")
        );
        assert!(parse_taint("k=v").is_err());
        assert!(parse_taint("k=v:Sometimes").is_err());
    }

    #[test]
    fn node_objects_carry_capacity_labels_and_distinct_ranges() {
        let mut o = SimulateOptions {
            count: 300,
            ..Default::default()
        };
        o.labels.insert("zone".into(), "z1".into());
        let n = node_object(&o, 257);
        assert_eq!(n["metadata"]["name"], "sim-node-257");
        assert_eq!(n["metadata"]["labels"]["zone"], "z1");
        assert_eq!(n["status"]["allocatable"]["cpu"], "32");
        assert_eq!(n["spec"]["podCIDR"], "10.65.1.0/24");
        let mut ips = IpAllocator {
            next: HashMap::new(),
        };
        assert_eq!(ips.next("a", 0).0, "10.64.0.2");
        assert_eq!(ips.next("a", 0).0, "10.64.0.3");
        assert_eq!(ips.next("b", 1).0, "10.64.1.2");
    }
}
