//! The RBAC evaluator: policy rules, rule matching and covering, and an index of who is bound to
//! which rules, built from the JSON of Roles, ClusterRoles, RoleBindings and ClusterRoleBindings.

use super::super::{Attributes, UserInfo};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

/// One `rbac.authorization.k8s.io/v1` PolicyRule.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRule {
    #[serde(default)]
    pub verbs: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resource_names: Vec<String>,
    #[serde(
        default,
        rename = "nonResourceURLs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub non_resource_urls: Vec<String>,
}

fn has(list: &[String], want: &str) -> bool {
    list.iter().any(|s| s == want)
}

fn has_or_all(list: &[String], want: &str) -> bool {
    list.iter().any(|s| s == "*" || s == want)
}

impl PolicyRule {
    /// Whether this rule grants the request described by `attrs`.
    pub fn allows(&self, attrs: &Attributes) -> bool {
        if !has_or_all(&self.verbs, &attrs.verb) {
            return false;
        }
        if attrs.resource_request {
            has_or_all(&self.api_groups, &attrs.api_group)
                && self.resource_matches(&attrs.resource, &attrs.subresource)
                && (self.resource_names.is_empty()
                    || (!attrs.name.is_empty() && has(&self.resource_names, &attrs.name)))
        } else {
            self.non_resource_urls
                .iter()
                .any(|u| url_matches(u, &attrs.path))
        }
    }

    fn resource_matches(&self, resource: &str, subresource: &str) -> bool {
        self.resources.iter().any(|r| {
            if r == "*" {
                return true;
            }
            if subresource.is_empty() {
                return r == resource;
            }
            match r.split_once('/') {
                Some((res, sub)) => (res == resource || res == "*") && sub == subresource,
                None => false,
            }
        })
    }

    /// Splits into rules granting one verb on one thing each (upstream's breakdown for Covers).
    fn atoms(&self) -> Vec<PolicyRule> {
        let one = |s: &String| vec![s.clone()];
        let mut out = Vec::new();
        for verb in &self.verbs {
            for group in &self.api_groups {
                for res in &self.resources {
                    if self.resource_names.is_empty() {
                        out.push(PolicyRule {
                            verbs: one(verb),
                            api_groups: one(group),
                            resources: one(res),
                            ..Default::default()
                        });
                    }
                    for name in &self.resource_names {
                        out.push(PolicyRule {
                            verbs: one(verb),
                            api_groups: one(group),
                            resources: one(res),
                            resource_names: one(name),
                            ..Default::default()
                        });
                    }
                }
            }
            for url in &self.non_resource_urls {
                out.push(PolicyRule {
                    verbs: one(verb),
                    non_resource_urls: one(url),
                    ..Default::default()
                });
            }
        }
        out
    }

    /// Whether this rule grants everything `atom` (a single-valued rule) grants.
    fn covers_atom(&self, atom: &PolicyRule) -> bool {
        let all = |owner: &[String], wanted: &[String]| {
            has(owner, "*") || wanted.iter().all(|w| has(owner, w))
        };
        if !all(&self.verbs, &atom.verbs) {
            return false;
        }
        if !atom.non_resource_urls.is_empty() {
            return atom.non_resource_urls.iter().all(|want| {
                self.non_resource_urls
                    .iter()
                    .any(|own| own == want || url_prefix_covers(own, want))
            });
        }
        let resources = atom.resources.iter().all(|want| {
            self.resources.iter().any(|own| {
                own == "*"
                    || own == want
                    || (own.starts_with("*/")
                        && want
                            .split_once('/')
                            .is_some_and(|(_, sub)| own[2..] == *sub))
            })
        });
        let names = if atom.resource_names.is_empty() {
            self.resource_names.is_empty()
        } else {
            self.resource_names.is_empty() || all(&self.resource_names, &atom.resource_names)
        };
        all(&self.api_groups, &atom.api_groups) && resources && names
    }
}

