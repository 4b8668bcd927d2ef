//! The StatefulSet controller (upstream's `pkg/controller/statefulset`): pods with stable
//! identities `<set>-<ordinal>`, created in order (OrderedReady) or all at once (Parallel),
//! removed from the highest ordinal down, updated from the highest ordinal down to the partition
//! (RollingUpdate) or when deleted (OnDelete), each with its PersistentVolumeClaims from
//! `volumeClaimTemplates`. Templates are snapshotted as ControllerRevisions (see [`history`]),
//! which is what the status' currentRevision/updateRevision name.

pub mod history;
pub mod pods;
mod sync;

use crate::expectations::Expectations;
use crate::replicaset::{Trigger, active, controller_of, selector_matches, selector_valid};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use history::{HistoryError, Snapshot};

/// Periodic resync of every StatefulSet.
const RESYNC: Duration = Duration::from_secs(30);
/// Recheck while the cache has not yet seen this controller's writes.
const EXPECTATIONS_RECHECK: Duration = Duration::from_secs(1);
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum StatefulSetError {
    #[error("revision history")]
    History(#[from] HistoryError),
    #[error("creating pod {0}")]
    CreatePod(String, #[source] kube::Error),
    #[error("deleting pod {0}")]
    DeletePod(String, #[source] kube::Error),
    #[error("creating claim {0}")]
    CreateClaim(String, #[source] kube::Error),
    #[error("updating claim {0}")]
    UpdateClaim(String, #[source] kube::Error),
    #[error("the StatefulSet's current revision holds no pod template")]
    NoTemplate,
    #[error("updating ownerReferences of pod {0}")]
    Claim(String, #[source] kube::Error),
    #[error("updating status")]
    Status(#[source] kube::Error),
}

struct Context {
    client: Client,
    pods: Store<Pod>,
    expectations: Expectations,
    failures: Mutex<HashMap<String, u32>>,
}

/// The changes that wake the controller.
pub struct Triggers {
    pub sets: Trigger<StatefulSet>,
    pub pods: Trigger<Pod>,
}

/// Run the controller until `stop`, reading pods and StatefulSets from shared informer caches.
pub async fn run(
    client: Client,
    pods: Store<Pod>,
    sets: Store<StatefulSet>,
    triggers: Triggers,
    stop: CancellationToken,
) {
    if !crate::informer::wait_for_sync(&pods, &sets, &stop).await {
        return;
    }
    let ctx = Arc::new(Context {
        client,
        pods,
        expectations: Expectations::new(),
        failures: Mutex::new(HashMap::new()),
    });
    let mapper_store = sets.clone();
    Controller::for_stream(triggers.sets, sets)
        .watches_stream(triggers.pods, move |pod| owners_of(&mapper_store, &pod))
        .graceful_shutdown_on(async move { stop.cancelled().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "statefulset reconcile");
            }
        })
        .await;
}

/// The sets a pod event concerns: its controller, or for an orphan every set in its namespace
/// whose selector matches (so it can be adopted).
fn owners_of(sets: &Store<StatefulSet>, pod: &Pod) -> Vec<ObjectRef<StatefulSet>> {
    let ns = pod.namespace().unwrap_or_default();
    if let Some(owner) = controller_of(pod.meta()) {
        if owner.kind == "StatefulSet" {
            return vec![ObjectRef::new(&owner.name).within(&ns)];
        }
        return Vec::new();
    }
    sets.state()
        .iter()
        .filter(|s| s.namespace().as_deref() == Some(ns.as_str()))
        .filter(|s| {
            s.spec
                .as_ref()
                .is_some_and(|sp| selector_matches(&sp.selector, pod.labels()))
        })
        .map(|s| ObjectRef::from_obj(s.as_ref()))
        .collect()
}

fn key_of(set: &StatefulSet) -> String {
    format!("{}/{}", set.namespace().unwrap_or_default(), set.name_any())
}

fn error_policy(set: Arc<StatefulSet>, err: &StatefulSetError, ctx: Arc<Context>) -> Action {
    let key = key_of(&set);
    let n = {
        let mut f = ctx.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = f.entry(key.clone()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    let delay = BACKOFF_BASE
        .saturating_mul(1u32 << n.min(16).saturating_sub(1))
        .min(BACKOFF_MAX);
    tracing::warn!(statefulset = %key, error = %err, ?delay, "statefulset sync failed");
    Action::requeue(delay)
}

async fn patch_status(
    client: &Client,
    set: &StatefulSet,
    status: &StatefulSetStatus,
) -> Result<(), StatefulSetError> {
    Api::<StatefulSet>::namespaced(client.clone(), &set.namespace().unwrap_or_default())
        .patch_status(
            &set.name_any(),
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "status": status })),
        )
        .await
        .map(|_| ())
        .map_err(StatefulSetError::Status)
}

async fn reconcile(set: Arc<StatefulSet>, ctx: Arc<Context>) -> Result<Action, StatefulSetError> {
    let key = key_of(&set);
    let ns = set.namespace().unwrap_or_default();
    let Some(spec) = set.spec.as_ref() else {
        return Ok(Action::await_change());
    };
    // A deleted set's pods and claims go with the garbage collector (ownerReferences).
    if set.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    if let Err(e) = selector_valid(&spec.selector) {
        tracing::warn!(statefulset = %key, error = %e, "not syncing");
        return Ok(Action::await_change());
    }
    let uid = set.uid().unwrap_or_default();
    let exp_key = format!("{key}/{uid}");
    let satisfied = ctx.expectations.satisfied(
        &exp_key,
        |name| ctx.pods.get(&ObjectRef::new(name).within(&ns)).is_some(),
        |gone| {
            !ctx.pods.state().iter().any(|p| {
                p.uid().as_deref() == Some(gone) && p.metadata.deletion_timestamp.is_none()
            })
        },
    );
    if !satisfied {
        return Ok(Action::requeue(EXPECTATIONS_RECHECK));
    }

    let mut revs = history::list_owned(&ctx.client, &ns, &uid).await?;
    let old_status = set.status.clone().unwrap_or_default();
    let snap = Snapshot {
        parent_name: &set.name_any(),
        owner: pods::owner_reference(&set),
        labels: spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default(),
        data: history::template_patch(&spec.template),
        collision_count: old_status.collision_count,
        hash_label: false,
    };
    let update = match history::ensure_revision(&ctx.client, &ns, &mut revs, snap).await {
        Ok(r) => r,
        Err(HistoryError::Collision(name)) => {
            tracing::info!(statefulset = %key, revision = %name, "revision name collision");
            let status = StatefulSetStatus {
                collision_count: Some(old_status.collision_count.unwrap_or(0) + 1),
                ..old_status
            };
            patch_status(&ctx.client, &set, &status).await?;
            return Ok(Action::requeue(Duration::ZERO));
        }
        Err(e) => return Err(e.into()),
    };
    let current = old_status
        .current_revision
        .as_ref()
        .and_then(|c| revs.iter().find(|r| r.name_any() == *c))
        .cloned()
        .unwrap_or_else(|| update.clone());

    let owned = claim_pods(&ctx, &set, &ns, &uid).await?;
    let mut run = sync::SetSync {
        client: &ctx.client,
        expectations: &ctx.expectations,
        exp_key: &exp_key,
        set: &set,
        current: &current,
        update: &update,
    };
    let outcome = run.sync(&owned).await;
    let status = sync::status(&set, &owned, &current, &update);
    if set.status.as_ref() != Some(&status) {
        patch_status(&ctx.client, &set, &status).await?;
    }
    outcome?;

    let mut live: HashSet<String> = owned
        .iter()
        .filter_map(|p| pods::revision_of(p).map(String::from))
        .collect();
    live.insert(current.name_any());
    live.insert(update.name_any());
    let limit = spec.revision_history_limit.unwrap_or(10);
    history::truncate(&ctx.client, &ns, &revs, &live, limit).await;

    ctx.failures
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&key);
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    Ok(Action::requeue(
        sync::next_availability(&owned, min_ready).unwrap_or(RESYNC),
    ))
}

/// The set's pods after upstream's `ClaimPods`: matching orphans are adopted, owned pods that
/// no longer match the selector are released.
async fn claim_pods(
    ctx: &Context,
    set: &StatefulSet,
    ns: &str,
    uid: &str,
) -> Result<Vec<Arc<Pod>>, StatefulSetError> {
    let Some(spec) = set.spec.as_ref() else {
        return Ok(Vec::new());
    };
    let api = Api::<Pod>::namespaced(ctx.client.clone(), ns);
    let mut owned = Vec::new();
    for pod in ctx.pods.state() {
        if pod.namespace().as_deref() != Some(ns) {
            continue;
        }
        let matches = selector_matches(&spec.selector, pod.labels());
        let mut refs = pod.metadata.owner_references.clone().unwrap_or_default();
        match controller_of(pod.meta()) {
            Some(o) if o.uid == uid && matches => owned.push(pod),
            Some(o) if o.uid == uid => {
                refs.retain(|r| r.uid != uid);
                patch_owners(&api, &pod, refs).await?;
            }
            None if matches && pod.metadata.deletion_timestamp.is_none() && active(&pod) => {
                refs.push(pods::owner_reference(set));
                patch_owners(&api, &pod, refs).await?;
                tracing::info!(pod = %pod.name_any(), statefulset = %set.name_any(), "adopted pod");
                owned.push(pod);
            }
            _ => {}
        }
    }
    Ok(owned)
}

async fn patch_owners(
    api: &Api<Pod>,
    pod: &Pod,
    refs: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>,
) -> Result<(), StatefulSetError> {
    // The pod's UID as a precondition: never claim a same-named replacement.
    let body = serde_json::json!({"metadata": {"ownerReferences": refs, "uid": pod.uid()}});
    match api
        .patch(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(body),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.is_not_found() || s.code == 409 => Ok(()),
        Err(e) => Err(StatefulSetError::Claim(pod.name_any(), e)),
    }
}
