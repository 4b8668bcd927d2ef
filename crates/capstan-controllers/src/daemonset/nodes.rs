//! Which nodes a DaemonSet's pod belongs on (upstream's `NodeShouldRunDaemonPod`): the
//! nodeSelector, required node affinity, and the node's taints against the pod's tolerations
//! (with upstream's default DaemonSet tolerations added); and how pods are pinned to a node.

use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    PodSpec, Taint, Toleration,
};
use kube::ResourceExt;
use std::collections::BTreeMap;

/// Upstream's `metadata.name` node field for matchFields.
const NODE_NAME_FIELD: &str = "metadata.name";

/// Where a DaemonSet pod belongs: `run` (a pod should be created there) and `keep` (an existing
/// pod may stay; a NoSchedule taint added later does not evict).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    pub run: bool,
    pub keep: bool,
}

/// Adds the tolerations every DaemonSet pod gets (upstream's `AddOrUpdateDaemonPodTolerations`).
pub fn add_default_tolerations(spec: &mut PodSpec) {
    let mut defaults = vec![
        ("node.kubernetes.io/not-ready", "NoExecute"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
        ("node.kubernetes.io/disk-pressure", "NoSchedule"),
        ("node.kubernetes.io/memory-pressure", "NoSchedule"),
        ("node.kubernetes.io/pid-pressure", "NoSchedule"),
        ("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if spec.host_network == Some(true) {
        defaults.push(("node.kubernetes.io/network-unavailable", "NoSchedule"));
    }
    let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
    for (key, effect) in defaults {
        let present = tolerations.iter().any(|t| {
            t.key.as_deref() == Some(key)
                && t.effect.as_deref() == Some(effect)
                && t.operator.as_deref() == Some("Exists")
        });
        if !present {
            tolerations.push(Toleration {
                key: Some(key.into()),
                operator: Some("Exists".into()),
                effect: Some(effect.into()),
                ..Toleration::default()
            });
        }
    }
}

fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if t.effect
        .as_deref()
        .is_some_and(|e| !e.is_empty() && e != taint.effect)
    {
        return false;
    }
    match t.operator.as_deref() {
        Some("Exists") => t
            .key
            .as_deref()
            .is_none_or(|k| k.is_empty() || k == taint.key),
        _ => {
            t.key.as_deref() == Some(taint.key.as_str())
                && t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
    }
}

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&String>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    let int = |s: &str| s.parse::<i64>().ok();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(bound)) = (
                value.and_then(|v| int(v)),
                values.first().and_then(|b| int(b)),
            ) else {
                return false;
            };
            if r.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

/// A term matches when all its requirements do; an empty term matches nothing (as upstream).
fn term_matches(term: &NodeSelectorTerm, node: &Node) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    let labels = node.labels();
    let name = node.name_any();
    exprs
        .iter()
        .all(|r| requirement_matches(r, labels.get(&r.key)))
        && fields
            .iter()
            .all(|r| r.key == NODE_NAME_FIELD && requirement_matches(r, Some(&name)))
}

fn selector_matches(spec: &PodSpec, node: &Node) -> bool {
    let labels = node.labels();
    let selector_ok = spec
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    selector_ok
        && required.is_none_or(|r| r.node_selector_terms.iter().any(|t| term_matches(t, node)))
}

/// Where the pod `spec` (default tolerations already added) belongs relative to `node`.
pub fn placement(spec: &PodSpec, node: &Node) -> Placement {
    if !selector_matches(spec, node) {
        return Placement {
            run: false,
            keep: false,
        };
    }
    let tolerations = spec.tolerations.as_deref().unwrap_or_default();
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default();
    let untolerated = |effect: &str| {
        taints
            .iter()
            .filter(|t| t.effect == effect)
            .any(|t| !tolerations.iter().any(|tol| tolerates(tol, t)))
    };
    let keep = !untolerated("NoExecute");
    Placement {
        run: keep && !untolerated("NoSchedule"),
        keep,
    }
}

/// Pins a pod to `node` with required node affinity on `metadata.name` (replacing any other
/// required terms, which the controller already evaluated), as upstream does.
pub fn pin_to_node(spec: &mut PodSpec, node: &str) {
    let affinity = spec.affinity.get_or_insert_with(Affinity::default);
    let na = affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default);
    na.required_during_scheduling_ignored_during_execution = Some(NodeSelector {
        node_selector_terms: vec![NodeSelectorTerm {
            match_fields: Some(vec![NodeSelectorRequirement {
                key: NODE_NAME_FIELD.into(),
                operator: "In".into(),
                values: Some(vec![node.to_string()]),
            }]),
            match_expressions: None,
        }],
    });
}

