//! The schema definitions of every served kind, from k8s-openapi's schemars impls (upstream's
//! names and doc descriptions), plus the `<Kind>List` wrappers, `x-kubernetes-group-version-kind`
//! tags and patch extensions upstream's documents carry.

use std::collections::BTreeSet;

use capstan_api::ResourceInfo;
use capstan_api::resources::{self, RESOURCES};
use k8s_openapi::api;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use schemars::SchemaGenerator;
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

/// Prefix of references in the canonical (Swagger 2.0) form the definitions are built in.
pub(super) const V2_REF_PREFIX: &str = "#/definitions/";
/// Prefix of references in OpenAPI 3.0 documents.
pub(super) const V3_REF_PREFIX: &str = "#/components/schemas/";

pub(super) const STATUS: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Status";
pub(super) const DELETE_OPTIONS: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions";
pub(super) const WATCH_EVENT: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.WatchEvent";
pub(super) const PATCH: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Patch";
pub(super) const API_RESOURCE_LIST: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.APIResourceList";
pub(super) const SCALE: &str = "io.k8s.api.autoscaling.v1.Scale";
pub(super) const BINDING: &str = "io.k8s.api.core.v1.Binding";
const LIST_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta";

/// A group, version and kind, as the `x-kubernetes-group-version-kind` extension spells it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Gvk {
    pub group: String,
    pub version: String,
    pub kind: String,
}

impl Gvk {
    pub fn new(group: &str, version: &str, kind: &str) -> Self {
        Gvk {
            group: group.to_string(),
            version: version.to_string(),
            kind: kind.to_string(),
        }
    }
    pub fn of(info: &ResourceInfo) -> Self {
        Gvk::new(info.group, info.version, info.kind)
    }
    pub fn to_json(&self) -> Value {
        json!({"group": self.group, "kind": self.kind, "version": self.version})
    }
}

/// Upstream's definition name of a served kind, e.g. `io.k8s.api.apps.v1.Deployment`.
pub(super) fn definition_name(info: &ResourceInfo) -> String {
    capstan_api::schema::root_definition(info).to_string()
}

/// The `<Kind>List` definition name of a served kind.
pub(super) fn list_definition_name(info: &ResourceInfo) -> String {
    format!("{}List", definition_name(info))
}

/// Every definition reachable from the served kinds and the API's own request and response
/// types, keyed by upstream name, with references in `#/definitions/` form.
pub(super) fn all_definitions() -> Map<String, Value> {
    // The kinds' schemas come from capstan-api's table; the request/response types only the
    // API server publishes are added here.
    let settings = SchemaSettings::draft07().with(|s| {
        s.definitions_path = "/definitions".into();
        s.meta_schema = None;
        s.transforms = Vec::new();
    });
    let mut generator = SchemaGenerator::new(settings);
    let _ = generator.subschema_for::<meta::Patch>();
    let _ = generator.subschema_for::<meta::APIResourceList>();
    let _ = generator.subschema_for::<meta::ListMeta>();
    let _ = generator.subschema_for::<meta::Status>();
    let _ = generator.subschema_for::<meta::DeleteOptions>();
    let _ = generator.subschema_for::<meta::WatchEvent<api::core::v1::Pod>>();
    let _ = generator.subschema_for::<api::autoscaling::v1::Scale>();
    let _ = generator.subschema_for::<api::core::v1::Binding>();
    let mut definitions = generator.take_definitions(false);
    for (name, schema) in capstan_api::schema::definitions() {
        definitions
            .entry(name.clone())
            .or_insert_with(|| schema.clone());
    }
    // Review kinds are only created, never listed: upstream has no list kind for them.
    for info in RESOURCES.iter().filter(|r| !r.is_review()) {
        definitions.insert(list_definition_name(info), list_schema(info));
    }
    tag_group_version_kinds(&mut definitions);
    add_patch_extensions(&mut definitions);
    sorted(definitions)
}

/// The schema of `<Kind>List`, which k8s-openapi models as a generic type without a schema.
fn list_schema(info: &ResourceInfo) -> Value {
    let item_ref = format!("{V2_REF_PREFIX}{}", definition_name(info));
    json!({
        "description": format!("{}List is a list of {} objects.", info.kind, info.kind),
        "type": "object",
        "properties": {
            "apiVersion": {
                "description": "APIVersion defines the versioned schema of this representation of an object. Servers should convert recognized schemas to the latest internal value, and may reject unrecognized values. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources",
                "type": "string",
            },
            "items": {
                "description": format!("Items is the list of {} objects.", info.kind),
                "type": "array",
                "items": {"$ref": item_ref},
            },
            "kind": {
                "description": "Kind is a string value representing the REST resource this object represents. Servers may infer this from the endpoint the client submits requests to. Cannot be updated. In CamelCase. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds",
                "type": "string",
            },
            "metadata": {
                "$ref": format!("{V2_REF_PREFIX}{LIST_META}"),
                "description": "Standard list metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata",
            },
        },
        "required": ["items"],
    })
}

