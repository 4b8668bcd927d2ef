//! delete and deletecollection with upstream's graceful-deletion semantics: a terminating
//! object's grace period may only shrink, and it is removed once grace and finalizers allow.

use super::write::{MAX_RETRIES, parse_stored, store_error, to_store_bytes, with_rv};
use crate::admission;
use crate::object::{self, meta_mut};
use crate::request::{Query, ResourcePath};
use crate::response::{self, Body};
use crate::server::ApiServer;
use capstan_api::resources::RESOURCES;
use capstan_api::{ApiError, ResourceInfo};
use capstan_store::StoreError;
use serde_json::{Value, json};

/// DeleteOptions from the body (if any) and the query string.
struct DeleteOptions {
    grace: Option<i64>,
    propagation: Option<String>,
    uid: Option<String>,
    rv: Option<String>,
    dry_run: bool,
}

fn delete_options(q: &Query, body: &[u8]) -> Result<DeleteOptions, ApiError> {
    let b: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?
    };
    let dry = q.dry_run()?
        || b["dryRun"]
            .as_array()
            .is_some_and(|a| a.iter().any(|v| v == "All"));
    let prop = b["propagationPolicy"]
        .as_str()
        .map(String::from)
        .or_else(|| q.get("propagationPolicy").map(String::from));
    if let Some(p) = &prop
        && !matches!(p.as_str(), "Orphan" | "Background" | "Foreground")
    {
        return Err(ApiError::bad_request(format!(
            "propagationPolicy: Unsupported value: {p:?}: supported values: \"Foreground\", \"Background\", \"Orphan\""
        )));
    }
    Ok(DeleteOptions {
        grace: b["gracePeriodSeconds"]
            .as_i64()
            .or(q.int("gracePeriodSeconds")?)
            // Upstream treats a negative grace period as 1 s on the delete path.
            .map(|g| if g < 0 { 1 } else { g }),
        propagation: prop,
        uid: b["preconditions"]["uid"].as_str().map(String::from),
        rv: b["preconditions"]["resourceVersion"]
            .as_str()
            .map(String::from),
        dry_run: dry,
    })
}

pub(crate) async fn delete(
    server: &ApiServer,
    rp: &ResourcePath,
    q: &Query,
    body: bytes::Bytes,
) -> Result<http::Response<Body>, ApiError> {
    let info = rp.info();
    let opts = delete_options(q, &body)?;
    let name = rp.name.clone().unwrap_or_default();
    let (obj, code) = delete_one(server, info, rp.namespace.as_deref(), &name, &opts).await?;
    Ok(response::json(code, &obj))
}

