//! The running scheduler: informers feeding the cache and the queue, the scheduling loop,
//! asynchronous binding with bounded concurrency, preemption side effects, and events.

use crate::SchedulerOptions;
use crate::algorithm::{self, FitError};
use crate::binder::DefaultBinder;
use crate::cache::Cache;
use crate::events::{EventRecorder, Subject};
use crate::framework::{BindPlugin, Framework};
use crate::plugins::default_framework;
use crate::podinfo::{PodInfo, pod_key};
use crate::queue::{QueuedPod, SchedulingQueue};
use crate::status::Code;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::scheduling::v1::PriorityClass;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

/// Priority classes by name, and the global default's value.
#[derive(Default)]
struct Priorities {
    classes: HashMap<String, i32>,
    global_default: Option<(String, i32)>,
}

struct Shared {
    options: SchedulerOptions,
    framework: Framework,
    cache: Mutex<Cache>,
    queue: Mutex<SchedulingQueue>,
    priorities: Mutex<Priorities>,
    wake: Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock is a bug elsewhere; keep scheduling with the data.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn priority_of(&self, pod: &Pod) -> i32 {
        let spec = pod.spec.as_ref();
        if let Some(p) = spec.and_then(|s| s.priority) {
            return p;
        }
        let pr = lock(&self.priorities);
        match spec
            .and_then(|s| s.priority_class_name.as_deref())
            .filter(|n| !n.is_empty())
        {
            Some(name) => pr.classes.get(name).copied().unwrap_or(0),
            None => pr.global_default.as_ref().map_or(0, |(_, v)| *v),
        }
    }

    fn responsible(&self, pod: &Pod) -> bool {
        let name = pod
            .spec
            .as_ref()
            .and_then(|s| s.scheduler_name.as_deref())
            .unwrap_or("default-scheduler");
        name == self.options.scheduler_name
    }

    fn on_pod(&self, pod: Pod) {
        let now = Instant::now();
        let key = pod_key(&pod);
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        let terminal = matches!(phase, Some("Succeeded") | Some("Failed"));
        let bound = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_some_and(|n| !n.is_empty());
        let pod = Arc::new(pod);
        if bound {
            lock(&self.queue).delete(&key);
            let freed = {
                let mut cache = lock(&self.cache);
                if terminal {
                    cache.remove_pod(&key)
                } else {
                    let prio = self.priority_of(&pod);
                    cache.upsert_pod(Arc::new(PodInfo::new(pod, prio)));
                    false
                }
            };
            if freed {
                self.cluster_event(now);
            }
        } else if self.responsible(&pod) && !terminal && pod.metadata.deletion_timestamp.is_none() {
            if lock(&self.cache).is_assumed(&key) {
                return;
            }
            let prio = self.priority_of(&pod);
            lock(&self.queue).add(pod, key, prio, now);
            self.wake.notify_one();
        } else {
            lock(&self.queue).delete(&key);
        }
    }

    fn on_pod_deleted(&self, key: &str) {
        lock(&self.queue).delete(key);
        if lock(&self.cache).remove_pod(key) {
            self.cluster_event(Instant::now());
        }
    }

    fn cluster_event(&self, now: Instant) {
        lock(&self.queue).move_all_to_active_or_backoff(now);
        self.wake.notify_one();
    }
}

/// Consumes a watcher stream, calling `apply`/`delete`, reconciling deletions missed across
/// relists with `known`, and flagging `synced` after the first complete list.
async fn run_informer<K, S>(
    stream: S,
    stop: CancellationToken,
    synced: tokio::sync::watch::Sender<bool>,
    mut apply: impl FnMut(K),
    mut delete: impl FnMut(&str),
    known: impl Fn() -> Vec<String>,
    key_of: impl Fn(&K) -> String,
) where
    S: Stream<Item = Result<Event<K>, watcher::Error>>,
{
    let mut stream = std::pin::pin!(stream);
    let mut seen: Option<HashSet<String>> = None;
    loop {
        let ev = tokio::select! {
            _ = stop.cancelled() => return,
            ev = stream.next() => ev,
        };
        match ev {
            None => return,
            Some(Err(e)) => tracing::warn!(error = %e, "scheduler watch failed; retrying"),
            Some(Ok(Event::Init)) => seen = Some(HashSet::new()),
            Some(Ok(Event::InitApply(o))) => {
                if let Some(s) = seen.as_mut() {
                    s.insert(key_of(&o));
                }
                apply(o);
            }
            Some(Ok(Event::InitDone)) => {
                if let Some(s) = seen.take() {
                    for k in known().into_iter().filter(|k| !s.contains(k)) {
                        delete(&k);
                    }
                }
                let _ = synced.send(true);
            }
            Some(Ok(Event::Apply(o))) => apply(o),
            Some(Ok(Event::Delete(o))) => delete(&key_of(&o)),
        }
    }
}

