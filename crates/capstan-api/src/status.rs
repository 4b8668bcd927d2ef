//! Kubernetes `metav1.Status` errors with upstream's reasons, codes and messages.

use crate::ResourceInfo;
use serde_json::{Value, json};

/// One field-level cause of an error (`details.causes[]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cause {
    /// Upstream cause type, e.g. `FieldValueInvalid`, `FieldValueRequired`, `FieldValueDuplicate`,
    /// `FieldValueNotSupported`, `FieldValueTooLong`, `FieldValueForbidden`, `FieldValueTypeInvalid`.
    pub reason: String,
    /// Message without the field path, e.g. `Invalid value: "Foo": a lowercase RFC 1123 ...`.
    pub message: String,
    /// Field path, e.g. `metadata.name` or `spec.template.spec.containers[0].name`.
    pub field: String,
}

impl Cause {
    pub fn new(reason: &str, field: impl Into<String>, message: impl Into<String>) -> Self {
        Cause {
            reason: reason.into(),
            field: field.into(),
            message: message.into(),
        }
    }
    /// `field: Invalid value: <value>: <detail>` as upstream's field.Invalid.
    pub fn invalid(field: impl Into<String>, value: &Value, detail: &str) -> Self {
        let shown = match value {
            Value::String(s) => format!("{s:?}"),
            other => other.to_string(),
        };
        Cause::new(
            "FieldValueInvalid",
            field,
            format!("Invalid value: {shown}: {detail}"),
        )
    }
    pub fn required(field: impl Into<String>, detail: &str) -> Self {
        let msg = if detail.is_empty() {
            "Required value".to_string()
        } else {
            format!("Required value: {detail}")
        };
        Cause::new("FieldValueRequired", field, msg)
    }
    pub fn forbidden(field: impl Into<String>, detail: &str) -> Self {
        Cause::new("FieldValueForbidden", field, format!("Forbidden: {detail}"))
    }
    pub fn duplicate(field: impl Into<String>, value: &Value) -> Self {
        let shown = match value {
            Value::String(s) => format!("{s:?}"),
            other => other.to_string(),
        };
        Cause::new(
            "FieldValueDuplicate",
            field,
            format!("Duplicate value: {shown}"),
        )
    }
    pub fn not_supported(field: impl Into<String>, value: &Value, supported: &[&str]) -> Self {
        let shown = match value {
            Value::String(s) => format!("{s:?}"),
            other => other.to_string(),
        };
        let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        Cause::new(
            "FieldValueNotSupported",
            field,
            format!(
                "Unsupported value: {shown}: supported values: {}",
                list.join(", ")
            ),
        )
    }
    pub fn too_long(field: impl Into<String>, max: usize) -> Self {
        Cause::new(
            "FieldValueTooLong",
            field,
            format!("Too long: may not be more than {max} bytes"),
        )
    }
    /// `field: message` as upstream prints a cause inside an Invalid message.
    pub fn render(&self) -> String {
        if self.field.is_empty() {
            self.message.clone()
        } else {
            format!("{}: {}", self.field, self.message)
        }
    }
}

/// An API error rendered as a `Status` object with an HTTP code.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub code: u16,
    /// `metav1.StatusReason`: NotFound, AlreadyExists, Conflict, Invalid, BadRequest, ...
    pub reason: String,
    pub message: String,
    pub name: Option<String>,
    pub group: Option<String>,
    /// Plural resource name for `details.kind`, as upstream puts it.
    pub kind: Option<String>,
    pub causes: Vec<Cause>,
    pub retry_after_seconds: Option<u32>,
}

