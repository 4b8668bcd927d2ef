//! Subresources: `/status` (reads and writes of .status only), `/scale` (the autoscaling/v1
//! Scale view of .spec.replicas) and `pods/binding`.

use super::read;
use super::write;
use crate::request::{Query, ResourcePath};
use crate::response::{self, Body};
use crate::server::ApiServer;
use capstan_api::{ApiError, Subresource, patch};
use capstan_store::StoreError;
use http::Method;
use serde_json::{Value, json};

pub(crate) async fn handle(
    server: &ApiServer,
    rp: &ResourcePath,
    sub: Subresource,
    method: &Method,
    headers: &http::HeaderMap,
    q: &Query,
    body: bytes::Bytes,
) -> Result<http::Response<Body>, ApiError> {
    match (sub, method) {
        (Subresource::Status, &Method::GET) => read::get(server, rp, headers, q).await,
        (Subresource::Status, &Method::PUT) => {
            write::update_with(server, rp, headers, q, body, Some(sub)).await
        }
        (Subresource::Status, &Method::PATCH) => {
            write::patch_with(server, rp, headers, q, body, Some(sub)).await
        }
        (Subresource::Scale, &Method::GET) => get_scale(server, rp).await,
        (Subresource::Scale, &Method::PUT | &Method::PATCH) => {
            update_scale(server, rp, headers, q, method, body).await
        }
        (Subresource::Binding, &Method::POST) => bind(server, rp, body).await,
        (Subresource::Token, &Method::POST) => {
            super::token::create(server, rp, headers, body).await
        }
        (Subresource::Finalize, &Method::PUT) => finalize(server, rp, headers, q, body).await,
        _ => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource ({method})"),
        )),
    }
}

async fn current(server: &ApiServer, rp: &ResourcePath) -> Result<(Value, i64), ApiError> {
    let info = rp.info();
    let name = rp.name.as_deref().unwrap_or_default();
    let key = info.store_key(rp.namespace.as_deref(), name);
    let kv = server
        .store
        .get(&key)
        .await
        .map_err(write::store_error(info, name))?
        .ok_or_else(|| ApiError::not_found(info, name))?;
    let mut v: Value =
        serde_json::from_slice(&kv.value).map_err(|e| ApiError::internal(e.to_string()))?;
    v["metadata"]["resourceVersion"] = json!(kv.mod_revision.to_string());
    Ok((v, kv.mod_revision))
}

/// Label selector of a workload as the string form Scale.status.selector carries.
fn selector_string(obj: &Value) -> String {
    let sel = &obj["spec"]["selector"];
    let mut parts: Vec<String> = sel["matchLabels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    if let Some(exprs) = sel["matchExpressions"].as_array() {
        for e in exprs {
            let key = e["key"].as_str().unwrap_or_default();
            let vals: Vec<&str> = e["values"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            parts.push(match e["operator"].as_str().unwrap_or_default() {
                "In" => format!("{key} in ({})", vals.join(",")),
                "NotIn" => format!("{key} notin ({})", vals.join(",")),
                "Exists" => key.to_string(),
                _ => format!("!{key}"),
            });
        }
    }
    parts.join(",")
}

fn scale_of(obj: &Value) -> Value {
    let m = &obj["metadata"];
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {"name": m["name"], "namespace": m["namespace"], "uid": m["uid"], "resourceVersion": m["resourceVersion"], "creationTimestamp": m["creationTimestamp"]},
        "spec": {"replicas": obj["spec"]["replicas"].as_i64().unwrap_or(1)},
        "status": {"replicas": obj["status"]["replicas"].as_i64().unwrap_or(0), "selector": selector_string(obj)},
    })
}

async fn get_scale(
    server: &ApiServer,
    rp: &ResourcePath,
) -> Result<http::Response<Body>, ApiError> {
    let (obj, _) = current(server, rp).await?;
    Ok(response::json(200, &scale_of(&obj)))
}

