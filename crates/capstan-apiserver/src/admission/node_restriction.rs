//! NodeRestriction: a kubelet (`system:node:<name>` in `system:nodes`) may change only its own
//! Node (without setting restricted labels or changing taints), its own Lease in
//! kube-node-lease, and the status of pods bound to it; it may delete only pods bound to it.
//! Mirror pods (static pod manifests) are not supported: nodes may not create pods.

use super::{Operation, Request};
use crate::auth::node::node_of;
use capstan_api::{ApiError, Subresource};
use serde_json::Value;
use std::collections::BTreeSet;

/// Labels a kubelet may set on its Node object.
const KUBELET_LABELS: [&str; 11] = [
    "kubernetes.io/hostname",
    "kubernetes.io/arch",
    "kubernetes.io/os",
    "beta.kubernetes.io/arch",
    "beta.kubernetes.io/os",
    "beta.kubernetes.io/instance-type",
    "node.kubernetes.io/instance-type",
    "failure-domain.beta.kubernetes.io/zone",
    "failure-domain.beta.kubernetes.io/region",
    "topology.kubernetes.io/zone",
    "topology.kubernetes.io/region",
];
/// Label namespaces a kubelet may use freely.
const KUBELET_NAMESPACES: [&str; 2] = ["kubelet.kubernetes.io", "node.kubernetes.io"];

fn in_domain(ns: &str, domain: &str) -> bool {
    ns == domain || ns.ends_with(&format!(".{domain}"))
}

/// Whether a node may not set `label` on itself.
pub fn forbidden_label(label: &str) -> bool {
    let Some((ns, _)) = label.split_once('/') else {
        return false;
    };
    if in_domain(ns, "node-restriction.kubernetes.io") {
        return true;
    }
    let restricted = in_domain(ns, "kubernetes.io") || in_domain(ns, "k8s.io");
    let kubelet =
        KUBELET_LABELS.contains(&label) || KUBELET_NAMESPACES.iter().any(|d| in_domain(ns, d));
    restricted && !kubelet
}

fn labels(obj: Option<&Value>) -> serde_json::Map<String, Value> {
    obj.and_then(|o| o["metadata"]["labels"].as_object().cloned())
        .unwrap_or_default()
}

