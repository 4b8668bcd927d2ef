//! The PodDisruptionBudget status controller (upstream's `pkg/controller/disruption`): for each
//! budget, the pods its selector matches, how many are healthy (ready, not being deleted), how
//! many must stay healthy, and so how many voluntary disruptions are allowed now, with the
//! `DisruptionAllowed` condition. Evictions that consult it are the API server's.

use crate::replicaset::{controller_of, is_ready, selector_matches};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const RESYNC: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum DisruptionError {
    #[error("listing pods in {0}")]
    ListPods(String, #[source] kube::Error),
    #[error("reading the scale of {0}")]
    Scale(String, #[source] kube::Error),
    #[error("updating the status of PodDisruptionBudget {0}")]
    Status(String, #[source] kube::Error),
}

/// Run the controller until `stop`.
pub async fn run(client: Client, stop: CancellationToken) {
    let budgets = Api::<PodDisruptionBudget>::all(client.clone());
    let controller = Controller::new(budgets, watcher::Config::default());
    let store = controller.store();
    controller
        .watches(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default(),
            budgets_of(store),
        )
        .graceful_shutdown_on(async move { stop.cancelled().await })
        .run(reconcile, error_policy, Arc::new(client))
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "disruption reconcile");
            }
        })
        .await;
}

/// The budgets whose selector matches a changed pod.
fn budgets_of(
    store: Store<PodDisruptionBudget>,
) -> impl Fn(Pod) -> Vec<ObjectRef<PodDisruptionBudget>> + Send + Sync + 'static {
    move |pod: Pod| {
        store
            .state()
            .iter()
            .filter(|b| b.metadata.namespace == pod.metadata.namespace)
            .filter(|b| {
                b.spec
                    .as_ref()
                    .and_then(|s| s.selector.as_ref())
                    .is_some_and(|s| selector_matches(s, pod.labels()))
            })
            .map(|b| ObjectRef::from_obj(b.as_ref()))
            .collect()
    }
}

fn error_policy(b: Arc<PodDisruptionBudget>, err: &DisruptionError, _: Arc<Client>) -> Action {
    tracing::warn!(budget = %b.name_any(), error = %err, "disruption sync failed");
    Action::requeue(Duration::from_secs(2))
}

/// An absolute or percentage budget resolved against `total` (percentages round up).
fn resolve(value: &IntOrString, total: i32) -> i32 {
    match value {
        IntOrString::Int(n) => *n,
        IntOrString::String(s) => s
            .strip_suffix('%')
            .and_then(|p| p.trim().parse::<i64>().ok())
            .map(|p| ((p * i64::from(total) + 99) / 100) as i32)
            .unwrap_or(0),
    }
}

/// What upstream calls expectedCount when the budget is relative to the workload's scale: the
/// sum of the desired replicas of the controllers owning the pods (each counted once).
async fn expected_from_controllers(
    client: &Client,
    ns: &str,
    pods: &[Pod],
) -> Result<i32, DisruptionError> {
    let mut seen = std::collections::BTreeSet::new();
    let mut total = 0;
    for pod in pods {
        let Some(owner) = controller_of(&pod.metadata) else {
            // A bare pod counts as one.
            total += 1;
            continue;
        };
        if !seen.insert(owner.uid.clone()) {
            continue;
        }
        let scale_err = |e| DisruptionError::Scale(format!("{}/{}", owner.kind, owner.name), e);
        total += match owner.kind.as_str() {
            "ReplicaSet" => {
                let rs = Api::<ReplicaSet>::namespaced(client.clone(), ns)
                    .get_opt(&owner.name)
                    .await
                    .map_err(scale_err)?;
                // A ReplicaSet of a Deployment: the Deployment's scale, as upstream.
                match rs.as_ref().and_then(|rs| controller_of(&rs.metadata)) {
                    Some(d) if d.kind == "Deployment" => {
                        if !seen.insert(d.uid.clone()) {
                            continue;
                        }
                        Api::<Deployment>::namespaced(client.clone(), ns)
                            .get_opt(&d.name)
                            .await
                            .map_err(scale_err)?
                            .and_then(|d| d.spec.and_then(|s| s.replicas))
                            .unwrap_or(1)
                    }
                    _ => rs
                        .and_then(|rs| rs.spec.and_then(|s| s.replicas))
                        .unwrap_or(1),
                }
            }
            "StatefulSet" => Api::<StatefulSet>::namespaced(client.clone(), ns)
                .get_opt(&owner.name)
                .await
                .map_err(scale_err)?
                .and_then(|s| s.spec.and_then(|s| s.replicas))
                .unwrap_or(1),
            _ => 1,
        };
    }
    Ok(total)
}

