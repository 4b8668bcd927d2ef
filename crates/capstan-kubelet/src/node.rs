//! The Node object: registration (capacity, allocatable, addresses, nodeInfo, conditions,
//! daemon endpoint), status every minute or on change, and the Lease in kube-node-lease
//! renewed every 10 s.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus,
    NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use kube::api::{Patch, PatchParams, PostParams};
use tokio_util::sync::CancellationToken;

use crate::KubeletError;

/// Lease renewal interval (upstream: 10 s).
pub const LEASE_RENEW: Duration = Duration::from_secs(10);
/// Lease duration (upstream: 40 s).
pub const LEASE_DURATION_SECONDS: i32 = 40;
/// Node status report interval when nothing changes (upstream: 5 min; the issue asks 1 min).
pub const STATUS_REPORT: Duration = Duration::from_secs(60);
/// Status checks for changes this often.
const STATUS_CHECK: Duration = Duration::from_secs(10);
/// The kubelet version the node reports.
pub const KUBELET_VERSION: &str = "v1.33.0-capstan";

/// What the Node object says about this node.
#[derive(Clone, Debug)]
pub struct NodeIdentity {
    pub name: String,
    pub ip: IpAddr,
    pub kubelet_port: u16,
    pub labels: BTreeMap<String, String>,
    /// The filesystem whose size is ephemeral-storage capacity.
    pub data_dir: PathBuf,
    pub pod_cidr: Option<String>,
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Total memory in bytes from /proc/meminfo.
pub fn memory_capacity() -> i64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<i64>().ok())
        .map(|kib| kib * 1024)
        .unwrap_or(0)
}

fn storage_capacity(dir: &Path) -> i64 {
    nix::sys::statvfs::statvfs(dir)
        .map(|s| (s.blocks() as i64).saturating_mul(s.fragment_size() as i64))
        .unwrap_or(0)
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn os_image() -> String {
    let text = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "Linux".into())
}

fn resources(id: &NodeIdentity) -> BTreeMap<String, Quantity> {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    BTreeMap::from([
        ("cpu".to_string(), Quantity(cpus.to_string())),
        (
            "memory".to_string(),
            Quantity(format!("{}Ki", memory_capacity() / 1024)),
        ),
        (
            "ephemeral-storage".to_string(),
            Quantity(format!("{}Ki", storage_capacity(&id.data_dir) / 1024)),
        ),
        ("pods".to_string(), Quantity("110".into())),
    ])
}

fn conditions(existing: &[NodeCondition], now: jiff::Timestamp) -> Vec<NodeCondition> {
    let make = |kind: &str, status: &str, reason: &str, message: &str| {
        let since = existing
            .iter()
            .find(|c| c.type_ == kind && c.status == status)
            .and_then(|c| c.last_transition_time.clone())
            .unwrap_or(Time(now));
        NodeCondition {
            type_: kind.into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(message.into()),
            last_heartbeat_time: Some(Time(now)),
            last_transition_time: Some(since),
        }
    };
    vec![
        make(
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available",
        ),
        make(
            "DiskPressure",
            "False",
            "KubeletHasNoDiskPressure",
            "kubelet has no disk pressure",
        ),
        make(
            "PIDPressure",
            "False",
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available",
        ),
        make(
            "Ready",
            "True",
            "KubeletReady",
            "kubelet is posting ready status",
        ),
    ]
}

/// The status the node reports now (heartbeat times set to `now`).
pub fn node_status(
    id: &NodeIdentity,
    existing: &[NodeCondition],
    now: jiff::Timestamp,
) -> NodeStatus {
    let res = resources(id);
    NodeStatus {
        capacity: Some(res.clone()),
        allocatable: Some(res),
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: id.ip.to_string(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: id.name.clone(),
            },
        ]),
        conditions: Some(conditions(existing, now)),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint {
                port: id.kubelet_port as i32,
            }),
        }),
        node_info: Some(NodeSystemInfo {
            architecture: arch().into(),
            boot_id: read_trim("/proc/sys/kernel/random/boot_id"),
            container_runtime_version: format!("capstan://{}", env!("CARGO_PKG_VERSION")),
            kernel_version: nix::sys::utsname::uname()
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_default(),
            kube_proxy_version: String::new(),
            kubelet_version: KUBELET_VERSION.into(),
            machine_id: read_trim("/etc/machine-id"),
            operating_system: "linux".into(),
            os_image: os_image(),
            system_uuid: read_trim("/sys/class/dmi/id/product_uuid"),
            swap: None,
        }),
        ..Default::default()
    }
}

/// Creates the Node if absent (or refreshes labels and status if present); returns it.
pub async fn register(client: &kube::Client, id: &NodeIdentity) -> Result<Node, KubeletError> {
    let api: kube::Api<Node> = kube::Api::all(client.clone());
    let mut labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_string(), id.name.clone()),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        ("kubernetes.io/arch".to_string(), arch().to_string()),
        ("beta.kubernetes.io/os".to_string(), "linux".to_string()),
        ("beta.kubernetes.io/arch".to_string(), arch().to_string()),
    ]);
    labels.extend(id.labels.clone());
    let node = match api.get_opt(&id.name).await? {
        Some(n) => {
            let patch = serde_json::json!({"metadata": {"labels": labels}});
            let _ = n;
            api.patch(&id.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?
        }
        None => {
            let node = Node {
                metadata: ObjectMeta {
                    name: Some(id.name.clone()),
                    labels: Some(labels),
                    ..Default::default()
                },
                spec: Some(NodeSpec {
                    pod_cidr: id.pod_cidr.clone(),
                    pod_cidrs: id.pod_cidr.clone().map(|c| vec![c]),
                    ..Default::default()
                }),
                status: None,
            };
            match api.create(&PostParams::default(), &node).await {
                Ok(n) => n,
                Err(kube::Error::Api(e)) if e.code == 409 => api.get(&id.name).await?,
                Err(e) => return Err(e.into()),
            }
        }
    };
    post_status(client, id, &node).await
}

