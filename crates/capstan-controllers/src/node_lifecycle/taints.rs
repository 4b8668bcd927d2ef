//! Which taints a node's conditions call for (upstream's NoSchedule and NoExecute tainting
//! passes), and how long a pod's tolerations let it stay on a NoExecute-tainted node.

use k8s_openapi::api::core::v1::{Node, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use std::time::Duration;

pub const NOT_READY: &str = "node.kubernetes.io/not-ready";
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const MEMORY_PRESSURE: &str = "node.kubernetes.io/memory-pressure";
pub const DISK_PRESSURE: &str = "node.kubernetes.io/disk-pressure";
pub const PID_PRESSURE: &str = "node.kubernetes.io/pid-pressure";
pub const NETWORK_UNAVAILABLE: &str = "node.kubernetes.io/network-unavailable";
pub const UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";
pub const NO_EXECUTE: &str = "NoExecute";
pub const NO_SCHEDULE: &str = "NoSchedule";

/// Every taint key this controller owns.
const MANAGED: [&str; 7] = [
    NOT_READY,
    UNREACHABLE,
    MEMORY_PRESSURE,
    DISK_PRESSURE,
    PID_PRESSURE,
    NETWORK_UNAVAILABLE,
    UNSCHEDULABLE,
];

/// Status of condition `type_` of `node`.
pub fn condition<'a>(node: &'a Node, type_: &str) -> Option<&'a str> {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == type_))
        .map(|c| c.status.as_str())
}

/// The managed taints (key, effect) the node should carry.
pub fn wanted(node: &Node) -> Vec<(&'static str, &'static str)> {
    let mut out = Vec::new();
    match condition(node, "Ready") {
        Some("False") => out.extend([(NOT_READY, NO_SCHEDULE), (NOT_READY, NO_EXECUTE)]),
        Some("Unknown") => out.extend([(UNREACHABLE, NO_SCHEDULE), (UNREACHABLE, NO_EXECUTE)]),
        _ => {}
    }
    for (type_, key) in [
        ("MemoryPressure", MEMORY_PRESSURE),
        ("DiskPressure", DISK_PRESSURE),
        ("PIDPressure", PID_PRESSURE),
        ("NetworkUnavailable", NETWORK_UNAVAILABLE),
    ] {
        if condition(node, type_) == Some("True") {
            out.push((key, NO_SCHEDULE));
        }
    }
    if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
        out.push((UNSCHEDULABLE, NO_SCHEDULE));
    }
    out
}

/// The node's taints with the managed ones made to match its conditions; None if unchanged.
pub fn reconcile(node: &Node, now: &Time) -> Option<Vec<Taint>> {
    let want = wanted(node);
    let existing = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let mut out: Vec<Taint> = existing
        .iter()
        .filter(|t| {
            !MANAGED.contains(&t.key.as_str())
                || want.iter().any(|(k, e)| *k == t.key && *e == t.effect)
        })
        .cloned()
        .collect();
    for (key, effect) in &want {
        if !out.iter().any(|t| t.key == *key && t.effect == *effect) {
            out.push(Taint {
                key: key.to_string(),
                effect: effect.to_string(),
                value: None,
                time_added: Some(now.clone()),
            });
        }
    }
    (out != existing).then_some(out)
}

/// Whether `t` tolerates `taint` (upstream's `ToleratesTaint`).
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if let Some(e) = t.effect.as_deref().filter(|e| !e.is_empty())
        && e != taint.effect
    {
        return false;
    }
    let key = t.key.as_deref().unwrap_or("");
    let exists = t.operator.as_deref() == Some("Exists");
    if key.is_empty() {
        return exists;
    }
    if key != taint.key {
        return false;
    }
    exists || t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
}

/// `tolerations` plus the not-ready and unreachable NoExecute tolerations upstream's
/// DefaultTolerationSeconds admission adds to pods lacking them.
pub fn with_defaults(
    tolerations: &[Toleration],
    not_ready: i64,
    unreachable: i64,
) -> Vec<Toleration> {
    let mut out = tolerations.to_vec();
    for (key, seconds) in [(NOT_READY, not_ready), (UNREACHABLE, unreachable)] {
        let taint = Taint {
            key: key.into(),
            effect: NO_EXECUTE.into(),
            ..Taint::default()
        };
        if !tolerations.iter().any(|t| tolerates(t, &taint)) {
            out.push(Toleration {
                key: Some(key.into()),
                operator: Some("Exists".into()),
                effect: Some(NO_EXECUTE.into()),
                toleration_seconds: Some(seconds),
                value: None,
            });
        }
    }
    out
}

