//! The taint manager (upstream's taint-eviction-controller): a pod on a node with NoExecute
//! taints is deleted at once when it does not tolerate them, or once its shortest matching
//! tolerationSeconds has passed since the controller saw it there; it gets a DisruptionTarget
//! condition and a TaintManagerEviction event first. Pods without the not-ready/unreachable
//! tolerations get them with the default seconds, as the DefaultTolerationSeconds admission
//! plugin would have added them.

use super::taints;
use futures::{FutureExt, Stream, StreamExt};
use k8s_openapi::api::core::v1::{Event, Node, Pod, Taint};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use serde_json::json;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Upstream's event source component.
const COMPONENT: &str = "taint-eviction-controller";
/// Longest pause between two passes, whatever happens.
const RESYNC: Duration = Duration::from_secs(5);
/// Retry delay after a failed eviction.
const RETRY: Duration = Duration::from_secs(1);
/// Changes drained at once before a pass.
const DRAIN: usize = 10_000;
/// Least time between the starts of two passes: eviction times are seconds, not milliseconds.
const MIN_PASS_GAP: Duration = Duration::from_millis(250);

pub type Changes<K> = Pin<Box<dyn Stream<Item = Result<K, kube::runtime::watcher::Error>> + Send>>;

struct Scheduled {
    since: Instant,
    evicted: bool,
}

pub struct TaintManager {
    pub client: Client,
    pub nodes: Store<Node>,
    pub pods: Store<Pod>,
    pub not_ready_seconds: i64,
    pub unreachable_seconds: i64,
}

fn pod_key(p: &Pod) -> String {
    format!(
        "{}/{}/{}",
        p.namespace().unwrap_or_default(),
        p.name_any(),
        p.uid().unwrap_or_default()
    )
}

impl TaintManager {
    pub async fn run(
        self,
        mut node_changes: Changes<Node>,
        mut pod_changes: Changes<Pod>,
        stop: CancellationToken,
    ) {
        let synced = tokio::select! {
            _ = stop.cancelled() => false,
            r = async { self.nodes.wait_until_ready().await.and(self.pods.wait_until_ready().await) } => r.is_ok(),
        };
        if !synced {
            return;
        }
        let mut scheduled: HashMap<String, Scheduled> = HashMap::new();
        loop {
            let started = Instant::now();
            let wake = self.pass(&mut scheduled).await;
            // A pass reads every node and every pod on a tainted node: under a stream of pod
            // changes (thousands of pods starting) passes are spaced out, changes coalesce.
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep_until((started + MIN_PASS_GAP).into()) => {}
            }
            let wake = wake.min(Instant::now() + RESYNC);
            tokio::select! {
                _ = stop.cancelled() => return,
                c = node_changes.next() => if c.is_none() { return },
                c = pod_changes.next() => if c.is_none() { return },
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
            // Coalesce a burst of changes into one pass.
            for _ in 0..DRAIN {
                let more = matches!(node_changes.next().now_or_never(), Some(Some(_)))
                    | matches!(pod_changes.next().now_or_never(), Some(Some(_)));
                if !more {
                    break;
                }
            }
        }
    }

