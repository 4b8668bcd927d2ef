//! NodeAffinity: nodeSelector and required node affinity filter; preferred terms score.

use crate::cache::Snapshot;
use crate::framework::{CycleState, FilterPlugin, ScorePlugin, default_normalize};
use crate::nodeinfo::NodeInfo;
use crate::podinfo::PodInfo;
use crate::status::Status;

pub const NAME: &str = "NodeAffinity";
pub const REASON: &str = "node(s) didn't match Pod's node affinity/selector";

pub struct NodeAffinity;

/// Whether `node` satisfies the pod's nodeSelector and required node affinity.
pub fn required_matches(pod: &PodInfo, node: &NodeInfo) -> bool {
    let labels = node.labels();
    pod.node_selector.as_ref().is_none_or(|s| s.matches(labels))
        && pod
            .required_node_affinity
            .as_ref()
            .is_none_or(|m| m.matches(&node.name, labels))
}

impl FilterPlugin for NodeAffinity {
    fn name(&self) -> &'static str {
        NAME
    }

    fn filter(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        if required_matches(pod, node) {
            Status::success()
        } else {
            Status::unresolvable(REASON)
        }
    }
}

impl ScorePlugin for NodeAffinity {
    fn name(&self) -> &'static str {
        NAME
    }

    fn score(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo, _: &Snapshot) -> i64 {
        pod.preferred_node_affinity
            .iter()
            .filter(|(_, t)| t.matches(&node.name, node.labels()))
            .map(|(w, _)| *w)
            .sum()
    }

    fn normalize(&self, _: &CycleState, _: &PodInfo, scores: &mut [i64]) {
        default_normalize(scores, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::test_support::*;
    use crate::testutil::{node_json, pod_json};
    use serde_json::json;

    fn nodes() -> Snapshot {
        snap(
            vec![
                node_json(
                    "ssd",
                    json!({"disk": "ssd", "zone": "a"}),
                    json!({}),
                    "1",
                    "1Gi",
                    10,
                ),
                node_json(
                    "hdd",
                    json!({"disk": "hdd", "zone": "b"}),
                    json!({}),
                    "1",
                    "1Gi",
                    10,
                ),
            ],
            vec![],
        )
    }

    #[test]
    fn node_selector_and_required_affinity_filter() {
        let s = nodes();
        let required = |op: &str, vals: serde_json::Value| {
            json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                {"nodeSelectorTerms": [{"matchExpressions": [{"key": "disk", "operator": op, "values": vals}]}]}}})
        };
        let cases = [
            (json!({"nodeSelector": {"disk": "ssd"}}), true, false),
            (json!({"nodeSelector": {"disk": "nvme"}}), false, false),
            (
                json!({"affinity": required("In", json!(["hdd"]))}),
                false,
                true,
            ),
            (
                json!({"affinity": required("NotIn", json!(["hdd"]))}),
                true,
                false,
            ),
            (
                json!({"affinity": required("Exists", json!([]))}),
                true,
                true,
            ),
            (json!({}), true, true),
        ];
        for (extra, on_ssd, on_hdd) in cases {
            let mut spec = json!({"containers": []});
            for (k, v) in extra.as_object().unwrap() {
                spec[k] = v.clone();
            }
            let p = info(pod_json("p", json!({}), spec));
            let f = |n: &str| NodeAffinity.filter(&state(), &p, s.get(n).unwrap());
            assert_eq!(f("ssd").is_success(), on_ssd, "{extra}");
            assert_eq!(f("hdd").is_success(), on_hdd, "{extra}");
            if !on_hdd {
                assert_eq!(f("hdd").reasons, vec![REASON.to_string()]);
                assert_eq!(
                    f("hdd").code,
                    crate::status::Code::UnschedulableAndUnresolvable
                );
            }
        }
    }

    #[test]
    fn preferred_terms_score_by_weight_and_normalize() {
        let s = nodes();
        let p = info(pod_json(
            "p",
            json!({}),
            json!({"containers": [], "affinity": {"nodeAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 10, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}},
                {"weight": 30, "preference": {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["hdd"]}]}}
            ]}}}),
        ));
        let mut scores: Vec<i64> = ["ssd", "hdd"]
            .iter()
            .map(|n| NodeAffinity.score(&state(), &p, s.get(n).unwrap(), &s))
            .collect();
        assert_eq!(scores, vec![10, 30]);
        NodeAffinity.normalize(&state(), &p, &mut scores);
        assert_eq!(scores, vec![33, 100]);
    }
}
