//! create, update, patch, delete and deletecollection: decode, check, default, validate,
//! then write to the store with compare-and-swap.

use super::strategy;
use super::{FieldValidation, WriteOptions, content_type, decode_body};
use crate::admission;
use crate::object::{self, meta_mut, now_rfc3339};
use crate::request::{Query, ResourcePath};
use crate::response::{self, Body};
use crate::server::ApiServer;
use capstan_api::{ApiError, ResourceInfo, Subresource, apply, defaults, patch, validation};
use capstan_store::{KeyValue, StoreError};

pub(crate) use super::delete::{delete, delete_collection, finalize_namespace};
use super::delete::{finish_delete, should_delete_during_update};
use serde_json::{Value, json};

/// Attempts of a read-modify-write before giving up on a busy object.
pub(super) const MAX_RETRIES: usize = 8;

pub(crate) fn store_error(
    info: &'static ResourceInfo,
    name: &str,
) -> impl Fn(StoreError) -> ApiError + use<> {
    let name = name.to_string();
    move |e| match e {
        StoreError::AlreadyExists(_) => ApiError::already_exists(info, &name),
        StoreError::NotFound(_) => ApiError::not_found(info, &name),
        StoreError::Conflict { .. } => ApiError::conflict(info, &name),
        StoreError::Compacted {
            requested,
            compacted,
        } => ApiError::expired(format!(
            "too old resource version: {requested} ({compacted})"
        )),
        other => ApiError::internal(other.to_string()),
    }
}

/// Check apiVersion/kind of a request body against the endpoint, filling them when absent.
fn check_type_meta(info: &ResourceInfo, obj: &mut Value) -> Result<(), ApiError> {
    if !obj.is_object() {
        return Err(ApiError::bad_request(format!(
            "{} in version {:?} cannot be handled as a {}: body must be a JSON object",
            info.kind, info.version, info.kind
        )));
    }
    let want = info.api_version();
    match obj.get("apiVersion").and_then(Value::as_str) {
        None | Some("") => obj["apiVersion"] = json!(want),
        Some(v) if v == want => {}
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({want})"
            )));
        }
    }
    match obj.get("kind").and_then(Value::as_str) {
        None | Some("") => obj["kind"] = json!(info.kind),
        Some(k) if k == info.kind => {}
        Some(k) => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                info.kind
            )));
        }
    }
    Ok(())
}

/// Namespace of the body against the URL's.
fn check_namespace(
    info: &ResourceInfo,
    rp: &ResourcePath,
    obj: &mut Value,
) -> Result<(), ApiError> {
    let m = meta_mut(obj);
    if !info.namespaced {
        m.remove("namespace");
        return Ok(());
    }
    let url_ns = rp.namespace.as_deref().unwrap_or_default();
    match m.get("namespace").and_then(Value::as_str) {
        None | Some("") => {
            m.insert("namespace".into(), json!(url_ns));
            Ok(())
        }
        Some(ns) if ns == url_ns => Ok(()),
        Some(_) => Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        )),
    }
}

/// Unknown-field check per fieldValidation, then the typed round trip that drops them.
fn decode_checked(
    info: &ResourceInfo,
    obj: &Value,
    fv: FieldValidation,
) -> Result<(Value, Vec<String>), ApiError> {
    validation::check_decodes(info, obj)?;
    let mut warnings = Vec::new();
    if fv != FieldValidation::Ignore {
        let unknown = validation::unknown_fields(info, obj);
        if !unknown.is_empty() {
            let msgs: Vec<String> = unknown
                .iter()
                .map(|f| format!("unknown field {f:?}"))
                .collect();
            if fv == FieldValidation::Strict {
                return Err(ApiError::bad_request(format!(
                    "{} in version {:?} cannot be handled as a {}: strict decoding error: {}",
                    info.kind,
                    info.version,
                    info.kind,
                    msgs.join(", ")
                )));
            }
            warnings = msgs;
        }
    }
    let normalized = capstan_api::typed::roundtrip(info, obj).map_err(|e| {
        ApiError::bad_request(format!(
            "{} in version {:?} cannot be handled as a {}: {e}",
            info.kind, info.version, info.kind
        ))
    })?;
    Ok((normalized, warnings))
}

/// The written object in the negotiated rendering, with field-validation warnings.
fn respond(
    info: &ResourceInfo,
    obj: &Value,
    headers: &http::HeaderMap,
    q: &Query,
    code: u16,
    warnings: &[String],
) -> Result<http::Response<Body>, ApiError> {
    let json = serde_json::to_vec(obj).map_err(|e| ApiError::internal(e.to_string()))?;
    let r = super::read::render_one(info, json.into(), super::read::rendering(headers)?, q, code)?;
    let mut all = warnings.to_vec();
    all.extend(admission::take_warnings());
    Ok(response::with_warnings(r, &all))
}

