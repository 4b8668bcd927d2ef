//! The ownership graph (upstream's GraphBuilder): every observed object by UID with its owner
//! references, plus the reverse index owner UID → dependents. Applying an observed change
//! returns the work it calls for: objects to check for deletion, owners to orphan.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::discovery::ApiResource;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Finalizer of an owner deleted with foreground propagation.
pub const FOREGROUND: &str = "foregroundDeletion";
/// Finalizer of an owner deleted with orphan propagation.
pub const ORPHAN: &str = "orphan";

/// Work the graph asks of the workers, keyed by UID.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Work {
    /// Check whether the object should be deleted, or (owner in foreground deletion) whether
    /// its dependents are gone.
    Delete(String),
    /// Remove the owner's dependents' references to it, then its `orphan` finalizer.
    Orphan(String),
}

/// An observed object.
#[derive(Clone, Debug)]
pub struct Node {
    pub resource: Arc<Resource>,
    pub namespace: Option<String>,
    pub name: String,
    pub uid: String,
    pub owners: Vec<OwnerReference>,
    pub deleting: bool,
    pub finalizers: Vec<String>,
}

/// A served resource the graph watches.
#[derive(Debug, PartialEq, Eq)]
pub struct Resource {
    pub api: ApiResource,
    pub namespaced: bool,
}

impl Resource {
    /// A stable key (`group/version/plural`).
    pub fn key(&self) -> String {
        format!("{}/{}", self.api.api_version, self.api.plural)
    }
}

impl Node {
    pub fn from_meta(resource: Arc<Resource>, meta: &ObjectMeta) -> Option<Node> {
        Some(Node {
            resource,
            namespace: meta.namespace.clone(),
            name: meta.name.clone()?,
            uid: meta.uid.clone()?,
            owners: meta.owner_references.clone().unwrap_or_default(),
            deleting: meta.deletion_timestamp.is_some(),
            finalizers: meta.finalizers.clone().unwrap_or_default(),
        })
    }

    fn has_finalizer(&self, f: &str) -> bool {
        self.finalizers.iter().any(|x| x == f)
    }

    /// Being deleted with foreground propagation: waits for its blocking dependents.
    pub fn deleting_dependents(&self) -> bool {
        self.deleting && self.has_finalizer(FOREGROUND)
    }

    pub fn orphaning(&self) -> bool {
        self.deleting && self.has_finalizer(ORPHAN)
    }

    fn owner(&self, uid: &str) -> Option<&OwnerReference> {
        self.owners.iter().find(|o| o.uid == uid)
    }
}

/// Every observed object and the reverse owner index.
#[derive(Debug, Default)]
pub struct Graph {
    nodes: HashMap<String, Node>,
    dependents: HashMap<String, HashSet<String>>,
    /// UIDs observed per resource key, to find what a relist no longer has.
    by_resource: HashMap<String, HashSet<String>>,
}

impl Graph {
    pub fn get(&self, uid: &str) -> Option<&Node> {
        self.nodes.get(uid)
    }

    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Observed dependents of `owner`.
    pub fn dependents(&self, owner: &str) -> Vec<&Node> {
        self.dependents
            .get(owner)
            .into_iter()
            .flatten()
            .filter_map(|d| self.nodes.get(d))
            .filter(|d| d.owner(owner).is_some())
            .collect()
    }

    /// Dependents whose reference to `owner` has blockOwnerDeletion=true.
    pub fn blocking_dependents(&self, owner: &str) -> Vec<&Node> {
        self.dependents(owner)
            .into_iter()
            .filter(|d| {
                d.owner(owner)
                    .is_some_and(|r| r.block_owner_deletion == Some(true))
            })
            .collect()
    }

    fn unlink(&mut self, dependent: &str, owner: &str) {
        if let Some(set) = self.dependents.get_mut(owner) {
            set.remove(dependent);
            if set.is_empty() {
                self.dependents.remove(owner);
            }
        }
    }

    /// An object was added or changed.
    pub fn upsert(&mut self, node: Node) -> Vec<Work> {
        let mut work = Vec::new();
        let uid = node.uid.clone();
        let old = self.nodes.remove(&uid);
        self.by_resource
            .entry(node.resource.key())
            .or_default()
            .insert(uid.clone());
        if let Some(old) = &old {
            for o in &old.owners {
                let changed = match node.owner(&o.uid) {
                    None => {
                        self.unlink(&uid, &o.uid);
                        true
                    }
                    Some(n) => n.block_owner_deletion != o.block_owner_deletion,
                };
                // A removed or unblocked reference may unblock an owner in foreground deletion.
                if changed
                    && self
                        .nodes
                        .get(&o.uid)
                        .is_some_and(Node::deleting_dependents)
                {
                    work.push(Work::Delete(o.uid.clone()));
                }
            }
        }
        for o in &node.owners {
            self.dependents
                .entry(o.uid.clone())
                .or_default()
                .insert(uid.clone());
            match self.nodes.get(&o.uid) {
                // Unknown owner: it may be absent (or just not listed yet); the worker checks.
                None => work.push(Work::Delete(uid.clone())),
                Some(owner) if owner.deleting_dependents() => {
                    work.push(Work::Delete(uid.clone()));
                    work.push(Work::Delete(o.uid.clone()));
                }
                Some(_) => {}
            }
        }
        if node.deleting_dependents() {
            if !old.as_ref().is_some_and(Node::deleting_dependents) {
                for d in self.dependents(&uid) {
                    work.push(Work::Delete(d.uid.clone()));
                }
            }
            work.push(Work::Delete(uid.clone()));
        }
        if node.orphaning() {
            work.push(Work::Orphan(uid.clone()));
        }
        self.nodes.insert(uid, node);
        work
    }

