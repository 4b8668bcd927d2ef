use std::collections::BTreeSet;

use capstan_api::resources::RESOURCES;
use serde_json::Value;

use super::definitions::{V3_REF_PREFIX, definition_name, list_definition_name};
use super::*;

const METHODS: &[&str] = &["get", "put", "post", "patch", "delete"];

fn gvk_matches(value: &Value, group: &str, version: &str, kind: &str) -> bool {
    value["group"] == group && value["version"] == version && value["kind"] == kind
}

fn v3_doc(group: &str, version: &str) -> &'static Value {
    openapi_v3_group_version(&group_version_path(group, version)).expect("group-version document")
}

/// Resolves a `$ref` (or a single-element `allOf` around one) against the document's schemas.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    let target = schema.get("allOf").and_then(|a| a.get(0)).unwrap_or(schema);
    match target.get("$ref").and_then(Value::as_str) {
        Some(r) => &doc["components"]["schemas"][r.trim_start_matches(V3_REF_PREFIX)],
        None => schema,
    }
}

#[test]
fn every_served_kind_has_a_gvk_tagged_definition_in_v2_and_its_v3_document() {
    for info in RESOURCES {
        let gvk_list = |doc: &Value, name: &str| -> bool {
            doc[name]["x-kubernetes-group-version-kind"]
                .as_array()
                .is_some_and(|l| {
                    l.iter()
                        .any(|g| gvk_matches(g, info.group, info.version, info.kind))
                })
        };
        let name = definition_name(info);
        assert!(gvk_list(&openapi_v2()["definitions"], &name), "v2 {name}");
        let v3 = v3_doc(info.group, info.version);
        assert!(gvk_list(&v3["components"]["schemas"], &name), "v3 {name}");
        let list = list_definition_name(info);
        assert!(
            info.is_review()
                || v3["components"]["schemas"][&list]["properties"]["items"].is_object(),
            "{list}"
        );
        let description = v3["components"]["schemas"][&name]["description"].as_str();
        assert!(
            description.is_some_and(|d| !d.is_empty()),
            "{name} has upstream docs"
        );
    }
}

#[test]
fn definitions_use_upstream_names_and_descriptions() {
    let schemas = &v3_doc("apps", "v1")["components"]["schemas"];
    let strategy = &schemas["io.k8s.api.apps.v1.DeploymentStrategy"];
    assert_eq!(
        strategy["description"],
        "DeploymentStrategy describes how to replace existing pods with new ones."
    );
    // A reference with a description becomes allOf + description in OpenAPI 3, as upstream.
    let field = &schemas["io.k8s.api.apps.v1.DeploymentSpec"]["properties"]["strategy"];
    assert_eq!(
        field["allOf"][0]["$ref"],
        "#/components/schemas/io.k8s.api.apps.v1.DeploymentStrategy"
    );
    assert!(
        field["description"]
            .as_str()
            .is_some_and(|d| d.contains("deployment strategy"))
    );
    let v2_field =
        &openapi_v2()["definitions"]["io.k8s.api.apps.v1.DeploymentSpec"]["properties"]["strategy"];
    assert_eq!(
        v2_field["$ref"],
        "#/definitions/io.k8s.api.apps.v1.DeploymentStrategy"
    );
}

/// kubectl's QueryParamVerifierV3: the first PATCH operation tagged with the kind's GVK must
/// list `fieldValidation` among its own query parameters, in every operation (map order is
/// random in Go, so every match must qualify).
#[test]
fn every_patch_operation_supports_field_validation_and_strategic_merge() {
    for info in RESOURCES {
        let doc = v3_doc(info.group, info.version);
        let mut found = 0;
        for item in doc["paths"]
            .as_object()
            .into_iter()
            .flat_map(|p| p.values())
        {
            let op = &item["patch"];
            if !gvk_matches(
                &op["x-kubernetes-group-version-kind"],
                info.group,
                info.version,
                info.kind,
            ) {
                continue;
            }
            found += 1;
            let params = op["parameters"].as_array().expect("patch parameters");
            assert!(
                params
                    .iter()
                    .any(|p| p["name"] == "fieldValidation" && p["in"] == "query")
            );
            assert!(
                op["requestBody"]["content"]["application/strategic-merge-patch+json"].is_object()
            );
        }
        assert!(
            found >= 1 || info.is_review(),
            "no PATCH operation for {}",
            info.kind
        );
    }
}

