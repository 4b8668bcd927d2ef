//! The watch cache: the current objects of every resource plus a ring of recent events,
//! fed by one store watch on the whole keyspace (objects live under `/registry/`; other keys,
//! such as API server leases and address reservations, only advance the cache's revision, so a
//! consistent read never waits for a revision the cache will not see). Lists and watches are served from here; only
//! exact-revision lists and watches older than the ring go to the store.

use bytes::Bytes;
use capstan_api::ResourceInfo;
use capstan_api::resources::RESOURCES;
use capstan_api::selectors;
use capstan_store::{KeyValue, Store, StoreError, WatchEvent};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{broadcast, watch};

/// Live cache events for one watcher.
pub type EventReceiver = broadcast::Receiver<Arc<CacheEvent>>;

/// Events kept for watches that resume from a recent resourceVersion.
const RING_CAPACITY: usize = 16_384;
/// Events buffered per watcher before it is considered too slow and closed.
const BROADCAST_CAPACITY: usize = 16_384;

/// One object as served: its JSON (with metadata.resourceVersion set) and what selectors need.
#[derive(Debug)]
pub struct CachedObject {
    pub key: String,
    pub namespace: Option<String>,
    pub name: String,
    pub rev: i64,
    pub json: Bytes,
    pub labels: BTreeMap<String, String>,
    pub fields: BTreeMap<String, String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// A change to one object of resource `RESOURCES[resource]`.
#[derive(Debug)]
pub struct CacheEvent {
    pub resource: usize,
    pub kind: EventType,
    pub object: Arc<CachedObject>,
    pub prev: Option<Arc<CachedObject>>,
    pub rev: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("too old resource version: {requested} ({oldest})")]
    TooOld { requested: i64, oldest: i64 },
    #[error("Too large resource version: {requested}, current: {current}")]
    TooNew { requested: i64, current: i64 },
    #[error("store")]
    Store(#[from] StoreError),
    #[error("object {key} in the store is not valid JSON")]
    Corrupt {
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

struct Inner {
    objects: Vec<BTreeMap<String, Arc<CachedObject>>>,
    ring: VecDeque<Arc<CacheEvent>>,
    /// Every event with rev > ring_start is in the ring.
    ring_start: i64,
    revision: i64,
}

/// Shared watch cache of all resources.
pub struct WatchCache {
    inner: RwLock<Inner>,
    events: broadcast::Sender<Arc<CacheEvent>>,
    revision: watch::Sender<i64>,
    by_storage_prefix: HashMap<String, usize>,
}

/// Resolve a store key to (resource index, namespace, name).
fn parse_key(map: &HashMap<String, usize>, key: &str) -> Option<(usize, Option<String>, String)> {
    let rest = key.strip_prefix("/registry/")?;
    let (storage, tail) = rest.split_once('/')?;
    let idx = *map.get(storage)?;
    if RESOURCES[idx].namespaced {
        let (ns, name) = tail.split_once('/')?;
        Some((idx, Some(ns.to_string()), name.to_string()))
    } else {
        Some((idx, None, tail.to_string()))
    }
}

/// Build a cached object from a stored value, stamping resourceVersion = `rev`.
pub fn cached_object(
    info: &ResourceInfo,
    key: &str,
    ns: Option<String>,
    name: String,
    value: &[u8],
    rev: i64,
) -> Result<CachedObject, CacheError> {
    let mut obj: Value = serde_json::from_slice(value).map_err(|source| CacheError::Corrupt {
        key: key.to_string(),
        source,
    })?;
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), Value::String(rev.to_string()));
    }
    let labels = selectors::object_labels(&obj);
    let fields = selectors::object_fields(info, &obj);
    let json = Bytes::from(
        serde_json::to_vec(&obj).map_err(|source| CacheError::Corrupt {
            key: key.to_string(),
            source,
        })?,
    );
    Ok(CachedObject {
        key: key.to_string(),
        namespace: ns,
        name,
        rev,
        json,
        labels,
        fields,
    })
}

