//! One scheduling decision: PreFilter, Filter over a rotating sample of nodes, PreScore,
//! Score, and host selection (upstream `schedulePod`), plus upstream's failure message.

use crate::cache::Snapshot;
use crate::framework::{CycleState, Framework, NodeToStatus, run_filters};
use crate::nodeinfo::NodeInfo;
use crate::podinfo::PodInfo;
use crate::status::Status;
use std::collections::BTreeMap;

/// Clusters smaller than this are always searched completely (upstream).
const MIN_FEASIBLE_NODES_TO_FIND: usize = 100;
const MIN_FEASIBLE_NODES_PERCENTAGE: usize = 5;

/// "0/N nodes are available: 2 reason a, 1 reason b." with counts, sorted as upstream sorts.
pub fn histogram_message<'a>(nodes: usize, reasons: impl IntoIterator<Item = &'a str>) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for r in reasons {
        *counts.entry(r).or_default() += 1;
    }
    let mut parts: Vec<String> = counts.iter().map(|(r, n)| format!("{n} {r}")).collect();
    parts.sort();
    if parts.is_empty() {
        format!("0/{nodes} nodes are available.")
    } else {
        format!("0/{nodes} nodes are available: {}.", parts.join(", "))
    }
}

/// Why no node fits.
#[derive(Debug, Default)]
pub struct FitError {
    pub num_nodes: usize,
    pub statuses: NodeToStatus,
    /// Set when PreFilter rejected the pod outright.
    pub pre_filter: Option<Status>,
}

impl FitError {
    /// Upstream's FailedScheduling text, without the preemption part.
    pub fn message(&self) -> String {
        if let Some(s) = &self.pre_filter {
            return format!("0/{} nodes are available: {}.", self.num_nodes, s.message());
        }
        histogram_message(
            self.num_nodes,
            self.statuses
                .values()
                .flat_map(|s| s.reasons.iter().map(String::as_str)),
        )
    }
}

/// A decision.
#[derive(Debug)]
pub struct ScheduleResult {
    pub node: String,
    pub evaluated: usize,
    pub feasible: usize,
}

/// Upstream's adaptive `numFeasibleNodesToFind` (percentage 0 = adaptive).
pub fn num_feasible_nodes_to_find(all: usize, percentage: u32) -> usize {
    if all < MIN_FEASIBLE_NODES_TO_FIND || percentage >= 100 {
        return all;
    }
    let pct = if percentage == 0 {
        (50usize.saturating_sub(all / 125)).max(MIN_FEASIBLE_NODES_PERCENTAGE)
    } else {
        percentage as usize
    };
    (all * pct / 100).max(MIN_FEASIBLE_NODES_TO_FIND)
}

