//! Pod predicates and ranking shared by the workload controllers: activeness, readiness and
//! availability (minReadySeconds), selector matching, upstream's scale-down order, and the
//! ReplicaSet status computed from the owned pods.

use super::{ReplicaSetError, failure_condition};
use capstan_api::selectors::LabelSelector;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{self as metav1, ObjectMeta, OwnerReference};
use kube::ResourceExt;
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// The controller ownerReference of an object, if any.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true))
}

/// Whether a selector matches labels; an empty or invalid selector matches nothing (as upstream
/// does for workload controllers).
pub fn selector_matches(sel: &metav1::LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    match LabelSelector::from_label_selector(sel) {
        Ok(s) if !s.is_empty() => s.matches(labels),
        _ => false,
    }
}

/// Whether the selector is usable (non-empty and valid).
pub fn selector_valid(sel: &metav1::LabelSelector) -> Result<(), ReplicaSetError> {
    match LabelSelector::from_label_selector(sel) {
        Ok(s) if !s.is_empty() => Ok(()),
        Ok(_) => Err(ReplicaSetError::Selector("empty selector".into())),
        Err(e) => Err(ReplicaSetError::Selector(e.to_string())),
    }
}

/// Not finished: phase neither Succeeded nor Failed (terminating pods included; callers that
/// count replicas drop those separately).
pub fn active(pod: &Pod) -> bool {
    !matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded") | Some("Failed")
    )
}

fn ready_condition(pod: &Pod) -> Option<&k8s_openapi::api::core::v1::PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

/// The pod's Ready condition is True.
pub fn is_ready(pod: &Pod) -> bool {
    ready_condition(pod).is_some_and(|c| c.status == "True")
}

/// How long the pod has been ready, or None when it is not.
fn ready_for(pod: &Pod, now: jiff::Timestamp) -> Option<Duration> {
    let c = ready_condition(pod).filter(|c| c.status == "True")?;
    let Some(since) = c.last_transition_time.as_ref() else {
        return Some(Duration::MAX);
    };
    let secs = now.duration_since(since.0).as_secs_f64().max(0.0);
    Some(Duration::from_secs_f64(secs))
}

/// Ready for at least `min_ready_seconds` (upstream's `IsPodAvailable`).
pub fn is_available(pod: &Pod, min_ready_seconds: i32, now: jiff::Timestamp) -> bool {
    let min = Duration::from_secs(min_ready_seconds.max(0) as u64);
    ready_for(pod, now).is_some_and(|d| min.is_zero() || d >= min)
}

/// When the next ready-but-not-yet-available pod becomes available.
pub fn next_availability(pods: &[Arc<Pod>], min_ready_seconds: i32) -> Option<Duration> {
    if min_ready_seconds <= 0 {
        return None;
    }
    let now = jiff::Timestamp::now();
    let min = Duration::from_secs(min_ready_seconds as u64);
    pods.iter()
        .filter_map(|p| ready_for(p, now))
        .filter(|d| *d < min)
        .map(|d| min - d + Duration::from_millis(100))
        .min()
}

fn phase_rank(pod: &Pod) -> u8 {
    match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Pending") | None => 0,
        Some("Running") => 2,
        _ => 1,
    }
}

fn restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map_or(0, |cs| {
            cs.iter().map(|c| c.restart_count).max().unwrap_or(0)
        })
}

fn created(pod: &Pod) -> Option<jiff::Timestamp> {
    pod.metadata.creation_timestamp.as_ref().map(|t| t.0)
}

/// Upstream's `ActivePods` order, the pod to delete first sorting first: unscheduled before
/// scheduled, Pending before Unknown before Running, not ready before ready, ready more
/// recently before ready longer, more restarts before fewer, newer before older.
pub fn deletion_order(a: &Pod, b: &Pod) -> Ordering {
    let assigned = |p: &Pod| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
    let ready_since = |p: &Pod| {
        ready_condition(p)
            .filter(|c| c.status == "True")
            .and_then(|c| c.last_transition_time.as_ref().map(|t| t.0))
    };
    assigned(a)
        .cmp(&assigned(b))
        .then_with(|| phase_rank(a).cmp(&phase_rank(b)))
        .then_with(|| is_ready(a).cmp(&is_ready(b)))
        // Later ready time first.
        .then_with(|| ready_since(b).cmp(&ready_since(a)))
        .then_with(|| restarts(b).cmp(&restarts(a)))
        // Newer first; pods without a timestamp sort as newest.
        .then_with(|| match (created(a), created(b)) {
            (Some(x), Some(y)) => y.cmp(&x),
            (None, Some(_)) => Ordering::Less,
            (Some(_), None) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        })
}

