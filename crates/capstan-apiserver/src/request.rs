//! Parsing of API request URLs, query parameters and content negotiation.

use capstan_api::resources::{self, RESOURCES};
use capstan_api::{ApiError, Subresource};
use std::collections::HashMap;

/// What a URL addresses.
#[derive(Debug, PartialEq, Eq)]
pub enum Target {
    Version,
    Health(&'static str),
    /// `/api`
    CoreVersions,
    /// `/apis`
    Groups,
    /// `/apis/<group>`
    Group(String),
    /// `/api/v1` or `/apis/<group>/<version>`
    GroupVersion(String, String),
    OpenApiV2,
    OpenApiV3Index,
    /// `/openapi/v3/<path>` e.g. `apis/apps/v1`
    OpenApiV3(String),
    Resource(ResourcePath),
    NotFound,
    /// `/cacerts`: the cluster CA, unauthenticated (auth::join).
    CaCerts,
    /// `/v1-capstan/node-credentials`: node certificates for a join token (auth::join).
    NodeCredentials,
}

/// A URL under a served resource.
#[derive(Debug, PartialEq, Eq)]
pub struct ResourcePath {
    /// Index into RESOURCES.
    pub resource: usize,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<Subresource>,
}

impl ResourcePath {
    pub fn info(&self) -> &'static capstan_api::ResourceInfo {
        &RESOURCES[self.resource]
    }
}

fn index_of(group: &str, version: &str, plural: &str) -> Option<usize> {
    RESOURCES
        .iter()
        .position(|r| r.group == group && r.version == version && r.plural == plural)
}

fn sub_of(s: &str) -> Option<Subresource> {
    match s {
        "status" => Some(Subresource::Status),
        "scale" => Some(Subresource::Scale),
        "binding" => Some(Subresource::Binding),
        "finalize" => Some(Subresource::Finalize),
        "log" => Some(Subresource::Log),
        "exec" => Some(Subresource::Exec),
        "attach" => Some(Subresource::Attach),
        "portforward" => Some(Subresource::PortForward),
        "token" => Some(Subresource::Token),
        _ => None,
    }
}

/// Route a request path.
pub fn parse_path(path: &str) -> Target {
    let path = path.trim_end_matches('/');
    match path {
        "/version" => return Target::Version,
        "/healthz" => return Target::Health("healthz"),
        "/livez" => return Target::Health("livez"),
        "/readyz" => return Target::Health("readyz"),
        "/api" => return Target::CoreVersions,
        "/apis" => return Target::Groups,
        "/openapi/v2" => return Target::OpenApiV2,
        "/openapi/v3" => return Target::OpenApiV3Index,
        crate::auth::join::CACERTS_PATH => return Target::CaCerts,
        crate::auth::join::CREDENTIALS_PATH => return Target::NodeCredentials,
        _ => {}
    }
    if let Some(rest) = path.strip_prefix("/openapi/v3/") {
        return Target::OpenApiV3(rest.to_string());
    }
    if path.starts_with("/healthz/") || path.starts_with("/livez/") || path.starts_with("/readyz/")
    {
        return Target::Health("check");
    }
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g] => {
            return if resources::group_versions().iter().any(|(gg, _)| gg == g) {
                Target::Group(g.to_string())
            } else {
                Target::NotFound
            };
        }
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Target::NotFound,
    };
    if !resources::group_versions().contains(&(group, version)) {
        return Target::NotFound;
    }
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let res = match rest {
        [] => return Target::GroupVersion(group.to_string(), version.to_string()),
        ["namespaces", ns, plural, tail @ ..]
            if index_of(group, version, plural).is_some_and(|i| RESOURCES[i].namespaced) =>
        {
            let idx = index_of(group, version, plural).unwrap_or_default();
            match tail {
                [] => ResourcePath {
                    resource: idx,
                    namespace: Some(decode(ns)),
                    name: None,
                    subresource: None,
                },
                [name] => ResourcePath {
                    resource: idx,
                    namespace: Some(decode(ns)),
                    name: Some(decode(name)),
                    subresource: None,
                },
                [name, sub] => match sub_of(sub) {
                    Some(s) => ResourcePath {
                        resource: idx,
                        namespace: Some(decode(ns)),
                        name: Some(decode(name)),
                        subresource: Some(s),
                    },
                    None => return Target::NotFound,
                },
                _ => return Target::NotFound,
            }
        }
        [plural, tail @ ..] => {
            let Some(idx) = index_of(group, version, plural) else {
                return Target::NotFound;
            };
            match tail {
                [] => ResourcePath {
                    resource: idx,
                    namespace: None,
                    name: None,
                    subresource: None,
                },
                [name] if !RESOURCES[idx].namespaced => ResourcePath {
                    resource: idx,
                    namespace: None,
                    name: Some(decode(name)),
                    subresource: None,
                },
                [name, sub] if !RESOURCES[idx].namespaced => match sub_of(sub) {
                    Some(s) => ResourcePath {
                        resource: idx,
                        namespace: None,
                        name: Some(decode(name)),
                        subresource: Some(s),
                    },
                    None => return Target::NotFound,
                },
                _ => return Target::NotFound,
            }
        }
    };
    if let Some(sub) = res.subresource
        && !res.info().has_subresource(sub)
    {
        return Target::NotFound;
    }
    Target::Resource(res)
}

