//! `serviceaccounts/NAME/token`: the TokenRequest API. Issues a signed token for an existing
//! service account, optionally bound to a Pod, Secret or Node whose UID must match, with
//! upstream's defaults (one hour, the API server's audience) and limits.

use crate::response::{self, Body};
use crate::server::ApiServer;
use crate::tokens::{self, BoundObject};
use capstan_api::status::Cause;
use capstan_api::{ApiError, ResourceInfo, resources};
use serde_json::{Value, json};

use crate::request::ResourcePath;

/// Default lifetime of a requested token (upstream's).
const DEFAULT_EXPIRATION: i64 = 3600;
const MIN_EXPIRATION: i64 = 600;
const MAX_EXPIRATION: i64 = 1 << 32;

fn info(plural: &str) -> &'static ResourceInfo {
    resources::find("", "v1", plural).expect("core resources are served")
}

/// The stored object, if any.
async fn get(
    server: &ApiServer,
    info: &'static ResourceInfo,
    ns: Option<&str>,
    name: &str,
) -> Result<Option<Value>, ApiError> {
    let kv = server
        .store
        .get(&info.store_key(ns, name))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    kv.map(|kv| serde_json::from_slice(&kv.value).map_err(|e| ApiError::internal(e.to_string())))
        .transpose()
}

pub(crate) async fn create(
    server: &ApiServer,
    rp: &ResourcePath,
    headers: &http::HeaderMap,
    body: bytes::Bytes,
) -> Result<http::Response<Body>, ApiError> {
    let ns = rp.namespace.as_deref().unwrap_or_default();
    let name = rp.name.as_deref().unwrap_or_default();
    // kubectl sends protobuf; other clients JSON.
    let request = super::decode_body(rp.info(), &body, &super::content_type(headers))?;
    let spec = &request["spec"];
    let invalid = |cause: Cause| {
        ApiError::invalid_kind("TokenRequest", "authentication.k8s.io", name, vec![cause])
    };
    let expiration = match &spec["expirationSeconds"] {
        Value::Null => DEFAULT_EXPIRATION,
        v => v.as_i64().ok_or_else(|| {
            invalid(Cause::invalid(
                "spec.expirationSeconds",
                v,
                "must be an integer",
            ))
        })?,
    };
    if expiration < MIN_EXPIRATION {
        return Err(invalid(Cause::invalid(
            "spec.expirationSeconds",
            &json!(expiration),
            "may not specify a duration less than 10 minutes",
        )));
    }
    if expiration > MAX_EXPIRATION {
        return Err(invalid(Cause::invalid(
            "spec.expirationSeconds",
            &json!(expiration),
            "may not specify a duration larger than 2^32 seconds",
        )));
    }
    let mut audiences: Vec<String> = spec["audiences"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    if audiences.is_empty() {
        audiences.push(tokens::ISSUER.to_string());
    }

    let sa_info = info("serviceaccounts");
    let sa = get(server, sa_info, Some(ns), name)
        .await?
        .ok_or_else(|| ApiError::not_found(sa_info, name))?;
    let sa_uid = sa["metadata"]["uid"].as_str().unwrap_or_default();

    let bound = match spec["boundObjectRef"].as_object() {
        None => None,
        Some(r) => Some(bound_object(server, ns, name, r).await?),
    };
    let now = jiff::Timestamp::now().as_second();
    let claims = tokens::claims(
        ns,
        name,
        sa_uid,
        &audiences,
        now,
        expiration,
        bound.as_ref(),
    );
    let token = server
        .tokens
        .sign(&claims)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let expires = jiff::Timestamp::from_second(now + expiration)
        .map_err(|e| ApiError::internal(e.to_string()))?
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let mut out_spec =
        json!({"audiences": audiences, "expirationSeconds": expiration, "boundObjectRef": null});
    if let Some(r) = spec["boundObjectRef"].as_object() {
        out_spec["boundObjectRef"] = Value::Object(r.clone());
    }
    let out = json!({
        "kind": "TokenRequest",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": crate::object::now_rfc3339()},
        "spec": out_spec,
        "status": {"token": token, "expirationTimestamp": expires},
    });
    Ok(response::json(201, &out))
}

/// Checks the bound object exists with the given UID (and, for a pod, runs as this service
/// account), as upstream's token REST does.
async fn bound_object(
    server: &ApiServer,
    ns: &str,
    sa_name: &str,
    r: &serde_json::Map<String, Value>,
) -> Result<BoundObject, ApiError> {
    let kind = r.get("kind").and_then(Value::as_str).unwrap_or_default();
    let obj_name = r.get("name").and_then(Value::as_str).unwrap_or_default();
    let want_uid = r.get("uid").and_then(Value::as_str).unwrap_or_default();
    let (plural, obj_ns) = match kind {
        "Pod" => ("pods", Some(ns)),
        "Secret" => ("secrets", Some(ns)),
        "Node" => ("nodes", None),
        other => {
            return Err(ApiError::invalid_kind(
                "TokenRequest",
                "authentication.k8s.io",
                sa_name,
                vec![Cause::not_supported(
                    "spec.boundObjectRef.kind",
                    &json!(other),
                    &["Pod", "Secret", "Node"],
                )],
            ));
        }
    };
    let info = info(plural);
    let obj = get(server, info, obj_ns, obj_name)
        .await?
        .ok_or_else(|| ApiError::not_found(info, obj_name))?;
    let uid = obj["metadata"]["uid"].as_str().unwrap_or_default();
    if !want_uid.is_empty() && want_uid != uid {
        return Err(ApiError::conflict_msg(
            info,
            obj_name,
            &format!(
                "the UID in the bound object reference ({want_uid}) does not match the UID in record. The object might have been deleted and then recreated"
            ),
        ));
    }
    if kind == "Pod" {
        let pod_sa = obj["spec"]["serviceAccountName"]
            .as_str()
            .filter(|s| !s.is_empty())
            .unwrap_or("default");
        if pod_sa != sa_name {
            return Err(ApiError::bad_request(format!(
                "cannot bind token for serviceaccount {sa_name:?} to pod running with different serviceaccount name."
            )));
        }
    }
    Ok(BoundObject {
        kind: kind.to_string(),
        name: obj_name.to_string(),
        uid: uid.to_string(),
    })
}
