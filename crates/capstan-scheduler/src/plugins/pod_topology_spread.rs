//! PodTopologySpread: keeps matching pods spread over topology domains within maxSkew
//! (DoNotSchedule filters, ScheduleAnyway scores).

use super::node_affinity::required_matches;
use crate::cache::Snapshot;
use crate::framework::{
    CycleState, FilterPlugin, MAX_NODE_SCORE, PreFilterPlugin, PreScorePlugin, ScorePlugin,
};
use crate::nodeinfo::NodeInfo;
use crate::podinfo::{PodInfo, SpreadConstraint};
use crate::status::Status;
use std::collections::HashMap;

pub const NAME: &str = "PodTopologySpread";
pub const SKEW_REASON: &str = "node(s) didn't match pod topology spread constraints";
pub const LABEL_REASON: &str =
    "node(s) didn't match pod topology spread constraints (missing required label)";
const SCORE_KEY: &str = "PodTopologySpread/score";

/// Per constraint: topology value → matching pods.
struct Counts {
    constraints: Vec<SpreadConstraint>,
    counts: Vec<HashMap<String, i64>>,
}

fn count(pod: &PodInfo, snap: &Snapshot, constraints: Vec<SpreadConstraint>) -> Counts {
    let mut counts = vec![HashMap::new(); constraints.len()];
    for node in snap.nodes() {
        let labels = node.labels();
        if !required_matches(pod, node)
            || !constraints
                .iter()
                .all(|c| labels.contains_key(&c.topology_key))
        {
            continue;
        }
        for (i, c) in constraints.iter().enumerate() {
            let n = node
                .pods
                .iter()
                .filter(|p| {
                    !p.terminating && p.namespace == pod.namespace && c.selector.matches(&p.labels)
                })
                .count() as i64;
            *counts[i]
                .entry(labels[&c.topology_key].clone())
                .or_default() += n;
        }
    }
    Counts {
        constraints,
        counts,
    }
}

pub struct PodTopologySpread;

impl PreFilterPlugin for PodTopologySpread {
    fn name(&self) -> &'static str {
        NAME
    }

    fn pre_filter(&self, state: &mut CycleState, pod: &PodInfo, snap: &Snapshot) -> Status {
        let hard: Vec<SpreadConstraint> = pod.spread.iter().filter(|c| c.hard).cloned().collect();
        if hard.is_empty() {
            return Status::skip();
        }
        state.write(NAME, count(pod, snap, hard));
        Status::success()
    }
}

impl FilterPlugin for PodTopologySpread {
    fn name(&self) -> &'static str {
        NAME
    }

    fn filter(&self, state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        let Some(s) = state.read::<Counts>(NAME) else {
            return Status::success();
        };
        let labels = node.labels();
        for (i, c) in s.constraints.iter().enumerate() {
            let Some(value) = labels.get(&c.topology_key) else {
                return Status::unresolvable(LABEL_REASON);
            };
            let domains = &s.counts[i];
            let min = if (domains.len() as i32) < c.min_domains {
                0
            } else {
                domains.values().copied().min().unwrap_or(0)
            };
            let own = i64::from(c.selector.matches(&pod.labels));
            let skew = domains.get(value).copied().unwrap_or(0) + own - min;
            if skew > i64::from(c.max_skew) {
                return Status::unschedulable(SKEW_REASON);
            }
        }
        Status::success()
    }
}

impl PreScorePlugin for PodTopologySpread {
    fn name(&self) -> &'static str {
        NAME
    }

    fn pre_score(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        _: &[&NodeInfo],
        snap: &Snapshot,
    ) -> Status {
        let soft: Vec<SpreadConstraint> = pod.spread.iter().filter(|c| !c.hard).cloned().collect();
        if soft.is_empty() {
            return Status::skip();
        }
        state.write(SCORE_KEY, count(pod, snap, soft));
        Status::success()
    }
}

