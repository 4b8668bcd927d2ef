//! The Job controller (upstream's `pkg/controller/job`, batch/v1): runs pods until
//! `completions` succeed (NonIndexed or Indexed), at most `parallelism` at once, and fails the
//! Job on `backoffLimit`, `activeDeadlineSeconds` or a `podFailurePolicy` FailJob rule. Pods
//! carry the `job-tracking` finalizer until counted (through `status.uncountedTerminatedPods`,
//! as upstream), so deleted pods are counted too. Also `suspend` and `ttlSecondsAfterFinished`.

pub mod events;
mod finalizers;
pub mod pods;
pub mod status;
mod sync;

use crate::expectations::Expectations;
use crate::replicaset::controller_of;
use events::Recorder;
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("creating pods: {0}")]
    Create(String),
    #[error("deleting pod {0}")]
    Delete(String, #[source] kube::Error),
    #[error("removing the tracking finalizer of pod {0}")]
    Finalizer(String, #[source] kube::Error),
    #[error("updating status")]
    Status(#[source] kube::Error),
    #[error("deleting the finished job")]
    Ttl(#[source] kube::Error),
}

/// A boxed trigger stream from a shared [`crate::informer::Informer`].
pub type Trigger<K> =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<K, watcher::Error>> + Send>>;

/// The changes that wake the controller.
pub struct Triggers {
    pub jobs: Trigger<Job>,
    pub pods: Trigger<Pod>,
    /// A second pod stream for releasing pods of deleted Jobs.
    pub orphan_pods: Trigger<Pod>,
}

/// Consecutive pod failures of one Job, for the replacement back-off.
#[derive(Clone, Copy, Debug)]
struct Backoff {
    failures: u32,
    last: Instant,
}

struct Context {
    client: Client,
    pods: Store<Pod>,
    expectations: Expectations,
    /// Pod UIDs (per Job UID) whose finalizer was removed but the cache still shows it.
    released: Mutex<HashMap<String, HashSet<String>>>,
    backoff: Mutex<HashMap<String, Backoff>>,
    failures: Mutex<HashMap<String, u32>>,
    recorder: Recorder,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Run the controller until `stop`, reading pods and Jobs from the shared informer caches.
pub async fn run(
    client: Client,
    pods: Store<Pod>,
    jobs: Store<Job>,
    triggers: Triggers,
    stop: CancellationToken,
) {
    if !crate::informer::wait_for_sync(&pods, &jobs, &stop).await {
        return;
    }
    let ctx = Arc::new(Context {
        client: client.clone(),
        pods,
        expectations: Expectations::new(),
        released: Mutex::default(),
        backoff: Mutex::default(),
        failures: Mutex::default(),
        recorder: Recorder::new(client.clone(), "job-controller"),
    });
    let cleaner = finalizers::run_orphan_cleaner(
        client.clone(),
        jobs.clone(),
        triggers.orphan_pods,
        stop.clone(),
    );
    let controller_stop = stop.clone();
    let controller = Controller::for_stream(triggers.jobs, jobs)
        .watches_stream(triggers.pods, |pod| job_of(&pod))
        .graceful_shutdown_on(async move { controller_stop.cancelled().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "job reconcile");
            }
        });
    tokio::join!(controller, cleaner);
}

/// The Job controlling a pod.
fn job_of(pod: &Pod) -> Option<ObjectRef<Job>> {
    let owner = controller_of(&pod.metadata)?;
    (owner.kind == "Job" && owner.api_version.starts_with("batch/"))
        .then(|| ObjectRef::new(&owner.name).within(&pod.namespace().unwrap_or_default()))
}

fn key_of(job: &Job) -> String {
    format!("{}/{}", job.namespace().unwrap_or_default(), job.name_any())
}

fn error_policy(job: Arc<Job>, err: &JobError, ctx: Arc<Context>) -> Action {
    let key = key_of(&job);
    let n = {
        let mut f = lock(&ctx.failures);
        let n = f.entry(key.clone()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    let delay = BACKOFF_BASE
        .saturating_mul(1u32 << n.min(16).saturating_sub(1))
        .min(BACKOFF_MAX);
    // Conflicts on status are routine with a lagging cache.
    tracing::debug!(job = %key, error = %err, ?delay, "job sync failed");
    Action::requeue(delay)
}

async fn reconcile(job: Arc<Job>, ctx: Arc<Context>) -> Result<Action, JobError> {
    let action = sync::sync(&job, &ctx).await?;
    lock(&ctx.failures).remove(&key_of(&job));
    Ok(action)
}
