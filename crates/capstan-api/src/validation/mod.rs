//! Per-kind validation as upstream: decoding into the kind's type (400 BadRequest on type
//! errors), unknown-field detection for strict field validation, and the 422 Invalid rules of
//! `pkg/apis/*/validation` that kubectl users meet, with upstream's messages and field paths.

mod apps;
mod core;
pub mod decode;
mod meta;
pub mod names;
mod pod;
mod util;

use crate::resources::ResourceInfo;
use crate::status::{ApiError, Cause};
use serde_json::Value;

/// The object must decode into its kind's type; a type error is a 400 BadRequest worded like
/// upstream's (`Deployment in version "v1" cannot be handled as a Deployment: json: ...`).
/// Secret `data` must be base64 (`illegal base64 data at input byte N`).
pub fn check_decodes(info: &ResourceInfo, obj: &Value) -> Result<(), ApiError> {
    let fail = |detail: String| {
        ApiError::bad_request(format!(
            "{kind} in version {version:?} cannot be handled as a {kind}: {detail}",
            kind = info.kind,
            version = info.version
        ))
    };
    if !obj.is_object() {
        return Err(fail(
            "json: cannot unmarshal non-object into Go value".into(),
        ));
    }
    if info.group.is_empty() && info.kind == "Secret" {
        decode_secret_data(obj).map_err(fail)?;
    }
    match decode::round_trip(info, obj) {
        Some(Err(failure)) => Err(fail(decode::go_message(info.kind, &failure))),
        _ => Ok(()),
    }
}

/// Checks every Secret `data` value is Go-style base64; the error text is Go's.
pub fn decode_secret_data(obj: &Value) -> Result<(), String> {
    let Some(data) = obj.get("data").and_then(Value::as_object) else {
        return Ok(());
    };
    for v in data.values() {
        match v {
            Value::String(s) => {
                decode::go_base64_decode(s)?;
            }
            Value::Null => {}
            _ => return Err("json: cannot unmarshal non-string into Go struct field Secret.data of type []uint8".into()),
        }
    }
    Ok(())
}

/// Paths of fields the kind's schema does not know, as strict field validation reports them
/// (`spec.foo`, `spec.template.spec.containers[0].foo`). Empty for kinds without a built-in
/// type or objects that do not decode (check_decodes reports those).
pub fn unknown_fields(info: &ResourceInfo, obj: &Value) -> Vec<String> {
    let Some(Ok(known)) = decode::round_trip(info, obj) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    diff_unknown(obj, &known, "", &mut out);
    out
}

fn diff_unknown(input: &Value, known: &Value, path: &str, out: &mut Vec<String>) {
    match (input, known) {
        (Value::Object(i), Value::Object(k)) => {
            for (key, v) in i {
                if v.is_null() {
                    continue;
                }
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match k.get(key) {
                    Some(kv) => diff_unknown(v, kv, &child, out),
                    None => out.push(child),
                }
            }
        }
        (Value::Array(i), Value::Array(k)) => {
            for (n, (iv, kv)) in i.iter().zip(k).enumerate() {
                diff_unknown(iv, kv, &format!("{path}[{n}]"), out);
            }
        }
        _ => {}
    }
}

/// Upstream's strict-validation messages for unknown fields: `unknown field "spec.foo"`.
pub fn unknown_field_messages(info: &ResourceInfo, obj: &Value) -> Vec<String> {
    unknown_fields(info, obj)
        .into_iter()
        .map(|p| format!("unknown field {p:?}"))
        .collect()
}

/// Validates a create (`old` None) or update of `obj`; all failures as one 422 Invalid.
pub fn validate(info: &ResourceInfo, obj: &Value, old: Option<&Value>) -> Result<(), ApiError> {
    let causes = causes(info, obj, old);
    if causes.is_empty() {
        return Ok(());
    }
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    Err(ApiError::invalid(info, name, causes))
}

/// The field-level causes `validate` reports, in upstream's order.
pub fn causes(info: &ResourceInfo, obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut errs = meta::validate_object_meta(info, obj);
    if let Some(old) = old {
        errs.extend(meta::validate_object_meta_update(obj, old));
    }
    let kind_errs = match (info.group, info.kind) {
        ("", "Pod") => pod::validate_pod(obj, old),
        ("", "ConfigMap") => core::validate_config_map(obj, old),
        ("", "Secret") => core::validate_secret(obj, old),
        ("", "Service") => core::validate_service(obj, old),
        ("", "Namespace") => core::validate_namespace(obj),
        ("", "PersistentVolumeClaim") => core::validate_pvc(obj),
        ("", "ServiceAccount") | ("", "Node") | ("", "Endpoints") | ("", "Event") => Vec::new(),
        ("coordination.k8s.io", "Lease") => core::validate_lease(obj),
        ("apps", "Deployment") => apps::validate_deployment(obj, old),
        ("apps", "ReplicaSet") => apps::validate_replica_set(obj, old),
        ("apps", "StatefulSet") => apps::validate_stateful_set(obj, old),
        ("apps", "DaemonSet") => apps::validate_daemon_set(obj, old),
        ("batch", "Job") => apps::validate_job(obj, old),
        ("batch", "CronJob") => apps::validate_cron_job(obj),
        _ => Vec::new(),
    };
    errs.extend(kind_errs);
    errs
}

#[cfg(test)]
mod tests;
