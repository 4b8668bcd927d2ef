//! OpenAPI schemas of the built-in types (from k8s-openapi's schemars impls) and the patch
//! metadata upstream attaches to them (x-kubernetes-patch-strategy, -patch-merge-key,
//! -list-type, -list-map-keys, -map-type), shared by strategic merge patch, server-side apply
//! and the API server's /openapi documents.

mod tags;

use crate::ResourceInfo;
use k8s_openapi::api;
use once_cell::sync::Lazy;
use serde_json::{Map, Value};
use std::collections::HashMap;

/// Patch metadata of one property of one definition.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PatchMeta {
    /// `x-kubernetes-patch-strategy`: "merge", "retainKeys", "merge,retainKeys", or "replace".
    pub patch_strategy: Option<&'static str>,
    /// `x-kubernetes-patch-merge-key`.
    pub patch_merge_key: Option<&'static str>,
    /// `x-kubernetes-list-type`: "atomic", "set" or "map".
    pub list_type: Option<&'static str>,
    /// `x-kubernetes-list-map-keys`.
    pub list_map_keys: &'static [&'static str],
    /// `x-kubernetes-map-type` of a map-valued property: "atomic" or "granular".
    pub map_type: Option<&'static str>,
}

impl PatchMeta {
    /// True when the patch strategy lists `strategy` ("merge" or "retainKeys").
    pub fn has_strategy(&self, strategy: &str) -> bool {
        self.patch_strategy
            .is_some_and(|s| s.split(',').any(|p| p == strategy))
    }
}

static TAG_INDEX: Lazy<HashMap<(&'static str, &'static str), PatchMeta>> = Lazy::new(|| {
    tags::TAGS
        .iter()
        .map(|&(def, prop, strategy, key, list_type, keys, map_type)| {
            let meta = PatchMeta {
                patch_strategy: strategy,
                patch_merge_key: key,
                list_type,
                list_map_keys: keys,
                map_type,
            };
            ((def, prop), meta)
        })
        .collect()
});

/// Metadata for `property` of the definition named `definition`
/// (e.g. "io.k8s.api.core.v1.PodSpec", "containers").
pub fn patch_meta(definition: &str, property: &str) -> Option<PatchMeta> {
    TAG_INDEX.get(&(definition, property)).cloned()
}

/// Definitions upstream marks `x-kubernetes-map-type: atomic` (`+structType=atomic`): they are
/// owned and replaced as a whole by server-side apply.
const ATOMIC_STRUCTS: &[&str] = &[
    "io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector",
    "io.k8s.api.core.v1.LocalObjectReference",
    "io.k8s.api.core.v1.ObjectReference",
    "io.k8s.api.core.v1.TypedLocalObjectReference",
    "io.k8s.api.core.v1.TypedObjectReference",
    "io.k8s.api.core.v1.NodeSelector",
    "io.k8s.api.core.v1.NodeSelectorTerm",
    "io.k8s.api.core.v1.TopologySelectorTerm",
    "io.k8s.api.core.v1.ConfigMapKeySelector",
    "io.k8s.api.core.v1.SecretKeySelector",
    "io.k8s.api.core.v1.ObjectFieldSelector",
    "io.k8s.api.core.v1.ResourceFieldSelector",
    "io.k8s.api.core.v1.ConfigMapEnvSource",
    "io.k8s.api.core.v1.SecretEnvSource",
    "io.k8s.api.core.v1.SecretReference",
    "io.k8s.api.core.v1.SecretProjection",
    "io.k8s.api.core.v1.ConfigMapProjection",
    "io.k8s.api.core.v1.ClusterTrustBundleProjection",
];

/// `x-kubernetes-map-type` of a whole definition ("atomic" for `+structType=atomic` types).
pub fn definition_map_type(definition: &str) -> Option<&'static str> {
    ATOMIC_STRUCTS.contains(&definition).then_some("atomic")
}

