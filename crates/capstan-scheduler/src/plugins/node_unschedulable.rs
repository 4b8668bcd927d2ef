//! NodeUnschedulable: cordoned nodes take only pods tolerating the unschedulable taint.

use crate::framework::{CycleState, FilterPlugin};
use crate::nodeinfo::NodeInfo;
use crate::podinfo::PodInfo;
use crate::status::Status;

pub const NAME: &str = "NodeUnschedulable";
pub const REASON: &str = "node(s) were unschedulable";
const TAINT_KEY: &str = "node.kubernetes.io/unschedulable";

pub struct NodeUnschedulable;

impl FilterPlugin for NodeUnschedulable {
    fn name(&self) -> &'static str {
        NAME
    }

    fn filter(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        if !node.unschedulable {
            return Status::success();
        }
        let tolerated = pod.tolerations.iter().any(|t| {
            let key_ok = match t.key.as_deref() {
                None | Some("") => t.operator.as_deref() == Some("Exists"),
                Some(k) => k == TAINT_KEY,
            };
            key_ok
                && t.effect
                    .as_deref()
                    .is_none_or(|e| e.is_empty() || e == "NoSchedule")
        });
        if tolerated {
            Status::success()
        } else {
            Status::unresolvable(REASON)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::test_support::*;
    use crate::testutil::{node_json, pod_json};
    use serde_json::json;

    #[test]
    fn cordoned_nodes_reject_pods_without_the_toleration() {
        let s = snap(
            vec![node_json(
                "c",
                json!({}),
                json!({"unschedulable": true}),
                "1",
                "1Gi",
                10,
            )],
            vec![],
        );
        let cases = [
            (json!([]), false),
            (
                json!([{"key": TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}]),
                true,
            ),
            (json!([{"operator": "Exists"}]), true),
            (json!([{"key": "other", "operator": "Exists"}]), false),
        ];
        for (tol, fits) in cases {
            let p = pod_json(
                "p",
                json!({}),
                json!({"containers": [], "tolerations": tol}),
            );
            let st = NodeUnschedulable.filter(&state(), &info(p), s.get("c").unwrap());
            assert_eq!(st.is_success(), fits, "{tol}");
        }
    }
}
