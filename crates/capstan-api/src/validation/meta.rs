//! ObjectMeta validation (`ValidateObjectMeta`, `ValidateObjectMetaUpdate`).

use super::names::{
    is_dns1035_label, is_dns1123_label, is_dns1123_subdomain, is_label_value, is_path_segment_name,
    is_qualified_name,
};
use super::util::{invalid_each, non_negative, s, too_long};
use crate::resources::ResourceInfo;
use crate::status::Cause;
use serde_json::{Map, Value};

const TOTAL_ANNOTATION_SIZE_LIMIT: usize = 256 * 1024;

type NameFn = fn(&str) -> Vec<String>;

/// The name rule upstream applies to the kind.
fn name_fn(info: &ResourceInfo) -> NameFn {
    match (info.group, info.kind) {
        ("", "Namespace") => is_dns1123_label,
        ("", "Service") => is_dns1035_label,
        ("rbac.authorization.k8s.io", _) | ("autoscaling", "HorizontalPodAutoscaler") => {
            is_path_segment_name
        }
        _ => is_dns1123_subdomain,
    }
}

/// `prefix=true` form: a generateName may end in `-`.
fn mask_trailing_dash(name: &str) -> String {
    if name.len() > 1 && name.ends_with('-') {
        format!("{}a", &name[..name.len() - 1])
    } else {
        name.to_string()
    }
}

pub fn validate_object_meta(info: &ResourceInfo, obj: &Value) -> Vec<Cause> {
    let empty = Value::Object(Map::new());
    let meta = obj.get("metadata").unwrap_or(&empty);
    let check = name_fn(info);
    let mut errs = Vec::new();
    let generate_name = s(meta, "generateName");
    if !generate_name.is_empty() {
        errs.extend(invalid_each(
            "metadata.generateName",
            generate_name,
            check(&mask_trailing_dash(generate_name)),
        ));
    }
    let name = s(meta, "name");
    if name.is_empty() {
        errs.push(Cause::required(
            "metadata.name",
            "name or generateName is required",
        ));
    } else {
        errs.extend(invalid_each("metadata.name", name, check(name)));
    }
    let namespace = s(meta, "namespace");
    if info.namespaced {
        if namespace.is_empty() {
            errs.push(Cause::required("metadata.namespace", ""));
        } else {
            errs.extend(invalid_each(
                "metadata.namespace",
                namespace,
                is_dns1123_label(namespace),
            ));
        }
    } else if !namespace.is_empty() {
        errs.push(Cause::forbidden(
            "metadata.namespace",
            "not allowed on this type",
        ));
    }
    errs.extend(non_negative(
        "metadata.generation",
        meta.get("generation").and_then(Value::as_i64),
    ));
    errs.extend(validate_labels(
        meta.get("labels").and_then(Value::as_object),
        "metadata.labels",
    ));
    errs.extend(validate_annotations(
        meta.get("annotations").and_then(Value::as_object),
        "metadata.annotations",
    ));
    for (i, f) in meta
        .get("finalizers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let f = f.as_str().unwrap_or("");
        errs.extend(invalid_each(
            &format!("metadata.finalizers[{i}]"),
            f,
            is_qualified_name(f),
        ));
    }
    errs
}

/// `ValidateLabels`: qualified-name keys and label-syntax values.
pub fn validate_labels(labels: Option<&Map<String, Value>>, field: &str) -> Vec<Cause> {
    let mut errs = Vec::new();
    for (k, v) in labels.into_iter().flatten() {
        errs.extend(invalid_each(field, k, is_qualified_name(k)));
        let v = v.as_str().unwrap_or("");
        errs.extend(invalid_each(field, v, is_label_value(v)));
    }
    errs
}

fn validate_annotations(annotations: Option<&Map<String, Value>>, field: &str) -> Vec<Cause> {
    let mut errs = Vec::new();
    let mut total = 0;
    for (k, v) in annotations.into_iter().flatten() {
        errs.extend(invalid_each(field, k, is_qualified_name(&k.to_lowercase())));
        total += k.len() + v.as_str().map_or(0, str::len);
    }
    if total > TOTAL_ANNOTATION_SIZE_LIMIT {
        errs.push(too_long(field, TOTAL_ANNOTATION_SIZE_LIMIT));
    }
    errs
}

pub fn validate_object_meta_update(obj: &Value, old: &Value) -> Vec<Cause> {
    let mut errs = Vec::new();
    let empty = Value::Null;
    let (new_meta, old_meta) = (
        obj.get("metadata").unwrap_or(&empty),
        old.get("metadata").unwrap_or(&empty),
    );
    for key in ["name", "namespace", "uid", "creationTimestamp"] {
        let (n, o) = (s(new_meta, key), s(old_meta, key));
        // an omitted uid/creationTimestamp is filled from the stored object by the server
        if n != o && !(n.is_empty() && matches!(key, "uid" | "creationTimestamp")) {
            errs.push(Cause::invalid(
                format!("metadata.{key}"),
                &Value::String(n.to_string()),
                "field is immutable",
            ));
        }
    }
    errs
}
