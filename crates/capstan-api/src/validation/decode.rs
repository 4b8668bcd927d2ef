//! Decoding into the kind's typed struct (k8s-openapi), to catch type errors the way upstream's
//! JSON decoder does and to find unknown fields by round trip.

use crate::resources::ResourceInfo;
use k8s_openapi::api;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// Why an object does not decode into its kind's type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeFailure {
    /// Dotted path, e.g. `spec.template.spec.containers[0].ports[0].containerPort`.
    pub path: String,
    /// serde's description, e.g. `invalid type: string "3", expected i32`.
    pub message: String,
}

/// Deserializes `obj` as the kind's k8s-openapi type and serializes it back; `None` for kinds
/// without a built-in type. Fields Go would zero-fill (missing required ones, nulls) and numeric
/// quantities are tolerated, as upstream's decoder accepts them.
pub fn round_trip(info: &ResourceInfo, obj: &Value) -> Option<Result<Value, DecodeFailure>> {
    macro_rules! dispatch {
        ($($group:literal $kind:literal => $ty:ty,)*) => {
            match (info.group, info.kind) {
                $(($group, $kind) => Some(tolerant::<$ty>(info, obj)),)*
                _ => None,
            }
        };
    }
    dispatch! {
        "" "Namespace" => api::core::v1::Namespace,
        "" "Pod" => api::core::v1::Pod,
        "" "Node" => api::core::v1::Node,
        "" "Service" => api::core::v1::Service,
        "" "Endpoints" => api::core::v1::Endpoints,
        "" "ConfigMap" => api::core::v1::ConfigMap,
        "" "Secret" => api::core::v1::Secret,
        "" "ServiceAccount" => api::core::v1::ServiceAccount,
        "" "Event" => api::core::v1::Event,
        "" "PersistentVolume" => api::core::v1::PersistentVolume,
        "" "PersistentVolumeClaim" => api::core::v1::PersistentVolumeClaim,
        "" "ResourceQuota" => api::core::v1::ResourceQuota,
        "" "LimitRange" => api::core::v1::LimitRange,
        "" "ReplicationController" => api::core::v1::ReplicationController,
        "" "PodTemplate" => api::core::v1::PodTemplate,
        "apps" "Deployment" => api::apps::v1::Deployment,
        "apps" "ReplicaSet" => api::apps::v1::ReplicaSet,
        "apps" "StatefulSet" => api::apps::v1::StatefulSet,
        "apps" "DaemonSet" => api::apps::v1::DaemonSet,
        "apps" "ControllerRevision" => api::apps::v1::ControllerRevision,
        "batch" "Job" => api::batch::v1::Job,
        "batch" "CronJob" => api::batch::v1::CronJob,
        "coordination.k8s.io" "Lease" => api::coordination::v1::Lease,
        "discovery.k8s.io" "EndpointSlice" => api::discovery::v1::EndpointSlice,
        "events.k8s.io" "Event" => api::events::v1::Event,
        "networking.k8s.io" "Ingress" => api::networking::v1::Ingress,
        "networking.k8s.io" "IngressClass" => api::networking::v1::IngressClass,
        "networking.k8s.io" "NetworkPolicy" => api::networking::v1::NetworkPolicy,
        "rbac.authorization.k8s.io" "Role" => api::rbac::v1::Role,
        "rbac.authorization.k8s.io" "RoleBinding" => api::rbac::v1::RoleBinding,
        "rbac.authorization.k8s.io" "ClusterRole" => api::rbac::v1::ClusterRole,
        "rbac.authorization.k8s.io" "ClusterRoleBinding" => api::rbac::v1::ClusterRoleBinding,
        "storage.k8s.io" "StorageClass" => api::storage::v1::StorageClass,
        "policy" "PodDisruptionBudget" => api::policy::v1::PodDisruptionBudget,
        "autoscaling" "HorizontalPodAutoscaler" => api::autoscaling::v2::HorizontalPodAutoscaler,
        "scheduling.k8s.io" "PriorityClass" => api::scheduling::v1::PriorityClass,
        "node.k8s.io" "RuntimeClass" => api::node::v1::RuntimeClass,
        "authentication.k8s.io" "TokenReview" => api::authentication::v1::TokenReview,
        "authentication.k8s.io" "SelfSubjectReview" => api::authentication::v1::SelfSubjectReview,
        "authorization.k8s.io" "LocalSubjectAccessReview" => api::authorization::v1::LocalSubjectAccessReview,
        "authorization.k8s.io" "SelfSubjectAccessReview" => api::authorization::v1::SelfSubjectAccessReview,
        "authorization.k8s.io" "SelfSubjectRulesReview" => api::authorization::v1::SelfSubjectRulesReview,
        "authorization.k8s.io" "SubjectAccessReview" => api::authorization::v1::SubjectAccessReview,
        "apiextensions.k8s.io" "CustomResourceDefinition" => k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    }
}

