//! DefaultPreemption (PostFilter): finds a node where evicting lower-priority pods lets the
//! pod fit, evicting as few and as unimportant pods as possible.

use crate::cache::Snapshot;
use crate::framework::{CycleState, Framework, NodeToStatus, PostFilterPlugin, PostFilterResult};
use crate::histogram_message;
use crate::podinfo::PodInfo;
use crate::status::Code;
use std::sync::Arc;

pub const NAME: &str = "DefaultPreemption";
const NOT_HELPFUL: &str = "Preemption is not helpful for scheduling";
const NO_VICTIMS: &str = "No preemption victims found for incoming pod";
/// Stop looking once this many candidate nodes were found (upstream's absolute minimum).
const MAX_CANDIDATES: usize = 100;

pub struct DefaultPreemption;

struct Candidate {
    node: String,
    victims: Vec<Arc<PodInfo>>,
}

impl Candidate {
    /// Upstream's order: lowest highest-victim priority, then lowest priority sum, then fewest.
    fn rank(&self) -> (i64, i64, usize) {
        let max = self
            .victims
            .iter()
            .map(|v| i64::from(v.priority))
            .max()
            .unwrap_or(i64::MIN);
        let sum = self.victims.iter().map(|v| i64::from(v.priority)).sum();
        (max, sum, self.victims.len())
    }
}

impl PostFilterPlugin for DefaultPreemption {
    fn name(&self) -> &'static str {
        NAME
    }

    fn post_filter(
        &self,
        fw: &Framework,
        state: &CycleState,
        pod: &PodInfo,
        snap: &Snapshot,
        statuses: &NodeToStatus,
    ) -> PostFilterResult {
        if pod.preemption_never {
            return PostFilterResult {
                message: "preemption: not eligible due to preemptionPolicy=Never.".into(),
                ..Default::default()
            };
        }
        let mut reasons: Vec<&str> = Vec::new();
        let mut candidates = Vec::new();
        for node in snap.nodes() {
            if statuses
                .get(&node.name)
                .is_some_and(|s| s.code == Code::UnschedulableAndUnresolvable)
            {
                reasons.push(NOT_HELPFUL);
                continue;
            }
            let mut lower: Vec<Arc<PodInfo>> = node
                .pods
                .iter()
                .filter(|p| p.priority < pod.priority)
                .cloned()
                .collect();
            if lower.is_empty() {
                reasons.push(NO_VICTIMS);
                continue;
            }
            let mut trial = node.clone();
            for v in &lower {
                trial.remove_pod(&v.key);
            }
            if !fw.run_filter(state, pod, &trial).is_success() {
                reasons.push(NO_VICTIMS);
                continue;
            }
            // Reprieve the most important pods first while the pod still fits.
            lower.sort_by_key(|p| std::cmp::Reverse(p.priority));
            let mut victims = Vec::new();
            for v in lower {
                trial.add_pod(v.clone());
                if !fw.run_filter(state, pod, &trial).is_success() {
                    trial.remove_pod(&v.key);
                    victims.push(v);
                }
            }
            candidates.push(Candidate {
                node: node.name.clone(),
                victims,
            });
            if candidates.len() >= MAX_CANDIDATES {
                break;
            }
        }
        match candidates.into_iter().min_by_key(Candidate::rank) {
            Some(c) => PostFilterResult {
                nominated_node: Some(c.node),
                victims: c.victims,
                message: String::new(),
            },
            None => PostFilterResult {
                message: format!(
                    "preemption: {}",
                    histogram_message(snap.node_count(), reasons)
                ),
                ..Default::default()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::test_support::*;
    use crate::plugins::{ScoringStrategy, default_framework};
    use crate::testutil::{bound, node, node_json, pod};
    use serde_json::json;

    fn prio(
        mut p: k8s_openapi::api::core::v1::Pod,
        priority: i32,
    ) -> k8s_openapi::api::core::v1::Pod {
        p.spec.as_mut().unwrap().priority = Some(priority);
        p
    }

    fn run(s: &Snapshot, p: &PodInfo) -> PostFilterResult {
        let fw = default_framework(ScoringStrategy::LeastAllocated);
        let mut st = state();
        fw.run_pre_filter(&mut st, p, s);
        let statuses: NodeToStatus = s
            .nodes()
            .map(|n| (n.name.clone(), fw.run_filter(&st, p, n)))
            .filter(|(_, s)| !s.is_success())
            .collect();
        DefaultPreemption.post_filter(&fw, &st, p, s, &statuses)
    }

    #[test]
    fn evicts_the_fewest_lowest_priority_pods() {
        let s = snap(
            vec![node("n1", "2", "4Gi", 10), node("n2", "2", "4Gi", 10)],
            vec![
                bound(prio(pod("low1", "1", "0"), 10), "n1"),
                bound(prio(pod("low2", "1", "0"), 10), "n1"),
                bound(prio(pod("mid", "2", "0"), 50), "n2"),
            ],
        );
        let r = run(&s, &info(prio(pod("high", "1", "0"), 100)));
        assert_eq!(r.nominated_node.as_deref(), Some("n1"));
        assert_eq!(r.victims.len(), 1);
        assert_eq!(r.victims[0].priority, 10);
    }

    #[test]
    fn nothing_to_evict_explains_why() {
        let s = snap(
            vec![
                node("n1", "1", "4Gi", 10),
                node_json(
                    "t",
                    json!({}),
                    json!({"taints": [{"key": "k", "value": "v", "effect": "NoSchedule"}]}),
                    "8",
                    "4Gi",
                    10,
                ),
            ],
            vec![bound(prio(pod("same", "1", "0"), 100), "n1")],
        );
        let r = run(&s, &info(prio(pod("high", "1", "0"), 100)));
        assert_eq!(r.nominated_node, None);
        assert_eq!(
            r.message,
            "preemption: 0/2 nodes are available: 1 No preemption victims found for incoming pod, 1 Preemption is not helpful for scheduling."
        );
        let mut never = prio(pod("never", "1", "0"), 1000);
        never.spec.as_mut().unwrap().preemption_policy = Some("Never".into());
        assert!(
            run(&s, &info(never))
                .message
                .contains("preemptionPolicy=Never")
        );
    }
}
