//! Admission: the built-in plugins upstream enables by default, run on every write after
//! decoding and defaulting. Mutating plugins first (LimitRanger defaults, ServiceAccount,
//! Priority, DefaultTolerationSeconds), then validating ones (NamespaceLifecycle, LimitRanger,
//! NodeRestriction, Priority, PodSecurity, ResourceQuota last, as it charges usage).
//!
//! The requesting user and the warnings for the response travel in a task-local
//! [`Context`] that the request handler sets for the whole request ([`scope`]).

pub mod limit_ranger;
pub mod namespace;
pub mod node_restriction;
pub mod pod_security;
pub mod priority;
mod pss_checks;
pub mod quota;
pub mod tolerations;

use crate::auth::UserInfo;
use crate::server::ApiServer;
use capstan_api::{ApiError, ResourceInfo, Subresource, resources};
use serde_json::Value;
use std::sync::Mutex;

/// The write being admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Create,
    Update,
    Delete,
}

/// One admission request: what is written, where, and by whom.
pub struct Request<'a> {
    pub operation: Operation,
    pub info: &'static ResourceInfo,
    pub subresource: Option<Subresource>,
    pub namespace: Option<&'a str>,
    pub name: &'a str,
    pub user: &'a UserInfo,
    /// The stored object for updates and deletes.
    pub old: Option<&'a Value>,
    pub dry_run: bool,
}

impl Request<'_> {
    /// True for the core-group kind `kind` (e.g. "Pod").
    pub fn is_core(&self, kind: &str) -> bool {
        self.info.group.is_empty() && self.info.kind == kind
    }
    /// `pods "p" is forbidden: <msg>`, upstream's admission error.
    pub fn forbidden(&self, msg: impl std::fmt::Display) -> ApiError {
        forbidden(self.info, self.name, msg)
    }
}

/// A 403 naming the object, as upstream's `admission.NewForbidden`.
pub fn forbidden(info: &ResourceInfo, name: &str, msg: impl std::fmt::Display) -> ApiError {
    let resource = if info.group.is_empty() {
        info.plural.to_string()
    } else {
        format!("{}.{}", info.plural, info.group)
    };
    let mut e = ApiError::forbidden(format!("{resource} {name:?} is forbidden: {msg}"));
    e.name = Some(name.to_string());
    e.kind = Some(info.plural.to_string());
    if !info.group.is_empty() {
        e.group = Some(info.group.to_string());
    }
    e
}

/// Per-request state: the authenticated user and admission warnings for the response.
#[derive(Debug, Default)]
pub struct Context {
    pub user: UserInfo,
    pub warnings: Mutex<Vec<String>>,
}

tokio::task_local! {
    static CONTEXT: Context;
}

/// Run `fut` (one request) with `user` as the requesting user.
pub async fn scope<F: std::future::Future>(user: UserInfo, fut: F) -> F::Output {
    CONTEXT
        .scope(
            Context {
                user,
                warnings: Mutex::new(Vec::new()),
            },
            fut,
        )
        .await
}

/// The user of the current request; the API server itself (a cluster admin) outside one.
pub fn current_user() -> UserInfo {
    CONTEXT
        .try_with(|c| c.user.clone())
        .unwrap_or_else(|_| UserInfo::new("system:apiserver", &[crate::auth::MASTERS]))
}

/// Queue a `Warning:` header for the current response.
pub fn warn(msg: String) {
    let _ = CONTEXT.try_with(|c| {
        if let Ok(mut w) = c.warnings.lock() {
            w.push(msg);
        }
    });
}

/// Take the queued warnings of the current request.
pub fn take_warnings() -> Vec<String> {
    CONTEXT
        .try_with(|c| match c.warnings.lock() {
            Ok(mut w) => std::mem::take(&mut *w),
            Err(_) => Vec::new(),
        })
        .unwrap_or_default()
}

/// The mutating phase; `obj` is the object to be written.
pub async fn mutate(
    server: &ApiServer,
    req: &Request<'_>,
    obj: &mut Value,
) -> Result<(), ApiError> {
    namespace::admit(server, req).await?;
    if req.operation != Operation::Create || req.subresource.is_some() {
        return Ok(());
    }
    if req.is_core("Pod") {
        limit_ranger::mutate(server, req, obj).await?;
        crate::handlers::admit_service_account(server, obj).await?;
        priority::mutate(server, req, obj).await?;
        tolerations::mutate(obj);
    }
    Ok(())
}

/// The validating phase; for deletes `obj` is the stored object.
pub async fn validate(server: &ApiServer, req: &Request<'_>, obj: &Value) -> Result<(), ApiError> {
    if req.operation == Operation::Create && req.subresource.is_none() {
        if req.is_core("Pod") {
            limit_ranger::validate(server, req, obj).await?;
        }
        if req.info.group == "scheduling.k8s.io" && req.info.kind == "PriorityClass" {
            priority::validate_class(server, req, obj).await?;
        }
    }
    node_restriction::admit(req, obj)?;
    if req.operation != Operation::Delete {
        pod_security::admit(server, req, obj).await?;
    }
    if req.operation == Operation::Create && req.subresource.is_none() {
        quota::admit(server, req, obj).await?;
    }
    Ok(())
}

/// Admission of a delete; `obj` is the stored object.
pub async fn admit_delete(
    server: &ApiServer,
    req: &Request<'_>,
    obj: &Value,
) -> Result<(), ApiError> {
    namespace::admit(server, req).await?;
    node_restriction::admit(req, obj)
}

/// Every stored object of `plural` (core group when `group` is "") in `ns`, from the store so
/// that objects created just before are seen.
pub(crate) async fn list(
    server: &ApiServer,
    group: &str,
    plural: &str,
    ns: Option<&str>,
) -> Result<Vec<(Value, i64)>, ApiError> {
    let Some(info) = resources::RESOURCES
        .iter()
        .find(|r| r.group == group && r.plural == plural)
    else {
        return Ok(Vec::new());
    };
    let prefix = info.store_namespace_prefix(ns);
    let res = server
        .store
        .list(&prefix, None, 0, None)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(res
        .items
        .iter()
        .filter_map(|kv| {
            serde_json::from_slice::<Value>(&kv.value)
                .ok()
                .map(|v| (v, kv.mod_revision))
        })
        .collect())
}

/// One stored object, with its revision.
pub(crate) async fn get(
    server: &ApiServer,
    group: &str,
    plural: &str,
    ns: Option<&str>,
    name: &str,
) -> Result<Option<(Value, i64)>, ApiError> {
    let Some(info) = resources::RESOURCES
        .iter()
        .find(|r| r.group == group && r.plural == plural)
    else {
        return Ok(None);
    };
    let kv = server
        .store
        .get(&info.store_key(ns, name))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(kv.and_then(|kv| {
        serde_json::from_slice::<Value>(&kv.value)
            .ok()
            .map(|v| (v, kv.mod_revision))
    }))
}

/// Every container of a pod spec (init, regular, ephemeral) with its field path prefix.
pub(crate) fn containers(spec: &Value) -> impl Iterator<Item = &Value> {
    ["initContainers", "containers", "ephemeralContainers"]
        .into_iter()
        .flat_map(move |f| spec[f].as_array().into_iter().flatten())
}
