//! The ClusterRole aggregation controller (upstream's `clusterroleaggregation`): a ClusterRole
//! with an `aggregationRule` gets as rules the union of the rules of every other ClusterRole its
//! selectors match, kept current as those roles change.

use capstan_api::selectors::LabelSelector;
use futures::StreamExt;
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The field manager of the rules this controller writes.
const MANAGER: &str = "clusterrole-aggregation-controller";

struct Ctx {
    client: Client,
    roles: Store<ClusterRole>,
}

#[derive(Debug, thiserror::Error)]
pub enum AggregationError {
    #[error("invalid clusterRoleSelector of ClusterRole {0}: {1}")]
    Selector(String, String),
    #[error("writing the rules of ClusterRole {0}")]
    Write(String, #[source] kube::Error),
}

/// Run the controller until `stop`.
pub async fn run(client: Client, stop: CancellationToken) {
    let api = Api::<ClusterRole>::all(client.clone());
    let controller = Controller::new(api.clone(), watcher::Config::default());
    let roles = controller.store();
    let aggregators = roles.clone();
    controller
        // Any ClusterRole change may change what an aggregating role should hold.
        .watches(api, watcher::Config::default(), move |_: ClusterRole| {
            aggregators
                .state()
                .iter()
                .filter(|r| r.aggregation_rule.is_some())
                .map(|r| ObjectRef::from_obj(r.as_ref()))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(async move { stop.cancelled().await })
        .run(reconcile, error_policy, Arc::new(Ctx { client, roles }))
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "clusterrole aggregation reconcile");
            }
        })
        .await;
}

fn error_policy(role: Arc<ClusterRole>, err: &AggregationError, _: Arc<Ctx>) -> Action {
    tracing::warn!(clusterrole = %role.name_any(), error = %err, "clusterrole aggregation failed");
    Action::requeue(Duration::from_secs(2))
}

/// The union of the rules of the roles `role`'s selectors match, in name order, without
/// duplicates; None when `role` does not aggregate.
pub fn aggregated_rules(
    role: &ClusterRole,
    all: &[Arc<ClusterRole>],
) -> Result<Option<Vec<PolicyRule>>, AggregationError> {
    let Some(rule) = &role.aggregation_rule else {
        return Ok(None);
    };
    let mut sorted: Vec<&ClusterRole> = all.iter().map(|r| r.as_ref()).collect();
    sorted.sort_by_key(|r| r.name_any());
    let mut rules: Vec<PolicyRule> = Vec::new();
    for sel in rule.cluster_role_selectors.iter().flatten() {
        let sel = LabelSelector::from_label_selector(sel)
            .map_err(|e| AggregationError::Selector(role.name_any(), e.to_string()))?;
        for other in &sorted {
            if other.name_any() == role.name_any() || !sel.matches(other.labels()) {
                continue;
            }
            for r in other.rules.iter().flatten() {
                if !rules.contains(r) {
                    rules.push(r.clone());
                }
            }
        }
    }
    Ok(Some(rules))
}

async fn reconcile(role: Arc<ClusterRole>, ctx: Arc<Ctx>) -> Result<Action, AggregationError> {
    let Some(rules) = aggregated_rules(&role, &ctx.roles.state())? else {
        return Ok(Action::await_change());
    };
    if role.rules.clone().unwrap_or_default() == rules {
        return Ok(Action::await_change());
    }
    let name = role.name_any();
    let api = Api::<ClusterRole>::all(ctx.client.clone());
    let patch = serde_json::json!({ "rules": rules });
    api.patch(&name, &PatchParams::apply(MANAGER), &Patch::Merge(&patch))
        .await
        .map_err(|e| AggregationError::Write(name.clone(), e))?;
    tracing::debug!(clusterrole = %name, rules = rules.len(), "aggregated ClusterRole rules");
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::rbac::v1::AggregationRule;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector as Selector;
    use std::collections::BTreeMap;

    fn role(name: &str, label: Option<&str>, verbs: &[&str]) -> ClusterRole {
        let mut r = ClusterRole::default();
        r.metadata.name = Some(name.into());
        if let Some(l) = label {
            r.metadata.labels = Some(BTreeMap::from([(l.to_string(), "true".to_string())]));
        }
        r.rules = Some(
            verbs
                .iter()
                .map(|v| PolicyRule {
                    verbs: vec![v.to_string()],
                    api_groups: Some(vec![String::new()]),
                    resources: Some(vec!["pods".into()]),
                    ..Default::default()
                })
                .collect(),
        );
        r
    }

    #[test]
    fn union_of_matching_roles() {
        let mut agg = role("agg", None, &["stale"]);
        agg.aggregation_rule = Some(AggregationRule {
            cluster_role_selectors: Some(vec![Selector {
                match_labels: Some(BTreeMap::from([("to-agg".into(), "true".into())])),
                ..Default::default()
            }]),
        });
        let all: Vec<Arc<ClusterRole>> = vec![
            Arc::new(agg.clone()),
            Arc::new(role("b", Some("to-agg"), &["list", "get"])),
            Arc::new(role("a", Some("to-agg"), &["get"])),
            Arc::new(role("c", Some("other"), &["delete"])),
        ];
        let rules = aggregated_rules(&agg, &all).unwrap().unwrap();
        let verbs: Vec<&str> = rules.iter().map(|r| r.verbs[0].as_str()).collect();
        assert_eq!(verbs, ["get", "list"]);
        assert!(aggregated_rules(&all[1], &all).unwrap().is_none());
    }
}
