//! The ReplicaSet controller (upstream's `pkg/controller/replicaset`): keeps `spec.replicas`
//! active pods matching the selector. Watch events only enqueue `namespace/name` keys (kube-runtime
//! `Controller`); every sync re-reads the pod cache, claims pods (adopts matching orphans,
//! releases owned pods that stopped matching), creates or deletes the difference in slow-start
//! batches, and writes status. Expectations keep a lagging cache from causing double writes.

mod pods;

use crate::expectations::Expectations;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetCondition, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub use pods::{active, controller_of, is_available, is_ready, selector_matches, selector_valid};

/// Most pods created or deleted in one sync (upstream's `BurstReplicas`).
pub const BURST_REPLICAS: usize = 500;
/// Periodic resync of every ReplicaSet.
const RESYNC: Duration = Duration::from_secs(30);
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ReplicaSetError {
    #[error("invalid selector: {0}")]
    Selector(String),
    #[error("creating pods: {0}")]
    Create(String),
    #[error("deleting pod {0}")]
    Delete(String, #[source] kube::Error),
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

/// A boxed trigger stream from a shared [`crate::informer::Informer`].
pub type Trigger<K> =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<K, watcher::Error>> + Send>>;

/// The changes that wake the controller.
pub struct Triggers {
    pub replicasets: Trigger<ReplicaSet>,
    pub pods: Trigger<Pod>,
}

/// Run the controller until `stop`, reading pods and ReplicaSets from the shared informer caches
/// and woken by their `triggers`.
pub async fn run(
    client: Client,
    pods: Store<Pod>,
    replicasets: Store<ReplicaSet>,
    triggers: Triggers,
    stop: CancellationToken,
) {
    if !crate::informer::wait_for_sync(&pods, &replicasets, &stop).await {
        return;
    }
    let ctx = Arc::new(Context {
        client: client.clone(),
        pods,
        expectations: Expectations::new(),
        failures: Mutex::new(HashMap::new()),
    });
    let mapper_store = replicasets.clone();
    Controller::for_stream(triggers.replicasets, replicasets)
        .watches_stream(triggers.pods, move |pod| owners_of(&mapper_store, &pod))
        .graceful_shutdown_on(async move { stop.cancelled().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "replicaset reconcile");
            }
        })
        .await;
}

/// The ReplicaSets a pod event concerns: its controller, or for an orphan every ReplicaSet in
/// its namespace whose selector matches (so it can be adopted).
fn owners_of(replicasets: &Store<ReplicaSet>, pod: &Pod) -> Vec<ObjectRef<ReplicaSet>> {
    let ns = pod.namespace().unwrap_or_default();
    if let Some(owner) = controller_of(pod.meta()) {
        if owner.kind == "ReplicaSet" {
            return vec![ObjectRef::new(&owner.name).within(&ns)];
        }
        return Vec::new();
    }
    replicasets
        .state()
        .iter()
        .filter(|rs| rs.namespace().as_deref() == Some(ns.as_str()))
        .filter(|rs| {
            rs.spec
                .as_ref()
                .is_some_and(|s| selector_matches(&s.selector, pod.labels()))
        })
        .map(|rs| ObjectRef::from_obj(rs.as_ref()))
        .collect()
}

fn key_of(rs: &ReplicaSet) -> String {
    format!("{}/{}", rs.namespace().unwrap_or_default(), rs.name_any())
}