/// The node a DaemonSet pod is on or pinned to.
pub fn node_of(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(n) = spec.node_name.as_ref().filter(|n| !n.is_empty()) {
        return Some(n.clone());
    }
    let terms = &spec
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|r| r.key == NODE_NAME_FIELD && r.operator == "In")
        .and_then(|r| r.values.as_ref()?.first().cloned())
}

/// Groups pods by the node they are on or pinned to.
pub fn by_node<P: std::ops::Deref<Target = Pod> + Clone>(pods: &[P]) -> BTreeMap<String, Vec<P>> {
    let mut map: BTreeMap<String, Vec<P>> = BTreeMap::new();
    for p in pods {
        if let Some(n) = node_of(p) {
            map.entry(n).or_default().push(p.clone());
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, labels: serde_json::Value, taints: serde_json::Value) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": labels},
            "spec": {"taints": taints}
        }))
        .unwrap()
    }

    fn spec(v: serde_json::Value) -> PodSpec {
        let mut s: PodSpec = serde_json::from_value(v).unwrap();
        add_default_tolerations(&mut s);
        s
    }

    #[test]
    fn selectors_affinity_and_taints_decide_placement() {
        let plain = spec(serde_json::json!({"containers": []}));
        let n = node(
            "a",
            serde_json::json!({"disk": "ssd", "cores": "8"}),
            serde_json::json!([]),
        );
        assert_eq!(
            placement(&plain, &n),
            Placement {
                run: true,
                keep: true
            }
        );

        let sel = spec(serde_json::json!({"containers": [], "nodeSelector": {"disk": "hdd"}}));
        assert_eq!(
            placement(&sel, &n),
            Placement {
                run: false,
                keep: false
            }
        );

        let aff = spec(
            serde_json::json!({"containers": [], "affinity": {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "cores", "operator": "Gt", "values": ["4"]}]}]}}}}),
        );
        assert!(placement(&aff, &n).run);
        let n2 = node(
            "b",
            serde_json::json!({"cores": "2"}),
            serde_json::json!([]),
        );
        assert!(!placement(&aff, &n2).run);

        let tainted = node(
            "c",
            serde_json::json!({}),
            serde_json::json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]),
        );
        assert_eq!(
            placement(&plain, &tainted),
            Placement {
                run: false,
                keep: true
            }
        );
        let evicting = node(
            "d",
            serde_json::json!({}),
            serde_json::json!([{"key": "x", "effect": "NoExecute"}]),
        );
        assert_eq!(
            placement(&plain, &evicting),
            Placement {
                run: false,
                keep: false
            }
        );
        let tolerant = spec(serde_json::json!({"containers": [], "tolerations": [
            {"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]}));
        assert!(placement(&tolerant, &tainted).run);

        // Default tolerations cover the node condition taints.
        let unsched = node(
            "e",
            serde_json::json!({}),
            serde_json::json!([
            {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"},
            {"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"}]),
        );
        assert!(placement(&plain, &unsched).run);
    }

    #[test]
    fn host_network_pods_tolerate_network_unavailable_once() {
        let mut s = spec(serde_json::json!({"containers": [], "hostNetwork": true}));
        add_default_tolerations(&mut s);
        let keys: Vec<_> = s
            .tolerations
            .iter()
            .flatten()
            .filter_map(|t| t.key.as_deref())
            .collect();
        assert_eq!(keys.len(), 7, "{keys:?}");
        assert!(keys.contains(&"node.kubernetes.io/network-unavailable"));
    }

    #[test]
    fn pinned_pods_name_their_node() {
        let mut s = spec(
            serde_json::json!({"containers": [], "affinity": {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "a", "operator": "Exists"}]}]}}}}),
        );
        pin_to_node(&mut s, "n7");
        let pod = Pod {
            spec: Some(s),
            ..Pod::default()
        };
        assert_eq!(node_of(&pod).as_deref(), Some("n7"));
        let terms = &pod
            .spec
            .as_ref()
            .unwrap()
            .affinity
            .as_ref()
            .unwrap()
            .node_affinity
            .as_ref()
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .as_ref()
            .unwrap()
            .node_selector_terms;
        assert_eq!(terms.len(), 1);
        assert!(terms[0].match_expressions.is_none());
        let n = node("n7", serde_json::json!({}), serde_json::json!([]));
        assert!(placement(pod.spec.as_ref().unwrap(), &n).run);
    }
}
