//! Workload validation: Deployment, ReplicaSet, StatefulSet, DaemonSet, Job, CronJob.

use super::meta::validate_labels;
use super::names::is_label_value;
use super::pod::validate_template;
use super::util::{go_string_map, int, invalid_raw, non_negative, s};
use crate::selectors::LabelSelector;
use crate::status::Cause;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as metav1;
use serde_json::Value;
use std::collections::BTreeMap;

/// Selector present, valid, non-empty and matching the template's labels.
fn validate_selector(spec: &Value, path: &str, empty_msg: Option<&str>) -> Vec<Cause> {
    let sel_path = format!("{path}.selector");
    let Some(sel) = spec.get("selector").filter(|v| !v.is_null()) else {
        return vec![Cause::required(sel_path, "")];
    };
    let mut errs = validate_labels(
        sel.get("matchLabels").and_then(Value::as_object),
        &format!("{sel_path}.matchLabels"),
    );
    for (i, e) in sel
        .get("matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let ep = format!("{sel_path}.matchExpressions[{i}]");
        let op = s(e, "operator");
        let values = e
            .get("values")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        match op {
            "In" | "NotIn" if values == 0 => errs.push(Cause::required(
                format!("{ep}.values"),
                "must be specified when `operator` is 'In' or 'NotIn'",
            )),
            "Exists" | "DoesNotExist" if values > 0 => errs.push(Cause::forbidden(
                format!("{ep}.values"),
                "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            )),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => errs.push(Cause::invalid(
                format!("{ep}.operator"),
                &Value::String(other.into()),
                "not a valid selector operator",
            )),
        }
        for (j, v) in e
            .get("values")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let v = v.as_str().unwrap_or("");
            for m in is_label_value(v) {
                errs.push(Cause::invalid(
                    format!("{ep}.values[{j}]"),
                    &Value::String(v.into()),
                    &m,
                ));
            }
        }
    }
    if !errs.is_empty() {
        return errs;
    }
    let parsed = serde_json::from_value::<metav1::LabelSelector>(sel.clone())
        .ok()
        .and_then(|s| LabelSelector::from_label_selector(&s).ok());
    let Some(selector) = parsed else { return errs };
    if selector.is_empty() {
        match empty_msg {
            Some(msg) => errs.push(invalid_raw(&sel_path, &selector_shown(sel), msg)),
            None => errs.push(Cause::required(sel_path, "")),
        }
        return errs;
    }
    let labels_val = spec
        .pointer("/template/metadata/labels")
        .and_then(Value::as_object);
    let labels: BTreeMap<String, String> = labels_val
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
        .collect();
    if !selector.matches(&labels) {
        errs.push(invalid_raw(
            &format!("{path}.template.metadata.labels"),
            &go_string_map(labels_val),
            "`selector` does not match template `labels`",
        ));
    }
    errs
}

fn selector_shown(sel: &Value) -> String {
    format!(
        "v1.LabelSelector{}",
        serde_json::to_string(sel).unwrap_or_default()
    )
}

fn selector_immutable(spec: &Value, old: Option<&Value>, path: &str) -> Option<Cause> {
    let old_sel = old?.pointer("/spec/selector")?;
    let new_sel = spec.get("selector")?;
    (old_sel != new_sel).then(|| {
        invalid_raw(
            &format!("{path}.selector"),
            &selector_shown(new_sel),
            "field is immutable",
        )
    })
}

fn restart_always(spec: &Value, path: &str) -> Option<Cause> {
    let policy = spec
        .pointer("/template/spec/restartPolicy")
        .and_then(Value::as_str)
        .unwrap_or("Always");
    (policy != "Always").then(|| {
        Cause::not_supported(
            format!("{path}.template.spec.restartPolicy"),
            &Value::String(policy.into()),
            &["Always"],
        )
    })
}

fn replicated(obj: &Value, old: Option<&Value>, empty_msg: Option<&str>) -> Vec<Cause> {
    let null = Value::Null;
    let spec = obj.get("spec").unwrap_or(&null);
    let mut errs = Vec::new();
    errs.extend(non_negative("spec.replicas", int(spec, "replicas")));
    errs.extend(non_negative(
        "spec.minReadySeconds",
        int(spec, "minReadySeconds"),
    ));
    errs.extend(non_negative(
        "spec.revisionHistoryLimit",
        int(spec, "revisionHistoryLimit"),
    ));
    errs.extend(validate_selector(spec, "spec", empty_msg));
    errs.extend(validate_template(spec.get("template"), "spec.template"));
    errs.extend(restart_always(spec, "spec"));
    errs.extend(selector_immutable(spec, old, "spec"));
    errs
}

