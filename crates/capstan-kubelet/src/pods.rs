//! The pod manager: watches the pods bound to this node, runs one worker per pod, tells a
//! worker when its pod is gone, and removes orphaned sandboxes once the first list is in.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use capstan_runtime::cri::PodSandboxFilter;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::labels;
use crate::pod_worker::{WorkerContext, WorkerMessage, run_worker};

/// How often finished workers are reaped.
const REAP: Duration = Duration::from_secs(1);

struct Handle {
    tx: mpsc::Sender<WorkerMessage>,
    task: JoinHandle<()>,
}

/// Runs pod workers for the pods bound to `ctx.node_name` until `stop`; the workers leave
/// their containers running on stop.
pub async fn run_pod_manager(ctx: Arc<WorkerContext>, stop: CancellationToken) {
    let api: kube::Api<Pod> = kube::Api::all(ctx.client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={}", ctx.node_name));
    let stream = watcher::watcher(api, config).default_backoff();
    futures::pin_mut!(stream);
    let mut workers: HashMap<String, Handle> = HashMap::new();
    let mut listing: Option<HashSet<String>> = None;
    let mut orphans_done = false;
    let mut reap = tokio::time::interval(REAP);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = reap.tick() => workers.retain(|_, h| !h.task.is_finished()),
            event = stream.next() => match event {
                None => break,
                Some(Err(e)) => tracing::warn!(error = %e, "watching pods"),
                Some(Ok(Event::Init)) => listing = Some(HashSet::new()),
                Some(Ok(Event::InitApply(pod))) => {
                    if let (Some(seen), Some(uid)) = (listing.as_mut(), pod.metadata.uid.clone()) {
                        seen.insert(uid);
                    }
                    dispatch(&ctx, &mut workers, pod, &stop).await;
                }
                Some(Ok(Event::InitDone)) => {
                    let seen = listing.take().unwrap_or_default();
                    for (uid, h) in &workers {
                        if !seen.contains(uid) {
                            let _ = h.tx.send(WorkerMessage::Gone).await;
                        }
                    }
                    if !orphans_done {
                        orphans_done = true;
                        remove_orphans(&ctx, &seen).await;
                    }
                }
                Some(Ok(Event::Apply(pod))) => dispatch(&ctx, &mut workers, pod, &stop).await,
                Some(Ok(Event::Delete(pod))) => {
                    if let Some(h) = pod.metadata.uid.as_ref().and_then(|u| workers.get(u)) {
                        let _ = h.tx.send(WorkerMessage::Gone).await;
                    }
                }
            },
        }
    }
    for (_, h) in workers {
        drop(h.tx);
        let _ = h.task.await;
    }
}

async fn dispatch(
    ctx: &Arc<WorkerContext>,
    workers: &mut HashMap<String, Handle>,
    pod: Pod,
    stop: &CancellationToken,
) {
    let Some(uid) = pod.metadata.uid.clone() else {
        return;
    };
    if let Some(h) = workers.get(&uid)
        && !h.task.is_finished()
    {
        let _ = h.tx.send(WorkerMessage::Update(Box::new(pod))).await;
        return;
    }
    let (tx, rx) = mpsc::channel(16);
    let task = tokio::spawn(run_worker(ctx.clone(), pod, rx, stop.child_token()));
    workers.insert(uid, Handle { tx, task });
}

/// Sandboxes made by a kubelet for pods that no longer exist: network, sandbox and volumes go.
async fn remove_orphans(ctx: &WorkerContext, pods: &HashSet<String>) {
    let sandboxes = match ctx
        .runtime
        .list_pod_sandboxes(&PodSandboxFilter::default())
        .await
    {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "listing sandboxes for orphan clean-up");
            return;
        }
    };
    let mut gone_uids = BTreeMap::new();
    for sb in sandboxes {
        let Some(uid) = sb.labels.get(labels::POD_UID) else {
            continue;
        };
        if pods.contains(uid) {
            continue;
        }
        tracing::info!(sandbox = %sb.id, pod = %sb.metadata.name, "removing orphaned sandbox");
        crate::pod_worker::teardown_sandbox(
            &*ctx.runtime,
            &ctx.cni,
            &sb.id,
            &sb.metadata.name,
            &sb.metadata.namespace,
            uid,
        )
        .await;
        gone_uids.insert(uid.clone(), ());
    }
    for uid in gone_uids.keys() {
        if let Err(e) = ctx.volumes.teardown(uid).await {
            tracing::warn!(pod_uid = %uid, error = %e, "tearing down orphaned volumes");
        }
        let _ = std::fs::remove_dir_all(ctx.pods_dir.join(uid));
    }
}
