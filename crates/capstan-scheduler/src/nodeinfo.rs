//! Per-node state kept incrementally: allocatable, summed requests, pods, ports, images.

use crate::podinfo::{HostPort, PodInfo};
use crate::resources::Resources;
use k8s_openapi::api::core::v1::{Node, Taint};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

/// What the scheduler knows about one node.
#[derive(Clone, Debug, Default)]
pub struct NodeInfo {
    pub name: String,
    /// None while pods are known on a node whose object has not arrived (or was deleted).
    pub node: Option<Arc<Node>>,
    pub allocatable: Resources,
    pub requested: Resources,
    pub non_zero_requested: Resources,
    pub pods: Vec<Arc<PodInfo>>,
    pub used_ports: Vec<HostPort>,
    /// Normalized image name → size in bytes.
    pub images: HashMap<String, i64>,
    pub taints: Vec<Taint>,
    pub unschedulable: bool,
    /// Pods here with any (anti-)affinity, and with required anti-affinity (symmetry checks).
    pub pods_with_affinity: usize,
    pub pods_with_required_anti_affinity: usize,
}

/// `nginx` → `docker.io/library/nginx:latest`, as upstream's image locality normalizes.
pub fn normalize_image(name: &str) -> String {
    let mut n = name.to_string();
    let last = n.rsplit('/').next().unwrap_or_default();
    if !last.contains(':') && !last.contains('@') {
        n.push_str(":latest");
    }
    let first = n.split('/').next().unwrap_or_default();
    let has_registry =
        n.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    if !has_registry {
        if n.contains('/') {
            n = format!("docker.io/{n}");
        } else {
            n = format!("docker.io/library/{n}");
        }
    }
    n
}

impl NodeInfo {
    pub fn new(node: Node) -> NodeInfo {
        let mut ni = NodeInfo::default();
        ni.set_node(node);
        ni
    }

    /// An entry for pods on a node whose object is not known.
    pub fn placeholder(name: &str) -> NodeInfo {
        NodeInfo {
            name: name.to_string(),
            ..Default::default()
        }
    }

    pub fn set_node(&mut self, node: Node) {
        self.name = node.metadata.name.clone().unwrap_or_default();
        let status = node.status.as_ref();
        let alloc = status
            .and_then(|s| s.allocatable.as_ref().or(s.capacity.as_ref()))
            .map(Resources::from_list)
            .unwrap_or_default();
        self.allocatable = alloc;
        self.images = status
            .and_then(|s| s.images.as_ref())
            .into_iter()
            .flatten()
            .flat_map(|img| {
                let size = img.size_bytes.unwrap_or(0);
                img.names
                    .iter()
                    .flatten()
                    .map(move |n| (normalize_image(n), size))
            })
            .collect();
        let spec = node.spec.as_ref();
        self.taints = spec.and_then(|s| s.taints.clone()).unwrap_or_default();
        self.unschedulable = spec.and_then(|s| s.unschedulable).unwrap_or(false);
        self.node = Some(Arc::new(node));
    }

    pub fn labels(&self) -> &BTreeMap<String, String> {
        self.node
            .as_ref()
            .and_then(|n| n.metadata.labels.as_ref())
            .unwrap_or(&NO_LABELS)
    }

    pub fn add_pod(&mut self, pod: Arc<PodInfo>) {
        let mut req = pod.requests.clone();
        req.pods = 1;
        self.requested.add(&req);
        self.non_zero_requested.add(&pod.non_zero);
        self.used_ports.extend(pod.host_ports.iter().cloned());
        if pod.has_affinity() {
            self.pods_with_affinity += 1;
        }
        if !pod.required_anti_affinity.is_empty() {
            self.pods_with_required_anti_affinity += 1;
        }
        self.pods.push(pod);
    }

    /// Removes the pod with `key`; returns whether it was here.
    pub fn remove_pod(&mut self, key: &str) -> bool {
        let Some(i) = self.pods.iter().position(|p| p.key == key) else {
            return false;
        };
        let pod = self.pods.swap_remove(i);
        let mut req = pod.requests.clone();
        req.pods = 1;
        self.requested.sub(&req);
        self.non_zero_requested.sub(&pod.non_zero);
        for hp in &pod.host_ports {
            if let Some(j) = self.used_ports.iter().position(|u| u == hp) {
                self.used_ports.swap_remove(j);
            }
        }
        if pod.has_affinity() {
            self.pods_with_affinity -= 1;
        }
        if !pod.required_anti_affinity.is_empty() {
            self.pods_with_required_anti_affinity -= 1;
        }
        true
    }
}
