//! The Node authorizer: what a kubelet (user `system:node:<name>`, group `system:nodes`) may
//! do, from the graph of pods bound to its node and the objects they use. The graph is not
//! kept separately: the watch cache's pods of one namespace, filtered by `spec.nodeName`, are
//! walked on demand (only for the few requests that need a relationship).

use super::{Attributes, Decision};
use crate::server::ApiServer;
use capstan_api::resources::RESOURCES;
use serde_json::Value;

/// The node a user is, if it is a kubelet identity.
pub fn node_of(user: &super::UserInfo) -> Option<&str> {
    let name = user.name.strip_prefix("system:node:")?;
    (!name.is_empty() && user.in_group(super::join::NODES)).then_some(name)
}

/// The Node authorizer's verdict; `NoOpinion` for users who are not nodes.
pub async fn authorize(server: &ApiServer, attrs: &Attributes) -> Decision {
    if let d @ (Decision::Allow | Decision::Deny(_)) = super::join::authorize(attrs) {
        return d;
    }
    let Some(node) = node_of(&attrs.user) else {
        return Decision::NoOpinion;
    };
    if attrs.resource_request
        && attrs.api_group.is_empty()
        && attrs.resource == "persistentvolumes"
        && attrs.subresource.is_empty()
        && attrs.verb == "get"
    {
        return if volumes_of(server, node).contains(&attrs.name) {
            Decision::Allow
        } else {
            Decision::Deny(format!(
                "no relationship found between node '{node}' and this object"
            ))
        };
    }
    decide(node, attrs, &|ns| pods_on(server, ns, node))
}

/// The persistent volumes bound to claims that pods on `node` use (any namespace).
fn volumes_of(server: &ApiServer, node: &str) -> Vec<String> {
    let Some(claims) = index_of("", "persistentvolumeclaims") else {
        return Vec::new();
    };
    let info = &RESOURCES[claims];
    let mut out = Vec::new();
    for pod in pods_on_all(server, node) {
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or_default();
        for claim in references(&pod, Ref::Claim) {
            let key = info.store_key(Some(ns), &claim);
            if let Some(obj) = server.cache.get(claims, &key)
                && let Ok(v) = serde_json::from_slice::<Value>(&obj.json)
                && let Some(pv) = v["spec"]["volumeName"].as_str()
            {
                out.push(pv.to_string());
            }
        }
    }
    out
}

fn pods_on_all(server: &ApiServer, node: &str) -> Vec<Value> {
    let Some(idx) = index_of("", "pods") else {
        return Vec::new();
    };
    let (items, _) = server.cache.list(idx, None, None);
    bound(&items, node)
}

/// Pods bound to `node` in namespace `ns`, from the watch cache.
fn pods_on(server: &ApiServer, ns: &str, node: &str) -> Vec<Value> {
    let Some(idx) = index_of("", "pods") else {
        return Vec::new();
    };
    let (items, _) = server.cache.list(idx, Some(ns), None);
    bound(&items, node)
}

fn bound(items: &[std::sync::Arc<crate::cache::CachedObject>], node: &str) -> Vec<Value> {
    items
        .iter()
        .filter(|o| match o.fields.get("spec.nodeName") {
            Some(n) => n == node,
            // Not indexed: decide from the object.
            None => true,
        })
        .filter_map(|o| serde_json::from_slice::<Value>(&o.json).ok())
        .filter(|p| p["spec"]["nodeName"] == node)
        .collect()
}

fn index_of(group: &str, plural: &str) -> Option<usize> {
    RESOURCES
        .iter()
        .position(|r| r.group == group && r.plural == plural)
}

const READ: &[&str] = &["get", "list", "watch"];