/// Serialize for the store: the object without resourceVersion.
pub(super) fn to_store_bytes(obj: &Value) -> Result<Vec<u8>, ApiError> {
    let mut o = obj.clone();
    if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
    }
    serde_json::to_vec(&o).map_err(|e| ApiError::internal(e.to_string()))
}

pub(super) fn with_rv(mut obj: Value, rev: i64) -> Value {
    meta_mut(&mut obj).insert("resourceVersion".into(), json!(rev.to_string()));
    obj
}

pub(super) fn parse_stored(kv: &KeyValue) -> Result<Value, ApiError> {
    let v: Value = serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::internal(format!("stored object {} is corrupt: {e}", kv.key)))?;
    Ok(with_rv(v, kv.mod_revision))
}

pub(crate) async fn create(
    server: &ApiServer,
    rp: &ResourcePath,
    headers: &http::HeaderMap,
    q: &Query,
    body: bytes::Bytes,
) -> Result<http::Response<Body>, ApiError> {
    let info = rp.info();
    if info.namespaced && rp.namespace.is_none() {
        return Err(ApiError::method_not_supported(info, "create"));
    }
    let opts = WriteOptions::from_request(q, headers)?;
    let mut obj = decode_body(info, &body, &content_type(headers))?;
    check_type_meta(info, &mut obj)?;
    check_namespace(info, rp, &mut obj)?;
    let (obj, warnings) = decode_checked(info, &obj, opts.field_validation)?;
    let created = create_object(server, info, obj, &opts).await?;
    respond(info, &created, headers, q, 201, &warnings)
}

/// The create path shared by POST and server-side apply of a new object.
pub(crate) async fn create_object(
    server: &ApiServer,
    info: &'static ResourceInfo,
    mut obj: Value,
    opts: &WriteOptions,
) -> Result<Value, ApiError> {
    meta_mut(&mut obj).insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
    defaults::apply_defaults(info, &mut obj);
    let m = meta_mut(&mut obj);
    if m.get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .is_empty()
        && let Some(g) = m
            .get("generateName")
            .and_then(Value::as_str)
            .filter(|g| !g.is_empty())
    {
        let name = format!("{g}{}", object::random_suffix(5));
        m.insert("name".into(), json!(name));
    }
    if m.get("resourceVersion")
        .and_then(Value::as_str)
        .is_some_and(|s| !s.is_empty())
    {
        return Err(ApiError::bad_request(
            "resourceVersion should not be set on objects to be created",
        ));
    }
    m.remove("resourceVersion");
    m.remove("deletionTimestamp");
    m.remove("deletionGracePeriodSeconds");
    m.insert("creationTimestamp".into(), json!(now_rfc3339()));
    strategy::prepare_for_create(info, &mut obj);
    let name = object::name(&obj).unwrap_or_default().to_string();
    let ns = object::meta_str(&obj, "namespace").map(String::from);
    let user = admission::current_user();
    let req = admission::Request {
        operation: admission::Operation::Create,
        info,
        subresource: None,
        namespace: ns.as_deref(),
        name: &name,
        user: &user,
        old: None,
        dry_run: opts.dry_run,
    };
    admission::mutate(server, &req, &mut obj).await?;
    validation::validate(info, &obj, None)?;
    crate::auth::rbac::escalation::check(server, info, &obj, None).await?;
    admission::validate(server, &req, &obj).await?;
    let allocated = if info.kind == "Service" && info.group.is_empty() {
        Some(strategy::allocate_service(server, &mut obj, None).await?)
    } else {
        None
    };
    if obj["metadata"]
        .get("managedFields")
        .is_none_or(|v| v.as_array().is_none_or(|a| a.is_empty()))
    {
        apply::track_update(info, None, &mut obj, &opts.manager, None, &now_rfc3339());
    }
    if opts.dry_run {
        if let Some(a) = &allocated {
            a.release(server).await;
        }
        return Ok(obj);
    }
    let key = info.store_key(ns.as_deref(), &name);
    let bytes = to_store_bytes(&obj)?;
    match server.store.create(&key, bytes).await {
        Ok(rev) => Ok(with_rv(obj, rev)),
        Err(e) => {
            if let Some(a) = &allocated {
                a.release(server).await;
            }
            Err(store_error(info, &name)(e))
        }
    }
}

