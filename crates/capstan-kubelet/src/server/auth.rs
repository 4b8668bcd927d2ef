//! Who may use the kubelet API, as upstream's kubelet decides in webhook mode: the caller is
//! the subject of a client certificate the cluster CA signed (verified in TLS) or the user a
//! TokenReview names for its bearer token; it may proceed when a SubjectAccessReview for the
//! node (`nodes/proxy`, `nodes/log`, `nodes/stats` ...) allows it. `system:masters` (the API
//! server's own kubelet client certificate) is allowed without asking back.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// How long answers of the API server are reused (upstream's kubelet webhook cache TTLs).
const AUTHN_TTL: Duration = Duration::from_secs(120);
const ALLOWED_TTL: Duration = Duration::from_secs(300);
const DENIED_TTL: Duration = Duration::from_secs(30);
/// Entries kept per cache before it is emptied (bounded memory against token spraying).
const CACHE_LIMIT: usize = 1024;

const MASTERS: &str = "system:masters";

/// What the kubelet API needs to check callers.
#[derive(Clone, Default)]
pub struct KubeletAuth {
    /// The Node's name (the `name` of the SubjectAccessReview).
    pub node_name: String,
    /// The API server for TokenReview and SubjectAccessReview; without it only
    /// `system:masters` client certificates are let in.
    pub api: Option<kube::Client>,
}

/// An authenticated caller.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

/// The caller named by the connection's verified client certificate, if any.
#[derive(Clone, Debug, Default)]
pub struct PeerCert(pub Option<Caller>);

/// The user of a verified client chain: CN is the name, O the groups (upstream's x509 mapping).
pub fn caller_of(chain: &[rustls::pki_types::CertificateDer<'_>]) -> Option<Caller> {
    let (_, cert) = x509_parser::parse_x509_certificate(chain.first()?.as_ref()).ok()?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    if name.is_empty() {
        return None;
    }
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect();
    Some(Caller {
        name,
        groups,
        ..Default::default()
    })
}

/// The verb and `nodes` subresource a kubelet API request is authorized as (upstream's
/// mapping: stats, metrics, log, checkpoint; everything else is proxy).
pub fn attributes(method: &http::Method, path: &str) -> (&'static str, &'static str) {
    let verb = match *method {
        http::Method::POST => "create",
        http::Method::GET | http::Method::HEAD => "get",
        http::Method::PUT => "update",
        http::Method::PATCH => "patch",
        http::Method::DELETE => "delete",
        _ => "",
    };
    let under = |p: &str| path == p || path.starts_with(&format!("{p}/"));
    let sub = if under("/stats") {
        "stats"
    } else if under("/metrics") {
        "metrics"
    } else if under("/logs") {
        "log"
    } else if under("/checkpoint") {
        "checkpoint"
    } else {
        "proxy"
    };
    (verb, sub)
}

type Cache<T> = Mutex<HashMap<String, (Instant, T)>>;

/// The shared checker (one per kubelet API server).
pub struct Checker {
    auth: KubeletAuth,
    tokens: Cache<Option<Caller>>,
    decisions: Cache<bool>,
}

impl Checker {
    pub fn new(auth: KubeletAuth) -> Arc<Checker> {
        Arc::new(Checker {
            auth,
            tokens: Mutex::default(),
            decisions: Mutex::default(),
        })
    }

    fn cached<T: Clone>(cache: &Cache<T>, key: &str) -> Option<T> {
        let map = cache.lock().unwrap_or_else(|p| p.into_inner());
        map.get(key)
            .filter(|(until, _)| Instant::now() < *until)
            .map(|(_, v)| v.clone())
    }

    fn remember<T>(cache: &Cache<T>, key: String, ttl: Duration, v: T) {
        let mut map = cache.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= CACHE_LIMIT {
            map.clear();
        }
        map.insert(key, (Instant::now() + ttl, v));
    }

    /// The user a bearer token belongs to, by TokenReview.
    async fn review_token(&self, token: &str) -> Result<Option<Caller>, String> {
        if let Some(c) = Self::cached(&self.tokens, token) {
            return Ok(c);
        }
        let Some(api) = &self.auth.api else {
            return Ok(None);
        };
        let body = json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token},
        });
        let answer = post(api, "/apis/authentication.k8s.io/v1/tokenreviews", &body).await?;
        let status = &answer["status"];
        let caller = (status["authenticated"] == true).then(|| {
            let u = &status["user"];
            let strings = |v: &Value| -> Vec<String> {
                v.as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|s| s.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            Caller {
                name: u["username"].as_str().unwrap_or_default().to_string(),
                uid: u["uid"].as_str().unwrap_or_default().to_string(),
                groups: strings(&u["groups"]),
                extra: u["extra"]
                    .as_object()
                    .map(|m| m.iter().map(|(k, v)| (k.clone(), strings(v))).collect())
                    .unwrap_or_default(),
            }
        });
        let caller = caller.filter(|c| !c.name.is_empty());
        Self::remember(&self.tokens, token.to_string(), AUTHN_TTL, caller.clone());
        Ok(caller)
    }

    /// Whether `caller` may `verb` the node's `sub`resource, by SubjectAccessReview.
    async fn allowed(&self, caller: &Caller, verb: &str, sub: &str) -> Result<bool, String> {
        if caller.groups.iter().any(|g| g == MASTERS) {
            return Ok(true);
        }
        let Some(api) = &self.auth.api else {
            return Ok(false);
        };
        let key = format!("{caller:?}\0{verb}\0{sub}");
        if let Some(d) = Self::cached(&self.decisions, &key) {
            return Ok(d);
        }
        let mut spec = json!({
            "user": caller.name,
            "groups": caller.groups,
            "resourceAttributes": {
                "verb": verb,
                "resource": "nodes",
                "subresource": sub,
                "name": self.auth.node_name,
            },
        });
        if !caller.uid.is_empty() {
            spec["uid"] = json!(caller.uid);
        }
        if !caller.extra.is_empty() {
            spec["extra"] = json!(caller.extra);
        }
        let body = json!({
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": spec,
        });
        let answer = post(
            api,
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            &body,
        )
        .await?;
        let allowed = answer["status"]["allowed"] == true;
        let ttl = if allowed { ALLOWED_TTL } else { DENIED_TTL };
        Self::remember(&self.decisions, key, ttl, allowed);
        Ok(allowed)
    }
}