    /// An object is gone.
    pub fn remove(&mut self, uid: &str) -> Vec<Work> {
        let mut work = Vec::new();
        let Some(node) = self.nodes.remove(uid) else {
            return work;
        };
        if let Some(set) = self.by_resource.get_mut(&node.resource.key()) {
            set.remove(uid);
        }
        for o in &node.owners {
            self.unlink(uid, &o.uid);
            if self
                .nodes
                .get(&o.uid)
                .is_some_and(Node::deleting_dependents)
            {
                work.push(Work::Delete(o.uid.clone()));
            }
        }
        // Its dependents keep their references: each is checked against the API.
        for d in self.dependents.get(uid).into_iter().flatten() {
            work.push(Work::Delete(d.clone()));
        }
        work
    }

    /// A full list of `resource` (initial or after a watch restart): upsert every item and
    /// remove what the list no longer has.
    pub fn resync(&mut self, resource: &Arc<Resource>, nodes: Vec<Node>) -> Vec<Work> {
        let listed: HashSet<String> = nodes.iter().map(|n| n.uid.clone()).collect();
        let gone: Vec<String> = self
            .by_resource
            .get(&resource.key())
            .into_iter()
            .flatten()
            .filter(|u| !listed.contains(*u))
            .cloned()
            .collect();
        let mut work = Vec::new();
        for uid in gone {
            work.extend(self.remove(&uid));
        }
        for n in nodes {
            work.extend(self.upsert(n));
        }
        work
    }

    /// A resource is no longer served: forget its objects.
    pub fn forget_resource(&mut self, resource: &Resource) -> Vec<Work> {
        let uids = self.by_resource.remove(&resource.key()).unwrap_or_default();
        uids.iter().flat_map(|u| self.remove(u)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res() -> Arc<Resource> {
        Arc::new(Resource {
            api: ApiResource {
                group: String::new(),
                version: "v1".into(),
                api_version: "v1".into(),
                kind: "ConfigMap".into(),
                plural: "configmaps".into(),
            },
            namespaced: true,
        })
    }

    fn node(uid: &str, owners: &[(&str, bool)], finalizers: &[&str], deleting: bool) -> Node {
        Node {
            resource: res(),
            namespace: Some("ns".into()),
            name: uid.into(),
            uid: uid.into(),
            owners: owners
                .iter()
                .map(|(o, block)| OwnerReference {
                    api_version: "v1".into(),
                    kind: "ConfigMap".into(),
                    name: (*o).into(),
                    uid: (*o).into(),
                    block_owner_deletion: Some(*block),
                    controller: None,
                })
                .collect(),
            deleting,
            finalizers: finalizers.iter().map(|f| f.to_string()).collect(),
        }
    }

    #[test]
    fn an_unknown_owner_queues_the_dependent_and_a_deleted_owner_its_dependents() {
        let mut g = Graph::default();
        assert_eq!(
            g.upsert(node("child", &[("owner", true)], &[], false)),
            vec![Work::Delete("child".into())]
        );
        assert!(g.upsert(node("owner", &[], &[], false)).is_empty());
        assert!(
            g.upsert(node("child", &[("owner", true)], &[], false))
                .is_empty()
        );
        assert_eq!(g.remove("owner"), vec![Work::Delete("child".into())]);
    }

    #[test]
    fn foreground_deletion_queues_dependents_and_is_unblocked_by_their_removal() {
        let mut g = Graph::default();
        g.upsert(node("owner", &[], &[], false));
        g.upsert(node("a", &[("owner", true)], &[], false));
        g.upsert(node("b", &[("owner", false)], &[], false));
        let mut w = g.upsert(node("owner", &[], &[FOREGROUND], true));
        w.sort_by_key(|w| format!("{w:?}"));
        assert_eq!(
            w,
            vec![
                Work::Delete("a".into()),
                Work::Delete("b".into()),
                Work::Delete("owner".into())
            ]
        );
        assert_eq!(g.blocking_dependents("owner").len(), 1);
        assert_eq!(g.remove("a"), vec![Work::Delete("owner".into())]);
        assert!(g.blocking_dependents("owner").is_empty());
    }

    #[test]
    fn orphan_finalizer_queues_orphaning_and_a_relist_removes_missing_objects() {
        let mut g = Graph::default();
        assert_eq!(
            g.upsert(node("owner", &[], &[ORPHAN], true)),
            vec![Work::Orphan("owner".into())]
        );
        g.upsert(node("x", &[], &[], false));
        g.resync(&res(), vec![node("x", &[], &[], false)]);
        assert!(g.get("owner").is_none());
        assert!(g.get("x").is_some());
    }
}
