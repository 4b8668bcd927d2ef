//! Job pods: what counts as succeeded, failed or active, the pod a Job creates (labels, the
//! tracking finalizer, the completion index), pod failure policy rules, and the interval
//! notation of `status.completedIndexes`.

use super::JobError;
use k8s_openapi::api::batch::v1::{Job, PodFailurePolicyRule};
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::ResourceExt;
use std::collections::BTreeSet;

/// Finalizer that keeps a finished pod until the Job controller counted it.
pub const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";
/// Annotation and label holding an Indexed Job pod's completion index.
pub const INDEX_KEY: &str = "batch.kubernetes.io/job-completion-index";
pub const CONTROLLER_UID_LABEL: &str = "batch.kubernetes.io/controller-uid";
pub const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";
/// Env var carrying the completion index (from the annotation, via the downward API).
pub const INDEX_ENV: &str = "JOB_COMPLETION_INDEX";

fn phase(p: &Pod) -> Option<&str> {
    p.status.as_ref().and_then(|s| s.phase.as_deref())
}

pub fn succeeded(p: &Pod) -> bool {
    phase(p) == Some("Succeeded")
}

/// Upstream's `isPodFailed`: phase Failed, or (unless only failed pods are replaced) deleted
/// before it succeeded, so orphans that never reach a phase are still counted.
pub fn failed(p: &Pod, job: &Job) -> bool {
    if phase(p) == Some("Failed") {
        return true;
    }
    if only_replace_failed(job) {
        return false;
    }
    p.metadata.deletion_timestamp.is_some() && !succeeded(p)
}

/// `podReplacementPolicy: Failed` (the default when a pod failure policy is set).
pub fn only_replace_failed(job: &Job) -> bool {
    job.spec
        .as_ref()
        .and_then(|s| s.pod_replacement_policy.as_deref())
        == Some("Failed")
}

pub fn finished(p: &Pod, job: &Job) -> bool {
    succeeded(p) || failed(p, job)
}

/// Neither finished nor terminating.
pub fn active(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none() && !matches!(phase(p), Some("Succeeded" | "Failed"))
}

/// Being deleted but not in a terminal phase yet.
pub fn terminating(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_some() && !matches!(phase(p), Some("Succeeded" | "Failed"))
}

pub fn has_finalizer(p: &Pod) -> bool {
    p.finalizers().iter().any(|f| f == TRACKING_FINALIZER)
}

pub fn ready(p: &Pod) -> bool {
    crate::replicaset::is_ready(p)
}

/// The completion index of an Indexed Job pod (annotation first, then label).
pub fn completion_index(p: &Pod) -> Option<i32> {
    let v = p
        .annotations()
        .get(INDEX_KEY)
        .or_else(|| p.labels().get(INDEX_KEY))?;
    v.parse::<i32>().ok().filter(|i| *i >= 0)
}

/// The ownerReference a Job puts on its pods.
pub fn owner_reference(job: &Job) -> OwnerReference {
    OwnerReference {
        api_version: "batch/v1".into(),
        kind: "Job".into(),
        name: job.name_any(),
        uid: job.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The pod to create for `job` (and completion `index` for Indexed Jobs).
pub fn new_pod(job: &Job, index: Option<i32>) -> Result<Pod, JobError> {
    let template = job
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .ok_or_else(|| JobError::Create("the Job has no spec".into()))?;
    let meta = template.metadata.unwrap_or_default();
    let mut spec = template
        .spec
        .ok_or_else(|| JobError::Create("the Job's pod template has no spec".into()))?;
    let name = job.name_any();
    let mut labels = meta.labels.unwrap_or_default();
    // The API server adds these on create; a Job made with generateName lacks the name label.
    if let Some(uid) = job.uid() {
        labels.entry(CONTROLLER_UID_LABEL.into()).or_insert(uid);
    }
    labels.entry(JOB_NAME_LABEL.into()).or_insert(name.clone());
    let mut annotations = meta.annotations.unwrap_or_default();
    let mut generate_name = format!("{name}-");
    if let Some(i) = index {
        labels.insert(INDEX_KEY.into(), i.to_string());
        annotations.insert(INDEX_KEY.into(), i.to_string());
        generate_name = format!("{name}-{i}-");
        // As upstream: the hostname is `<job>-<index>`, so a headless Service can address it.
        spec.hostname = Some(format!("{name}-{i}"));
        let env = EnvVar {
            name: INDEX_ENV.into(),
            value: None,
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    api_version: None,
                    field_path: format!("metadata.annotations['{INDEX_KEY}']"),
                }),
                ..EnvVarSource::default()
            }),
        };
        let all = spec
            .containers
            .iter_mut()
            .chain(spec.init_containers.iter_mut().flatten());
        for c in all {
            let vars = c.env.get_or_insert_with(Vec::new);
            if !vars.iter().any(|v| v.name == INDEX_ENV) {
                vars.push(env.clone());
            }
        }
    }
    let mut finalizers = meta.finalizers.unwrap_or_default();
    finalizers.push(TRACKING_FINALIZER.into());
    let mut pod = Pod {
        spec: Some(spec),
        ..Pod::default()
    };
    pod.metadata.generate_name = Some(generate_name);
    pod.metadata.labels = Some(labels);
    pod.metadata.annotations = (!annotations.is_empty()).then_some(annotations);
    pod.metadata.finalizers = Some(finalizers);
    pod.metadata.owner_references = Some(vec![owner_reference(job)]);
    Ok(pod)
}

