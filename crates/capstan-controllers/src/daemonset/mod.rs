//! The DaemonSet controller (upstream's `pkg/controller/daemon`): one pod per eligible node
//! (nodeSelector, required node affinity, taints against tolerations), pinned to its node with
//! required node affinity on `metadata.name` and bound by the scheduler. Templates are
//! snapshotted as ControllerRevisions; RollingUpdate (maxUnavailable, maxSurge) replaces pods of
//! older revisions, OnDelete only when they are deleted.

pub mod nodes;
mod update;

use crate::expectations::Expectations;
use crate::replicaset::{
    Trigger, controller_of, is_available, is_ready, selector_matches, selector_valid,
};
use crate::statefulset::history::{self, HistoryError, REVISION_HASH_LABEL, Snapshot};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use nodes::Placement;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The (deprecated, still set by upstream) label with the DaemonSet generation of a pod.
pub const TEMPLATE_GENERATION_LABEL: &str = "pod-template-generation";
const RESYNC: Duration = Duration::from_secs(30);
const EXPECTATIONS_RECHECK: Duration = Duration::from_secs(1);
const DS_EXPECTATIONS_TIMEOUT: Duration = Duration::from_secs(15);
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum DaemonSetError {
    #[error("revision history")]
    History(#[from] HistoryError),
    #[error("the DaemonSet has no pod template spec")]
    NoTemplate,
    #[error("creating a pod for node {0}")]
    CreatePod(String, #[source] kube::Error),
    #[error("deleting pod {0}")]
    DeletePod(String, #[source] kube::Error),
    #[error("updating ownerReferences of pod {0}")]
    Claim(String, #[source] kube::Error),
    #[error("updating status")]
    Status(#[source] kube::Error),
}

struct Context {
    client: Client,
    pods: Store<Pod>,
    nodes: Store<Node>,
    expectations: Expectations,
    failures: Mutex<HashMap<String, u32>>,
}

/// The changes that wake the controller.
pub struct Triggers {
    pub daemonsets: Trigger<DaemonSet>,
    pub pods: Trigger<Pod>,
    pub nodes: Trigger<Node>,
}

/// Run the controller until `stop`, reading pods, DaemonSets and nodes from shared caches.
pub async fn run(
    client: Client,
    pods: Store<Pod>,
    daemonsets: Store<DaemonSet>,
    nodes: Store<Node>,
    triggers: Triggers,
    stop: CancellationToken,
) {
    if !crate::informer::wait_for_sync(&pods, &daemonsets, &stop).await
        || !crate::informer::wait_for_sync(&nodes, &daemonsets, &stop).await
    {
        return;
    }
    let ctx = Arc::new(Context {
        client,
        pods,
        nodes,
        // Short: a pod deleted before the cache saw its creation leaves the expectation
        // unobservable until it expires.
        expectations: Expectations::with_timeout(DS_EXPECTATIONS_TIMEOUT),
        failures: Mutex::new(HashMap::new()),
    });
    let all = daemonsets.clone();
    let mapper_store = daemonsets.clone();
    Controller::for_stream(triggers.daemonsets, daemonsets)
        .watches_stream(triggers.pods, move |pod| owners_of(&mapper_store, &pod))
        // Any node change (added, removed, relabelled, tainted) may change every placement.
        .watches_stream(triggers.nodes, move |_node| {
            all.state()
                .iter()
                .map(|d| ObjectRef::from_obj(d.as_ref()))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(async move { stop.cancelled().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "daemonset reconcile");
            }
        })
        .await;
}

/// The DaemonSets a pod event concerns: its controller, or for an orphan every DaemonSet in its
/// namespace whose selector matches (so it can be adopted).
fn owners_of(daemonsets: &Store<DaemonSet>, pod: &Pod) -> Vec<ObjectRef<DaemonSet>> {
    let ns = pod.namespace().unwrap_or_default();
    if let Some(owner) = controller_of(pod.meta()) {
        if owner.kind == "DaemonSet" {
            return vec![ObjectRef::new(&owner.name).within(&ns)];
        }
        return Vec::new();
    }
    daemonsets
        .state()
        .iter()
        .filter(|d| d.namespace().as_deref() == Some(ns.as_str()))
        .filter(|d| {
            d.spec
                .as_ref()
                .is_some_and(|sp| selector_matches(&sp.selector, pod.labels()))
        })
        .map(|d| ObjectRef::from_obj(d.as_ref()))
        .collect()
}

/// The DaemonSet's pods after upstream's `ClaimPods`: matching orphans are adopted, owned pods
/// that no longer match the selector are released.
async fn claim_pods(
    ctx: &Context,
    ds: &DaemonSet,
    ns: &str,
    uid: &str,
) -> Result<Vec<Arc<Pod>>, DaemonSetError> {
    let Some(spec) = ds.spec.as_ref() else {
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
            None if matches && pod.metadata.deletion_timestamp.is_none() && !finished(&pod) => {
                refs.push(owner_reference(ds));
                patch_owners(&api, &pod, refs).await?;
                tracing::info!(pod = %pod.name_any(), daemonset = %ds.name_any(), "adopted pod");
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
    refs: Vec<OwnerReference>,
) -> Result<(), DaemonSetError> {
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
        Err(e) => Err(DaemonSetError::Claim(pod.name_any(), e)),
    }
}

fn key_of(ds: &DaemonSet) -> String {
    format!("{}/{}", ds.namespace().unwrap_or_default(), ds.name_any())
}

fn error_policy(ds: Arc<DaemonSet>, err: &DaemonSetError, ctx: Arc<Context>) -> Action {
    let key = key_of(&ds);
    let n = {
        let mut f = ctx.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = f.entry(key.clone()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    let delay = BACKOFF_BASE
        .saturating_mul(1u32 << n.min(16).saturating_sub(1))
        .min(BACKOFF_MAX);
    tracing::warn!(daemonset = %key, error = %err, ?delay, "daemonset sync failed");
    Action::requeue(delay)
}

pub fn owner_reference(ds: &DaemonSet) -> OwnerReference {
    OwnerReference {
        api_version: "apps/v1".into(),
        kind: "DaemonSet".into(),
        name: ds.name_any(),
        uid: ds.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// One node's view for a sync: where the pod belongs and the DaemonSet's pods there.
pub(crate) struct NodeState {
    pub name: String,
    pub placement: Placement,
    /// Live (not terminating, not finished) pods, oldest first.
    pub live: Vec<Arc<Pod>>,
}

/// Everything one sync works from.
pub(crate) struct DaemonSync<'a> {
    client: &'a Client,
    expectations: &'a Expectations,
    exp_key: &'a str,
    ds: &'a DaemonSet,
    /// The update revision's hash (the pods' `controller-revision-hash`).
    hash: String,
}

fn finished(p: &Pod) -> bool {
    matches!(
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Failed") | Some("Succeeded")
    )
}

pub(crate) fn hash_of(p: &Pod) -> Option<&str> {
    p.labels().get(REVISION_HASH_LABEL).map(String::as_str)
}

impl DaemonSync<'_> {
    fn pods_api(&self) -> Api<Pod> {
        Api::namespaced(
            self.client.clone(),
            &self.ds.namespace().unwrap_or_default(),
        )
    }

    async fn create(&self, node: &str) -> Result<(), DaemonSetError> {
        let spec = self.ds.spec.as_ref().ok_or(DaemonSetError::NoTemplate)?;
        let meta = spec.template.metadata.clone().unwrap_or_default();
        let mut pod_spec = spec
            .template
            .spec
            .clone()
            .ok_or(DaemonSetError::NoTemplate)?;
        nodes::add_default_tolerations(&mut pod_spec);
        nodes::pin_to_node(&mut pod_spec, node);
        let mut pod = Pod {
            spec: Some(pod_spec),
            ..Pod::default()
        };
        pod.metadata.generate_name = Some(format!("{}-", self.ds.name_any()));
        let mut labels = meta.labels.unwrap_or_default();
        labels.insert(REVISION_HASH_LABEL.into(), self.hash.clone());
        if let Some(g) = self.ds.metadata.generation {
            labels.insert(TEMPLATE_GENERATION_LABEL.into(), g.to_string());
        }
        pod.metadata.labels = Some(labels);
        pod.metadata.annotations = meta.annotations;
        pod.metadata.finalizers = meta.finalizers;
        pod.metadata.owner_references = Some(vec![owner_reference(self.ds)]);
        let created = self
            .pods_api()
            .create(&PostParams::default(), &pod)
            .await
            .map_err(|e| DaemonSetError::CreatePod(node.to_string(), e))?;
        self.expectations
            .expect_creations(self.exp_key, [created.name_any()]);
        tracing::info!(daemonset = %self.exp_key, pod = %created.name_any(), node, "created daemon pod");
        Ok(())
    }

    async fn delete(&self, pod: &Pod) -> Result<(), DaemonSetError> {
        let name = pod.name_any();
        if let Some(uid) = pod.uid() {
            self.expectations.expect_deletions(self.exp_key, [uid]);
        }
        match self
            .pods_api()
            .delete(&name, &DeleteParams::default())
            .await
        {
            Ok(_) => {
                tracing::info!(daemonset = %self.exp_key, pod = %name, "deleted daemon pod");
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
            Err(e) => {
                self.expectations.forget(self.exp_key);
                Err(DaemonSetError::DeletePod(name, e))
            }
        }
    }

    /// Creates missing pods, deletes finished, misplaced and duplicate ones (upstream's
    /// `manage` with `podsShouldBeOnNode`).
    async fn manage(
        &self,
        states: &[NodeState],
        all: &BTreeMap<String, Vec<Arc<Pod>>>,
    ) -> Result<(), DaemonSetError> {
        let surge = update::max_surge(self.ds, states) > 0;
        for (node, pods) in all {
            let state = states.iter().find(|s| s.name == *node);
            for p in pods
                .iter()
                .filter(|p| finished(p) && p.metadata.deletion_timestamp.is_none())
            {
                self.delete(p).await?;
            }
            let Some(state) = state else {
                // The node is gone: its pods go too.
                for p in pods
                    .iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                {
                    self.delete(p).await?;
                }
                continue;
            };
            if !state.placement.keep {
                for p in &state.live {
                    self.delete(p).await?;
                }
                continue;
            }
            // Duplicates: keep the oldest pod, or with surge the oldest of each revision.
            let (mut kept_new, mut kept_old) = (false, false);
            for p in &state.live {
                let is_new = surge && hash_of(p) == Some(self.hash.as_str());
                let kept = if is_new { kept_new } else { kept_old };
                if kept {
                    self.delete(p).await?;
                } else if is_new {
                    kept_new = true;
                } else {
                    kept_old = true;
                }
            }
        }
        for state in states {
            if state.placement.run && state.live.is_empty() {
                self.create(&state.name).await?;
            }
        }
        Ok(())
    }
}

async fn patch_status(
    client: &Client,
    ds: &DaemonSet,
    status: &DaemonSetStatus,
) -> Result<(), DaemonSetError> {
    Api::<DaemonSet>::namespaced(client.clone(), &ds.namespace().unwrap_or_default())
        .patch_status(
            &ds.name_any(),
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "status": status })),
        )
        .await
        .map(|_| ())
        .map_err(DaemonSetError::Status)
}

async fn reconcile(ds: Arc<DaemonSet>, ctx: Arc<Context>) -> Result<Action, DaemonSetError> {
    let key = key_of(&ds);
    let ns = ds.namespace().unwrap_or_default();
    let Some(spec) = ds.spec.as_ref() else {
        return Ok(Action::await_change());
    };
    if ds.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    if let Err(e) = selector_valid(&spec.selector) {
        tracing::warn!(daemonset = %key, error = %e, "not syncing");
        return Ok(Action::await_change());
    }
    let uid = ds.uid().unwrap_or_default();
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
    let old_status = ds.status.clone().unwrap_or_default();
    let snap = Snapshot {
        parent_name: &ds.name_any(),
        owner: owner_reference(&ds),
        labels: spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default(),
        data: history::template_patch(&spec.template),
        collision_count: old_status.collision_count,
        hash_label: true,
    };
    let rev = match history::ensure_revision(&ctx.client, &ns, &mut revs, snap).await {
        Ok(r) => r,
        Err(HistoryError::Collision(name)) => {
            tracing::info!(daemonset = %key, revision = %name, "revision name collision");
            let status = DaemonSetStatus {
                collision_count: Some(old_status.collision_count.unwrap_or(0) + 1),
                ..old_status
            };
            patch_status(&ctx.client, &ds, &status).await?;
            return Ok(Action::requeue(Duration::ZERO));
        }
        Err(e) => return Err(e.into()),
    };
    let hash = rev
        .labels()
        .get(REVISION_HASH_LABEL)
        .cloned()
        .unwrap_or_else(|| {
            rev.name_any()
                .trim_start_matches(&format!("{}-", ds.name_any()))
                .to_string()
        });

    let mut owned = claim_pods(&ctx, &ds, &ns, &uid).await?;
    owned.sort_by(|a, b| {
        a.metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0)
            .cmp(&b.metadata.creation_timestamp.as_ref().map(|t| t.0))
            .then_with(|| a.name_any().cmp(&b.name_any()))
    });
    let all = nodes::by_node(&owned);
    let mut template = spec.template.spec.clone().unwrap_or_default();
    nodes::add_default_tolerations(&mut template);
    let mut states: Vec<NodeState> = ctx
        .nodes
        .state()
        .iter()
        .map(|n| {
            let name = n.name_any();
            let live = all
                .get(&name)
                .into_iter()
                .flatten()
                .filter(|p| p.metadata.deletion_timestamp.is_none() && !finished(p))
                .cloned()
                .collect();
            NodeState {
                placement: nodes::placement(&template, n),
                name,
                live,
            }
        })
        .collect();
    states.sort_by(|a, b| a.name.cmp(&b.name));

    let sync = DaemonSync {
        client: &ctx.client,
        expectations: &ctx.expectations,
        exp_key: &exp_key,
        ds: &ds,
        hash: hash.clone(),
    };
    let mut outcome = sync.manage(&states, &all).await;
    if outcome.is_ok() && update::rolling(&ds) {
        outcome = sync.rolling_update(&states).await;
    }
    let status = status(&ds, &states, &hash, old_status.collision_count);
    if ds.status.as_ref() != Some(&status) {
        patch_status(&ctx.client, &ds, &status).await?;
    }
    outcome?;

    let mut live: HashSet<String> = HashSet::from([rev.name_any()]);
    for r in &revs {
        if let Some(h) = r.labels().get(REVISION_HASH_LABEL)
            && owned.iter().any(|p| hash_of(p) == Some(h.as_str()))
        {
            live.insert(r.name_any());
        }
    }
    history::truncate(
        &ctx.client,
        &ns,
        &revs,
        &live,
        spec.revision_history_limit.unwrap_or(10),
    )
    .await;
    ctx.failures
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&key);
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let waiting = min_ready > 0
        && owned
            .iter()
            .any(|p| is_ready(p) && !is_available(p, min_ready, jiff::Timestamp::now()));
    Ok(Action::requeue(if waiting {
        Duration::from_secs(1)
    } else {
        RESYNC
    }))
}

/// The status from the node states (upstream's `updateDaemonSetStatus`).
fn status(
    ds: &DaemonSet,
    states: &[NodeState],
    hash: &str,
    collisions: Option<i32>,
) -> DaemonSetStatus {
    let min_ready = ds
        .spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .unwrap_or(0);
    let now = jiff::Timestamp::now();
    let mut s = DaemonSetStatus {
        observed_generation: ds.metadata.generation,
        collision_count: collisions,
        conditions: ds.status.as_ref().and_then(|s| s.conditions.clone()),
        ..DaemonSetStatus::default()
    };
    let (mut ready, mut available, mut updated) = (0, 0, 0);
    for st in states {
        let scheduled = !st.live.is_empty();
        if st.placement.run {
            s.desired_number_scheduled += 1;
            if scheduled {
                s.current_number_scheduled += 1;
                // The newest pod on the node speaks for it.
                if let Some(p) = st.live.last() {
                    if is_ready(p) {
                        ready += 1;
                        if is_available(p, min_ready, now) {
                            available += 1;
                        }
                    }
                    if hash_of(p) == Some(hash) {
                        updated += 1;
                    }
                }
            }
        } else if scheduled {
            s.number_misscheduled += 1;
        }
    }
    s.number_ready = ready;
    s.number_available = Some(available);
    s.updated_number_scheduled = Some(updated);
    s.number_unavailable = Some((s.desired_number_scheduled - available).max(0));
    s
}
