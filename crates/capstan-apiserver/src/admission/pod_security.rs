//! PodSecurity: the Pod Security Standards per namespace, from the labels
//! `pod-security.kubernetes.io/{enforce,warn,audit}[-version]`. Pods that fail the enforce
//! level are refused; failures of the warn level come back as `Warning:` headers. Workload
//! objects (Deployment, Job, ...) are only warned about, for the stricter of the two levels.
//!
//! Cluster defaults: enforce=baseline (a namespace without the label gets baseline), warn and
//! audit privileged. There are no exempt users, runtime classes or namespaces (as upstream's
//! default configuration): kube-system is baseline too unless labelled otherwise. Audit labels
//! are accepted but only enforce and warn act.

use super::{Operation, Request, pss_checks};
use crate::server::ApiServer;
use capstan_api::ApiError;
use serde_json::Value;

pub const LABEL_PREFIX: &str = "pod-security.kubernetes.io/";
/// The level of namespaces without an enforce label.
pub const DEFAULT_ENFORCE: Level = Level::Baseline;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Privileged,
    Baseline,
    Restricted,
}

impl Level {
    pub fn parse(s: &str) -> Option<Level> {
        match s {
            "privileged" => Some(Level::Privileged),
            "baseline" => Some(Level::Baseline),
            "restricted" => Some(Level::Restricted),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        }
    }
}

/// One mode's policy: level and the version label (`latest` or `v1.N`), checks are latest's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub level: Level,
    pub version: String,
}

impl Policy {
    /// `baseline:latest`
    pub fn label(&self) -> String {
        format!("{}:{}", self.level.as_str(), self.version)
    }
}

/// The policy of `mode` ("enforce", "warn") from a namespace's labels; an invalid level is
/// treated as restricted, as upstream does.
pub fn policy(labels: &Value, mode: &str, default: Level) -> Policy {
    let level = match labels[format!("{LABEL_PREFIX}{mode}")].as_str() {
        None => default,
        Some(s) => Level::parse(s).unwrap_or(Level::Restricted),
    };
    let version = labels[format!("{LABEL_PREFIX}{mode}-version")]
        .as_str()
        .filter(|v| *v == "latest" || v.starts_with("v1."))
        .unwrap_or("latest")
        .to_string();
    Policy { level, version }
}

/// `reason (detail), reason (detail)` for a pod's metadata and spec at `level`.
pub fn evaluate(level: Level, meta: &Value, spec: &Value) -> Option<String> {
    if level == Level::Privileged {
        return None;
    }
    let v = pss_checks::check(meta, spec, level == Level::Restricted);
    (!v.is_empty()).then(|| {
        v.iter()
            .map(|(r, d)| format!("{r} ({d})"))
            .collect::<Vec<_>>()
            .join(", ")
    })
}

/// The pod template of a workload object, as (metadata, spec).
fn template(req: &Request<'_>, obj: &Value) -> Option<(Value, Value)> {
    let t = match (req.info.group, req.info.kind) {
        ("", "PodTemplate") => &obj["template"],
        ("", "ReplicationController")
        | ("apps", "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet")
        | ("batch", "Job") => &obj["spec"]["template"],
        ("batch", "CronJob") => &obj["spec"]["jobTemplate"]["spec"]["template"],
        _ => return None,
    };
    Some((t["metadata"].clone(), t["spec"].clone()))
}