fn url_matches(rule: &str, path: &str) -> bool {
    rule == "*"
        || rule == path
        || rule
            .strip_suffix('*')
            .is_some_and(|prefix| path.starts_with(prefix))
}

fn url_prefix_covers(owner: &str, wanted: &str) -> bool {
    owner
        .strip_suffix('*')
        .is_some_and(|prefix| wanted.starts_with(prefix))
}

/// The rules in `servant` that no rule in `owner` covers (empty: `owner` holds them all).
pub fn uncovered(owner: &[PolicyRule], servant: &[PolicyRule]) -> Vec<PolicyRule> {
    servant
        .iter()
        .flat_map(PolicyRule::atoms)
        .filter(|atom| !owner.iter().any(|o| o.covers_atom(atom)))
        .collect()
}

/// Upstream's rendering of a rule in escalation errors, e.g.
/// `{APIGroups:[""], Resources:["pods"], Verbs:["get"]}`.
pub fn compact(rule: &PolicyRule) -> String {
    let list = |l: &[String]| {
        l.iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut parts = Vec::new();
    if !rule.api_groups.is_empty() {
        parts.push(format!("APIGroups:[{}]", list(&rule.api_groups)));
    }
    if !rule.resources.is_empty() {
        parts.push(format!("Resources:[{}]", list(&rule.resources)));
    }
    if !rule.resource_names.is_empty() {
        parts.push(format!("ResourceNames:[{}]", list(&rule.resource_names)));
    }
    if !rule.non_resource_urls.is_empty() {
        parts.push(format!(
            "NonResourceURLs:[{}]",
            list(&rule.non_resource_urls)
        ));
    }
    parts.push(format!("Verbs:[{}]", list(&rule.verbs)));
    format!("{{{}}}", parts.join(", "))
}

/// What a binding's roleRef names.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RoleKey {
    Cluster(String),
    /// (namespace, name)
    Namespaced(String, String),
}

/// One binding of a subject: the namespace it applies in (None: cluster-wide) and its role.
#[derive(Clone, Debug)]
struct Grant {
    namespace: Option<String>,
    role: RoleKey,
}

/// Who is bound to which rules; rebuilt whenever an RBAC object changes.
#[derive(Debug, Default)]
pub struct Index {
    roles: HashMap<RoleKey, Arc<[PolicyRule]>>,
    /// Subject key (`u:NAME` for users and service accounts, `g:NAME` for groups) to grants.
    grants: HashMap<String, Vec<Grant>>,
}

/// The rules of a Role or ClusterRole object.
pub fn rules_of(obj: &Value) -> Vec<PolicyRule> {
    obj.get("rules")
        .and_then(|r| serde_json::from_value(r.clone()).ok())
        .unwrap_or_default()
}

fn meta<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj["metadata"][field].as_str().unwrap_or_default()
}

/// The subject keys of a binding subject; `namespace` is the binding's (defaults SA namespaces).
fn subject_key(subject: &Value, namespace: &str) -> Option<String> {
    let name = subject["name"].as_str()?;
    match subject["kind"].as_str()? {
        "User" => Some(format!("u:{name}")),
        "Group" => Some(format!("g:{name}")),
        "ServiceAccount" => {
            let ns = subject["namespace"]
                .as_str()
                .filter(|s| !s.is_empty())
                .unwrap_or(namespace);
            (!ns.is_empty()).then(|| format!("u:system:serviceaccount:{ns}:{name}"))
        }
        _ => None,
    }
}

/// The role a binding refers to, if well-formed.
pub fn role_ref(binding: &Value) -> Option<RoleKey> {
    let r = &binding["roleRef"];
    let name = r["name"].as_str()?.to_string();
    let ns = meta(binding, "namespace");
    match r["kind"].as_str()? {
        "ClusterRole" => Some(RoleKey::Cluster(name)),
        "Role" if !ns.is_empty() => Some(RoleKey::Namespaced(ns.to_string(), name)),
        _ => None,
    }
}

