//! Upstream's bootstrap RBAC policy: the default ClusterRoles and ClusterRoleBindings, created
//! at API server start when missing and, while annotated for auto-update, given back any rule or
//! subject they lost.

use super::eval;
use crate::handlers;
use crate::server::ApiServer;
use capstan_api::ApiError;
use capstan_api::resources::find;
use serde_json::{Value, json};
use std::time::Duration;

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];
const RW: &[&str] = &[
    "get",
    "list",
    "watch",
    "create",
    "delete",
    "deletecollection",
    "patch",
    "update",
];
/// Label and annotation upstream puts on its defaults.
pub const BOOTSTRAP_LABEL: (&str, &str) = ("kubernetes.io/bootstrapping", "rbac-defaults");
pub const AUTOUPDATE: &str = "rbac.authorization.kubernetes.io/autoupdate";
const AGG: &str = "rbac.authorization.k8s.io/aggregate-to-";

fn r(verbs: &[&str], groups: &[&str], resources: &[&str]) -> Value {
    json!({"verbs": verbs, "apiGroups": groups, "resources": resources})
}

fn named(verbs: &[&str], groups: &[&str], resources: &[&str], names: &[&str]) -> Value {
    json!({"verbs": verbs, "apiGroups": groups, "resources": resources, "resourceNames": names})
}

fn urls(verbs: &[&str], urls: &[&str]) -> Value {
    json!({"verbs": verbs, "nonResourceURLs": urls})
}

fn events() -> Value {
    r(
        &["create", "update", "patch"],
        &["", "events.k8s.io"],
        &["events"],
    )
}

fn metadata(name: &str, extra_labels: &[(&str, &str)]) -> Value {
    let mut labels = serde_json::Map::new();
    labels.insert(BOOTSTRAP_LABEL.0.into(), json!(BOOTSTRAP_LABEL.1));
    for (k, v) in extra_labels {
        labels.insert((*k).into(), json!(v));
    }
    json!({"name": name, "labels": labels, "annotations": {AUTOUPDATE: "true"}})
}

fn cluster_role(name: &str, labels: &[(&str, &str)], rules: Vec<Value>) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": metadata(name, labels), "rules": rules,
    })
}

fn aggregated(name: &str, labels: &[(&str, &str)], to: &str) -> Value {
    let mut role = cluster_role(name, labels, vec![]);
    role["aggregationRule"] = json!({"clusterRoleSelectors": [
        {"matchLabels": {format!("{AGG}{to}"): "true"}}
    ]});
    role
}