fn start_informers(
    client: &Client,
    shared: &Arc<Shared>,
    stop: &CancellationToken,
) -> (
    Vec<tokio::task::JoinHandle<()>>,
    Vec<tokio::sync::watch::Receiver<bool>>,
) {
    let mut tasks = Vec::new();
    let mut synced = Vec::new();
    {
        let (tx, rx) = tokio::sync::watch::channel(false);
        synced.push(rx);
        let api: Api<PriorityClass> = Api::all(client.clone());
        let (s1, s2) = (shared.clone(), shared.clone());
        let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
        tasks.push(tokio::spawn(run_informer(
            stream,
            stop.clone(),
            tx,
            move |pc: PriorityClass| {
                let name = pc.metadata.name.clone().unwrap_or_default();
                let mut pr = lock(&s1.priorities);
                if pc.global_default == Some(true) {
                    pr.global_default = Some((name.clone(), pc.value));
                } else if pr.global_default.as_ref().is_some_and(|(n, _)| *n == name) {
                    pr.global_default = None;
                }
                pr.classes.insert(name, pc.value);
            },
            move |name| {
                let mut pr = lock(&s2.priorities);
                pr.classes.remove(name);
                if pr.global_default.as_ref().is_some_and(|(n, _)| n == name) {
                    pr.global_default = None;
                }
            },
            Vec::new,
            |pc: &PriorityClass| pc.metadata.name.clone().unwrap_or_default(),
        )));
    }
    {
        let (tx, rx) = tokio::sync::watch::channel(false);
        synced.push(rx);
        let api: Api<Node> = Api::all(client.clone());
        let (s1, s2, s3) = (shared.clone(), shared.clone(), shared.clone());
        let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
        tasks.push(tokio::spawn(run_informer(
            stream,
            stop.clone(),
            tx,
            move |n: Node| {
                lock(&s1.cache).upsert_node(n);
                s1.cluster_event(Instant::now());
            },
            move |name| lock(&s2.cache).remove_node(name),
            move || lock(&s3.cache).node_names(),
            |n: &Node| n.metadata.name.clone().unwrap_or_default(),
        )));
    }
    {
        let (tx, rx) = tokio::sync::watch::channel(false);
        synced.push(rx);
        let api: Api<Pod> = Api::all(client.clone());
        let (s1, s2, s3) = (shared.clone(), shared.clone(), shared.clone());
        let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
        tasks.push(tokio::spawn(run_informer(
            stream,
            stop.clone(),
            tx,
            move |p: Pod| s1.on_pod(p),
            move |key| s2.on_pod_deleted(key),
            move || lock(&s3.cache).bound_pod_keys(),
            pod_key,
        )));
    }
    (tasks, synced)
}

/// Runs the scheduler until `stop`, without leader election.
pub async fn run_unelected(client: Client, options: SchedulerOptions, stop: CancellationToken) {
    let framework = default_framework(options.scoring_strategy);
    let shared = Arc::new(Shared {
        options: options.clone(),
        framework,
        cache: Mutex::new(Cache::default()),
        queue: Mutex::new(SchedulingQueue::default()),
        priorities: Mutex::new(Priorities::default()),
        wake: Notify::new(),
    });
    let (mut tasks, synced) = start_informers(&client, &shared, &stop);
    let (events, ev_task) =
        EventRecorder::start(client.clone(), options.scheduler_name.clone(), stop.clone());
    tasks.push(ev_task);
    for mut s in synced {
        tokio::select! {
            _ = stop.cancelled() => break,
            r = s.wait_for(|v| *v) => if r.is_err() { break },
        }
    }
    tracing::info!(scheduler = %options.scheduler_name, "scheduler caches synced; scheduling");
    let binder: Arc<dyn BindPlugin> = Arc::new(DefaultBinder {
        client: client.clone(),
    });
    let ctx = Arc::new(Context {
        shared: shared.clone(),
        client,
        events,
        binder,
        binds: Arc::new(Semaphore::new(options.bind_concurrency.max(1))),
    });
    scheduling_loop(ctx, stop.clone()).await;
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
}

struct Context {
    shared: Arc<Shared>,
    client: Client,
    events: EventRecorder,
    binder: Arc<dyn BindPlugin>,
    binds: Arc<Semaphore>,
}

async fn scheduling_loop(ctx: Arc<Context>, stop: CancellationToken) {
    let mut next_start = 0usize;
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id());
    let mut last_cleanup = Instant::now();
    while !stop.is_cancelled() {
        let now = Instant::now();
        if now.duration_since(last_cleanup) > Duration::from_secs(1) {
            lock(&ctx.shared.cache).cleanup_expired(now);
            last_cleanup = now;
        }
        let (popped, due) = {
            let mut q = lock(&ctx.shared.queue);
            let due = q.flush(now);
            (q.pop(), due)
        };
        let Some(qp) = popped else {
            let wait = due
                .map_or(Duration::from_secs(1), |d| d.saturating_duration_since(now))
                .min(Duration::from_secs(1));
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = ctx.shared.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
            continue;
        };
        // Wait for a binding slot before deciding, so the cache never runs far ahead.
        let permit = tokio::select! {
            _ = stop.cancelled() => break,
            p = ctx.binds.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        schedule_one(&ctx, qp, &mut next_start, &mut rng, permit);
    }
}

