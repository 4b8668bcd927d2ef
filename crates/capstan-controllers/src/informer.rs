//! Shared informers: one watch per resource feeding a reflector store that several controllers
//! read, and fanning every change (deletions included) out to the controllers' trigger streams
//! only after the store holds it, so a reconcile never reads a cache older than its trigger.

use futures::{Stream, StreamExt};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Room for this many unconsumed changes per subscriber before the watch waits for it.
const SUBSCRIBER_BUFFER: usize = 1024;

/// A shared cache of every `K` plus trigger streams for controllers.
pub struct Informer<K: Resource<DynamicType = ()> + Clone + 'static> {
    api: Api<K>,
    store: Store<K>,
    writer: reflector::store::Writer<K>,
    subscribers: Vec<mpsc::Sender<K>>,
}

impl<K> Informer<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    pub fn new(api: Api<K>) -> Self {
        let (store, writer) = reflector::store();
        Informer {
            api,
            store,
            writer,
            subscribers: Vec::new(),
        }
    }

    /// The cache (filled once [`Informer::run`] runs).
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// A stream of every object applied or deleted, after the cache has it; each subscriber
    /// must be consumed (a stalled one holds the watch back).
    pub fn subscribe(&mut self) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static {
        let (tx, rx) = mpsc::channel(SUBSCRIBER_BUFFER);
        self.subscribers.push(tx);
        futures::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|o| (Ok(o), rx)) },
        )
    }

    /// Keep the cache filled and the subscribers fed until `stop`.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut events = watcher(self.api.clone(), watcher::Config::default())
            .default_backoff()
            .boxed();
        let mut initial = Vec::new();
        loop {
            let event = tokio::select! {
                _ = stop.cancelled() => return,
                e = events.next() => e,
            };
            let event = match event {
                Some(Ok(e)) => e,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "informer watch");
                    continue;
                }
                None => return,
            };
            self.writer.apply_watcher_event(&event);
            let changed = match event {
                watcher::Event::Apply(o) | watcher::Event::Delete(o) => vec![o],
                watcher::Event::Init => {
                    initial.clear();
                    continue;
                }
                watcher::Event::InitApply(o) => {
                    initial.push(o);
                    continue;
                }
                // A relist: everything may have changed.
                watcher::Event::InitDone => std::mem::take(&mut initial),
            };
            for o in changed {
                self.subscribers.retain(|s| !s.is_closed());
                for s in &self.subscribers {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = s.send(o.clone()) => {}
                    }
                }
            }
        }
    }
}

/// Waits until both caches hold a full list (upstream's `WaitForCacheSync`): acting on a
/// partial pod cache would create pods that already exist. False if `stop` came first.
pub async fn wait_for_sync<A, B>(a: &Store<A>, b: &Store<B>, stop: &CancellationToken) -> bool
where
    A: Resource<DynamicType = ()> + Clone + 'static,
    B: Resource<DynamicType = ()> + Clone + 'static,
{
    tokio::select! {
        _ = stop.cancelled() => false,
        r = async { a.wait_until_ready().await.and(b.wait_until_ready().await) } => r.is_ok(),
    }
}
