//! Bearer token authenticators, tried in upstream's order: the static token file
//! (`--token-auth-file`), the node join token, then service account JWTs whose signature,
//! lifetime, audience and bound objects (service account, pod or secret) are checked.

use super::UserInfo;
use crate::server::ApiServer;
use crate::tokens::{ISSUER, TokenError};
use capstan_api::resources::RESOURCES;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Prefix of the extra keys upstream sets for service account tokens.
const EXTRA_PREFIX: &str = "authentication.kubernetes.io/";

/// The audiences the API server itself accepts (upstream's default `--api-audiences`).
pub fn api_audiences() -> Vec<String> {
    vec![ISSUER.to_string()]
}

/// Why a token was refused: `None` when no authenticator recognised it at all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenFailure(pub Option<String>);

/// A token's user and the audiences it was accepted for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenUser {
    pub user: UserInfo,
    pub audiences: Vec<String>,
}

/// The tokens of a static token file, by token.
#[derive(Clone, Debug, Default)]
pub struct StaticTokens {
    by_token: HashMap<String, UserInfo>,
}

impl StaticTokens {
    /// Reads upstream's CSV format: `token,user,uid[,"group1,group2"]` per line.
    pub fn load(path: &Path) -> Result<StaticTokens, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading token file {}: {e}", path.display()))?;
        StaticTokens::parse(&text).map_err(|e| format!("token file {}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<StaticTokens, String> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut by_token = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let record = csv_record(line).map_err(|e| format!("line {}: {e}", n + 1))?;
            if record.len() < 3 {
                return Err(format!(
                    "line {}: must have at least 3 columns (token, user name, user uid), found {}",
                    n + 1,
                    record.len()
                ));
            }
            if record[0].is_empty() {
                tracing::warn!(line = n + 1, "empty token in the token file");
                continue;
            }
            let groups = record
                .get(3)
                .map(|g| {
                    g.split(',')
                        .map(str::trim)
                        .filter(|g| !g.is_empty())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default();
            let user = UserInfo {
                name: record[1].clone(),
                uid: record[2].clone(),
                groups,
                extra: BTreeMap::new(),
            };
            if by_token.insert(record[0].clone(), user).is_some() {
                tracing::warn!(line = n + 1, "duplicate token in the token file");
            }
        }
        Ok(StaticTokens { by_token })
    }

    pub fn lookup(&self, token: &str) -> Option<UserInfo> {
        self.by_token.get(token).cloned()
    }

    pub fn len(&self) -> usize {
        self.by_token.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_token.is_empty()
    }
}

/// One CSV record: comma-separated fields, double-quoted fields may hold commas and `""`.
fn csv_record(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek() == Some(&' ') {
            chars.next();
        }
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                    None => return Err("unterminated quoted field".into()),
                }
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => fields.push(field),
                Some(_) => return Err("extraneous text after a quoted field".into()),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field.trim_end_matches('\r').to_string());
                        return Ok(fields);
                    }
                    Some(',') => break,
                    Some(c) => field.push(c),
                }
            }
            fields.push(field);
        }
    }
}

/// Authenticates a bearer token for `audiences` (empty: the API server's own).
pub async fn authenticate_token(
    server: &ApiServer,
    token: &str,
    audiences: &[String],
) -> Result<TokenUser, TokenFailure> {
    let api = api_audiences();
    let wanted: &[String] = if audiences.is_empty() {
        &api
    } else {
        audiences
    };
    if token.is_empty() {
        return Err(TokenFailure(None));
    }
    // Static and join tokens know no audience: they are good only for the API server's own.
    let agnostic = || -> Option<Vec<String>> {
        let both: Vec<String> = wanted.iter().filter(|a| api.contains(a)).cloned().collect();
        (!both.is_empty()).then_some(both)
    };
    if let Some(user) = server.static_tokens.lookup(token) {
        return match agnostic() {
            Some(audiences) => Ok(TokenUser { user, audiences }),
            None => Err(TokenFailure(None)),
        };
    }
    if let Some(user) = crate::auth::join::lookup(server, token).await {
        return match agnostic() {
            Some(audiences) => Ok(TokenUser { user, audiences }),
            None => Err(TokenFailure(None)),
        };
    }
    service_account(server, token, wanted).await
}