/// Adds `x-kubernetes-group-version-kind` to every top-level kind, as upstream does: a list,
/// since some definitions (DeleteOptions, WatchEvent) are a kind in every group-version.
fn tag_group_version_kinds(definitions: &mut Map<String, Value>) {
    let mut tags: Vec<(String, Vec<Gvk>)> = Vec::new();
    for info in RESOURCES {
        tags.push((definition_name(info), vec![Gvk::of(info)]));
        if info.is_review() {
            continue;
        }
        let list_kind = info.list_kind();
        tags.push((
            list_definition_name(info),
            vec![Gvk::new(info.group, info.version, &list_kind)],
        ));
    }
    tags.push((
        SCALE.to_string(),
        vec![Gvk::new("autoscaling", "v1", "Scale")],
    ));
    tags.push((BINDING.to_string(), vec![Gvk::new("", "v1", "Binding")]));
    tags.push((STATUS.to_string(), vec![Gvk::new("", "v1", "Status")]));
    for (name, kind) in [
        (DELETE_OPTIONS, "DeleteOptions"),
        (WATCH_EVENT, "WatchEvent"),
    ] {
        let all = resources::group_versions()
            .into_iter()
            .map(|(g, v)| Gvk::new(g, v, kind));
        tags.push((name.to_string(), all.collect()));
    }
    for (name, gvks) in tags {
        if let Some(Value::Object(schema)) = definitions.get_mut(&name) {
            let list = gvks.iter().map(Gvk::to_json).collect();
            schema.insert("x-kubernetes-group-version-kind".into(), Value::Array(list));
        }
    }
}

/// Adds upstream's patch extensions (strategy, merge key, list type, list map keys, map type)
/// to the properties and definitions that carry them, so clients compute strategic merge patches from the document.
fn add_patch_extensions(definitions: &mut Map<String, Value>) {
    for (name, schema) in definitions.iter_mut() {
        let Some(Value::Object(properties)) = schema.get_mut("properties") else {
            continue;
        };
        for (property, property_schema) in properties.iter_mut() {
            let (Some(meta), Value::Object(target)) = (
                capstan_api::schema::patch_meta(name, property),
                property_schema,
            ) else {
                continue;
            };
            if let Some(strategy) = meta.patch_strategy {
                target.insert("x-kubernetes-patch-strategy".into(), strategy.into());
            }
            if let Some(key) = meta.patch_merge_key {
                target.insert("x-kubernetes-patch-merge-key".into(), key.into());
            }
            if let Some(list_type) = meta.list_type {
                target.insert("x-kubernetes-list-type".into(), list_type.into());
            }
            if !meta.list_map_keys.is_empty() {
                target.insert(
                    "x-kubernetes-list-map-keys".into(),
                    json!(meta.list_map_keys),
                );
            }
            if let Some(map_type) = meta.map_type {
                target.insert("x-kubernetes-map-type".into(), map_type.into());
            }
        }
    }
    for (name, schema) in definitions.iter_mut() {
        if let (Some(map_type), Value::Object(target)) =
            (capstan_api::schema::definition_map_type(name), schema)
        {
            target.insert("x-kubernetes-map-type".into(), map_type.into());
        }
    }
}

fn sorted(map: Map<String, Value>) -> Map<String, Value> {
    let mut entries: Vec<(String, Value)> = map.into_iter().collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    entries.into_iter().collect()
}

/// Names of the definitions `value` refers to (directly), in `prefix` form.
pub(super) fn collect_refs(value: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(reference)) = map.get("$ref")
                && let Some(name) = reference.strip_prefix(prefix)
            {
                out.insert(name.to_string());
            }
            map.values().for_each(|v| collect_refs(v, prefix, out));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, prefix, out)),
        _ => {}
    }
}

/// The named definitions plus everything they reach, in `#/definitions/` form.
pub(super) fn closure(
    definitions: &Map<String, Value>,
    roots: impl IntoIterator<Item = String>,
) -> Map<String, Value> {
    let mut seen = BTreeSet::new();
    let mut pending: Vec<String> = roots.into_iter().collect();
    while let Some(name) = pending.pop() {
        let Some(schema) = definitions.get(&name) else {
            continue;
        };
        if !seen.insert(name) {
            continue;
        }
        let mut refs = BTreeSet::new();
        collect_refs(schema, V2_REF_PREFIX, &mut refs);
        pending.extend(refs.into_iter().filter(|r| !seen.contains(r)));
    }
    seen.into_iter()
        .filter_map(|name| definitions.get(&name).map(|s| (name, s.clone())))
        .collect()
}

/// Converts a schema from the Swagger 2.0 form to OpenAPI 3.0: references move to
/// `#/components/schemas/`, and a reference with sibling keys (a description) becomes
/// `allOf: [{$ref}]` plus the siblings, because OpenAPI 3.0 ignores siblings of `$ref`.
pub(super) fn to_v3_schema(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let converted: Map<String, Value> = map
                .iter()
                .map(|(k, v)| (k.clone(), to_v3_value(k, v)))
                .collect();
            wrap_ref_with_siblings(converted)
        }
        Value::Array(items) => Value::Array(items.iter().map(to_v3_schema).collect()),
        other => other.clone(),
    }
}

fn to_v3_value(key: &str, value: &Value) -> Value {
    match (key, value) {
        ("$ref", Value::String(reference)) => match reference.strip_prefix(V2_REF_PREFIX) {
            Some(name) => Value::String(format!("{V3_REF_PREFIX}{name}")),
            None => value.clone(),
        },
        _ => to_v3_schema(value),
    }
}

fn wrap_ref_with_siblings(mut map: Map<String, Value>) -> Value {
    if map.len() < 2 || !map.contains_key("$ref") {
        return Value::Object(map);
    }
    let reference = map.remove("$ref").unwrap_or_default();
    let mut out = Map::new();
    out.insert("allOf".into(), json!([{"$ref": reference}]));
    out.extend(map);
    Value::Object(out)
}
