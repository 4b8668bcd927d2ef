//! Pod and pod template validation (`ValidatePodSpec`, `ValidatePodUpdate`).

use super::meta::validate_labels;
use super::names::{is_dns1123_label, is_dns1123_subdomain, is_valid_port_name, is_valid_port_num};
use super::util::{arr, int, invalid_each, invalid_raw, join, obj, quantity, s};
use crate::status::Cause;
use serde_json::Value;
use std::collections::BTreeSet;

const RESTART_POLICIES: &[&str] = &["Always", "OnFailure", "Never"];
const DNS_POLICIES: &[&str] = &["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"];
const PULL_POLICIES: &[&str] = &["Always", "IfNotPresent", "Never"];
const PROTOCOLS: &[&str] = &["SCTP", "TCP", "UDP"];
const VOLUME_TYPES: &[&str] = &[
    "hostPath",
    "emptyDir",
    "gcePersistentDisk",
    "awsElasticBlockStore",
    "gitRepo",
    "secret",
    "nfs",
    "iscsi",
    "glusterfs",
    "persistentVolumeClaim",
    "rbd",
    "flexVolume",
    "cinder",
    "cephfs",
    "flocker",
    "downwardAPI",
    "fc",
    "azureFile",
    "configMap",
    "vsphereVolume",
    "quobyte",
    "azureDisk",
    "photonPersistentDisk",
    "projected",
    "portworxVolume",
    "scaleIO",
    "storageos",
    "csi",
    "ephemeral",
    "image",
];

pub fn validate_pod(pod: &Value, old: Option<&Value>) -> Vec<Cause> {
    let null = Value::Null;
    let mut errs = validate_pod_spec(pod.get("spec").unwrap_or(&null), "spec");
    if let Some(old) = old {
        errs.extend(validate_pod_update(pod, old));
    }
    errs
}

/// The template of a workload: labels plus the pod spec, under `path` (`spec.template`).
pub fn validate_template(template: Option<&Value>, path: &str) -> Vec<Cause> {
    let Some(t) = template else {
        return vec![Cause::required(path.to_string(), "")];
    };
    let mut errs = validate_labels(
        t.pointer("/metadata/labels").and_then(Value::as_object),
        &format!("{path}.metadata.labels"),
    );
    let null = Value::Null;
    errs.extend(validate_pod_spec(
        t.get("spec").unwrap_or(&null),
        &format!("{path}.spec"),
    ));
    errs
}

pub fn validate_pod_spec(spec: &Value, path: &str) -> Vec<Cause> {
    let mut errs = Vec::new();
    let volumes = validate_volumes(spec, path, &mut errs);
    let mut names = BTreeSet::new();
    for (key, required) in [("initContainers", false), ("containers", true)] {
        let list = arr(spec, key);
        if required && list.is_empty() {
            errs.push(Cause::required(join(path, key), ""));
        }
        for (i, c) in list.iter().enumerate() {
            errs.extend(validate_container(
                c,
                &format!("{path}.{key}[{i}]"),
                &volumes,
                &mut names,
            ));
        }
    }
    enum_field(spec, path, "restartPolicy", RESTART_POLICIES, &mut errs);
    enum_field(spec, path, "dnsPolicy", DNS_POLICIES, &mut errs);
    if let Some(n) = int(spec, "activeDeadlineSeconds")
        && !(1..=i64::from(i32::MAX)).contains(&n)
    {
        errs.push(Cause::invalid(
            join(path, "activeDeadlineSeconds"),
            &Value::from(n),
            "must be between 1 and 2147483647, inclusive",
        ));
    }
    for key in ["hostname", "subdomain"] {
        let v = s(spec, key);
        if !v.is_empty() {
            errs.extend(invalid_each(&join(path, key), v, is_dns1123_label(v)));
        }
    }
    let sa = s(spec, "serviceAccountName");
    if !sa.is_empty() {
        errs.extend(invalid_each(
            &join(path, "serviceAccountName"),
            sa,
            is_dns1123_subdomain(sa),
        ));
    }
    errs.extend(validate_labels(
        obj(spec, "nodeSelector"),
        &join(path, "nodeSelector"),
    ));
    errs
}

fn enum_field(spec: &Value, path: &str, key: &str, allowed: &[&str], errs: &mut Vec<Cause>) {
    let v = s(spec, key);
    if !v.is_empty() && !allowed.contains(&v) {
        errs.push(Cause::not_supported(
            join(path, key),
            &Value::String(v.into()),
            allowed,
        ));
    }
}