async fn reconcile(
    pdb: Arc<PodDisruptionBudget>,
    client: Arc<Client>,
) -> Result<Action, DisruptionError> {
    let ns = pdb.namespace().unwrap_or_default();
    let spec = pdb.spec.clone().unwrap_or_default();
    let pods: Vec<Pod> = match spec.selector.as_ref() {
        Some(sel) => Api::<Pod>::namespaced((*client).clone(), &ns)
            .list(&ListParams::default())
            .await
            .map_err(|e| DisruptionError::ListPods(ns.clone(), e))?
            .items
            .into_iter()
            .filter(|p| selector_matches(sel, p.labels()))
            .collect(),
        None => Vec::new(),
    };
    let current_healthy = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none() && is_ready(p))
        .count() as i32;
    let (expected, desired) = match (&spec.min_available, &spec.max_unavailable) {
        (Some(IntOrString::Int(n)), _) => (pods.len() as i32, *n),
        (Some(min), _) => {
            let expected = expected_from_controllers(&client, &ns, &pods).await?;
            (expected, resolve(min, expected))
        }
        (None, Some(max)) => {
            let expected = expected_from_controllers(&client, &ns, &pods).await?;
            (expected, (expected - resolve(max, expected)).max(0))
        }
        // Neither set: upstream defaults minAvailable to 1.
        (None, None) => (pods.len() as i32, 1),
    };
    let allowed = (current_healthy - desired).max(0);
    let generation = pdb.metadata.generation;
    let (status, reason, message) = if allowed > 0 {
        ("True", "SufficientPods", String::new())
    } else {
        ("False", "InsufficientPods", String::new())
    };
    let old = pdb.status.clone().unwrap_or_default();
    let unchanged =
        old.current_healthy == current_healthy
            && old.desired_healthy == desired
            && old.expected_pods == expected
            && old.disruptions_allowed == allowed
            && old.observed_generation == generation
            && old.conditions.iter().flatten().any(|c| {
                c.type_ == "DisruptionAllowed" && c.status == status && c.reason == reason
            });
    if unchanged {
        return Ok(Action::requeue(RESYNC));
    }
    let transition = old
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "DisruptionAllowed" && c.status == status)
        .map(|c| json!(c.last_transition_time))
        .unwrap_or_else(|| {
            json!(
                jiff::Timestamp::now()
                    .strftime("%Y-%m-%dT%H:%M:%SZ")
                    .to_string()
            )
        });
    let body = json!({
        "status": {
            "currentHealthy": current_healthy,
            "desiredHealthy": desired,
            "expectedPods": expected,
            "disruptionsAllowed": allowed,
            "observedGeneration": generation,
            "conditions": [{
                "type": "DisruptionAllowed", "status": status, "reason": reason,
                "message": message, "observedGeneration": generation,
                "lastTransitionTime": transition,
            }],
        },
    });
    Api::<PodDisruptionBudget>::namespaced((*client).clone(), &ns)
        .patch_status(
            &pdb.name_any(),
            &PatchParams::default(),
            &Patch::Merge(body),
        )
        .await
        .map_err(|e| DisruptionError::Status(format!("{ns}/{}", pdb.name_any()), e))?;
    Ok(Action::requeue(RESYNC))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_round_up_against_the_total() {
        assert_eq!(resolve(&IntOrString::String("50%".into()), 3), 2);
        assert_eq!(resolve(&IntOrString::String("100%".into()), 4), 4);
        assert_eq!(resolve(&IntOrString::Int(2), 10), 2);
    }
}
