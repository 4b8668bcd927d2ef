//! The review kinds: created, answered from the authenticator or the authorizers, never stored.
//! SelfSubjectReview (`kubectl auth whoami`), TokenReview, and the access reviews
//! (`kubectl auth can-i`).

use super::UserInfo;
use crate::handlers::decode_body;
use crate::request::{Query, ResourcePath};
use crate::response::{self, Body};
use crate::server::ApiServer;
use capstan_api::ApiError;
use serde_json::{Value, json};

/// Answers a create of a review kind.
pub async fn create(
    server: &ApiServer,
    rp: &ResourcePath,
    user: &UserInfo,
    headers: &http::HeaderMap,
    _q: &Query,
    body: bytes::Bytes,
) -> Result<http::Response<Body>, ApiError> {
    let info = rp.info();
    let ct = crate::handlers::content_type(headers);
    let mut review = decode_body(info, &body, &ct)?;
    if !review.is_object() {
        return Err(ApiError::bad_request("the review must be an object"));
    }
    let _ = server;
    let status = match info.kind {
        "SelfSubjectReview" => json!({ "userInfo": user_info_json(user) }),
        other => {
            return Err(ApiError::new(
                501,
                "NotImplemented",
                format!("{other} is not served yet"),
            ));
        }
    };
    review["status"] = status;
    review["apiVersion"] = Value::String(format!("{}/{}", info.group, info.version));
    review["kind"] = Value::String(info.kind.into());
    Ok(response::json(201, &review))
}

/// `authentication.k8s.io/v1` UserInfo.
pub fn user_info_json(user: &UserInfo) -> Value {
    let mut v = json!({ "username": user.name, "groups": user.groups });
    if !user.uid.is_empty() {
        v["uid"] = Value::String(user.uid.clone());
    }
    if !user.extra.is_empty() {
        v["extra"] = json!(user.extra);
    }
    v
}
