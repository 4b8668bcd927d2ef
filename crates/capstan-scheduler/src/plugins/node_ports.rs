//! NodePorts: host ports the pod asks for must be free on the node.

use crate::cache::Snapshot;
use crate::framework::{CycleState, FilterPlugin, PreFilterPlugin};
use crate::nodeinfo::NodeInfo;
use crate::podinfo::PodInfo;
use crate::status::Status;

pub const NAME: &str = "NodePorts";
pub const REASON: &str = "node(s) didn't have free ports for the requested pod ports";

pub struct NodePorts;

impl PreFilterPlugin for NodePorts {
    fn name(&self) -> &'static str {
        NAME
    }

    fn pre_filter(&self, _: &mut CycleState, pod: &PodInfo, _: &Snapshot) -> Status {
        if pod.host_ports.is_empty() {
            Status::skip()
        } else {
            Status::success()
        }
    }
}

impl FilterPlugin for NodePorts {
    fn name(&self) -> &'static str {
        NAME
    }

    fn filter(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        let clash = pod
            .host_ports
            .iter()
            .any(|want| node.used_ports.iter().any(|used| used.conflicts(want)));
        if clash {
            Status::unschedulable(REASON)
        } else {
            Status::success()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::test_support::*;
    use crate::testutil::{bound, node, pod_json};
    use serde_json::json;

    fn with_port(name: &str, port: i32, proto: &str, ip: &str) -> k8s_openapi::api::core::v1::Pod {
        pod_json(
            name,
            json!({}),
            json!({"containers": [{"name": "c", "image": "i",
            "ports": [{"containerPort": 80, "hostPort": port, "protocol": proto, "hostIP": ip}]}]}),
        )
    }

    #[test]
    fn host_ports_conflict_by_port_protocol_and_address() {
        let s = snap(
            vec![node("n", "1", "1Gi", 10)],
            vec![bound(with_port("a", 8080, "TCP", "10.0.0.1"), "n")],
        );
        let cases = [
            (8080, "TCP", "", false),
            (8080, "TCP", "10.0.0.1", false),
            (8080, "TCP", "10.0.0.2", true),
            (8080, "UDP", "", true),
            (9090, "TCP", "", true),
        ];
        for (port, proto, ip, fits) in cases {
            let st = NodePorts.filter(
                &state(),
                &info(with_port("p", port, proto, ip)),
                s.get("n").unwrap(),
            );
            assert_eq!(st.is_success(), fits, "{port}/{proto} {ip}");
        }
        let mut st = state();
        let plain = info(pod_json("p", json!({}), json!({"containers": []})));
        assert!(NodePorts.pre_filter(&mut st, &plain, &s).is_skip());
    }
}
