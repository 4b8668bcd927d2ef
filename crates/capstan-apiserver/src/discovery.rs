//! Discovery: /version, /api, /apis (legacy and aggregated), per group-version resource lists.

use crate::response::{self, Body};
use crate::server::ServerConfig;
use capstan_api::resources::{self, RESOURCES};
use capstan_api::{ResourceInfo, Subresource};
use http::{HeaderMap, HeaderValue, header};
use serde_json::{Value, json};

/// `/version`, with every field upstream returns (clients validate them strictly).
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": concat!("v1.33.0+capstan-", env!("CARGO_PKG_VERSION")),
        "gitCommit": option_env!("CAPSTAN_GIT_COMMIT").unwrap_or("unknown"),
        "gitTreeState": "clean",
        "buildDate": "2026-11-27T00:00:00Z",
        "goVersion": "rustc",
        "compiler": "rustc",
        "platform": concat!("linux/", "amd64"),
    })
}

pub fn core_versions(config: &ServerConfig) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": format!("{}:{}", config.bind_address, config.https_port)}],
    })
}

fn groups() -> Vec<&'static str> {
    let mut out: Vec<&str> = Vec::new();
    for (g, _) in resources::group_versions() {
        if !g.is_empty() && !out.contains(&g) {
            out.push(g);
        }
    }
    out
}

fn versions_of(group: &str) -> Vec<&'static str> {
    resources::group_versions()
        .into_iter()
        .filter(|(g, _)| *g == group)
        .map(|(_, v)| v)
        .collect()
}

pub fn group(group: &str) -> Value {
    let versions: Vec<Value> = versions_of(group)
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    json!({
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": group,
        "versions": versions,
        "preferredVersion": versions.first().cloned().unwrap_or(Value::Null),
    })
}

