//! The in-tree plugins, one file each, and the default profile that wires them.

pub mod balanced_allocation;
pub mod default_preemption;
pub mod image_locality;
pub mod inter_pod_affinity;
pub mod node_affinity;
pub mod node_name;
pub mod node_ports;
pub mod node_resources_fit;
pub mod node_unschedulable;
pub mod pod_topology_spread;
pub mod taint_toleration;

use crate::framework::Framework;
use std::sync::Arc;

/// NodeResourcesFit's scoring strategy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ScoringStrategy {
    /// Prefer emptier nodes (upstream's default): spreads load.
    #[default]
    LeastAllocated,
    /// Prefer fuller nodes: packs (bin-packing).
    MostAllocated,
}

/// Upstream's default profile: filter order and score weights as kube-scheduler 1.33.
pub fn default_framework(strategy: ScoringStrategy) -> Framework {
    let fit = Arc::new(node_resources_fit::NodeResourcesFit::new(strategy));
    let taints = Arc::new(taint_toleration::TaintToleration);
    let node_affinity = Arc::new(node_affinity::NodeAffinity);
    let ports = Arc::new(node_ports::NodePorts);
    let spread = Arc::new(pod_topology_spread::PodTopologySpread);
    let affinity = Arc::new(inter_pod_affinity::InterPodAffinity);
    Framework {
        pre_filter: vec![ports.clone(), spread.clone(), affinity.clone()],
        filter: vec![
            Arc::new(node_unschedulable::NodeUnschedulable),
            Arc::new(node_name::NodeName),
            taints.clone(),
            node_affinity.clone(),
            ports,
            fit.clone(),
            spread.clone(),
            affinity.clone(),
        ],
        post_filter: vec![Arc::new(default_preemption::DefaultPreemption)],
        pre_score: vec![taints.clone(), spread.clone(), affinity.clone()],
        score: vec![
            (taints, 3),
            (node_affinity, 2),
            (fit, 1),
            (spread, 2),
            (affinity, 2),
            (Arc::new(balanced_allocation::BalancedAllocation), 1),
            (Arc::new(image_locality::ImageLocality), 1),
        ],
        reserve: Vec::new(),
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use crate::cache::Snapshot;
    use crate::framework::CycleState;
    use crate::podinfo::PodInfo;
    use k8s_openapi::api::core::v1::{Node, Pod};
    use std::sync::Arc;

    pub fn info(p: Pod) -> PodInfo {
        let prio = p.spec.as_ref().and_then(|s| s.priority).unwrap_or(0);
        PodInfo::new(Arc::new(p), prio)
    }

    pub fn snap(nodes: Vec<Node>, pods: Vec<Pod>) -> Snapshot {
        Snapshot::from_parts(nodes, pods.into_iter().map(|p| Arc::new(info(p))).collect())
    }

    pub fn state() -> CycleState {
        CycleState::default()
    }
}