pub(crate) fn admit(req: &Request<'_>, obj: &Value) -> Result<(), ApiError> {
    let Some(node) = node_of(req.user) else {
        return Ok(());
    };
    let refuse = |msg: String| Err(req.forbidden(msg));
    match (req.info.group, req.info.plural) {
        ("", "nodes") => {
            if req.name != node {
                return match req.operation {
                    Operation::Delete => refuse(format!(
                        "node {node:?} is not allowed to delete node {:?}",
                        req.name
                    )),
                    _ => refuse(format!(
                        "node {node:?} is not allowed to modify node {:?}",
                        req.name
                    )),
                };
            }
            match req.operation {
                Operation::Delete => Ok(()),
                Operation::Create => {
                    let bad: Vec<String> = labels(Some(obj))
                        .keys()
                        .filter(|k| forbidden_label(k))
                        .cloned()
                        .collect();
                    if bad.is_empty() {
                        Ok(())
                    } else {
                        refuse(format!(
                            "node {node:?} is not allowed to set the following labels: {}",
                            bad.join(", ")
                        ))
                    }
                }
                Operation::Update => {
                    let (new, old) = (labels(Some(obj)), labels(req.old));
                    let changed: BTreeSet<&String> = new
                        .keys()
                        .chain(old.keys())
                        .filter(|k| new.get(*k) != old.get(*k) && forbidden_label(k))
                        .collect();
                    if !changed.is_empty() {
                        let list: Vec<&str> = changed.iter().map(|s| s.as_str()).collect();
                        return refuse(format!(
                            "node {node:?} is not allowed to modify labels: {}",
                            list.join(", ")
                        ));
                    }
                    let taints = |o: Option<&Value>| {
                        o.map(|o| o["spec"]["taints"].clone())
                            .unwrap_or(Value::Null)
                    };
                    let (t_new, t_old) = (taints(Some(obj)), taints(req.old));
                    let empty = |t: &Value| t.as_array().is_none_or(|a| a.is_empty());
                    if t_new != t_old && !(empty(&t_new) && empty(&t_old)) {
                        return refuse(format!("node {node:?} is not allowed to modify taints"));
                    }
                    Ok(())
                }
            }
        }
        ("coordination.k8s.io", "leases") if req.namespace == Some("kube-node-lease") => {
            if req.name == node {
                Ok(())
            } else {
                refuse(
                    "can only access node lease with the same name as the requesting node".into(),
                )
            }
        }
        ("", "pods") => {
            let bound =
                |o: Option<&Value>| o.and_then(|o| o["spec"]["nodeName"].as_str()) == Some(node);
            match (req.operation, req.subresource) {
                (Operation::Update, Some(Subresource::Status)) => {
                    if bound(req.old) {
                        Ok(())
                    } else {
                        refuse(format!(
                            "node {node:?} can only update pod status for pods with spec.nodeName set to itself"
                        ))
                    }
                }
                (Operation::Delete, _) => {
                    if bound(req.old.or(Some(obj))) {
                        Ok(())
                    } else {
                        refuse(format!(
                            "node {node:?} can only delete pods with spec.nodeName set to itself"
                        ))
                    }
                }
                (Operation::Create, None) => refuse(format!(
                    "pod does not have \"kubernetes.io/config.mirror\" annotation, node {node:?} can only create mirror pods"
                )),
                (op, _) => refuse(format!(
                    "unexpected operation {op:?}, node {node:?} can only create and delete mirror pods"
                )),
            }
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::UserInfo;
    use serde_json::json;

    fn req<'a>(
        user: &'a UserInfo,
        plural: &str,
        op: Operation,
        ns: Option<&'a str>,
        name: &'a str,
        old: Option<&'a Value>,
        sub: Option<Subresource>,
    ) -> Request<'a> {
        let info = capstan_api::resources::RESOURCES
            .iter()
            .find(|r| r.plural == plural && (r.group.is_empty() || plural == "leases"))
            .expect("resource");
        Request {
            operation: op,
            info,
            subresource: sub,
            namespace: ns,
            name,
            user,
            old,
            dry_run: false,
        }
    }

    #[test]
    fn labels_kubelets_may_set() {
        assert!(!forbidden_label("kubernetes.io/hostname"));
        assert!(!forbidden_label("topology.kubernetes.io/zone"));
        assert!(!forbidden_label(
            "node.kubernetes.io/exclude-from-external-load-balancers"
        ));
        assert!(!forbidden_label("example.com/anything"));
        assert!(!forbidden_label("plain"));
        assert!(forbidden_label("node-restriction.kubernetes.io/pool"));
        assert!(forbidden_label("node-role.kubernetes.io/master"));
        assert!(forbidden_label("foo.k8s.io/bar"));
    }

    #[test]
    fn nodes_touch_only_their_own_objects() {
        let n1 = UserInfo::new("system:node:n1", &["system:nodes"]);
        let admin = UserInfo::new("admin", &["system:masters"]);
        let node = json!({"metadata": {"name": "n2"}});
        let r = req(
            &n1,
            "nodes",
            Operation::Update,
            None,
            "n2",
            Some(&node),
            None,
        );
        let e = admit(&r, &node).expect_err("other node");
        assert_eq!(
            e.message,
            "nodes \"n2\" is forbidden: node \"n1\" is not allowed to modify node \"n2\""
        );
        assert!(
            admit(
                &req(
                    &admin,
                    "nodes",
                    Operation::Delete,
                    None,
                    "n2",
                    Some(&node),
                    None
                ),
                &node
            )
            .is_ok()
        );
        assert!(
            admit(
                &req(
                    &n1,
                    "nodes",
                    Operation::Delete,
                    None,
                    "n2",
                    Some(&node),
                    None
                ),
                &node
            )
            .is_err()
        );

        let old = json!({"metadata": {"name": "n1", "labels": {"kubernetes.io/hostname": "n1"}}});
        let new = json!({"metadata": {"name": "n1", "labels": {"kubernetes.io/hostname": "n1", "node-restriction.kubernetes.io/x": "y"}}});
        let e = admit(
            &req(
                &n1,
                "nodes",
                Operation::Update,
                None,
                "n1",
                Some(&old),
                None,
            ),
            &new,
        )
        .expect_err("label");
        assert!(
            e.message
                .ends_with("is not allowed to modify labels: node-restriction.kubernetes.io/x"),
            "{}",
            e.message
        );
        let fine = json!({"metadata": {"name": "n1", "labels": {"kubernetes.io/hostname": "n1", "team": "a"}}});
        assert!(
            admit(
                &req(
                    &n1,
                    "nodes",
                    Operation::Update,
                    None,
                    "n1",
                    Some(&old),
                    None
                ),
                &fine
            )
            .is_ok()
        );

        let lease = json!({});
        assert!(
            admit(
                &req(
                    &n1,
                    "leases",
                    Operation::Update,
                    Some("kube-node-lease"),
                    "n1",
                    None,
                    None
                ),
                &lease
            )
            .is_ok()
        );
        assert!(
            admit(
                &req(
                    &n1,
                    "leases",
                    Operation::Update,
                    Some("kube-node-lease"),
                    "n2",
                    None,
                    None
                ),
                &lease
            )
            .is_err()
        );

        let mine = json!({"spec": {"nodeName": "n1"}});
        let theirs = json!({"spec": {"nodeName": "n2"}});
        let st = Some(Subresource::Status);
        assert!(
            admit(
                &req(
                    &n1,
                    "pods",
                    Operation::Update,
                    Some("d"),
                    "p",
                    Some(&mine),
                    st
                ),
                &mine
            )
            .is_ok()
        );
        assert!(
            admit(
                &req(
                    &n1,
                    "pods",
                    Operation::Update,
                    Some("d"),
                    "p",
                    Some(&theirs),
                    st
                ),
                &theirs
            )
            .is_err()
        );
        assert!(
            admit(
                &req(
                    &n1,
                    "pods",
                    Operation::Update,
                    Some("d"),
                    "p",
                    Some(&mine),
                    None
                ),
                &mine
            )
            .is_err()
        );
        assert!(
            admit(
                &req(
                    &n1,
                    "pods",
                    Operation::Delete,
                    Some("d"),
                    "p",
                    Some(&theirs),
                    None
                ),
                &theirs
            )
            .is_err()
        );
        assert!(
            admit(
                &req(&n1, "pods", Operation::Create, Some("d"), "p", None, None),
                &mine
            )
            .is_err()
        );
    }
}