/// Checks volumes and returns their names.
fn validate_volumes(spec: &Value, path: &str, errs: &mut Vec<Cause>) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (i, v) in arr(spec, "volumes").iter().enumerate() {
        let vp = format!("{path}.volumes[{i}]");
        let name = s(v, "name");
        if name.is_empty() {
            errs.push(Cause::required(format!("{vp}.name"), ""));
        } else {
            errs.extend(invalid_each(
                &format!("{vp}.name"),
                name,
                is_dns1123_label(name),
            ));
            if !names.insert(name.to_string()) {
                errs.push(Cause::duplicate(
                    format!("{vp}.name"),
                    &Value::String(name.into()),
                ));
            }
        }
        let types: Vec<&str> = VOLUME_TYPES
            .iter()
            .copied()
            .filter(|t| v.get(*t).is_some_and(|x| !x.is_null()))
            .collect();
        match types.as_slice() {
            [] => errs.push(Cause::required(vp, "must specify a volume type")),
            [_] => {}
            [_, rest @ ..] => {
                for t in rest {
                    errs.push(Cause::forbidden(
                        format!("{vp}.{t}"),
                        "may not specify more than 1 volume type",
                    ));
                }
            }
        }
    }
    names
}

fn validate_container(
    c: &Value,
    path: &str,
    volumes: &BTreeSet<String>,
    names: &mut BTreeSet<String>,
) -> Vec<Cause> {
    let mut errs = Vec::new();
    let name = s(c, "name");
    if name.is_empty() {
        errs.push(Cause::required(format!("{path}.name"), ""));
    } else {
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
    if s(c, "image").trim().is_empty() {
        errs.push(Cause::required(format!("{path}.image"), ""));
    }
    enum_field(c, path, "imagePullPolicy", PULL_POLICIES, &mut errs);
    enum_field(
        c,
        path,
        "terminationMessagePolicy",
        &["File", "FallbackToLogsOnError"],
        &mut errs,
    );
    errs.extend(validate_ports(c, path));
    errs.extend(validate_env(c, path));
    errs.extend(validate_mounts(c, path, volumes));
    errs.extend(validate_resources(c, &format!("{path}.resources")));
    errs
}

fn validate_ports(c: &Value, path: &str) -> Vec<Cause> {
    let mut errs = Vec::new();
    let mut names = BTreeSet::new();
    for (i, p) in arr(c, "ports").iter().enumerate() {
        let pp = format!("{path}.ports[{i}]");
        let name = s(p, "name");
        if !name.is_empty() {
            errs.extend(invalid_each(
                &format!("{pp}.name"),
                name,
                is_valid_port_name(name),
            ));
            if !names.insert(name.to_string()) {
                errs.push(Cause::duplicate(
                    format!("{pp}.name"),
                    &Value::String(name.into()),
                ));
            }
        }
        match int(p, "containerPort") {
            None | Some(0) => errs.push(Cause::required(format!("{pp}.containerPort"), "")),
            Some(n) => {
                for m in is_valid_port_num(n) {
                    errs.push(Cause::invalid(
                        format!("{pp}.containerPort"),
                        &Value::from(n),
                        &m,
                    ));
                }
            }
        }
        if let Some(n) = int(p, "hostPort").filter(|n| *n != 0) {
            for m in is_valid_port_num(n) {
                errs.push(Cause::invalid(
                    format!("{pp}.hostPort"),
                    &Value::from(n),
                    &m,
                ));
            }
        }
        let proto = s(p, "protocol");
        if !proto.is_empty() && !PROTOCOLS.contains(&proto) {
            errs.push(Cause::not_supported(
                format!("{pp}.protocol"),
                &Value::String(proto.into()),
                PROTOCOLS,
            ));
        }
    }
    errs
}

fn validate_env(c: &Value, path: &str) -> Vec<Cause> {
    let mut errs = Vec::new();
    for (i, e) in arr(c, "env").iter().enumerate() {
        let ep = format!("{path}.env[{i}]");
        let name = s(e, "name");
        if name.is_empty() {
            errs.push(Cause::required(format!("{ep}.name"), ""));
        } else if name
            .bytes()
            .any(|b| !(0x20..0x7f).contains(&b) || b == b'=')
        {
            errs.push(Cause::invalid(
                format!("{ep}.name"),
                &Value::String(name.into()),
                "a valid environment variable name must consist only of printable ASCII characters other than '='",
            ));
        }
        let has_value = !s(e, "value").is_empty();
        if has_value && e.get("valueFrom").is_some_and(|v| !v.is_null()) {
            errs.push(Cause::invalid(
                format!("{ep}.valueFrom"),
                &Value::String(String::new()),
                "may not be specified when `value` is not empty",
            ));
        }
    }
    errs
}

fn validate_mounts(c: &Value, path: &str, volumes: &BTreeSet<String>) -> Vec<Cause> {
    let mut errs = Vec::new();
    let mut paths = BTreeSet::new();
    for (i, m) in arr(c, "volumeMounts").iter().enumerate() {
        let mp = format!("{path}.volumeMounts[{i}]");
        let name = s(m, "name");
        if name.is_empty() {
            errs.push(Cause::required(format!("{mp}.name"), ""));
        } else if !volumes.contains(name) {
            errs.push(Cause::new(
                "FieldValueNotFound",
                format!("{mp}.name"),
                format!("Not found: {name:?}"),
            ));
        }
        let mount_path = s(m, "mountPath");
        if mount_path.is_empty() {
            errs.push(Cause::required(format!("{mp}.mountPath"), ""));
        } else if !paths.insert(mount_path.to_string()) {
            errs.push(Cause::invalid(
                format!("{mp}.mountPath"),
                &Value::String(mount_path.into()),
                "must be unique",
            ));
        }
    }
    errs
}

/// Requests may not exceed limits (`must be less than or equal to cpu limit of 1`).
fn validate_resources(c: &Value, path: &str) -> Vec<Cause> {
    let mut errs = Vec::new();
    let Some(res) = c.get("resources") else {
        return errs;
    };
    let limits = obj(res, "limits");
    for (name, req) in obj(res, "requests").into_iter().flatten() {
        let Some(limit) = limits.and_then(|l| l.get(name)) else {
            continue;
        };
        if let (Some(r), Some(l)) = (quantity(req), quantity(limit))
            && r > l
        {
            let shown = match req {
                Value::String(s) => format!("{s:?}"),
                other => format!("\"{other}\""),
            };
            let lim = limit
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| limit.to_string());
            errs.push(invalid_raw(
                &format!("{path}.requests"),
                &shown,
                &format!("must be less than or equal to {name} limit of {lim}"),
            ));
        }
    }
    errs
}

