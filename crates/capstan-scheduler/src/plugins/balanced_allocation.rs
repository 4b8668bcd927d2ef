//! NodeResourcesBalancedAllocation: prefers nodes whose cpu and memory use stay even.

use crate::cache::Snapshot;
use crate::framework::{CycleState, MAX_NODE_SCORE, ScorePlugin};
use crate::nodeinfo::NodeInfo;
use crate::podinfo::PodInfo;

pub const NAME: &str = "NodeResourcesBalancedAllocation";

pub struct BalancedAllocation;

fn fraction(requested: i64, capacity: i64) -> f64 {
    if capacity <= 0 {
        return 1.0;
    }
    (requested as f64 / capacity as f64).min(1.0)
}

impl ScorePlugin for BalancedAllocation {
    fn name(&self) -> &'static str {
        NAME
    }

    fn score(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo, _: &Snapshot) -> i64 {
        let cpu = fraction(
            node.requested.milli_cpu + pod.requests.milli_cpu,
            node.allocatable.milli_cpu,
        );
        let mem = fraction(
            node.requested.memory + pod.requests.memory,
            node.allocatable.memory,
        );
        // With two resources the standard deviation is half their difference.
        let std = (cpu - mem).abs() / 2.0;
        ((1.0 - std) * MAX_NODE_SCORE as f64) as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::test_support::*;
    use crate::testutil::{bound, node, pod};

    #[test]
    fn even_use_scores_higher() {
        let s = snap(
            vec![node("even", "4", "4Gi", 10), node("skewed", "4", "4Gi", 10)],
            vec![bound(pod("a", "3", "0"), "skewed")],
        );
        let p = info(pod("p", "1", "1Gi"));
        let score = |n: &str| BalancedAllocation.score(&state(), &p, s.get(n).unwrap(), &s);
        assert_eq!(score("even"), 100);
        assert_eq!(score("skewed"), 62);
    }
}