async fn update_scale(
    server: &ApiServer,
    rp: &ResourcePath,
    headers: &http::HeaderMap,
    q: &Query,
    method: &Method,
    body: bytes::Bytes,
) -> Result<http::Response<Body>, ApiError> {
    let info = rp.info();
    let name = rp.name.as_deref().unwrap_or_default();
    for _ in 0..8 {
        let (obj, rev) = current(server, rp).await?;
        let scale = scale_of(&obj);
        let ct = super::content_type(headers);
        let new_scale: Value = if method == Method::PUT {
            serde_json::from_slice(&body)
                .map_err(|e| ApiError::bad_request(format!("Scale cannot be decoded: {e}")))?
        } else {
            match ct.as_str() {
                "application/json-patch+json" => patch::apply_json_patch(&scale, &body)?,
                "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
                    patch::apply_merge_patch(&scale, &body)?
                }
                other => return Err(ApiError::unsupported_media_type(other)),
            }
        };
        let replicas = new_scale["spec"]["replicas"].as_i64().unwrap_or(0);
        if replicas < 0 {
            return Err(ApiError::invalid_kind(
                "Scale",
                "autoscaling",
                name,
                vec![capstan_api::status::Cause::invalid(
                    "spec.replicas",
                    &json!(replicas),
                    "must be greater than or equal to 0",
                )],
            ));
        }
        if let Some(rv) = new_scale["metadata"]["resourceVersion"]
            .as_str()
            .filter(|s| !s.is_empty())
            && rv != rev.to_string()
        {
            return Err(ApiError::conflict(info, name));
        }
        let mut updated = obj.clone();
        updated["spec"]["replicas"] = json!(replicas);
        if updated == obj {
            return Ok(response::json(200, &scale));
        }
        if let Some(g) = obj["metadata"]["generation"].as_i64() {
            updated["metadata"]["generation"] = json!(g + 1);
        }
        if let Some(m) = updated["metadata"].as_object_mut() {
            m.remove("resourceVersion");
        }
        if q.dry_run()? {
            return Ok(response::json(200, &scale_of(&updated)));
        }
        let key = info.store_key(rp.namespace.as_deref(), name);
        let bytes = serde_json::to_vec(&updated).map_err(|e| ApiError::internal(e.to_string()))?;
        match server.store.update(&key, bytes, rev).await {
            Ok(new_rev) => {
                updated["metadata"]["resourceVersion"] = json!(new_rev.to_string());
                return Ok(response::json(200, &scale_of(&updated)));
            }
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(write::store_error(info, name)(e)),
        }
    }
    Err(ApiError::conflict(info, name))
}

/// PUT `namespaces/NAME/finalize`: only `spec.finalizers` of the body is taken.
async fn finalize(
    server: &ApiServer,
    rp: &ResourcePath,
    headers: &http::HeaderMap,
    q: &Query,
    body: bytes::Bytes,
) -> Result<http::Response<Body>, ApiError> {
    let info = rp.info();
    let name = rp.name.as_deref().unwrap_or_default();
    let ns = super::decode_body(info, &body, &super::content_type(headers))?;
    if ns["metadata"]["name"].as_str().is_some_and(|n| n != name) {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({name})",
            ns["metadata"]["name"].as_str().unwrap_or_default()
        )));
    }
    let finalizers: Vec<Value> = match &ns["spec"]["finalizers"] {
        Value::Null => Vec::new(),
        Value::Array(a) if a.iter().all(Value::is_string) => a.clone(),
        _ => {
            return Err(ApiError::bad_request(
                "spec.finalizers must be a list of strings",
            ));
        }
    };
    let pinned = write::pinned_rv(&ns)?;
    if q.dry_run()? {
        let (mut cur, _) = current(server, rp).await?;
        cur["spec"]["finalizers"] = json!(finalizers);
        return Ok(response::json(200, &cur));
    }
    let obj = write::finalize_namespace(server, name, finalizers, pinned).await?;
    Ok(response::json(200, &obj))
}

/// `pods/NAME/binding`: set spec.nodeName once, as the scheduler's bind does.
async fn bind(
    server: &ApiServer,
    rp: &ResourcePath,
    body: bytes::Bytes,
) -> Result<http::Response<Body>, ApiError> {
    let info = rp.info();
    let name = rp.name.as_deref().unwrap_or_default();
    let binding: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("Binding cannot be decoded: {e}")))?;
    let node = binding["target"]["name"]
        .as_str()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            ApiError::invalid_kind(
                "Binding",
                "",
                name,
                vec![capstan_api::status::Cause::required("target.name", "")],
            )
        })?;
    for _ in 0..8 {
        let (mut pod, rev) = current(server, rp).await?;
        if let Some(uid) = binding["metadata"]["uid"].as_str()
            && pod["metadata"]["uid"].as_str() != Some(uid)
        {
            return Err(ApiError::conflict_msg(
                info,
                name,
                "Precondition failed: UID in precondition does not match",
            ));
        }
        if pod["metadata"]["deletionTimestamp"].is_string() {
            return Err(ApiError::conflict_msg(
                info,
                name,
                "pod is being deleted, cannot be assigned to a host",
            ));
        }
        if let Some(existing) = pod["spec"]["nodeName"].as_str().filter(|s| !s.is_empty()) {
            return Err(ApiError::conflict_msg(
                info,
                name,
                &format!("pod {name} is already assigned to node {existing:?}"),
            ));
        }
        pod["spec"]["nodeName"] = json!(node);
        let now = crate::object::now_rfc3339();
        let mut conds: Vec<Value> = pod["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        conds.retain(|c| c["type"] != "PodScheduled");
        conds.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now}));
        pod["status"]["conditions"] = json!(conds);
        if let Some(m) = pod["metadata"].as_object_mut() {
            m.remove("resourceVersion");
        }
        let key = info.store_key(rp.namespace.as_deref(), name);
        let bytes = serde_json::to_vec(&pod).map_err(|e| ApiError::internal(e.to_string()))?;
        match server.store.update(&key, bytes, rev).await {
            Ok(_) => return Ok(response::success_status(201, None)),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(write::store_error(info, name)(e)),
        }
    }
    Err(ApiError::conflict(info, name))
}
