//! The node join token: the secret an agent presents (`capstan agent --token`) to get its node
//! credentials. The token reads `K10<sha256 of the CA PEM>::node:<secret>` (k3s's idea): the
//! hash lets the agent check the CA it downloads from [`CACERTS_PATH`] before trusting it, the
//! secret authenticates it as [`BOOTSTRAP_USER`], who may only call [`CREDENTIALS_PATH`].

use super::{Attributes, Decision, UserInfo};
use crate::pki::{self, ClusterCa, PkiError};
use crate::response::{self, Body};
use crate::server::ApiServer;
use capstan_api::ApiError;
use http_body_util::BodyExt;
use std::net::IpAddr;
use std::path::Path;

/// Store key of the join secret, shared by every API server of the cluster like the CA.
pub const TOKEN_KEY: &str = "/capstan/bootstrap/node-token";
/// The user a join token authenticates as.
pub const BOOTSTRAP_USER: &str = "system:node-bootstrap";
/// The group of [`BOOTSTRAP_USER`] (upstream's bootstrap-token group).
pub const BOOTSTRAPPERS: &str = "system:bootstrappers";
/// The group of kubelets (client certificates issued by [`CREDENTIALS_PATH`]).
pub const NODES: &str = "system:nodes";
/// Unauthenticated: the cluster CA certificate (PEM), as k3s serves it.
pub const CACERTS_PATH: &str = "/cacerts";
/// POST `{"nodeName", "addresses"}`: a node client certificate and a kubelet serving certificate.
pub const CREDENTIALS_PATH: &str = "/v1-capstan/node-credentials";

const PREFIX: &str = "K10";
const SEPARATOR: &str = "::node:";

/// A parsed join token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinToken {
    /// Lower-case hex SHA-256 of the CA certificate PEM served at [`CACERTS_PATH`].
    pub ca_hash: String,
    pub secret: String,
}

impl JoinToken {
    pub fn parse(s: &str) -> Option<JoinToken> {
        let (hash, secret) = s.trim().strip_prefix(PREFIX)?.split_once(SEPARATOR)?;
        let hex = |c: char| c.is_ascii_digit() || ('a'..='f').contains(&c);
        if hash.len() != 64 || !hash.chars().all(hex) || secret.is_empty() {
            return None;
        }
        Some(JoinToken {
            ca_hash: hash.into(),
            secret: secret.into(),
        })
    }
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{PREFIX}{}{SEPARATOR}{}", self.ca_hash, self.secret)
    }
}

/// Lower-case hex SHA-256 of `ca_pem`'s bytes.
pub fn ca_hash(ca_pem: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, ca_pem.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn new_secret() -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..32)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredSecret {
    secret: String,
}

/// The cluster's join token: the secret stored in `store` (else this data dir's, uploaded, else
/// a new one), with `ca_pem`'s hash; written to `<data_dir>/token` (0600).
pub async fn ensure(
    store: &dyn capstan_store::Store,
    data_dir: &Path,
    ca_pem: &str,
) -> Result<JoinToken, PkiError> {
    let path = data_dir.join("token");
    let decode = |v: &[u8]| {
        serde_json::from_slice::<StoredSecret>(v)
            .map(|s| s.secret)
            .map_err(|_| PkiError::CorruptStored(TOKEN_KEY))
    };
    let secret = match store.get(TOKEN_KEY).await? {
        Some(kv) => decode(&kv.value)?,
        None => {
            let local = std::fs::read_to_string(&path)
                .ok()
                .and_then(|s| JoinToken::parse(&s))
                .map(|t| t.secret)
                .unwrap_or_else(new_secret);
            let value = serde_json::to_vec(&StoredSecret {
                secret: local.clone(),
            })
            .map_err(|_| PkiError::CorruptStored(TOKEN_KEY))?;
            match store.create(TOKEN_KEY, value).await {
                Ok(_) => local,
                Err(capstan_store::StoreError::AlreadyExists(_)) => {
                    let kv = store
                        .get(TOKEN_KEY)
                        .await?
                        .ok_or_else(|| capstan_store::StoreError::NotFound(TOKEN_KEY.into()))?;
                    decode(&kv.value)?
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    let token = JoinToken {
        ca_hash: ca_hash(ca_pem),
        secret,
    };
    let text = format!("{token}\n");
    if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
        std::fs::create_dir_all(data_dir).map_err(|source| PkiError::Io {
            path: data_dir.to_path_buf(),
            source,
        })?;
        pki::write_private(&path, text.as_bytes())?;
    }
    Ok(token)
}

/// The user a bearer token names if it is the cluster's node join token.
pub async fn lookup(server: &ApiServer, token: &str) -> Option<UserInfo> {
    // Cheap rejection of other tokens before the store is read.
    let presented = JoinToken::parse(token)?;
    let kv = server.store.get(TOKEN_KEY).await.ok()??;
    let stored: StoredSecret = serde_json::from_slice(&kv.value).ok()?;
    aws_lc_rs::constant_time::verify_slices_are_equal(
        presented.secret.as_bytes(),
        stored.secret.as_bytes(),
    )
    .ok()?;
    Some(UserInfo::new(BOOTSTRAP_USER, &[BOOTSTRAPPERS]).authenticated())
}

/// Bootstrappers may POST [`CREDENTIALS_PATH`] and nothing else; nodes may renew theirs there.
pub fn authorize(attrs: &Attributes) -> Decision {
    let creds = !attrs.resource_request
        && attrs.verb == "post"
        && attrs.path.trim_end_matches('/') == CREDENTIALS_PATH;
    if attrs.user.in_group(BOOTSTRAPPERS) {
        return if creds {
            Decision::Allow
        } else {
            Decision::Deny("a join token may only request node credentials".into())
        };
    }
    if creds && attrs.user.in_group(NODES) && attrs.user.name.starts_with("system:node:") {
        return Decision::Allow;
    }
    Decision::NoOpinion
}

/// GET [`CACERTS_PATH`]: the cluster CA certificate, no credentials needed.
pub fn cacerts(server: &ApiServer, method: &http::Method) -> http::Response<Body> {
    if method != http::Method::GET && method != http::Method::HEAD {
        return response::error(&ApiError::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        ));
    }
    let path = server.config.data_dir.join("tls").join("ca.crt");
    match std::fs::read(&path) {
        Ok(pem) => http::Response::builder()
            .status(200)
            .header(http::header::CONTENT_TYPE, "text/plain")
            .body(response::full(pem))
            .unwrap_or_else(|e| response::error(&ApiError::internal(e.to_string()))),
        Err(e) => response::error(&ApiError::internal(format!("reading the CA: {e}"))),
    }
}

/// What an agent asks [`CREDENTIALS_PATH`] for.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsRequest {
    pub node_name: String,
    /// Node addresses (IPs or DNS names) for the serving certificate's SANs.
    #[serde(default)]
    pub addresses: Vec<String>,
}

/// The answer of [`CREDENTIALS_PATH`] (PEM throughout).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeCredentials {
    pub ca_cert: String,
    pub client_cert: String,
    pub client_key: String,
    pub serving_cert: String,
    pub serving_key: String,
}