fn error_policy(rs: Arc<ReplicaSet>, err: &ReplicaSetError, ctx: Arc<Context>) -> Action {
    let key = key_of(&rs);
    let n = {
        let mut f = ctx.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = f.entry(key.clone()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    let delay = BACKOFF_BASE
        .saturating_mul(1u32 << n.min(16).saturating_sub(1))
        .min(BACKOFF_MAX);
    tracing::warn!(replicaset = %key, error = %err, ?delay, "replicaset sync failed");
    Action::requeue(delay)
}

/// The ownerReference a ReplicaSet puts on its pods.
pub fn owner_reference(rs: &ReplicaSet) -> OwnerReference {
    OwnerReference {
        api_version: "apps/v1".into(),
        kind: "ReplicaSet".into(),
        name: rs.name_any(),
        uid: rs.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

async fn reconcile(rs: Arc<ReplicaSet>, ctx: Arc<Context>) -> Result<Action, ReplicaSetError> {
    let key = key_of(&rs);
    let ns = rs.namespace().unwrap_or_default();
    let Some(spec) = rs.spec.as_ref() else {
        return Ok(Action::await_change());
    };
    if let Err(e) = pods::selector_valid(&spec.selector) {
        // Retrying cannot fix the spec; the next update of the ReplicaSet requeues it.
        tracing::warn!(replicaset = %key, error = %e, "not syncing");
        return Ok(Action::await_change());
    }
    let uid = rs.uid().unwrap_or_default();
    // Keyed by UID too: a ReplicaSet deleted and recreated under the same name starts clean.
    let exp_key = format!("{key}/{uid}");
    let pods_api = Api::<Pod>::namespaced(ctx.client.clone(), &ns);
    let deleting = rs.meta().deletion_timestamp.is_some();
    // Satisfaction is checked before listing, as upstream, so the list is at least as new.
    let satisfied = ctx.expectations.satisfied(
        &exp_key,
        |name| ctx.pods.get(&ObjectRef::new(name).within(&ns)).is_some(),
        |gone| {
            !ctx.pods.state().iter().any(|p| {
                p.uid().as_deref() == Some(gone) && p.metadata.deletion_timestamp.is_none()
            })
        },
    );
    let in_ns: Vec<Arc<Pod>> = ctx
        .pods
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(ns.as_str()) && active(p))
        .collect();
    let owner = owner_reference(&rs);
    let mut owned = Vec::new();
    for pod in in_ns {
        let labels_match = selector_matches(&spec.selector, pod.labels());
        match controller_of(pod.meta()) {
            Some(o) if o.uid == uid => {
                if labels_match {
                    owned.push(pod);
                } else if !deleting {
                    release(&pods_api, &pod, &uid).await?;
                }
            }
            None if labels_match && !deleting && pod.metadata.deletion_timestamp.is_none() => {
                match adopt(&pods_api, &pod, &owner).await {
                    Ok(()) => owned.push(pod),
                    Err(ReplicaSetError::Claim(_, kube::Error::Api(s))) if s.is_not_found() => {}
                    Err(e) => return Err(e),
                }
            }
            _ => {}
        }
    }
    // Terminating pods are neither counted nor deleted again.
    let live: Vec<Arc<Pod>> = owned
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    let mut manage_err = None;
    if satisfied && !deleting {
        let want = spec.replicas.unwrap_or(1).max(0) as usize;
        if let Err(e) = manage(&ctx, &exp_key, &rs, &pods_api, &live, want).await {
            manage_err = Some(e);
        }
    }
    let status = pods::status(&rs, &live, manage_err.as_ref());
    if rs.status.as_ref() != Some(&status) {
        Api::<ReplicaSet>::namespaced(ctx.client.clone(), &ns)
            .patch_status(
                &rs.name_any(),
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({ "status": status })),
            )
            .await
            .map_err(ReplicaSetError::Status)?;
    }
    if let Some(e) = manage_err {
        return Err(e);
    }
    ctx.failures
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&key);
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let next = pods::next_availability(&live, min_ready).map_or(RESYNC, |d| d.min(RESYNC));
    Ok(Action::requeue(next))
}

/// Create or delete the difference between `live` and `want`.
async fn manage(
    ctx: &Context,
    key: &str,
    rs: &ReplicaSet,
    api: &Api<Pod>,
    live: &[Arc<Pod>],
    want: usize,
) -> Result<(), ReplicaSetError> {
    if live.len() < want {
        let diff = (want - live.len()).min(BURST_REPLICAS);
        let template = pod_from_template(rs)?;
        let mut remaining = diff;
        let mut batch = 1usize;
        // Slow start: 1, 2, 4, ... so a pod that can never be created costs one call, not N.
        while remaining > 0 {
            let n = batch.min(remaining);
            let pp = PostParams::default();
            let results =
                futures::future::join_all((0..n).map(|_| api.create(&pp, &template))).await;
            let mut errors = Vec::new();
            let mut created = Vec::new();
            for r in results {
                match r {
                    Ok(p) => created.push(p.name_any()),
                    Err(e) => errors.push(e.to_string()),
                }
            }
            ctx.expectations.expect_creations(key, created);
            if !errors.is_empty() {
                return Err(ReplicaSetError::Create(errors.join("; ")));
            }
            remaining -= n;
            batch = batch.saturating_mul(2);
        }
        tracing::info!(replicaset = %key, count = diff, "created pods");
    } else if live.len() > want {
        let diff = (live.len() - want).min(BURST_REPLICAS);
        let mut victims: Vec<&Arc<Pod>> = live.iter().collect();
        victims.sort_by(|a, b| pods::deletion_order(a, b));
        victims.truncate(diff);
        ctx.expectations
            .expect_deletions(key, victims.iter().filter_map(|p| p.uid()));
        let dp = DeleteParams::default();
        let results = futures::future::join_all(
            victims
                .iter()
                .map(|p| api.delete(p.metadata.name.as_deref().unwrap_or(""), &dp)),
        )
        .await;
        for (p, r) in victims.iter().zip(results) {
            match r {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.is_not_found() => {}
                Err(e) => {
                    ctx.expectations.forget(key);
                    return Err(ReplicaSetError::Delete(p.name_any(), e));
                }
            }
        }
        tracing::info!(replicaset = %key, count = diff, "deleted pods");
    }
    Ok(())
}

/// A pod to create from the ReplicaSet's template (`generateName: <rs>-`).
fn pod_from_template(rs: &ReplicaSet) -> Result<Pod, ReplicaSetError> {
    let template = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.clone())
        .ok_or_else(|| ReplicaSetError::Create("the ReplicaSet has no pod template".into()))?;
    let meta = template.metadata.unwrap_or_default();
    let mut pod = Pod {
        spec: template.spec,
        ..Pod::default()
    };
    pod.metadata.generate_name = Some(format!("{}-", rs.name_any()));
    pod.metadata.labels = meta.labels;
    pod.metadata.annotations = meta.annotations;
    pod.metadata.finalizers = meta.finalizers;
    pod.metadata.owner_references = Some(vec![owner_reference(rs)]);
    Ok(pod)
}