/// The default ClusterRoles.
pub fn cluster_roles() -> Vec<Value> {
    let to = |role: &str| format!("{AGG}{role}");
    let (to_admin, to_edit, to_view) = (to("admin"), to("edit"), to("view"));
    let health = ["/livez", "/readyz", "/healthz", "/version", "/version/"];
    let mut discovery: Vec<&str> = health.to_vec();
    discovery.extend([
        "/openapi",
        "/openapi/*",
        "/api",
        "/api/*",
        "/apis",
        "/apis/*",
    ]);
    vec![
        cluster_role(
            "cluster-admin",
            &[],
            vec![r(&["*"], &["*"], &["*"]), urls(&["*"], &["*"])],
        ),
        cluster_role("system:discovery", &[], vec![urls(&["get"], &discovery)]),
        cluster_role(
            "system:public-info-viewer",
            &[],
            vec![urls(&["get"], &health)],
        ),
        cluster_role(
            "system:basic-user",
            &[],
            vec![
                r(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                ),
                r(
                    &["create"],
                    &["authentication.k8s.io"],
                    &["selfsubjectreviews"],
                ),
            ],
        ),
        aggregated("admin", &[], "admin"),
        aggregated("edit", &[(&to_admin, "true")], "edit"),
        aggregated("view", &[(&to_admin, "true"), (&to_edit, "true")], "view"),
        cluster_role(
            "system:aggregate-to-admin",
            &[(&to_admin, "true")],
            vec![
                r(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["localsubjectaccessreviews"],
                ),
                r(
                    RW,
                    &["rbac.authorization.k8s.io"],
                    &["rolebindings", "roles"],
                ),
            ],
        ),
        cluster_role(
            "system:aggregate-to-edit",
            &[(&to_edit, "true")],
            edit_rules(),
        ),
        cluster_role(
            "system:aggregate-to-view",
            &[(&to_view, "true")],
            view_rules(),
        ),
        cluster_role(
            "system:auth-delegator",
            &[],
            vec![
                r(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
                r(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["subjectaccessreviews"],
                ),
            ],
        ),
        cluster_role("system:node", &[], node_rules()),
        cluster_role(
            "system:node-proxier",
            &[],
            vec![
                r(READ, &[""], &["services", "endpoints"]),
                r(READ, &[""], &["nodes"]),
                r(READ, &["discovery.k8s.io"], &["endpointslices"]),
                events(),
            ],
        ),
        cluster_role(
            "system:kube-dns",
            &[],
            vec![
                r(&["list", "watch"], &[""], &["endpoints", "services"]),
                r(
                    &["list", "watch"],
                    &["discovery.k8s.io"],
                    &["endpointslices"],
                ),
            ],
        ),
        cluster_role("system:kube-scheduler", &[], scheduler_rules()),
        cluster_role(
            "system:kube-controller-manager",
            &[],
            controller_manager_rules(),
        ),
        cluster_role(
            "system:service-account-issuer-discovery",
            &[],
            vec![urls(
                &["get"],
                &[
                    "/.well-known/openid-configuration",
                    "/.well-known/openid-configuration/",
                    "/openid/v1/jwks",
                    "/openid/v1/jwks/",
                ],
            )],
        ),
    ]
}

fn edit_rules() -> Vec<Value> {
    vec![
        r(&["impersonate"], &[""], &["serviceaccounts"]),
        r(
            WRITE,
            &[""],
            &[
                "pods",
                "pods/attach",
                "pods/proxy",
                "pods/exec",
                "pods/portforward",
            ],
        ),
        r(&["create"], &[""], &["pods/eviction"]),
        r(
            WRITE,
            &[""],
            &[
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "serviceaccounts",
                "services",
                "services/proxy",
                "persistentvolumeclaims",
                "configmaps",
                "secrets",
                "events",
            ],
        ),
        r(&["create"], &[""], &["serviceaccounts/token"]),
        r(
            WRITE,
            &["apps"],
            &[
                "statefulsets",
                "statefulsets/scale",
                "daemonsets",
                "deployments",
                "deployments/scale",
                "deployments/rollback",
                "replicasets",
                "replicasets/scale",
            ],
        ),
        r(WRITE, &["autoscaling"], &["horizontalpodautoscalers"]),
        r(WRITE, &["batch"], &["jobs", "cronjobs"]),
        r(WRITE, &["policy"], &["poddisruptionbudgets"]),
        r(
            WRITE,
            &["networking.k8s.io"],
            &["networkpolicies", "ingresses"],
        ),
        // Reading the escalating kinds view leaves out.
        r(
            READ,
            &[""],
            &[
                "pods/attach",
                "pods/proxy",
                "pods/exec",
                "pods/portforward",
                "secrets",
                "services/proxy",
            ],
        ),
    ]
}

fn view_rules() -> Vec<Value> {
    vec![
        r(
            READ,
            &[""],
            &[
                "pods",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "serviceaccounts",
                "services",
                "services/status",
                "endpoints",
                "persistentvolumeclaims",
                "persistentvolumeclaims/status",
                "configmaps",
            ],
        ),
        r(
            READ,
            &[""],
            &[
                "limitranges",
                "resourcequotas",
                "bindings",
                "events",
                "pods/status",
                "resourcequotas/status",
                "namespaces/status",
                "replicationcontrollers/status",
                "pods/log",
            ],
        ),
        r(READ, &[""], &["namespaces"]),
        r(READ, &["discovery.k8s.io"], &["endpointslices"]),
        r(
            READ,
            &["apps"],
            &[
                "controllerrevisions",
                "statefulsets",
                "statefulsets/status",
                "statefulsets/scale",
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/status",
                "deployments/scale",
                "replicasets",
                "replicasets/status",
                "replicasets/scale",
            ],
        ),
        r(
            READ,
            &["autoscaling"],
            &[
                "horizontalpodautoscalers",
                "horizontalpodautoscalers/status",
            ],
        ),
        r(
            READ,
            &["batch"],
            &["jobs", "jobs/status", "cronjobs", "cronjobs/status"],
        ),
        r(
            READ,
            &["policy"],
            &["poddisruptionbudgets", "poddisruptionbudgets/status"],
        ),
        r(
            READ,
            &["networking.k8s.io"],
            &["networkpolicies", "ingresses", "ingresses/status"],
        ),
    ]
}

fn node_rules() -> Vec<Value> {
    vec![
        r(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
        r(
            &["create"],
            &["authorization.k8s.io"],
            &["subjectaccessreviews", "localsubjectaccessreviews"],
        ),
        r(READ, &[""], &["services"]),
        r(&["create", "get", "list", "watch"], &[""], &["nodes"]),
        r(&["update", "patch"], &[""], &["nodes/status"]),
        r(&["update", "patch"], &[""], &["nodes"]),
        events(),
        r(READ, &[""], &["pods"]),
        r(&["create", "delete"], &[""], &["pods"]),
        r(&["update", "patch"], &[""], &["pods/status"]),
        r(&["create"], &[""], &["pods/eviction"]),
        r(READ, &[""], &["secrets", "configmaps"]),
        r(
            &["get"],
            &[""],
            &["persistentvolumeclaims", "persistentvolumes"],
        ),
        r(&["get"], &[""], &["endpoints"]),
        r(
            &["create", "get", "list", "watch"],
            &["certificates.k8s.io"],
            &["certificatesigningrequests"],
        ),
        r(
            &["get", "create", "update", "patch", "delete"],
            &["coordination.k8s.io"],
            &["leases"],
        ),
        r(&["get"], &["storage.k8s.io"], &["volumeattachments"]),
        r(
            &["get", "update", "patch"],
            &[""],
            &["persistentvolumeclaims/status"],
        ),
        r(&["create"], &[""], &["serviceaccounts/token"]),
        r(READ, &["storage.k8s.io"], &["csidrivers"]),
        r(
            &["get", "create", "update", "patch", "delete"],
            &["storage.k8s.io"],
            &["csinodes"],
        ),
        r(READ, &["node.k8s.io"], &["runtimeclasses"]),
    ]
}

fn scheduler_rules() -> Vec<Value> {
    vec![
        events(),
        r(&["create"], &["coordination.k8s.io"], &["leases"]),
        named(
            &["get", "update"],
            &["coordination.k8s.io"],
            &["leases"],
            &["kube-scheduler"],
        ),
        r(READ, &[""], &["nodes"]),
        r(READ, &[""], &["namespaces"]),
        r(&["get", "list", "watch", "delete"], &[""], &["pods"]),
        r(&["create"], &[""], &["pods/binding", "bindings"]),
        r(&["patch", "update"], &[""], &["pods/status"]),
        r(READ, &[""], &["replicationcontrollers", "services"]),
        r(READ, &["apps"], &["replicasets", "statefulsets"]),
        r(READ, &["policy"], &["poddisruptionbudgets"]),
        r(
            READ,
            &[""],
            &["persistentvolumeclaims", "persistentvolumes"],
        ),
        r(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
        r(
            &["create"],
            &["authorization.k8s.io"],
            &["subjectaccessreviews"],
        ),
        r(
            READ,
            &["storage.k8s.io"],
            &[
                "csinodes",
                "csidrivers",
                "csistoragecapacities",
                "storageclasses",
            ],
        ),
        r(READ, &["scheduling.k8s.io"], &["priorityclasses"]),
    ]
}

fn controller_manager_rules() -> Vec<Value> {
    vec![
        events(),
        r(&["create"], &["coordination.k8s.io"], &["leases"]),
        named(
            &["get", "update"],
            &["coordination.k8s.io"],
            &["leases"],
            &["kube-controller-manager"],
        ),
        r(&["create"], &[""], &["secrets", "serviceaccounts"]),
        r(&["delete"], &[""], &["secrets"]),
        r(
            &["get"],
            &[""],
            &["namespaces", "secrets", "serviceaccounts"],
        ),
        r(&["update"], &[""], &["secrets", "serviceaccounts"]),
        r(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
        r(
            &["create"],
            &["authorization.k8s.io"],
            &["subjectaccessreviews"],
        ),
        r(&["list", "watch"], &["*"], &["*"]),
        r(&["create"], &[""], &["serviceaccounts/token"]),
    ]
}

fn binding(role: &str, subjects: Vec<Value>) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": metadata(role, &[]),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": subjects,
    })
}

fn group(name: &str) -> Value {
    json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": name})
}

fn user(name: &str) -> Value {
    json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": name})
}

/// The default ClusterRoleBindings (each named after its ClusterRole, as upstream).
pub fn cluster_role_bindings() -> Vec<Value> {
    vec![
        binding("cluster-admin", vec![group("system:masters")]),
        binding("system:discovery", vec![group("system:authenticated")]),
        binding("system:basic-user", vec![group("system:authenticated")]),
        binding(
            "system:public-info-viewer",
            vec![
                group("system:authenticated"),
                group("system:unauthenticated"),
            ],
        ),
        binding("system:kube-scheduler", vec![user("system:kube-scheduler")]),
        binding(
            "system:kube-controller-manager",
            vec![user("system:kube-controller-manager")],
        ),
        binding("system:node-proxier", vec![user("system:kube-proxy")]),
        binding(
            "system:kube-dns",
            vec![json!({"kind": "ServiceAccount", "name": "kube-dns", "namespace": "kube-system"})],
        ),
        binding(
            "system:service-account-issuer-discovery",
            vec![group("system:serviceaccounts")],
        ),
    ]
}

/// What an auto-updated existing object lacks: the rules or subjects to add, if any.
fn reconciled(existing: &Value, desired: &Value) -> Option<Value> {
    if existing["metadata"]["annotations"][AUTOUPDATE].as_str() != Some("true") {
        return None;
    }
    let mut out = existing.clone();
    let mut changed = false;
    if desired["kind"] == "ClusterRole" {
        if desired.get("aggregationRule").is_some() {
            if existing.get("aggregationRule") != desired.get("aggregationRule") {
                out["aggregationRule"] = desired["aggregationRule"].clone();
                changed = true;
            }
        } else {
            let have = eval::rules_of(existing);
            let want = eval::rules_of(desired);
            let mut rules = have.clone();
            for w in want {
                if !eval::uncovered(&have, std::slice::from_ref(&w)).is_empty() {
                    rules.push(w);
                    changed = true;
                }
            }
            out["rules"] = serde_json::to_value(&rules).unwrap_or(Value::Null);
        }
    } else {
        let mut subjects = existing["subjects"].as_array().cloned().unwrap_or_default();
        for s in desired["subjects"].as_array().into_iter().flatten() {
            let same = |e: &Value| e["kind"] == s["kind"] && e["name"] == s["name"];
            if !subjects.iter().any(same) {
                subjects.push(s.clone());
                changed = true;
            }
        }
        out["subjects"] = Value::Array(subjects);
    }
    changed.then_some(out)
}

/// Creates the bootstrap roles and bindings that are missing and restores what auto-updated
/// ones lost, then waits until the watch cache (which the authorizer reads) has them.
pub async fn ensure(server: &ApiServer) -> Result<(), ApiError> {
    let internal = |e: capstan_store::StoreError| ApiError::internal(e.to_string());
    let kinds = [
        ("clusterroles", cluster_roles()),
        ("clusterrolebindings", cluster_role_bindings()),
    ];
    for (plural, objects) in kinds {
        let info = find(super::GROUP, "v1", plural)
            .ok_or_else(|| ApiError::internal(format!("{plural} are not served")))?;
        for desired in objects {
            let name = desired["metadata"]["name"].as_str().unwrap_or_default();
            let key = info.store_key(None, name);
            let Some(kv) = server.store.get(&key).await.map_err(internal)? else {
                match handlers::create_internal(server, info, desired.clone()).await {
                    Ok(_) => {}
                    Err(e) if e.reason == "AlreadyExists" => {}
                    Err(e) => return Err(e),
                }
                continue;
            };
            let Ok(existing) = serde_json::from_slice::<Value>(&kv.value) else {
                continue;
            };
            if let Some(updated) = reconciled(&existing, &desired) {
                tracing::info!(kind = info.kind, name, "restoring bootstrap RBAC policy");
                let bytes =
                    serde_json::to_vec(&updated).map_err(|e| ApiError::internal(e.to_string()))?;
                match server.store.update(&key, bytes, kv.mod_revision).await {
                    Ok(_) | Err(capstan_store::StoreError::Conflict { .. }) => {}
                    Err(e) => return Err(internal(e)),
                }
            }
        }
    }
    let rev = server.store.current_revision().await.map_err(internal)?;
    server
        .cache
        .wait_for(rev, Duration::from_secs(10))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::rbac::PolicyRule;

    fn typed(rules: &[Value]) -> Vec<PolicyRule> {
        rules
            .iter()
            .filter_map(|r| serde_json::from_value(r.clone()).ok())
            .collect()
    }

    #[test]
    fn every_binding_names_a_bootstrap_role() {
        let roles = cluster_roles();
        for b in cluster_role_bindings() {
            let name = &b["roleRef"]["name"];
            assert!(
                roles.iter().any(|r| &r["metadata"]["name"] == name),
                "{name}"
            );
        }
        for r in &roles {
            assert_eq!(
                r["metadata"]["labels"][BOOTSTRAP_LABEL.0],
                BOOTSTRAP_LABEL.1
            );
            assert_eq!(
                typed(r["rules"].as_array().unwrap()).len(),
                r["rules"].as_array().unwrap().len()
            );
        }
    }

    #[test]
    fn reconcile_adds_only_missing() {
        let desired = &cluster_roles()[1];
        assert!(reconciled(desired, desired).is_none());
        let mut lost = desired.clone();
        lost["rules"] = json!([]);
        let fixed = reconciled(&lost, desired).expect("rules restored");
        assert_eq!(fixed["rules"], desired["rules"]);
        lost["metadata"]["annotations"][AUTOUPDATE] = json!("false");
        assert!(reconciled(&lost, desired).is_none());
        let b = &cluster_role_bindings()[3];
        let mut fewer = b.clone();
        fewer["subjects"] = json!([group("system:authenticated")]);
        assert_eq!(reconciled(&fewer, b).unwrap()["subjects"], b["subjects"]);
    }
}