async fn post(api: &kube::Client, path: &str, body: &Value) -> Result<Value, String> {
    let bytes = serde_json::to_vec(body).map_err(|e| e.to_string())?;
    let req = http::Request::post(path)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(bytes)
        .map_err(|e| e.to_string())?;
    api.request::<Value>(req).await.map_err(|e| e.to_string())
}

fn plain(status: http::StatusCode, text: String) -> Response {
    (
        status,
        [(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
        .into_response()
}

/// The middleware in front of every route: 401 without credentials, 403 when not allowed.
pub async fn check(State(checker): State<Arc<Checker>>, req: Request, next: Next) -> Response {
    let peer = req.extensions().get::<PeerCert>().and_then(|p| p.0.clone());
    let caller = match peer {
        Some(c) => Some(c),
        None => match bearer(req.headers()) {
            Some(token) => match checker.review_token(token).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "kubelet API: TokenReview failed");
                    None
                }
            },
            None => None,
        },
    };
    let Some(caller) = caller else {
        return plain(http::StatusCode::UNAUTHORIZED, "Unauthorized".into());
    };
    let (verb, sub) = attributes(req.method(), req.uri().path());
    match checker.allowed(&caller, verb, sub).await {
        Ok(true) => next.run(req).await,
        Ok(false) => plain(
            http::StatusCode::FORBIDDEN,
            format!(
                "Forbidden (user={}, verb={verb}, resource=nodes, subresource={sub})",
                caller.name
            ),
        ),
        Err(e) => plain(
            http::StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "Authorization error (user={}, verb={verb}, resource=nodes, subresource={sub}): {e}",
                caller.name
            ),
        ),
    }
}

fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_upstream_subresources() {
        let get = http::Method::GET;
        assert_eq!(attributes(&get, "/stats/summary"), ("get", "stats"));
        assert_eq!(attributes(&get, "/containerLogs/ns/p/c"), ("get", "proxy"));
        assert_eq!(
            attributes(&http::Method::POST, "/exec/ns/p/c"),
            ("create", "proxy")
        );
        assert_eq!(attributes(&get, "/logs/"), ("get", "log"));
        assert_eq!(attributes(&get, "/metrics"), ("get", "metrics"));
        assert_eq!(attributes(&get, "/statsx"), ("get", "proxy"));
    }

    #[test]
    fn bearer_tokens_are_read_from_the_header() {
        let mut h = http::HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(http::header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(http::header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }

    #[tokio::test]
    async fn without_an_api_server_only_masters_are_allowed() {
        let c = Checker::new(KubeletAuth::default());
        let admin = Caller {
            name: "kube-apiserver-kubelet-client".into(),
            groups: vec![MASTERS.into()],
            ..Default::default()
        };
        assert!(c.allowed(&admin, "create", "proxy").await.unwrap());
        let node = Caller {
            name: "system:node:n2".into(),
            groups: vec!["system:nodes".into()],
            ..Default::default()
        };
        assert!(!c.allowed(&node, "create", "proxy").await.unwrap());
        assert_eq!(c.review_token("t").await.unwrap(), None);
    }
}
