//! The garbage collector (upstream's GarbageCollector controller): a graph of ownerReferences
//! over every resource that can be listed, watched and deleted (found by discovery, refreshed
//! periodically, watched metadata-only). Background: a dependent whose owners are all gone
//! (checked by name and UID against the API) is deleted. Foreground: an owner carrying the
//! `foregroundDeletion` finalizer gets its dependents deleted (themselves in the foreground when
//! they have dependents) and loses the finalizer once no dependent with blockOwnerDeletion is
//! left. Orphan: an owner carrying `orphan` gets its dependents' references to it removed, then
//! the finalizer. The API server adds those finalizers on delete with a propagationPolicy.

mod graph;
mod monitors;
mod queue;
mod worker;

pub use graph::{FOREGROUND, ORPHAN};
pub use queue::WorkQueue;

use futures::future::join_all;
use graph::Graph;
use kube::Client;
use kube::discovery::Discovery;
use monitors::{Monitors, Observed};
use std::collections::HashSet;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use worker::{Collector, Outcome};

/// Observed changes buffered between the monitors and the graph builder.
const OBSERVED_BUFFER: usize = 4096;
/// Longest pause between two attempts at the same item.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// First discovery retries start at this delay.
const DISCOVERY_RETRY: Duration = Duration::from_millis(500);

/// Options of the garbage collector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GcOptions {
    /// How often served resources are re-discovered (upstream: 30 s).
    pub discovery_period: Duration,
    /// Items processed at once (upstream's `--concurrent-gc-syncs`, 20).
    pub workers: usize,
    /// Longest wait for the first full list of every resource before workers start anyway.
    pub sync_timeout: Duration,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            discovery_period: Duration::from_secs(30),
            workers: 20,
            sync_timeout: Duration::from_secs(60),
        }
    }
}

/// Run the garbage collector until `stop`.
pub async fn run(client: Client, options: GcOptions, stop: CancellationToken) {
    let (tx, rx) = mpsc::channel(OBSERVED_BUFFER);
    let collector = Arc::new(Collector {
        client: client.clone(),
        graph: Arc::new(Mutex::new(Graph::default())),
        queue: Arc::new(WorkQueue::new(MAX_BACKOFF)),
        discovery: Arc::new(RwLock::new(None)),
    });
    let (synced_tx, synced_rx) = watch::channel(HashSet::new());
    let (started_tx, started_rx) = watch::channel(None::<HashSet<String>>);
    let monitors = Monitors::new(client.clone(), tx, stop.clone());
    tokio::join!(
        build_graph(collector.clone(), rx, synced_tx, stop.clone()),
        discover(
            client,
            collector.clone(),
            monitors,
            options.discovery_period,
            started_tx,
            stop.clone()
        ),
        work(
            collector,
            options.workers.max(1),
            options.sync_timeout,
            started_rx,
            synced_rx,
            stop
        ),
    );
}

/// Applies observed changes to the graph and queues the work they call for.
async fn build_graph(
    c: Arc<Collector>,
    mut rx: mpsc::Receiver<Observed>,
    synced: watch::Sender<HashSet<String>>,
    stop: CancellationToken,
) {
    loop {
        let observed = tokio::select! {
            _ = stop.cancelled() => return,
            o = rx.recv() => match o {
                Some(o) => o,
                None => return,
            },
        };
        let work = {
            let mut g = c.graph.lock().unwrap_or_else(|p| p.into_inner());
            match observed {
                Observed::Upsert(n) => g.upsert(n),
                Observed::Delete(n) => g.remove(&n.uid),
                Observed::Resync(r, nodes) => {
                    let w = g.resync(&r, nodes);
                    synced.send_modify(|s| {
                        s.insert(r.key());
                    });
                    w
                }
                Observed::Forget(r) => g.forget_resource(&r),
            }
        };
        for w in work {
            c.queue.add(w);
        }
    }
}

/// Discovery now and every `period`; the monitors follow it. Announces the first set of
/// resources on `started`.
async fn discover(
    client: Client,
    c: Arc<Collector>,
    mut monitors: Monitors,
    period: Duration,
    started: watch::Sender<Option<HashSet<String>>>,
    stop: CancellationToken,
) {
    let mut failures = 0u32;
    loop {
        let delay = match Discovery::new(client.clone()).run().await {
            Ok(d) => {
                failures = 0;
                let wanted = monitors::monitored(&d);
                *c.discovery.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(d));
                let keys: HashSet<String> = wanted.keys().cloned().collect();
                let new = monitors.sync(wanted).await;
                if !new.is_empty() {
                    tracing::debug!(resources = new.len(), "garbage collector: monitoring");
                }
                if started.borrow().is_none() {
                    let _ = started.send(Some(keys));
                }
                period
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                tracing::warn!(error = %e, "garbage collector: discovery");
                DISCOVERY_RETRY
                    .saturating_mul(1u32 << failures.min(6))
                    .min(period)
            }
        };
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
    }
    monitors.shutdown().await;
}

/// Waits until every first-discovered resource was listed once (or `sync_timeout`), then
/// runs the workers.
async fn work(
    c: Arc<Collector>,
    workers: usize,
    sync_timeout: Duration,
    mut started: watch::Receiver<Option<HashSet<String>>>,
    mut synced: watch::Receiver<HashSet<String>>,
    stop: CancellationToken,
) {
    let wait = async {
        let Ok(keys) = started.wait_for(Option::is_some).await.map(|k| k.clone()) else {
            return;
        };
        let keys = keys.unwrap_or_default();
        let all = synced.wait_for(|s| keys.is_subset(s));
        if tokio::time::timeout(sync_timeout, all).await.is_err() {
            tracing::warn!("garbage collector: not every resource listed in time; starting anyway");
        }
    };
    tokio::select! {
        _ = stop.cancelled() => return,
        _ = wait => {}
    }
    tracing::info!(
        objects = c.graph.lock().unwrap_or_else(|p| p.into_inner()).len(),
        "garbage collector: graph synced"
    );
    join_all((0..workers).map(|_| worker(c.clone(), stop.clone()))).await;
}

async fn worker(c: Arc<Collector>, stop: CancellationToken) {
    while let Some(item) = c.queue.next(&stop).await {
        let result = tokio::select! {
            _ = stop.cancelled() => {
                c.queue.done(&item);
                return;
            }
            r = c.process(&item) => r,
        };
        match result {
            Ok(Outcome::Done) => c.queue.forget(&item),
            Ok(Outcome::Requeue) => c.queue.retry(item.clone()),
            Err(e) => {
                tracing::debug!(?item, error = %e, "garbage collector: will retry");
                c.queue.retry(item.clone());
            }
        }
        c.queue.done(&item);
    }
}
