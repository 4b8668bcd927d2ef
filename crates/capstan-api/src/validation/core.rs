//! Core kinds other than Pod: ConfigMap, Secret, Service, Namespace, PVC, Lease.

use super::decode::go_base64_decode;
use super::names::{
    is_config_map_key, is_dns1123_label, is_dns1123_subdomain, is_qualified_name,
    is_valid_port_name, is_valid_port_num,
};
use super::util::{arr, int, invalid_each, invalid_raw, obj, s, too_long};
use crate::status::Cause;
use serde_json::{Map, Value};
use std::collections::BTreeSet;

/// ConfigMap and Secret payloads may not exceed 1 MiB.
pub const MAX_SECRET_SIZE: usize = 1024 * 1024;
const IMMUTABLE_MSG: &str = "field is immutable when `immutable` is set";

fn is_immutable(v: &Value) -> bool {
    v.get("immutable").and_then(Value::as_bool) == Some(true)
}

/// Rejects payload changes and unsetting `immutable` once it was set.
fn immutable_update(obj: &Value, old: Option<&Value>, payload: &[&str]) -> Vec<Cause> {
    let Some(old) = old.filter(|o| is_immutable(o)) else {
        return Vec::new();
    };
    let mut errs = Vec::new();
    if !is_immutable(obj) {
        errs.push(Cause::forbidden("immutable", IMMUTABLE_MSG));
    }
    for key in payload {
        let (n, o) = (
            obj.get(*key).filter(|v| !is_empty(v)),
            old.get(*key).filter(|v| !is_empty(v)),
        );
        if n != o {
            errs.push(Cause::forbidden(*key, IMMUTABLE_MSG));
        }
    }
    errs
}

fn is_empty(v: &Value) -> bool {
    v.is_null() || v.as_object().is_some_and(Map::is_empty)
}

pub fn validate_config_map(cm: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut errs = Vec::new();
    let mut total = 0;
    let data = obj(cm, "data");
    let binary = obj(cm, "binaryData");
    for (key, v) in data.into_iter().flatten() {
        errs.extend(invalid_each(
            &format!("data[{key}]"),
            key,
            is_config_map_key(key),
        ));
        total += v.as_str().map_or(0, str::len);
    }
    for (key, v) in binary.into_iter().flatten() {
        errs.extend(invalid_each(
            &format!("binaryData[{key}]"),
            key,
            is_config_map_key(key),
        ));
        if data.is_some_and(|d| d.contains_key(key)) {
            errs.push(Cause::invalid(
                format!("binaryData[{key}]"),
                &Value::String(key.clone()),
                "duplicate of key present in data",
            ));
        }
        total += v
            .as_str()
            .and_then(|b| go_base64_decode(b).ok())
            .map_or(0, |b| b.len());
    }
    if total > MAX_SECRET_SIZE {
        errs.push(too_long("[]", MAX_SECRET_SIZE));
    }
    errs.extend(immutable_update(cm, old, &["data", "binaryData"]));
    errs
}

/// Keys each typed Secret must carry.
fn secret_type_rules(secret: &Value, data: &Map<String, Value>) -> Vec<Cause> {
    let has = |k: &str| data.contains_key(k);
    let mut errs = Vec::new();
    match s(secret, "type") {
        "kubernetes.io/service-account-token" => {
            let name = secret
                .pointer("/metadata/annotations/kubernetes.io~1service-account.name")
                .and_then(Value::as_str);
            if name.unwrap_or("").is_empty() {
                errs.push(Cause::required(
                    "metadata.annotations[kubernetes.io/service-account.name]",
                    "",
                ));
            }
        }
        "kubernetes.io/dockercfg" => errs.extend(json_key(data, ".dockercfg")),
        "kubernetes.io/dockerconfigjson" => errs.extend(json_key(data, ".dockerconfigjson")),
        "kubernetes.io/basic-auth" if !has("username") && !has("password") => {
            errs.push(Cause::required("data[username]", ""));
            errs.push(Cause::required("data[password]", ""));
        }
        "kubernetes.io/ssh-auth" if !has("ssh-privatekey") => {
            errs.push(Cause::required("data[ssh-privatekey]", ""))
        }
        "kubernetes.io/tls" => {
            for key in ["tls.key", "tls.crt"] {
                if !has(key) {
                    errs.push(Cause::required(format!("data[{key}]"), ""));
                }
            }
        }
        _ => {}
    }
    errs
}