/// What a property's value is, with the definition names of its nested objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PropertyType {
    /// An object described by a definition.
    Object(&'static str),
    /// An array; the item definition, or None for scalar/untyped items.
    Array(Option<&'static str>),
    /// A string-keyed map (`additionalProperties`); the value definition, or None for scalars.
    Map(Option<&'static str>),
    /// A string, number, boolean, or a definition of such (Quantity, Time, IntOrString).
    Scalar,
    /// A free-form value (e.g. RawExtension): no schema below it.
    Untyped,
}

/// A position in the schema while walking an object: a definition, the values of a
/// string-keyed map, or unknown (free-form, or a field the schema does not declare).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchemaNode {
    Def(&'static str),
    MapOf(Option<&'static str>),
    Unknown,
}

impl SchemaNode {
    /// The root of a served kind.
    pub fn root(info: &ResourceInfo) -> SchemaNode {
        match root_definition(info) {
            "" => SchemaNode::Unknown,
            def => SchemaNode::Def(def),
        }
    }

    /// The node of `key`'s value (for arrays: of their items) and the key's patch metadata.
    pub fn field(self, key: &str) -> (SchemaNode, PatchMeta) {
        match self {
            SchemaNode::Def(def) => {
                let meta = patch_meta(def, key).unwrap_or_default();
                let node = match property_type(def, key) {
                    Some(PropertyType::Object(d)) | Some(PropertyType::Array(Some(d))) => {
                        SchemaNode::Def(d)
                    }
                    Some(PropertyType::Map(v)) => SchemaNode::MapOf(v),
                    _ => SchemaNode::Unknown,
                };
                (node, meta)
            }
            SchemaNode::MapOf(Some(d)) => (SchemaNode::Def(d), PatchMeta::default()),
            _ => (SchemaNode::Unknown, PatchMeta::default()),
        }
    }

    /// True for a definition with declared properties (a struct, as opposed to a map).
    pub fn is_struct(self) -> bool {
        matches!(self, SchemaNode::Def(_))
    }

    /// True when the node is owned and replaced as a whole (`+structType=atomic`).
    pub fn is_atomic(self) -> bool {
        matches!(self, SchemaNode::Def(d) if definition_map_type(d) == Some("atomic"))
    }
}

macro_rules! root_types {
    ($gen:ident; $($ty:ty),* $(,)?) => {
        $( $gen.subschema_for::<$ty>(); )*
    };
}

static DEFINITIONS: Lazy<Map<String, Value>> = Lazy::new(|| {
    let mut generator = schemars::generate::SchemaSettings::draft07().into_generator();
    root_types!(generator;
        api::core::v1::Namespace, api::core::v1::Pod, api::core::v1::Node, api::core::v1::Service,
        api::core::v1::Endpoints, api::core::v1::ConfigMap, api::core::v1::Secret,
        api::core::v1::ServiceAccount, api::core::v1::Event, api::core::v1::PersistentVolume,
        api::core::v1::PersistentVolumeClaim, api::core::v1::ResourceQuota, api::core::v1::LimitRange,
        api::core::v1::Binding, api::core::v1::PodTemplate, api::core::v1::ReplicationController,
        api::apps::v1::Deployment, api::apps::v1::ReplicaSet, api::apps::v1::StatefulSet,
        api::apps::v1::DaemonSet, api::apps::v1::ControllerRevision, api::batch::v1::Job,
        api::batch::v1::CronJob, api::coordination::v1::Lease, api::discovery::v1::EndpointSlice,
        api::events::v1::Event, api::networking::v1::Ingress, api::networking::v1::IngressClass,
        api::networking::v1::NetworkPolicy, api::rbac::v1::Role, api::rbac::v1::RoleBinding,
        api::rbac::v1::ClusterRole, api::rbac::v1::ClusterRoleBinding, api::storage::v1::StorageClass,
        api::policy::v1::PodDisruptionBudget, api::autoscaling::v2::HorizontalPodAutoscaler,
        api::autoscaling::v1::Scale, api::scheduling::v1::PriorityClass, api::node::v1::RuntimeClass,
        api::authentication::v1::TokenReview, api::authentication::v1::SelfSubjectReview,
        api::authorization::v1::LocalSubjectAccessReview, api::authorization::v1::SelfSubjectAccessReview,
        api::authorization::v1::SelfSubjectRulesReview, api::authorization::v1::SubjectAccessReview,
        k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Status,
        k8s_openapi::apimachinery::pkg::apis::meta::v1::DeleteOptions,
        k8s_openapi::apimachinery::pkg::apis::meta::v1::WatchEvent<api::core::v1::Pod>,
    );
    // Keep `$ref` siblings (descriptions) as they are: the navigator reads `$ref` directly.
    generator.take_definitions(false)
});

/// Every definition reachable from the served kinds, keyed by OpenAPI name
/// (`io.k8s.api.apps.v1.Deployment`); `$ref`s point at `#/definitions/<name>`.
pub fn definitions() -> &'static Map<String, Value> {
    &DEFINITIONS
}

/// The schema of one definition.
pub fn definition(name: &str) -> Option<&'static Value> {
    DEFINITIONS.get(name)
}

/// The OpenAPI definition name of a kind's root object, e.g. `io.k8s.api.apps.v1.Deployment`.
pub fn root_definition(info: &ResourceInfo) -> &'static str {
    let short = match info.group {
        "" => "core",
        g => g.split('.').next().unwrap_or(g),
    };
    let name = if info.group == "apiextensions.k8s.io" {
        format!(
            "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.{}.{}",
            info.version, info.kind
        )
    } else {
        format!("io.k8s.api.{short}.{}.{}", info.version, info.kind)
    };
    match DEFINITIONS.get_key_value(&name) {
        Some((key, _)) => key.as_str(),
        None => "",
    }
}