fn all_refs(value: &Value, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get("$ref") {
                out.insert(r.clone());
            }
            map.values().for_each(|v| all_refs(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| all_refs(v, out)),
        _ => {}
    }
}

#[test]
fn every_reference_resolves() {
    let v2 = openapi_v2();
    let mut refs = BTreeSet::new();
    all_refs(v2, &mut refs);
    for r in &refs {
        let name = r
            .strip_prefix("#/definitions/")
            .unwrap_or_else(|| panic!("v2 ref {r}"));
        assert!(v2["definitions"][name].is_object(), "v2 {r}");
    }
    for path in openapi_v3_index()["paths"]
        .as_object()
        .expect("index")
        .keys()
    {
        let doc = openapi_v3_group_version(path).expect("document");
        let mut refs = BTreeSet::new();
        all_refs(doc, &mut refs);
        for r in &refs {
            let name = r
                .strip_prefix(V3_REF_PREFIX)
                .unwrap_or_else(|| panic!("v3 {path} ref {r}"));
            assert!(
                doc["components"]["schemas"][name].is_object(),
                "v3 {path} {r}"
            );
        }
    }
}

#[test]
fn index_lists_every_group_version_with_its_hash() {
    let index = openapi_v3_index();
    for (group, version) in capstan_api::resources::group_versions() {
        let path = group_version_path(group, version);
        let hash = openapi_v3_hash(&path).expect("hash");
        assert_eq!(
            index["paths"][&path]["serverRelativeURL"],
            format!("/openapi/v3/{path}?hash={hash}")
        );
        let json = openapi_v3_group_version_json(&path).expect("json");
        assert_eq!(content_hash(json), hash);
    }
    assert!(index["paths"]["api/v1"].is_object());
    assert!(index["paths"]["apis/apps/v1"].is_object());
    assert!(openapi_v3_group_version("/apis/apps/v1").is_some());
    assert!(openapi_v3_group_version("apis/apps/v2").is_none());
}

#[test]
fn content_hash_is_fnv1a_128() {
    // FNV-1a with no input is the offset basis.
    assert_eq!(content_hash(b""), "6C62272E07BB014262B821756295C58D");
    assert_ne!(content_hash(b"a"), content_hash(b"b"));
}

/// What `kubectl explain deployment.spec.strategy` does: find the GVK on the resource's
/// path, the schema carrying that GVK, then walk the field path.
#[test]
fn explain_walk_finds_deployment_spec_strategy() {
    let doc = v3_doc("apps", "v1");
    let op = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments"]["get"];
    let gvk = &op["x-kubernetes-group-version-kind"];
    assert!(gvk_matches(gvk, "apps", "v1", "Deployment"));
    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    let root = schemas
        .values()
        .find(|s| {
            s["x-kubernetes-group-version-kind"]
                .as_array()
                .is_some_and(|l| l.contains(gvk))
        })
        .expect("schema with the GVK");
    let spec = resolve(doc, &root["properties"]["spec"]);
    let strategy = resolve(doc, &spec["properties"]["strategy"]);
    assert_eq!(strategy["properties"]["type"]["type"], "string");
    let rolling = resolve(doc, &strategy["properties"]["rollingUpdate"]);
    let max_surge = resolve(doc, &rolling["properties"]["maxSurge"]);
    assert_eq!(max_surge["x-kubernetes-int-or-string"], true);
}

#[test]
fn operations_follow_upstream_ids_actions_and_verbs() {
    let core = v3_doc("", "v1");
    let cases = [
        (
            "/api/v1/namespaces/{namespace}/pods",
            "get",
            "listCoreV1NamespacedPod",
            "list",
        ),
        (
            "/api/v1/namespaces/{namespace}/pods",
            "delete",
            "deleteCoreV1CollectionNamespacedPod",
            "deletecollection",
        ),
        (
            "/api/v1/namespaces/{namespace}/pods/{name}",
            "patch",
            "patchCoreV1NamespacedPod",
            "patch",
        ),
        (
            "/api/v1/namespaces/{namespace}/pods/{name}/status",
            "get",
            "readCoreV1NamespacedPodStatus",
            "get",
        ),
        (
            "/api/v1/namespaces/{namespace}/pods/{name}/binding",
            "post",
            "createCoreV1NamespacedPodBinding",
            "post",
        ),
        (
            "/api/v1/pods",
            "get",
            "listCoreV1PodForAllNamespaces",
            "list",
        ),
        (
            "/api/v1/watch/namespaces/{namespace}/pods",
            "get",
            "watchCoreV1NamespacedPodList",
            "watchlist",
        ),
        ("/api/v1/nodes/{name}", "put", "replaceCoreV1Node", "put"),
        (
            "/api/v1/namespaces",
            "post",
            "createCoreV1Namespace",
            "post",
        ),
    ];
    for (path, method, id, action) in cases {
        let op = &core["paths"][path][method];
        assert_eq!(op["operationId"], id, "{method} {path}");
        assert_eq!(op["x-kubernetes-action"], action, "{method} {path}");
    }
    // Namespaces are not deletable as a collection upstream.
    assert!(core["paths"]["/api/v1/namespaces"]["delete"].is_null());
    let rbac = v3_doc("rbac.authorization.k8s.io", "v1");
    let op = &rbac["paths"]["/apis/rbac.authorization.k8s.io/v1/clusterroles/{name}"]["patch"];
    assert_eq!(op["operationId"], "patchRbacAuthorizationV1ClusterRole");
    assert_eq!(op["tags"][0], "rbacAuthorization_v1");
}