/// What a pod failure policy says about a failed pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyAction {
    /// Fail the Job at once, with this message.
    FailJob(String),
    /// Do not count the failure.
    Ignore,
    /// Count it toward backoffLimit (also when no rule matches).
    Count,
}

/// Applies `spec.podFailurePolicy` to a pod in phase Failed (upstream only judges those).
pub fn failure_policy(job: &Job, pod: &Pod) -> PolicyAction {
    let Some(policy) = job
        .spec
        .as_ref()
        .and_then(|s| s.pod_failure_policy.as_ref())
    else {
        return PolicyAction::Count;
    };
    if phase(pod) != Some("Failed") {
        return PolicyAction::Count;
    }
    for (i, rule) in policy.rules.iter().enumerate() {
        if let Some(why) = rule_matches(rule, pod) {
            return match rule.action.as_str() {
                "FailJob" => {
                    PolicyAction::FailJob(format!("{why} matching FailJob rule at index {i}"))
                }
                "Ignore" => PolicyAction::Ignore,
                // FailIndex needs backoffLimitPerIndex; counted like Count here.
                _ => PolicyAction::Count,
            };
        }
    }
    PolicyAction::Count
}

/// Why `rule` matches `pod` (upstream's message prefix), or None.
fn rule_matches(rule: &PodFailurePolicyRule, pod: &Pod) -> Option<String> {
    let pod_name = format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any());
    let status = pod.status.as_ref()?;
    if let Some(req) = &rule.on_exit_codes {
        let statuses = status
            .container_statuses
            .iter()
            .flatten()
            .chain(status.init_container_statuses.iter().flatten());
        for cs in statuses {
            let Some(code) = cs
                .state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .map(|t| t.exit_code)
            else {
                continue;
            };
            if req.container_name.as_ref().is_some_and(|n| *n != cs.name) || code == 0 {
                continue;
            }
            let listed = req.values.contains(&code);
            let hit = match req.operator.as_str() {
                "In" => listed,
                "NotIn" => !listed,
                _ => false,
            };
            if hit {
                return Some(format!(
                    "Container {} for pod {pod_name} failed with exit code {code}",
                    cs.name
                ));
            }
        }
        return None;
    }
    for pattern in rule.on_pod_conditions.iter().flatten() {
        let want = if pattern.status.is_empty() {
            "True"
        } else {
            pattern.status.as_str()
        };
        let found = status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == pattern.type_ && c.status == want);
        if found {
            return Some(format!(
                "Pod {pod_name} has condition {} matching",
                pattern.type_
            ));
        }
    }
    None
}

/// `1,3-5,7` from a set of indexes (upstream's compressed interval list).
pub fn format_indexes(set: &BTreeSet<i32>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut iter = set.iter().copied().peekable();
    while let Some(first) = iter.next() {
        let mut last = first;
        while iter.peek() == Some(&(last + 1)) {
            last += 1;
            iter.next();
        }
        out.push(if first == last {
            first.to_string()
        } else {
            format!("{first}-{last}")
        });
    }
    out.join(",")
}

/// The indexes below `completions` listed in `s`; malformed parts are skipped.
pub fn parse_indexes(s: &str, completions: i32) -> BTreeSet<i32> {
    let mut set = BTreeSet::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<i32>(), b.parse::<i32>()),
            None => (part.parse::<i32>(), part.parse::<i32>()),
        };
        if let (Ok(a), Ok(b)) = (a, b) {
            set.extend((a.max(0)..=b.min(completions - 1)).filter(|i| *i >= 0));
        }
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_round_trip_as_intervals() {
        let set: BTreeSet<i32> = [0, 1, 2, 4, 6, 7].into_iter().collect();
        assert_eq!(format_indexes(&set), "0-2,4,6-7");
        assert_eq!(parse_indexes("0-2,4,6-7", 10), set);
        assert_eq!(parse_indexes("0-2,9", 3).len(), 3);
        assert_eq!(format_indexes(&BTreeSet::new()), "");
    }

    #[test]
    fn failure_policy_matches_exit_codes_and_conditions() {
        let job: Job = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "j"},
            "spec": {"template": {}, "podFailurePolicy": {"rules": [
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [42]}},
            ]}}
        }))
        .unwrap();
        let pod = |code: i32, cond: bool| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "p", "namespace": "ns"},
                "status": {"phase": "Failed",
                    "conditions": if cond { serde_json::json!([{"type": "DisruptionTarget", "status": "True"}]) } else { serde_json::json!([]) },
                    "containerStatuses": [{"name": "c", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                        "state": {"terminated": {"exitCode": code}}}]}
            }))
            .unwrap()
        };
        assert_eq!(failure_policy(&job, &pod(1, true)), PolicyAction::Ignore);
        assert_eq!(
            failure_policy(&job, &pod(42, false)),
            PolicyAction::FailJob(
                "Container c for pod ns/p failed with exit code 42 matching FailJob rule at index 1"
                    .into()
            )
        );
        assert_eq!(failure_policy(&job, &pod(1, false)), PolicyAction::Count);
    }
}
