//! Registry access settings: credentials (`RegistryAuth`, parsed from
//! `kubernetes.io/dockerconfigjson` pull secrets) and k3s-shaped `registries.yaml` (mirrors with
//! endpoints; per-host auth and TLS), plus which hosts may be spoken to over plain HTTP.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use base64::Engine;
use serde::Deserialize;

use super::ImageError;

/// Credentials for one registry.
#[derive(Clone, PartialEq, Eq)]
pub enum RegistryAuth {
    Basic {
        username: String,
        password: String,
    },
    /// An identity or registry token sent as a bearer token.
    Bearer(String),
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegistryAuth::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            RegistryAuth::Bearer(_) => write!(f, "Bearer(<redacted>)"),
        }
    }
}

impl RegistryAuth {
    pub(crate) fn to_oci(&self) -> oci_client::secrets::RegistryAuth {
        match self {
            RegistryAuth::Basic { username, password } => {
                oci_client::secrets::RegistryAuth::Basic(username.clone(), password.clone())
            }
            RegistryAuth::Bearer(t) => oci_client::secrets::RegistryAuth::Bearer(t.clone()),
        }
    }
}

/// The `.dockerconfigjson` of a `kubernetes.io/dockerconfigjson` secret.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct DockerConfigJson {
    #[serde(default)]
    auths: BTreeMap<String, DockerAuthEntry>,
}

#[derive(Clone, Default, Deserialize)]
struct DockerAuthEntry {
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    auth: Option<String>,
    #[serde(default, rename = "identitytoken")]
    identity_token: Option<String>,
    #[serde(default, rename = "registrytoken")]
    registry_token: Option<String>,
}

impl std::fmt::Debug for DockerAuthEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DockerAuthEntry(<redacted>)")
    }
}

impl DockerConfigJson {
    /// Parses the secret's `.dockerconfigjson` bytes (also accepts the legacy `.dockercfg`
    /// shape, a bare map of registry to entry).
    pub fn parse(bytes: &[u8]) -> Result<DockerConfigJson, ImageError> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| ImageError::DockerConfig(e.to_string()))?;
        let value = if value.get("auths").is_some() {
            value
        } else {
            serde_json::json!({ "auths": value })
        };
        serde_json::from_value(value).map_err(|e| ImageError::DockerConfig(e.to_string()))
    }

    /// Credentials for `registry` (a host[:port] as in an image reference), if any entry
    /// matches it (keys may carry a scheme and path, `*.` globs and Docker Hub aliases).
    pub fn auth_for(&self, registry: &str) -> Option<RegistryAuth> {
        let want = canonical_host(registry);
        let entry = self.auths.iter().find_map(|(k, v)| {
            let key = canonical_host(k);
            let hit = key == want
                || key
                    .strip_prefix("*.")
                    .is_some_and(|suffix| want.ends_with(&format!(".{suffix}")));
            hit.then_some(v)
        })?;
        entry_auth(entry)
    }
}

fn entry_auth(e: &DockerAuthEntry) -> Option<RegistryAuth> {
    if let Some(t) = e.identity_token.as_ref().or(e.registry_token.as_ref())
        && !t.is_empty()
    {
        return Some(RegistryAuth::Bearer(t.clone()));
    }
    if let (Some(u), Some(p)) = (&e.username, &e.password) {
        return Some(RegistryAuth::Basic {
            username: u.clone(),
            password: p.clone(),
        });
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(e.auth.as_ref()?.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (u, p) = text.split_once(':')?;
    Some(RegistryAuth::Basic {
        username: u.to_string(),
        password: p.to_string(),
    })
}

/// `https://index.docker.io/v1/` → `docker.io`; `http://host:5000/x` → `host:5000`.
fn canonical_host(s: &str) -> String {
    let s = s.trim();
    let s = s.split_once("://").map_or(s, |(_, rest)| rest);
    let host = s.split('/').next().unwrap_or(s).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".into()
        }
        _ => host,
    }
}