/// How long a pod with `tolerations` may stay on a node with `taints`: None = for ever,
/// zero = evict now (upstream's `getMinTolerationTime` over the used tolerations).
pub fn eviction_delay(tolerations: &[Toleration], taints: &[Taint]) -> Option<Duration> {
    let mut any = false;
    let mut min: Option<i64> = None;
    for taint in taints.iter().filter(|t| t.effect == NO_EXECUTE) {
        any = true;
        let used: Vec<&Toleration> = tolerations.iter().filter(|t| tolerates(t, taint)).collect();
        if used.is_empty() {
            return Some(Duration::ZERO);
        }
        for s in used.iter().filter_map(|t| t.toleration_seconds) {
            if s <= 0 {
                return Some(Duration::ZERO);
            }
            min = Some(min.map_or(s, |m| m.min(s)));
        }
    }
    if !any {
        return None;
    }
    min.map(|s| Duration::from_secs(s.unsigned_abs()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(v: serde_json::Value) -> Node {
        serde_json::from_value(v).unwrap()
    }

    fn taint(key: &str, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            effect: effect.into(),
            ..Taint::default()
        }
    }

    #[test]
    fn conditions_map_to_taints_and_recovery_removes_them() {
        let now = Time(jiff::Timestamp::now());
        let n = node(json!({"metadata": {"name": "n"},
            "spec": {"taints": [{"key": "dedicated", "value": "x", "effect": "NoSchedule"}]},
            "status": {"conditions": [{"type": "Ready", "status": "Unknown"},
                                      {"type": "DiskPressure", "status": "True"}]}}));
        let t = reconcile(&n, &now).unwrap();
        let keys: Vec<(&str, &str)> = t
            .iter()
            .map(|t| (t.key.as_str(), t.effect.as_str()))
            .collect();
        assert_eq!(
            keys,
            [
                ("dedicated", "NoSchedule"),
                (UNREACHABLE, NO_SCHEDULE),
                (UNREACHABLE, NO_EXECUTE),
                (DISK_PRESSURE, NO_SCHEDULE)
            ]
        );
        let mut healthy = n.clone();
        healthy.spec.as_mut().unwrap().taints = Some(t);
        healthy.status = node(json!({"metadata": {}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}})).status;
        let back = reconcile(&healthy, &now).unwrap();
        assert_eq!(back.len(), 1);
        assert!(reconcile(&n, &now).is_some());
        let mut done = n.clone();
        done.spec.as_mut().unwrap().taints = reconcile(&n, &now);
        assert!(reconcile(&done, &now).is_none());
    }

    #[test]
    fn toleration_seconds_and_defaults_decide_the_delay() {
        let unreachable = [taint(UNREACHABLE, NO_EXECUTE)];
        assert_eq!(eviction_delay(&[], &unreachable), Some(Duration::ZERO));
        let defaults = with_defaults(&[], 300, 7);
        assert_eq!(defaults.len(), 2);
        assert_eq!(
            eviction_delay(&defaults, &unreachable),
            Some(Duration::from_secs(7))
        );
        let forever: Toleration = serde_json::from_value(json!({"operator": "Exists"})).unwrap();
        assert_eq!(
            with_defaults(std::slice::from_ref(&forever), 300, 300).len(),
            1
        );
        assert_eq!(eviction_delay(&[forever], &unreachable), None);
        let short: Toleration = serde_json::from_value(
            json!({"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 3}),
        )
        .unwrap();
        assert_eq!(
            eviction_delay(&with_defaults(&[short], 300, 300), &unreachable),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            eviction_delay(&defaults, &[taint("other", NO_SCHEDULE)]),
            None
        );
        let equal: Toleration =
            serde_json::from_value(json!({"key": "k", "value": "v", "effect": "NoExecute"}))
                .unwrap();
        let mut kv = taint("k", NO_EXECUTE);
        kv.value = Some("v".into());
        assert!(tolerates(&equal, &kv));
        kv.value = Some("w".into());
        assert!(!tolerates(&equal, &kv));
    }
}