/// The type of `property` of `definition`, or None if the definition has no such property.
pub fn property_type(definition: &str, property: &str) -> Option<PropertyType> {
    let prop = DEFINITIONS
        .get(definition)?
        .get("properties")?
        .get(property)?;
    Some(classify(prop))
}

/// The type of a schema node (a property, an array item or a map value).
fn classify(schema: &'static Value) -> PropertyType {
    if let Some(name) = ref_target(schema) {
        return match DEFINITIONS.get_key_value(name) {
            Some((key, def)) if def.get("properties").is_some() => {
                PropertyType::Object(key.as_str())
            }
            Some((_, def)) if def.get("x-kubernetes-int-or-string").is_some() => {
                PropertyType::Scalar
            }
            Some((_, def)) => match def.get("type").and_then(Value::as_str) {
                None | Some("object") => PropertyType::Untyped,
                Some(_) => PropertyType::Scalar,
            },
            None => PropertyType::Untyped,
        };
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("array") => PropertyType::Array(schema.get("items").and_then(object_ref)),
        Some("object") => match schema.get("additionalProperties") {
            Some(v) if v.is_object() => PropertyType::Map(object_ref(v)),
            _ => PropertyType::Untyped,
        },
        Some(_) => PropertyType::Scalar,
        None => PropertyType::Untyped,
    }
}