impl WatchCache {
    /// Load the current state from the store and start following it. The returned task ends
    /// when `shutdown` flips to true or the store watch closes.
    pub async fn start(
        store: Arc<dyn Store>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(Arc<WatchCache>, tokio::task::JoinHandle<()>), CacheError> {
        let by_storage_prefix: HashMap<String, usize> = RESOURCES
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let p = r.store_prefix();
                (
                    p.trim_start_matches("/registry/")
                        .trim_end_matches('/')
                        .to_string(),
                    i,
                )
            })
            .collect();
        let rev = store.current_revision().await?;
        let mut objects: Vec<BTreeMap<String, Arc<CachedObject>>> =
            vec![BTreeMap::new(); RESOURCES.len()];
        let mut start_after: Option<String> = None;
        loop {
            let page = store
                .list("/registry/", start_after.as_deref(), 5000, Some(rev))
                .await?;
            for kv in &page.items {
                if let Some((idx, o)) = decode_kv(&by_storage_prefix, kv)? {
                    objects[idx].insert(kv.key.clone(), Arc::new(o));
                }
            }
            if !page.more {
                break;
            }
            start_after = page.items.last().map(|kv| kv.key.clone());
        }
        let (events, _) = broadcast::channel(BROADCAST_CAPACITY);
        let (revision, _) = watch::channel(rev);
        let cache = Arc::new(WatchCache {
            inner: RwLock::new(Inner {
                objects,
                ring: VecDeque::new(),
                ring_start: rev,
                revision: rev,
            }),
            events,
            revision,
            by_storage_prefix,
        });
        let mut rx = store.watch("/", rev).await?;
        let c = cache.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.changed() => break,
                    ev = rx.recv() => match ev {
                        Some(Ok(ev)) => c.apply(ev),
                        Some(Err(e)) => {
                            tracing::error!(error = %e, "store watch failed; watch cache stops following");
                            break;
                        }
                        None => break,
                    }
                }
            }
        });
        Ok((cache, task))
    }

    fn apply(&self, ev: WatchEvent) {
        let rev = ev.revision();
        let Some((idx, ns, name)) = parse_key(&self.by_storage_prefix, ev.key()) else {
            self.advance(rev);
            return;
        };
        let info = &RESOURCES[idx];
        let built = match &ev {
            WatchEvent::Put { kv, .. } => {
                cached_object(info, &kv.key, ns, name, &kv.value, kv.mod_revision)
            }
            WatchEvent::Delete { prev, revision } => {
                cached_object(info, &prev.key, ns, name, &prev.value, *revision)
            }
        };
        let obj = match built {
            Ok(o) => Arc::new(o),
            Err(e) => {
                tracing::error!(error = %e, "skipping undecodable object");
                self.advance(rev);
                return;
            }
        };
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let (kind, prev) = match &ev {
            WatchEvent::Put { .. } => {
                let prev = inner.objects[idx].insert(obj.key.clone(), obj.clone());
                (
                    if prev.is_some() {
                        EventType::Modified
                    } else {
                        EventType::Added
                    },
                    prev,
                )
            }
            WatchEvent::Delete { .. } => (EventType::Deleted, inner.objects[idx].remove(&obj.key)),
        };
        let event = Arc::new(CacheEvent {
            resource: idx,
            kind,
            object: obj,
            prev,
            rev,
        });
        inner.ring.push_back(event.clone());
        while inner.ring.len() > RING_CAPACITY {
            if let Some(old) = inner.ring.pop_front() {
                inner.ring_start = old.rev;
            }
        }
        inner.revision = rev;
        let _ = self.events.send(event);
        drop(inner);
        self.revision.send_replace(rev);
    }

    fn advance(&self, rev: i64) {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        inner.revision = rev;
        drop(inner);
        self.revision.send_replace(rev);
    }

    /// The latest revision applied to the cache.
    pub fn revision(&self) -> i64 {
        *self.revision.borrow()
    }

    /// Wait until the cache has applied `rev`, at most `timeout`.
    pub async fn wait_for(&self, rev: i64, timeout: Duration) -> Result<(), CacheError> {
        let mut rx = self.revision.subscribe();
        let res = tokio::time::timeout(timeout, rx.wait_for(|r| *r >= rev)).await;
        match res {
            Ok(Ok(_)) => Ok(()),
            _ => Err(CacheError::TooNew {
                requested: rev,
                current: self.revision(),
            }),
        }
    }

    /// Objects of a resource (optionally one namespace), in key order, with the revision they
    /// were read at.
    pub fn list(
        &self,
        resource: usize,
        namespace: Option<&str>,
        start_after: Option<&str>,
    ) -> (Vec<Arc<CachedObject>>, i64) {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        let map = &inner.objects[resource];
        let info = &RESOURCES[resource];
        let prefix = info.store_namespace_prefix(namespace);
        let lower = match start_after {
            Some(k) if k.as_bytes() >= prefix.as_bytes() => {
                std::ops::Bound::Excluded(k.to_string())
            }
            _ => std::ops::Bound::Included(prefix.clone()),
        };
        let items = map
            .range((lower, std::ops::Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(_, v)| v.clone())
            .collect();
        (items, inner.revision)
    }

    /// One object by store key.
    pub fn get(&self, resource: usize, key: &str) -> Option<Arc<CachedObject>> {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        inner.objects[resource].get(key).cloned()
    }

    /// Count of objects of a resource.
    pub fn count(&self, resource: usize) -> usize {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        inner.objects[resource].len()
    }

    /// Subscribe to events after `after_rev`: the buffered events to replay, then the live
    /// receiver. `TooOld` when the ring no longer reaches back that far.
    pub fn watch_from(
        &self,
        resource: usize,
        after_rev: i64,
    ) -> Result<(Vec<Arc<CacheEvent>>, EventReceiver), CacheError> {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        if after_rev < inner.ring_start {
            return Err(CacheError::TooOld {
                requested: after_rev,
                oldest: inner.ring_start,
            });
        }
        let rx = self.events.subscribe();
        let replay = inner
            .ring
            .iter()
            .filter(|e| e.rev > after_rev && e.resource == resource)
            .cloned()
            .collect();
        Ok((replay, rx))
    }

    /// The current objects of a resource and a live receiver starting right after them.
    pub fn snapshot_and_watch(
        &self,
        resource: usize,
        namespace: Option<&str>,
    ) -> (
        Vec<Arc<CachedObject>>,
        i64,
        broadcast::Receiver<Arc<CacheEvent>>,
    ) {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        let rx = self.events.subscribe();
        let prefix = RESOURCES[resource].store_namespace_prefix(namespace);
        let items = inner.objects[resource]
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(_, v)| v.clone())
            .collect();
        (items, inner.revision, rx)
    }

    /// Resolve a store key to its resource index (for events read straight from the store).
    pub fn resolve_key(&self, key: &str) -> Option<(usize, Option<String>, String)> {
        parse_key(&self.by_storage_prefix, key)
    }
}

/// A stored key-value as a cached object of its resource (None for keys of no served resource).
fn decode_kv(
    map: &HashMap<String, usize>,
    kv: &KeyValue,
) -> Result<Option<(usize, CachedObject)>, CacheError> {
    let Some((idx, ns, name)) = parse_key(map, &kv.key) else {
        return Ok(None);
    };
    let o = cached_object(
        &RESOURCES[idx],
        &kv.key,
        ns,
        name,
        &kv.value,
        kv.mod_revision,
    )?;
    Ok(Some((idx, o)))
}

/// Convert a stored key-value to a cached object (for exact-revision lists from the store).
pub fn from_kv(cache: &WatchCache, kv: &KeyValue) -> Result<Option<CachedObject>, CacheError> {
    Ok(decode_kv(&cache.by_storage_prefix, kv)?.map(|(_, o)| o))
}
