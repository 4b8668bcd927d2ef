//! Request bodies in Kubernetes protobuf (`application/vnd.kubernetes.protobuf`), which kubectl's
//! typed generator commands (`kubectl create deployment`, `kubectl run`, ...) send. Only
//! decoding is needed: client-go picks its response decoder from the response Content-Type,
//! so answers stay JSON. A body is the magic `k8s\0` then a `runtime.Unknown` envelope whose
//! `raw` holds the object's own message; each supported kind has a static field table, and a
//! field number missing from a table is refused rather than silently dropped.

mod authn;
mod authz;
mod core_v1;
mod decode;
mod meta;
mod rbac;
mod schema;
mod wire;
mod workloads;

#[cfg(test)]
mod tests;

use serde_json::{Map, Value};

use crate::{ApiError, ResourceInfo};
use decode::{DecodeError, decode_message};
use schema::Message;
use wire::{Fields, WireValue};

/// The media type this module decodes.
pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";

const MAGIC: &[u8] = b"k8s\0";

/// Decodes a protobuf request body for `info` into the JSON object upstream would have sent.
pub fn decode_request(info: &ResourceInfo, body: &[u8]) -> Result<Value, ApiError> {
    let cannot = |e: String| {
        ApiError::bad_request(format!(
            "{} in version {:?} cannot be handled as a {}: {e}",
            info.kind, info.version, info.kind
        ))
    };
    let envelope = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| cannot("protobuf body lacks the k8s\\0 prefix".into()))?;
    let unknown = Unknown::parse(envelope).map_err(|e| cannot(e.to_string()))?;
    if !unknown.content_encoding.is_empty() {
        return Err(cannot(format!(
            "unsupported protobuf content encoding {:?}",
            unknown.content_encoding
        )));
    }
    if !unknown.content_type.is_empty() && unknown.content_type != CONTENT_TYPE {
        return Err(ApiError::unsupported_media_type(&unknown.content_type));
    }
    let api_version = if unknown.api_version.is_empty() {
        info.api_version()
    } else {
        unknown.api_version
    };
    let kind = if unknown.kind.is_empty() {
        info.kind.to_string()
    } else {
        unknown.kind
    };
    let message = message_for(&api_version, &kind)
        .ok_or_else(|| ApiError::unsupported_media_type(CONTENT_TYPE))?;
    let fields = decode_message(message, unknown.raw).map_err(|e| match e {
        DecodeError::UnknownField { .. } => ApiError::bad_request(e.to_string()),
        other => cannot(other.to_string()),
    })?;
    let mut object = Map::new();
    object.insert("apiVersion".into(), Value::String(api_version));
    object.insert("kind".into(), Value::String(kind));
    object.extend(fields);
    Ok(Value::Object(object))
}

/// The message table for a kind, if this module can decode it.
fn message_for(api_version: &str, kind: &str) -> Option<&'static Message> {
    let message = match (api_version, kind) {
        ("v1", "Namespace") => &core_v1::NAMESPACE,
        ("v1", "ConfigMap") => &core_v1::CONFIG_MAP,
        ("v1", "Secret") => &core_v1::SECRET,
        ("v1", "ServiceAccount") => &core_v1::SERVICE_ACCOUNT,
        ("v1", "Service") => &core_v1::SERVICE,
        ("v1", "Pod") => &core_v1::POD,
        ("v1", "ResourceQuota") => &core_v1::RESOURCE_QUOTA,
        ("apps/v1", "Deployment") => &workloads::DEPLOYMENT,
        ("batch/v1", "Job") => &workloads::JOB,
        ("batch/v1", "CronJob") => &workloads::CRON_JOB,
        ("rbac.authorization.k8s.io/v1", "Role") => &rbac::ROLE,
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => &rbac::CLUSTER_ROLE,
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => &rbac::ROLE_BINDING,
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => &rbac::CLUSTER_ROLE_BINDING,
        ("scheduling.k8s.io/v1", "PriorityClass") => &rbac::PRIORITY_CLASS,
        ("authentication.k8s.io/v1", "TokenRequest") => &rbac::TOKEN_REQUEST,
        ("authorization.k8s.io/v1", "SubjectAccessReview") => &authz::SUBJECT_ACCESS_REVIEW,
        ("authorization.k8s.io/v1", "LocalSubjectAccessReview") => {
            &authz::LOCAL_SUBJECT_ACCESS_REVIEW
        }
        ("authorization.k8s.io/v1", "SelfSubjectAccessReview") => {
            &authz::SELF_SUBJECT_ACCESS_REVIEW
        }
        ("authorization.k8s.io/v1", "SelfSubjectRulesReview") => &authz::SELF_SUBJECT_RULES_REVIEW,
        ("authentication.k8s.io/v1", "TokenReview") => &authn::TOKEN_REVIEW,
        ("authentication.k8s.io/v1", "SelfSubjectReview") => &authn::SELF_SUBJECT_REVIEW,
        _ => return None,
    };
    Some(message)
}

/// runtime.Unknown: typeMeta=1 {apiVersion=1, kind=2}, raw=2, contentEncoding=3, contentType=4.
#[derive(Debug, Default)]
struct Unknown<'a> {
    api_version: String,
    kind: String,
    raw: &'a [u8],
    content_encoding: String,
    content_type: String,
}

impl<'a> Unknown<'a> {
    fn parse(buf: &'a [u8]) -> Result<Self, DecodeError> {
        let mut out = Unknown::default();
        for item in Fields::new(buf) {
            match item? {
                (1, WireValue::Bytes(b)) => (out.api_version, out.kind) = parse_type_meta(b)?,
                (2, WireValue::Bytes(b)) => out.raw = b,
                (3, WireValue::Bytes(b)) => out.content_encoding = text(b, "contentEncoding")?,
                (4, WireValue::Bytes(b)) => out.content_type = text(b, "contentType")?,
                (number, _) => {
                    return Err(DecodeError::UnknownField {
                        number,
                        message: "Unknown",
                    });
                }
            }
        }
        Ok(out)
    }
}

fn parse_type_meta(buf: &[u8]) -> Result<(String, String), DecodeError> {
    let (mut api_version, mut kind) = (String::new(), String::new());
    for item in Fields::new(buf) {
        match item? {
            (1, WireValue::Bytes(b)) => api_version = text(b, "apiVersion")?,
            (2, WireValue::Bytes(b)) => kind = text(b, "kind")?,
            (number, _) => {
                return Err(DecodeError::UnknownField {
                    number,
                    message: "TypeMeta",
                });
            }
        }
    }
    Ok((api_version, kind))
}

fn text(b: &[u8], field: &'static str) -> Result<String, DecodeError> {
    String::from_utf8(b.to_vec()).map_err(|_| DecodeError::Utf8 { field })
}