fn group_list() -> Value {
    let items: Vec<Value> = groups()
        .into_iter()
        .map(|g| {
            let mut v = group(g);
            if let Value::Object(m) = &mut v {
                m.remove("kind");
                m.remove("apiVersion");
            }
            v
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": items})
}

/// (name, kind, group, version, verbs) of each subresource entry.
fn subresource_entries(
    r: &ResourceInfo,
) -> Vec<(
    Subresource,
    &'static str,
    &'static str,
    &'static str,
    Vec<&'static str>,
)> {
    r.subresources
        .iter()
        .map(|s| match s {
            Subresource::Status => (
                *s,
                r.kind,
                r.group,
                r.version,
                vec!["get", "patch", "update"],
            ),
            Subresource::Scale => (
                *s,
                "Scale",
                "autoscaling",
                "v1",
                vec!["get", "patch", "update"],
            ),
            Subresource::Binding => (*s, "Binding", "", "v1", vec!["create"]),
            Subresource::Finalize => (*s, r.kind, r.group, r.version, vec!["update"]),
            Subresource::Log => (*s, "Pod", "", "v1", vec!["get"]),
            Subresource::Exec => (*s, "PodExecOptions", "", "v1", vec!["create", "get"]),
            Subresource::Attach => (*s, "PodAttachOptions", "", "v1", vec!["create", "get"]),
            Subresource::PortForward => {
                (*s, "PodPortForwardOptions", "", "v1", vec!["create", "get"])
            }
            Subresource::Token => (
                *s,
                "TokenRequest",
                "authentication.k8s.io",
                "v1",
                vec!["create"],
            ),
        })
        .collect()
}

pub fn resource_list(group: &str, version: &str) -> Value {
    let mut out = Vec::new();
    for r in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        let mut e = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": r.verbs,
        });
        if !r.short_names.is_empty() {
            e["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            e["categories"] = json!(r.categories);
        }
        out.push(e);
        for (s, kind, g, v, verbs) in subresource_entries(r) {
            let mut e = json!({"name": format!("{}/{}", r.plural, s.name()), "singularName": "", "namespaced": r.namespaced, "kind": kind, "verbs": verbs});
            if g != r.group || v != r.version {
                e["group"] = json!(g);
                e["version"] = json!(v);
            }
            out.push(e);
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": out})
}

fn aggregated_resource(r: &ResourceInfo) -> Value {
    let mut e = json!({
        "resource": r.plural,
        "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
        "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": r.singular,
        "verbs": r.verbs,
    });
    if !r.short_names.is_empty() {
        e["shortNames"] = json!(r.short_names);
    }
    if !r.categories.is_empty() {
        e["categories"] = json!(r.categories);
    }
    let subs: Vec<Value> = subresource_entries(r)
        .into_iter()
        .map(|(s, kind, g, v, verbs)| json!({"subresource": s.name(), "responseKind": {"group": g, "version": v, "kind": kind}, "verbs": verbs}))
        .collect();
    if !subs.is_empty() {
        e["subresources"] = Value::Array(subs);
    }
    e
}

fn aggregated(core: bool, api_version: &str) -> Value {
    let group_names: Vec<&str> = if core { vec![""] } else { groups() };
    let items: Vec<Value> = group_names
        .into_iter()
        .map(|g| {
            let versions: Vec<Value> = versions_of(g)
                .into_iter()
                .map(|v| {
                    let res: Vec<Value> = RESOURCES
                        .iter()
                        .filter(|r| r.group == g && r.version == v)
                        .map(aggregated_resource)
                        .collect();
                    json!({"version": v, "resources": res, "freshness": "Current"})
                })
                .collect();
            let meta = if g.is_empty() {
                json!({"creationTimestamp": null})
            } else {
                json!({"name": g, "creationTimestamp": null})
            };
            json!({"metadata": meta, "versions": versions})
        })
        .collect();
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": api_version, "metadata": {}, "items": items})
}

/// Which aggregated discovery version the client asked for, if any.
fn wants_aggregated(headers: &HeaderMap) -> Option<&'static str> {
    let accept = headers.get(header::ACCEPT)?.to_str().ok()?;
    for part in accept.split(',') {
        if part.contains("as=APIGroupDiscoveryList") && part.contains("g=apidiscovery.k8s.io") {
            if part.contains("v=v2beta1") {
                return Some("v2beta1");
            }
            if part.contains("v=v2") {
                return Some("v2");
            }
        }
    }
    None
}

fn aggregated_response(core: bool, v: &str) -> http::Response<Body> {
    let mut r = response::json(200, &aggregated(core, &format!("apidiscovery.k8s.io/{v}")));
    if let Ok(ct) = HeaderValue::from_str(&format!(
        "application/json;g=apidiscovery.k8s.io;v={v};as=APIGroupDiscoveryList"
    )) {
        r.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    r
}

/// `/apis`: aggregated discovery when asked for, else the APIGroupList.
pub fn groups_response(headers: &HeaderMap) -> http::Response<Body> {
    match wants_aggregated(headers) {
        Some(v) => aggregated_response(false, v),
        None => response::json(200, &group_list()),
    }
}

/// `/api`: aggregated discovery when asked for, else APIVersions.
pub fn core_response(headers: &HeaderMap, config: &ServerConfig) -> http::Response<Body> {
    match wants_aggregated(headers) {
        Some(v) => aggregated_response(true, v),
        None => response::json(200, &core_versions(config)),
    }
}

/// `/openapi/v2`: JSON, or gnostic's `openapi.v2.Document` protobuf (what kubectl asks for),
/// for the first media range of `Accept` that names either, as kube-openapi's handler picks;
/// 406 when none does.
pub fn openapi_v2_response(headers: &HeaderMap) -> http::Response<Body> {
    // kube-openapi answers both spellings with the dotted one.
    const PROTOBUF: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";
    static PROTO: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
        crate::openapi_proto::encode_v2_document(crate::openapi::openapi_v2())
    });
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("*/*");
    for clause in accept.split(',') {
        let media = clause.split(';').next().unwrap_or("").trim();
        let (kind, subtype) = media.split_once('/').unwrap_or((media, ""));
        if kind != "application" && kind != "*" {
            continue;
        }
        match subtype {
            "json" | "*" => return response::json_bytes(200, crate::openapi::openapi_v2_json()),
            "com.github.proto-openapi.spec.v2@v1.0+protobuf"
            | "com.github.proto-openapi.spec.v2.v1.0+protobuf" => {
                let mut r = response::json_bytes(200, PROTO.as_slice());
                r.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROTOBUF));
                return r;
            }
            _ => {}
        }
    }
    response::error(&capstan_api::ApiError::not_acceptable(
        "only JSON and protobuf are served for /openapi/v2",
    ))
}