/// Whether `cert_pem` is a node client certificate for `node` that is valid now.
pub fn usable_node_cert(cert_pem: &str, node: &str) -> bool {
    let Some(Ok(der)) = rustls_pemfile::certs(&mut cert_pem.as_bytes()).next() else {
        return false;
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) else {
        return false;
    };
    let Some(user) = super::x509::user_of(std::slice::from_ref(&der)) else {
        return false;
    };
    let client_auth = matches!(cert.extended_key_usage(), Ok(Some(eku)) if eku.value.client_auth);
    client_auth
        && cert.validity().is_valid()
        && user.name == format!("system:node:{node}")
        && user.in_group(NODES)
}

fn valid_node_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 253
        && n.split('.').all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        })
}

/// POST [`CREDENTIALS_PATH`] by an admitted `user`: signs the node's certificates.
pub async fn credentials(
    server: &ApiServer,
    req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<Body>, ApiError> {
    if req.method() != http::Method::POST {
        return Err(ApiError::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        ));
    }
    let user = req
        .extensions()
        .get::<UserInfo>()
        .cloned()
        .unwrap_or_default();
    let body = http_body_util::Limited::new(req.into_body(), 64 * 1024)
        .collect()
        .await
        .map_err(|e| ApiError::bad_request(format!("reading the request: {e}")))?
        .to_bytes();
    let ask: CredentialsRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("decoding the request: {e}")))?;
    let creds = issue(&server.config.data_dir.join("tls"), &user, &ask)?;
    let v = serde_json::to_value(&creds).map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(response::json(200, &v))
}

