//! Priority: `spec.priorityClassName` becomes `spec.priority` and `spec.preemptionPolicy`;
//! pods without a class get the globalDefault class's value (else 0). The two system classes
//! exist from the start, and only one class may be the global default.

use super::Request;
use crate::server::ApiServer;
use capstan_api::ApiError;
use serde_json::{Value, json};

pub const SYSTEM_CLUSTER_CRITICAL: (&str, i64) = ("system-cluster-critical", 2_000_000_000);
pub const SYSTEM_NODE_CRITICAL: (&str, i64) = ("system-node-critical", 2_000_001_000);

/// The built-in classes, created at start like upstream's apiserver post-start hook.
pub fn builtin_classes() -> Vec<Value> {
    [
        (SYSTEM_CLUSTER_CRITICAL, "Used for system critical pods that must run in the cluster, but can be moved to another node if necessary."),
        (SYSTEM_NODE_CRITICAL, "Used for system critical pods that must not be moved from their current node."),
    ]
    .into_iter()
    .map(|((name, value), description)| {
        json!({
            "apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
            "metadata": {"name": name},
            "value": value, "description": description, "preemptionPolicy": "PreemptLowerPriority",
        })
    })
    .collect()
}

/// Create the built-in classes unless present.
pub async fn ensure_builtin(server: &ApiServer) -> Result<(), ApiError> {
    let info = capstan_api::resources::find("scheduling.k8s.io", "v1", "priorityclasses")
        .expect("priorityclasses are served");
    for class in builtin_classes() {
        let name = class["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if super::get(server, "scheduling.k8s.io", "priorityclasses", None, &name)
            .await?
            .is_some()
        {
            continue;
        }
        match crate::handlers::create_internal(server, info, class).await {
            Ok(_) => {}
            Err(e) if e.reason == "AlreadyExists" => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

pub(crate) async fn mutate(
    server: &ApiServer,
    req: &Request<'_>,
    pod: &mut Value,
) -> Result<(), ApiError> {
    let classes: Vec<Value> = super::list(server, "scheduling.k8s.io", "priorityclasses", None)
        .await?
        .into_iter()
        .map(|(v, _)| v)
        .collect();
    resolve(req, &classes, pod)
}

/// Fill priority and preemptionPolicy from the named (or default) class.
fn resolve(req: &Request<'_>, classes: &[Value], pod: &mut Value) -> Result<(), ApiError> {
    let name = pod["spec"]["priorityClassName"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(String::from);
    let class = match &name {
        Some(n) => Some(
            classes
                .iter()
                .find(|c| c["metadata"]["name"] == n.as_str())
                .ok_or_else(|| {
                    req.forbidden(format_args!("no PriorityClass with name {n} was found"))
                })?,
        ),
        None => classes
            .iter()
            .filter(|c| c["globalDefault"] == true)
            .min_by_key(|c| c["value"].as_i64().unwrap_or(0)),
    };
    let value = class.and_then(|c| c["value"].as_i64()).unwrap_or(0);
    if let Some(given) = pod["spec"]["priority"].as_i64()
        && given != value
    {
        return Err(req.forbidden(format_args!(
            "the integer value of priority ({given}) must not be provided in pod spec; priority admission controller computed {value} from the given PriorityClass name"
        )));
    }
    let spec = &mut pod["spec"];
    spec["priority"] = json!(value);
    if let Some(c) = class {
        if name.is_none() {
            spec["priorityClassName"] = c["metadata"]["name"].clone();
        }
        let policy = c["preemptionPolicy"]
            .as_str()
            .unwrap_or("PreemptLowerPriority");
        spec["preemptionPolicy"] = json!(policy);
    }
    Ok(())
}

/// Only one class may be the global default.
pub(crate) async fn validate_class(
    server: &ApiServer,
    req: &Request<'_>,
    class: &Value,
) -> Result<(), ApiError> {
    if class["globalDefault"] != true {
        return Ok(());
    }
    for (c, _) in super::list(server, "scheduling.k8s.io", "priorityclasses", None).await? {
        let other = c["metadata"]["name"].as_str().unwrap_or_default();
        if c["globalDefault"] == true && other != req.name {
            return Err(req.forbidden(format_args!(
                "PriorityClass {other} is already marked as default. Only one default can exist"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::Operation;
    use super::*;
    use crate::auth::UserInfo;

    fn req(user: &UserInfo) -> Request<'_> {
        Request {
            operation: Operation::Create,
            info: capstan_api::resources::find("", "v1", "pods").expect("pods"),
            subresource: None,
            namespace: Some("default"),
            name: "p",
            user,
            old: None,
            dry_run: false,
        }
    }

    #[test]
    fn resolves_named_default_and_unknown_classes() {
        let user = UserInfo::default();
        let r = req(&user);
        let mut classes = builtin_classes();
        let mut pod = json!({"spec": {"priorityClassName": "system-node-critical"}});
        resolve(&r, &classes, &mut pod).expect("known class");
        assert_eq!(pod["spec"]["priority"], 2_000_001_000);
        assert_eq!(pod["spec"]["preemptionPolicy"], "PreemptLowerPriority");

        let mut pod = json!({"spec": {}});
        resolve(&r, &classes, &mut pod).expect("no class");
        assert_eq!(pod["spec"]["priority"], 0);
        assert!(pod["spec"]["priorityClassName"].is_null());

        classes.push(json!({"metadata": {"name": "low"}, "value": 5, "globalDefault": true, "preemptionPolicy": "Never"}));
        let mut pod = json!({"spec": {}});
        resolve(&r, &classes, &mut pod).expect("default class");
        assert_eq!(pod["spec"]["priority"], 5);
        assert_eq!(pod["spec"]["priorityClassName"], "low");
        assert_eq!(pod["spec"]["preemptionPolicy"], "Never");

        let mut pod = json!({"spec": {"priorityClassName": "nope"}});
        let e = resolve(&r, &classes, &mut pod).expect_err("unknown class");
        assert_eq!(e.code, 403);
        assert_eq!(
            e.message,
            "pods \"p\" is forbidden: no PriorityClass with name nope was found"
        );

        let mut pod = json!({"spec": {"priorityClassName": "low", "priority": 7}});
        let e = resolve(&r, &classes, &mut pod).expect_err("mismatch");
        assert!(
            e.message
                .contains("priority admission controller computed 5"),
            "{}",
            e.message
        );
        let mut pod = json!({"spec": {"priorityClassName": "low", "priority": 5}});
        resolve(&r, &classes, &mut pod).expect("matching priority");
    }
}
