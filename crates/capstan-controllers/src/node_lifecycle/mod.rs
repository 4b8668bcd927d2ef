//! The node lifecycle controller (upstream's NodeLifecycleController) and its taint manager.
//! Every `monitor_period` it checks each Node's heartbeats (its Ready condition's
//! lastHeartbeatTime and its Lease in kube-node-lease, timed by when this controller saw them
//! change, so clocks need not agree): after `grace_period` without one, the Ready and pressure
//! conditions go Unknown ("Kubelet stopped posting node status.") and the node's pods are marked
//! not ready. Taints follow the conditions: unreachable or not-ready with NoSchedule and
//! NoExecute, pressure and unschedulable with NoSchedule; recovery removes them. Upstream's
//! zone disruption modes and eviction rate limits are not implemented.

mod eviction;
pub mod taints;

use crate::informer::Informer;
pub use eviction::Changes;
use eviction::TaintManager;
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Namespace of the node heartbeat Leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// Conditions set to Unknown when the kubelet stops posting status (upstream's list).
const WATCHED_CONDITIONS: [&str; 4] = ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"];

/// Options of the node lifecycle controller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeLifecycleOptions {
    /// How often node health is checked (`--node-monitor-period`, upstream 5 s).
    pub monitor_period: Duration,
    /// Heartbeat age after which a node is unreachable (`--node-monitor-grace-period`, 40 s).
    pub grace_period: Duration,
    /// The same for a node that never posted a Ready condition (upstream 60 s).
    pub startup_grace_period: Duration,
    /// tolerationSeconds of the default not-ready NoExecute toleration (300).
    pub default_not_ready_toleration_seconds: i64,
    /// tolerationSeconds of the default unreachable NoExecute toleration (300).
    pub default_unreachable_toleration_seconds: i64,
}

impl Default for NodeLifecycleOptions {
    fn default() -> Self {
        NodeLifecycleOptions {
            monitor_period: Duration::from_secs(5),
            grace_period: Duration::from_secs(40),
            startup_grace_period: Duration::from_secs(60),
            default_not_ready_toleration_seconds: 300,
            default_unreachable_toleration_seconds: 300,
        }
    }
}

/// Heartbeats last seen for a node, and when one last changed.
struct Health {
    probe: Instant,
    heartbeat: Option<Time>,
    renewed: Option<String>,
}

struct Monitor {
    client: Client,
    nodes: Store<Node>,
    leases: Store<Lease>,
    pods: Store<Pod>,
    options: NodeLifecycleOptions,
    health: HashMap<String, Health>,
}

/// Run the controller and the taint manager until `stop`; `pods` is the shared pod cache and
/// `pod_changes` a subscription to it.
pub async fn run(
    client: Client,
    pods: Store<Pod>,
    pod_changes: Changes<Pod>,
    options: NodeLifecycleOptions,
    stop: CancellationToken,
) {
    let mut nodes = Informer::new(Api::<Node>::all(client.clone()));
    let leases = Informer::new(Api::<Lease>::namespaced(client.clone(), LEASE_NAMESPACE));
    let node_changes: Changes<Node> = Box::pin(nodes.subscribe());
    let monitor_changes: Changes<Node> = Box::pin(nodes.subscribe());
    let taint_manager = TaintManager {
        client: client.clone(),
        nodes: nodes.store(),
        pods: pods.clone(),
        not_ready_seconds: options.default_not_ready_toleration_seconds,
        unreachable_seconds: options.default_unreachable_toleration_seconds,
    };
    let monitor = Monitor {
        client,
        nodes: nodes.store(),
        leases: leases.store(),
        pods,
        options,
        health: HashMap::new(),
    };
    tokio::join!(
        nodes.run(stop.clone()),
        leases.run(stop.clone()),
        monitor.run(monitor_changes, stop.clone()),
        taint_manager.run(node_changes, pod_changes, stop),
    );
}