/// A docker config key must exist and hold JSON.
fn json_key(data: &Map<String, Value>, key: &str) -> Option<Cause> {
    let field = format!("data[{key}]");
    let Some(raw) = data.get(key).and_then(Value::as_str) else {
        return Some(Cause::required(field, ""));
    };
    let bytes = go_base64_decode(raw).unwrap_or_default();
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(_) => None,
        Err(e) => Some(invalid_raw(
            &field,
            "\"<secret contents redacted>\"",
            &e.to_string(),
        )),
    }
}

pub fn validate_secret(secret: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut errs = Vec::new();
    let empty = Map::new();
    let data = obj(secret, "data").unwrap_or(&empty);
    let mut total = 0;
    for (key, v) in data {
        errs.extend(invalid_each(
            &format!("data[{key}]"),
            key,
            is_config_map_key(key),
        ));
        total += v
            .as_str()
            .and_then(|b| go_base64_decode(b).ok())
            .map_or(0, |b| b.len());
    }
    if total > MAX_SECRET_SIZE {
        errs.push(too_long("data", MAX_SECRET_SIZE));
    }
    errs.extend(secret_type_rules(secret, data));
    if let Some(old) = old {
        let (n, o) = (s(secret, "type"), s(old, "type"));
        if n != o {
            errs.push(Cause::invalid(
                "type",
                &Value::String(n.to_string()),
                "field is immutable",
            ));
        }
    }
    errs.extend(immutable_update(secret, old, &["data"]));
    errs
}

const PROTOCOLS: &[&str] = &["SCTP", "TCP", "UDP"];
const SERVICE_TYPES: &[&str] = &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"];

pub fn validate_service(svc: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut errs = Vec::new();
    let null = Value::Null;
    let spec = svc.get("spec").unwrap_or(&null);
    let ty = s(spec, "type");
    let ty = if ty.is_empty() { "ClusterIP" } else { ty };
    if !SERVICE_TYPES.contains(&ty) {
        errs.push(Cause::not_supported(
            "spec.type",
            &Value::String(ty.into()),
            SERVICE_TYPES,
        ));
    }
    let ports = arr(spec, "ports");
    let headless = s(spec, "clusterIP") == "None";
    if ty == "ExternalName" {
        let name = s(spec, "externalName");
        if name.is_empty() {
            errs.push(Cause::required("spec.externalName", ""));
        } else {
            errs.extend(invalid_each(
                "spec.externalName",
                name,
                is_dns1123_subdomain(name.trim_end_matches('.')),
            ));
        }
    } else if ports.is_empty() && !headless {
        errs.push(Cause::required("spec.ports", ""));
    }
    let mut names = BTreeSet::new();
    for (i, p) in ports.iter().enumerate() {
        errs.extend(validate_service_port(
            p,
            &format!("spec.ports[{i}]"),
            ports.len() > 1,
            &mut names,
            ty,
        ));
    }
    let affinity = s(spec, "sessionAffinity");
    if !affinity.is_empty() && !["ClientIP", "None"].contains(&affinity) {
        errs.push(Cause::not_supported(
            "spec.sessionAffinity",
            &Value::String(affinity.into()),
            &["ClientIP", "None"],
        ));
    }
    if let Some(old) = old {
        let (o, n) = (
            old.pointer("/spec/clusterIP")
                .and_then(Value::as_str)
                .unwrap_or(""),
            s(spec, "clusterIP"),
        );
        if !o.is_empty() && !n.is_empty() && o != n && ty != "ExternalName" {
            errs.push(invalid_raw(
                "spec.clusterIPs[0]",
                &format!("[]string{{{n:?}}}"),
                "may not change once set",
            ));
        }
    }
    errs
}

