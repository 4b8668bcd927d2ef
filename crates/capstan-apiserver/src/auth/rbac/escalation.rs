//! Privilege-escalation prevention for writes of RBAC objects, as upstream: a Role or
//! ClusterRole may only hold rules its writer holds (unless the writer may `escalate`), and a
//! binding may only grant a role whose rules the writer holds (unless the writer may `bind` it).

use super::eval::{self, PolicyRule, RoleKey};
use super::{GROUP, index};
use crate::auth::{self, Attributes, Decision, MASTERS, UserInfo};
use crate::server::ApiServer;
use capstan_api::resources::find;
use capstan_api::{ApiError, ResourceInfo};
use serde_json::Value;

tokio::task_local! {
    /// The user of the request being handled; unset for the server's own writes.
    pub static REQUESTER: Option<UserInfo>;
}

/// Checks a create (`old` None) or update of `obj` by the current request's user.
pub async fn check(
    server: &ApiServer,
    info: &ResourceInfo,
    obj: &Value,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    if info.group != GROUP {
        return Ok(());
    }
    let Some(user) = REQUESTER.try_with(|u| u.clone()).ok().flatten() else {
        return Ok(());
    };
    if user.in_group(MASTERS) {
        return Ok(());
    }
    let ns = obj["metadata"]["namespace"].as_str().unwrap_or_default();
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    let same = |field: &str| old.is_some_and(|o| o.get(field) == obj.get(field));
    match info.kind {
        "Role" | "ClusterRole" => {
            let labels_same =
                old.is_some_and(|o| o["metadata"]["labels"] == obj["metadata"]["labels"]);
            if same("rules") && same("aggregationRule") && labels_same {
                return Ok(());
            }
            if permitted(server, &user, "escalate", info.plural, ns, name).await {
                return Ok(());
            }
            let owner = index(&server.cache).rules_for(&user, ns);
            let missing = eval::uncovered(&owner, &eval::rules_of(obj));
            if !missing.is_empty() {
                return Err(escalating(info, name, &user, &missing));
            }
            let aggregates = obj.get("aggregationRule").is_some_and(|a| !a.is_null());
            if aggregates
                && !same("aggregationRule")
                && !eval::uncovered(&owner, &full()).is_empty()
            {
                return Err(forbidden(
                    info,
                    name,
                    "must have cluster-admin privileges to use the aggregationRule",
                ));
            }
            Ok(())
        }
        "RoleBinding" | "ClusterRoleBinding" => {
            if same("roleRef") && same("subjects") {
                return Ok(());
            }
            let Some(role) = eval::role_ref(obj) else {
                return Ok(()); // validation refuses it
            };
            let (plural, role_name) = match &role {
                RoleKey::Cluster(n) => ("clusterroles", n),
                RoleKey::Namespaced(_, n) => ("roles", n),
            };
            if permitted(server, &user, "bind", plural, ns, role_name).await {
                return Ok(());
            }
            let idx = index(&server.cache);
            let Some(rules) = idx.role(&role) else {
                let role_info = find(GROUP, "v1", plural).unwrap_or(info);
                return Err(ApiError::not_found(role_info, role_name));
            };
            let missing = eval::uncovered(&idx.rules_for(&user, ns), rules);
            if missing.is_empty() {
                Ok(())
            } else {
                Err(escalating(info, name, &user, &missing))
            }
        }
        _ => Ok(()),
    }
}

/// Whether the whole authorizer chain lets `user` use `verb` on the named role.
async fn permitted(
    server: &ApiServer,
    user: &UserInfo,
    verb: &str,
    plural: &str,
    ns: &str,
    name: &str,
) -> bool {
    let attrs = Attributes {
        user: user.clone(),
        verb: verb.into(),
        resource_request: true,
        api_group: GROUP.into(),
        api_version: "v1".into(),
        resource: plural.into(),
        namespace: ns.into(),
        name: name.into(),
        ..Default::default()
    };
    auth::authorize(server, &attrs).await == Decision::Allow
}

fn full() -> Vec<PolicyRule> {
    let star = vec!["*".to_string()];
    vec![
        PolicyRule {
            verbs: star.clone(),
            api_groups: star.clone(),
            resources: star.clone(),
            ..Default::default()
        },
        PolicyRule {
            verbs: star.clone(),
            non_resource_urls: star,
            ..Default::default()
        },
    ]
}

fn forbidden(info: &ResourceInfo, name: &str, why: &str) -> ApiError {
    let mut err = ApiError::forbidden(format!(
        "{} {name:?} is forbidden: {why}",
        info.group_resource()
    ));
    err.name = Some(name.into());
    err.group = Some(info.group.into());
    err.kind = Some(info.plural.into());
    err
}

fn escalating(
    info: &ResourceInfo,
    name: &str,
    user: &UserInfo,
    missing: &[PolicyRule],
) -> ApiError {
    let groups: Vec<String> = user.groups.iter().map(|g| format!("{g:?}")).collect();
    let rules: Vec<String> = missing.iter().map(eval::compact).collect();
    forbidden(
        info,
        name,
        &format!(
            "user {:?} (groups=[{}]) is attempting to grant RBAC permissions not currently held:\n{}",
            user.name,
            groups.join(" "),
            rules.join("\n")
        ),
    )
}