impl ApiError {
    pub fn new(code: u16, reason: &str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason: reason.into(),
            message: message.into(),
            name: None,
            group: None,
            kind: None,
            causes: Vec::new(),
            retry_after_seconds: None,
        }
    }
    fn with_details(mut self, info: &ResourceInfo, name: &str) -> Self {
        self.name = Some(name.to_string());
        self.group = Some(info.group.to_string());
        self.kind = Some(info.plural.to_string());
        self
    }
    pub fn with_causes(mut self, causes: Vec<Cause>) -> Self {
        self.causes = causes;
        self
    }

    pub fn not_found(info: &ResourceInfo, name: &str) -> Self {
        ApiError::new(
            404,
            "NotFound",
            format!("{} {:?} not found", info.group_resource(), name),
        )
        .with_details(info, name)
    }
    pub fn already_exists(info: &ResourceInfo, name: &str) -> Self {
        ApiError::new(
            409,
            "AlreadyExists",
            format!("{} {:?} already exists", info.group_resource(), name),
        )
        .with_details(info, name)
    }
    /// Optimistic-concurrency failure on update.
    pub fn conflict(info: &ResourceInfo, name: &str) -> Self {
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} {:?}: the object has been modified; please apply your changes to the latest version and try again",
                info.group_resource(),
                name
            ),
        )
        .with_details(info, name)
    }
    /// A conflict with a custom explanation (e.g. server-side apply field conflicts).
    pub fn conflict_msg(info: &ResourceInfo, name: &str, msg: &str) -> Self {
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} {:?}: {msg}",
                info.group_resource(),
                name
            ),
        )
        .with_details(info, name)
    }
    /// 422 Invalid: `Kind "name" is invalid: [cause, cause]` as upstream.
    pub fn invalid(info: &ResourceInfo, name: &str, causes: Vec<Cause>) -> Self {
        ApiError::invalid_kind(info.kind, info.group, name, causes)
    }
    pub fn invalid_kind(kind: &str, group: &str, name: &str, causes: Vec<Cause>) -> Self {
        let rendered: Vec<String> = causes.iter().map(Cause::render).collect();
        let body = if rendered.len() == 1 {
            rendered[0].clone()
        } else {
            format!("[{}]", rendered.join(", "))
        };
        let qualified = if group.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}.{group}")
        };
        let mut e = ApiError::new(
            422,
            "Invalid",
            format!("{qualified} {name:?} is invalid: {body}"),
        );
        e.name = Some(name.to_string());
        e.group = Some(group.to_string());
        e.kind = Some(kind.to_string());
        e.causes = causes;
        e
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(400, "BadRequest", message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        ApiError::new(403, "Forbidden", message)
    }
    pub fn unauthorized() -> Self {
        ApiError::new(401, "Unauthorized", "Unauthorized")
    }
    pub fn method_not_supported(info: &ResourceInfo, verb: &str) -> Self {
        ApiError::new(
            405,
            "MethodNotAllowed",
            format!(
                "{verb} is not supported on resources of kind {:?}",
                info.group_resource()
            ),
        )
    }
    /// 410 for a resourceVersion older than the watch window or a compacted store revision.
    pub fn expired(message: impl Into<String>) -> Self {
        ApiError::new(410, "Expired", message)
    }
    pub fn too_large(message: impl Into<String>) -> Self {
        ApiError::new(413, "RequestEntityTooLarge", message)
    }
    pub fn unsupported_media_type(content_type: &str) -> Self {
        ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/apply-patch+yaml; got {content_type:?}"
            ),
        )
    }
    pub fn not_acceptable(message: impl Into<String>) -> Self {
        ApiError::new(406, "NotAcceptable", message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        ApiError::new(
            500,
            "InternalError",
            format!("Internal error occurred: {}", message.into()),
        )
    }
    pub fn service_unavailable(message: impl Into<String>) -> Self {
        ApiError::new(503, "ServiceUnavailable", message)
    }
    pub fn timeout(message: impl Into<String>) -> Self {
        ApiError::new(504, "Timeout", message)
    }
    /// 404 for a URL that names no served resource.
    pub fn path_not_found(path: &str) -> Self {
        let _ = path;
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    /// The `Status` object sent on the wire.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        let has_details = self.name.is_some()
            || self.kind.is_some()
            || !self.causes.is_empty()
            || self.retry_after_seconds.is_some();
        if has_details {
            let mut d = serde_json::Map::new();
            if let Some(n) = &self.name {
                d.insert("name".into(), json!(n));
            }
            if let Some(g) = self.group.as_ref().filter(|g| !g.is_empty()) {
                d.insert("group".into(), json!(g));
            }
            if let Some(k) = &self.kind {
                d.insert("kind".into(), json!(k));
            }
            if !self.causes.is_empty() {
                let causes: Vec<Value> = self
                    .causes
                    .iter()
                    .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
                    .collect();
                d.insert("causes".into(), Value::Array(causes));
            }
            if let Some(s) = self.retry_after_seconds {
                d.insert("retryAfterSeconds".into(), json!(s));
            }
            status["details"] = Value::Object(d);
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::find;

    #[test]
    fn not_found_message_matches_upstream() {
        let d = find("apps", "v1", "deployments").unwrap();
        let e = ApiError::not_found(d, "web");
        assert_eq!(e.message, "deployments.apps \"web\" not found");
        let s = e.to_status();
        assert_eq!(s["code"], 404);
        assert_eq!(s["details"]["kind"], "deployments");
        assert_eq!(s["details"]["group"], "apps");
    }

    #[test]
    fn invalid_lists_several_causes_in_brackets() {
        let cm = find("", "v1", "configmaps").unwrap();
        let e = ApiError::invalid(
            cm,
            "Bad",
            vec![
                Cause::invalid("metadata.name", &json!("Bad"), "x"),
                Cause::required("data", ""),
            ],
        );
        assert_eq!(
            e.message,
            "ConfigMap \"Bad\" is invalid: [metadata.name: Invalid value: \"Bad\": x, data: Required value]"
        );
        assert_eq!(e.code, 422);
    }
}
