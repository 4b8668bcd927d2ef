//! get and list, served from the store (get) and the watch cache (list).

use crate::cache::{self, CachedObject};
use crate::request::{self, Query, Rendering, ResourcePath};
use crate::response::{self, Body};
use crate::server::ApiServer;
use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};
use capstan_api::selectors::{FieldSelector, LabelSelector};
use capstan_api::table::{self, IncludeObject};
use capstan_api::{ApiError, ResourceInfo};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

/// How long a list waits for the cache to reach a requested revision.
const CACHE_WAIT: Duration = Duration::from_secs(3);

pub(crate) fn rendering(headers: &http::HeaderMap) -> Result<Rendering, ApiError> {
    request::negotiate(
        headers
            .get(http::header::ACCEPT)
            .and_then(|v| v.to_str().ok()),
    )
}

pub(crate) fn include_object(q: &Query) -> IncludeObject {
    match q.get("includeObject") {
        Some("None") => IncludeObject::None,
        Some("Object") => IncludeObject::Object,
        _ => IncludeObject::Metadata,
    }
}

fn now() -> jiff::Timestamp {
    jiff::Timestamp::now()
}

/// PartialObjectMetadata of an object.
pub(crate) fn partial_metadata(obj: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj.get("metadata").cloned().unwrap_or(json!({}))})
}

/// Render one object in the negotiated form.
pub(crate) fn render_one(
    info: &ResourceInfo,
    json: Bytes,
    r: Rendering,
    q: &Query,
    code: u16,
) -> Result<http::Response<Body>, ApiError> {
    match r {
        Rendering::Json => Ok(response::json_bytes(code, json)),
        Rendering::Table => {
            let v: Value =
                serde_json::from_slice(&json).map_err(|e| ApiError::internal(e.to_string()))?;
            let rv = v["metadata"]["resourceVersion"].clone();
            let mut t = table::to_table(info, std::slice::from_ref(&v), include_object(q), now());
            t["metadata"] = json!({"resourceVersion": rv});
            Ok(response::json(code, &t))
        }
        Rendering::Metadata => {
            let v: Value =
                serde_json::from_slice(&json).map_err(|e| ApiError::internal(e.to_string()))?;
            Ok(response::json(code, &partial_metadata(&v)))
        }
    }
}

pub(crate) async fn get(
    server: &ApiServer,
    rp: &ResourcePath,
    headers: &http::HeaderMap,
    q: &Query,
) -> Result<http::Response<Body>, ApiError> {
    let info = rp.info();
    let r = rendering(headers)?;
    let name = rp.name.as_deref().unwrap_or_default();
    let key = info.store_key(rp.namespace.as_deref(), name);
    let obj = if q.get("resourceVersion") == Some("0") {
        server.cache.get(rp.resource, &key)
    } else {
        match server
            .store
            .get(&key)
            .await
            .map_err(super::write::store_error(info, name))?
        {
            Some(kv) => Some(Arc::new(
                cache::cached_object(
                    info,
                    &key,
                    rp.namespace.clone(),
                    name.to_string(),
                    &kv.value,
                    kv.mod_revision,
                )
                .map_err(|e| ApiError::internal(e.to_string()))?,
            )),
            None => None,
        }
    };
    let obj = obj.ok_or_else(|| ApiError::not_found(info, name))?;
    render_one(info, obj.json.clone(), r, q, 200)
}

/// Selectors of a list or watch request.
pub(crate) struct Filter {
    pub labels: Option<LabelSelector>,
    pub fields: Option<FieldSelector>,
}

