//! Impersonation headers (`Impersonate-User`, `-Group`, `-Uid`, `-Extra-<key>`): every part
//! asked for is authorized as verb `impersonate` on users, groups, serviceaccounts, uids or
//! userextras, as upstream's impersonation filter does; then the request runs as that user.

use super::{AUTHENTICATED, Attributes, Decision, UserInfo};
use crate::server::ApiServer;
use capstan_api::ApiError;
use std::collections::BTreeMap;

pub const USER: &str = "impersonate-user";
pub const GROUP: &str = "impersonate-group";
pub const UID: &str = "impersonate-uid";
pub const EXTRA_PREFIX: &str = "impersonate-extra-";

/// Whether a request asks to impersonate anyone (cheap; the common case is no).
pub fn requested(headers: &http::HeaderMap) -> bool {
    headers
        .keys()
        .any(|k| k.as_str().starts_with("impersonate-"))
}

/// One thing asked for: what kind, its name, and for extras the key.
#[derive(Debug)]
enum Part {
    User(String),
    ServiceAccount(String, String),
    Group(String),
    Extra(String, String),
    Uid(String),
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Part::User(n) => write!(f, "User {n:?}"),
            Part::ServiceAccount(ns, n) => write!(f, "ServiceAccount {ns}/{n}"),
            Part::Group(n) => write!(f, "Group {n:?}"),
            Part::Extra(k, v) => write!(f, "UserExtra {k}={v:?}"),
            Part::Uid(u) => write!(f, "UID {u:?}"),
        }
    }
}

fn text(v: &http::HeaderValue) -> String {
    String::from_utf8_lossy(v.as_bytes()).into_owned()
}

fn parts(headers: &http::HeaderMap) -> Result<Vec<Part>, ApiError> {
    let mut out = Vec::new();
    let user = headers.get(USER).map(text).filter(|u| !u.is_empty());
    if let Some(user) = &user {
        match user
            .strip_prefix("system:serviceaccount:")
            .and_then(|rest| rest.split_once(':'))
            .filter(|(ns, name)| !ns.is_empty() && !name.is_empty() && !name.contains(':'))
        {
            Some((ns, name)) => out.push(Part::ServiceAccount(ns.into(), name.into())),
            None => out.push(Part::User(user.clone())),
        }
    }
    for g in headers.get_all(GROUP) {
        out.push(Part::Group(text(g)));
    }
    for (name, value) in headers {
        if let Some(key) = name.as_str().strip_prefix(EXTRA_PREFIX) {
            let key = percent_encoding::percent_decode_str(key)
                .decode_utf8_lossy()
                .into_owned();
            out.push(Part::Extra(key, text(value)));
        }
    }
    if let Some(uid) = headers.get(UID).map(text).filter(|u| !u.is_empty()) {
        out.push(Part::Uid(uid));
    }
    if user.is_none() && !out.is_empty() {
        let asked: Vec<String> = out.iter().map(Part::to_string).collect();
        return Err(ApiError::internal(format!(
            "requested [{}] without impersonating a user",
            asked.join(" ")
        )));
    }
    Ok(out)
}

/// The user `requestor` acts as, after checking each impersonated part; `None` when the request
/// asks for no impersonation. A part the requestor may not impersonate is 403.
pub async fn impersonate(
    server: &ApiServer,
    requestor: &UserInfo,
    headers: &http::HeaderMap,
) -> Result<Option<UserInfo>, ApiError> {
    let parts = parts(headers)?;
    if parts.is_empty() {
        return Ok(None);
    }
    let groups_given = parts.iter().any(|p| matches!(p, Part::Group(_)));
    let mut user = UserInfo::default();
    let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for part in &parts {
        let mut attrs = Attributes {
            user: requestor.clone(),
            verb: "impersonate".into(),
            resource_request: true,
            ..Default::default()
        };
        match part {
            Part::User(name) => {
                attrs.resource = "users".into();
                attrs.name = name.clone();
                user.name = name.clone();
            }
            Part::ServiceAccount(ns, name) => {
                attrs.resource = "serviceaccounts".into();
                attrs.namespace = ns.clone();
                attrs.name = name.clone();
                user.name = format!("system:serviceaccount:{ns}:{name}");
                if !groups_given {
                    user.groups = vec![
                        "system:serviceaccounts".into(),
                        format!("system:serviceaccounts:{ns}"),
                    ];
                }
            }
            Part::Group(g) => {
                attrs.resource = "groups".into();
                attrs.name = g.clone();
                user.groups.push(g.clone());
            }
            Part::Extra(key, value) => {
                attrs.api_group = "authentication.k8s.io".into();
                attrs.resource = "userextras".into();
                attrs.subresource = key.clone();
                attrs.name = value.clone();
                extra.entry(key.clone()).or_default().push(value.clone());
            }
            Part::Uid(uid) => {
                attrs.api_group = "authentication.k8s.io".into();
                attrs.resource = "uids".into();
                attrs.name = uid.clone();
                user.uid = uid.clone();
            }
        }
        match super::authorize(server, &attrs).await {
            Decision::Allow => {}
            Decision::Deny(reason) => return Err(super::forbidden(&attrs, &reason)),
            Decision::NoOpinion => return Err(super::forbidden(&attrs, "")),
        }
    }
    user.extra = extra;
    if user.name == "system:anonymous" {
        if !user.in_group("system:unauthenticated") {
            user.groups.push("system:unauthenticated".into());
        }
    } else if !user.in_group(AUTHENTICATED) {
        user.groups.push(AUTHENTICATED.into());
    }
    Ok(Some(user))
}

/// Drops the impersonation headers once they have been acted on, as upstream does.
pub fn strip(headers: &mut http::HeaderMap) {
    let names: Vec<http::HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("impersonate-"))
        .cloned()
        .collect();
    for n in names {
        headers.remove(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn parts_of_the_headers() {
        let h = headers(&[
            ("Impersonate-User", "system:serviceaccount:ns1:robot"),
            ("Impersonate-Group", "a"),
            ("Impersonate-Group", "b"),
            ("Impersonate-Extra-Scopes%2Fx", "s1"),
            ("Impersonate-Uid", "u-1"),
        ]);
        let p: Vec<String> = parts(&h).unwrap().iter().map(Part::to_string).collect();
        assert_eq!(
            p,
            [
                "ServiceAccount ns1/robot",
                "Group \"a\"",
                "Group \"b\"",
                "UserExtra scopes/x=\"s1\"",
                "UID \"u-1\""
            ]
        );
        let err = parts(&headers(&[("Impersonate-Group", "a")])).unwrap_err();
        assert_eq!(err.code, 500);
        assert!(err.message.contains("without impersonating a user"));
        assert!(parts(&headers(&[("Accept", "x")])).unwrap().is_empty());
    }
}
