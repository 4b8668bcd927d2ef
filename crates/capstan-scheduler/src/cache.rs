//! The scheduler's view of the cluster: nodes with their pods, fed by the informers, plus
//! assumed pods (placed by this scheduler, binding in flight or not yet seen on the watch).

use crate::nodeinfo::NodeInfo;
use crate::podinfo::PodInfo;
use k8s_openapi::api::core::v1::Node;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long an assumed pod whose binding finished may wait for the watch to confirm it.
pub const ASSUMED_POD_TTL: Duration = Duration::from_secs(30);

/// All nodes, in a stable order, as the plugins read them.
#[derive(Debug, Default)]
pub struct Snapshot {
    nodes: Vec<NodeInfo>,
    index: HashMap<String, usize>,
    /// Normalized image name → number of nodes holding it (image locality's spread).
    pub image_nodes: HashMap<String, usize>,
}

impl Snapshot {
    /// Builds a snapshot from nodes and bound pods (tests, explain).
    pub fn from_parts(nodes: Vec<Node>, pods: Vec<Arc<PodInfo>>) -> Snapshot {
        let mut s = Snapshot::default();
        for n in nodes {
            s.upsert_node(n);
        }
        for p in pods {
            if let Some(node) = p.node_name.clone() {
                s.entry(&node).add_pod(p);
            }
        }
        s
    }

    /// Every entry, including placeholders without a Node object.
    pub fn all(&self) -> &[NodeInfo] {
        &self.nodes
    }

    /// Nodes that exist (have an object).
    pub fn nodes(&self) -> impl Iterator<Item = &NodeInfo> {
        self.nodes.iter().filter(|n| n.node.is_some())
    }

    pub fn node_count(&self) -> usize {
        self.nodes.iter().filter(|n| n.node.is_some()).count()
    }

    pub fn get(&self, name: &str) -> Option<&NodeInfo> {
        self.index.get(name).map(|i| &self.nodes[*i])
    }

    fn entry(&mut self, name: &str) -> &mut NodeInfo {
        let i = match self.index.get(name) {
            Some(i) => *i,
            None => {
                self.nodes.push(NodeInfo::placeholder(name));
                self.index.insert(name.to_string(), self.nodes.len() - 1);
                self.nodes.len() - 1
            }
        };
        &mut self.nodes[i]
    }

    fn count_images(&mut self, ni_images: &[String], delta: isize) {
        for img in ni_images {
            let e = self.image_nodes.entry(img.clone()).or_default();
            *e = e.saturating_add_signed(delta);
            if *e == 0 {
                self.image_nodes.remove(img);
            }
        }
    }

    pub fn upsert_node(&mut self, node: Node) {
        let name = node.metadata.name.clone().unwrap_or_default();
        let old: Vec<String> = self
            .get(&name)
            .map(|n| n.images.keys().cloned().collect())
            .unwrap_or_default();
        self.count_images(&old, -1);
        let e = self.entry(&name);
        e.set_node(node);
        let new: Vec<String> = e.images.keys().cloned().collect();
        self.count_images(&new, 1);
    }

    pub fn remove_node(&mut self, name: &str) {
        let Some(&i) = self.index.get(name) else {
            return;
        };
        let old: Vec<String> = self.nodes[i].images.keys().cloned().collect();
        self.count_images(&old, -1);
        if !self.nodes[i].pods.is_empty() {
            // Pods still point at it; keep a placeholder until they go.
            let n = &mut self.nodes[i];
            n.node = None;
            n.images.clear();
            return;
        }
        self.nodes.swap_remove(i);
        self.index.remove(name);
        if let Some(moved) = self.nodes.get(i) {
            self.index.insert(moved.name.clone(), i);
        }
    }

    fn add_pod(&mut self, node: &str, pod: Arc<PodInfo>) {
        self.entry(node).add_pod(pod);
    }

    fn remove_pod(&mut self, node: &str, key: &str) {
        let Some(&i) = self.index.get(node) else {
            return;
        };
        self.nodes[i].remove_pod(key);
        if self.nodes[i].node.is_none() && self.nodes[i].pods.is_empty() {
            self.remove_node(node);
        }
    }
}

#[derive(Debug)]
struct PodState {
    node: String,
    assumed: bool,
    /// Set once binding finished; the assumption expires after it unless the watch confirms.
    deadline: Option<Instant>,
}

/// Nodes and pods as the scheduler currently believes them to be.
#[derive(Debug, Default)]
pub struct Cache {
    pub snapshot: Snapshot,
    pods: HashMap<String, PodState>,
}

impl Cache {
    pub fn upsert_node(&mut self, node: Node) {
        self.snapshot.upsert_node(node);
    }

    pub fn remove_node(&mut self, name: &str) {
        self.snapshot.remove_node(name);
    }

    /// Node names currently known (for relist reconciliation).
    pub fn node_names(&self) -> Vec<String> {
        self.snapshot.nodes().map(|n| n.name.clone()).collect()
    }

