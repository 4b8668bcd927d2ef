//! Watch: a chunked stream of `{"type":..., "object":...}` lines, from the watch cache (or
//! from the store for resourceVersions older than the cache's event ring).

use super::read::{self, Filter};
use crate::cache::{self, CacheError, CacheEvent, CachedObject, EventType};
use crate::request::{Query, Rendering, ResourcePath};
use crate::response::Body;
use crate::server::ApiServer;
use bytes::Bytes;
use capstan_api::resources::RESOURCES;
use capstan_api::table;
use capstan_api::{ApiError, ResourceInfo};
use capstan_store::{StoreError, WatchEvent};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use rand::Rng;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};

const BOOKMARK_INTERVAL: Duration = Duration::from_secs(60);

enum Source {
    Cache(broadcast::Receiver<Arc<CacheEvent>>),
    Store(capstan_store::WatchReceiver, Arc<cache::WatchCache>),
}

enum Next {
    Event(Arc<CacheEvent>),
    /// The watcher fell behind or the source failed: close with this error.
    Fail(ApiError),
    Closed,
}

impl Source {
    async fn next(&mut self) -> Next {
        match self {
            Source::Cache(rx) => match rx.recv().await {
                Ok(e) => Next::Event(e),
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    Next::Fail(ApiError::expired("watch fell too far behind; restart it"))
                }
                Err(broadcast::error::RecvError::Closed) => Next::Closed,
            },
            Source::Store(rx, cache) => loop {
                match rx.recv().await {
                    Some(Ok(ev)) => {
                        if let Some(e) = store_event(cache, ev) {
                            return Next::Event(Arc::new(e));
                        }
                    }
                    Some(Err(StoreError::Compacted {
                        requested,
                        compacted,
                    })) => {
                        return Next::Fail(ApiError::expired(format!(
                            "too old resource version: {requested} ({compacted})"
                        )));
                    }
                    Some(Err(e)) => return Next::Fail(ApiError::internal(e.to_string())),
                    None => return Next::Closed,
                }
            },
        }
    }
}

fn store_event(cache: &cache::WatchCache, ev: WatchEvent) -> Option<CacheEvent> {
    let (idx, ns, name) = cache.resolve_key(ev.key())?;
    let info = &RESOURCES[idx];
    let (kind, obj, prev) = match &ev {
        WatchEvent::Put { kv, prev } => {
            let o = cache::cached_object(
                info,
                &kv.key,
                ns.clone(),
                name.clone(),
                &kv.value,
                kv.mod_revision,
            )
            .ok()?;
            let p = prev.as_ref().and_then(|p| {
                cache::cached_object(info, &p.key, ns, name, &p.value, p.mod_revision).ok()
            });
            (
                if prev.is_some() {
                    EventType::Modified
                } else {
                    EventType::Added
                },
                o,
                p,
            )
        }
        WatchEvent::Delete { prev, revision } => {
            let o = cache::cached_object(info, &prev.key, ns, name, &prev.value, *revision).ok()?;
            (EventType::Deleted, o, None)
        }
    };
    Some(CacheEvent {
        resource: idx,
        kind,
        object: Arc::new(obj),
        prev: prev.map(Arc::new),
        rev: ev.revision(),
    })
}

/// Turns cache events into wire lines for one watcher.
struct Encoder {
    info: &'static ResourceInfo,
    rendering: Rendering,
    q_include: table::IncludeObject,
    first: bool,
}

impl Encoder {
    fn line(&mut self, kind: &str, obj: &CachedObject) -> Option<Bytes> {
        let mut out = Vec::with_capacity(obj.json.len() + 32);
        out.extend_from_slice(b"{\"type\":\"");
        out.extend_from_slice(kind.as_bytes());
        out.extend_from_slice(b"\",\"object\":");
        match self.rendering {
            Rendering::Json => out.extend_from_slice(&obj.json),
            Rendering::Table => {
                let v: Value = serde_json::from_slice(&obj.json).ok()?;
                let mut t = table::to_table(
                    self.info,
                    std::slice::from_ref(&v),
                    self.q_include,
                    jiff::Timestamp::now(),
                );
                if !self.first {
                    t["columnDefinitions"] = json!([]);
                }
                t["metadata"] = json!({"resourceVersion": obj.rev.to_string()});
                out.extend_from_slice(&serde_json::to_vec(&t).ok()?);
            }
            Rendering::Metadata => {
                let v: Value = serde_json::from_slice(&obj.json).ok()?;
                out.extend_from_slice(&serde_json::to_vec(&read::partial_metadata(&v)).ok()?);
            }
        }
        out.extend_from_slice(b"}\n");
        self.first = false;
        Some(Bytes::from(out))
    }

    fn bookmark(&self, rev: i64, initial_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": rev.to_string(), "creationTimestamp": null});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let ev = json!({"type": "BOOKMARK", "object": {"kind": self.info.kind, "apiVersion": self.info.api_version(), "metadata": meta}});
        let mut v = serde_json::to_vec(&ev).unwrap_or_default();
        v.push(b'\n');
        Bytes::from(v)
    }

    fn error(e: &ApiError) -> Bytes {
        let mut v = serde_json::to_vec(&json!({"type": "ERROR", "object": e.to_status()}))
            .unwrap_or_default();
        v.push(b'\n');
        Bytes::from(v)
    }
}

