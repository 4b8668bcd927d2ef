//! Request handlers for served resources: verbs dispatched by method and URL shape.

mod delete;
mod proxy;
mod read;
mod service_account;
mod strategy;
mod sub;
mod token;
mod watch;
mod write;

pub(crate) use service_account::admit as admit_service_account;

use crate::request::{Query, ResourcePath};
use crate::response::{self, Body};
use crate::server::ApiServer;
use capstan_api::{ApiError, ResourceInfo};
use http::Method;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::Value;

/// Largest request body accepted (upstream's limit).
const MAX_BODY: usize = 3 * 1024 * 1024;

/// Who is writing, for managedFields: `fieldManager` or the user agent's product name.
pub(crate) struct WriteOptions {
    pub dry_run: bool,
    pub manager: String,
    pub field_validation: FieldValidation,
    pub force: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

impl WriteOptions {
    fn from_request(q: &Query, headers: &http::HeaderMap) -> Result<Self, ApiError> {
        let manager = match q.get("fieldManager") {
            Some(m) => m.to_string(),
            None => headers
                .get(http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .and_then(|ua| ua.split('/').next())
                .filter(|s| !s.is_empty())
                .unwrap_or("unknown")
                .to_string(),
        };
        if manager.len() > 128 {
            return Err(ApiError::bad_request(
                "fieldManager must not be longer than 128 characters",
            ));
        }
        let field_validation = match q.get("fieldValidation") {
            None | Some("Warn") => FieldValidation::Warn,
            Some("Strict") => FieldValidation::Strict,
            Some("Ignore") => FieldValidation::Ignore,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "fieldValidation parameter unsupported: {other:?}; supported values: \"Ignore\", \"Strict\", \"Warn\""
                )));
            }
        };
        Ok(WriteOptions {
            dry_run: q.dry_run()?,
            manager,
            field_validation,
            force: q.get("force") == Some("true"),
        })
    }
}

async fn read_body(body: Incoming) -> Result<bytes::Bytes, ApiError> {
    let limited = http_body_util::Limited::new(body, MAX_BODY);
    match limited.collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::too_large(
            "the request body is too large: limit is 3MB",
        )),
        Err(e) => Err(ApiError::bad_request(format!("reading request body: {e}"))),
    }
}

pub(crate) fn content_type(headers: &http::HeaderMap) -> String {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|s| {
            s.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_else(|| "application/json".into())
}

/// Decode a JSON or YAML request body into a JSON value.
pub(crate) fn decode_body(info: &ResourceInfo, body: &[u8], ct: &str) -> Result<Value, ApiError> {
    let cannot = |e: String| {
        ApiError::bad_request(format!(
            "{} in version {:?} cannot be handled as a {}: {e}",
            info.kind, info.version, info.kind
        ))
    };
    match ct {
        "application/json" | "" | "*/*" => {
            serde_json::from_slice(body).map_err(|e| cannot(format!("json parse error: {e}")))
        }
        "application/yaml"
        | "application/x-yaml"
        | "text/yaml"
        | "application/apply-patch+yaml" => {
            let text = std::str::from_utf8(body).map_err(|_| cannot("body is not UTF-8".into()))?;
            serde_saphyr::from_str::<Value>(text).map_err(|e| cannot(format!("yaml: {e}")))
        }
        "application/vnd.kubernetes.protobuf" => capstan_api::protobuf::decode_request(info, body),
        other => Err(ApiError::unsupported_media_type(other)),
    }
}

/// Route one resource request by method and URL shape.
pub async fn handle(
    server: &ApiServer,
    rp: ResourcePath,
    req: http::Request<Incoming>,
    q: Query,
) -> http::Response<Body> {
    // RBAC's escalation check in the write path needs to know who is writing.
    let user = req.extensions().get::<crate::auth::UserInfo>().cloned();
    let inner = handle_inner(server, rp, req, q);
    // Admission hooks find the user and queue response warnings in their own request scope.
    let inner = crate::admission::scope(user.clone().unwrap_or_default(), inner);
    match crate::auth::rbac::escalation::REQUESTER
        .scope(user, inner)
        .await
    {
        Ok(r) => r,
        Err(e) => response::error(&e),
    }
}

async fn handle_inner(
    server: &ApiServer,
    rp: ResourcePath,
    req: http::Request<Incoming>,
    q: Query,
) -> Result<http::Response<Body>, ApiError> {
    let info = rp.info();
    let method = req.method().clone();
    if let Some(sub) = rp.subresource.filter(|s| proxy::is_proxied(*s)) {
        if !info.has_subresource(sub) || rp.name.is_none() || rp.namespace.is_none() {
            return Err(ApiError::path_not_found(""));
        }
        return proxy::handle(server, &rp, sub, req, &q).await;
    }
    let (parts, body) = req.into_parts();
    let headers = parts.headers;
    let verb_allowed = |v: &str| -> Result<(), ApiError> {
        if info.verbs.contains(&v) {
            Ok(())
        } else {
            Err(ApiError::method_not_supported(info, v))
        }
    };
    if info.namespaced && rp.name.is_some() && rp.namespace.is_none() {
        return Err(ApiError::path_not_found(""));
    }
    if let Some(sub) = rp.subresource {
        let body = if method == Method::GET {
            bytes::Bytes::new()
        } else {
            read_body(body).await?
        };
        return sub::handle(server, &rp, sub, &method, &headers, &q, body).await;
    }
    match (&method, rp.name.is_some()) {
        (&Method::GET, true) => read::get(server, &rp, &headers, &q).await,
        (&Method::GET, false) => {
            if q.get("watch").is_some_and(|w| w == "true" || w == "1") {
                verb_allowed("watch")?;
                watch::watch(server, &rp, &headers, &q).await
            } else {
                verb_allowed("list")?;
                read::list(server, &rp, &headers, &q).await
            }
        }
        (&Method::POST, false) if info.is_review() => {
            let body = read_body(body).await?;
            let user = parts
                .extensions
                .get::<crate::auth::UserInfo>()
                .cloned()
                .unwrap_or_default();
            crate::auth::reviews::create(server, &rp, &user, &headers, &q, body).await
        }
        (&Method::POST, false) => {
            verb_allowed("create")?;
            let body = read_body(body).await?;
            write::create(server, &rp, &headers, &q, body).await
        }
        (&Method::PUT, true) => {
            verb_allowed("update")?;
            let body = read_body(body).await?;
            write::update(server, &rp, &headers, &q, body).await
        }
        (&Method::PATCH, true) => {
            verb_allowed("patch")?;
            let body = read_body(body).await?;
            write::patch(server, &rp, &headers, &q, body).await
        }
        (&Method::DELETE, true) => {
            verb_allowed("delete")?;
            let body = read_body(body).await?;
            write::delete(server, &rp, &q, body).await
        }
        (&Method::DELETE, false) => {
            verb_allowed("deletecollection")?;
            let body = read_body(body).await?;
            write::delete_collection(server, &rp, &q, body).await
        }
        _ => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource ({method})"),
        )),
    }
}

/// Create an object on behalf of the server itself (bootstrap objects).
pub(crate) async fn create_internal(
    server: &ApiServer,
    info: &'static ResourceInfo,
    obj: Value,
) -> Result<Value, ApiError> {
    let opts = WriteOptions {
        dry_run: false,
        manager: "capstan".into(),
        field_validation: FieldValidation::Strict,
        force: false,
    };
    let obj = capstan_api::typed::roundtrip(info, &obj).map_err(ApiError::internal)?;
    write::create_object(server, info, obj, &opts).await
}