/// Run a read-modify-write: `mutate(old)` gives the desired object; retried on conflicts
/// unless the client pinned a resourceVersion.
async fn update_loop<F>(
    server: &ApiServer,
    info: &'static ResourceInfo,
    rp: &ResourcePath,
    opts: &WriteOptions,
    sub: Option<Subresource>,
    mut mutate: F,
) -> Result<(Value, u16), ApiError>
where
    F: FnMut(Option<&Value>) -> Result<Mutation, ApiError>,
{
    let name = rp.name.clone().unwrap_or_default();
    let key = info.store_key(rp.namespace.as_deref(), &name);
    for _ in 0..MAX_RETRIES {
        let cur = server
            .store
            .get(&key)
            .await
            .map_err(store_error(info, &name))?;
        let old = cur.as_ref().map(parse_stored).transpose()?;
        let m = mutate(old.as_ref())?;
        let (mut desired, pinned) = match m {
            Mutation::Create(obj) => {
                let created = create_object(server, info, obj, opts).await;
                match created {
                    Err(e) if e.reason == "AlreadyExists" => continue,
                    other => return other.map(|o| (o, 201)),
                }
            }
            Mutation::Update { obj, pinned } => (obj, pinned),
        };
        let (Some(old), Some(cur)) = (old, cur) else {
            return Err(ApiError::not_found(info, &name));
        };
        if let Some(rv) = pinned
            && rv != cur.mod_revision
        {
            return Err(ApiError::conflict(info, &name));
        }
        if object::name(&desired) != Some(name.as_str()) {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                object::name(&desired).unwrap_or_default()
            )));
        }
        if sub.is_none() {
            defaults::apply_defaults(info, &mut desired);
        }
        let mut new = strategy::prepare_for_update(info, &old, desired, sub);
        validation::validate(info, &new, Some(&old))?;
        crate::auth::rbac::escalation::check(server, info, &new, Some(&old)).await?;
        let user = admission::current_user();
        let req = admission::Request {
            operation: admission::Operation::Update,
            info,
            subresource: sub,
            namespace: rp.namespace.as_deref(),
            name: &name,
            user: &user,
            old: Some(&old),
            dry_run: opts.dry_run,
        };
        admission::validate(server, &req, &new).await?;
        let allocated = if info.kind == "Service" && info.group.is_empty() && sub.is_none() {
            Some(strategy::allocate_service(server, &mut new, Some(&old)).await?)
        } else {
            None
        };
        if strip_rv(&new) == strip_rv(&old) {
            // Nothing changed: no write, the resourceVersion stays; a terminating object left
            // with grace 0 and no finalizers (a delete cut short) is removed, as upstream does.
            if !opts.dry_run && should_delete_during_update(&old, &new) {
                let obj = finish_delete(server, info, &key, &name, &old, cur.mod_revision).await?;
                return Ok((obj, 200));
            }
            return Ok((old, 200));
        }
        let (mut obj, expected) = (new, cur.mod_revision);
        if !opts.manager.is_empty() && !is_apply_result(&obj, &old) {
            apply::track_update(
                info,
                Some(&old),
                &mut obj,
                &opts.manager,
                sub.map(|s| s.name()),
                &now_rfc3339(),
            );
        }
        if opts.dry_run {
            if let Some(a) = &allocated {
                a.release(server).await;
            }
            return Ok((obj, 200));
        }
        let finalize_now = should_delete_during_update(&old, &obj);
        match server
            .store
            .update(&key, to_store_bytes(&obj)?, expected)
            .await
        {
            Ok(rev) => {
                if info.kind == "Service" && info.group.is_empty() {
                    strategy::release_service_diff(server, &old, &obj).await;
                }
                let obj = with_rv(obj, rev);
                if finalize_now {
                    return finish_delete(server, info, &key, &name, &obj, rev)
                        .await
                        .map(|o| (o, 200));
                }
                return Ok((obj, 200));
            }
            Err(StoreError::Conflict { .. }) if pinned.is_none() => {
                if let Some(a) = &allocated {
                    a.release(server).await;
                }
                continue;
            }
            Err(e) => {
                if let Some(a) = &allocated {
                    a.release(server).await;
                }
                return Err(store_error(info, &name)(e));
            }
        }
    }
    Err(ApiError::conflict(info, &name))
}

/// Server-side apply writes its own managedFields; other writes get Update entries.
fn is_apply_result(new: &Value, old: &Value) -> bool {
    new["metadata"]["managedFields"] != old["metadata"]["managedFields"]
}

fn strip_rv(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
    }
    v
}

pub(crate) enum Mutation {
    Create(Value),
    Update { obj: Value, pinned: Option<i64> },
}

pub(crate) fn pinned_rv(obj: &Value) -> Result<Option<i64>, ApiError> {
    match object::meta_str(obj, "resourceVersion") {
        None => Ok(None),
        Some(s) => s
            .parse()
            .map(Some)
            .map_err(|_| ApiError::bad_request(format!("invalid resource version: {s:?}"))),
    }
}

