//! Who is asking and may they: authentication (client certificates, bearer tokens), the request
//! attributes authorizers judge, and authorization (RBAC and the Node authorizer). Every request
//! passes [`authenticate`] then [`authorize`] in `server::dispatch` before any handler runs; the
//! handlers find the [`UserInfo`] in the request's extensions.

pub mod audit;
pub mod impersonation;
pub mod join;
pub mod node;
pub mod rbac;
pub mod reviews;
pub mod token_review;
pub mod tokens;
pub mod x509;

use crate::request::{Query, Target};
use crate::server::ApiServer;
use capstan_api::ApiError;
use std::collections::BTreeMap;

/// An authenticated user, as upstream's `user.Info`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UserInfo {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, Vec<String>>,
}

/// The group every authenticated user is in.
pub const AUTHENTICATED: &str = "system:authenticated";
/// The group whose members may do anything (cluster-admin without a binding).
pub const MASTERS: &str = "system:masters";

impl UserInfo {
    pub fn new(name: impl Into<String>, groups: &[&str]) -> UserInfo {
        UserInfo {
            name: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            ..Default::default()
        }
    }
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }
    /// Adds `system:authenticated` unless present, as upstream's authenticator union does.
    pub fn authenticated(mut self) -> UserInfo {
        if !self.in_group(AUTHENTICATED) {
            self.groups.push(AUTHENTICATED.into());
        }
        self
    }
}

/// What the TLS layer proved: the user named by a client certificate the cluster CA signed.
/// Set per connection by the accept loop; `None` when the client sent no certificate.
#[derive(Clone, Debug, Default)]
pub struct PeerIdentity(pub Option<UserInfo>);

/// The attributes of one request that authorizers judge (upstream's `authorizer.Attributes`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attributes {
    pub user: UserInfo,
    /// get, list, watch, create, update, patch, delete, deletecollection; or for non-resource
    /// requests the lower-case HTTP method (get, post, ...).
    pub verb: String,
    /// True for `/api/...` and `/apis/...` requests naming a resource.
    pub resource_request: bool,
    pub api_group: String,
    pub api_version: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    /// The URL path, for non-resource requests.
    pub path: String,
}

/// The verdict of an authorizer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Explicitly refused, with a reason for the 403 message.
    Deny(String),
    /// This authorizer has nothing to say; the next one decides.
    NoOpinion,
}

/// Paths anyone may read without credentials (upstream's `system:public-info-viewer`).
pub fn is_public(path: &str) -> bool {
    let path = path.trim_end_matches('/');
    matches!(path, "/healthz" | "/livez" | "/readyz" | "/version")
        || path.starts_with("/healthz/")
        || path.starts_with("/livez/")
        || path.starts_with("/readyz/")
}

/// The user of a request: the client certificate's, else the bearer token's; `None` when the
/// request carries no credentials at all. Bad credentials are 401.
pub async fn authenticate(
    server: &ApiServer,
    headers: &http::HeaderMap,
    peer: &PeerIdentity,
) -> Result<Option<UserInfo>, ApiError> {
    if let Some(user) = &peer.0 {
        return Ok(Some(user.clone().authenticated()));
    }
    let Some(token) = bearer_token(headers) else {
        return Ok(None);
    };
    match tokens::authenticate_token(server, token, &[]).await {
        Ok(found) => Ok(Some(found.user.authenticated())),
        Err(tokens::TokenFailure(why)) => {
            tracing::debug!(
                reason = why.as_deref().unwrap_or("unknown token"),
                "bearer token refused"
            );
            Err(ApiError::unauthorized())
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header, as upstream's bearer token
/// authenticator reads it; other schemes and empty tokens are no credentials.
pub fn bearer_token(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let mut parts = value.splitn(3, ' ');
    let scheme = parts.next()?;
    let token = parts.next()?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The verb of a request as RBAC names it.
pub fn verb_of(method: &http::Method, target: &Target, query: &Query) -> String {
    let lower = method.as_str().to_ascii_lowercase();
    let Target::Resource(rp) = target else {
        return lower;
    };
    match *method {
        http::Method::GET | http::Method::HEAD => {
            if rp.name.is_some() {
                "get".into()
            } else if query.get("watch").is_some_and(|w| w == "true" || w == "1") {
                "watch".into()
            } else {
                "list".into()
            }
        }
        http::Method::POST => "create".into(),
        http::Method::PUT => "update".into(),
        http::Method::PATCH => "patch".into(),
        http::Method::DELETE if rp.name.is_none() => "deletecollection".into(),
        http::Method::DELETE => "delete".into(),
        _ => lower,
    }
}

/// The attributes of a request by `user`.
pub fn attributes(
    user: &UserInfo,
    method: &http::Method,
    path: &str,
    target: &Target,
    query: &Query,
) -> Attributes {
    let verb = verb_of(method, target, query);
    match target {
        Target::Resource(rp) => {
            let info = rp.info();
            Attributes {
                user: user.clone(),
                verb,
                resource_request: true,
                api_group: info.group.into(),
                api_version: info.version.into(),
                resource: info.plural.into(),
                subresource: rp
                    .subresource
                    .map(|s| s.name().to_string())
                    .unwrap_or_default(),
                namespace: rp.namespace.clone().unwrap_or_default(),
                name: rp.name.clone().unwrap_or_default(),
                path: path.into(),
            }
        }
        _ => Attributes {
            user: user.clone(),
            verb,
            path: path.into(),
            ..Default::default()
        },
    }
}

/// Whether `attrs` may proceed: members of `system:masters` always; then the authorizers in
/// upstream's order (Node, RBAC).
pub async fn authorize(server: &ApiServer, attrs: &Attributes) -> Decision {
    if attrs.user.in_group(MASTERS) {
        return Decision::Allow;
    }
    for decision in [
        node::authorize(server, attrs).await,
        rbac::authorize(server, attrs).await,
    ] {
        match decision {
            Decision::NoOpinion => continue,
            verdict => return verdict,
        }
    }
    Decision::NoOpinion
}

/// Upstream's 403 message, e.g. `pods is forbidden: User "x" cannot list resource "pods" in API
/// group "" in the namespace "default"`.
pub fn forbidden(attrs: &Attributes, reason: &str) -> ApiError {
    let user = &attrs.user.name;
    let mut message = if attrs.resource_request {
        let resource = if attrs.subresource.is_empty() {
            attrs.resource.clone()
        } else {
            format!("{}/{}", attrs.resource, attrs.subresource)
        };
        let what = if attrs.name.is_empty() {
            resource.clone()
        } else {
            format!("{resource} {:?}", attrs.name)
        };
        let mut m = format!(
            "{what} is forbidden: User {user:?} cannot {} resource {resource:?} in API group {:?}",
            attrs.verb, attrs.api_group
        );
        if attrs.namespace.is_empty() {
            m.push_str(" at the cluster scope");
        } else {
            m.push_str(&format!(" in the namespace {:?}", attrs.namespace));
        }
        m
    } else {
        format!(
            "forbidden: User {user:?} cannot {} path {:?}",
            attrs.verb, attrs.path
        )
    };
    if !reason.is_empty() {
        message.push_str(": ");
        message.push_str(reason);
    }
    let mut err = ApiError::forbidden(message);
    if attrs.resource_request {
        err.name = Some(attrs.name.clone());
        err.group = Some(attrs.api_group.clone());
        err.kind = Some(attrs.resource.clone());
    }
    err
}
