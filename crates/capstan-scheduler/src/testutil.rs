//! Builders of fake nodes and pods for unit tests.

use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::{Value, json};

pub fn node(name: &str, cpu: &str, mem: &str, pods: i64) -> Node {
    node_json(name, json!({}), json!({}), cpu, mem, pods)
}

/// A node with labels and a spec (taints, unschedulable).
pub fn node_json(name: &str, labels: Value, spec: Value, cpu: &str, mem: &str, pods: i64) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": spec,
        "status": {"allocatable": {"cpu": cpu, "memory": mem, "pods": pods.to_string()}}
    }))
    .expect("node")
}

pub fn pod(name: &str, cpu: &str, mem: &str) -> Pod {
    pod_json(
        name,
        json!({}),
        json!({
            "containers": [{"name": "c", "image": "busybox",
                            "resources": {"requests": {"cpu": cpu, "memory": mem}}}]
        }),
    )
}

/// A pod in namespace `default` with labels and a full spec.
pub fn pod_json(name: &str, labels: Value, spec: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"), "labels": labels},
        "spec": spec
    }))
    .expect("pod")
}

/// `pod` bound to `node`.
pub fn bound(mut p: Pod, node: &str) -> Pod {
    p.spec.get_or_insert_with(Default::default).node_name = Some(node.to_string());
    p
}
