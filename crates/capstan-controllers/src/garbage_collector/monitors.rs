//! Monitors (upstream's GraphBuilder monitors): one metadata-only watch per served resource that
//! can be listed, watched and deleted, feeding the graph builder; the set follows discovery.

use super::graph::{Node, Resource};
use futures::StreamExt;
use kube::Client;
use kube::api::{Api, DynamicObject};
use kube::core::PartialObjectMeta;
use kube::discovery::{Discovery, Scope, verbs};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A change seen by a monitor.
#[derive(Debug)]
pub enum Observed {
    Upsert(Node),
    Delete(Node),
    /// A full list of the resource (initial, or after the watch restarted).
    Resync(Arc<Resource>, Vec<Node>),
    /// The resource is no longer served.
    Forget(Arc<Resource>),
}

/// Resources the collector never watches (upstream's ignored resources: events).
fn ignored(group: &str, plural: &str) -> bool {
    plural == "events" && (group.is_empty() || group == "events.k8s.io")
}

/// Resources to monitor according to `discovery`, by key.
pub fn monitored(discovery: &Discovery) -> HashMap<String, Arc<Resource>> {
    discovery
        .groups()
        .flat_map(|g| g.recommended_resources())
        .filter(|(ar, caps)| {
            !ignored(&ar.group, &ar.plural)
                && [verbs::LIST, verbs::WATCH, verbs::DELETE]
                    .iter()
                    .all(|v| caps.supports_operation(v))
        })
        .map(|(api, caps)| {
            let r = Arc::new(Resource {
                api,
                namespaced: caps.scope == Scope::Namespaced,
            });
            (r.key(), r)
        })
        .collect()
}

struct Running {
    resource: Arc<Resource>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// The running monitors.
pub struct Monitors {
    client: Client,
    tx: mpsc::Sender<Observed>,
    running: HashMap<String, Running>,
    stop: CancellationToken,
}

impl Monitors {
    pub fn new(client: Client, tx: mpsc::Sender<Observed>, stop: CancellationToken) -> Self {
        Monitors {
            client,
            tx,
            running: HashMap::new(),
            stop,
        }
    }

    /// Starts monitors for resources newly served and stops those gone; returns the keys started.
    pub async fn sync(&mut self, wanted: HashMap<String, Arc<Resource>>) -> Vec<String> {
        let gone: Vec<String> = self
            .running
            .keys()
            .filter(|k| !wanted.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            if let Some(r) = self.running.remove(&key) {
                r.stop.cancel();
                let _ = r.task.await;
                tracing::info!(resource = %key, "garbage collector: resource no longer served");
                let _ = self.tx.send(Observed::Forget(r.resource)).await;
            }
        }
        let mut started = Vec::new();
        for (key, resource) in wanted {
            if self.running.contains_key(&key) {
                continue;
            }
            let stop = self.stop.child_token();
            let task = tokio::spawn(watch(
                self.client.clone(),
                resource.clone(),
                self.tx.clone(),
                stop.clone(),
            ));
            self.running.insert(
                key.clone(),
                Running {
                    resource,
                    stop,
                    task,
                },
            );
            started.push(key);
        }
        started
    }

    /// Stops every monitor and waits for them.
    pub async fn shutdown(self) {
        for r in self.running.into_values() {
            r.stop.cancel();
            let _ = r.task.await;
        }
    }
}

async fn watch(
    client: Client,
    resource: Arc<Resource>,
    tx: mpsc::Sender<Observed>,
    stop: CancellationToken,
) {
    let api: Api<PartialObjectMeta<DynamicObject>> = Api::all_with(client, &resource.api);
    let mut events = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut initial = Vec::new();
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            e = events.next() => e,
        };
        let observed = match event {
            None => return,
            Some(Err(e)) => {
                tracing::debug!(resource = %resource.key(), error = %e, "garbage collector monitor");
                continue;
            }
            Some(Ok(Event::Init)) => {
                initial.clear();
                continue;
            }
            Some(Ok(Event::InitApply(o))) => {
                initial.extend(Node::from_meta(resource.clone(), &o.metadata));
                continue;
            }
            Some(Ok(Event::InitDone)) => {
                Observed::Resync(resource.clone(), std::mem::take(&mut initial))
            }
            Some(Ok(Event::Apply(o))) => match Node::from_meta(resource.clone(), &o.metadata) {
                Some(n) => Observed::Upsert(n),
                None => continue,
            },
            Some(Ok(Event::Delete(o))) => match Node::from_meta(resource.clone(), &o.metadata) {
                Some(n) => Observed::Delete(n),
                None => continue,
            },
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            r = tx.send(observed) => if r.is_err() { return },
        }
    }
}
