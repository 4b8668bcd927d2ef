//! NodeName: a pod that names its node fits only there.

use crate::framework::{CycleState, FilterPlugin};
use crate::nodeinfo::NodeInfo;
use crate::podinfo::PodInfo;
use crate::status::Status;

pub const NAME: &str = "NodeName";
pub const REASON: &str = "node(s) didn't match the requested node name";

pub struct NodeName;

impl FilterPlugin for NodeName {
    fn name(&self) -> &'static str {
        NAME
    }

    fn filter(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        match &pod.node_name {
            Some(n) if *n != node.name => Status::unresolvable(REASON),
            _ => Status::success(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::test_support::*;
    use crate::testutil::{bound, node, pod};

    #[test]
    fn only_the_named_node_fits() {
        let s = snap(
            vec![node("a", "1", "1Gi", 10), node("b", "1", "1Gi", 10)],
            vec![],
        );
        let cases = [
            (None, "a", true),
            (Some("a"), "a", true),
            (Some("a"), "b", false),
        ];
        for (want_node, on, fits) in cases {
            let mut p = pod("p", "0", "0");
            if let Some(n) = want_node {
                p = bound(p, n);
            }
            let st = NodeName.filter(&state(), &info(p), s.get(on).unwrap());
            assert_eq!(st.is_success(), fits, "{want_node:?} on {on}");
            if !fits {
                assert_eq!(st.reasons, vec![REASON.to_string()]);
            }
        }
    }
}