/// The decision for `node`, given the pods bound to it in a namespace (a function so unit
/// tests need no server).
pub fn decide(node: &str, a: &Attributes, pods: &dyn Fn(&str) -> Vec<Value>) -> Decision {
    if !a.resource_request {
        return Decision::NoOpinion;
    }
    let verb = a.verb.as_str();
    let sub = a.subresource.as_str();
    let no_relation = || {
        Decision::Deny(format!(
            "no relationship found between node '{node}' and this object"
        ))
    };
    match (a.api_group.as_str(), a.resource.as_str()) {
        ("", "secrets" | "configmaps" | "persistentvolumeclaims") if sub.is_empty() => {
            if verb != "get" {
                return Decision::Deny(format!(
                    "can only get individual resources of this type (node '{node}')"
                ));
            }
            let kind = match a.resource.as_str() {
                "secrets" => Ref::Secret,
                "configmaps" => Ref::ConfigMap,
                _ => Ref::Claim,
            };
            if pods(&a.namespace)
                .iter()
                .any(|p| references(p, kind).contains(&a.name))
            {
                Decision::Allow
            } else {
                no_relation()
            }
        }
        // Persistent volumes (bound to claims of the node's pods) are judged in `authorize`.
        ("", "persistentvolumes") if verb == "get" => no_relation(),
        ("", "serviceaccounts") if sub == "token" => {
            if verb == "create"
                && pods(&a.namespace)
                    .iter()
                    .any(|p| service_account(p) == a.name)
            {
                Decision::Allow
            } else {
                no_relation()
            }
        }
        // Status of its pods, and the final delete after they terminated.
        ("", "pods") if sub == "status" || (sub.is_empty() && verb == "delete") => {
            if !matches!(verb, "get" | "update" | "patch" | "delete") {
                return Decision::NoOpinion;
            }
            let bound = pods(&a.namespace)
                .iter()
                .any(|p| p["metadata"]["name"] == a.name.as_str());
            if bound {
                Decision::Allow
            } else {
                no_relation()
            }
        }
        ("", "pods" | "services" | "endpoints" | "namespaces") if sub.is_empty() => {
            if READ.contains(&verb) {
                Decision::Allow
            } else {
                Decision::NoOpinion
            }
        }
        ("discovery.k8s.io", "endpointslices") if READ.contains(&verb) => Decision::Allow,
        ("", "nodes") => {
            let own = a.name == node;
            match (verb, sub) {
                (v, "") if READ.contains(&v) => Decision::Allow,
                // The name of a create is in the body, not the URL.
                ("create", "") if a.name.is_empty() || own => Decision::Allow,
                ("update" | "patch" | "delete", "") | ("get" | "update" | "patch", "status")
                    if own =>
                {
                    Decision::Allow
                }
                _ if !a.name.is_empty() && !own => {
                    Decision::Deny(format!("node '{node}' cannot modify node '{}'", a.name))
                }
                _ => Decision::NoOpinion,
            }
        }
        ("coordination.k8s.io", "leases") if a.namespace == "kube-node-lease" => {
            if a.name == node || (a.name.is_empty() && matches!(verb, "create" | "list" | "watch"))
            {
                Decision::Allow
            } else {
                Decision::Deny(format!("node '{node}' can only access its own lease"))
            }
        }
        ("" | "events.k8s.io", "events") if matches!(verb, "create" | "update" | "patch") => {
            Decision::Allow
        }
        ("authentication.k8s.io", "tokenreviews")
        | ("authorization.k8s.io", "subjectaccessreviews")
            if verb == "create" =>
        {
            Decision::Allow
        }
        _ => Decision::NoOpinion,
    }
}

#[derive(Clone, Copy)]
enum Ref {
    Secret,
    ConfigMap,
    Claim,
}

fn service_account(pod: &Value) -> &str {
    pod["spec"]["serviceAccountName"]
        .as_str()
        .or_else(|| pod["spec"]["serviceAccount"].as_str())
        .unwrap_or("default")
}