async fn delete_one(
    server: &ApiServer,
    info: &'static ResourceInfo,
    ns: Option<&str>,
    name: &str,
    opts: &DeleteOptions,
) -> Result<(Value, u16), ApiError> {
    let key = info.store_key(ns, name);
    let user = admission::current_user();
    let mut rv_pre = opts.rv.clone();
    for _ in 0..MAX_RETRIES {
        let cur = server
            .store
            .get(&key)
            .await
            .map_err(store_error(info, name))?
            .ok_or_else(|| ApiError::not_found(info, name))?;
        let obj = parse_stored(&cur)?;
        let req = admission::Request {
            operation: admission::Operation::Delete,
            info,
            subresource: None,
            namespace: ns,
            name,
            user: &user,
            old: Some(&obj),
            dry_run: opts.dry_run,
        };
        admission::admit_delete(server, &req, &obj).await?;
        if let Some(uid) = &opts.uid {
            let actual = object::meta_str(&obj, "uid").unwrap_or_default();
            if uid != actual {
                return Err(ApiError::conflict_msg(
                    info,
                    name,
                    &format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {actual}"
                    ),
                ));
            }
        }
        if let Some(rv) = &rv_pre
            && *rv != cur.mod_revision.to_string()
        {
            return Err(ApiError::conflict_msg(
                info,
                name,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    cur.mod_revision
                ),
            ));
        }
        let mut finalizers = object::finalizers(&obj);
        match opts.propagation.as_deref() {
            Some("Orphan") if !finalizers.iter().any(|f| f == "orphan") => {
                finalizers.push("orphan".into())
            }
            Some("Foreground") if !finalizers.iter().any(|f| f == "foregroundDeletion") => {
                finalizers.push("foregroundDeletion".into())
            }
            _ => {}
        }
        let is_namespace = info.kind == "Namespace" && info.group.is_empty();
        let already = object::meta_str(&obj, "deletionTimestamp").is_some();
        // Upstream's BeforeDelete on a terminating object: a pending grace period may only
        // shrink; grace 0 (or none) means the deletion is due and only finalizers hold it.
        let pending_grace = already
            .then(|| obj["metadata"]["deletionGracePeriodSeconds"].as_i64())
            .flatten()
            .filter(|g| *g > 0);
        if let Some((grace, period)) = pending_grace
            .zip(opts.grace)
            .filter(|(grace, period)| period < grace)
        {
            let upd = shortened(&obj, grace, period, &finalizers);
            if opts.dry_run {
                return Ok((upd, 200));
            }
            let rev = match server
                .store
                .update(&key, to_store_bytes(&upd)?, cur.mod_revision)
                .await
            {
                Ok(rev) => rev,
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(store_error(info, name)(e)),
            };
            let upd = with_rv(upd, rev);
            if period > 0 || !finalizers.is_empty() {
                return Ok((upd, 200));
            }
            // Cut to 0 with nothing holding it: watchers saw MODIFIED, now the removal.
            match server.store.delete(&key, Some(rev)).await {
                Ok(_) => {
                    after_delete(server, info, &upd).await;
                    return Ok((upd, 200));
                }
                Err(StoreError::NotFound(_)) => return Ok((upd, 200)),
                Err(StoreError::Conflict { .. }) => {
                    // Changed since our write: the next round sees grace 0 and deletes (a
                    // resourceVersion precondition now names our write, as upstream's does).
                    if rv_pre.is_some() {
                        rv_pre = Some(rev.to_string());
                    }
                    continue;
                }
                Err(e) => return Err(store_error(info, name)(e)),
            }
        }
        let graceful_pod = !already
            && info.kind == "Pod"
            && info.group.is_empty()
            && obj["spec"]["nodeName"]
                .as_str()
                .is_some_and(|n| !n.is_empty())
            && obj["status"]["phase"]
                .as_str()
                .is_none_or(|p| p != "Succeeded" && p != "Failed")
            && opts.grace.unwrap_or(1) != 0;
        let keep = !finalizers.is_empty()
            || graceful_pod
            || pending_grace.is_some()
            || (is_namespace && ns_has_spec_finalizers(&obj));
        if !keep {
            if opts.dry_run {
                return Ok((obj, 200));
            }
            match server.store.delete(&key, Some(cur.mod_revision)).await {
                Ok((_rev, _)) => {
                    after_delete(server, info, &obj).await;
                    return Ok((obj, 200));
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(store_error(info, name)(e)),
            }
        }
        if already && finalizers == object::finalizers(&obj) {
            return Ok((obj, 202));
        }
        let mut upd = obj.clone();
        let grace = if graceful_pod {
            opts.grace
                .or_else(|| obj["spec"]["terminationGracePeriodSeconds"].as_i64())
                .unwrap_or(30)
        } else {
            0
        };
        {
            let m = meta_mut(&mut upd);
            if !already {
                let ts = offset(jiff::Timestamp::now(), grace);
                m.insert("deletionTimestamp".into(), json!(rfc3339(ts)));
                m.insert("deletionGracePeriodSeconds".into(), json!(grace));
            }
            if !finalizers.is_empty() {
                m.insert("finalizers".into(), json!(finalizers));
            }
        }
        if is_namespace {
            upd["status"]["phase"] = json!("Terminating");
        }
        if opts.dry_run {
            return Ok((upd, 200));
        }
        match server
            .store
            .update(&key, to_store_bytes(&upd)?, cur.mod_revision)
            .await
        {
            Ok(rev) => return Ok((with_rv(upd, rev), 200)),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(store_error(info, name)(e)),
        }
    }
    Err(ApiError::conflict(info, name))
}

/// `obj`'s pending `grace` cut to `period`: the deadline becomes the deletion's start plus
/// `period` (upstream's BeforeDelete), so it never moves later.
fn shortened(obj: &Value, grace: i64, period: i64, finalizers: &[String]) -> Value {
    let now = jiff::Timestamp::now();
    let start = object::meta_str(obj, "deletionTimestamp")
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .map_or(now, |t| offset(t, -grace));
    let mut upd = obj.clone();
    let m = meta_mut(&mut upd);
    m.insert(
        "deletionTimestamp".into(),
        json!(rfc3339(offset(start, period))),
    );
    m.insert("deletionGracePeriodSeconds".into(), json!(period));
    if !finalizers.is_empty() {
        m.insert("finalizers".into(), json!(finalizers));
    }
    upd
}

/// `t` moved by `secs`, saturating instead of overflowing on absurd grace periods.
fn offset(t: jiff::Timestamp, secs: i64) -> jiff::Timestamp {
    t.checked_add(jiff::SignedDuration::from_secs(secs))
        .unwrap_or(if secs < 0 {
            jiff::Timestamp::MIN
        } else {
            jiff::Timestamp::MAX
        })
}

