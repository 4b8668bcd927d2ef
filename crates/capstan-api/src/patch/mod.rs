//! Patch application: JSON patch (RFC 6902), JSON merge patch (RFC 7386) and strategic merge
//! patch, with the Status errors the upstream API server returns for bad patches.

mod strategic;

use crate::ResourceInfo;
use crate::status::{ApiError, Cause};
use serde_json::Value;

pub use strategic::strategic_merge;

/// Applies an RFC 6902 JSON patch. A patch that is not a JSON patch document is a 400
/// BadRequest; an operation that cannot be applied (missing path, failed `test`) is the 422
/// upstream returns: "the server rejected our request due to an error in our request".
pub fn apply_json_patch(target: &Value, patch: &[u8]) -> Result<Value, ApiError> {
    let ops: json_patch::Patch =
        serde_json::from_slice(patch).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let mut doc = target.clone();
    // patch_unsafe: the copy is dropped on error, so json_patch's rollback is not needed, and
    // that rollback panics when it cannot undo a `move` to the root (found by fuzzing).
    json_patch::patch_unsafe(&mut doc, &ops).map_err(|e| unprocessable(e.to_string()))?;
    Ok(doc)
}

/// Applies an RFC 7386 JSON merge patch: objects merge recursively, null deletes, anything
/// else (arrays included) replaces.
pub fn apply_merge_patch(target: &Value, patch: &[u8]) -> Result<Value, ApiError> {
    let patch: Value =
        serde_json::from_slice(patch).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let mut doc = target.clone();
    json_patch::merge(&mut doc, &patch);
    Ok(doc)
}

/// Applies a strategic merge patch to an object of the kind `info`, using the patch metadata
/// of the built-in types (merge keys, `$patch`, `$retainKeys`, `$setElementOrder/`,
/// `$deleteFromPrimitiveList/`).
pub fn apply_strategic_merge_patch(
    info: &ResourceInfo,
    target: &Value,
    patch: &[u8],
) -> Result<Value, ApiError> {
    let patch: Value =
        serde_json::from_slice(patch).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let Value::Object(patch) = patch else {
        return Err(ApiError::bad_request(format!(
            "json: cannot unmarshal {} into Go value of type map[string]interface {{}}",
            go_type_name(&patch)
        )));
    };
    let Value::Object(original) = target.clone() else {
        return Err(ApiError::bad_request("invalid JSON document"));
    };
    let node = crate::schema::SchemaNode::root(info);
    strategic_merge(original, patch, node)
        .map(Value::Object)
        .map_err(ApiError::from)
}

/// How upstream's `encoding/json` names a JSON value in type errors.
fn go_type_name(v: &Value) -> &'static str {
    match v {
        Value::Array(_) => "array",
        Value::String(_) => "string",
        Value::Number(_) => "number",
        Value::Bool(_) => "bool",
        Value::Null => "null",
        Value::Object(_) => "object",
    }
}

/// The 422 upstream's generic server response carries: reason Invalid, a fixed message, and
/// the underlying error as an `UnexpectedServerResponse` cause.
fn unprocessable(detail: String) -> ApiError {
    ApiError::new(
        422,
        "Invalid",
        "the server rejected our request due to an error in our request",
    )
    .with_causes(vec![Cause::new("UnexpectedServerResponse", "", detail)])
}

/// A strategic merge patch failure, classified as upstream's patch handler classifies it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// Malformed directives (`$retainKeys`, `$setElementOrder`, `$deleteFromPrimitiveList`): 400.
    #[error("{0}")]
    BadRequest(String),
    /// Patches the schema cannot express (lists of lists): 422.
    #[error("{0}")]
    Unprocessable(String),
    /// Everything else (unknown `$patch`, missing merge key): upstream returns these unwrapped,
    /// which the API server reports as 500.
    #[error("{0}")]
    Internal(String),
}

impl From<PatchError> for ApiError {
    fn from(e: PatchError) -> Self {
        match e {
            PatchError::BadRequest(m) => ApiError::bad_request(m),
            PatchError::Unprocessable(m) => unprocessable(m),
            PatchError::Internal(m) => ApiError::internal(m),
        }
    }
}

#[cfg(test)]
mod tests;
