//! What the collector does for one queued item (upstream's attemptToDeleteItem,
//! processDeletingDependentsItem and attemptToOrphan). Owner existence is always confirmed
//! against the API (name and UID) before a dependent is deleted.

use super::graph::{FOREGROUND, Graph, Node, ORPHAN, Resource, Work};
use super::queue::WorkQueue;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Client;
use kube::api::{
    Api, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions, PropagationPolicy,
};
use kube::core::GroupVersionKind;
use kube::discovery::{Discovery, Scope};
use serde_json::json;
use std::sync::{Arc, Mutex, RwLock};

#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error("API request")]
    Api(#[from] kube::Error),
    #[error("owner kind {0} is not served")]
    UnknownKind(String),
}

/// How an item's processing ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// Not finished (waiting for dependents): look again after a back-off.
    Requeue,
}

/// The state of one owner reference.
#[derive(Debug, PartialEq, Eq)]
enum OwnerState {
    /// Exists and is not being deleted in the foreground.
    Solid,
    /// Gone, or replaced by another object with the same name.
    Dangling,
    /// Being deleted with foreground propagation: waits for its dependents.
    Waiting,
}

/// What the workers share.
pub struct Collector {
    pub client: Client,
    pub graph: Arc<Mutex<Graph>>,
    pub queue: Arc<WorkQueue<Work>>,
    pub discovery: Arc<RwLock<Option<Arc<Discovery>>>>,
}

fn ignore_gone(r: Result<(), kube::Error>) -> Result<(), kube::Error> {
    match r {
        // 409 on a delete is a failed UID precondition: the object was replaced.
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        other => other,
    }
}

impl Collector {
    fn graph(&self) -> std::sync::MutexGuard<'_, Graph> {
        self.graph.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn api(&self, resource: &Resource, namespace: Option<&str>) -> Api<DynamicObject> {
        match namespace {
            Some(ns) if resource.namespaced => {
                Api::namespaced_with(self.client.clone(), ns, &resource.api)
            }
            _ => Api::all_with(self.client.clone(), &resource.api),
        }
    }

    pub async fn process(&self, work: &Work) -> Result<Outcome, GcError> {
        match work {
            Work::Delete(uid) => self.attempt_to_delete(uid).await,
            Work::Orphan(uid) => self.attempt_to_orphan(uid).await,
        }
    }