/// Chooses a node for `pod`. `next_start` rotates where the filter sweep begins so load
/// spreads; `rng` breaks score ties. The CycleState is returned for PostFilter.
pub fn schedule(
    fw: &Framework,
    snap: &Snapshot,
    pod: &PodInfo,
    percentage: u32,
    next_start: &mut usize,
    rng: &mut u64,
) -> (CycleState, Result<ScheduleResult, FitError>) {
    let mut state = CycleState::default();
    let all = snap.all();
    let num_nodes = snap.node_count();
    if num_nodes == 0 {
        return (state, Err(FitError::default()));
    }
    let pre = fw.run_pre_filter(&mut state, pod, snap);
    if !pre.is_success() {
        let err = FitError {
            num_nodes,
            statuses: NodeToStatus::new(),
            pre_filter: Some(pre),
        };
        return (state, Err(err));
    }
    let want = num_feasible_nodes_to_find(num_nodes, percentage);
    let mut feasible: Vec<&NodeInfo> = Vec::with_capacity(want.min(all.len()));
    let mut statuses = NodeToStatus::new();
    let filters = fw.active_filters(&state);
    let start = *next_start % all.len();
    let mut processed = 0;
    for i in 0..all.len() {
        let node = &all[(start + i) % all.len()];
        processed += 1;
        if node.node.is_none() {
            continue;
        }
        let s = run_filters(&filters, &state, pod, node);
        if s.is_success() {
            feasible.push(node);
            if feasible.len() >= want {
                break;
            }
        } else {
            statuses.insert(node.name.clone(), s);
        }
    }
    *next_start = (start + processed) % all.len();
    if feasible.is_empty() {
        return (
            state,
            Err(FitError {
                num_nodes,
                statuses,
                pre_filter: None,
            }),
        );
    }
    let evaluated = processed;
    let count = feasible.len();
    if feasible.len() == 1 {
        let node = feasible[0].name.clone();
        return (
            state,
            Ok(ScheduleResult {
                node,
                evaluated,
                feasible: count,
            }),
        );
    }
    let pre = fw.run_pre_score(&mut state, pod, &feasible, snap);
    if !pre.is_success() {
        let err = FitError {
            num_nodes,
            statuses,
            pre_filter: Some(pre),
        };
        return (state, Err(err));
    }
    let (totals, _) = fw.run_score(&state, pod, &feasible, snap, false);
    let node = select_host(&feasible, &totals, rng);
    (
        state,
        Ok(ScheduleResult {
            node,
            evaluated,
            feasible: count,
        }),
    )
}

/// Highest total; ties broken uniformly at random (reservoir sampling, as upstream).
fn select_host(nodes: &[&NodeInfo], totals: &[i64], rng: &mut u64) -> String {
    let mut best = 0;
    let mut ties = 1u64;
    for i in 1..nodes.len() {
        if totals[i] > totals[best] {
            best = i;
            ties = 1;
        } else if totals[i] == totals[best] {
            ties += 1;
            if next_random(rng).is_multiple_of(ties) {
                best = i;
            }
        }
    }
    nodes[best].name.clone()
}

/// xorshift64: tie-breaking needs speed, not quality.
pub fn next_random(state: &mut u64) -> u64 {
    let mut x = (*state).max(1);
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::test_support::*;
    use crate::plugins::{ScoringStrategy, default_framework};
    use crate::testutil::{bound, node, node_json, pod};
    use serde_json::json;

    #[test]
    fn failure_message_has_upstream_form() {
        let taint = json!({"taints": [{"key": "k", "value": "v", "effect": "NoSchedule"}]});
        let s = snap(
            vec![
                node("small", "1", "1Gi", 10),
                node_json("t1", json!({}), taint.clone(), "8", "8Gi", 10),
                node_json("t2", json!({}), taint, "8", "8Gi", 10),
            ],
            vec![],
        );
        let fw = default_framework(ScoringStrategy::LeastAllocated);
        let (_, r) = schedule(&fw, &s, &info(pod("p", "2", "0")), 0, &mut 0, &mut 1);
        let err = r.unwrap_err();
        assert_eq!(
            err.message(),
            "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) had untolerated taint {k: v}."
        );
    }

    #[test]
    fn picks_the_emptier_node_and_samples_large_clusters() {
        let s = snap(
            vec![node("busy", "4", "4Gi", 10), node("idle", "4", "4Gi", 10)],
            vec![bound(pod("a", "3", "3Gi"), "busy")],
        );
        let fw = default_framework(ScoringStrategy::LeastAllocated);
        for start in 0..2 {
            let mut next = start;
            let (_, r) = schedule(
                &fw,
                &s,
                &info(pod("p", "500m", "500Mi")),
                0,
                &mut next,
                &mut 7,
            );
            assert_eq!(r.unwrap().node, "idle");
        }
        assert_eq!(num_feasible_nodes_to_find(50, 0), 50);
        assert_eq!(num_feasible_nodes_to_find(5000, 0), 500);
        assert_eq!(num_feasible_nodes_to_find(1000, 0), 420);
        assert_eq!(num_feasible_nodes_to_find(200, 10), 100);
        assert_eq!(num_feasible_nodes_to_find(200, 100), 200);
    }
}
