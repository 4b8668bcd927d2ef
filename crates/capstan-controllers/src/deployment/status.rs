//! Deployment status: counts summed over the ReplicaSets, and the Available and Progressing
//! conditions (upstream's `syncRolloutStatus`, with progressDeadlineSeconds).

use super::rollout::Rollout;
use super::util::*;
use super::{Context, DeploymentError};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus, ReplicaSet};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use std::time::Duration;

fn status_replicas(rs: &ReplicaSet) -> i32 {
    rs.status.as_ref().map_or(0, |s| s.replicas)
}

/// Counts as upstream's `calculateStatus`, conditions carried over.
fn calculate(d: &Deployment, rss: &[ReplicaSet], new: Option<&ReplicaSet>) -> DeploymentStatus {
    let old = d.status.clone().unwrap_or_default();
    let available_total: i32 = rss.iter().map(available).sum();
    let spec_total: i32 = rss.iter().map(spec_replicas).sum();
    let mut conditions = old.conditions.clone().unwrap_or_default();
    let max_unavailable = if is_recreate(d) { 0 } else { fenceposts(d).1 };
    if available_total >= replicas(d) - max_unavailable {
        set_condition(
            &mut conditions,
            condition(
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.".into(),
            ),
        );
    } else {
        set_condition(
            &mut conditions,
            condition(
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".into(),
            ),
        );
    }
    DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: Some(rss.iter().map(status_replicas).sum()),
        updated_replicas: Some(new.map_or(0, status_replicas)),
        ready_replicas: Some(
            rss.iter()
                .map(|rs| {
                    rs.status
                        .as_ref()
                        .and_then(|s| s.ready_replicas)
                        .unwrap_or(0)
                })
                .sum(),
        ),
        available_replicas: Some(available_total),
        unavailable_replicas: Some((spec_total - available_total).max(0)),
        collision_count: old.collision_count,
        conditions: Some(conditions),
        terminating_replicas: old.terminating_replicas,
    }
}

fn count(v: Option<i32>) -> i32 {
    v.unwrap_or(0)
}

/// Upstream's `DeploymentComplete`.
fn complete(d: &Deployment, s: &DeploymentStatus) -> bool {
    let want = replicas(d);
    count(s.updated_replicas) == want
        && count(s.replicas) == want
        && count(s.available_replicas) == want
        && s.observed_generation >= d.metadata.generation
}

/// Upstream's `DeploymentProgressing`: more updated, ready or available pods, or fewer old ones.
fn progressing(old: &DeploymentStatus, new: &DeploymentStatus) -> bool {
    let old_old = count(old.replicas) - count(old.updated_replicas);
    let new_old = count(new.replicas) - count(new.updated_replicas);
    count(new.updated_replicas) > count(old.updated_replicas)
        || new_old < old_old
        || count(new.ready_replicas) > count(old.ready_replicas)
        || count(new.available_replicas) > count(old.available_replicas)
}

fn deadline(d: &Deployment) -> Option<Duration> {
    let s = d.spec.as_ref()?.progress_deadline_seconds?;
    (s != i32::MAX).then(|| Duration::from_secs(s.max(0) as u64))
}

/// Time left before the Progressing condition times out, None when it cannot.
fn time_left(d: &Deployment, s: &DeploymentStatus) -> Option<Duration> {
    let limit = deadline(d)?;
    let c = get_condition(s.conditions.as_deref()?, "Progressing")?;
    if c.reason.as_deref() == Some("NewReplicaSetAvailable")
        || c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    {
        return None;
    }
    let from = c.last_update_time.as_ref()?.0;
    let elapsed = jiff::Timestamp::now()
        .duration_since(from)
        .as_secs_f64()
        .max(0.0);
    Some(limit.saturating_sub(Duration::from_secs_f64(elapsed)))
}

/// Writes the status when it changed; returns when to look again for the progress deadline.
pub(super) async fn sync(
    ctx: &Context,
    r: &Rollout<'_>,
) -> Result<Option<Duration>, DeploymentError> {
    let d = r.d;
    let old = d.status.clone().unwrap_or_default();
    let mut s = calculate(d, &r.rss, r.new_rs());
    let mut conds = s.conditions.take().unwrap_or_default();
    let paused = d.spec.as_ref().and_then(|s| s.paused) == Some(true);
    let rs_name = r.new_rs().map(|rs| rs.name_any()).unwrap_or_default();
    let current_reason = get_condition(&conds, "Progressing").and_then(|c| c.reason.clone());
    if paused {
        set_condition(
            &mut conds,
            condition(
                "Progressing",
                "Unknown",
                "DeploymentPaused",
                "Deployment is paused".into(),
            ),
        );
    } else if deadline(d).is_some() {
        if current_reason.as_deref() == Some("DeploymentPaused") {
            set_condition(
                &mut conds,
                condition(
                    "Progressing",
                    "Unknown",
                    "DeploymentResumed",
                    "Deployment is resumed".into(),
                ),
            );
        }
        if r.new_created {
            set_condition(
                &mut conds,
                condition(
                    "Progressing",
                    "True",
                    "NewReplicaSetCreated",
                    format!("Created new replica set \"{rs_name}\""),
                ),
            );
        } else if current_reason.is_none() && r.new.is_some() {
            set_condition(
                &mut conds,
                condition(
                    "Progressing",
                    "True",
                    "FoundNewReplicaSet",
                    format!("Found new replica set \"{rs_name}\""),
                ),
            );
        }
        s.conditions = Some(conds.clone());
        if complete(d, &s) {
            set_condition(
                &mut conds,
                condition(
                    "Progressing",
                    "True",
                    "NewReplicaSetAvailable",
                    format!("ReplicaSet \"{rs_name}\" has successfully progressed."),
                ),
            );
        } else if progressing(&old, &s) {
            // Progress always refreshes lastUpdateTime, which restarts the deadline.
            let mut c = condition(
                "Progressing",
                "True",
                "ReplicaSetUpdated",
                format!("ReplicaSet \"{rs_name}\" is progressing."),
            );
            if let Some(prev) = get_condition(&conds, "Progressing").filter(|p| p.status == "True")
            {
                c.last_transition_time = prev.last_transition_time.clone();
            }
            conds.retain(|c| c.type_ != "Progressing");
            conds.push(c);
        } else if time_left(d, &s).is_some_and(|t| t.is_zero()) {
            set_condition(
                &mut conds,
                condition(
                    "Progressing",
                    "False",
                    "ProgressDeadlineExceeded",
                    format!("ReplicaSet \"{rs_name}\" has timed out progressing."),
                ),
            );
        }
    }
    conds.sort_by(|a, b| a.type_.cmp(&b.type_));
    s.conditions = Some(conds);
    let next = if complete(d, &s) || paused {
        None
    } else {
        time_left(d, &s).map(|t| t + Duration::from_millis(500))
    };
    if d.status.as_ref() != Some(&s) {
        Api::<Deployment>::namespaced(ctx.client.clone(), &d.namespace().unwrap_or_default())
            .patch_status(
                &d.name_any(),
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"status": s})),
            )
            .await
            .map_err(DeploymentError::Status)?;
    }
    Ok(next)
}
