//! One sync of a Job: count finished pods (uncounted first, then the finalizer removed, then
//! the counters), decide success or failure, keep the right number of pods, write status.

use super::events::EventType;
use super::pods::{self, PolicyAction, completion_index, has_finalizer};
use super::status::{self as js, set_condition};
use super::{Backoff, Context, JobError, finalizers, key_of, lock};
use crate::replicaset::controller_of;
use k8s_openapi::api::batch::v1::{Job, JobStatus, UncountedTerminatedPods};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, PostParams, Preconditions, PropagationPolicy};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most pods created or deleted in one sync (upstream's `MaxPodCreateDeletePerSync`).
const BURST: usize = 500;
/// Longest requeue (the timer queue cannot hold years; a later sync computes the rest).
const MAX_REQUEUE: Duration = Duration::from_secs(24 * 3600);

fn nz(n: usize) -> Option<i32> {
    (n > 0).then_some(n as i32)
}

pub(super) async fn sync(job: &Job, ctx: &Context) -> Result<Action, JobError> {
    let ns = job.namespace().unwrap_or_default();
    let key = key_of(job);
    let (Some(uid), Some(spec)) = (job.uid(), job.spec.as_ref()) else {
        return Ok(Action::await_change());
    };
    let pods_api = Api::<Pod>::namespaced(ctx.client.clone(), &ns);
    let owned: Vec<Arc<Pod>> = ctx
        .pods
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(ns.as_str()))
        .filter(|p| controller_of(&p.metadata).is_some_and(|o| o.uid == uid))
        .collect();
    let now = jiff::Timestamp::now();
    let deleting = job.meta().deletion_timestamp.is_some();
    if deleting || js::finished(job) {
        // Nothing is counted any more: release every pod still held.
        let held: Vec<_> = owned.iter().filter(|p| has_finalizer(p)).collect();
        for r in
            futures::future::join_all(held.iter().map(|p| finalizers::remove(&pods_api, p))).await
        {
            r?;
        }
        lock(&ctx.released).remove(&uid);
        lock(&ctx.backoff).remove(&uid);
        if deleting {
            ctx.expectations.forget(&format!("{key}/{uid}"));
            return Ok(Action::await_change());
        }
        return ttl(job, ctx, &uid, now).await;
    }

    let exp_key = format!("{key}/{uid}");
    let satisfied = ctx.expectations.satisfied(
        &exp_key,
        |name| ctx.pods.get(&ObjectRef::new(name).within(&ns)).is_some(),
        |gone| {
            !ctx.pods.state().iter().any(|p| {
                p.uid().as_deref() == Some(gone) && p.metadata.deletion_timestamp.is_none()
            })
        },
    );
    // Pods released earlier whose finalizer the cache still shows: never count them twice.
    let pending: HashSet<String> = {
        let mut released = lock(&ctx.released);
        let set = released.entry(uid.clone()).or_default();
        set.retain(|pu| {
            owned
                .iter()
                .any(|p| p.uid().as_deref() == Some(pu.as_str()) && has_finalizer(p))
        });
        set.clone()
    };

    let mut cur = job.clone();
    let mut st = job.status.clone().unwrap_or_default();
    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    let completions = spec.completions;
    let mut completed = if indexed {
        pods::parse_indexes(
            st.completed_indexes.as_deref().unwrap_or(""),
            completions.unwrap_or(0),
        )
    } else {
        BTreeSet::new()
    };
    let old_unc = st.uncounted_terminated_pods.clone().unwrap_or_default();
    let mut unc_s = old_unc.succeeded.unwrap_or_default();
    let mut unc_f = old_unc.failed.unwrap_or_default();
    let mut release: Vec<Arc<Pod>> = Vec::new();
    let (mut new_s, mut new_f) = (0u32, 0u32);
    let mut fail_job: Option<String> = None;
    for pod in &owned {
        let Some(pu) = pod.uid() else { continue };
        if !has_finalizer(pod) || pending.contains(&pu) {
            continue;
        }
        if unc_s.contains(&pu) || unc_f.contains(&pu) {
            release.push(pod.clone());
            continue;
        }
        if pods::succeeded(pod) {
            let counts = if indexed {
                match completion_index(pod) {
                    Some(i) if i < completions.unwrap_or(0) => completed.insert(i),
                    _ => false,
                }
            } else {
                true
            };
            if counts {
                unc_s.push(pu);
                new_s += 1;
            }
            release.push(pod.clone());
        } else if pods::failed(pod, job) {
            match pods::failure_policy(job, pod) {
                PolicyAction::FailJob(msg) => {
                    fail_job.get_or_insert(msg);
                    unc_f.push(pu);
                    new_f += 1;
                }
                PolicyAction::Ignore => {}
                PolicyAction::Count => {
                    unc_f.push(pu);
                    new_f += 1;
                }
            }
            release.push(pod.clone());
        }
    }
    let mut conds = st.conditions.take().unwrap_or_default();
    if let Some(msg) = &fail_job {
        set_condition(
            &mut conds,
            js::FAILURE_TARGET,
            "True",
            js::REASON_POLICY,
            msg,
            now,
        );
    }
    // Phase 1: record the UIDs before releasing the pods, so a crash cannot lose them.
    if new_s + new_f > 0 || fail_job.is_some() {
        st.uncounted_terminated_pods = Some(uncounted(&unc_s, &unc_f));
        if indexed {
            st.completed_indexes = Some(pods::format_indexes(&completed)).filter(|s| !s.is_empty());
            st.succeeded = nz(completed.len());
        }
        st.conditions = (!conds.is_empty()).then(|| conds.clone());
        write_status(ctx, &mut cur, st.clone()).await?;
        let mut b = lock(&ctx.backoff);
        let rec = b.entry(uid.clone()).or_insert(Backoff {
            failures: 0,
            last: Instant::now(),
        });
        if new_s > 0 {
            rec.failures = 0;
        }
        if new_f > 0 {
            rec.failures = rec.failures.saturating_add(new_f);
            rec.last = Instant::now();
        }
    }
    // Phase 2: release the counted pods.
    let results =
        futures::future::join_all(release.iter().map(|p| finalizers::remove(&pods_api, p))).await;
    let mut released_now = HashSet::new();
    let mut release_err = None;
    for (p, r) in release.iter().zip(results) {
        match r {
            Ok(()) => {
                if let Some(pu) = p.uid() {
                    released_now.insert(pu);
                }
            }
            Err(e) => release_err = Some(e),
        }
    }
    lock(&ctx.released)
        .entry(uid.clone())
        .or_default()
        .extend(released_now.iter().cloned());
    // Phase 3: move released UIDs into the counters.
    let gone = |pu: &String| {
        released_now.contains(pu)
            || pending.contains(pu)
            || !owned
                .iter()
                .any(|p| p.uid().as_deref() == Some(pu.as_str()) && has_finalizer(p))
    };
    let before = (unc_s.len(), unc_f.len());
    unc_s.retain(|pu| !gone(pu));
    unc_f.retain(|pu| !gone(pu));
    let mut succeeded = st.succeeded.unwrap_or(0) as usize;
    if indexed {
        succeeded = completed.len();
    } else {
        succeeded += before.0 - unc_s.len();
    }
    let failed = st.failed.unwrap_or(0) as usize + (before.1 - unc_f.len());
    let succeeded_total = if indexed {
        succeeded
    } else {
        succeeded + unc_s.len()
    };
    let failed_total = failed + unc_f.len();

    let active: Vec<Arc<Pod>> = owned.iter().filter(|p| pods::active(p)).cloned().collect();
    let terminating = owned.iter().filter(|p| pods::terminating(p)).count();
    let suspended = spec.suspend == Some(true);
    let mut requeue: Option<Duration> = None;
    let mut want_requeue = |d: Duration| {
        requeue = Some(requeue.map_or(d, |r: Duration| r.min(d)));
    };

    let existing_target = conds
        .iter()
        .find(|c| c.type_ == js::FAILURE_TARGET && c.status == "True")
        .map(|c| {
            (
                c.reason.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default(),
            )
        });
    let deadline = if suspended {
        None
    } else {
        js::deadline_left(&cur, now)
    };
    let failure: Option<(String, String)> = existing_target
        .or_else(|| fail_job.clone().map(|m| (js::REASON_POLICY.into(), m)))
        .or_else(|| {
            (failed_total as i64 > i64::from(spec.backoff_limit.unwrap_or(6)))
                .then(|| (js::REASON_BACKOFF.into(), js::MSG_BACKOFF.into()))
        })
        .or_else(|| {
            (deadline == Some(Duration::ZERO))
                .then(|| (js::REASON_DEADLINE.into(), js::MSG_DEADLINE.into()))
        });
    let success = failure.is_none()
        && (conds
            .iter()
            .any(|c| c.type_ == js::SUCCESS_CRITERIA_MET && c.status == "True")
            || match completions {
                Some(c) => succeeded_total >= c.max(0) as usize,
                None => succeeded_total > 0 && active.is_empty(),
            });

    let mut created = 0usize;
    let mut deleted = 0usize;
    let mut manage_err: Option<JobError> = None;
    let all_done = active.is_empty() && terminating == 0 && unc_s.is_empty() && unc_f.is_empty();
    if let Some((reason, msg)) = &failure {
        set_condition(&mut conds, js::FAILURE_TARGET, "True", reason, msg, now);
        if all_done {
            if set_condition(&mut conds, js::FAILED, "True", reason, msg, now) {
                ctx.recorder
                    .record(&cur, EventType::Warning, reason, msg)
                    .await;
            }
        } else {
            match delete_pods(ctx, &pods_api, &exp_key, &cur, &active).await {
                Ok(n) => deleted = n,
                Err(e) => manage_err = Some(e),
            }
        }
    } else if success {
        let (r, m) = (js::REASON_COMPLETIONS, js::MSG_COMPLETIONS);
        set_condition(&mut conds, js::SUCCESS_CRITERIA_MET, "True", r, m, now);
        if all_done {
            if set_condition(&mut conds, js::COMPLETE, "True", r, m, now) {
                st.completion_time = Some(Time(now));
                ctx.recorder
                    .record(&cur, EventType::Normal, "Completed", "Job completed")
                    .await;
            }
        } else {
            match delete_pods(ctx, &pods_api, &exp_key, &cur, &active).await {
                Ok(n) => deleted = n,
                Err(e) => manage_err = Some(e),
            }
        }
    } else if suspended {
        if set_condition(
            &mut conds,
            js::SUSPENDED,
            "True",
            "JobSuspended",
            "Job suspended",
            now,
        ) {
            ctx.recorder
                .record(&cur, EventType::Normal, "Suspended", "Job suspended")
                .await;
        }
        match delete_pods(ctx, &pods_api, &exp_key, &cur, &active).await {
            Ok(n) => deleted = n,
            Err(e) => manage_err = Some(e),
        }
    } else {
        if conds.iter().any(|c| c.type_ == js::SUSPENDED)
            && set_condition(
                &mut conds,
                js::SUSPENDED,
                "False",
                "JobResumed",
                "Job resumed",
                now,
            )
        {
            // As upstream: a resumed Job's deadline counts from now.
            st.start_time = Some(Time(now));
            ctx.recorder
                .record(&cur, EventType::Normal, "Resumed", "Job resumed")
                .await;
        }
        if st.start_time.is_none() {
            st.start_time = Some(Time(now));
        }
        if let Some(secs) = spec.active_deadline_seconds {
            let left = deadline.unwrap_or(Duration::from_secs(secs.max(0) as u64));
            want_requeue(left + Duration::from_millis(100));
        }
        if satisfied {
            let parallelism = spec.parallelism.unwrap_or(1).max(0) as usize;
            let want = match completions {
                Some(c) => {
                    let done = if indexed {
                        completed.len()
                    } else {
                        succeeded_total
                    };
                    (c.max(0) as usize).saturating_sub(done).min(parallelism)
                }
                // A work queue: once one pod succeeded no new pods start.
                None if succeeded_total > 0 => active.len().min(parallelism),
                None => parallelism,
            };
            let r = manage(
                ctx, &pods_api, &exp_key, &cur, &uid, &active, &completed, want, indexed,
            )
            .await;
            match r {
                Ok(m) => {
                    created = m.created;
                    deleted = m.deleted;
                    if let Some(d) = m.backoff {
                        want_requeue(d);
                    }
                }
                Err(e) => manage_err = Some(e),
            }
        }
    }

    let ready = active.iter().filter(|p| pods::ready(p)).count();
    st.active = nz((active.len() + created).saturating_sub(deleted));
    st.ready = Some(ready as i32);
    st.terminating = Some((terminating + deleted) as i32);
    st.succeeded = nz(succeeded);
    st.failed = nz(failed);
    st.completed_indexes = if indexed {
        Some(pods::format_indexes(&completed)).filter(|s| !s.is_empty())
    } else {
        None
    };
    st.uncounted_terminated_pods = Some(uncounted(&unc_s, &unc_f));
    st.conditions = (!conds.is_empty()).then_some(conds);
    if cur.status.as_ref() != Some(&st) {
        write_status(ctx, &mut cur, st).await?;
    }
    if let Some(e) = manage_err.or(release_err) {
        return Err(e);
    }
    Ok(requeue.map_or_else(Action::await_change, |d| {
        Action::requeue(d.min(MAX_REQUEUE))
    }))
}