/// Names of the objects of `kind` a pod uses: volumes (also projected), env and envFrom of
/// every container, image pull secrets.
fn references(pod: &Value, kind: Ref) -> Vec<String> {
    let mut out = Vec::new();
    let mut push = |v: &Value| {
        if let Some(s) = v.as_str() {
            out.push(s.to_string());
        }
    };
    let spec = &pod["spec"];
    let arr = |v: &Value| v.as_array().cloned().unwrap_or_default();
    for vol in arr(&spec["volumes"]) {
        match kind {
            Ref::Secret => {
                push(&vol["secret"]["secretName"]);
                for key in ["csi", "cephfs", "flexVolume", "iscsi", "rbd", "scaleIO"] {
                    push(&vol[key]["secretRef"]["name"]);
                }
                push(&vol["csi"]["nodePublishSecretRef"]["name"]);
                push(&vol["azureFile"]["secretName"]);
            }
            Ref::ConfigMap => push(&vol["configMap"]["name"]),
            Ref::Claim => push(&vol["persistentVolumeClaim"]["claimName"]),
        }
        for src in arr(&vol["projected"]["sources"]) {
            match kind {
                Ref::Secret => push(&src["secret"]["name"]),
                Ref::ConfigMap => push(&src["configMap"]["name"]),
                Ref::Claim => {}
            }
        }
    }
    if let Ref::Secret = kind {
        for s in arr(&spec["imagePullSecrets"]) {
            push(&s["name"]);
        }
    }
    for field in ["containers", "initContainers", "ephemeralContainers"] {
        for c in arr(&spec[field]) {
            for e in arr(&c["envFrom"]) {
                match kind {
                    Ref::Secret => push(&e["secretRef"]["name"]),
                    Ref::ConfigMap => push(&e["configMapRef"]["name"]),
                    Ref::Claim => {}
                }
            }
            for e in arr(&c["env"]) {
                match kind {
                    Ref::Secret => push(&e["valueFrom"]["secretKeyRef"]["name"]),
                    Ref::ConfigMap => push(&e["valueFrom"]["configMapKeyRef"]["name"]),
                    Ref::Claim => {}
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::UserInfo;
    use serde_json::json;

    fn attrs(
        verb: &str,
        group: &str,
        resource: &str,
        sub: &str,
        ns: &str,
        name: &str,
    ) -> Attributes {
        Attributes {
            user: UserInfo::new("system:node:n1", &["system:nodes"]),
            verb: verb.into(),
            resource_request: true,
            api_group: group.into(),
            resource: resource.into(),
            subresource: sub.into(),
            namespace: ns.into(),
            name: name.into(),
            ..Default::default()
        }
    }

    fn pods(_ns: &str) -> Vec<Value> {
        vec![json!({
            "metadata": {"name": "web"},
            "spec": {
                "nodeName": "n1",
                "serviceAccountName": "builder",
                "volumes": [
                    {"name": "a", "secret": {"secretName": "mounted"}},
                    {"name": "b", "projected": {"sources": [{"configMap": {"name": "proj-cm"}}]}},
                    {"name": "c", "persistentVolumeClaim": {"claimName": "data"}}
                ],
                "containers": [{"name": "c",
                    "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "env-secret", "key": "k"}}}],
                    "envFrom": [{"configMapRef": {"name": "env-cm"}}]}]
            }
        })]
    }

    fn d(a: &Attributes) -> Decision {
        decide("n1", a, &pods)
    }

    #[test]
    fn secrets_and_configmaps_only_when_a_bound_pod_uses_them() {
        for s in ["mounted", "env-secret"] {
            assert_eq!(
                d(&attrs("get", "", "secrets", "", "default", s)),
                Decision::Allow
            );
        }
        for c in ["proj-cm", "env-cm"] {
            assert_eq!(
                d(&attrs("get", "", "configmaps", "", "default", c)),
                Decision::Allow
            );
        }
        assert_eq!(
            d(&attrs(
                "get",
                "",
                "persistentvolumeclaims",
                "",
                "default",
                "data"
            )),
            Decision::Allow
        );
        assert!(matches!(
            d(&attrs("get", "", "secrets", "", "default", "unused")),
            Decision::Deny(m) if m.contains("no relationship found between node 'n1'")
        ));
        assert!(matches!(
            d(&attrs("list", "", "secrets", "", "default", "")),
            Decision::Deny(_)
        ));
        assert!(matches!(
            d(&attrs(
                "create",
                "",
                "serviceaccounts",
                "token",
                "default",
                "other"
            )),
            Decision::Deny(_)
        ));
        assert_eq!(
            d(&attrs(
                "create",
                "",
                "serviceaccounts",
                "token",
                "default",
                "builder"
            )),
            Decision::Allow
        );
    }

    #[test]
    fn own_node_lease_and_bound_pod_status_only() {
        assert_eq!(
            d(&attrs("patch", "", "nodes", "status", "", "n1")),
            Decision::Allow
        );
        assert_eq!(
            d(&attrs("update", "", "nodes", "", "", "n1")),
            Decision::Allow
        );
        assert!(matches!(
            d(&attrs("patch", "", "nodes", "", "", "n2")),
            Decision::Deny(_)
        ));
        assert!(matches!(
            d(&attrs("update", "", "nodes", "status", "", "n2")),
            Decision::Deny(_)
        ));
        assert_eq!(d(&attrs("list", "", "nodes", "", "", "")), Decision::Allow);
        assert_eq!(
            d(&attrs("create", "", "nodes", "", "", "")),
            Decision::Allow
        );
        let lease = |name| {
            attrs(
                "update",
                "coordination.k8s.io",
                "leases",
                "",
                "kube-node-lease",
                name,
            )
        };
        assert_eq!(d(&lease("n1")), Decision::Allow);
        assert!(matches!(d(&lease("n2")), Decision::Deny(_)));
        assert_eq!(
            d(&attrs("patch", "", "pods", "status", "default", "web")),
            Decision::Allow
        );
        assert!(matches!(
            d(&attrs("patch", "", "pods", "status", "default", "x")),
            Decision::Deny(_)
        ));
        assert_eq!(d(&attrs("watch", "", "pods", "", "", "")), Decision::Allow);
        assert_eq!(
            d(&attrs("delete", "", "pods", "", "default", "web")),
            Decision::Allow
        );
        assert!(matches!(
            d(&attrs("delete", "", "pods", "", "default", "x")),
            Decision::Deny(_)
        ));
        assert_eq!(
            d(&attrs("create", "", "pods", "", "default", "")),
            Decision::NoOpinion
        );
        assert_eq!(
            d(&attrs("create", "", "events", "", "default", "")),
            Decision::Allow
        );
        assert_eq!(
            d(&attrs(
                "create",
                "authorization.k8s.io",
                "subjectaccessreviews",
                "",
                "",
                ""
            )),
            Decision::Allow
        );
        assert_eq!(
            d(&attrs("list", "apps", "deployments", "", "", "")),
            Decision::NoOpinion
        );
    }

    #[test]
    fn other_users_are_not_judged() {
        let mut a = attrs("get", "", "secrets", "", "default", "x");
        a.user = UserInfo::new("system:node:n1", &[]);
        assert_eq!(node_of(&a.user), None);
        a.user = UserInfo::new("alice", &["system:nodes"]);
        assert_eq!(node_of(&a.user), None);
    }
}