pub(crate) async fn admit(
    server: &ApiServer,
    req: &Request<'_>,
    obj: &Value,
) -> Result<(), ApiError> {
    if req.is_core("Namespace") && req.subresource.is_none() {
        return check_existing_pods(server, req, obj).await;
    }
    if req.subresource.is_some() || !req.info.namespaced {
        return Ok(());
    }
    let is_pod = req.is_core("Pod");
    let (meta, spec, old_spec) = if is_pod {
        let old = req.old.map(|o| o["spec"].clone());
        (obj["metadata"].clone(), obj["spec"].clone(), old)
    } else {
        let Some((m, s)) = template(req, obj) else {
            return Ok(());
        };
        let old = req.old.and_then(|o| template(req, o)).map(|(_, s)| s);
        (m, s, old)
    };
    // Updates that leave the pod spec alone (labels, status, finalizers) are not re-judged.
    if req.operation == Operation::Update && old_spec.as_ref() == Some(&spec) {
        return Ok(());
    }
    let ns = req.namespace.unwrap_or_default();
    let labels = super::get(server, "", "namespaces", None, ns)
        .await?
        .map(|(n, _)| n["metadata"]["labels"].clone())
        .unwrap_or(Value::Null);
    let enforce = policy(&labels, "enforce", DEFAULT_ENFORCE);
    let warn = policy(&labels, "warn", Level::Privileged);
    if is_pod {
        if let Some(msg) = evaluate(enforce.level, &meta, &spec) {
            return Err(req.forbidden(format_args!(
                "violates PodSecurity {:?}: {msg}",
                enforce.label()
            )));
        }
        if warn.level > enforce.level
            && let Some(msg) = evaluate(warn.level, &meta, &spec)
        {
            super::warn(format!(
                "would violate PodSecurity {:?}: {msg}",
                warn.label()
            ));
        }
        return Ok(());
    }
    let stricter = if warn.level >= enforce.level {
        warn
    } else {
        enforce
    };
    if let Some(msg) = evaluate(stricter.level, &meta, &spec) {
        super::warn(format!(
            "would violate PodSecurity {:?}: {msg}",
            stricter.label()
        ));
    }
    Ok(())
}

/// A namespace whose enforce level changes: warn about the pods already there that the new
/// level would refuse, as upstream does.
async fn check_existing_pods(
    server: &ApiServer,
    req: &Request<'_>,
    ns: &Value,
) -> Result<(), ApiError> {
    let Some(old) = req.old.filter(|_| req.operation == Operation::Update) else {
        return Ok(());
    };
    let new = policy(&ns["metadata"]["labels"], "enforce", DEFAULT_ENFORCE);
    if new == policy(&old["metadata"]["labels"], "enforce", DEFAULT_ENFORCE)
        || new.level == Level::Privileged
    {
        return Ok(());
    }
    let mut lines = Vec::new();
    for (pod, _) in super::list(server, "", "pods", Some(req.name)).await? {
        let v = pss_checks::check(
            &pod["metadata"],
            &pod["spec"],
            new.level == Level::Restricted,
        );
        if !v.is_empty() {
            let reasons: Vec<&str> = v.iter().map(|(r, _)| r.as_str()).collect();
            let name = pod["metadata"]["name"].as_str().unwrap_or_default();
            lines.push(format!("{name}: {}", reasons.join(", ")));
        }
    }
    if !lines.is_empty() {
        super::warn(format!(
            "existing pods in namespace {:?} violate the new PodSecurity enforce level {:?}",
            req.name,
            new.label()
        ));
        lines.into_iter().for_each(super::warn);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn policy_from_labels() {
        let labels = json!({"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "v1.30", "pod-security.kubernetes.io/warn": "bogus"});
        assert_eq!(
            policy(&labels, "enforce", Level::Baseline).label(),
            "restricted:v1.30"
        );
        assert_eq!(
            policy(&labels, "warn", Level::Privileged).level,
            Level::Restricted
        );
        assert_eq!(
            policy(&Value::Null, "enforce", DEFAULT_ENFORCE).label(),
            "baseline:latest"
        );
    }

    #[test]
    fn privileged_container_message() {
        let spec = json!({"containers": [{"name": "c", "securityContext": {"privileged": true}}]});
        assert_eq!(
            evaluate(Level::Baseline, &json!({}), &spec).as_deref(),
            Some("privileged (container \"c\" must not set securityContext.privileged=true)")
        );
        assert_eq!(evaluate(Level::Privileged, &json!({}), &spec), None);
    }
}