/// The status a sync writes, from the live (owned, not terminating) pods.
pub(super) fn status(
    rs: &ReplicaSet,
    live: &[Arc<Pod>],
    manage_err: Option<&ReplicaSetError>,
) -> ReplicaSetStatus {
    let spec = rs.spec.as_ref();
    let template_labels = spec
        .and_then(|s| s.template.as_ref())
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let min_ready = spec.and_then(|s| s.min_ready_seconds).unwrap_or(0);
    let now = jiff::Timestamp::now();
    let count = |f: &dyn Fn(&Pod) -> bool| live.iter().filter(|p| f(p)).count() as i32;
    let fully_labeled = count(&|p: &Pod| {
        template_labels
            .iter()
            .all(|(k, v)| p.labels().get(k) == Some(v))
    });
    let old = rs.status.as_ref();
    let want = spec.and_then(|s| s.replicas).unwrap_or(1);
    let mut conditions: Vec<_> = old
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.type_ != "ReplicaFailure")
        .collect();
    // As upstream: the failure shows while the set is short (or long) of pods.
    if (live.len() as i32) != want
        && let Some(c) = failure_condition(old, manage_err)
    {
        conditions.push(c);
    }
    ReplicaSetStatus {
        replicas: live.len() as i32,
        fully_labeled_replicas: Some(fully_labeled),
        ready_replicas: Some(count(&is_ready)),
        available_replicas: Some(count(&|p: &Pod| is_available(p, min_ready, now))),
        observed_generation: rs.metadata.generation,
        conditions: (!conditions.is_empty()).then_some(conditions),
        terminating_replicas: old.and_then(|s| s.terminating_replicas),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn pod(name: &str, node: bool, phase: &str, ready: bool, created_s: i64) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some(name.into());
        p.metadata.creation_timestamp = Some(Time(
            jiff::Timestamp::from_second(1_700_000_000 + created_s).unwrap(),
        ));
        p.spec = Some(PodSpec {
            node_name: node.then(|| "n1".to_string()),
            ..PodSpec::default()
        });
        p.status = Some(PodStatus {
            phase: Some(phase.into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..PodCondition::default()
            }]),
            ..PodStatus::default()
        });
        p
    }

    #[test]
    fn scale_down_prefers_unscheduled_then_pending_then_not_ready_then_newer() {
        let mut pods = [
            pod("old-ready", true, "Running", true, 0),
            pod("new-ready", true, "Running", true, 10),
            pod("not-ready", true, "Running", false, 0),
            pod("pending", true, "Pending", false, 0),
            pod("unscheduled", false, "Pending", false, 0),
        ];
        pods.sort_by(deletion_order);
        let names: Vec<_> = pods.iter().map(|p| p.name_any()).collect();
        assert_eq!(
            names,
            [
                "unscheduled",
                "pending",
                "not-ready",
                "new-ready",
                "old-ready"
            ]
        );
    }

    #[test]
    fn empty_selector_matches_nothing() {
        let labels = BTreeMap::from([("app".to_string(), "x".to_string())]);
        assert!(!selector_matches(
            &metav1::LabelSelector::default(),
            &labels
        ));
        let sel = metav1::LabelSelector {
            match_labels: Some(labels.clone()),
            ..Default::default()
        };
        assert!(selector_matches(&sel, &labels));
    }
}

#[cfg(test)]
mod status_tests {
    use super::*;

    #[test]
    fn create_failures_show_as_replica_failure_while_short() {
        let rs: ReplicaSet = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "r", "generation": 4},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"a": "b"}},
                     "template": {"metadata": {"labels": {"a": "b"}}}}
        }))
        .unwrap();
        let err = ReplicaSetError::Create("forbidden".into());
        let s = status(&rs, &[], Some(&err));
        assert_eq!(s.observed_generation, Some(4));
        let c = &s.conditions.unwrap()[0];
        assert_eq!(
            (c.type_.as_str(), c.reason.as_deref()),
            ("ReplicaFailure", Some("FailedCreate"))
        );
        // A clean sync clears it.
        let mut rs = rs;
        rs.status = Some(status(&rs, &[], Some(&err)));
        assert!(status(&rs, &[], None).conditions.is_none());
    }
}