const POD_UPDATE_MSG: &str = "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)";

/// Only images, activeDeadlineSeconds, added tolerations and terminationGracePeriodSeconds may
/// change in a running pod's spec.
fn validate_pod_update(pod: &Value, old: &Value) -> Vec<Cause> {
    let (Some(new_spec), Some(old_spec)) = (pod.get("spec"), old.get("spec")) else {
        return Vec::new();
    };
    let mut munged = new_spec.clone();
    for key in ["containers", "initContainers"] {
        let old_list = arr(old_spec, key);
        if let Some(list) = munged.get_mut(key).and_then(Value::as_array_mut)
            && list.len() == old_list.len()
        {
            for (c, o) in list.iter_mut().zip(old_list) {
                if let (Some(c), Some(img)) = (c.as_object_mut(), o.get("image")) {
                    c.insert("image".into(), img.clone());
                }
            }
        }
    }
    let mut errs = Vec::new();
    let old_tolerations = arr(old_spec, "tolerations");
    let new_tolerations = arr(new_spec, "tolerations");
    if !old_tolerations.iter().all(|t| new_tolerations.contains(t)) {
        errs.push(Cause::forbidden(
            "spec.tolerations",
            "existing toleration can not be modified except its tolerationSeconds",
        ));
    }
    if let Some(m) = munged.as_object_mut() {
        for key in [
            "activeDeadlineSeconds",
            "tolerations",
            "terminationGracePeriodSeconds",
            "ephemeralContainers",
            "nodeName",
            "schedulingGates",
        ] {
            match old_spec.get(key) {
                Some(v) => m.insert(key.into(), v.clone()),
                None => m.remove(key),
            };
        }
    }
    if &munged != old_spec {
        let changed = changed_keys(old_spec, &munged);
        errs.push(Cause::forbidden(
            "spec",
            &format!("{POD_UPDATE_MSG}\n  changed: {}", changed.join(", ")),
        ));
    }
    errs
}

fn changed_keys(a: &Value, b: &Value) -> Vec<String> {
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return Vec::new();
    };
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| format!("spec.{k}"))
        .collect()
}