async fn post_status(
    client: &kube::Client,
    id: &NodeIdentity,
    node: &Node,
) -> Result<Node, KubeletError> {
    let api: kube::Api<Node> = kube::Api::all(client.clone());
    let existing = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let status = node_status(id, &existing, jiff::Timestamp::now());
    let patch = serde_json::json!({ "status": status });
    Ok(api
        .patch_status(&id.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?)
}

async fn renew_lease(
    client: &kube::Client,
    id: &NodeIdentity,
    node_uid: Option<String>,
) -> Result<(), KubeletError> {
    let api: kube::Api<Lease> = kube::Api::namespaced(client.clone(), "kube-node-lease");
    let now = MicroTime(jiff::Timestamp::now());
    match api.get_opt(&id.name).await? {
        Some(mut lease) => {
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            spec.holder_identity = Some(id.name.clone());
            spec.lease_duration_seconds = Some(LEASE_DURATION_SECONDS);
            spec.renew_time = Some(now);
            api.replace(&id.name, &PostParams::default(), &lease)
                .await?;
        }
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(id.name.clone()),
                    namespace: Some("kube-node-lease".into()),
                    owner_references: node_uid.map(|uid| {
                        vec![OwnerReference {
                            api_version: "v1".into(),
                            kind: "Node".into(),
                            name: id.name.clone(),
                            uid,
                            ..Default::default()
                        }]
                    }),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(id.name.clone()),
                    lease_duration_seconds: Some(LEASE_DURATION_SECONDS),
                    renew_time: Some(now),
                    ..Default::default()
                }),
            };
            api.create(&PostParams::default(), &lease).await?;
        }
    }
    Ok(())
}

fn comparable(status: &NodeStatus) -> serde_json::Value {
    let mut v = serde_json::to_value(status).unwrap_or_default();
    if let Some(conds) = v.get_mut("conditions").and_then(|c| c.as_array_mut()) {
        for c in conds {
            if let Some(o) = c.as_object_mut() {
                o.remove("lastHeartbeatTime");
            }
        }
    }
    v
}

/// Renews the Lease every 10 s and posts status on change or every minute, until `stop`.
pub async fn run_heartbeat(
    client: kube::Client,
    id: NodeIdentity,
    mut node: Node,
    stop: CancellationToken,
) {
    let mut lease_tick = tokio::time::interval(LEASE_RENEW);
    let mut status_tick = tokio::time::interval(STATUS_CHECK);
    let mut last_post = tokio::time::Instant::now();
    // After lost contact the node controller may have set Ready=Unknown: report at once.
    let mut lost_contact = false;
    let mut force_post = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = lease_tick.tick() => {
                // Bounded: a request stuck on a dead connection (a partition) is dropped
                // with its connection, so the node reports again soon after it heals.
                let uid = node.metadata.uid.clone();
                let renew = tokio::time::timeout(LEASE_RENEW, renew_lease(&client, &id, uid));
                let renewed = renew.await.unwrap_or_else(|_| {
                    Err(KubeletError::Setup("renewing the node lease timed out".into()))
                });
                match renewed {
                    Ok(()) if lost_contact => {
                        lost_contact = false;
                        force_post = true;
                        status_tick.reset_immediately();
                    }
                    Ok(()) => {}
                    Err(e) => {
                        lost_contact = true;
                        tracing::warn!(error = %e, "renewing the node lease");
                    }
                }
            }
            _ = status_tick.tick() => {
                let existing = node.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
                let fresh = node_status(&id, &existing, jiff::Timestamp::now());
                let changed = node.status.as_ref().map(comparable) != Some(comparable(&fresh));
                if changed || force_post || last_post.elapsed() >= STATUS_REPORT {
                    match post_status(&client, &id, &node).await {
                        Ok(n) => { node = n; last_post = tokio::time::Instant::now(); force_post = false; }
                        Err(e) => tracing::warn!(error = %e, "posting node status"),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_has_capacity_conditions_and_endpoint() {
        let id = NodeIdentity {
            name: "n1".into(),
            ip: "10.0.0.5".parse().expect("ip"),
            kubelet_port: 10250,
            labels: BTreeMap::new(),
            data_dir: std::env::temp_dir(),
            pod_cidr: None,
        };
        let s = node_status(&id, &[], jiff::Timestamp::now());
        let cap = s.capacity.expect("capacity");
        assert_eq!(cap["pods"].0, "110");
        assert!(
            cap.contains_key("cpu")
                && cap.contains_key("memory")
                && cap.contains_key("ephemeral-storage")
        );
        let ready = s
            .conditions
            .expect("conditions")
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .expect("Ready");
        assert_eq!(ready.status, "True");
        assert_eq!(
            s.daemon_endpoints
                .expect("de")
                .kubelet_endpoint
                .expect("ke")
                .port,
            10250
        );
        assert_eq!(s.addresses.expect("addrs")[0].address, "10.0.0.5");
    }
}