/// Parent map names whose values are `resource.Quantity` (Go accepts JSON numbers there).
const QUANTITY_MAPS: &[&str] = &[
    "limits",
    "requests",
    "hard",
    "used",
    "capacity",
    "allocatable",
    "max",
    "min",
    "default",
    "defaultRequest",
    "maxLimitRequestRatio",
    "overhead",
    "allocatedResources",
];

const MAX_REPAIRS: usize = 256;

fn tolerant<T: DeserializeOwned + Serialize>(
    info: &ResourceInfo,
    obj: &Value,
) -> Result<Value, DecodeFailure> {
    let mut work = obj.clone();
    strip_nulls(&mut work);
    if let Value::Object(m) = &mut work {
        // k8s-openapi insists on these; the API server has already checked them against the URL
        m.insert("apiVersion".into(), Value::String(info.api_version()));
        m.insert("kind".into(), Value::String(info.kind.to_string()));
    }
    let mut inserted: Vec<String> = Vec::new();
    for _ in 0..MAX_REPAIRS {
        let err = match serde_path_to_error::deserialize::<_, T>(work.clone()) {
            Ok(typed) => {
                return serde_json::to_value(&typed).map_err(|e| DecodeFailure {
                    path: String::new(),
                    message: e.to_string(),
                });
            }
            Err(e) => e,
        };
        let path = err.path().to_string();
        let message = err.inner().to_string();
        if !repair(&mut work, &path, &message, &mut inserted) {
            return Err(DecodeFailure {
                path: if path == "." { String::new() } else { path },
                message,
            });
        }
    }
    Err(DecodeFailure {
        path: String::new(),
        message: "object too irregular to decode".into(),
    })
}

/// Makes the working copy decodable where Go would have accepted the input. Returns false when
/// the error is a real type error.
fn repair(work: &mut Value, path: &str, message: &str, inserted: &mut Vec<String>) -> bool {
    if let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|s| s.strip_suffix('`'))
    {
        let Some(Value::Object(parent)) = lookup_mut(work, path) else {
            return false;
        };
        parent.insert(field.to_string(), Value::String(String::new()));
        let full = if path == "." {
            field.to_string()
        } else {
            format!("{path}.{field}")
        };
        inserted.push(full);
        return true;
    }
    let Some(expected) = message.split(", expected ").nth(1) else {
        return false;
    };
    if inserted.iter().any(|p| p == path) {
        // a placeholder we inserted has the wrong type: replace it with the zero value
        let zero = zero_value(expected);
        return match lookup_mut(work, path) {
            Some(slot) if *slot != zero => {
                *slot = zero;
                true
            }
            _ => false,
        };
    }
    let segments: Vec<&str> = path.split('.').collect();
    let parent = segments
        .len()
        .checked_sub(2)
        .map(|i| segments[i])
        .unwrap_or("");
    let parent_name = parent.split('[').next().unwrap_or("");
    let is_quantity = QUANTITY_MAPS.contains(&parent_name)
        || path.ends_with("sizeLimit")
        || path.ends_with("storage");
    if is_quantity
        && expected.contains("string")
        && let Some(slot) = lookup_mut(work, path)
        && let Value::Number(n) = slot
    {
        *slot = Value::String(n.to_string());
        return true;
    }
    false
}

fn zero_value(expected: &str) -> Value {
    if expected.contains("sequence") || expected.contains("list") || expected.contains("array") {
        Value::Array(Vec::new())
    } else if expected.starts_with('i') || expected.starts_with('u') || expected.starts_with('f') {
        Value::from(0)
    } else if expected.contains("bool") {
        Value::Bool(false)
    } else if expected.contains("string") {
        Value::String(String::new())
    } else {
        Value::Object(Map::new())
    }
}

/// Resolves a serde_path_to_error path (`a.b[0].c`) in a JSON value.
fn lookup_mut<'a>(root: &'a mut Value, path: &str) -> Option<&'a mut Value> {
    if path == "." || path.is_empty() {
        return Some(root);
    }
    let mut cur = root;
    for seg in path.split('.') {
        let (name, rest) = seg.split_once('[').map_or((seg, ""), |(n, r)| (n, r));
        if !name.is_empty() {
            cur = cur.as_object_mut()?.get_mut(name)?;
        }
        for idx in rest.split('[').filter(|s| !s.is_empty()) {
            let i: usize = idx.trim_end_matches(']').parse().ok()?;
            cur = cur.as_array_mut()?.get_mut(i)?;
        }
    }
    Some(cur)
}

/// Go zero-fills explicit nulls; k8s-openapi rejects them for required fields.
fn strip_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, x| !x.is_null());
            m.values_mut().for_each(strip_nulls);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// Upstream-style text for a decode failure: `json: cannot unmarshal string into Go struct