/// Signs `ask`'s certificates with the CA in `tls_dir` if `user` may have them: a bootstrapper
/// or an admin any node's, a node only its own.
pub fn issue(
    tls_dir: &Path,
    user: &UserInfo,
    ask: &CredentialsRequest,
) -> Result<NodeCredentials, ApiError> {
    let name = &ask.node_name;
    if !valid_node_name(name) {
        return Err(ApiError::bad_request(format!(
            "invalid node name {name:?}: must be a lowercase RFC 1123 subdomain"
        )));
    }
    let own = user.name == format!("system:node:{name}") && user.in_group(NODES);
    if !(own || user.in_group(BOOTSTRAPPERS) || user.in_group(super::MASTERS)) {
        return Err(ApiError::forbidden(format!(
            "User {:?} cannot get credentials for node {name:?}",
            user.name
        )));
    }
    let ca = ClusterCa::load(tls_dir)
        .map_err(|e| ApiError::internal(format!("loading the CA: {e}")))?
        .ok_or_else(|| ApiError::internal("the cluster CA is missing"))?;
    let mut dns = vec![name.clone(), "localhost".to_string()];
    let mut ips: Vec<IpAddr> = vec![IpAddr::from([127, 0, 0, 1])];
    for a in &ask.addresses {
        match a.parse::<IpAddr>() {
            Ok(ip) if !ips.contains(&ip) => ips.push(ip),
            Ok(_) => {}
            Err(_) if valid_node_name(a) && !dns.contains(a) => dns.push(a.clone()),
            Err(_) => {}
        }
    }
    let user_name = format!("system:node:{name}");
    let sign_err = |e: PkiError| ApiError::internal(format!("signing node certificates: {e}"));
    let client = ca.client_cert(&user_name, &[NODES]).map_err(sign_err)?;
    let serving = ca
        .kubelet_serving_cert(&user_name, &dns, &ips)
        .map_err(sign_err)?;
    Ok(NodeCredentials {
        ca_cert: ca.cert_pem.clone(),
        client_cert: client.cert_pem,
        client_key: client.key_pem,
        serving_cert: serving.cert_pem,
        serving_key: serving.key_pem,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_garbage() {
        let t = JoinToken {
            ca_hash: ca_hash("pem"),
            secret: "abc".into(),
        };
        assert_eq!(JoinToken::parse(&t.to_string()), Some(t.clone()));
        assert!(t.to_string().starts_with("K10"));
        assert_eq!(JoinToken::parse("e2e-token"), None);
        assert_eq!(JoinToken::parse("K10abc::node:x"), None);
        assert_eq!(JoinToken::parse(&format!("K10{}::node:", t.ca_hash)), None);
    }

    #[tokio::test]
    async fn the_token_is_shared_through_the_store_and_kept() {
        let store = capstan_store::MemoryStore::new();
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = ensure(&store, d1.path(), "ca").await.unwrap();
        let b = ensure(&store, d2.path(), "ca").await.unwrap();
        assert_eq!(a, b);
        assert_eq!(a.ca_hash, ca_hash("ca"));
        let on_disk = std::fs::read_to_string(d2.path().join("token")).unwrap();
        assert_eq!(on_disk.trim(), a.to_string());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d2.path().join("token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // A restarted first server keeps the same token.
        assert_eq!(ensure(&store, d1.path(), "ca").await.unwrap(), a);
    }

    fn post(user: UserInfo, path: &str) -> Attributes {
        Attributes {
            user,
            verb: "post".into(),
            path: path.into(),
            ..Default::default()
        }
    }

    #[test]
    fn bootstrappers_may_only_ask_for_credentials() {
        let boot = UserInfo::new(BOOTSTRAP_USER, &[BOOTSTRAPPERS]);
        assert_eq!(
            authorize(&post(boot.clone(), CREDENTIALS_PATH)),
            Decision::Allow
        );
        assert!(matches!(
            authorize(&post(boot.clone(), "/api/v1/namespaces")),
            Decision::Deny(_)
        ));
        let mut list = post(boot, "");
        list.resource_request = true;
        list.verb = "list".into();
        list.resource = "secrets".into();
        assert!(matches!(authorize(&list), Decision::Deny(_)));
        let other = UserInfo::new("alice", &[]);
        assert_eq!(
            authorize(&post(other, CREDENTIALS_PATH)),
            Decision::NoOpinion
        );
    }

    #[test]
    fn nodes_get_only_their_own_certificates() {
        let dir = tempfile::tempdir().unwrap();
        ClusterCa::load_or_create(dir.path()).unwrap();
        let ask = CredentialsRequest {
            node_name: "n1".into(),
            addresses: vec!["10.1.2.3".into(), "n1.example".into()],
        };
        let node = UserInfo::new("system:node:n1", &[NODES]);
        let creds = issue(dir.path(), &node, &ask).unwrap();
        let der: Vec<_> = rustls_pemfile::certs(&mut creds.client_cert.as_bytes())
            .map(Result::unwrap)
            .collect();
        let user = super::super::x509::user_of(&der).unwrap();
        assert_eq!(user.name, "system:node:n1");
        assert_eq!(user.groups, [NODES]);
        let serving: Vec<_> = rustls_pemfile::certs(&mut creds.serving_cert.as_bytes())
            .map(Result::unwrap)
            .collect();
        let (_, cert) = x509_parser::parse_x509_certificate(serving[0].as_ref()).unwrap();
        use x509_parser::extensions::GeneralName;
        let sans = &cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names;
        assert!(
            sans.iter()
                .any(|n| matches!(n, GeneralName::DNSName("n1.example")))
        );
        assert!(
            sans.iter()
                .any(|n| matches!(n, GeneralName::IPAddress(b) if *b == [10, 1, 2, 3]))
        );
        assert!(usable_node_cert(&creds.client_cert, "n1"));
        assert!(!usable_node_cert(&creds.client_cert, "n2"));
        assert!(!usable_node_cert(&creds.serving_cert, "n1"));
        let other = UserInfo::new("system:node:n2", &[NODES]);
        assert_eq!(issue(dir.path(), &other, &ask).unwrap_err().code, 403);
        let boot = UserInfo::new(BOOTSTRAP_USER, &[BOOTSTRAPPERS]);
        assert!(issue(dir.path(), &boot, &ask).is_ok());
        let bad = CredentialsRequest {
            node_name: "Bad_Name".into(),
            addresses: vec![],
        };
        assert_eq!(issue(dir.path(), &boot, &bad).unwrap_err().code, 400);
    }
}