/// The definition an item/value schema refers to, when it is an object definition.
fn object_ref(schema: &'static Value) -> Option<&'static str> {
    match classify(schema) {
        PropertyType::Object(name) => Some(name),
        _ => None,
    }
}

/// `#/definitions/<name>` (or `#/$defs/<name>`, or wrapped in `allOf`) → `<name>`.
fn ref_target(schema: &Value) -> Option<&str> {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        return r.rsplit('/').next();
    }
    let all = schema.get("allOf")?.as_array()?;
    all.iter()
        .find_map(|s| s.get("$ref")?.as_str()?.rsplit('/').next())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{RESOURCES, find_kind};

    #[test]
    fn upstream_patch_tags() {
        // (definition, field, patch strategy, merge key, list type, list map keys)
        type Case<'a> = (
            &'a str,
            &'a str,
            Option<&'a str>,
            Option<&'a str>,
            Option<&'a str>,
            &'a [&'a str],
        );
        let cases: &[Case] = &[
            (
                "io.k8s.api.core.v1.PodSpec",
                "containers",
                Some("merge"),
                Some("name"),
                Some("map"),
                &["name"],
            ),
            (
                "io.k8s.api.core.v1.PodSpec",
                "volumes",
                Some("merge,retainKeys"),
                Some("name"),
                Some("map"),
                &["name"],
            ),
            (
                "io.k8s.api.core.v1.PodSpec",
                "tolerations",
                None,
                None,
                Some("atomic"),
                &[],
            ),
            (
                "io.k8s.api.core.v1.PodSpec",
                "hostAliases",
                Some("merge"),
                Some("ip"),
                Some("map"),
                &["ip"],
            ),
            (
                "io.k8s.api.core.v1.Container",
                "env",
                Some("merge"),
                Some("name"),
                Some("map"),
                &["name"],
            ),
            (
                "io.k8s.api.core.v1.Container",
                "ports",
                Some("merge"),
                Some("containerPort"),
                Some("map"),
                &["containerPort", "protocol"],
            ),
            (
                "io.k8s.api.core.v1.Container",
                "resizePolicy",
                None,
                None,
                Some("atomic"),
                &[],
            ),
            (
                "io.k8s.api.core.v1.ServiceSpec",
                "ports",
                Some("merge"),
                Some("port"),
                Some("map"),
                &["port", "protocol"],
            ),
            (
                "io.k8s.api.core.v1.NodeSpec",
                "taints",
                None,
                None,
                Some("atomic"),
                &[],
            ),
            (
                "io.k8s.api.core.v1.NodeStatus",
                "addresses",
                Some("merge"),
                Some("type"),
                Some("map"),
                &["type"],
            ),
            (
                "io.k8s.api.apps.v1.DeploymentStatus",
                "conditions",
                Some("merge"),
                Some("type"),
                Some("map"),
                &["type"],
            ),
            (
                "io.k8s.api.apps.v1.DeploymentSpec",
                "strategy",
                Some("retainKeys"),
                None,
                None,
                &[],
            ),
            (
                "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
                "finalizers",
                Some("merge"),
                None,
                Some("set"),
                &[],
            ),
            (
                "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
                "ownerReferences",
                Some("merge"),
                Some("uid"),
                Some("map"),
                &["uid"],
            ),
            (
                "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
                "managedFields",
                None,
                None,
                Some("atomic"),
                &[],
            ),
            (
                "io.k8s.api.rbac.v1.Role",
                "rules",
                None,
                None,
                Some("atomic"),
                &[],
            ),
            (
                "io.k8s.api.core.v1.EndpointSubset",
                "addresses",
                None,
                None,
                Some("atomic"),
                &[],
            ),
        ];
        for &(def, prop, strategy, key, list_type, keys) in cases {
            let m = patch_meta(def, prop).unwrap_or_else(|| panic!("{def}.{prop} untagged"));
            assert_eq!(
                (
                    m.patch_strategy,
                    m.patch_merge_key,
                    m.list_type,
                    m.list_map_keys
                ),
                (strategy, key, list_type, keys),
                "{def}.{prop}"
            );
        }
        assert_eq!(patch_meta("io.k8s.api.core.v1.PodSpec", "nodeName"), None);
    }

    #[test]
    fn every_served_kind_has_a_root_definition() {
        for info in RESOURCES {
            let root = root_definition(info);
            assert!(!root.is_empty(), "{}", info.kind);
            assert!(property_type(root, "metadata").is_some(), "{root}");
        }
        let d = find_kind("apps/v1", "Deployment").unwrap();
        assert_eq!(root_definition(d), "io.k8s.api.apps.v1.Deployment");
    }

    #[test]
    fn navigates_property_types() {
        let cases: &[(&str, &str, PropertyType)] = &[
            (
                "io.k8s.api.apps.v1.Deployment",
                "spec",
                PropertyType::Object("io.k8s.api.apps.v1.DeploymentSpec"),
            ),
            (
                "io.k8s.api.core.v1.PodSpec",
                "containers",
                PropertyType::Array(Some("io.k8s.api.core.v1.Container")),
            ),
            (
                "io.k8s.api.core.v1.Container",
                "args",
                PropertyType::Array(None),
            ),
            (
                "io.k8s.api.core.v1.ConfigMap",
                "data",
                PropertyType::Map(None),
            ),
            (
                "io.k8s.api.core.v1.ResourceRequirements",
                "limits",
                PropertyType::Map(None),
            ),
            (
                "io.k8s.api.core.v1.Container",
                "image",
                PropertyType::Scalar,
            ),
            (
                "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
                "creationTimestamp",
                PropertyType::Scalar,
            ),
            (
                "io.k8s.api.apps.v1.ControllerRevision",
                "data",
                PropertyType::Untyped,
            ),
        ];
        for &(def, prop, want) in cases {
            assert_eq!(property_type(def, prop), Some(want), "{def}.{prop}");
        }
        assert_eq!(property_type("io.k8s.api.core.v1.PodSpec", "nope"), None);
    }
}