/// field Deployment.spec.replicas of type int32` where serde's message allows, else serde's.
pub fn go_message(kind: &str, failure: &DecodeFailure) -> String {
    let parsed = failure
        .message
        .strip_prefix("invalid type: ")
        .and_then(|s| s.split_once(", expected "))
        .map(|(got, want)| (go_json_type(got), go_field_type(want)));
    match parsed {
        Some((got, want)) if !failure.path.is_empty() => {
            format!(
                "json: cannot unmarshal {got} into Go struct field {kind}.{} of type {want}",
                failure.path
            )
        }
        _ if failure.path.is_empty() => failure.message.clone(),
        _ => format!("{}: {}", failure.path, failure.message),
    }
}

fn go_json_type(serde_unexpected: &str) -> &'static str {
    let word = serde_unexpected.split_whitespace().next().unwrap_or("");
    match word {
        "string" => "string",
        "integer" | "floating" => "number",
        "boolean" => "bool",
        "map" => "object",
        "sequence" => "array",
        _ => "value",
    }
}

fn go_field_type(serde_expected: &str) -> String {
    match serde_expected {
        "i32" => "int32".into(),
        "i64" => "int64".into(),
        "u32" | "u16" | "u8" => "int32".into(),
        "f64" => "float64".into(),
        "a string" => "string".into(),
        "a boolean" => "bool".into(),
        "a sequence" => "array".into(),
        other => other
            .trim_start_matches("a ")
            .trim_start_matches("struct ")
            .to_string(),
    }
}

/// Decodes base64 as Go's `base64.StdEncoding` (newlines ignored), reporting the offset of the
/// first bad byte as Go's `CorruptInputError` does: `illegal base64 data at input byte N`.
pub fn go_base64_decode(src: &str) -> Result<Vec<u8>, String> {
    let corrupt = |at: usize| format!("illegal base64 data at input byte {at}");
    let s = src.as_bytes();
    let val = |b: u8| -> Option<u8> {
        match b {
            b'A'..=b'Z' => Some(b - b'A'),
            b'a'..=b'z' => Some(b - b'a' + 26),
            b'0'..=b'9' => Some(b - b'0' + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    };
    let skip_newlines = |mut i: usize| {
        while i < s.len() && (s[i] == b'\n' || s[i] == b'\r') {
            i += 1;
        }
        i
    };
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let mut si = 0;
    loop {
        let mut quantum = [0u8; 4];
        let mut j = 0;
        while j < 4 {
            if si == s.len() {
                if j == 0 {
                    return Ok(out);
                }
                return Err(corrupt(si - j));
            }
            let c = s[si];
            si += 1;
            if let Some(v) = val(c) {
                quantum[j] = v;
                j += 1;
                continue;
            }
            if c == b'\n' || c == b'\r' {
                continue;
            }
            if c != b'=' {
                return Err(corrupt(si - 1));
            }
            // padding
            match j {
                0 | 1 => return Err(corrupt(si - 1)),
                2 => {
                    si = skip_newlines(si);
                    if si == s.len() {
                        return Err(corrupt(s.len()));
                    }
                    if s[si] != b'=' {
                        return Err(corrupt(si - 1));
                    }
                    si += 1;
                }
                _ => {}
            }
            si = skip_newlines(si);
            if si < s.len() {
                return Err(corrupt(si));
            }
            break;
        }
        let n = (u32::from(quantum[0]) << 18)
            | (u32::from(quantum[1]) << 12)
            | (u32::from(quantum[2]) << 6)
            | u32::from(quantum[3]);
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        let take = match j {
            4 => 3,
            3 => 2,
            _ => 1,
        };
        out.extend_from_slice(&bytes[..take]);
        if j < 4 {
            return Ok(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_like_go() {
        let cases: &[(&str, Result<&[u8], usize>)] = &[
            ("", Ok(b"")),
            ("aGVsbG8=", Ok(b"hello")),
            ("aGVsbG8h", Ok(b"hello!")),
            ("aGk=", Ok(b"hi")),
            ("aA==", Ok(b"h")),
            ("aGVs\nbG8=", Ok(b"hello")),
            ("hello", Err(4)),
            ("aGVsbG8", Err(4)),
            ("a!==", Err(1)),
            ("aGk=x", Err(4)),
            ("aA=", Err(3)),
            ("====", Err(0)),
            ("not base64!", Err(3)),
        ];
        for (input, want) in cases {
            let got = go_base64_decode(input);
            match want {
                Ok(bytes) => assert_eq!(got.as_deref(), Ok(*bytes), "{input}"),
                Err(at) => assert_eq!(
                    got,
                    Err(format!("illegal base64 data at input byte {at}")),
                    "{input}"
                ),
            }
        }
    }
}
