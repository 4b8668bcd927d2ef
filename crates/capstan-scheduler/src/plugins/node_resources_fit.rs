//! NodeResourcesFit: the pod's requests must fit in what the node has left; scores by
//! LeastAllocated (default) or MostAllocated over cpu and memory.

use super::ScoringStrategy;
use crate::cache::Snapshot;
use crate::framework::{CycleState, FilterPlugin, MAX_NODE_SCORE, ScorePlugin};
use crate::nodeinfo::NodeInfo;
use crate::podinfo::PodInfo;
use crate::status::{Code, Status};

pub const NAME: &str = "NodeResourcesFit";

pub struct NodeResourcesFit {
    strategy: ScoringStrategy,
}

impl NodeResourcesFit {
    pub fn new(strategy: ScoringStrategy) -> NodeResourcesFit {
        NodeResourcesFit { strategy }
    }
}

/// The reasons `pod` does not fit `node` (empty if it fits).
pub fn insufficient(pod: &PodInfo, node: &NodeInfo) -> Vec<String> {
    let mut reasons = Vec::new();
    let (a, r, p) = (&node.allocatable, &node.requested, &pod.requests);
    if r.pods + 1 > a.pods {
        reasons.push("Too many pods".to_string());
    }
    if p.milli_cpu > 0 && p.milli_cpu > a.milli_cpu - r.milli_cpu {
        reasons.push("Insufficient cpu".to_string());
    }
    if p.memory > 0 && p.memory > a.memory - r.memory {
        reasons.push("Insufficient memory".to_string());
    }
    if p.ephemeral_storage > 0 && p.ephemeral_storage > a.ephemeral_storage - r.ephemeral_storage {
        reasons.push("Insufficient ephemeral-storage".to_string());
    }
    for (name, want) in &p.scalar {
        let have =
            a.scalar.get(name).copied().unwrap_or(0) - r.scalar.get(name).copied().unwrap_or(0);
        if *want > 0 && *want > have {
            reasons.push(format!("Insufficient {name}"));
        }
    }
    reasons
}

impl FilterPlugin for NodeResourcesFit {
    fn name(&self) -> &'static str {
        NAME
    }

    fn filter(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        let reasons = insufficient(pod, node);
        if reasons.is_empty() {
            Status::success()
        } else {
            Status {
                code: Code::Unschedulable,
                reasons,
                plugin: NAME,
            }
        }
    }
}

fn least(requested: i64, capacity: i64) -> i64 {
    if capacity <= 0 || requested > capacity {
        return 0;
    }
    (capacity - requested) * MAX_NODE_SCORE / capacity
}

fn most(requested: i64, capacity: i64) -> i64 {
    if capacity <= 0 {
        return 0;
    }
    requested.min(capacity) * MAX_NODE_SCORE / capacity
}

impl ScorePlugin for NodeResourcesFit {
    fn name(&self) -> &'static str {
        NAME
    }

    fn score(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo, _: &Snapshot) -> i64 {
        let cpu = node.non_zero_requested.milli_cpu + pod.non_zero.milli_cpu;
        let mem = node.non_zero_requested.memory + pod.non_zero.memory;
        let f = match self.strategy {
            ScoringStrategy::LeastAllocated => least,
            ScoringStrategy::MostAllocated => most,
        };
        (f(cpu, node.allocatable.milli_cpu) + f(mem, node.allocatable.memory)) / 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::test_support::*;
    use crate::testutil::{bound, node, pod};

    #[test]
    fn filter_reports_each_insufficient_resource() {
        let s = snap(
            vec![node("n", "2", "2Gi", 2)],
            vec![bound(pod("a", "1500m", "1Gi"), "n")],
        );
        let fit = NodeResourcesFit::new(ScoringStrategy::LeastAllocated);
        let cases: [(&str, &str, &[&str]); 4] = [
            ("500m", "1Gi", &[]),
            ("600m", "1Gi", &["Insufficient cpu"]),
            ("1", "2Gi", &["Insufficient cpu", "Insufficient memory"]),
            ("0", "0", &[]),
        ];
        for (cpu, mem, want) in cases {
            let st = fit.filter(&state(), &info(pod("p", cpu, mem)), s.get("n").unwrap());
            assert_eq!(st.reasons, want, "{cpu} {mem}");
            assert_eq!(st.is_success(), want.is_empty());
        }
        let full = snap(
            vec![node("n", "2", "2Gi", 1)],
            vec![bound(pod("a", "0", "0"), "n")],
        );
        let st = fit.filter(&state(), &info(pod("p", "0", "0")), full.get("n").unwrap());
        assert_eq!(st.reasons, vec!["Too many pods".to_string()]);
    }

    #[test]
    fn least_allocated_prefers_empty_nodes_and_most_allocated_full_ones() {
        let s = snap(
            vec![node("empty", "4", "4Gi", 10), node("busy", "4", "4Gi", 10)],
            vec![bound(pod("a", "2", "2Gi"), "busy")],
        );
        let p = info(pod("p", "1", "1Gi"));
        let score = |strategy, n: &str| {
            NodeResourcesFit::new(strategy).score(&state(), &p, s.get(n).unwrap(), &s)
        };
        assert_eq!(score(ScoringStrategy::LeastAllocated, "empty"), 75);
        assert_eq!(score(ScoringStrategy::LeastAllocated, "busy"), 25);
        assert_eq!(score(ScoringStrategy::MostAllocated, "empty"), 25);
        assert_eq!(score(ScoringStrategy::MostAllocated, "busy"), 75);
    }
}
