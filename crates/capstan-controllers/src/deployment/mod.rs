//! The Deployment controller (upstream's `pkg/controller/deployment`): rolls a Deployment's pod
//! template out through ReplicaSets named `<deployment>-<pod-template-hash>`, with the
//! RollingUpdate (maxSurge/maxUnavailable) or Recreate strategy, revision annotations,
//! revisionHistoryLimit cleanup, pause, and the Available/Progressing conditions that
//! `kubectl rollout status` reads. Events only enqueue keys; each sync re-reads the caches.

mod rollout;
mod scale;
mod status;
pub mod util;

use crate::replicaset::{controller_of, selector_matches};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Periodic resync of every Deployment.
const RESYNC: Duration = Duration::from_secs(30);
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum DeploymentError {
    #[error("creating ReplicaSet {0}")]
    CreateReplicaSet(String, #[source] kube::Error),
    #[error("ReplicaSet {0} exists with another template; collision count raised")]
    HashCollision(String),
    #[error("updating ReplicaSet {0}")]
    UpdateReplicaSet(String, #[source] kube::Error),
    #[error("deleting ReplicaSet {0}")]
    DeleteReplicaSet(String, #[source] kube::Error),
    #[error("updating Deployment")]
    UpdateDeployment(#[source] kube::Error),
    #[error("updating status")]
    Status(#[source] kube::Error),
    #[error("the Deployment has no pod template")]
    NoTemplate,
}

struct Context {
    client: Client,
    pods: Store<Pod>,
    replicasets: Store<ReplicaSet>,
    failures: Mutex<HashMap<String, u32>>,
}

/// Run the controller until `stop`, reading pods and ReplicaSets from the shared caches and
/// woken by changes of its ReplicaSets (after the cache has them).
pub async fn run(
    client: Client,
    pods: Store<Pod>,
    replicasets: Store<ReplicaSet>,
    replicaset_changes: crate::replicaset::Trigger<ReplicaSet>,
    stop: CancellationToken,
) {
    if !crate::informer::wait_for_sync(&pods, &replicasets, &stop).await {
        return;
    }
    let ctx = Arc::new(Context {
        client: client.clone(),
        pods,
        replicasets,
        failures: Mutex::new(HashMap::new()),
    });
    Controller::new(
        Api::<Deployment>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns_stream(replicaset_changes)
    .graceful_shutdown_on(async move { stop.cancelled().await })
    .run(reconcile, error_policy, ctx)
    .for_each(|r| async move {
        if let Err(e) = r {
            tracing::debug!(error = %e, "deployment reconcile");
        }
    })
    .await;
}

fn key_of(d: &Deployment) -> String {
    format!("{}/{}", d.namespace().unwrap_or_default(), d.name_any())
}

fn error_policy(d: Arc<Deployment>, err: &DeploymentError, ctx: Arc<Context>) -> Action {
    let key = key_of(&d);
    let n = {
        let mut f = ctx.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = f.entry(key.clone()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    let delay = BACKOFF_BASE
        .saturating_mul(1u32 << n.min(16).saturating_sub(1))
        .min(BACKOFF_MAX);
    tracing::warn!(deployment = %key, error = %err, ?delay, "deployment sync failed");
    Action::requeue(delay)
}

/// The ownerReference a Deployment puts on its ReplicaSets.
fn owner_reference(d: &Deployment) -> OwnerReference {
    OwnerReference {
        api_version: "apps/v1".into(),
        kind: "Deployment".into(),
        name: d.name_any(),
        uid: d.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

async fn reconcile(d: Arc<Deployment>, ctx: Arc<Context>) -> Result<Action, DeploymentError> {
    let key = key_of(&d);
    let Some(spec) = d.spec.as_ref() else {
        return Ok(Action::await_change());
    };
    if d.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    if crate::replicaset::selector_valid(&spec.selector).is_err() {
        tracing::warn!(deployment = %key, "invalid or empty selector, not syncing");
        return Ok(Action::await_change());
    }
    let ns = d.namespace().unwrap_or_default();
    let api = Api::<ReplicaSet>::namespaced(ctx.client.clone(), &ns);
    let rss = claim_replicasets(&ctx, &d, &api).await?;
    let mut r = rollout::Rollout::new(&ctx, &d, api, rss);
    let requeue = if spec.paused == Some(true) {
        r.sync_paused().await?
    } else if util::is_recreate(&d) {
        r.recreate().await?
    } else {
        r.rolling().await?
    };
    let next = status::sync(&ctx, &r).await?;
    ctx.failures
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&key);
    let next = [requeue, next]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(RESYNC);
    Ok(Action::requeue(next.min(RESYNC)))
}

/// The Deployment's ReplicaSets from the cache, oldest first: owned ones that still match,
/// plus matching orphans it adopts; owned ones that stopped matching are released.
async fn claim_replicasets(
    ctx: &Context,
    d: &Deployment,
    api: &Api<ReplicaSet>,
) -> Result<Vec<ReplicaSet>, DeploymentError> {
    let ns = d.namespace();
    let uid = d.uid().unwrap_or_default();
    let Some(selector) = d.spec.as_ref().map(|s| &s.selector) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for rs in ctx.replicasets.state() {
        if rs.namespace() != ns {
            continue;
        }
        let matches = selector_matches(selector, rs.labels());
        match controller_of(&rs.metadata) {
            Some(o) if o.uid == uid => {
                if matches {
                    out.push(rs.as_ref().clone());
                } else {
                    let mut refs = rs.owner_references().to_vec();
                    refs.retain(|r| r.uid != uid);
                    patch_owners(api, &rs, refs).await?;
                }
            }
            None if matches && rs.metadata.deletion_timestamp.is_none() => {
                let mut refs = rs.owner_references().to_vec();
                refs.push(owner_reference(d));
                out.push(patch_owners(api, &rs, refs).await?);
            }
            _ => {}
        }
    }
    out.sort_by(|a, b| {
        a.metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0)
            .cmp(&b.metadata.creation_timestamp.as_ref().map(|t| t.0))
            .then_with(|| a.name_any().cmp(&b.name_any()))
    });
    Ok(out)
}

async fn patch_owners(
    api: &Api<ReplicaSet>,
    rs: &ReplicaSet,
    refs: Vec<OwnerReference>,
) -> Result<ReplicaSet, DeploymentError> {
    let body = serde_json::json!({"metadata": {"ownerReferences": refs, "uid": rs.uid()}});
    api.patch(&rs.name_any(), &PatchParams::default(), &Patch::Merge(body))
        .await
        .map_err(|e| DeploymentError::UpdateReplicaSet(rs.name_any(), e))
}