pub fn validate_deployment(d: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut errs = replicated(d, old, Some("empty selector is invalid for deployment"));
    let null = Value::Null;
    let spec = d.get("spec").unwrap_or(&null);
    errs.extend(validate_strategy(
        spec.get("strategy"),
        "spec.strategy",
        "Recreate",
    ));
    if let Some(pd) = int(spec, "progressDeadlineSeconds")
        && pd <= int(spec, "minReadySeconds").unwrap_or(0)
    {
        errs.push(Cause::invalid(
            "spec.progressDeadlineSeconds",
            &Value::from(pd),
            "must be greater than minReadySeconds",
        ));
    }
    errs
}

/// Deployment / DaemonSet strategy: type, rollingUpdate percent-or-int values, not both zero.
fn validate_strategy(strategy: Option<&Value>, path: &str, other: &str) -> Vec<Cause> {
    let mut errs = Vec::new();
    let Some(st) = strategy else { return errs };
    let ty = s(st, "type");
    let supported = ["RollingUpdate", other];
    if !ty.is_empty() && !supported.contains(&ty) {
        errs.push(Cause::not_supported(
            format!("{path}.type"),
            &Value::String(ty.into()),
            &supported,
        ));
    }
    let Some(ru) = st.get("rollingUpdate").filter(|v| !v.is_null()) else {
        return errs;
    };
    if ty == other {
        errs.push(Cause::forbidden(
            format!("{path}.rollingUpdate"),
            &format!("may not be specified when strategy `type` is '{other}'"),
        ));
        return errs;
    }
    let mut zero = [false, false];
    for (i, key) in ["maxUnavailable", "maxSurge"].into_iter().enumerate() {
        let field = format!("{path}.rollingUpdate.{key}");
        match ru.get(key) {
            Some(Value::Number(n)) => {
                let n = n.as_i64().unwrap_or(0);
                zero[i] = n == 0;
                errs.extend(non_negative(&field, Some(n)));
            }
            Some(Value::String(p)) => match p.strip_suffix('%').and_then(|n| n.parse::<i64>().ok()) {
                Some(n) => {
                    zero[i] = n == 0;
                    if key == "maxUnavailable" && n > 100 {
                        errs.push(Cause::invalid(field, &Value::String(p.clone()), "must not be greater than 100%"));
                    }
                }
                None => errs.push(Cause::invalid(field, &Value::String(p.clone()), "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')")),
            },
            _ => {}
        }
    }
    if zero == [true, true] {
        let shown = ru
            .get("maxUnavailable")
            .map(|v| v.to_string())
            .unwrap_or_default();
        errs.push(invalid_raw(
            &format!("{path}.rollingUpdate.maxUnavailable"),
            &shown,
            "may not be 0 when `maxSurge` is 0",
        ));
    }
    errs
}

pub fn validate_replica_set(rs: &Value, old: Option<&Value>) -> Vec<Cause> {
    replicated(rs, old, None)
}

pub fn validate_stateful_set(sts: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut errs = replicated(sts, old, None);
    let null = Value::Null;
    let spec = sts.get("spec").unwrap_or(&null);
    let pmp = s(spec, "podManagementPolicy");
    if !pmp.is_empty() && !["OrderedReady", "Parallel"].contains(&pmp) {
        errs.push(Cause::invalid(
            "spec.podManagementPolicy",
            &Value::String(pmp.into()),
            "must be 'OrderedReady' or 'Parallel'",
        ));
    }
    let ust = spec
        .pointer("/updateStrategy/type")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !ust.is_empty() && !["RollingUpdate", "OnDelete"].contains(&ust) {
        errs.push(Cause::not_supported(
            "spec.updateStrategy.type",
            &Value::String(ust.into()),
            &["OnDelete", "RollingUpdate"],
        ));
    }
    if let Some(old_spec) = old.and_then(|o| o.get("spec")) {
        let strip = |v: &Value| {
            let mut v = v.clone();
            if let Some(m) = v.as_object_mut() {
                for k in [
                    "replicas",
                    "ordinals",
                    "template",
                    "updateStrategy",
                    "persistentVolumeClaimRetentionPolicy",
                    "minReadySeconds",
                ] {
                    m.remove(k);
                }
            }
            v
        };
        if strip(spec) != strip(old_spec) {
            errs.push(Cause::forbidden("spec", "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden"));
        }
    }
    errs
}

pub fn validate_daemon_set(ds: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut errs = replicated(ds, old, None);
    let null = Value::Null;
    let spec = ds.get("spec").unwrap_or(&null);
    errs.extend(validate_strategy(
        spec.get("updateStrategy"),
        "spec.updateStrategy",
        "OnDelete",
    ));
    errs
}

