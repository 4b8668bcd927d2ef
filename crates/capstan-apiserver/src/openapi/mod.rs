//! The OpenAPI documents the API server publishes: Swagger 2.0 at `/openapi/v2`, and OpenAPI
//! 3.0 at `/openapi/v3` (an index) and `/openapi/v3/<api|apis/group>/<version>` (one document
//! per group-version). kubectl reads them for `explain`, for deciding whether the server does
//! field validation (the `fieldValidation` parameter of each kind's PATCH operation) and for
//! the strategic-merge-patch metadata `apply` computes patches with. All documents are built
//! once from the resource table and k8s-openapi's schemas, then served as is.

mod definitions;
mod paths;
mod render;

use std::collections::BTreeMap;
use std::sync::LazyLock;

use capstan_api::resources::{self, RESOURCES};
use serde_json::{Map, Value, json};

use definitions::{V2_REF_PREFIX, all_definitions, closure, collect_refs, to_v3_schema};
use paths::{PathItem, resource_paths, resources_path};

/// The Kubernetes version the documents describe, as `info.version`.
const INFO_VERSION: &str = "v1.33.0";

/// One built OpenAPI v3 group-version document.
struct GroupVersionDocument {
    document: Value,
    json: Vec<u8>,
    hash: String,
}

/// Every document, built once.
struct Documents {
    v2: Value,
    v2_json: Vec<u8>,
    v3_index: Value,
    v3: BTreeMap<String, GroupVersionDocument>,
}

static DOCUMENTS: LazyLock<Documents> = LazyLock::new(build_documents);

/// The Swagger 2.0 document served at `/openapi/v2`.
pub fn openapi_v2() -> &'static Value {
    &DOCUMENTS.v2
}

/// [`openapi_v2`] serialized as JSON.
pub fn openapi_v2_json() -> &'static [u8] {
    &DOCUMENTS.v2_json
}

/// The discovery document served at `/openapi/v3`: each group-version's path and its
/// hash-qualified URL.
pub fn openapi_v3_index() -> &'static Value {
    &DOCUMENTS.v3_index
}

/// The OpenAPI 3.0 document of one group-version; `path` is `api/v1` or `apis/<group>/<version>`
/// (a leading `/` is ignored).
pub fn openapi_v3_group_version(path: &str) -> Option<&'static Value> {
    DOCUMENTS
        .v3
        .get(path.trim_start_matches('/'))
        .map(|d| &d.document)
}

/// [`openapi_v3_group_version`] serialized as JSON.
pub fn openapi_v3_group_version_json(path: &str) -> Option<&'static [u8]> {
    DOCUMENTS
        .v3
        .get(path.trim_start_matches('/'))
        .map(|d| d.json.as_slice())
}

/// The content hash of one group-version document, as in its `serverRelativeURL`
/// (`?hash=<HASH>`); usable as an ETag.
pub fn openapi_v3_hash(path: &str) -> Option<&'static str> {
    DOCUMENTS
        .v3
        .get(path.trim_start_matches('/'))
        .map(|d| d.hash.as_str())
}

/// `api/v1` or `apis/<group>/<version>`: the key of a group-version under `/openapi/v3/`.
pub fn group_version_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

fn build_documents() -> Documents {
    let definitions = all_definitions();
    let mut v2 = build_v2(&definitions);
    strip_one_of(&mut v2);
    let v2_json = serde_json::to_vec(&v2).unwrap_or_default();
    let mut v3 = BTreeMap::new();
    for (group, version) in resources::group_versions() {
        let document = build_v3(&definitions, group, version);
        let json = serde_json::to_vec(&document).unwrap_or_default();
        let hash = content_hash(&json);
        v3.insert(
            group_version_path(group, version),
            GroupVersionDocument {
                document,
                json,
                hash,
            },
        );
    }
    let v3_index = build_v3_index(&v3);
    Documents {
        v2,
        v2_json,
        v3_index,
        v3,
    }
}

/// All paths of one group-version (or of every group-version when `filter` is None).
fn path_items(filter: Option<(&str, &str)>) -> Vec<PathItem> {
    let mut items = Vec::new();
    for (group, version) in resources::group_versions() {
        if filter.is_some_and(|f| f != (group, version)) {
            continue;
        }
        items.push(resources_path(group, version));
        let served = RESOURCES
            .iter()
            .filter(|r| r.group == group && r.version == version);
        items.extend(served.flat_map(resource_paths));
    }
    items.sort_by(|a, b| a.path.cmp(&b.path));
    items
}

fn build_v2(definitions: &Map<String, Value>) -> Value {
    let paths: Map<String, Value> = path_items(None)
        .iter()
        .map(|p| (p.path.clone(), render::v2_path_item(p)))
        .collect();
    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": INFO_VERSION},
        "paths": paths,
        "definitions": definitions,
        "securityDefinitions": {
            "BearerToken": {
                "description": "Bearer Token authentication",
                "in": "header",
                "name": "authorization",
                "type": "apiKey",
            },
        },
        "security": [{"BearerToken": []}],
    })
}

fn build_v3(definitions: &Map<String, Value>, group: &str, version: &str) -> Value {
    let items = path_items(Some((group, version)));
    let mut roots = std::collections::BTreeSet::new();
    let mut paths = Map::new();
    for item in &items {
        // References are collected from the v2 rendering, whose prefix the definitions share.
        collect_refs(&render::v2_path_item(item), V2_REF_PREFIX, &mut roots);
        paths.insert(item.path.clone(), render::v3_path_item(item));
    }
    let schemas: Map<String, Value> = closure(definitions, roots)
        .iter()
        .map(|(name, schema)| (name.clone(), to_v3_schema(schema)))
        .collect();
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": INFO_VERSION},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "BearerToken": {
                    "description": "Bearer Token authentication",
                    "in": "header",
                    "name": "authorization",
                    "type": "apiKey",
                },
            },
        },
    })
}

fn build_v3_index(v3: &BTreeMap<String, GroupVersionDocument>) -> Value {
    let paths: Map<String, Value> = v3
        .iter()
        .map(|(path, doc)| {
            let url = format!("/openapi/v3/{path}?hash={}", doc.hash);
            (path.clone(), json!({"serverRelativeURL": url}))
        })
        .collect();
    json!({"paths": paths})
}

/// FNV-1a (128-bit) of the serialized document, upper-case hex: stable across builds and
/// processes, so clients' caches keyed by the URL stay valid until the document changes.
fn content_hash(bytes: &[u8]) -> String {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013B;
    let hash = bytes
        .iter()
        .fold(OFFSET, |h, b| (h ^ u128::from(*b)).wrapping_mul(PRIME));
    format!("{hash:032X}")
}

#[cfg(test)]
mod tests;

/// Swagger 2.0 has no `oneOf` (upstream's v2 document describes such fields, e.g. a CRD's
/// JSONSchemaPropsOrBool, by their description alone), so drop it from the v2 document.
fn strip_one_of(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.remove("oneOf");
            for (k, child) in m.iter_mut() {
                if k == "properties" || k == "definitions" {
                    // Keys here are names (a CRD schema has a property called `oneOf`), not keywords.
                    if let Value::Object(named) = child {
                        named.values_mut().for_each(strip_one_of);
                    }
                } else {
                    strip_one_of(child);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(strip_one_of),
        _ => {}
    }
}