#[test]
fn scale_subresource_is_tagged_with_the_scale_kind() {
    let apps = v3_doc("apps", "v1");
    let op =
        &apps["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale"]["patch"];
    assert!(gvk_matches(
        &op["x-kubernetes-group-version-kind"],
        "autoscaling",
        "v1",
        "Scale"
    ));
    assert!(apps["components"]["schemas"]["io.k8s.api.autoscaling.v1.Scale"].is_object());
    let status =
        &apps["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}/status"]["put"];
    assert!(gvk_matches(
        &status["x-kubernetes-group-version-kind"],
        "apps",
        "v1",
        "Deployment"
    ));
}

#[test]
fn v2_has_operations_with_body_parameters_and_kinds() {
    let v2 = openapi_v2();
    assert_eq!(v2["swagger"], "2.0");
    let op = &v2["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments"]["post"];
    assert_eq!(op["operationId"], "createAppsV1NamespacedDeployment");
    let params = op["parameters"].as_array().expect("params");
    let body = params.iter().find(|p| p["in"] == "body").expect("body");
    assert_eq!(
        body["schema"]["$ref"],
        "#/definitions/io.k8s.api.apps.v1.Deployment"
    );
    assert!(
        params
            .iter()
            .any(|p| p["name"] == "fieldValidation" && p["type"] == "string")
    );
    for info in RESOURCES {
        let prefix = paths::group_version_prefix(info.group, info.version);
        let ns = if info.namespaced {
            "/namespaces/{namespace}"
        } else {
            ""
        };
        let item = &v2["paths"][format!("{prefix}{ns}/{}/{{name}}", info.plural)];
        for method in METHODS.iter().filter(|m| item[**m].is_object()) {
            let gvk = &item[*method]["x-kubernetes-group-version-kind"];
            assert!(
                gvk_matches(gvk, info.group, info.version, info.kind),
                "{}",
                info.kind
            );
        }
        assert!(
            item["get"].is_object() || info.is_review(),
            "{} item path",
            info.kind
        );
    }
}

#[test]
fn v3_documents_only_carry_their_group_versions_paths() {
    let apps = v3_doc("apps", "v1");
    assert_eq!(apps["openapi"], "3.0.0");
    let paths = apps["paths"].as_object().expect("paths");
    assert!(paths.keys().all(|p| p.starts_with("/apis/apps/v1/")));
    assert!(paths.contains_key("/apis/apps/v1/"));
    let text =
        String::from_utf8_lossy(openapi_v3_group_version_json("apis/apps/v1").expect("json"))
            .into_owned();
    assert!(!text.contains("#/definitions/"));
}

#[test]
fn patch_extensions_follow_the_patch_metadata_table() {
    for (name, schema) in openapi_v2()["definitions"]
        .as_object()
        .expect("definitions")
    {
        for (property, field) in schema["properties"].as_object().into_iter().flatten() {
            let meta = capstan_api::schema::patch_meta(name, property);
            let strategy = meta.as_ref().and_then(|m| m.patch_strategy);
            assert_eq!(
                field["x-kubernetes-patch-strategy"].as_str(),
                strategy,
                "{name}.{property}"
            );
            let key = meta.as_ref().and_then(|m| m.patch_merge_key);
            assert_eq!(
                field["x-kubernetes-patch-merge-key"].as_str(),
                key,
                "{name}.{property}"
            );
        }
    }
}