fn validate_service_port(
    p: &Value,
    path: &str,
    multi: bool,
    names: &mut BTreeSet<String>,
    ty: &str,
) -> Vec<Cause> {
    let mut errs = Vec::new();
    let name = s(p, "name");
    if multi && name.is_empty() {
        errs.push(Cause::required(format!("{path}.name"), ""));
    } else if !name.is_empty() {
        errs.extend(invalid_each(
            &format!("{path}.name"),
            name,
            is_dns1123_label(name),
        ));
        if !names.insert(name.to_string()) {
            errs.push(Cause::duplicate(
                format!("{path}.name"),
                &Value::String(name.into()),
            ));
        }
    }
    let port = int(p, "port").unwrap_or(0);
    for m in is_valid_port_num(port) {
        errs.push(Cause::invalid(
            format!("{path}.port"),
            &Value::from(port),
            &m,
        ));
    }
    let proto = s(p, "protocol");
    if proto.is_empty() {
        errs.push(Cause::required(format!("{path}.protocol"), ""));
    } else if !PROTOCOLS.contains(&proto) {
        errs.push(Cause::not_supported(
            format!("{path}.protocol"),
            &Value::String(proto.into()),
            PROTOCOLS,
        ));
    }
    match p.get("targetPort") {
        Some(Value::Number(n)) => {
            let n = n.as_i64().unwrap_or(0);
            for m in is_valid_port_num(n) {
                errs.push(Cause::invalid(
                    format!("{path}.targetPort"),
                    &Value::from(n),
                    &m,
                ));
            }
        }
        Some(Value::String(name)) => errs.extend(invalid_each(
            &format!("{path}.targetPort"),
            name,
            is_valid_port_name(name),
        )),
        _ => {}
    }
    if let Some(np) = int(p, "nodePort").filter(|n| *n != 0) {
        if ty == "ClusterIP" || ty == "ExternalName" {
            errs.push(Cause::forbidden(
                format!("{path}.nodePort"),
                &format!("may not be used when `type` is '{ty}'"),
            ));
        } else {
            for m in is_valid_port_num(np) {
                errs.push(Cause::invalid(
                    format!("{path}.nodePort"),
                    &Value::from(np),
                    &m,
                ));
            }
        }
    }
    errs
}

pub fn validate_namespace(ns: &Value) -> Vec<Cause> {
    let mut errs = Vec::new();
    for (i, f) in ns
        .pointer("/spec/finalizers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let f = f.as_str().unwrap_or("");
        errs.extend(invalid_each(
            &format!("spec.finalizers[{i}]"),
            f,
            is_qualified_name(f),
        ));
    }
    errs
}

pub fn validate_pvc(pvc: &Value) -> Vec<Cause> {
    let mut errs = Vec::new();
    let null = Value::Null;
    let spec = pvc.get("spec").unwrap_or(&null);
    if arr(spec, "accessModes").is_empty() && spec.get("dataSourceRef").is_none() {
        errs.push(Cause::required(
            "spec.accessModes",
            "at least 1 access mode is required",
        ));
    }
    if spec.pointer("/resources/requests/storage").is_none() {
        errs.push(Cause::required("spec.resources[storage]", ""));
    }
    errs
}

pub fn validate_lease(lease: &Value) -> Vec<Cause> {
    let mut errs = Vec::new();
    if let Some(d) = lease
        .pointer("/spec/leaseDurationSeconds")
        .and_then(Value::as_i64)
        && d <= 0
    {
        errs.push(Cause::invalid(
            "spec.leaseDurationSeconds",
            &Value::from(d),
            "must be greater than 0",
        ));
    }
    if let Some(t) = lease
        .pointer("/spec/leaseTransitions")
        .and_then(Value::as_i64)
        && t < 0
    {
        errs.push(Cause::invalid(
            "spec.leaseTransitions",
            &Value::from(t),
            "must be greater than or equal to 0",
        ));
    }
    errs
}