pub(crate) async fn update(
    server: &ApiServer,
    rp: &ResourcePath,
    headers: &http::HeaderMap,
    q: &Query,
    body: bytes::Bytes,
) -> Result<http::Response<Body>, ApiError> {
    update_with(server, rp, headers, q, body, None).await
}

/// PUT of the main resource or of `/status`.
pub(crate) async fn update_with(
    server: &ApiServer,
    rp: &ResourcePath,
    headers: &http::HeaderMap,
    q: &Query,
    body: bytes::Bytes,
    sub: Option<Subresource>,
) -> Result<http::Response<Body>, ApiError> {
    let info = rp.info();
    let opts = WriteOptions::from_request(q, headers)?;
    let mut obj = decode_body(info, &body, &content_type(headers))?;
    check_type_meta(info, &mut obj)?;
    check_namespace(info, rp, &mut obj)?;
    let (obj, warnings) = decode_checked(info, &obj, opts.field_validation)?;
    let pinned = pinned_rv(&obj)?;
    let (out, code) = update_loop(server, info, rp, &opts, sub, |old| match old {
        None => Err(ApiError::not_found(
            info,
            rp.name.as_deref().unwrap_or_default(),
        )),
        Some(_) => Ok(Mutation::Update {
            obj: obj.clone(),
            pinned,
        }),
    })
    .await?;
    respond(info, &out, headers, q, code, &warnings)
}

pub(crate) async fn patch(
    server: &ApiServer,
    rp: &ResourcePath,
    headers: &http::HeaderMap,
    q: &Query,
    body: bytes::Bytes,
) -> Result<http::Response<Body>, ApiError> {
    patch_with(server, rp, headers, q, body, None).await
}

/// PATCH of the main resource or of `/status` with any of the four patch types.
pub(crate) async fn patch_with(
    server: &ApiServer,
    rp: &ResourcePath,
    headers: &http::HeaderMap,
    q: &Query,
    body: bytes::Bytes,
    sub: Option<Subresource>,
) -> Result<http::Response<Body>, ApiError> {
    let info = rp.info();
    let opts = WriteOptions::from_request(q, headers)?;
    let ct = content_type(headers);
    let name = rp.name.clone().unwrap_or_default();
    let is_apply = ct == "application/apply-patch+yaml";
    if is_apply && q.get("fieldManager").is_none() {
        return Err(ApiError::bad_request(
            "PATCH requests with application/apply-patch+yaml require a fieldManager query parameter",
        ));
    }
    let applied = if is_apply {
        let mut a = decode_body(info, &body, &ct)?;
        check_type_meta(info, &mut a)?;
        check_namespace(info, rp, &mut a)?;
        Some(a)
    } else {
        None
    };
    let mut warnings = Vec::new();
    let fv = opts.field_validation;
    let (out, code) = update_loop(server, info, rp, &opts, sub, |old| {
        let now = now_rfc3339();
        let patched = match (&applied, old) {
            (Some(a), None) => {
                let merged =
                    apply::server_side_apply(info, None, a, &opts.manager, opts.force, &now)?;
                let (obj, w) = decode_checked(info, &merged, fv)?;
                warnings = w;
                return Ok(Mutation::Create(obj));
            }
            (Some(a), Some(old)) => {
                apply::server_side_apply(info, Some(old), a, &opts.manager, opts.force, &now)?
            }
            (None, None) => return Err(ApiError::not_found(info, &name)),
            (None, Some(old)) => match ct.as_str() {
                "application/json-patch+json" => patch::apply_json_patch(old, &body)?,
                "application/merge-patch+json" => patch::apply_merge_patch(old, &body)?,
                "application/strategic-merge-patch+json" => {
                    patch::apply_strategic_merge_patch(info, old, &body)?
                }
                other => return Err(ApiError::unsupported_media_type(other)),
            },
        };
        let old = old.expect("checked above");
        let mut patched = patched;
        check_type_meta(info, &mut patched)?;
        let pinned = match (
            object::meta_str(&patched, "resourceVersion"),
            object::meta_str(old, "resourceVersion"),
        ) {
            (Some(p), Some(o)) if p != o => pinned_rv(&patched)?,
            _ => None,
        };
        if object::meta_str(&patched, "namespace") != object::meta_str(old, "namespace") {
            return Err(ApiError::bad_request(
                "the namespace of the object does not match the namespace on the request",
            ));
        }
        let (obj, w) = decode_checked(info, &patched, fv)?;
        warnings = w;
        Ok(Mutation::Update { obj, pinned })
    })
    .await?;
    respond(info, &out, headers, q, code, &warnings)
}