impl Monitor {
    async fn run(mut self, mut changes: Changes<Node>, stop: CancellationToken) {
        let synced = tokio::select! {
            _ = stop.cancelled() => false,
            r = async { self.nodes.wait_until_ready().await.and(self.leases.wait_until_ready().await) } => r.is_ok(),
        };
        if !synced {
            return;
        }
        let mut next = Instant::now();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                c = changes.next() => match c {
                    // A changed node gets its taints right away (e.g. the kubelet posted Ready=False).
                    Some(Ok(node)) => {
                        if let Some(n) = self.nodes.get(&ObjectRef::from_obj(&node)) {
                            self.taint((*n).clone()).await;
                        }
                        continue;
                    }
                    Some(Err(_)) => continue,
                    None => return,
                },
                _ = tokio::time::sleep_until(next.into()) => {}
            }
            next = Instant::now() + self.options.monitor_period;
            let nodes = self.nodes.state();
            let names: HashSet<&str> = nodes
                .iter()
                .filter_map(|n| n.metadata.name.as_deref())
                .collect();
            self.health.retain(|name, _| names.contains(name.as_str()));
            for node in nodes {
                let node = self.check_health((*node).clone()).await;
                self.taint(node).await;
            }
        }
    }

    /// Marks the node's conditions Unknown when its heartbeats are older than the grace
    /// period; returns the node as it now stands.
    async fn check_health(&mut self, node: Node) -> Node {
        let now = Instant::now();
        let name = node.name_any();
        let ready = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
        let heartbeat = ready.and_then(|c| c.last_heartbeat_time.clone());
        let renewed = self
            .leases
            .get(&ObjectRef::new(&name).within(LEASE_NAMESPACE))
            .and_then(|l| l.spec.as_ref().and_then(|s| s.renew_time.clone()))
            .map(|t| t.0.to_string());
        let h = self.health.entry(name.clone()).or_insert(Health {
            probe: now,
            heartbeat: heartbeat.clone(),
            renewed: renewed.clone(),
        });
        if h.heartbeat != heartbeat {
            h.heartbeat = heartbeat;
            h.probe = now;
        }
        if h.renewed != renewed {
            h.renewed = renewed;
            h.probe = now;
        }
        let grace = if ready.is_some() {
            self.options.grace_period
        } else {
            self.options.startup_grace_period
        };
        if now.duration_since(h.probe) <= grace {
            return node;
        }
        let was_ready = ready.is_some_and(|c| c.status == "True");
        let Some(updated) = unknown_conditions(&node) else {
            return node;
        };
        match Api::<Node>::all(self.client.clone())
            .replace_status(&name, &PostParams::default(), &updated)
            .await
        {
            Ok(n) => {
                tracing::warn!(node = %name, "node stopped posting status: conditions set to Unknown");
                if was_ready {
                    self.mark_pods_not_ready(&name).await;
                }
                n
            }
            Err(e) => {
                tracing::debug!(node = %name, error = %e, "node lifecycle: updating conditions");
                node
            }
        }
    }

    /// Upstream's MarkPodsNotReady: the pods of a node that went unreachable are not ready.
    async fn mark_pods_not_ready(&self, node: &str) {
        let now = jiff::Timestamp::now().to_string();
        for pod in self.pods.state() {
            if pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) != Some(node) {
                continue;
            }
            let ready = pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            if !ready {
                continue;
            }
            let patch = json!({"status": {"conditions": [
                {"type": "Ready", "status": "False", "lastTransitionTime": now}]}});
            let api: Api<Pod> =
                Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
            if let Err(e) = api
                .patch_status(
                    &pod.name_any(),
                    &PatchParams::default(),
                    &Patch::Strategic(patch),
                )
                .await
            {
                tracing::debug!(pod = %pod.name_any(), error = %e, "node lifecycle: marking pod not ready");
            }
        }
    }

    /// Brings the managed taints in line with the node's conditions.
    async fn taint(&self, mut node: Node) {
        let now = Time(jiff::Timestamp::now());
        let Some(new) = taints::reconcile(&node, &now) else {
            return;
        };
        let name = node.name_any();
        node.spec.get_or_insert_default().taints = Some(new.clone());
        match Api::<Node>::all(self.client.clone())
            .replace(&name, &PostParams::default(), &node)
            .await
        {
            Ok(_) => {
                let keys: Vec<String> = new
                    .iter()
                    .map(|t| format!("{}:{}", t.key, t.effect))
                    .collect();
                tracing::info!(node = %name, taints = ?keys, "node lifecycle: taints updated");
            }
            // A conflict or a vanished node: the next pass sees the newer state.
            Err(e) => tracing::debug!(node = %name, error = %e, "node lifecycle: updating taints"),
        }
    }
}

/// The node with its watched conditions set to Unknown; None if they already are.
fn unknown_conditions(node: &Node) -> Option<Node> {
    let now = Time(jiff::Timestamp::now());
    let mut node = node.clone();
    let created = node.metadata.creation_timestamp.clone();
    let status = node.status.get_or_insert_default();
    let conditions = status.conditions.get_or_insert_default();
    let mut changed = false;
    for type_ in WATCHED_CONDITIONS {
        match conditions.iter_mut().find(|c| c.type_ == type_) {
            None => {
                conditions.push(NodeCondition {
                    type_: type_.into(),
                    status: "Unknown".into(),
                    reason: Some("NodeStatusNeverUpdated".into()),
                    message: Some("Kubelet never posted node status.".into()),
                    last_heartbeat_time: created.clone(),
                    last_transition_time: Some(now.clone()),
                });
                changed = true;
            }
            Some(c) if c.status != "Unknown" => {
                c.status = "Unknown".into();
                c.reason = Some("NodeStatusUnknown".into());
                c.message = Some("Kubelet stopped posting node status.".into());
                c.last_transition_time = Some(now.clone());
                changed = true;
            }
            Some(_) => {}
        }
    }
    changed.then_some(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_conditions_become_unknown_once() {
        let node: Node = serde_json::from_value(json!({"metadata": {"name": "n"},
            "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]}}))
        .unwrap();
        let u = unknown_conditions(&node).unwrap();
        let c = u.status.as_ref().unwrap().conditions.as_ref().unwrap();
        assert_eq!(c.len(), 4);
        assert_eq!(c[0].status, "Unknown");
        assert_eq!(c[0].reason.as_deref(), Some("NodeStatusUnknown"));
        assert_eq!(c[1].reason.as_deref(), Some("NodeStatusNeverUpdated"));
        assert!(unknown_conditions(&u).is_none());
    }
}