impl Filter {
    pub fn from_query(info: &ResourceInfo, q: &Query) -> Result<Filter, ApiError> {
        let labels = q
            .get("labelSelector")
            .map(LabelSelector::parse)
            .transpose()?;
        let fields = q
            .get("fieldSelector")
            .map(|s| FieldSelector::parse(info, s))
            .transpose()?;
        Ok(Filter { labels, fields })
    }
    pub fn matches(&self, o: &CachedObject) -> bool {
        self.labels.as_ref().is_none_or(|l| l.matches(&o.labels))
            && self.fields.as_ref().is_none_or(|f| f.matches(&o.fields))
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_none() && self.fields.is_none()
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    v: String,
    rv: i64,
    start: String,
}

fn encode_continue(rv: i64, start: &str) -> String {
    let t = ContinueToken {
        v: "meta.k8s.io/v1".into(),
        rv,
        start: start.into(),
    };
    base64::engine::general_purpose::URL_SAFE.encode(serde_json::to_vec(&t).unwrap_or_default())
}

fn decode_continue(s: &str) -> Result<ContinueToken, ApiError> {
    let bad = || {
        ApiError::bad_request(
            "continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)",
        )
    };
    let raw = base64::engine::general_purpose::URL_SAFE
        .decode(s)
        .map_err(|_| bad())?;
    let t: ContinueToken = serde_json::from_slice(&raw).map_err(|_| bad())?;
    if t.v != "meta.k8s.io/v1" || t.rv <= 0 {
        return Err(bad());
    }
    Ok(t)
}

fn parse_rv(s: &str) -> Result<i64, ApiError> {
    s.parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(|| ApiError::bad_request(format!("invalid resource version: {s:?}")))
}

/// Wait until the cache is at least as new as the store (a consistent read from cache).
pub(crate) async fn consistent(server: &ApiServer) -> Result<(), ApiError> {
    let cur = server
        .store
        .current_revision()
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    server
        .cache
        .wait_for(cur, CACHE_WAIT)
        .await
        .map_err(|e| ApiError::timeout(e.to_string()))
}

/// Items read from the store at an exact revision, filtered, at most `limit` (0 = all).
async fn store_list(
    server: &ApiServer,
    rp: &ResourcePath,
    filter: &Filter,
    start_after: Option<String>,
    rev: i64,
    limit: usize,
) -> Result<(Vec<Arc<CachedObject>>, bool), ApiError> {
    let info = rp.info();
    let prefix = info.store_namespace_prefix(rp.namespace.as_deref());
    let mut out = Vec::new();
    let mut start = start_after;
    loop {
        let page = server.store.list(&prefix, start.as_deref(), 1000, Some(rev)).await.map_err(|e| match e {
            capstan_store::StoreError::Compacted { .. } => ApiError::expired(format!(
                "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list. (resourceVersion {rev} is too old)"
            )),
            other => super::write::store_error(info, "")(other),
        })?;
        for kv in &page.items {
            if let Some(o) =
                cache::from_kv(&server.cache, kv).map_err(|e| ApiError::internal(e.to_string()))?
                && filter.matches(&o)
            {
                if limit > 0 && out.len() == limit {
                    return Ok((out, true));
                }
                out.push(Arc::new(o));
            }
        }
        if !page.more {
            return Ok((out, false));
        }
        start = page.items.last().map(|kv| kv.key.clone());
    }
}

pub(crate) async fn list(
    server: &ApiServer,
    rp: &ResourcePath,
    headers: &http::HeaderMap,
    q: &Query,
) -> Result<http::Response<Body>, ApiError> {
    let info = rp.info();
    let r = rendering(headers)?;
    let filter = Filter::from_query(info, q)?;
    let limit = q
        .int("limit")?
        .filter(|l| *l > 0)
        .map(|l| l as usize)
        .unwrap_or(0);
    let (items, rev, more): (Vec<Arc<CachedObject>>, i64, bool) = if let Some(c) = q.get("continue")
    {
        if q.get("resourceVersion").is_some_and(|v| v != "0") {
            return Err(ApiError::bad_request(
                "specifying resource version is not allowed when using continue",
            ));
        }
        let token = decode_continue(c)?;
        let (all, rev) =
            server
                .cache
                .list(rp.resource, rp.namespace.as_deref(), Some(&token.start));
        if rev == token.rv {
            let (items, more) = take(all, &filter, limit);
            (items, rev, more)
        } else {
            let (items, more) =
                store_list(server, rp, &filter, Some(token.start), token.rv, limit).await?;
            (items, token.rv, more)
        }
    } else {
        let exact = q.get("resourceVersionMatch") == Some("Exact");
        match (q.get("resourceVersion"), exact) {
            (Some(v), true) => {
                let rev = parse_rv(v)?;
                let (items, more) = store_list(server, rp, &filter, None, rev, limit).await?;
                (items, rev, more)
            }
            (None, true) => {
                return Err(ApiError::bad_request(
                    "resourceVersionMatch is forbidden unless resourceVersion is provided",
                ));
            }
            (Some("0"), false) => {
                let (all, rev) = server
                    .cache
                    .list(rp.resource, rp.namespace.as_deref(), None);
                let (items, more) = take(all, &filter, limit);
                (items, rev, more)
            }
            (Some(v), false) => {
                let want = parse_rv(v)?;
                server
                    .cache
                    .wait_for(want, CACHE_WAIT)
                    .await
                    .map_err(|e| ApiError::timeout(e.to_string()))?;
                let (all, rev) = server
                    .cache
                    .list(rp.resource, rp.namespace.as_deref(), None);
                let (items, more) = take(all, &filter, limit);
                (items, rev, more)
            }
            (None, false) => {
                consistent(server).await?;
                let (all, rev) = server
                    .cache
                    .list(rp.resource, rp.namespace.as_deref(), None);
                let (items, more) = take(all, &filter, limit);
                (items, rev, more)
            }
        }
    };
    let cont = if more {
        items.last().map(|o| encode_continue(rev, &o.key))
    } else {
        None
    };
    let remaining = if more && server.cache.revision() == rev {
        remaining(server, rp, &filter, items.last())
    } else {
        None
    };
    render_list(info, &items, rev, cont, remaining, r, q)
}

fn take(
    all: Vec<Arc<CachedObject>>,
    filter: &Filter,
    limit: usize,
) -> (Vec<Arc<CachedObject>>, bool) {
    let mut out = Vec::new();
    for o in all {
        if filter.matches(&o) {
            if limit > 0 && out.len() == limit {
                return (out, true);
            }
            out.push(o);
        }
    }
    (out, false)
}

/// Items after `last` in the cache, for `remainingItemCount` (only without selectors, as upstream).
fn remaining(
    server: &ApiServer,
    rp: &ResourcePath,
    filter: &Filter,
    last: Option<&Arc<CachedObject>>,
) -> Option<usize> {
    if !filter.is_empty() {
        return None;
    }
    let last = last?;
    let (rest, _) = server
        .cache
        .list(rp.resource, rp.namespace.as_deref(), Some(&last.key));
    Some(rest.len())
}

fn list_metadata(rev: i64, cont: &Option<String>, remaining: Option<usize>) -> Value {
    let mut m = json!({"resourceVersion": rev.to_string()});
    if let Some(c) = cont {
        m["continue"] = json!(c);
    }
    if let Some(n) = remaining {
        m["remainingItemCount"] = json!(n);
    }
    m
}

fn render_list(
    info: &ResourceInfo,
    items: &[Arc<CachedObject>],
    rev: i64,
    cont: Option<String>,
    remaining: Option<usize>,
    r: Rendering,
    q: &Query,
) -> Result<http::Response<Body>, ApiError> {
    match r {
        Rendering::Json => {
            let head = json!({"kind": info.list_kind(), "apiVersion": info.api_version(), "metadata": list_metadata(rev, &cont, remaining)});
            let head = serde_json::to_vec(&head).map_err(|e| ApiError::internal(e.to_string()))?;
            let total: usize = items.iter().map(|o| o.json.len() + 1).sum();
            let mut buf = BytesMut::with_capacity(head.len() + total + 16);
            buf.put_slice(&head[..head.len() - 1]);
            buf.put_slice(b",\"items\":[");
            for (i, o) in items.iter().enumerate() {
                if i > 0 {
                    buf.put_u8(b',');
                }
                buf.put_slice(&o.json);
            }
            buf.put_slice(b"]}");
            Ok(response::json_bytes(200, buf.freeze()))
        }
        Rendering::Table => Ok(response::json_bytes(
            200,
            table_bytes(info, items, list_metadata(rev, &cont, remaining), q)?,
        )),
        Rendering::Metadata => {
            let values = parse_all(items)?;
            let items: Vec<Value> = values.iter().map(partial_metadata).collect();
            let l = json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": list_metadata(rev, &cont, remaining), "items": items});
            Ok(response::json(200, &l))
        }
    }
}

fn parse_all(items: &[Arc<CachedObject>]) -> Result<Vec<Value>, ApiError> {
    items
        .iter()
        .map(|o| serde_json::from_slice(&o.json).map_err(|e| ApiError::internal(e.to_string())))
        .collect()
}

/// A Table of `items`, rendered one object at a time into bytes so a large list never holds
/// every object (or every row) as a JSON tree at once.
fn table_bytes(
    info: &ResourceInfo,
    items: &[Arc<CachedObject>],
    metadata: Value,
    q: &Query,
) -> Result<Bytes, ApiError> {
    let ser = |v: &Value| serde_json::to_vec(v).map_err(|e| ApiError::internal(e.to_string()));
    let now = now();
    let include = include_object(q);
    let mut head = table::to_table(info, &[], include, now);
    head["metadata"] = metadata;
    head["rows"] = json!([]);
    let head = ser(&head)?;
    // `head` ends with `"rows":[]}`; splice the rows in before the closing `]}`.
    let split = head.len() - 2;
    let mut buf = BytesMut::with_capacity(split + items.len() * 256 + 2);
    buf.put_slice(&head[..split]);
    for (i, o) in items.iter().enumerate() {
        let v: Value =
            serde_json::from_slice(&o.json).map_err(|e| ApiError::internal(e.to_string()))?;
        if i > 0 {
            buf.put_u8(b',');
        }
        buf.put_slice(&ser(&table::to_row(info, &v, include, now))?);
    }
    buf.put_slice(b"]}");
    Ok(buf.freeze())
}
