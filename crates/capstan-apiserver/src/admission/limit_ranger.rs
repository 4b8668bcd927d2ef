//! LimitRanger: the LimitRanges of a pod's namespace give its containers default requests and
//! limits, then bound them (min, max, maxLimitRequestRatio) per Container and per Pod.

use super::Request;
use crate::server::ApiServer;
use capstan_api::{ApiError, quantity};
use serde_json::{Map, Value, json};
use std::collections::BTreeSet;

const ANNOTATION: &str = "kubernetes.io/limit-ranger";

async fn items(server: &ApiServer, ns: &str) -> Result<Vec<Value>, ApiError> {
    Ok(super::list(server, "", "limitranges", Some(ns))
        .await?
        .into_iter()
        .flat_map(|(lr, _)| lr["spec"]["limits"].as_array().cloned().unwrap_or_default())
        .collect())
}

pub(crate) async fn mutate(
    server: &ApiServer,
    req: &Request<'_>,
    pod: &mut Value,
) -> Result<(), ApiError> {
    let items = items(server, req.namespace.unwrap_or_default()).await?;
    apply_defaults(&items, pod);
    Ok(())
}

/// An item's defaults after the LimitRange's own defaulting: `default` falls back to `max`,
/// `defaultRequest` to `default`, then to `min`.
fn item_defaults(item: &Value) -> (Map<String, Value>, Map<String, Value>) {
    let map = |f: &str| item[f].as_object().cloned().unwrap_or_default();
    let mut limits = map("default");
    for (k, v) in map("max") {
        limits.entry(k).or_insert(v);
    }
    let mut requests = map("defaultRequest");
    for (k, v) in limits.iter().chain(map("min").iter()) {
        requests.entry(k.clone()).or_insert(v.clone());
    }
    (requests, limits)
}

/// Fill missing container requests and limits from Container items, noting what was set.
fn apply_defaults(items: &[Value], pod: &mut Value) {
    let mut notes = Vec::new();
    for item in items.iter().filter(|i| i["type"] == "Container") {
        let (def_req, def_lim) = item_defaults(item);
        for (field, kind) in [
            ("initContainers", "init container"),
            ("containers", "container"),
        ] {
            let Some(cs) = pod["spec"][field].as_array_mut() else {
                continue;
            };
            for c in cs {
                let name = c["name"].as_str().unwrap_or_default().to_string();
                let res = &mut c["resources"];
                if !res.is_object() {
                    *res = json!({});
                }
                let mut set = |section: &str, defaults: &Map<String, Value>| {
                    let mut names = BTreeSet::new();
                    if defaults.is_empty() {
                        return names;
                    }
                    let sec = &mut res[section];
                    if !sec.is_object() {
                        *sec = json!({});
                    }
                    if let Some(m) = sec.as_object_mut() {
                        for (k, v) in defaults {
                            if !m.contains_key(k) {
                                m.insert(k.clone(), v.clone());
                                names.insert(k.clone());
                            }
                        }
                    }
                    names
                };
                let lims = set("limits", &def_lim);
                let reqs = set("requests", &def_req);
                let join = |s: &BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>().join(", ");
                if !reqs.is_empty() {
                    notes.push(format!("{} request for {kind} {name}", join(&reqs)));
                }
                if !lims.is_empty() {
                    notes.push(format!("{} limit for {kind} {name}", join(&lims)));
                }
            }
        }
    }
    if !notes.is_empty() {
        let meta = crate::object::meta_mut(pod);
        let ann = meta.entry("annotations").or_insert_with(|| json!({}));
        ann[ANNOTATION] = json!(format!("LimitRanger plugin set: {}", notes.join("; ")));
    }
}

pub(crate) async fn validate(
    server: &ApiServer,
    req: &Request<'_>,
    pod: &Value,
) -> Result<(), ApiError> {
    let items = items(server, req.namespace.unwrap_or_default()).await?;
    let errs = check(&items, pod);
    if errs.is_empty() {
        return Ok(());
    }
    Err(req.forbidden(aggregate(&errs)))
}