/// The event type to send for `ev` to a watcher with `filter`, if any (selector transitions
/// turn updates into ADDED/DELETED as upstream does).
fn visible(ev: &CacheEvent, rp: &ResourcePath, filter: &Filter) -> Option<EventType> {
    if ev.resource != rp.resource {
        return None;
    }
    if let Some(ns) = &rp.namespace
        && ev.object.namespace.as_deref() != Some(ns.as_str())
    {
        return None;
    }
    let cur = filter.matches(&ev.object);
    if filter.is_empty() || ev.kind != EventType::Modified {
        return cur.then_some(ev.kind);
    }
    let prev = ev.prev.as_ref().is_some_and(|p| filter.matches(p));
    match (prev, cur) {
        (true, true) => Some(EventType::Modified),
        (false, true) => Some(EventType::Added),
        (true, false) => Some(EventType::Deleted),
        (false, false) => None,
    }
}

pub(crate) async fn watch(
    server: &ApiServer,
    rp: &ResourcePath,
    headers: &http::HeaderMap,
    q: &Query,
) -> Result<http::Response<Body>, ApiError> {
    let info = rp.info();
    let rendering = read::rendering(headers)?;
    let filter = Filter::from_query(info, q)?;
    let bookmarks = q.get("allowWatchBookmarks") == Some("true");
    let send_initial = q.get("sendInitialEvents") == Some("true");
    let timeout = match q.int("timeoutSeconds")? {
        Some(s) if s > 0 => Duration::from_secs(s as u64),
        _ => Duration::from_secs(1800 + rand::rng().random_range(0..1800)),
    };
    let mut enc = Encoder {
        info,
        rendering,
        q_include: read::include_object(q),
        first: true,
    };
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let mut first_lines = Vec::new();
    let rv = q.get("resourceVersion");
    let (initial, start_rev, mut source): (Vec<Arc<CachedObject>>, i64, Source) = match rv {
        Some(v) if v != "0" && !send_initial => {
            let rev: i64 = v
                .parse()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: {v:?}")))?;
            server
                .cache
                .wait_for(rev, Duration::from_secs(3))
                .await
                .map_err(|e| ApiError::timeout(e.to_string()))?;
            match server.cache.watch_from(rp.resource, rev) {
                Ok((replay, live)) => {
                    // Buffered events first; live ones at or below the last replayed revision are skipped.
                    let mut last = rev;
                    for ev in &replay {
                        last = ev.rev;
                        if let Some(k) = visible(ev, rp, &filter)
                            && let Some(l) = enc.line(k.as_str(), &ev.object)
                        {
                            first_lines.push(l);
                        }
                    }
                    (Vec::new(), last, Source::Cache(live))
                }
                Err(CacheError::TooOld { .. }) => {
                    let prefix = info.store_namespace_prefix(rp.namespace.as_deref());
                    match server.store.watch(&prefix, rev).await {
                        Ok(w) => (Vec::new(), rev, Source::Store(w, server.cache.clone())),
                        Err(StoreError::Compacted {
                            requested,
                            compacted,
                        }) => {
                            let e = ApiError::expired(format!(
                                "too old resource version: {requested} ({compacted})"
                            ));
                            return Ok(stream_response(vec![Encoder::error(&e)], None));
                        }
                        Err(e) => return Err(ApiError::internal(e.to_string())),
                    }
                }
                Err(e) => return Err(ApiError::internal(e.to_string())),
            }
        }
        _ => {
            if rv.is_none() {
                read::consistent(server).await?;
            }
            let (objs, rev, live) = server
                .cache
                .snapshot_and_watch(rp.resource, rp.namespace.as_deref());
            (objs, rev, Source::Cache(live))
        }
    };
    let mut last_rev = start_rev;
    for o in initial.iter().filter(|o| filter.matches(o)) {
        if let Some(l) = enc.line("ADDED", o) {
            first_lines.push(l);
        }
    }
    if send_initial && bookmarks {
        first_lines.push(enc.bookmark(start_rev, true));
    }
    let rx_out = rx;
    let mut shutdown = server.shutdown.clone();
    let rp_resource = rp.resource;
    let rp_ns = rp.namespace.clone();
    tokio::spawn(async move {
        let rp = ResourcePath {
            resource: rp_resource,
            namespace: rp_ns,
            name: None,
            subresource: None,
        };
        for l in first_lines {
            if tx.send(l).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(BOOKMARK_INTERVAL);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                _ = shutdown.changed() => break,
                _ = tx.closed() => break,
                _ = tick.tick(), if bookmarks => {
                    if tx.send(enc.bookmark(last_rev, false)).await.is_err() { break; }
                }
                n = source.next() => match n {
                    Next::Event(ev) => {
                        if ev.rev <= last_rev {
                            continue;
                        }
                        last_rev = ev.rev;
                        if let Some(k) = visible(&ev, &rp, &filter)
                            && let Some(l) = enc.line(k.as_str(), &ev.object)
                                && tx.send(l).await.is_err() { break; }
                    }
                    Next::Fail(e) => { let _ = tx.send(Encoder::error(&e)).await; break; }
                    Next::Closed => break,
                }
            }
        }
    });
    Ok(stream_response(Vec::new(), Some(rx_out)))
}

/// A chunked `application/json` response made of `lines` then whatever arrives on `rx`.
fn stream_response(lines: Vec<Bytes>, rx: Option<mpsc::Receiver<Bytes>>) -> http::Response<Body> {
    let head = futures::stream::iter(
        lines
            .into_iter()
            .map(|b| Ok::<_, std::convert::Infallible>(Frame::data(b))),
    );
    let tail = futures::stream::unfold(rx, |rx| async move {
        let mut rx = rx?;
        let b = rx.recv().await?;
        Some((Ok::<_, std::convert::Infallible>(Frame::data(b)), Some(rx)))
    });
    use futures::StreamExt;
    let body = BodyExt::boxed(StreamBody::new(head.chain(tail)));
    let mut r = http::Response::new(body);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-cache, private"),
    );
    r
}
