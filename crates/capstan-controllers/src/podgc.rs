//! The pod garbage collector (upstream's PodGC controller), every `check_period`: deletes
//! terminated pods (Succeeded/Failed) beyond the threshold, oldest first; pods bound to nodes
//! that no longer exist, after a quarantine and a live check of the node; terminating pods that
//! were never scheduled; and terminating pods on not-ready nodes carrying the
//! `node.kubernetes.io/out-of-service` taint. Pods not yet terminal are marked Failed (with a
//! DisruptionTarget condition when the node is gone) before their forced deletion.

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Taint an administrator puts on a node known to be down (upstream's out-of-service taint).
pub const OUT_OF_SERVICE_TAINT: &str = "node.kubernetes.io/out-of-service";

/// Options of the pod garbage collector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodGcOptions {
    /// Terminated pods kept before the oldest are deleted (`--terminated-pod-gc-threshold`;
    /// 0 disables that part).
    pub terminated_pod_gc_threshold: usize,
    /// How often the collector runs (upstream: 20 s).
    pub check_period: Duration,
    /// How long a pod's node must be missing before the pod is deleted (upstream: 40 s).
    pub orphan_quarantine: Duration,
}

impl Default for PodGcOptions {
    fn default() -> Self {
        PodGcOptions {
            terminated_pod_gc_threshold: 12500,
            check_period: Duration::from_secs(20),
            orphan_quarantine: Duration::from_secs(40),
        }
    }
}

fn terminated(p: &Pod) -> bool {
    matches!(
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some(phase) if phase != "Pending" && phase != "Running" && phase != "Unknown"
    )
}

fn node_name(p: &Pod) -> Option<&str> {
    p.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

/// Terminated pods to delete so that at most `threshold` remain, oldest first.
pub fn excess_terminated(pods: &[Arc<Pod>], threshold: usize) -> Vec<Arc<Pod>> {
    if threshold == 0 {
        return Vec::new();
    }
    let mut done: Vec<Arc<Pod>> = pods
        .iter()
        .filter(|p| terminated(p) && p.metadata.deletion_timestamp.is_none())
        .cloned()
        .collect();
    if done.len() <= threshold {
        return Vec::new();
    }
    done.sort_by(|a, b| {
        a.metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0)
            .cmp(&b.metadata.creation_timestamp.as_ref().map(|t| t.0))
            .then_with(|| a.name_any().cmp(&b.name_any()))
    });
    let n = done.len() - threshold;
    done.truncate(n);
    done
}

fn node_ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn out_of_service(n: &Node) -> bool {
    n.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| {
            t.iter()
                .any(|t| t.key == OUT_OF_SERVICE_TAINT && t.effect == "NoExecute")
        })
}

struct PodGc {
    client: Client,
    pods: Store<Pod>,
    options: PodGcOptions,
    /// Pod keys whose node was found missing, with the time first seen.
    suspects: HashMap<String, Instant>,
}

/// Run the pod garbage collector until `stop`, reading pods from the shared `pods` cache.
pub async fn run(client: Client, pods: Store<Pod>, options: PodGcOptions, stop: CancellationToken) {
    let ready = tokio::select! {
        _ = stop.cancelled() => false,
        r = pods.wait_until_ready() => r.is_ok(),
    };
    if !ready {
        return;
    }
    let mut gc = PodGc {
        client,
        pods,
        options,
        suspects: HashMap::new(),
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = gc.pass() => {}
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(gc.options.check_period) => {}
        }
    }
}

impl PodGc {
    async fn pass(&mut self) {
        let nodes = match Api::<Node>::all(self.client.clone())
            .list(&ListParams::default())
            .await
        {
            Ok(l) => l.items,
            Err(e) => {
                tracing::debug!(error = %e, "pod gc: listing nodes");
                return;
            }
        };
        let pods = self.pods.state();
        for p in excess_terminated(&pods, self.options.terminated_pod_gc_threshold) {
            self.delete(&p, None, "terminated pods over the threshold")
                .await;
        }
        let by_name: HashMap<&str, &Node> = nodes
            .iter()
            .filter_map(|n| n.metadata.name.as_deref().map(|name| (name, n)))
            .collect();
        let mut seen = HashSet::new();
        let mut missing_nodes: HashMap<String, Option<bool>> = HashMap::new();
        for p in &pods {
            let terminating = p.metadata.deletion_timestamp.is_some();
            let Some(node) = node_name(p) else {
                if terminating {
                    self.delete(p, None, "terminating and never scheduled")
                        .await;
                }
                continue;
            };
            match by_name.get(node) {
                Some(n) => {
                    if terminating && !node_ready(n) && out_of_service(n) {
                        self.delete(p, None, "terminating on an out-of-service node")
                            .await;
                    }
                }
                None => {
                    let key = format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any());
                    seen.insert(key.clone());
                    let since = *self.suspects.entry(key).or_insert_with(Instant::now);
                    if since.elapsed() < self.options.orphan_quarantine {
                        continue;
                    }
                    // Confirm with a live read: the list may be older than the pod.
                    let gone = match missing_nodes.get(node) {
                        Some(g) => *g,
                        None => {
                            let g = Api::<Node>::all(self.client.clone())
                                .get_opt(node)
                                .await
                                .ok()
                                .map(|n| n.is_none());
                            missing_nodes.insert(node.to_string(), g);
                            g
                        }
                    };
                    if gone == Some(true) {
                        self.delete(p, Some(node), "bound to a node that no longer exists")
                            .await;
                    }
                }
            }
        }
        self.suspects.retain(|k, _| seen.contains(k));
    }

    /// Marks a not yet terminal pod Failed (with DisruptionTarget when its node is gone), then
    /// deletes it at once.
    async fn delete(&self, p: &Pod, missing_node: Option<&str>, why: &str) {
        let ns = p.namespace().unwrap_or_default();
        let name = p.name_any();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        if !terminated(p) {
            let now = jiff::Timestamp::now().to_string();
            let mut status = json!({"phase": "Failed"});
            if missing_node.is_some() {
                status["conditions"] = json!([{"type": "DisruptionTarget", "status": "True",
                    "reason": "DeletionByPodGC", "message": "PodGC: node no longer exists",
                    "lastTransitionTime": now}]);
            }
            if let Err(e) = api
                .patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Strategic(json!({"status": status})),
                )
                .await
            {
                tracing::debug!(pod = %format!("{ns}/{name}"), error = %e, "pod gc: marking failed");
            }
        }
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: p.uid(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(&name, &dp).await {
            Ok(_) => {
                tracing::info!(pod = %format!("{ns}/{name}"), node = ?missing_node, why, "pod gc: deleted")
            }
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => tracing::warn!(pod = %format!("{ns}/{name}"), error = %e, "pod gc: deleting"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, phase: &str, created: i64) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "ns",
                    "creationTimestamp": jiff::Timestamp::from_second(created).unwrap().to_string()},
                "status": {"phase": phase}
            }))
            .unwrap(),
        )
    }

    #[test]
    fn the_oldest_terminated_pods_over_the_threshold_are_chosen() {
        let pods = vec![
            pod("new", "Succeeded", 300),
            pod("running", "Running", 1),
            pod("old", "Failed", 100),
            pod("mid", "Succeeded", 200),
        ];
        let names: Vec<String> = excess_terminated(&pods, 1)
            .iter()
            .map(|p| p.name_any())
            .collect();
        assert_eq!(names, ["old", "mid"]);
        assert!(excess_terminated(&pods, 3).is_empty());
        assert!(excess_terminated(&pods, 0).is_empty());
    }
}