/// Upstream's aggregate error text: one message alone, several in brackets, no repeats.
pub(crate) fn aggregate(errs: &[String]) -> String {
    let mut seen = BTreeSet::new();
    let uniq: Vec<&String> = errs.iter().filter(|e| seen.insert(e.as_str())).collect();
    match uniq.as_slice() {
        [one] => one.to_string(),
        many => format!(
            "[{}]",
            many.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// A resource amount as written (for messages) and as a number.
#[derive(Clone)]
struct Amount {
    text: String,
    value: f64,
}

fn amount(v: &Value) -> Option<Amount> {
    let text = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    quantity::parse(&text).map(|value| Amount { text, value })
}

type Amounts = std::collections::BTreeMap<String, Amount>;

fn amounts(v: &Value) -> Amounts {
    v.as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| amount(v).map(|a| (k.clone(), a)))
        .collect()
}

/// Every violation of the Container and Pod items.
fn check(items: &[Value], pod: &Value) -> Vec<String> {
    let mut errs = Vec::new();
    for item in items {
        let kind = item["type"].as_str().unwrap_or_default();
        let sets: Vec<(Amounts, Amounts)> = match kind {
            "Container" => ["initContainers", "containers"]
                .iter()
                .flat_map(|f| pod["spec"][*f].as_array().into_iter().flatten())
                .map(|c| {
                    (
                        amounts(&c["resources"]["requests"]),
                        amounts(&c["resources"]["limits"]),
                    )
                })
                .collect(),
            "Pod" => vec![pod_totals(pod)],
            _ => continue,
        };
        for (requests, limits) in &sets {
            for (res, min) in amounts(&item["min"]) {
                if let Some(e) = min_constraint(kind, &res, &min, requests, limits) {
                    errs.push(e);
                }
            }
            for (res, max) in amounts(&item["max"]) {
                if let Some(e) = max_constraint(kind, &res, &max, requests, limits) {
                    errs.push(e);
                }
            }
            for (res, ratio) in amounts(&item["maxLimitRequestRatio"]) {
                if let Some(e) = ratio_constraint(kind, &res, &ratio, requests, limits) {
                    errs.push(e);
                }
            }
        }
    }
    errs
}

/// Pod-level requests and limits: containers summed, init containers as a floor.
fn pod_totals(pod: &Value) -> (Amounts, Amounts) {
    let mut out = (Amounts::new(), Amounts::new());
    for (i, section) in ["requests", "limits"].into_iter().enumerate() {
        let target = if i == 0 { &mut out.0 } else { &mut out.1 };
        let mut sums: std::collections::BTreeMap<String, f64> = Default::default();
        for c in pod["spec"]["containers"].as_array().into_iter().flatten() {
            for (k, a) in amounts(&c["resources"][section]) {
                *sums.entry(k).or_default() += a.value;
            }
        }
        for c in pod["spec"]["initContainers"]
            .as_array()
            .into_iter()
            .flatten()
        {
            for (k, a) in amounts(&c["resources"][section]) {
                let e = sums.entry(k).or_default();
                *e = e.max(a.value);
            }
        }
        for (k, v) in sums {
            let text = capstan_api::quantity::format(v, k == "cpu");
            target.insert(k, Amount { text, value: v });
        }
    }
    out
}

fn min_constraint(
    kind: &str,
    res: &str,
    min: &Amount,
    req: &Amounts,
    lim: &Amounts,
) -> Option<String> {
    let Some(r) = req.get(res) else {
        return Some(format!(
            "minimum {res} usage per {kind} is {}.  No request is specified",
            min.text
        ));
    };
    if r.value < min.value {
        return Some(format!(
            "minimum {res} usage per {kind} is {}, but request is {}",
            min.text, r.text
        ));
    }
    match lim.get(res) {
        Some(l) if l.value < min.value => Some(format!(
            "minimum {res} usage per {kind} is {}, but limit is {}",
            min.text, l.text
        )),
        _ => None,
    }
}

fn max_constraint(
    kind: &str,
    res: &str,
    max: &Amount,
    req: &Amounts,
    lim: &Amounts,
) -> Option<String> {
    let Some(l) = lim.get(res) else {
        return Some(format!(
            "maximum {res} usage per {kind} is {}.  No limit is specified",
            max.text
        ));
    };
    if l.value > max.value {
        return Some(format!(
            "maximum {res} usage per {kind} is {}, but limit is {}",
            max.text, l.text
        ));
    }
    match req.get(res) {
        Some(r) if r.value > max.value => Some(format!(
            "maximum {res} usage per {kind} is {}, but request is {}",
            max.text, r.text
        )),
        _ => None,
    }
}

fn ratio_constraint(
    kind: &str,
    res: &str,
    ratio: &Amount,
    req: &Amounts,
    lim: &Amounts,
) -> Option<String> {
    let r = req.get(res).map(|a| a.value).unwrap_or(0.0);
    if r == 0.0 {
        return Some(format!(
            "{res} max limit to request ratio per {kind} is {}, but no request is specified or request is 0",
            ratio.text
        ));
    }
    let Some(l) = lim.get(res) else {
        return Some(format!(
            "{res} max limit to request ratio per {kind} is {}, but no limit is specified or limit is 0",
            ratio.text
        ));
    };
    let observed = l.value / r;
    (observed > ratio.value).then(|| {
        format!(
            "{res} max limit to request ratio per {kind} is {}, but provided ratio is {observed:.6}",
            ratio.text
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(resources: Value) -> Value {
        json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "x", "resources": resources}]}})
    }

    #[test]
    fn defaults_fill_only_missing_values_and_annotate() {
        let items = vec![
            json!({"type": "Container", "default": {"cpu": "500m", "memory": "128Mi"}, "defaultRequest": {"cpu": "100m"}}),
        ];
        // API defaulting already copied the limit into the request.
        let mut p = pod(json!({"limits": {"memory": "64Mi"}, "requests": {"memory": "64Mi"}}));
        apply_defaults(&items, &mut p);
        let r = &p["spec"]["containers"][0]["resources"];
        assert_eq!(r["limits"], json!({"cpu": "500m", "memory": "64Mi"}));
        assert_eq!(r["requests"], json!({"cpu": "100m", "memory": "64Mi"}));
        assert_eq!(
            p["metadata"]["annotations"][ANNOTATION],
            "LimitRanger plugin set: cpu request for container c; cpu limit for container c"
        );
        let mut p = pod(json!({}));
        apply_defaults(&items, &mut p);
        let r = &p["spec"]["containers"][0]["resources"];
        assert_eq!(r["requests"], json!({"cpu": "100m", "memory": "128Mi"}));
        assert_eq!(
            p["metadata"]["annotations"][ANNOTATION],
            "LimitRanger plugin set: cpu, memory request for container c; cpu, memory limit for container c"
        );
    }

    #[test]
    fn min_max_and_ratio_use_upstream_messages() {
        let items = vec![
            json!({"type": "Container", "min": {"cpu": "100m"}, "max": {"cpu": "1"}, "maxLimitRequestRatio": {"cpu": "2"}}),
        ];
        assert!(
            check(
                &items,
                &pod(json!({"requests": {"cpu": "200m"}, "limits": {"cpu": "300m"}}))
            )
            .is_empty()
        );
        assert_eq!(
            check(
                &items,
                &pod(json!({"requests": {"cpu": "50m"}, "limits": {"cpu": "2"}}))
            ),
            vec![
                "minimum cpu usage per Container is 100m, but request is 50m",
                "maximum cpu usage per Container is 1, but limit is 2",
                "cpu max limit to request ratio per Container is 2, but provided ratio is 40.000000",
            ]
        );
        assert_eq!(
            check(&items, &pod(json!({}))),
            vec![
                "minimum cpu usage per Container is 100m.  No request is specified",
                "maximum cpu usage per Container is 1.  No limit is specified",
                "cpu max limit to request ratio per Container is 2, but no request is specified or request is 0",
            ]
        );
        let pod_items = vec![json!({"type": "Pod", "max": {"memory": "1Gi"}})];
        let mut two = pod(json!({"limits": {"memory": "768Mi"}}));
        two["spec"]["containers"]
            .as_array_mut()
            .expect("containers")
            .push(json!({"name": "d", "resources": {"limits": {"memory": "512Mi"}}}));
        assert_eq!(
            check(&pod_items, &two),
            vec!["maximum memory usage per Pod is 1Gi, but limit is 1280Mi"]
        );
        assert_eq!(aggregate(&["a".into(), "a".into()]), "a");
        assert_eq!(aggregate(&["a".into(), "b".into()]), "[a, b]");
    }
}
