//! ResourceQuota enforcement: a create that would take any quota of its namespace over its
//! hard limit is refused with upstream's message, and one that fits is charged into the
//! quota's `status.used` with compare-and-swap, so two racing creates cannot both pass. The
//! quota controller later recomputes `status.used` from what exists.

use super::Request;
use crate::server::ApiServer;
use capstan_api::quantity::format as format_quantity;
use capstan_api::{ApiError, quantity};
use capstan_store::StoreError;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

/// Attempts to charge one quota before giving up on a busy object.
const MAX_RETRIES: usize = 16;
/// Compute resources for which every container must state a value (upstream's rule).
const MUST_SPECIFY: [&str; 6] = [
    "cpu",
    "memory",
    "requests.cpu",
    "requests.memory",
    "limits.cpu",
    "limits.memory",
];

type Usage = BTreeMap<String, f64>;

pub(crate) async fn admit(
    server: &ApiServer,
    req: &Request<'_>,
    obj: &Value,
) -> Result<(), ApiError> {
    let Some(ns) = req.namespace.filter(|_| req.info.namespaced) else {
        return Ok(());
    };
    let quotas = super::list(server, "", "resourcequotas", Some(ns)).await?;
    if quotas.is_empty() {
        return Ok(());
    }
    let delta = usage_of(req.info, obj);
    let quota_info = capstan_api::resources::find("", "v1", "resourcequotas")
        .expect("resourcequotas are served");
    // Check every quota first so a refusal charges nothing, then charge one quota at a time.
    let mut to_charge = Vec::new();
    for (quota, _) in &quotas {
        if let Some(charge) = evaluate(server, req, quota, obj, &delta).await? {
            let name = quota["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            to_charge.push((name, charge));
        }
    }
    if req.dry_run {
        return Ok(());
    }
    for (name, _) in to_charge {
        let key = quota_info.store_key(Some(ns), &name);
        let mut charged = false;
        for _ in 0..MAX_RETRIES {
            let Some((mut quota, rev)) =
                super::get(server, "", "resourcequotas", Some(ns), &name).await?
            else {
                charged = true; // deleted meanwhile: nothing to charge
                break;
            };
            let Some(requested) = evaluate(server, req, &quota, obj, &delta).await? else {
                charged = true;
                break;
            };
            // The whole status, as the controller would write it, so that a quota charged
            // before the controller's first sync shows every resource it tracks.
            let all: Usage = parse_list(&quota["spec"]["hard"])
                .into_keys()
                .map(|k| (k, 0.0))
                .collect();
            let used = used_of(server, ns, &quota, &all).await?;
            quota["status"]["hard"] = quota["spec"]["hard"].clone();
            for (k, u) in &used {
                let total = u + requested.get(k).copied().unwrap_or(0.0);
                quota["status"]["used"][k] = json!(format_quantity(total, k.ends_with("cpu")));
            }
            let bytes =
                serde_json::to_vec(&quota).map_err(|e| ApiError::internal(e.to_string()))?;
            match server.store.update(&key, bytes, rev).await {
                Ok(_) => {
                    charged = true;
                    break;
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(StoreError::NotFound(_)) => {
                    charged = true;
                    break;
                }
                Err(e) => return Err(ApiError::internal(e.to_string())),
            }
        }
        if !charged {
            return Err(req.forbidden(format_args!(
                "status unknown for quota: {name}, resources: could not update its usage"
            )));
        }
    }
    Ok(())
}

/// The part of `delta` one quota tracks (None when it tracks nothing of it), or its refusal.
async fn evaluate(
    server: &ApiServer,
    req: &Request<'_>,
    quota: &Value,
    obj: &Value,
    delta: &Usage,
) -> Result<Option<Usage>, ApiError> {
    let name = quota["metadata"]["name"].as_str().unwrap_or_default();
    let hard = parse_list(&quota["spec"]["hard"]);
    if hard.is_empty() || !matches_scopes(req, quota, obj) {
        return Ok(None);
    }
    if req.is_core("Pod") {
        let required: Vec<&str> = MUST_SPECIFY
            .into_iter()
            .filter(|r| hard.contains_key(*r))
            .collect();
        if let Some(missing) = missing_compute(obj, &required) {
            return Err(req.forbidden(format_args!("failed quota: {name}: must specify {missing}")));
        }
    }
    let requested: Usage = delta
        .iter()
        .filter(|(k, _)| hard.contains_key(*k))
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    if requested.is_empty() {
        return Ok(None);
    }
    let ns = req.namespace.unwrap_or_default();
    let used = used_of(server, ns, quota, &requested).await?;
    let exceeded: BTreeSet<&String> = requested
        .iter()
        .filter(|(k, v)| used.get(*k).copied().unwrap_or(0.0) + *v > hard[*k] + 1e-9)
        .map(|(k, _)| k)
        .collect();
    if exceeded.is_empty() {
        return Ok(Some(requested));
    }
    let show = |m: &Usage| {
        exceeded
            .iter()
            .map(|k| {
                let v = m.get(*k).copied().unwrap_or(0.0);
                format!("{k}={}", format_quantity(v, k.ends_with("cpu")))
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    let hard_text = |k: &str| quota["spec"]["hard"][k].as_str().map(String::from);
    let limited = exceeded
        .iter()
        .map(|k| {
            let v = hard_text(k).unwrap_or_else(|| format_quantity(hard[*k], k.ends_with("cpu")));
            format!("{k}={v}")
        })
        .collect::<Vec<_>>()
        .join(",");
    Err(req.forbidden(format_args!(
        "exceeded quota: {name}, requested: {}, used: {}, limited: {limited}",
        show(&requested),
        show(&used)
    )))
}

/// The quota's recorded usage of `keys`; a key the controller has not recorded yet is counted
/// from the store, so a quota created a moment ago is enforced at once.
async fn used_of(
    server: &ApiServer,
    ns: &str,
    quota: &Value,
    keys: &Usage,
) -> Result<Usage, ApiError> {
    let recorded = parse_list(&quota["status"]["used"]);
    let mut used = Usage::new();
    for k in keys.keys() {
        let v = match recorded.get(k) {
            Some(v) => *v,
            None => live_usage(server, ns, k).await?,
        };
        used.insert(k.clone(), v);
    }
    Ok(used)
}

/// What the namespace holds of one quota resource, counted from the store.
async fn live_usage(server: &ApiServer, ns: &str, key: &str) -> Result<f64, ApiError> {
    let (group, plural) = match key {
        "pods"
        | "requests.cpu"
        | "cpu"
        | "requests.memory"
        | "memory"
        | "limits.cpu"
        | "limits.memory"
        | "requests.ephemeral-storage"
        | "ephemeral-storage"
        | "limits.ephemeral-storage" => ("", "pods"),
        "services" | "services.nodeports" | "services.loadbalancers" => ("", "services"),
        "requests.storage" => ("", "persistentvolumeclaims"),
        "secrets"
        | "configmaps"
        | "persistentvolumeclaims"
        | "replicationcontrollers"
        | "resourcequotas" => ("", key),
        other => match other.strip_prefix("count/") {
            Some(r) => match r.split_once('.') {
                Some((p, g)) => (g, p),
                None => ("", r),
            },
            None => return Ok(0.0),
        },
    };
    let Some(info) = capstan_api::resources::RESOURCES
        .iter()
        .find(|r| r.group == group && r.plural == plural)
    else {
        return Ok(0.0);
    };
    let mut total = 0.0;
    for (o, _) in super::list(server, group, plural, Some(ns)).await? {
        if info.kind == "Pod" && info.group.is_empty() && !pod_counts(&o) {
            continue;
        }
        total += usage_of(info, &o).get(key).copied().unwrap_or(0.0);
    }
    Ok(total)
}

/// Pods that count against quota: not finished and not being deleted.
fn pod_counts(pod: &Value) -> bool {
    !matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    ) && crate::object::meta_str(pod, "deletionTimestamp").is_none()
}

/// Everything one object adds to quota usage.
fn usage_of(info: &capstan_api::ResourceInfo, obj: &Value) -> Usage {
    let mut u = Usage::new();
    let count = if info.group.is_empty() {
        format!("count/{}", info.plural)
    } else {
        format!("count/{}.{}", info.plural, info.group)
    };
    u.insert(count, 1.0);
    if !info.group.is_empty() {
        return u;
    }
    match info.plural {
        "pods" => {
            u.insert("pods".into(), 1.0);
            for (key, section, res) in [
                ("requests.cpu", "requests", "cpu"),
                ("cpu", "requests", "cpu"),
                ("requests.memory", "requests", "memory"),
                ("memory", "requests", "memory"),
                ("limits.cpu", "limits", "cpu"),
                ("limits.memory", "limits", "memory"),
                (
                    "requests.ephemeral-storage",
                    "requests",
                    "ephemeral-storage",
                ),
                ("ephemeral-storage", "requests", "ephemeral-storage"),
                ("limits.ephemeral-storage", "limits", "ephemeral-storage"),
            ] {
                u.insert(key.into(), pod_compute(obj, section, res));
            }
        }
        "services" => {
            u.insert("services".into(), 1.0);
            let kind = obj["spec"]["type"].as_str().unwrap_or("ClusterIP");
            let ports = obj["spec"]["ports"].as_array().map(Vec::len).unwrap_or(0) as f64;
            let (np, lb) = match kind {
                "NodePort" => (ports, 0.0),
                "LoadBalancer" => (ports, 1.0),
                _ => (0.0, 0.0),
            };
            u.insert("services.nodeports".into(), np);
            u.insert("services.loadbalancers".into(), lb);
        }
        "persistentvolumeclaims" => {
            u.insert("persistentvolumeclaims".into(), 1.0);
            let storage = obj["spec"]["resources"]["requests"]["storage"]
                .as_str()
                .and_then(quantity::parse)
                .unwrap_or(0.0);
            u.insert("requests.storage".into(), storage);
            if let Some(sc) = obj["spec"]["storageClassName"].as_str() {
                u.insert(
                    format!("{sc}.storageclass.storage.k8s.io/requests.storage"),
                    storage,
                );
                u.insert(
                    format!("{sc}.storageclass.storage.k8s.io/persistentvolumeclaims"),
                    1.0,
                );
            }
        }
        p @ ("secrets" | "configmaps" | "replicationcontrollers" | "resourcequotas") => {
            u.insert(p.into(), 1.0);
        }
        _ => {}
    }
    u
}

/// A pod's effective request or limit: containers summed, init containers as a floor, plus
/// overhead; requests fall back to limits as API defaulting does.
fn pod_compute(pod: &Value, section: &str, res: &str) -> f64 {
    let value = |c: &Value| {
        let get = |s: &str| c["resources"][s][res].as_str().and_then(quantity::parse);
        match section {
            "limits" => get("limits"),
            _ => get("requests").or_else(|| get("limits")),
        }
        .unwrap_or(0.0)
    };
    let spec = &pod["spec"];
    let sum: f64 = spec["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(value)
        .sum();
    let init = spec["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(value)
        .fold(0.0, f64::max);
    let overhead = spec["overhead"][res]
        .as_str()
        .and_then(quantity::parse)
        .unwrap_or(0.0);
    sum.max(init) + overhead
}

/// `requests.cpu for: a,b; limits.memory for: a` when containers leave required values out.
fn missing_compute(pod: &Value, required: &[&str]) -> Option<String> {
    let mut missing: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for field in ["initContainers", "containers"] {
        for c in pod["spec"][field].as_array().into_iter().flatten() {
            let has = |s: &str, r: &str| !c["resources"][s][r].is_null();
            for r in required {
                let ok = match *r {
                    "cpu" | "requests.cpu" => has("requests", "cpu"),
                    "memory" | "requests.memory" => has("requests", "memory"),
                    "limits.cpu" => has("limits", "cpu"),
                    _ => has("limits", "memory"),
                };
                if !ok {
                    missing
                        .entry(r)
                        .or_default()
                        .insert(c["name"].as_str().unwrap_or_default().to_string());
                }
            }
        }
    }
    (!missing.is_empty()).then(|| {
        missing
            .iter()
            .map(|(r, names)| {
                format!(
                    "{r} for: {}",
                    names.iter().cloned().collect::<Vec<_>>().join(",")
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    })
}

/// Quota scopes (`scopes` and `scopeSelector`) apply to pods only.
fn matches_scopes(req: &Request<'_>, quota: &Value, obj: &Value) -> bool {
    let mut terms: Vec<(String, String, Vec<String>)> = quota["spec"]["scopes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|s| (s.to_string(), "Exists".to_string(), Vec::new()))
        .collect();
    for e in quota["spec"]["scopeSelector"]["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let vals = e["values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(String::from)
            .collect();
        terms.push((
            e["scopeName"].as_str().unwrap_or_default().to_string(),
            e["operator"].as_str().unwrap_or_default().to_string(),
            vals,
        ));
    }
    if terms.is_empty() {
        return true;
    }
    if !req.is_core("Pod") {
        return false;
    }
    let spec = &obj["spec"];
    let best_effort = super::containers(spec).all(|c| {
        c["resources"]["requests"]
            .as_object()
            .is_none_or(|m| m.is_empty())
            && c["resources"]["limits"]
                .as_object()
                .is_none_or(|m| m.is_empty())
    });
    terms.iter().all(|(scope, op, vals)| match scope.as_str() {
        "Terminating" => spec["activeDeadlineSeconds"].is_i64(),
        "NotTerminating" => !spec["activeDeadlineSeconds"].is_i64(),
        "BestEffort" => best_effort,
        "NotBestEffort" => !best_effort,
        "PriorityClass" => {
            let pc = spec["priorityClassName"].as_str().filter(|s| !s.is_empty());
            match op.as_str() {
                "In" => pc.is_some_and(|p| vals.iter().any(|v| v == p)),
                "NotIn" => pc.is_none_or(|p| !vals.iter().any(|v| v == p)),
                "DoesNotExist" => pc.is_none(),
                _ => pc.is_some(),
            }
        }
        "CrossNamespacePodAffinity" => {
            let aff = &spec["affinity"];
            ["podAffinity", "podAntiAffinity"].iter().any(|k| {
                [
                    "requiredDuringSchedulingIgnoredDuringExecution",
                    "preferredDuringSchedulingIgnoredDuringExecution",
                ]
                .iter()
                .flat_map(|f| aff[*k][*f].as_array().into_iter().flatten())
                .any(|t| {
                    let t = if t["podAffinityTerm"].is_object() {
                        &t["podAffinityTerm"]
                    } else {
                        t
                    };
                    t["namespaces"].as_array().is_some_and(|a| !a.is_empty())
                        || t["namespaceSelector"].is_object()
                })
            })
        }
        _ => false,
    })
}

fn parse_list(v: &Value) -> Usage {
    v.as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| {
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => return None,
            };
            quantity::parse(&text).map(|q| (k.clone(), q))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods() -> &'static capstan_api::ResourceInfo {
        capstan_api::resources::find("", "v1", "pods").expect("pods")
    }

    #[test]
    fn pod_usage_counts_and_sums_compute() {
        let pod = json!({"spec": {
            "containers": [
                {"name": "a", "resources": {"requests": {"cpu": "100m"}, "limits": {"cpu": "200m", "memory": "64Mi"}}},
                {"name": "b", "resources": {"limits": {"cpu": "300m", "memory": "64Mi"}}},
            ],
            "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "1"}}}],
        }});
        let u = usage_of(pods(), &pod);
        assert_eq!(u["pods"], 1.0);
        assert_eq!(u["count/pods"], 1.0);
        assert_eq!(u["requests.cpu"], 1.0);
        assert!((u["limits.cpu"] - 0.5).abs() < 1e-9);
        assert_eq!(u["requests.memory"], (128u64 << 20) as f64);
        let deploy =
            capstan_api::resources::find("apps", "v1", "deployments").expect("deployments");
        assert_eq!(usage_of(deploy, &json!({}))["count/deployments.apps"], 1.0);
    }

    #[test]
    fn missing_compute_lists_containers_per_resource() {
        let pod = json!({"spec": {"containers": [
            {"name": "a", "resources": {"requests": {"cpu": "1"}}},
            {"name": "b"},
        ]}});
        assert_eq!(
            missing_compute(&pod, &["requests.cpu", "limits.memory"]).as_deref(),
            Some("limits.memory for: a,b; requests.cpu for: b")
        );
        assert_eq!(missing_compute(&pod, &[]), None);
    }

    #[test]
    fn quantities_print_canonically() {
        assert_eq!(format_quantity(0.5, true), "500m");
        assert_eq!(format_quantity(2.0, true), "2");
        assert_eq!(format_quantity((768u64 << 20) as f64, false), "768Mi");
        assert_eq!(format_quantity(3.0, false), "3");
    }
}