    /// A bound pod seen on the watch: confirms an assumption or (re)places the pod.
    pub fn upsert_pod(&mut self, pod: Arc<PodInfo>) {
        let Some(node) = pod.node_name.clone() else {
            return;
        };
        if let Some(old) = self.pods.remove(&pod.key) {
            self.snapshot.remove_pod(&old.node, &pod.key);
        }
        self.snapshot.add_pod(&node, pod.clone());
        self.pods.insert(
            pod.key.clone(),
            PodState {
                node,
                assumed: false,
                deadline: None,
            },
        );
    }

    /// Removes a pod (deleted, or terminal); returns whether it was known.
    pub fn remove_pod(&mut self, key: &str) -> bool {
        match self.pods.remove(key) {
            Some(old) => {
                self.snapshot.remove_pod(&old.node, key);
                true
            }
            None => false,
        }
    }

    pub fn is_assumed(&self, key: &str) -> bool {
        self.pods.get(key).is_some_and(|p| p.assumed)
    }

    pub fn contains_pod(&self, key: &str) -> bool {
        self.pods.contains_key(key)
    }

    /// Places `pod` on `node` before the binding is confirmed.
    pub fn assume(&mut self, pod: Arc<PodInfo>, node: &str) {
        self.remove_pod(&pod.key);
        self.pods.insert(
            pod.key.clone(),
            PodState {
                node: node.to_string(),
                assumed: true,
                deadline: None,
            },
        );
        self.snapshot.add_pod(node, pod);
    }

    /// Drops an assumption (binding failed).
    pub fn forget(&mut self, key: &str) {
        if self.is_assumed(key) {
            self.remove_pod(key);
        }
    }

    /// Binding succeeded: start the expiry clock in case the watch never confirms.
    pub fn finish_binding(&mut self, key: &str, now: Instant) {
        if let Some(p) = self.pods.get_mut(key).filter(|p| p.assumed) {
            p.deadline = Some(now + ASSUMED_POD_TTL);
        }
    }

    /// Expires assumptions whose deadline passed; returns how many.
    pub fn cleanup_expired(&mut self, now: Instant) -> usize {
        let expired: Vec<String> = self
            .pods
            .iter()
            .filter(|(_, p)| p.assumed && p.deadline.is_some_and(|d| d <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for k in &expired {
            self.remove_pod(k);
        }
        expired.len()
    }

    /// Keys of every pod known (for relist reconciliation), without assumed ones.
    pub fn bound_pod_keys(&self) -> Vec<String> {
        self.pods
            .iter()
            .filter(|(_, p)| !p.assumed)
            .map(|(k, _)| k.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{node, pod};

    #[test]
    fn assumed_pods_count_until_forgotten_or_expired() {
        let mut c = Cache::default();
        c.upsert_node(node("n1", "4", "8Gi", 110));
        let p = Arc::new(PodInfo::new(Arc::new(pod("p", "1", "1Gi")), 0));
        c.assume(p.clone(), "n1");
        assert_eq!(c.snapshot.get("n1").unwrap().requested.milli_cpu, 1000);
        c.forget(&p.key);
        assert_eq!(c.snapshot.get("n1").unwrap().requested.milli_cpu, 0);
        c.assume(p.clone(), "n1");
        let now = Instant::now();
        c.finish_binding(&p.key, now);
        assert_eq!(c.cleanup_expired(now), 0);
        assert_eq!(c.cleanup_expired(now + ASSUMED_POD_TTL), 1);
        assert_eq!(c.snapshot.get("n1").unwrap().pods.len(), 0);
    }

    #[test]
    fn watch_confirms_an_assumption_without_double_counting() {
        let mut c = Cache::default();
        c.upsert_node(node("n1", "4", "8Gi", 110));
        let p = Arc::new(PodInfo::new(Arc::new(pod("p", "1", "1Gi")), 0));
        c.assume(p.clone(), "n1");
        let mut bound = pod("p", "1", "1Gi");
        bound.spec.as_mut().unwrap().node_name = Some("n1".into());
        c.upsert_pod(Arc::new(PodInfo::new(Arc::new(bound), 0)));
        assert!(!c.is_assumed(&p.key));
        assert_eq!(c.snapshot.get("n1").unwrap().requested.milli_cpu, 1000);
        assert!(c.remove_pod(&p.key));
        assert_eq!(c.snapshot.get("n1").unwrap().requested.pods, 0);
    }

    #[test]
    fn pods_on_unknown_nodes_wait_in_a_placeholder() {
        let mut c = Cache::default();
        let mut bound = pod("p", "1", "1Gi");
        bound.spec.as_mut().unwrap().node_name = Some("late".into());
        c.upsert_pod(Arc::new(PodInfo::new(Arc::new(bound), 0)));
        assert_eq!(c.snapshot.node_count(), 0);
        c.upsert_node(node("late", "4", "8Gi", 110));
        assert_eq!(c.snapshot.get("late").unwrap().pods.len(), 1);
        c.remove_node("late");
        assert_eq!(c.snapshot.node_count(), 0);
        c.remove_pod("default/p");
        assert!(c.snapshot.all().is_empty());
    }
}