/// A service account JWT: signature, issuer, lifetime, audience, then the bound objects.
async fn service_account(
    server: &ApiServer,
    token: &str,
    wanted: &[String],
) -> Result<TokenUser, TokenFailure> {
    let now = jiff::Timestamp::now().as_second();
    let claims = match server.tokens.verify(token, now) {
        Ok(c) => c,
        Err(TokenError::Invalid(why)) => {
            return Err(TokenFailure(match why {
                // Not a JWT of ours at all: some other authenticator's token.
                "not a compact JWS" | "part is not base64url" | "part is not JSON" => None,
                "token has expired" => Some("service account token has expired".into()),
                "token is not valid yet" => Some("service account token is not valid yet".into()),
                "unknown issuer" => None,
                other => Some(other.to_string()),
            }));
        }
        Err(e) => return Err(TokenFailure(Some(e.to_string()))),
    };
    let token_auds: Vec<String> = match &claims["aud"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect(),
        _ => vec![],
    };
    let audiences: Vec<String> = wanted
        .iter()
        .filter(|a| token_auds.contains(a))
        .cloned()
        .collect();
    if audiences.is_empty() {
        return Err(TokenFailure(Some(format!(
            "token audiences {token_auds:?} is invalid for the target audiences {wanted:?}"
        ))));
    }
    let k8s = &claims["kubernetes.io"];
    let str_of = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let namespace = str_of(&k8s["namespace"]);
    let sa_name = str_of(&k8s["serviceaccount"]["name"]);
    let sa_uid = str_of(&k8s["serviceaccount"]["uid"]);
    if namespace.is_empty() || sa_name.is_empty() {
        return Err(TokenFailure(Some(
            "service account token claims are incomplete".into(),
        )));
    }
    let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let pod_bound = k8s["pod"].is_object();
    // The service account always; then what the token was bound to. Upstream's order.
    let checks = [
        ("serviceaccount", "serviceaccounts", "ServiceAccount", true),
        ("pod", "pods", "Pod", true),
        ("secret", "secrets", "Secret", true),
        ("node", "nodes", "Node", !pod_bound),
    ];
    for (claim, plural, kind, check) in checks {
        let bound = &k8s[claim];
        if !bound.is_object() || !check {
            continue;
        }
        let (name, uid) = (str_of(&bound["name"]), str_of(&bound["uid"]));
        let ns = (claim != "node").then_some(namespace.as_str());
        let current = bound_state(server, plural, ns, &name)
            .await
            .filter(|o| !o.deleted_long_ago(claim == "secret"))
            .ok_or_else(|| {
                TokenFailure(Some("service account token has been invalidated".into()))
            })?;
        if current.metadata.uid != uid {
            return Err(TokenFailure(Some(format!(
                "{kind} UID ({}) does not match claim ({uid})",
                current.metadata.uid
            ))));
        }
        if claim == "pod" {
            extra.insert(format!("{EXTRA_PREFIX}pod-name"), vec![name]);
            extra.insert(format!("{EXTRA_PREFIX}pod-uid"), vec![uid]);
        }
    }
    if k8s["node"].is_object() {
        extra.insert(
            format!("{EXTRA_PREFIX}node-name"),
            vec![str_of(&k8s["node"]["name"])],
        );
        extra.insert(
            format!("{EXTRA_PREFIX}node-uid"),
            vec![str_of(&k8s["node"]["uid"])],
        );
    }
    if let Some(jti) = claims["jti"].as_str().filter(|j| !j.is_empty()) {
        extra.insert(
            format!("{EXTRA_PREFIX}credential-id"),
            vec![format!("JTI={jti}")],
        );
    }
    let user = UserInfo {
        name: format!("system:serviceaccount:{namespace}:{sa_name}"),
        uid: sa_uid,
        groups: vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{namespace}"),
        ],
        extra,
    };
    Ok(TokenUser { user, audiences })
}

/// What token validation needs of a bound object. Only these fields are decoded: no tree of
/// the whole object is built on this hot path.
#[derive(serde::Deserialize)]
struct BoundMeta {
    #[serde(default)]
    uid: String,
    #[serde(default, rename = "deletionTimestamp")]
    deletion: Option<String>,
}

#[derive(serde::Deserialize)]
struct BoundState {
    metadata: BoundMeta,
}

/// Grace after an object's deletion began during which its tokens still work (upstream's).
const DELETION_GRACE_SECONDS: i64 = 60;

impl BoundState {
    /// Whether the object is being deleted (a secret: at all; others: for over the grace).
    fn deleted_long_ago(&self, at_all: bool) -> bool {
        let Some(ts) = &self.metadata.deletion else {
            return false;
        };
        at_all
            || ts.parse::<jiff::Timestamp>().is_ok_and(|t| {
                t.as_second() + DELETION_GRACE_SECONDS < jiff::Timestamp::now().as_second()
            })
    }
}

/// A core object's UID and deletion mark: from the watch cache, else (an object created a
/// moment ago that the cache has not seen yet) from the store.
async fn bound_state(
    server: &ApiServer,
    plural: &str,
    ns: Option<&str>,
    name: &str,
) -> Option<BoundState> {
    let idx = RESOURCES
        .iter()
        .position(|r| r.group.is_empty() && r.plural == plural)?;
    let key = RESOURCES[idx].store_key(ns, name);
    if let Some(obj) = server.cache.get(idx, &key) {
        return serde_json::from_slice(&obj.json).ok();
    }
    let kv = server.store.get(&key).await.ok()??;
    serde_json::from_slice(&kv.value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_rows_with_quoted_groups() {
        let t = StaticTokens::parse(
            "\u{feff}tok1,alice,u1,\"dev,ops\"\ntok2,bob,u2\n\n tok3 ,carol,u3,\"\"\"odd\"\"\"\n",
        )
        .unwrap();
        let alice = t.lookup("tok1").unwrap();
        assert_eq!((alice.name.as_str(), alice.uid.as_str()), ("alice", "u1"));
        assert_eq!(alice.groups, ["dev", "ops"]);
        assert!(t.lookup("tok2").unwrap().groups.is_empty());
        assert_eq!(t.lookup("tok3 ").unwrap().groups, ["\"odd\""]);
        assert_eq!(t.len(), 3);
        assert!(StaticTokens::parse("tok,alice\n").is_err());
        assert!(StaticTokens::parse("tok,alice,u,\"open\n").is_err());
    }
}