/// Adds the controller ownerReference to an orphan.
async fn adopt(api: &Api<Pod>, pod: &Pod, owner: &OwnerReference) -> Result<(), ReplicaSetError> {
    let mut refs = pod.metadata.owner_references.clone().unwrap_or_default();
    refs.retain(|r| r.uid != owner.uid);
    refs.push(owner.clone());
    patch_owners(api, pod, refs).await
}

/// Removes this controller's ownerReference from a pod that no longer matches.
async fn release(api: &Api<Pod>, pod: &Pod, uid: &str) -> Result<(), ReplicaSetError> {
    let mut refs = pod.metadata.owner_references.clone().unwrap_or_default();
    refs.retain(|r| r.uid != uid);
    match patch_owners(api, pod, refs).await {
        Err(ReplicaSetError::Claim(_, kube::Error::Api(s))) if s.is_not_found() => Ok(()),
        r => r,
    }
}

async fn patch_owners(
    api: &Api<Pod>,
    pod: &Pod,
    refs: Vec<OwnerReference>,
) -> Result<(), ReplicaSetError> {
    // The pod's UID as a precondition: never claim a same-named replacement.
    let body = serde_json::json!({
        "metadata": {"ownerReferences": refs, "uid": pod.uid()}
    });
    api.patch(
        &pod.name_any(),
        &PatchParams::default(),
        &Patch::Merge(body),
    )
    .await
    .map(|_| ())
    .map_err(|e| ReplicaSetError::Claim(pod.name_any(), e))
}

/// The `ReplicaFailure` condition after a sync (upstream keeps it while creates fail).
fn failure_condition(
    old: Option<&ReplicaSetStatus>,
    err: Option<&ReplicaSetError>,
) -> Option<ReplicaSetCondition> {
    let err = err?;
    let reason = match err {
        ReplicaSetError::Create(_) => "FailedCreate",
        ReplicaSetError::Delete(..) => "FailedDelete",
        _ => return None,
    };
    let prev = old
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "ReplicaFailure"));
    Some(ReplicaSetCondition {
        type_: "ReplicaFailure".into(),
        status: "True".into(),
        reason: Some(reason.into()),
        message: Some(err.to_string()),
        last_transition_time: prev
            .and_then(|p| p.last_transition_time.clone())
            .or_else(|| Some(Time(jiff::Timestamp::now()))),
    })
}