fn rfc3339(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// An update may remove a terminating object only once its grace period is over (0 or
/// unset) and the new version has no finalizers (upstream's shouldDeleteDuringUpdate).
pub(super) fn should_delete_during_update(old: &Value, new: &Value) -> bool {
    object::meta_str(old, "deletionTimestamp").is_some()
        && object::finalizers(new).is_empty()
        && old["metadata"]["deletionGracePeriodSeconds"]
            .as_i64()
            .is_none_or(|g| g == 0)
}

fn ns_has_spec_finalizers(ns: &Value) -> bool {
    ns["spec"]["finalizers"]
        .as_array()
        .is_some_and(|a| !a.is_empty())
}

pub(super) async fn after_delete(server: &ApiServer, info: &ResourceInfo, obj: &Value) {
    if info.kind == "Service" && info.group.is_empty() {
        server.allocator.release_service(obj).await;
    }
}

/// An update left the object with a deletionTimestamp and no finalizers: remove it.
pub(super) async fn finish_delete(
    server: &ApiServer,
    info: &'static ResourceInfo,
    key: &str,
    name: &str,
    obj: &Value,
    rev: i64,
) -> Result<Value, ApiError> {
    if info.kind == "Namespace" && info.group.is_empty() && ns_has_spec_finalizers(obj) {
        return Ok(obj.clone());
    }
    match server.store.delete(key, Some(rev)).await {
        Ok(_) | Err(StoreError::NotFound(_)) => {
            after_delete(server, info, obj).await;
            Ok(obj.clone())
        }
        Err(StoreError::Conflict { .. }) => Ok(obj.clone()),
        Err(e) => Err(store_error(info, name)(e)),
    }
}

pub(crate) async fn delete_collection(
    server: &ApiServer,
    rp: &ResourcePath,
    q: &Query,
    body: bytes::Bytes,
) -> Result<http::Response<Body>, ApiError> {
    let info = rp.info();
    let opts = delete_options(q, &body)?;
    let filter = super::read::Filter::from_query(info, q)?;
    super::read::consistent(server).await?;
    let (items, _) = server
        .cache
        .list(rp.resource, rp.namespace.as_deref(), None);
    let mut deleted = Vec::new();
    for o in items.iter().filter(|o| filter.matches(o)) {
        match delete_one(server, info, o.namespace.as_deref(), &o.name, &opts).await {
            Ok((v, _)) => deleted.push(v),
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    let rev = server.cache.revision();
    Ok(response::json(
        200,
        &json!({"kind": info.list_kind(), "apiVersion": info.api_version(), "metadata": {"resourceVersion": rev.to_string()}, "items": deleted}),
    ))
}

/// `namespaces/NAME/finalize`: set `spec.finalizers` (the namespace controller removes
/// "kubernetes" once the namespace is empty); a terminating namespace left with no finalizers
/// of either kind is deleted by the same call, as upstream's finalize storage does.
pub(crate) async fn finalize_namespace(
    server: &ApiServer,
    name: &str,
    finalizers: Vec<Value>,
    pinned: Option<i64>,
) -> Result<Value, ApiError> {
    let info = &RESOURCES[RESOURCES
        .iter()
        .position(|r| r.group.is_empty() && r.plural == "namespaces")
        .expect("namespaces served")];
    let key = info.store_key(None, name);
    for _ in 0..MAX_RETRIES {
        let cur = server
            .store
            .get(&key)
            .await
            .map_err(store_error(info, name))?
            .ok_or_else(|| ApiError::not_found(info, name))?;
        if pinned.is_some_and(|rv| rv != cur.mod_revision) {
            return Err(ApiError::conflict(info, name));
        }
        let mut obj = parse_stored(&cur)?;
        obj["spec"]["finalizers"] = json!(finalizers);
        if object::meta_str(&obj, "deletionTimestamp").is_some()
            && finalizers.is_empty()
            && object::finalizers(&obj).is_empty()
        {
            match server.store.delete(&key, Some(cur.mod_revision)).await {
                Ok(_) | Err(StoreError::NotFound(_)) => return Ok(obj),
                Err(StoreError::Conflict { .. }) if pinned.is_none() => continue,
                Err(e) => return Err(store_error(info, name)(e)),
            }
        }
        match server
            .store
            .update(&key, to_store_bytes(&obj)?, cur.mod_revision)
            .await
        {
            Ok(rev) => return Ok(with_rv(obj, rev)),
            Err(StoreError::Conflict { .. }) if pinned.is_none() => continue,
            Err(e) => return Err(store_error(info, name)(e)),
        }
    }
    Err(ApiError::conflict(info, name))
}