fn uncounted(s: &[String], f: &[String]) -> UncountedTerminatedPods {
    UncountedTerminatedPods {
        succeeded: (!s.is_empty()).then(|| s.to_vec()),
        failed: (!f.is_empty()).then(|| f.to_vec()),
    }
}

async fn write_status(ctx: &Context, cur: &mut Job, st: JobStatus) -> Result<(), JobError> {
    let mut obj = cur.clone();
    obj.status = Some(st);
    let api = Api::<Job>::namespaced(ctx.client.clone(), &cur.namespace().unwrap_or_default());
    *cur = api
        .replace_status(&cur.name_any(), &PostParams::default(), &obj)
        .await
        .map_err(super::JobError::Status)?;
    Ok(())
}

/// Deletes a finished Job whose ttlSecondsAfterFinished passed (background propagation, as
/// upstream's TTL-after-finished controller), or requeues for when it will.
async fn ttl(
    job: &Job,
    ctx: &Context,
    uid: &str,
    now: jiff::Timestamp,
) -> Result<Action, JobError> {
    match js::ttl_left(job, now) {
        None => Ok(Action::await_change()),
        Some(d) if !d.is_zero() => Ok(Action::requeue(
            (d + Duration::from_millis(100)).min(MAX_REQUEUE),
        )),
        Some(_) => {
            let api =
                Api::<Job>::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
            let dp = DeleteParams {
                propagation_policy: Some(PropagationPolicy::Background),
                preconditions: Some(Preconditions {
                    uid: Some(uid.to_string()),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match api.delete(&job.name_any(), &dp).await {
                Ok(_) => {
                    tracing::info!(job = %key_of(job), "deleted finished job (ttlSecondsAfterFinished)");
                    Ok(Action::await_change())
                }
                Err(kube::Error::Api(s)) if s.is_not_found() || s.code == 409 => {
                    Ok(Action::await_change())
                }
                Err(e) => Err(JobError::Ttl(e)),
            }
        }
    }
}

struct Managed {
    created: usize,
    deleted: usize,
    backoff: Option<Duration>,
}

/// Creates or deletes pods so `want` are active (Indexed: one per pending index).
#[allow(clippy::too_many_arguments)]
async fn manage(
    ctx: &Context,
    api: &Api<Pod>,
    exp_key: &str,
    job: &Job,
    uid: &str,
    active: &[Arc<Pod>],
    completed: &BTreeSet<i32>,
    want: usize,
    indexed: bool,
) -> Result<Managed, JobError> {
    let mut out = Managed {
        created: 0,
        deleted: 0,
        backoff: None,
    };
    let completions = job.spec.as_ref().and_then(|s| s.completions).unwrap_or(0);
    // Indexed: pods of a completed, out-of-range or already-taken index are surplus.
    let mut keep: Vec<Arc<Pod>> = Vec::new();
    let mut surplus: Vec<Arc<Pod>> = Vec::new();
    let mut taken = BTreeSet::new();
    for p in active {
        if !indexed {
            keep.push(p.clone());
            continue;
        }
        match completion_index(p) {
            Some(i) if i < completions && !completed.contains(&i) && taken.insert(i) => {
                keep.push(p.clone())
            }
            _ => surplus.push(p.clone()),
        }
    }
    if keep.len() > want {
        // Not ready before ready, newer before older (the first ones go).
        keep.sort_by_key(|p| {
            (
                pods::ready(p),
                std::cmp::Reverse(p.metadata.creation_timestamp.as_ref().map(|t| t.0)),
            )
        });
        let extra = keep.len() - want;
        surplus.extend(keep.drain(..extra));
    }
    if !surplus.is_empty() {
        surplus.truncate(BURST);
        out.deleted = delete_pods(ctx, api, exp_key, job, &surplus).await?;
        return Ok(out);
    }
    if keep.len() >= want {
        return Ok(out);
    }
    let rec = lock(&ctx.backoff).get(uid).copied();
    if let Some(rec) = rec {
        let wait = js::pod_backoff(rec.failures).saturating_sub(rec.last.elapsed());
        if !wait.is_zero() {
            out.backoff = Some(wait);
            return Ok(out);
        }
    }
    let n = (want - keep.len()).min(BURST);
    let indexes: Vec<Option<i32>> = if indexed {
        (0..completions)
            .filter(|i| !completed.contains(i) && !taken.contains(i))
            .take(n)
            .map(Some)
            .collect()
    } else {
        vec![None; n]
    };
    let mut todo = indexes.as_slice();
    let mut batch = 1usize;
    let pp = PostParams::default();
    // Slow start: 1, 2, 4, ... so a pod that can never be created costs one call, not N.
    while !todo.is_empty() {
        let (now, rest) = todo.split_at(batch.min(todo.len()));
        let templates: Vec<Pod> = now
            .iter()
            .map(|i| pods::new_pod(job, *i))
            .collect::<Result<_, _>>()?;
        let results = futures::future::join_all(templates.iter().map(|t| api.create(&pp, t))).await;
        let mut errors = Vec::new();
        let mut names = Vec::new();
        for r in results {
            match r {
                Ok(p) => names.push(p.name_any()),
                Err(e) => errors.push(e.to_string()),
            }
        }
        ctx.expectations.expect_creations(exp_key, names.clone());
        out.created += names.len();
        for name in &names {
            ctx.recorder
                .record(
                    job,
                    EventType::Normal,
                    "SuccessfulCreate",
                    &format!("Created pod: {name}"),
                )
                .await;
        }
        if !errors.is_empty() {
            let msg = errors.join("; ");
            ctx.recorder
                .record(
                    job,
                    EventType::Warning,
                    "FailedCreate",
                    &format!("Error creating: {msg}"),
                )
                .await;
            return Err(JobError::Create(msg));
        }
        todo = rest;
        batch = batch.saturating_mul(2);
    }
    Ok(out)
}

/// Deletes `victims` (expecting the deletions); returns how many were deleted.
async fn delete_pods(
    ctx: &Context,
    api: &Api<Pod>,
    exp_key: &str,
    job: &Job,
    victims: &[Arc<Pod>],
) -> Result<usize, JobError> {
    if victims.is_empty() {
        return Ok(0);
    }
    ctx.expectations
        .expect_deletions(exp_key, victims.iter().filter_map(|p| p.uid()));
    let results = futures::future::join_all(victims.iter().map(|p| {
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: p.uid(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        let name = p.name_any();
        async move { api.delete(&name, &dp).await }
    }))
    .await;
    let mut n = 0;
    for (p, r) in victims.iter().zip(results) {
        match r {
            Ok(_) => {
                n += 1;
                ctx.recorder
                    .record(
                        job,
                        EventType::Normal,
                        "SuccessfulDelete",
                        &format!("Deleted pod: {}", p.name_any()),
                    )
                    .await;
            }
            Err(kube::Error::Api(s)) if s.is_not_found() || s.code == 409 => {}
            Err(e) => {
                ctx.expectations.forget(exp_key);
                return Err(JobError::Delete(p.name_any(), e));
            }
        }
    }
    Ok(n)
}