/// Query parameters, last value wins.
#[derive(Debug, Default)]
pub struct Query(pub HashMap<String, String>);

impl Query {
    pub fn parse(q: Option<&str>) -> Query {
        let mut m = HashMap::new();
        if let Some(q) = q {
            for (k, v) in form_urlencoded::parse(q.as_bytes()) {
                m.insert(k.into_owned(), v.into_owned());
            }
        }
        Query(m)
    }
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str).filter(|s| !s.is_empty())
    }
    pub fn int(&self, k: &str) -> Result<Option<i64>, ApiError> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| ApiError::bad_request(format!("invalid value for {k}: {v:?}"))),
        }
    }
    /// `dryRun=All` (the only value upstream accepts).
    pub fn dry_run(&self) -> Result<bool, ApiError> {
        match self.get("dryRun") {
            None => Ok(false),
            Some("All") => Ok(true),
            Some(other) => Err(ApiError::bad_request(format!(
                "Invalid dry run value: {other:?}; supported values: \"All\""
            ))),
        }
    }
}

/// How the client wants the response rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rendering {
    Json,
    Table,
    /// `as=PartialObjectMetadata(List)`.
    Metadata,
}

/// Choose a rendering from the Accept header; Err(406) when nothing acceptable is offered.
pub fn negotiate(accept: Option<&str>) -> Result<Rendering, ApiError> {
    let Some(accept) = accept else {
        return Ok(Rendering::Json);
    };
    let mut json_ok = false;
    for part in accept.split(',') {
        let part = part.trim();
        let mut params = part.split(';').map(str::trim);
        let mime = params.next().unwrap_or("");
        let rest: Vec<&str> = params.collect();
        let is_json = matches!(
            mime,
            "application/json" | "*/*" | "application/*" | "application/yaml"
        );
        if !is_json {
            continue;
        }
        let as_ = rest.iter().find_map(|p| p.strip_prefix("as="));
        match as_ {
            Some("Table") => return Ok(Rendering::Table),
            Some("PartialObjectMetadata" | "PartialObjectMetadataList") => {
                return Ok(Rendering::Metadata);
            }
            Some(_) => continue,
            None => json_ok = true,
        }
        if json_ok {
            return Ok(Rendering::Json);
        }
    }
    if json_ok {
        Ok(Rendering::Json)
    } else {
        Err(ApiError::not_acceptable(format!(
            "only the following media types are accepted: application/json, application/yaml; got {accept:?}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(p: &str) -> ResourcePath {
        match parse_path(p) {
            Target::Resource(r) => r,
            other => panic!("{p}: {other:?}"),
        }
    }

    #[test]
    fn namespaced_and_cluster_paths_route() {
        let r = res("/api/v1/namespaces/default/pods/web/status");
        assert_eq!(r.info().plural, "pods");
        assert_eq!(r.namespace.as_deref(), Some("default"));
        assert_eq!(r.name.as_deref(), Some("web"));
        assert_eq!(r.subresource, Some(Subresource::Status));
        let r = res("/api/v1/namespaces/kube-system");
        assert_eq!(r.info().plural, "namespaces");
        assert_eq!(r.name.as_deref(), Some("kube-system"));
        let r = res("/api/v1/namespaces/foo/status");
        assert_eq!(r.info().plural, "namespaces");
        assert_eq!(r.subresource, Some(Subresource::Status));
        let r = res("/apis/apps/v1/deployments");
        assert!(r.namespace.is_none() && r.name.is_none());
        let r = res("/apis/apps/v1/namespaces/a/deployments/d/scale");
        assert_eq!(r.subresource, Some(Subresource::Scale));
    }

    #[test]
    fn unknown_paths_are_not_found() {
        assert_eq!(parse_path("/api/v1/widgets"), Target::NotFound);
        assert_eq!(parse_path("/apis/apps/v9/deployments"), Target::NotFound);
        assert_eq!(
            parse_path("/api/v1/namespaces/a/configmaps/b/scale"),
            Target::NotFound
        );
    }

    #[test]
    fn table_is_negotiated_from_kubectl_accept() {
        let a = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(negotiate(Some(a)).unwrap(), Rendering::Table);
        assert_eq!(
            negotiate(Some("application/json")).unwrap(),
            Rendering::Json
        );
        assert!(negotiate(Some("application/vnd.kubernetes.protobuf")).is_err());
        assert_eq!(
            negotiate(Some("application/vnd.kubernetes.protobuf, */*")).unwrap(),
            Rendering::Json
        );
    }
}