/// `registries.yaml` (k3s shape) plus hosts allowed over plain HTTP (`--insecure-registry`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RegistriesConfig {
    #[serde(default)]
    pub mirrors: BTreeMap<String, Mirror>,
    #[serde(default)]
    pub configs: BTreeMap<String, HostConfig>,
    #[serde(skip)]
    pub insecure: BTreeSet<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Mirror {
    #[serde(default)]
    pub endpoint: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct HostConfig {
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

#[derive(Clone, Default, Deserialize)]
pub struct AuthConfig {
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub auth: Option<String>,
    #[serde(default)]
    pub identity_token: Option<String>,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AuthConfig(<redacted>)")
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct TlsConfig {
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// One place to pull from: a registry host and how to talk to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub host: String,
    pub plain_http: bool,
    pub skip_verify: bool,
}

impl RegistriesConfig {
    /// Reads `path`; a missing file is an empty config.
    pub fn load(path: &Path) -> Result<RegistriesConfig, ImageError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text).map_err(|reason| ImageError::RegistriesConfig {
                path: path.to_path_buf(),
                reason,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(ImageError::io(path)(e)),
        }
    }

    pub fn parse(text: &str) -> Result<RegistriesConfig, String> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_saphyr::from_str(text).map_err(|e| e.to_string())
    }

    /// Credentials configured for `host`, if any.
    pub fn auth_for(&self, host: &str) -> Option<RegistryAuth> {
        let a = self.configs.get(host)?.auth.as_ref()?;
        entry_auth(&DockerAuthEntry {
            username: a.username.clone(),
            password: a.password.clone(),
            auth: a.auth.clone(),
            identity_token: a.identity_token.clone(),
            registry_token: None,
        })
    }

    /// Endpoints to try for `registry`, in order: its mirrors (or the `*` mirrors), then the
    /// registry itself.
    pub(crate) fn endpoints(&self, registry: &str) -> Vec<Endpoint> {
        let mirrors = self.mirrors.get(registry).or_else(|| self.mirrors.get("*"));
        let mut out: Vec<Endpoint> = Vec::new();
        for url in mirrors.map(|m| m.endpoint.as_slice()).unwrap_or_default() {
            let (scheme, rest) = url.split_once("://").unwrap_or(("https", url));
            let host = rest.split('/').next().unwrap_or(rest).to_string();
            if host.is_empty() {
                continue;
            }
            out.push(self.endpoint(&host, Some(scheme == "http")));
        }
        let default = self.endpoint(registry, None);
        if !out.contains(&default) {
            out.push(default);
        }
        out
    }

    fn endpoint(&self, host: &str, plain_http: Option<bool>) -> Endpoint {
        let plain_http =
            plain_http.unwrap_or(false) || is_loopback(host) || self.insecure.contains(host);
        let skip_verify = self
            .configs
            .get(host)
            .and_then(|c| c.tls.as_ref())
            .is_some_and(|t| t.insecure_skip_verify);
        Endpoint {
            host: host.to_string(),
            plain_http,
            skip_verify,
        }
    }
}

/// Whether `host[:port]` is on loopback (localhost, 127.0.0.0/8, ::1), where Docker uses plain
/// HTTP by default.
pub(crate) fn is_loopback(host: &str) -> bool {
    let bare = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else if host.matches(':').count() == 1 {
        host.split(':').next().unwrap_or(host)
    } else {
        host
    };
    bare == "localhost"
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockerconfigjson_matches_hosts_and_aliases() {
        let json = br#"{"auths":{
            "https://index.docker.io/v1/":{"auth":"dXNlcjpwYXNz"},
            "127.0.0.1:5000":{"username":"a","password":"b"},
            "*.example.com":{"identitytoken":"tok"}}}"#;
        let c = DockerConfigJson::parse(json).unwrap();
        assert_eq!(
            c.auth_for("docker.io"),
            Some(RegistryAuth::Basic {
                username: "user".into(),
                password: "pass".into()
            })
        );
        assert_eq!(
            c.auth_for("127.0.0.1:5000"),
            Some(RegistryAuth::Basic {
                username: "a".into(),
                password: "b".into()
            })
        );
        assert_eq!(
            c.auth_for("r.example.com"),
            Some(RegistryAuth::Bearer("tok".into()))
        );
        assert_eq!(c.auth_for("quay.io"), None);
        assert!(DockerConfigJson::parse(b"not json").is_err());
    }

    #[test]
    fn registries_yaml_gives_mirrors_auth_and_tls() {
        let c = RegistriesConfig::parse(
            "mirrors:\n  docker.io:\n    endpoint:\n      - \"http://10.0.0.5:5000\"\n\
             configs:\n  \"10.0.0.5:5000\":\n    auth:\n      username: u\n      password: p\n\
             \x20   tls:\n      insecure_skip_verify: true\n",
        )
        .unwrap();
        let eps = c.endpoints("docker.io");
        assert_eq!(eps.len(), 2);
        assert_eq!(eps[0].host, "10.0.0.5:5000");
        assert!(eps[0].plain_http && eps[0].skip_verify);
        assert_eq!(eps[1].host, "docker.io");
        assert!(!eps[1].plain_http);
        assert_eq!(
            c.auth_for("10.0.0.5:5000"),
            Some(RegistryAuth::Basic {
                username: "u".into(),
                password: "p".into()
            })
        );
        assert!(RegistriesConfig::parse("mirrors: [").is_err());
    }

    #[test]
    fn loopback_hosts_are_recognised() {
        for h in [
            "localhost:5000",
            "127.0.0.1:5000",
            "127.3.2.1",
            "[::1]:5000",
            "::1",
        ] {
            assert!(is_loopback(h), "{h}");
        }
        for h in ["10.0.0.1:5000", "docker.io", "example.com:443"] {
            assert!(!is_loopback(h), "{h}");
        }
    }
}
