//! DefaultTolerationSeconds: pods tolerate `not-ready` and `unreachable` NoExecute taints for
//! five minutes unless they say otherwise, so a node blip does not evict them at once.

use serde_json::{Value, json};
use std::sync::atomic::{AtomicI64, Ordering};

pub const DEFAULT_SECONDS: i64 = 300;
const KEYS: [&str; 2] = [
    "node.kubernetes.io/not-ready",
    "node.kubernetes.io/unreachable",
];

/// The flags `--default-not-ready-toleration-seconds` and
/// `--default-unreachable-toleration-seconds`: process-wide, like the flags of the one API
/// server a process runs.
static NOT_READY_SECONDS: AtomicI64 = AtomicI64::new(DEFAULT_SECONDS);
static UNREACHABLE_SECONDS: AtomicI64 = AtomicI64::new(DEFAULT_SECONDS);

/// Set the tolerationSeconds new pods get (set once at start).
pub fn set_default_seconds(not_ready: i64, unreachable: i64) {
    NOT_READY_SECONDS.store(not_ready, Ordering::Relaxed);
    UNREACHABLE_SECONDS.store(unreachable, Ordering::Relaxed);
}

pub(crate) fn mutate(pod: &mut Value) {
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    let tolerations = spec.entry("tolerations").or_insert_with(|| json!([]));
    let Some(list) = tolerations.as_array_mut() else {
        return;
    };
    let seconds = [
        NOT_READY_SECONDS.load(Ordering::Relaxed),
        UNREACHABLE_SECONDS.load(Ordering::Relaxed),
    ];
    for (key, seconds) in KEYS.into_iter().zip(seconds) {
        // Upstream: any toleration of the key with effect NoExecute or no effect (all effects),
        // or one with an empty key, counts.
        let present = list.iter().any(|t| {
            let effect = t["effect"].as_str().unwrap_or_default();
            let k = t["key"].as_str().unwrap_or_default();
            (effect.is_empty() || effect == "NoExecute") && (k == key || k.is_empty())
        });
        if !present {
            list.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": seconds}));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_both_unless_present() {
        let mut pod = json!({"spec": {"containers": []}});
        mutate(&mut pod);
        let t = pod["spec"]["tolerations"].as_array().expect("tolerations");
        assert_eq!(t.len(), 2);
        assert_eq!(t[0]["key"], "node.kubernetes.io/not-ready");
        assert_eq!(t[1]["tolerationSeconds"], 300);
        let mut pod = json!({"spec": {"tolerations": [
            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 10}
        ]}});
        mutate(&mut pod);
        let t = pod["spec"]["tolerations"].as_array().expect("tolerations");
        assert_eq!(t.len(), 2);
        assert_eq!(t[0]["tolerationSeconds"], 10);
        assert_eq!(t[1]["key"], "node.kubernetes.io/not-ready");
        let mut pod = json!({"spec": {"tolerations": [{"operator": "Exists"}]}});
        mutate(&mut pod);
        assert_eq!(pod["spec"]["tolerations"].as_array().map(Vec::len), Some(1));
    }
}