    /// One look at every pod on a NoExecute-tainted node; returns when to look again.
    async fn pass(&self, scheduled: &mut HashMap<String, Scheduled>) -> Instant {
        let now = Instant::now();
        let mut wake = now + RESYNC;
        let tainted: HashMap<String, Vec<Taint>> = self
            .nodes
            .state()
            .iter()
            .filter_map(|n| {
                let t: Vec<Taint> = n
                    .spec
                    .as_ref()
                    .and_then(|s| s.taints.as_ref())
                    .into_iter()
                    .flatten()
                    .filter(|t| t.effect == taints::NO_EXECUTE)
                    .cloned()
                    .collect();
                (!t.is_empty()).then(|| (n.name_any(), t))
            })
            .collect();
        let mut live: HashMap<String, Arc<Pod>> = HashMap::new();
        if !tainted.is_empty() {
            for pod in self.pods.state() {
                if pod.metadata.deletion_timestamp.is_some() {
                    continue;
                }
                let Some(node_taints) = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.as_ref())
                    .and_then(|n| tainted.get(n))
                else {
                    continue;
                };
                let own = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.tolerations.clone())
                    .unwrap_or_default();
                let tolerations =
                    taints::with_defaults(&own, self.not_ready_seconds, self.unreachable_seconds);
                let Some(delay) = taints::eviction_delay(&tolerations, node_taints) else {
                    continue;
                };
                let key = pod_key(&pod);
                let entry = scheduled.entry(key.clone()).or_insert(Scheduled {
                    since: now,
                    evicted: false,
                });
                let due = entry.since + delay;
                if entry.evicted {
                    // Deleted, waiting for the cache to show it terminating.
                } else if due <= now {
                    if self.evict(&pod).await {
                        entry.evicted = true;
                    } else {
                        wake = wake.min(now + RETRY);
                    }
                } else {
                    wake = wake.min(due);
                }
                live.insert(key, pod);
            }
        }
        let cancelled: Vec<String> = scheduled
            .iter()
            .filter(|(k, s)| !live.contains_key(*k) && !s.evicted)
            .map(|(k, _)| k.clone())
            .collect();
        for key in cancelled {
            let mut parts = key.splitn(3, '/');
            let (ns, name, uid) = (
                parts.next().unwrap_or_default(),
                parts.next().unwrap_or_default(),
                parts.next().unwrap_or_default(),
            );
            let still_there = self.pods.state().iter().any(|p| {
                p.uid().as_deref() == Some(uid) && p.metadata.deletion_timestamp.is_none()
            });
            if still_there {
                self.event(
                    ns,
                    name,
                    uid,
                    format!("Cancelling deletion of Pod {ns}/{name}"),
                )
                .await;
            }
        }
        scheduled.retain(|k, _| live.contains_key(k));
        wake
    }

    /// DisruptionTarget condition, event, delete; false if it should be tried again.
    async fn evict(&self, pod: &Pod) -> bool {
        let ns = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        let uid = pod.uid().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        tracing::info!(pod = %format!("{ns}/{name}"), "taint manager: evicting pod from a NoExecute-tainted node");
        self.event(
            &ns,
            &name,
            &uid,
            format!("Marking for deletion Pod {ns}/{name}"),
        )
        .await;
        let now = jiff::Timestamp::now().to_string();
        let condition = json!({"status": {"conditions": [{"type": "DisruptionTarget", "status": "True",
            "reason": "DeletionByTaintManager", "message": "Taint manager: deleting due to NoExecute taint",
            "lastTransitionTime": now}]}});
        if let Err(e) = api
            .patch_status(&name, &PatchParams::default(), &Patch::Strategic(condition))
            .await
        {
            tracing::debug!(pod = %format!("{ns}/{name}"), error = %e, "taint manager: DisruptionTarget condition");
        }
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(&name, &dp).await {
            Ok(_) => true,
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => true,
            Err(e) => {
                tracing::warn!(pod = %format!("{ns}/{name}"), error = %e, "taint manager: deleting pod");
                false
            }
        }
    }

    async fn event(&self, ns: &str, name: &str, uid: &str, message: String) {
        let now = jiff::Timestamp::now();
        let ev = json!({
            "metadata": {"name": format!("{name}.{:x}", now.as_nanosecond()), "namespace": ns},
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "namespace": ns, "name": name, "uid": uid},
            "reason": "TaintManagerEviction",
            "message": message,
            "type": "Normal",
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "firstTimestamp": now.to_string(),
            "lastTimestamp": now.to_string(),
            "count": 1
        });
        let ev: Event = match serde_json::from_value(ev) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "taint manager: building an event");
                return;
            }
        };
        if let Err(e) = Api::<Event>::namespaced(self.client.clone(), ns)
            .create(&PostParams::default(), &ev)
            .await
        {
            tracing::debug!(error = %e, "taint manager: posting an event");
        }
    }
}
