//! The CronJob controller (upstream's `cronjob_controllerv2`, batch/v1): creates a Job named
//! `<cronjob>-<scheduled minutes since the epoch>` at each schedule time, honouring
//! concurrencyPolicy, startingDeadlineSeconds and suspend, keeps `status.active`,
//! `lastScheduleTime` and `lastSuccessfulTime`, prunes finished Jobs beyond the history
//! limits, and requeues itself for the next schedule time (no polling).

pub mod schedule;

use crate::job::events::{EventType, Recorder};
use crate::job::status as job_status;
use crate::replicaset::controller_of;
use futures::StreamExt;
use k8s_openapi::api::batch::v1::{CronJob, CronJobStatus, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use schedule::{Clock, MAX_MISSED, Schedule, ScheduleError, SystemClock};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Annotation with the scheduled time a Job was created for.
pub const SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Upstream requeues a little after the schedule time so the clock has surely passed it.
const NEXT_SLACK: Duration = Duration::from_millis(100);
const MAX_REQUEUE: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum CronJobError {
    #[error("creating job {0}")]
    Create(String, #[source] kube::Error),
    #[error("deleting job {0}")]
    Delete(String, #[source] kube::Error),
    #[error("reading job {0}")]
    Get(String, #[source] kube::Error),
    #[error("updating status")]
    Status(#[source] kube::Error),
}

/// A boxed trigger stream from a shared [`crate::informer::Informer`].
pub type Trigger<K> =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<K, watcher::Error>> + Send>>;

/// The changes that wake the controller.
pub struct Triggers {
    pub cronjobs: Trigger<CronJob>,
    pub jobs: Trigger<Job>,
}

struct Context {
    client: Client,
    jobs: Store<Job>,
    clock: Arc<dyn Clock>,
    recorder: Recorder,
    failures: Mutex<HashMap<String, u32>>,
}

/// Run the controller until `stop` on the real clock.
pub async fn run(
    client: Client,
    jobs: Store<Job>,
    cronjobs: Store<CronJob>,
    triggers: Triggers,
    stop: CancellationToken,
) {
    run_with_clock(
        client,
        jobs,
        cronjobs,
        triggers,
        Arc::new(SystemClock),
        stop,
    )
    .await
}

/// [`run`] with its own Job and CronJob informers and an explicit clock (for tests).
pub async fn run_standalone(client: Client, clock: Arc<dyn Clock>, stop: CancellationToken) {
    let mut jobs = crate::informer::Informer::new(Api::<Job>::all(client.clone()));
    let mut cronjobs = crate::informer::Informer::new(Api::<CronJob>::all(client.clone()));
    let triggers = Triggers {
        cronjobs: Box::pin(cronjobs.subscribe()),
        jobs: Box::pin(jobs.subscribe()),
    };
    let (job_store, cj_store) = (jobs.store(), cronjobs.store());
    tokio::join!(
        jobs.run(stop.clone()),
        cronjobs.run(stop.clone()),
        run_with_clock(client, job_store, cj_store, triggers, clock, stop.clone()),
    );
}

/// [`run`] with an explicit clock.
pub async fn run_with_clock(
    client: Client,
    jobs: Store<Job>,
    cronjobs: Store<CronJob>,
    triggers: Triggers,
    clock: Arc<dyn Clock>,
    stop: CancellationToken,
) {
    if !crate::informer::wait_for_sync(&jobs, &cronjobs, &stop).await {
        return;
    }
    let ctx = Arc::new(Context {
        client: client.clone(),
        jobs,
        clock,
        recorder: Recorder::new(client, "cronjob-controller"),
        failures: Mutex::default(),
    });
    Controller::for_stream(triggers.cronjobs, cronjobs)
        .watches_stream(triggers.jobs, |job| cronjob_of(&job))
        .graceful_shutdown_on(async move { stop.cancelled().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "cronjob reconcile");
            }
        })
        .await;
}

fn cronjob_of(job: &Job) -> Option<ObjectRef<CronJob>> {
    let owner = controller_of(&job.metadata)?;
    (owner.kind == "CronJob")
        .then(|| ObjectRef::new(&owner.name).within(&job.namespace().unwrap_or_default()))
}

fn key_of(cj: &CronJob) -> String {
    format!("{}/{}", cj.namespace().unwrap_or_default(), cj.name_any())
}

fn error_policy(cj: Arc<CronJob>, err: &CronJobError, ctx: Arc<Context>) -> Action {
    let key = key_of(&cj);
    let n = {
        let mut f = ctx.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = f.entry(key.clone()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    let delay = BACKOFF_BASE
        .saturating_mul(1u32 << n.min(16).saturating_sub(1))
        .min(BACKOFF_MAX);
    tracing::debug!(cronjob = %key, error = %err, ?delay, "cronjob sync failed");
    Action::requeue(delay)
}

async fn reconcile(cj: Arc<CronJob>, ctx: Arc<Context>) -> Result<Action, CronJobError> {
    let action = sync(&cj, &ctx).await?;
    ctx.failures
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&key_of(&cj));
    Ok(action)
}

fn job_finished(job: &Job) -> Option<&'static str> {
    if job_status::true_condition(job, job_status::COMPLETE).is_some() {
        Some(job_status::COMPLETE)
    } else if job_status::true_condition(job, job_status::FAILED).is_some() {
        Some(job_status::FAILED)
    } else {
        None
    }
}

fn job_ref(job: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: Some(job.name_any()),
        namespace: job.namespace(),
        uid: job.uid(),
        resource_version: job.resource_version(),
        ..ObjectReference::default()
    }
}

/// The name of the Job for a scheduled time (upstream: minutes since the epoch).
pub fn job_name(cronjob: &str, scheduled: jiff::Timestamp) -> String {
    format!("{cronjob}-{}", scheduled.as_second().div_euclid(60))
}

async fn sync(cj: &CronJob, ctx: &Context) -> Result<Action, CronJobError> {
    let (Some(uid), Some(spec)) = (cj.uid(), cj.spec.as_ref()) else {
        return Ok(Action::await_change());
    };
    if cj.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = cj.namespace().unwrap_or_default();
    let jobs_api = Api::<Job>::namespaced(ctx.client.clone(), &ns);
    let now = ctx.clock.now();
    let children: Vec<Arc<Job>> = ctx
        .jobs
        .state()
        .into_iter()
        .filter(|j| j.namespace().as_deref() == Some(ns.as_str()))
        .filter(|j| controller_of(&j.metadata).is_some_and(|o| o.uid == uid))
        .collect();
    let mut st = cj.status.clone().unwrap_or_default();
    let mut active = st.active.take().unwrap_or_default();
    for j in &children {
        let listed = active.iter().any(|r| r.uid == j.uid());
        match (listed, job_finished(j)) {
            // A Job created just before a lost status write: it is ours, track it.
            (false, None) => active.push(job_ref(j)),
            (true, Some(cond)) => {
                active.retain(|r| r.uid != j.uid());
                let msg = format!("Saw completed job: {}, condition: {cond}", j.name_any());
                ctx.recorder
                    .record(cj, EventType::Normal, "SawCompletedJob", &msg)
                    .await;
            }
            _ => {}
        }
        if job_finished(j) == Some(job_status::COMPLETE)
            && let Some(done) = j.status.as_ref().and_then(|s| s.completion_time.clone())
            && st
                .last_successful_time
                .as_ref()
                .is_none_or(|t| t.0 < done.0)
        {
            st.last_successful_time = Some(done);
        }
    }
    // Active entries the cache does not show: confirm with a read before dropping them.
    let mut kept = Vec::new();
    for r in active {
        if children.iter().any(|j| j.uid() == r.uid) {
            kept.push(r);
            continue;
        }
        let name = r.name.clone().unwrap_or_default();
        match jobs_api.get(&name).await {
            Ok(j) if j.uid() == r.uid && job_finished(&j).is_none() => kept.push(r),
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.is_not_found() => {
                let msg = format!("Active job went missing: {name}");
                ctx.recorder
                    .record(cj, EventType::Warning, "MissingJob", &msg)
                    .await;
            }
            Err(e) => return Err(CronJobError::Get(name, e)),
        }
    }
    let mut active = kept;
    prune_history(ctx, cj, &jobs_api, &children).await?;

    let mut requeue = None;
    if spec.suspend != Some(true) {
        match Schedule::parse(&spec.schedule, spec.time_zone.as_deref()) {
            Err(e) => {
                let reason = match e {
                    ScheduleError::UnknownTimeZone(_) => "UnknownTimeZone",
                    ScheduleError::Unparseable(..) => "UnparseableSchedule",
                };
                ctx.recorder
                    .record(cj, EventType::Warning, reason, &e.to_string())
                    .await;
            }
            Ok(sched) => {
                requeue =
                    start_due_job(ctx, cj, &sched, &jobs_api, now, &mut st, &mut active).await?;
            }
        }
    }
    st.active = (!active.is_empty()).then_some(active);
    write_status(ctx, cj, &ns, st).await?;
    // Capped: the timer queue cannot hold years (a yearly or leap-day schedule).
    Ok(requeue.map_or_else(Action::await_change, |d| {
        Action::requeue(d.min(MAX_REQUEUE))
    }))
}

/// Starts the Job of the most recent missed schedule time if the policies allow; returns when
/// to look again (the next schedule time).
async fn start_due_job(
    ctx: &Context,
    cj: &CronJob,
    sched: &Schedule,
    jobs_api: &Api<Job>,
    now: jiff::Timestamp,
    st: &mut CronJobStatus,
    active: &mut Vec<ObjectReference>,
) -> Result<Option<Duration>, CronJobError> {
    let Some(spec) = cj.spec.as_ref() else {
        return Ok(None);
    };
    let next = sched.next_after(now).map(|t| {
        let ms = (t.as_millisecond() - now.as_millisecond()).max(0) as u64;
        Duration::from_millis(ms) + NEXT_SLACK
    });
    let created = cj.metadata.creation_timestamp.as_ref().map(|t| t.0);
    let Some(mut earliest) = st.last_schedule_time.as_ref().map(|t| t.0).or(created) else {
        return Ok(next);
    };
    if let Some(d) = spec.starting_deadline_seconds {
        let floor =
            jiff::Timestamp::from_millisecond(now.as_millisecond() - d * 1000).unwrap_or(earliest);
        earliest = earliest.max(floor);
    }
    let (scheduled, missed) = sched.most_recent(earliest, now);
    let Some(scheduled) = scheduled else {
        return Ok(next);
    };
    if missed > MAX_MISSED {
        let msg = format!(
            "too many missed start times: {missed}. Set or decrease .spec.startingDeadlineSeconds or check clock skew"
        );
        ctx.recorder
            .record(cj, EventType::Warning, "TooManyMissedTimes", &msg)
            .await;
    }
    if let Some(d) = spec.starting_deadline_seconds
        && scheduled.as_millisecond() + d * 1000 < now.as_millisecond()
    {
        let msg = format!(
            "Missed scheduled time to start a job: {}",
            sched.format(scheduled)
        );
        ctx.recorder
            .record(cj, EventType::Warning, "MissSchedule", &msg)
            .await;
        return Ok(next);
    }
    let name = job_name(&cj.name_any(), scheduled);
    if active
        .iter()
        .any(|r| r.name.as_deref() == Some(name.as_str()))
    {
        return Ok(next);
    }
    match spec.concurrency_policy.as_deref() {
        Some("Forbid") if !active.is_empty() => {
            ctx.recorder
                .record(
                    cj,
                    EventType::Normal,
                    "JobAlreadyActive",
                    "Not starting job because prior execution is running and concurrency policy is Forbid",
                )
                .await;
            return Ok(next);
        }
        Some("Replace") => {
            for r in std::mem::take(active) {
                let old = r.name.clone().unwrap_or_default();
                match jobs_api.delete(&old, &DeleteParams::background()).await {
                    Ok(_) => {
                        let msg = format!("Deleted job {old}");
                        ctx.recorder
                            .record(cj, EventType::Normal, "SuccessfulDelete", &msg)
                            .await;
                    }
                    Err(kube::Error::Api(s)) if s.is_not_found() => {}
                    Err(e) => return Err(CronJobError::Delete(old, e)),
                }
            }
        }
        _ => {}
    }
    let job = new_job(cj, &name, sched.format(scheduled));
    let job = match jobs_api.create(&PostParams::default(), &job).await {
        Ok(j) => {
            let msg = format!("Created job {name}");
            ctx.recorder
                .record(cj, EventType::Normal, "SuccessfulCreate", &msg)
                .await;
            j
        }
        Err(kube::Error::Api(s)) if s.code == 409 => {
            // Created before (a lost status write): adopt it if it is ours.
            let j = jobs_api
                .get(&name)
                .await
                .map_err(|e| CronJobError::Get(name.clone(), e))?;
            if controller_of(&j.metadata).map(|o| o.uid.as_str()) != cj.uid().as_deref() {
                return Ok(next);
            }
            j
        }
        Err(e) => {
            let msg = format!("Error creating job: {e}");
            ctx.recorder
                .record(cj, EventType::Warning, "FailedCreate", &msg)
                .await;
            return Err(CronJobError::Create(name, e));
        }
    };
    if job_finished(&job).is_none() && !active.iter().any(|r| r.uid == job.uid()) {
        active.push(job_ref(&job));
    }
    st.last_schedule_time = Some(Time(scheduled));
    Ok(next)
}

fn new_job(cj: &CronJob, name: &str, scheduled: String) -> Job {
    let template = cj
        .spec
        .as_ref()
        .map(|s| s.job_template.clone())
        .unwrap_or_default();
    let meta = template.metadata.unwrap_or_default();
    let mut annotations = meta.annotations.unwrap_or_default();
    annotations.insert(SCHEDULED_TIMESTAMP.into(), scheduled);
    Job {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: cj.namespace(),
            labels: meta.labels,
            annotations: Some(annotations),
            owner_references: Some(vec![OwnerReference {
                api_version: "batch/v1".into(),
                kind: "CronJob".into(),
                name: cj.name_any(),
                uid: cj.uid().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..ObjectMeta::default()
        },
        spec: template.spec,
        status: None,
    }
}

/// Deletes the oldest finished Jobs beyond successfulJobsHistoryLimit/failedJobsHistoryLimit.
async fn prune_history(
    ctx: &Context,
    cj: &CronJob,
    jobs_api: &Api<Job>,
    children: &[Arc<Job>],
) -> Result<(), CronJobError> {
    let Some(spec) = cj.spec.as_ref() else {
        return Ok(());
    };
    let limits = [
        (job_status::COMPLETE, spec.successful_jobs_history_limit),
        (job_status::FAILED, spec.failed_jobs_history_limit),
    ];
    for (cond, limit) in limits {
        let Some(limit) = limit else { continue };
        let mut done: Vec<&Arc<Job>> = children
            .iter()
            .filter(|j| job_finished(j) == Some(cond) && j.metadata.deletion_timestamp.is_none())
            .collect();
        let keep = limit.max(0) as usize;
        if done.len() <= keep {
            continue;
        }
        let started = |j: &Job| {
            j.status
                .as_ref()
                .and_then(|s| s.start_time.as_ref())
                .or(j.metadata.creation_timestamp.as_ref())
                .map(|t| t.0)
        };
        // Ties (second resolution) by name, as upstream: names grow with the schedule time.
        done.sort_by_key(|j| (started(j), j.name_any()));
        let extra = done.len() - keep;
        for j in done.into_iter().take(extra) {
            match jobs_api
                .delete(&j.name_any(), &DeleteParams::background())
                .await
            {
                Ok(_) => {
                    let msg = format!("Deleted job {}", j.name_any());
                    ctx.recorder
                        .record(cj, EventType::Normal, "SuccessfulDelete", &msg)
                        .await;
                }
                Err(kube::Error::Api(s)) if s.is_not_found() => {}
                Err(e) => return Err(CronJobError::Delete(j.name_any(), e)),
            }
        }
    }
    Ok(())
}

async fn write_status(
    ctx: &Context,
    cj: &CronJob,
    ns: &str,
    st: CronJobStatus,
) -> Result<(), CronJobError> {
    if cj.status.clone().unwrap_or_default() == st {
        return Ok(());
    }
    let mut obj = cj.clone();
    obj.status = Some(st);
    Api::<CronJob>::namespaced(ctx.client.clone(), ns)
        .replace_status(&cj.name_any(), &PostParams::default(), &obj)
        .await
        .map(|_| ())
        .map_err(CronJobError::Status)
}
