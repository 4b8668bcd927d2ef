//! TaintToleration: NoSchedule/NoExecute taints must be tolerated; untolerated
//! PreferNoSchedule taints lower the score.

use crate::cache::Snapshot;
use crate::framework::{CycleState, FilterPlugin, PreScorePlugin, ScorePlugin, default_normalize};
use crate::nodeinfo::NodeInfo;
use crate::podinfo::PodInfo;
use crate::status::Status;
use k8s_openapi::api::core::v1::{Taint, Toleration};

pub const NAME: &str = "TaintToleration";

pub struct TaintToleration;

/// Upstream's `Toleration.ToleratesTaint`.
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if let Some(e) = t.effect.as_deref().filter(|e| !e.is_empty())
        && e != taint.effect
    {
        return false;
    }
    match t.key.as_deref() {
        None | Some("") => {}
        Some(k) if k == taint.key => {}
        Some(_) => return false,
    }
    match t.operator.as_deref() {
        Some("Exists") => true,
        None | Some("") | Some("Equal") => {
            t.value.as_deref().unwrap_or_default() == taint.value.as_deref().unwrap_or_default()
        }
        Some(_) => false,
    }
}

/// The first taint among `effects` that no toleration covers.
pub fn untolerated<'a>(
    taints: &'a [Taint],
    tols: &[Toleration],
    effects: &[&str],
) -> Option<&'a Taint> {
    taints
        .iter()
        .filter(|t| effects.contains(&t.effect.as_str()))
        .find(|t| !tols.iter().any(|tol| tolerates(tol, t)))
}

impl FilterPlugin for TaintToleration {
    fn name(&self) -> &'static str {
        NAME
    }

    fn filter(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        match untolerated(&node.taints, &pod.tolerations, &["NoSchedule", "NoExecute"]) {
            None => Status::success(),
            Some(t) => Status::unresolvable(format!(
                "node(s) had untolerated taint {{{}: {}}}",
                t.key,
                t.value.as_deref().unwrap_or_default()
            )),
        }
    }
}

impl PreScorePlugin for TaintToleration {
    fn name(&self) -> &'static str {
        NAME
    }

    fn pre_score(
        &self,
        _: &mut CycleState,
        _: &PodInfo,
        feasible: &[&NodeInfo],
        _: &Snapshot,
    ) -> Status {
        if feasible.iter().all(|n| n.taints.is_empty()) {
            Status::skip()
        } else {
            Status::success()
        }
    }
}

impl ScorePlugin for TaintToleration {
    fn name(&self) -> &'static str {
        NAME
    }

    fn score(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo, _: &Snapshot) -> i64 {
        let tols: Vec<Toleration> = pod
            .tolerations
            .iter()
            .filter(|t| {
                t.effect
                    .as_deref()
                    .is_none_or(|e| e.is_empty() || e == "PreferNoSchedule")
            })
            .cloned()
            .collect();
        node.taints
            .iter()
            .filter(|t| t.effect == "PreferNoSchedule" && !tols.iter().any(|tol| tolerates(tol, t)))
            .count() as i64
    }

    fn normalize(&self, _: &CycleState, _: &PodInfo, scores: &mut [i64]) {
        default_normalize(scores, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::test_support::*;
    use crate::testutil::{node_json, pod_json};
    use serde_json::json;

    fn taint(key: &str, value: &str, effect: &str) -> serde_json::Value {
        json!({"key": key, "value": value, "effect": effect})
    }

    #[test]
    fn untolerated_hard_taints_reject_with_upstream_message() {
        let s = snap(
            vec![node_json(
                "t",
                json!({}),
                json!({"taints": [taint("dedicated", "gpu", "NoSchedule")]}),
                "1",
                "1Gi",
                10,
            )],
            vec![],
        );
        let cases = [
            (json!([]), false),
            (
                json!([{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]),
                true,
            ),
            (json!([{"key": "dedicated", "value": "cpu"}]), false),
            (json!([{"key": "dedicated", "operator": "Exists"}]), true),
            (json!([{"operator": "Exists"}]), true),
            (
                json!([{"key": "dedicated", "operator": "Exists", "effect": "NoExecute"}]),
                false,
            ),
        ];
        for (tol, fits) in cases {
            let p = info(pod_json(
                "p",
                json!({}),
                json!({"containers": [], "tolerations": tol}),
            ));
            let st = TaintToleration.filter(&state(), &p, s.get("t").unwrap());
            assert_eq!(st.is_success(), fits, "{tol}");
            if !fits {
                assert_eq!(
                    st.reasons,
                    vec!["node(s) had untolerated taint {dedicated: gpu}".to_string()]
                );
            }
        }
    }

    #[test]
    fn prefer_no_schedule_taints_lower_the_score() {
        let s = snap(
            vec![
                node_json("clean", json!({}), json!({}), "1", "1Gi", 10),
                node_json(
                    "soft",
                    json!({}),
                    json!({"taints": [taint("a", "", "PreferNoSchedule"), taint("b", "", "PreferNoSchedule")]}),
                    "1",
                    "1Gi",
                    10,
                ),
                node_json(
                    "half",
                    json!({}),
                    json!({"taints": [taint("a", "", "PreferNoSchedule")]}),
                    "1",
                    "1Gi",
                    10,
                ),
            ],
            vec![],
        );
        let p = info(pod_json("p", json!({}), json!({"containers": []})));
        let mut scores: Vec<i64> = ["clean", "soft", "half"]
            .iter()
            .map(|n| TaintToleration.score(&state(), &p, s.get(n).unwrap(), &s))
            .collect();
        assert_eq!(scores, vec![0, 2, 1]);
        TaintToleration.normalize(&state(), &p, &mut scores);
        assert_eq!(scores, vec![100, 0, 50]);
    }
}