impl ScorePlugin for PodTopologySpread {
    fn name(&self) -> &'static str {
        NAME
    }

    fn score(&self, state: &CycleState, _: &PodInfo, node: &NodeInfo, _: &Snapshot) -> i64 {
        let Some(s) = state.read::<Counts>(SCORE_KEY) else {
            return 0;
        };
        let labels = node.labels();
        let mut score = 0.0;
        for (i, c) in s.constraints.iter().enumerate() {
            let Some(v) = labels.get(&c.topology_key) else {
                continue;
            };
            // Constraints over more domains weigh more (upstream: log(domains + 2)).
            let weight = ((s.counts[i].len() + 2) as f64).ln();
            let n = s.counts[i].get(v).copied().unwrap_or(0) as f64;
            score += n * weight + f64::from(c.max_skew - 1);
        }
        score.round() as i64
    }

    fn normalize(&self, _: &CycleState, _: &PodInfo, scores: &mut [i64]) {
        let min = scores.iter().copied().min().unwrap_or(0);
        let max = scores.iter().copied().max().unwrap_or(0);
        for s in scores.iter_mut() {
            *s = if max == 0 {
                MAX_NODE_SCORE
            } else {
                MAX_NODE_SCORE * (max + min - *s) / max
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::test_support::*;
    use crate::testutil::{bound, node_json, pod_json};
    use serde_json::json;

    fn constraint(skew: i32, key: &str, when: &str) -> serde_json::Value {
        json!({"maxSkew": skew, "topologyKey": key, "whenUnsatisfiable": when,
               "labelSelector": {"matchLabels": {"app": "web"}}})
    }

    fn web(name: &str, constraints: serde_json::Value) -> k8s_openapi::api::core::v1::Pod {
        pod_json(
            name,
            json!({"app": "web"}),
            json!({"containers": [], "topologySpreadConstraints": constraints}),
        )
    }

    fn cluster() -> Snapshot {
        let n = |name: &str, zone: &str| {
            node_json(name, json!({"zone": zone}), json!({}), "4", "4Gi", 10)
        };
        snap(
            vec![
                n("a1", "a"),
                n("a2", "a"),
                n("b1", "b"),
                node_json("nolabel", json!({}), json!({}), "4", "4Gi", 10),
            ],
            vec![
                bound(web("w1", json!([])), "a1"),
                bound(web("w2", json!([])), "a2"),
            ],
        )
    }

    #[test]
    fn do_not_schedule_keeps_skew_within_max() {
        let s = cluster();
        let cases = [
            (1, vec!["b1"]),
            (2, vec!["b1"]),
            (3, vec!["a1", "a2", "b1"]),
        ];
        for (skew, want) in cases {
            let p = info(web(
                "new",
                json!([constraint(skew, "zone", "DoNotSchedule")]),
            ));
            let mut st = state();
            assert!(PodTopologySpread.pre_filter(&mut st, &p, &s).is_success());
            let mut ok: Vec<String> = s
                .nodes()
                .filter(|n| PodTopologySpread.filter(&st, &p, n).is_success())
                .map(|n| n.name.clone())
                .collect();
            ok.sort();
            assert_eq!(ok, want, "maxSkew {skew}");
            let st_nl = PodTopologySpread.filter(&st, &p, s.get("nolabel").unwrap());
            assert_eq!(st_nl.reasons, vec![LABEL_REASON.to_string()]);
        }
    }

    #[test]
    fn schedule_anyway_scores_emptier_domains_higher() {
        let s = cluster();
        let p = info(web("new", json!([constraint(1, "zone", "ScheduleAnyway")])));
        let mut st = state();
        assert!(
            PodTopologySpread
                .pre_score(&mut st, &p, &[], &s)
                .is_success()
        );
        let nodes = ["a1", "b1"];
        let mut scores: Vec<i64> = nodes
            .iter()
            .map(|n| PodTopologySpread.score(&st, &p, s.get(n).unwrap(), &s))
            .collect();
        PodTopologySpread.normalize(&st, &p, &mut scores);
        assert!(scores[1] > scores[0], "{scores:?}");
        assert_eq!(scores[1], 100);
    }
}
