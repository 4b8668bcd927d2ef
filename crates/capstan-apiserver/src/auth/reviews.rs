//! The review kinds: created, answered from the authenticator or the authorizers, never stored.
//! SelfSubjectReview (`kubectl auth whoami`), TokenReview, and the access reviews
//! (`kubectl auth can-i`).

use super::{Attributes, Decision, UserInfo};
use crate::handlers::decode_body;
use crate::request::{Query, ResourcePath};
use crate::response::{self, Body};
use crate::server::ApiServer;
use capstan_api::status::Cause;
use capstan_api::{ApiError, ResourceInfo};
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
        "TokenReview" => super::token_review::status(server, &review).await?,
        "SelfSubjectAccessReview" => access_review(server, user.clone(), &review["spec"]).await?,
        "SubjectAccessReview" => {
            let subject = spec_user(&review["spec"])?;
            access_review(server, subject, &review["spec"]).await?
        }
        "LocalSubjectAccessReview" => {
            let subject = spec_user(&review["spec"])?;
            check_local_namespace(info, rp, &mut review)?;
            access_review(server, subject, &review["spec"]).await?
        }
        "SelfSubjectRulesReview" => rules_review(server, user, &review["spec"]),
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

fn str_at<'a>(v: &'a Value, field: &str) -> &'a str {
    v.get(field).and_then(Value::as_str).unwrap_or_default()
}

fn invalid(info: &ResourceInfo, field: &str, value: &Value, detail: &str) -> ApiError {
    ApiError::invalid(info, "", vec![Cause::invalid(field, value, detail)])
}

/// The user a SubjectAccessReview asks about: `spec.user`, `groups`, `uid`, `extra` as given.
fn spec_user(spec: &Value) -> Result<UserInfo, ApiError> {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(String::from))
            .collect()
    };
    let user = UserInfo {
        name: str_at(spec, "user").into(),
        uid: str_at(spec, "uid").into(),
        groups: strings(&spec["groups"]),
        // Protobuf bodies carry ExtraValue messages ({"items": [...]}); JSON plain lists.
        extra: spec["extra"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), strings(v.get("items").unwrap_or(v))))
            .collect(),
    };
    if user.name.is_empty() && user.groups.is_empty() {
        return Err(ApiError::bad_request(
            "spec.user: Invalid value: \"\": at least one of user or group must be specified",
        ));
    }
    Ok(user)
}

/// A LocalSubjectAccessReview is about its own namespace only.
fn check_local_namespace(
    info: &ResourceInfo,
    rp: &ResourcePath,
    review: &mut Value,
) -> Result<(), ApiError> {
    let ns = rp.namespace.clone().unwrap_or_default();
    match review["metadata"]["namespace"].as_str() {
        None | Some("") => {
            if review["metadata"].is_object() {
                review["metadata"]["namespace"] = Value::String(ns.clone());
            } else {
                review["metadata"] = json!({ "namespace": ns });
            }
        }
        Some(m) if m == ns => {}
        Some(_) => {
            return Err(ApiError::bad_request(format!(
                "spec.resourceAttributes.namespace must match namespace: {ns}"
            )));
        }
    }
    let spec = &review["spec"];
    if spec
        .get("nonResourceAttributes")
        .is_some_and(|v| !v.is_null())
    {
        return Err(invalid(
            info,
            "spec.nonResourceAttributes",
            &spec["nonResourceAttributes"],
            "disallowed on this kind of request",
        ));
    }
    let attr_ns = spec["resourceAttributes"]["namespace"]
        .as_str()
        .unwrap_or_default();
    if attr_ns != ns {
        return Err(invalid(
            info,
            "spec.resourceAttributes.namespace",
            &Value::String(attr_ns.into()),
            "must match metadata.namespace",
        ));
    }
    Ok(())
}

/// The status of an access review: the whole authorizer chain's verdict for `user`.
async fn access_review(
    server: &ApiServer,
    user: UserInfo,
    spec: &Value,
) -> Result<Value, ApiError> {
    let resource = spec.get("resourceAttributes").filter(|v| v.is_object());
    let non_resource = spec.get("nonResourceAttributes").filter(|v| v.is_object());
    let attrs = match (resource, non_resource) {
        (Some(ra), None) => Attributes {
            user,
            verb: str_at(ra, "verb").into(),
            resource_request: true,
            api_group: str_at(ra, "group").into(),
            api_version: str_at(ra, "version").into(),
            resource: str_at(ra, "resource").into(),
            subresource: str_at(ra, "subresource").into(),
            namespace: str_at(ra, "namespace").into(),
            name: str_at(ra, "name").into(),
            path: String::new(),
        },
        (None, Some(nra)) => Attributes {
            user,
            verb: str_at(nra, "verb").into(),
            path: str_at(nra, "path").into(),
            ..Default::default()
        },
        _ => {
            return Err(ApiError::bad_request(
                "spec.resourceAttributes: Invalid value: exactly one of nonResourceAttributes or resourceAttributes must be specified",
            ));
        }
    };
    Ok(match super::authorize(server, &attrs).await {
        Decision::Allow => json!({ "allowed": true }),
        Decision::Deny(reason) => json!({ "allowed": false, "denied": true, "reason": reason }),
        Decision::NoOpinion => json!({ "allowed": false }),
    })
}

/// The rules RBAC grants the requesting user in `spec.namespace` (`kubectl auth can-i --list`).
fn rules_review(server: &ApiServer, user: &UserInfo, spec: &Value) -> Value {
    let rules = super::rbac::rules_for(server, user, str_at(spec, "namespace"));
    let mut resource_rules = Vec::new();
    let mut non_resource_rules = Vec::new();
    for r in rules {
        if !r.resources.is_empty() {
            let mut v =
                json!({ "verbs": r.verbs, "apiGroups": r.api_groups, "resources": r.resources });
            if !r.resource_names.is_empty() {
                v["resourceNames"] = json!(r.resource_names);
            }
            resource_rules.push(v);
        }
        if !r.non_resource_urls.is_empty() {
            non_resource_rules
                .push(json!({ "verbs": r.verbs, "nonResourceURLs": r.non_resource_urls }));
        }
    }
    let mut status = json!({
        "resourceRules": resource_rules,
        "nonResourceRules": non_resource_rules,
        "incomplete": false,
    });
    // The Node authorizer grants what no rule lists, as upstream reports.
    if user.in_group("system:nodes") && user.name.starts_with("system:node:") {
        status["incomplete"] = json!(true);
        status["evaluationError"] = json!("node authorizer does not support user rule resolution");
    }
    status
}