fn subject(p: &PodInfo) -> Subject {
    Subject {
        namespace: p.namespace.clone(),
        name: p.name.clone(),
        uid: p.uid.clone(),
    }
}

fn schedule_one(
    ctx: &Arc<Context>,
    qp: QueuedPod,
    next_start: &mut usize,
    rng: &mut u64,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let shared = &ctx.shared;
    let prio = shared.priority_of(&qp.pod);
    let info = Arc::new(PodInfo::new(qp.pod.clone(), prio));
    let span = tracing::debug_span!("schedule", pod = %info.key);
    let _g = span.enter();
    let mut cache = lock(&shared.cache);
    let (mut state, result) = algorithm::schedule(
        &shared.framework,
        &cache.snapshot,
        &info,
        shared.options.percentage_of_nodes_to_score,
        next_start,
        rng,
    );
    match result {
        Ok(r) => {
            let reserve = shared.framework.run_reserve(&mut state, &info, &r.node);
            if !reserve.is_success() {
                drop(cache);
                lock(&shared.queue).requeue_backoff(&info.key, Instant::now());
                return;
            }
            cache.assume(info.clone(), &r.node);
            drop(cache);
            let ctx = ctx.clone();
            tokio::spawn(async move {
                let s = ctx.binder.bind(&info, &r.node).await;
                drop(permit);
                let now = Instant::now();
                if s.is_success() {
                    lock(&ctx.shared.cache).finish_binding(&info.key, now);
                    lock(&ctx.shared.queue).done(&info.key);
                    ctx.events.normal(
                        subject(&info),
                        "Scheduled",
                        format!("Successfully assigned {} to {}", info.key, r.node),
                    );
                } else {
                    lock(&ctx.shared.cache).forget(&info.key);
                    if s.code == Code::UnschedulableAndUnresolvable {
                        lock(&ctx.shared.queue).done(&info.key);
                    } else {
                        lock(&ctx.shared.queue).requeue_backoff(&info.key, now);
                    }
                    tracing::warn!(pod = %info.key, node = %r.node, error = %s.message(), "binding failed");
                    ctx.events.warning(
                        subject(&info),
                        "FailedScheduling",
                        format!("Binding rejected: {}", s.message()),
                    );
                    ctx.shared.cluster_event(now);
                }
            });
        }
        Err(fit) => {
            let post = shared
                .framework
                .post_filter
                .first()
                .filter(|_| fit.pre_filter.is_none() && fit.num_nodes > 0)
                .map(|p| {
                    p.post_filter(
                        &shared.framework,
                        &state,
                        &info,
                        &cache.snapshot,
                        &fit.statuses,
                    )
                });
            drop(cache);
            lock(&shared.queue).requeue_unschedulable(&info.key, Instant::now());
            let ctx = ctx.clone();
            tokio::spawn(async move {
                on_unschedulable(&ctx, &info, fit, post).await;
                drop(permit);
            });
        }
    }
}

fn failure_message(fit: &FitError, post_message: &str) -> String {
    if fit.num_nodes == 0 {
        return "no nodes available to schedule pods".to_string();
    }
    let mut m = fit.message();
    if !post_message.is_empty() {
        m.push(' ');
        m.push_str(post_message);
    }
    m
}

async fn on_unschedulable(
    ctx: &Context,
    info: &PodInfo,
    fit: FitError,
    post: Option<crate::framework::PostFilterResult>,
) {
    let post = post.unwrap_or_default();
    let message = failure_message(&fit, &post.message);
    tracing::debug!(pod = %info.key, %message, "unschedulable");
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &info.namespace);
    if let Some(node) = &post.nominated_node {
        for v in &post.victims {
            let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &v.namespace);
            match api.delete(&v.name, &DeleteParams::default()).await {
                Ok(_) => ctx.events.normal(
                    subject(v),
                    "Preempted",
                    format!("Preempted by pod {} on node {node}", info.uid),
                ),
                Err(e) => {
                    tracing::warn!(victim = %v.key, error = %e, "preemption: deleting a victim")
                }
            }
        }
        let patch = json!({"status": {"nominatedNodeName": node}});
        if let Err(e) = pods
            .patch_status(&info.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            tracing::debug!(pod = %info.key, error = %e, "setting nominatedNodeName");
        }
    }
    ctx.events
        .warning(subject(info), "FailedScheduling", message.clone());
    let now = jiff::Timestamp::now().to_string();
    let mut conds: Vec<serde_json::Value> = info
        .pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .map(|c| {
            c.iter()
                .filter(|c| c.type_ != "PodScheduled")
                .filter_map(|c| serde_json::to_value(c).ok())
                .collect()
        })
        .unwrap_or_default();
    conds.push(
        json!({"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                      "message": message, "lastProbeTime": null, "lastTransitionTime": now}),
    );
    let patch = json!({"status": {"conditions": conds}});
    if let Err(e) = pods
        .patch_status(&info.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        tracing::debug!(pod = %info.key, error = %e, "setting PodScheduled=False");
    }
}