impl Index {
    /// Builds the index from the current objects of the four RBAC kinds.
    pub fn build<'a>(
        roles: impl IntoIterator<Item = &'a Value>,
        cluster_roles: impl IntoIterator<Item = &'a Value>,
        role_bindings: impl IntoIterator<Item = &'a Value>,
        cluster_role_bindings: impl IntoIterator<Item = &'a Value>,
    ) -> Index {
        let mut index = Index::default();
        for r in roles {
            let key = RoleKey::Namespaced(meta(r, "namespace").into(), meta(r, "name").into());
            index.roles.insert(key, rules_of(r).into());
        }
        for r in cluster_roles {
            let key = RoleKey::Cluster(meta(r, "name").into());
            index.roles.insert(key, rules_of(r).into());
        }
        let bindings = role_bindings
            .into_iter()
            .map(|b| (b, true))
            .chain(cluster_role_bindings.into_iter().map(|b| (b, false)));
        for (b, namespaced) in bindings {
            let ns = meta(b, "namespace");
            let Some(role) = role_ref(b) else { continue };
            if !namespaced && !matches!(role, RoleKey::Cluster(_)) {
                continue;
            }
            let namespace = namespaced.then(|| ns.to_string());
            for s in b["subjects"].as_array().into_iter().flatten() {
                if let Some(k) = subject_key(s, ns) {
                    index.grants.entry(k).or_default().push(Grant {
                        namespace: namespace.clone(),
                        role: role.clone(),
                    });
                }
            }
        }
        index
    }

    /// The rules of one role, if it exists.
    pub fn role(&self, key: &RoleKey) -> Option<&[PolicyRule]> {
        self.roles.get(key).map(|r| &r[..])
    }

    /// Visits the rule sets that apply to `user` in `namespace` ("" = cluster scope only) until
    /// `f` returns true; returns whether it did.
    fn any_rules(
        &self,
        user: &UserInfo,
        namespace: &str,
        mut f: impl FnMut(&[PolicyRule]) -> bool,
    ) -> bool {
        let keys = std::iter::once(format!("u:{}", user.name))
            .chain(user.groups.iter().map(|g| format!("g:{g}")));
        for key in keys {
            for grant in self.grants.get(&key).into_iter().flatten() {
                let applies = match &grant.namespace {
                    None => true,
                    Some(ns) => !namespace.is_empty() && ns == namespace,
                };
                if applies
                    && let Some(rules) = self.roles.get(&grant.role)
                    && f(rules)
                {
                    return true;
                }
            }
        }
        false
    }

    /// Whether some rule bound to the request's user grants it.
    pub fn allows(&self, attrs: &Attributes) -> bool {
        let ns = if attrs.resource_request {
            attrs.namespace.as_str()
        } else {
            ""
        };
        self.any_rules(&attrs.user, ns, |rules| {
            rules.iter().any(|r| r.allows(attrs))
        })
    }

    /// Every rule granted to `user` in `namespace` ("" = cluster-wide grants only).
    pub fn rules_for(&self, user: &UserInfo, namespace: &str) -> Vec<PolicyRule> {
        let mut out: Vec<PolicyRule> = Vec::new();
        self.any_rules(user, namespace, |rules| {
            for r in rules {
                if !out.contains(r) {
                    out.push(r.clone());
                }
            }
            false
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> PolicyRule {
        let s = |l: &[&str]| l.iter().map(|x| x.to_string()).collect();
        PolicyRule {
            verbs: s(verbs),
            api_groups: s(groups),
            resources: s(resources),
            ..Default::default()
        }
    }

    fn req(user: &UserInfo, verb: &str, group: &str, resource: &str, ns: &str) -> Attributes {
        let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
        Attributes {
            user: user.clone(),
            verb: verb.into(),
            resource_request: true,
            api_group: group.into(),
            api_version: "v1".into(),
            resource: resource.into(),
            subresource: subresource.into(),
            namespace: ns.into(),
            ..Default::default()
        }
    }

    fn path(user: &UserInfo, verb: &str, p: &str) -> Attributes {
        Attributes {
            user: user.clone(),
            verb: verb.into(),
            path: p.into(),
            ..Default::default()
        }
    }

    #[test]
    fn rule_matching() {
        let u = UserInfo::new("alice", &[]);
        let r = rule(&["get", "list"], &[""], &["pods", "deployments/scale"]);
        assert!(r.allows(&req(&u, "get", "", "pods", "a")));
        assert!(!r.allows(&req(&u, "delete", "", "pods", "a")));
        assert!(!r.allows(&req(&u, "get", "apps", "pods", "a")));
        assert!(!r.allows(&req(&u, "get", "", "pods/log", "a")));
        assert!(r.allows(&req(&u, "get", "", "deployments/scale", "a")));
        assert!(!r.allows(&req(&u, "get", "", "deployments", "a")));
        let star = rule(&["*"], &["*"], &["*"]);
        assert!(star.allows(&req(
            &u,
            "escalate",
            "rbac.authorization.k8s.io",
            "roles",
            ""
        )));
        assert!(star.allows(&req(&u, "get", "", "pods/log", "")));
        let sub = rule(&["get"], &[""], &["*/status"]);
        assert!(sub.allows(&req(&u, "get", "", "pods/status", "x")));
        assert!(!sub.allows(&req(&u, "get", "", "pods", "x")));
        let mut named = rule(&["get"], &[""], &["configmaps"]);
        named.resource_names = vec!["one".into()];
        let mut a = req(&u, "get", "", "configmaps", "x");
        assert!(!named.allows(&a));
        a.name = "one".into();
        assert!(named.allows(&a));
        a.name = "two".into();
        assert!(!named.allows(&a));
        // Resource rules never match paths, and URL rules never match resources.
        assert!(!star.allows(&path(&u, "get", "/healthz")));
        let urls = PolicyRule {
            verbs: vec!["get".into()],
            non_resource_urls: vec!["/version".into(), "/apis/*".into()],
            ..Default::default()
        };
        assert!(urls.allows(&path(&u, "get", "/version")));
        assert!(urls.allows(&path(&u, "get", "/apis/apps/v1")));
        assert!(!urls.allows(&path(&u, "get", "/api")));
        assert!(!urls.allows(&path(&u, "post", "/version")));
        assert!(!urls.allows(&req(&u, "get", "", "pods", "x")));
    }

    fn index() -> Index {
        let roles = [json!({
            "metadata": {"name": "pod-reader", "namespace": "a"},
            "rules": [{"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods"]}],
        })];
        let cluster_roles = [
            json!({"metadata": {"name": "view-nodes"}, "rules": [{"verbs": ["get"], "apiGroups": [""], "resources": ["nodes"]}]}),
            json!({"metadata": {"name": "secrets"}, "rules": [{"verbs": ["get"], "apiGroups": [""], "resources": ["secrets"]}]}),
            json!({"metadata": {"name": "discovery"}, "rules": [{"verbs": ["get"], "nonResourceURLs": ["/api", "/api/*"]}]}),
        ];
        let rbs = [
            json!({"metadata": {"name": "b1", "namespace": "a"}, "roleRef": {"kind": "Role", "name": "pod-reader"},
                   "subjects": [{"kind": "ServiceAccount", "name": "sa"}]}),
            json!({"metadata": {"name": "b2", "namespace": "b"}, "roleRef": {"kind": "ClusterRole", "name": "secrets"},
                   "subjects": [{"kind": "Group", "name": "devs"}]}),
        ];
        let crbs = [
            json!({"metadata": {"name": "c1"}, "roleRef": {"kind": "ClusterRole", "name": "view-nodes"},
                   "subjects": [{"kind": "User", "name": "alice"}]}),
            json!({"metadata": {"name": "c2"}, "roleRef": {"kind": "ClusterRole", "name": "discovery"},
                   "subjects": [{"kind": "Group", "name": "system:authenticated"}]}),
            // A ClusterRoleBinding cannot refer to a Role.
            json!({"metadata": {"name": "c3"}, "roleRef": {"kind": "Role", "name": "pod-reader"},
                   "subjects": [{"kind": "User", "name": "alice"}]}),
        ];
        Index::build(&roles, &cluster_roles, &rbs, &crbs)
    }

    #[test]
    fn bindings_by_subject_and_namespace() {
        let idx = index();
        let sa = UserInfo::new(
            "system:serviceaccount:a:sa",
            &["system:serviceaccounts", "system:authenticated"],
        );
        assert!(idx.allows(&req(&sa, "get", "", "pods", "a")));
        assert!(idx.allows(&req(&sa, "list", "", "pods", "a")));
        assert!(!idx.allows(&req(&sa, "list", "", "pods", "b")));
        assert!(!idx.allows(&req(&sa, "list", "", "pods", "")));
        assert!(!idx.allows(&req(&sa, "get", "", "secrets", "a")));
        assert!(idx.allows(&path(&sa, "get", "/api/v1")));
        let other_sa = UserInfo::new("system:serviceaccount:b:sa", &[]);
        assert!(!idx.allows(&req(&other_sa, "get", "", "pods", "a")));
        let alice = UserInfo::new("alice", &["devs"]);
        assert!(idx.allows(&req(&alice, "get", "", "nodes", "")));
        assert!(idx.allows(&req(&alice, "get", "", "secrets", "b")));
        assert!(!idx.allows(&req(&alice, "get", "", "secrets", "a")));
        assert!(!idx.allows(&req(&alice, "get", "", "pods", "a")));
        assert!(!idx.allows(&path(&alice, "get", "/api")));
        let rules = idx.rules_for(&sa, "a");
        assert_eq!(rules.len(), 2, "{rules:?}");
        assert_eq!(idx.rules_for(&sa, "b").len(), 1);
    }

    #[test]
    fn covering() {
        let owner = vec![
            rule(&["get", "list"], &[""], &["pods", "*/status"]),
            rule(&["*"], &["apps"], &["*"]),
        ];
        assert!(uncovered(&owner, &[rule(&["get"], &[""], &["pods"])]).is_empty());
        assert!(uncovered(&owner, &[rule(&["get"], &[""], &["services/status"])]).is_empty());
        assert!(
            uncovered(
                &owner,
                &[rule(&["delete", "get"], &["apps"], &["deployments"])]
            )
            .is_empty()
        );
        let missing = uncovered(&owner, &[rule(&["get", "delete"], &[""], &["pods"])]);
        assert_eq!(missing, vec![rule(&["delete"], &[""], &["pods"])]);
        assert_eq!(
            compact(&missing[0]),
            r#"{APIGroups:[""], Resources:["pods"], Verbs:["delete"]}"#
        );
        assert!(!uncovered(&owner, &[rule(&["*"], &[""], &["pods"])]).is_empty());
        let mut named = rule(&["get"], &[""], &["pods"]);
        named.resource_names = vec!["x".into()];
        assert!(uncovered(&owner, std::slice::from_ref(&named)).is_empty());
        assert!(
            !uncovered(
                std::slice::from_ref(&named),
                &[rule(&["get"], &[""], &["pods"])]
            )
            .is_empty()
        );
        let urls = PolicyRule {
            verbs: vec!["get".into()],
            non_resource_urls: vec!["/apis/*".into()],
            ..Default::default()
        };
        let want = PolicyRule {
            verbs: vec!["get".into()],
            non_resource_urls: vec!["/apis/apps".into()],
            ..Default::default()
        };
        assert!(uncovered(std::slice::from_ref(&urls), std::slice::from_ref(&want)).is_empty());
        assert!(!uncovered(&owner, &[want]).is_empty());
    }
}