fn validate_job_spec(spec: &Value, path: &str) -> Vec<Cause> {
    let mut errs = Vec::new();
    for key in [
        "parallelism",
        "completions",
        "backoffLimit",
        "activeDeadlineSeconds",
        "ttlSecondsAfterFinished",
    ] {
        errs.extend(non_negative(&format!("{path}.{key}"), int(spec, key)));
    }
    let policy = spec
        .pointer("/template/spec/restartPolicy")
        .and_then(Value::as_str)
        .unwrap_or("");
    let allowed = ["OnFailure", "Never"];
    if policy.is_empty() {
        errs.push(Cause::required(
            format!("{path}.template.spec.restartPolicy"),
            "valid values: \"OnFailure\", \"Never\"",
        ));
    } else if !allowed.contains(&policy) {
        errs.push(Cause::not_supported(
            format!("{path}.template.spec.restartPolicy"),
            &Value::String(policy.into()),
            &allowed,
        ));
    }
    errs.extend(validate_template(
        spec.get("template"),
        &format!("{path}.template"),
    ));
    if spec.get("manualSelector").and_then(Value::as_bool) == Some(true)
        || spec.get("selector").is_some()
    {
        errs.extend(validate_selector(spec, path, None));
    }
    errs
}

pub fn validate_job(job: &Value, old: Option<&Value>) -> Vec<Cause> {
    let null = Value::Null;
    let spec = job.get("spec").unwrap_or(&null);
    let mut errs = validate_job_spec(spec, "spec");
    if let Some(old_spec) = old.and_then(|o| o.get("spec")) {
        for key in ["completions", "selector", "completionMode"] {
            if old_spec.get(key).is_some() && spec.get(key) != old_spec.get(key) {
                let shown = spec
                    .get(key)
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "null".into());
                errs.push(invalid_raw(
                    &format!("spec.{key}"),
                    &shown,
                    "field is immutable",
                ));
            }
        }
        let suspended = old_spec.get("suspend").and_then(Value::as_bool) == Some(true);
        if !suspended && spec.get("template") != old_spec.get("template") {
            errs.push(invalid_raw(
                "spec.template",
                "core.PodTemplateSpec{...}",
                "field is immutable",
            ));
        }
    }
    errs
}

pub fn validate_cron_job(cj: &Value) -> Vec<Cause> {
    let mut errs = Vec::new();
    let name = cj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    if name.len() > 52 {
        errs.push(Cause::invalid(
            "metadata.name",
            &Value::String(name.into()),
            "must be no more than 52 characters",
        ));
    }
    let null = Value::Null;
    let spec = cj.get("spec").unwrap_or(&null);
    let schedule = s(spec, "schedule");
    if schedule.is_empty() {
        errs.push(Cause::required("spec.schedule", ""));
    } else if let Err(e) = check_schedule(schedule) {
        errs.push(Cause::invalid(
            "spec.schedule",
            &Value::String(schedule.into()),
            &e,
        ));
    }
    let cp = s(spec, "concurrencyPolicy");
    if !cp.is_empty() && !["Allow", "Forbid", "Replace"].contains(&cp) {
        errs.push(Cause::not_supported(
            "spec.concurrencyPolicy",
            &Value::String(cp.into()),
            &["Allow", "Forbid", "Replace"],
        ));
    }
    for key in [
        "startingDeadlineSeconds",
        "successfulJobsHistoryLimit",
        "failedJobsHistoryLimit",
    ] {
        errs.extend(non_negative(&format!("spec.{key}"), int(spec, key)));
    }
    errs.extend(validate_job_spec(
        spec.pointer("/jobTemplate/spec").unwrap_or(&null),
        "spec.jobTemplate.spec",
    ));
    errs
}

/// Standard 5-field cron syntax or a `@` descriptor, as robfig/cron's parser accepts.
fn check_schedule(schedule: &str) -> Result<(), String> {
    let body = schedule
        .split_whitespace()
        .filter(|f| !f.starts_with("TZ=") && !f.starts_with("CRON_TZ="))
        .collect::<Vec<_>>();
    if let [d] = body.as_slice()
        && d.starts_with('@')
    {
        return match *d {
            "@yearly" | "@annually" | "@monthly" | "@weekly" | "@daily" | "@midnight"
            | "@hourly" => Ok(()),
            _ if d.starts_with("@every ") => Ok(()),
            _ => Err(format!("unrecognized descriptor: {d}")),
        };
    }
    if body.len() != 5 {
        return Err(format!(
            "expected exactly 5 fields, found {}: {schedule}",
            body.len()
        ));
    }
    let ok = |f: &str| {
        f.chars()
            .all(|c| c.is_ascii_alphanumeric() || "*/,-?".contains(c))
    };
    match body.iter().find(|f| !ok(f)) {
        Some(f) => Err(format!("failed to parse int from {f}")),
        None => Ok(()),
    }
}