    async fn attempt_to_delete(&self, uid: &str) -> Result<Outcome, GcError> {
        let Some(node) = self.graph().get(uid).cloned() else {
            return Ok(Outcome::Done);
        };
        if node.deleting_dependents() {
            return self.process_deleting_dependents(&node).await;
        }
        if node.deleting || node.owners.is_empty() || self.owners_alive_in_graph(&node) {
            return Ok(Outcome::Done);
        }
        let api = self.api(&node.resource, node.namespace.as_deref());
        let Some(latest) = api.get_metadata_opt(&node.name).await? else {
            return Ok(Outcome::Done);
        };
        let meta = latest.metadata;
        if meta.uid.as_deref() != Some(uid) || meta.deletion_timestamp.is_some() {
            return Ok(Outcome::Done);
        }
        let owners = meta.owner_references.clone().unwrap_or_default();
        if owners.is_empty() {
            return Ok(Outcome::Done);
        }
        let (mut solid, mut dangling, mut waiting) = (Vec::new(), Vec::new(), Vec::new());
        for r in &owners {
            match self.classify(&node, r).await? {
                OwnerState::Solid => solid.push(r.uid.clone()),
                OwnerState::Dangling => dangling.push(r.uid.clone()),
                OwnerState::Waiting => waiting.push(r.uid.clone()),
            }
        }
        let rv = meta.resource_version.clone();
        if !solid.is_empty() {
            if dangling.is_empty() && waiting.is_empty() {
                return Ok(Outcome::Done);
            }
            // Another owner keeps it alive: only drop the references to the others.
            let keep: Vec<&OwnerReference> =
                owners.iter().filter(|r| solid.contains(&r.uid)).collect();
            tracing::info!(kind = %node.resource.api.kind, namespace = ?node.namespace, name = %node.name,
                "garbage collector: removing references to absent or deleting owners");
            let patch =
                json!({"metadata": {"uid": uid, "resourceVersion": rv, "ownerReferences": keep}});
            api.patch_metadata(&node.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            return Ok(Outcome::Done);
        }
        let has_dependents = !self.graph().dependents(uid).is_empty();
        let policy = if !waiting.is_empty() && has_dependents {
            let cycle = self
                .graph()
                .dependents(uid)
                .iter()
                .any(|d| d.deleting_dependents());
            if cycle {
                // Its dependent waits on it while its owner waits on it: unblock the owners.
                let refs: Vec<OwnerReference> = owners
                    .iter()
                    .cloned()
                    .map(|mut r| {
                        if waiting.contains(&r.uid) {
                            r.block_owner_deletion = Some(false);
                        }
                        r
                    })
                    .collect();
                let patch = json!({"metadata": {"uid": uid, "resourceVersion": rv, "ownerReferences": refs}});
                api.patch_metadata(&node.name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
            }
            PropagationPolicy::Foreground
        } else {
            let has = |f: &str| meta.finalizers.iter().flatten().any(|x| x == f);
            if has(ORPHAN) {
                PropagationPolicy::Orphan
            } else if has(FOREGROUND) {
                PropagationPolicy::Foreground
            } else {
                PropagationPolicy::Background
            }
        };
        tracing::info!(kind = %node.resource.api.kind, namespace = ?node.namespace, name = %node.name,
            ?policy, "garbage collector: deleting an object whose owners are gone or deleting");
        let dp = DeleteParams {
            propagation_policy: Some(policy),
            preconditions: Some(Preconditions {
                uid: Some(uid.to_string()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(&node.name, &dp).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
        Ok(Outcome::Done)
    }

    /// Every owner is observed, matches its reference and is not being deleted: nothing to do
    /// (saves a read per object while the graph fills at start-up).
    fn owners_alive_in_graph(&self, node: &Node) -> bool {
        let g = self.graph();
        node.owners.iter().all(|r| {
            g.get(&r.uid)
                .is_some_and(|o| o.name == r.name && o.resource.api.kind == r.kind && !o.deleting)
        })
    }

    /// Upstream's `isDangling` plus the foreground check, with the graph as a cache of
    /// live owners.
    async fn classify(&self, node: &Node, r: &OwnerReference) -> Result<OwnerState, GcError> {
        if let Some(owner) = self.graph().get(&r.uid)
            && owner.name == r.name
            && owner.resource.api.kind == r.kind
            && !owner.deleting
        {
            return Ok(OwnerState::Solid);
        }
        let (group, version) = match r.api_version.split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", r.api_version.as_str()),
        };
        let gvk = GroupVersionKind::gvk(group, version, &r.kind);
        let resolved = self
            .discovery
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .and_then(|d| d.resolve_gvk(&gvk));
        let Some((ar, caps)) = resolved else {
            return Err(GcError::UnknownKind(format!(
                "{}/{}",
                r.api_version, r.kind
            )));
        };
        let api: Api<DynamicObject> = match (&caps.scope, &node.namespace) {
            (Scope::Cluster, _) => Api::all_with(self.client.clone(), &ar),
            (Scope::Namespaced, Some(ns)) => Api::namespaced_with(self.client.clone(), ns, &ar),
            // A cluster-scoped object cannot have a namespaced owner.
            (Scope::Namespaced, None) => return Ok(OwnerState::Dangling),
        };
        let Some(owner) = api.get_metadata_opt(&r.name).await? else {
            return Ok(OwnerState::Dangling);
        };
        let m = owner.metadata;
        if m.uid.as_deref() != Some(r.uid.as_str()) {
            return Ok(OwnerState::Dangling);
        }
        let foreground = m.finalizers.iter().flatten().any(|f| f == FOREGROUND);
        if m.deletion_timestamp.is_some() && foreground {
            return Ok(OwnerState::Waiting);
        }
        Ok(OwnerState::Solid)
    }

    /// An owner in foreground deletion: once no dependent blocks it, drop its finalizer.
    async fn process_deleting_dependents(&self, node: &Node) -> Result<Outcome, GcError> {
        let blocking: Vec<(String, bool)> = self
            .graph()
            .blocking_dependents(&node.uid)
            .iter()
            .map(|d| (d.uid.clone(), d.deleting_dependents()))
            .collect();
        if blocking.is_empty() {
            self.remove_finalizer(node, FOREGROUND).await?;
            return Ok(Outcome::Done);
        }
        for (uid, deleting_dependents) in blocking {
            if !deleting_dependents {
                self.queue.add(Work::Delete(uid));
            }
        }
        Ok(Outcome::Requeue)
    }

    /// An owner deleted with orphan propagation: detach its dependents, then drop the finalizer.
    async fn attempt_to_orphan(&self, uid: &str) -> Result<Outcome, GcError> {
        let Some(node) = self.graph().get(uid).cloned() else {
            return Ok(Outcome::Done);
        };
        if !node.orphaning() {
            return Ok(Outcome::Done);
        }
        let dependents: Vec<Node> = self.graph().dependents(uid).into_iter().cloned().collect();
        for d in &dependents {
            self.remove_owner_reference(d, uid).await?;
        }
        tracing::info!(kind = %node.resource.api.kind, namespace = ?node.namespace, name = %node.name,
            dependents = dependents.len(), "garbage collector: orphaned dependents");
        self.remove_finalizer(&node, ORPHAN).await?;
        Ok(Outcome::Done)
    }

    async fn remove_owner_reference(&self, d: &Node, owner: &str) -> Result<(), GcError> {
        let api = self.api(&d.resource, d.namespace.as_deref());
        let Some(latest) = api.get_metadata_opt(&d.name).await? else {
            return Ok(());
        };
        let m = latest.metadata;
        if m.uid.as_deref() != Some(d.uid.as_str()) {
            return Ok(());
        }
        let refs = m.owner_references.unwrap_or_default();
        if !refs.iter().any(|r| r.uid == owner) {
            return Ok(());
        }
        let keep: Vec<&OwnerReference> = refs.iter().filter(|r| r.uid != owner).collect();
        let refs = if keep.is_empty() {
            json!(null)
        } else {
            json!(keep)
        };
        let patch = json!({"metadata": {"uid": d.uid, "resourceVersion": m.resource_version, "ownerReferences": refs}});
        let r = api
            .patch_metadata(&d.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(|_| ());
        Ok(ignore_gone(r)?)
    }

    async fn remove_finalizer(&self, node: &Node, finalizer: &str) -> Result<(), GcError> {
        let api = self.api(&node.resource, node.namespace.as_deref());
        let Some(latest) = api.get_metadata_opt(&node.name).await? else {
            return Ok(());
        };
        let m = latest.metadata;
        if m.uid.as_deref() != Some(node.uid.as_str()) {
            return Ok(());
        }
        let finalizers = m.finalizers.unwrap_or_default();
        if !finalizers.iter().any(|f| f == finalizer) {
            return Ok(());
        }
        let keep: Vec<&String> = finalizers.iter().filter(|f| *f != finalizer).collect();
        let patch = json!({"metadata": {"uid": node.uid, "resourceVersion": m.resource_version, "finalizers": keep}});
        let r = api
            .patch_metadata(&node.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(|_| ());
        ignore_gone(r)?;
        tracing::info!(kind = %node.resource.api.kind, namespace = ?node.namespace, name = %node.name,
            finalizer, "garbage collector: removed finalizer");
        Ok(())
    }
}
