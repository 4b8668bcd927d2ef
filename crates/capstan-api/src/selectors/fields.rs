//! Field selectors: `f=v`, `f==v`, `f!=v` joined by commas, with `\,` `\=` `\\` escapes, and
//! the per-kind field labels upstream's registries expose (`GetAttrs`) and accept
//! (`AddFieldLabelConversionFunc`).

use crate::resources::ResourceInfo;
use crate::status::ApiError;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;

/// `=`/`==` select equal values, `!=` different ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldOperator {
    Equals,
    DoubleEquals,
    NotEquals,
}

/// One `field op value` term.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldRequirement {
    pub field: String,
    pub operator: FieldOperator,
    /// Unescaped value.
    pub value: String,
}

/// A parsed field selector; empty matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector {
    pub requirements: Vec<FieldRequirement>,
}

impl FieldRequirement {
    /// A missing field reads as "", as upstream's `fields.Set.Get`.
    pub fn matches(&self, fields: &BTreeMap<String, String>) -> bool {
        let got = fields.get(&self.field).map(String::as_str).unwrap_or("");
        match self.operator {
            FieldOperator::Equals | FieldOperator::DoubleEquals => got == self.value,
            FieldOperator::NotEquals => got != self.value,
        }
    }
}

impl fmt::Display for FieldSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .requirements
            .iter()
            .map(|r| {
                let op = match r.operator {
                    FieldOperator::Equals => "=",
                    FieldOperator::DoubleEquals => "==",
                    FieldOperator::NotEquals => "!=",
                };
                format!("{}{op}{}", r.field, escape_value(&r.value))
            })
            .collect();
        write!(f, "{}", parts.join(","))
    }
}

impl FieldSelector {
    pub fn everything() -> Self {
        FieldSelector::default()
    }

    /// Parses `?fieldSelector=` for `info`'s kind; unknown syntax or a field the kind does not
    /// support is a 400 BadRequest with upstream's message.
    pub fn parse(info: &ResourceInfo, selector: &str) -> Result<FieldSelector, ApiError> {
        let mut sel = FieldSelector::parse_any(selector)?;
        for r in &mut sel.requirements {
            r.field = convert_field_label(info, &r.field).map_err(ApiError::bad_request)?;
        }
        Ok(sel)
    }

    /// Parses without checking which fields the kind supports.
    pub fn parse_any(selector: &str) -> Result<FieldSelector, ApiError> {
        let mut parts = split_terms(selector);
        parts.sort();
        let mut requirements = Vec::new();
        for part in parts.into_iter().filter(|p| !p.is_empty()) {
            let Some((field, operator, rhs)) = split_term(part) else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{selector}'; can't understand '{part}'"
                )));
            };
            let value = unescape_value(rhs).map_err(ApiError::bad_request)?;
            requirements.push(FieldRequirement {
                field: field.to_string(),
                operator,
                value,
            });
        }
        Ok(FieldSelector { requirements })
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    pub fn matches(&self, fields: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(fields))
    }

    /// The value required for `field` by an `=`/`==` term (e.g. `spec.nodeName` for kubelets).
    pub fn requires_exact_match(&self, field: &str) -> Option<&str> {
        self.requirements
            .iter()
            .find(|r| r.field == field && r.operator != FieldOperator::NotEquals)
            .map(|r| r.value.as_str())
    }
}

/// Splits on commas not preceded by a backslash escape.
fn split_terms(s: &str) -> Vec<&str> {
    if s.is_empty() {
        return Vec::new();
    }
    let mut terms = Vec::new();
    let mut start = 0;
    let mut in_slash = false;
    for (i, c) in s.char_indices() {
        if in_slash {
            in_slash = false;
        } else if c == '\\' {
            in_slash = true;
        } else if c == ',' {
            terms.push(&s[start..i]);
            start = i + 1;
        }
    }
    terms.push(&s[start..]);
    terms
}

/// The first operator found, trying `!=`, `==`, `=` at each position as upstream.
fn split_term(term: &str) -> Option<(&str, FieldOperator, &str)> {
    const OPS: [(&str, FieldOperator); 3] = [
        ("!=", FieldOperator::NotEquals),
        ("==", FieldOperator::DoubleEquals),
        ("=", FieldOperator::Equals),
    ];
    for (i, _) in term.char_indices() {
        let rest = &term[i..];
        for (text, op) in OPS {
            if rest.starts_with(text) {
                return Some((&term[..i], op, &term[i + text.len()..]));
            }
        }
    }
    None
}

fn unescape_value(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut in_slash = false;
    for c in s.chars() {
        if in_slash {
            if !matches!(c, '\\' | ',' | '=') {
                return Err(format!(
                    "invalid field selector: invalid escape sequence: \\{c}"
                ));
            }
            out.push(c);
            in_slash = false;
            continue;
        }
        match c {
            '\\' => in_slash = true,
            // Go prints the rune with %v, i.e. as its number
            ',' | '=' => {
                return Err(format!(
                    "invalid field selector: unescaped character in value: {}",
                    c as u32
                ));
            }
            _ => out.push(c),
        }
    }
    if in_slash {
        return Err("invalid field selector: invalid escape sequence: \\".to_string());
    }
    Ok(out)
}

/// Escapes `\`, `,` and `=` in a value (upstream's `EscapeValue`).
pub fn escape_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '\\' | ',' | '=') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The field label conversion upstream registers for the kind (or the default one).
fn convert_field_label(info: &ResourceInfo, label: &str) -> Result<String, String> {
    let meta_ns = ["metadata.name", "metadata.namespace"];
    let not_supported = || format!("field label not supported: {label}");
    let extra: &[&str] = match (info.group, info.kind) {
        ("", "Pod") => {
            if label == "spec.host" {
                return Ok("spec.nodeName".into());
            }
            &[
                "spec.nodeName",
                "spec.restartPolicy",
                "spec.schedulerName",
                "spec.serviceAccountName",
                "spec.hostNetwork",
                "status.phase",
                "status.podIP",
                "status.podIPs",
                "status.nominatedNodeName",
            ]
        }
        ("", "Node") => {
            return if label == "metadata.name" || label == "spec.unschedulable" {
                Ok(label.into())
            } else {
                Err(not_supported())
            };
        }
        ("", "Namespace") => {
            return if label == "metadata.name" || label == "status.phase" {
                Ok(label.into())
            } else {
                Err(not_supported())
            };
        }
        ("", "Event") => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        ("", "Secret") => &["type"],
        ("", "Service") => &["spec.clusterIP", "spec.type"],
        ("", "ReplicationController") => &["status.replicas"],
        ("batch", "Job") => {
            return if meta_ns.contains(&label) || label == "status.successful" {
                Ok(label.into())
            } else {
                Err(format!(
                    "field label {label:?} not supported for batchv1.Job"
                ))
            };
        }
        ("apps", "StatefulSet") => {
            return if meta_ns.contains(&label) || label == "status.successful" {
                Ok(label.into())
            } else {
                Err(format!(
                    "field label not supported for appsv1.StatefulSet: {label}"
                ))
            };
        }
        _ => {
            return if meta_ns.contains(&label) {
                Ok(label.into())
            } else {
                Err(format!(
                    "{label:?} is not a known field selector: only \"metadata.name\", \"metadata.namespace\""
                ))
            };
        }
    };
    if meta_ns.contains(&label) || extra.contains(&label) {
        Ok(label.into())
    } else {
        Err(not_supported())
    }
}

fn text(obj: &Value, pointer: &str) -> String {
    match obj.pointer(pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Bool(b)) => b.to_string(),
        _ => String::new(),
    }
}

fn boolean(obj: &Value, pointer: &str) -> String {
    obj.pointer(pointer)
        .and_then(Value::as_bool)
        .unwrap_or(false)
        .to_string()
}

fn int(obj: &Value, pointer: &str) -> String {
    obj.pointer(pointer)
        .and_then(Value::as_i64)
        .unwrap_or(0)
        .to_string()
}

/// The fields a field selector is matched against for this object, as upstream's
/// `GetAttrs`: `metadata.name`, `metadata.namespace` (namespaced kinds) and per-kind fields.
pub fn object_fields(info: &ResourceInfo, obj: &Value) -> BTreeMap<String, String> {
    let mut f = BTreeMap::new();
    f.insert("metadata.name".to_string(), text(obj, "/metadata/name"));
    if info.namespaced {
        f.insert(
            "metadata.namespace".to_string(),
            text(obj, "/metadata/namespace"),
        );
    }
    let mut put = |k: &str, v: String| {
        f.insert(k.to_string(), v);
    };
    match (info.group, info.kind) {
        ("", "Pod") => {
            for (k, p) in [
                ("spec.nodeName", "/spec/nodeName"),
                ("spec.restartPolicy", "/spec/restartPolicy"),
                ("spec.schedulerName", "/spec/schedulerName"),
                ("spec.serviceAccountName", "/spec/serviceAccountName"),
                ("status.phase", "/status/phase"),
                ("status.nominatedNodeName", "/status/nominatedNodeName"),
            ] {
                put(k, text(obj, p));
            }
            put("spec.hostNetwork", boolean(obj, "/spec/hostNetwork"));
            let ip = match text(obj, "/status/podIPs/0/ip") {
                s if s.is_empty() => text(obj, "/status/podIP"),
                s => s,
            };
            put("status.podIP", ip);
        }
        ("", "Node") => put("spec.unschedulable", boolean(obj, "/spec/unschedulable")),
        ("", "Namespace") => put("status.phase", text(obj, "/status/phase")),
        ("", "Secret") => put("type", text(obj, "/type")),
        ("", "Service") => {
            put("spec.clusterIP", text(obj, "/spec/clusterIP"));
            put("spec.type", text(obj, "/spec/type"));
        }
        ("", "Event") => {
            for sub in [
                "kind",
                "namespace",
                "name",
                "uid",
                "apiVersion",
                "resourceVersion",
                "fieldPath",
            ] {
                put(
                    &format!("involvedObject.{sub}"),
                    text(obj, &format!("/involvedObject/{sub}")),
                );
            }
            put("reason", text(obj, "/reason"));
            put("reportingComponent", text(obj, "/reportingComponent"));
            put("source", text(obj, "/source/component"));
            put("type", text(obj, "/type"));
        }
        ("events.k8s.io", "Event") => {
            for sub in [
                "kind",
                "namespace",
                "name",
                "uid",
                "apiVersion",
                "resourceVersion",
                "fieldPath",
            ] {
                put(
                    &format!("involvedObject.{sub}"),
                    text(obj, &format!("/regarding/{sub}")),
                );
            }
            put("reason", text(obj, "/reason"));
            put("reportingComponent", text(obj, "/reportingController"));
            put("source", text(obj, "/deprecatedSource/component"));
            put("type", text(obj, "/type"));
        }
        ("apps", "ReplicaSet") | ("", "ReplicationController") => {
            put("status.replicas", int(obj, "/status/replicas"))
        }
        ("batch", "Job") => put("status.successful", int(obj, "/status/succeeded")),
        _ => {}
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::find;
    use serde_json::json;

    fn pods() -> &'static ResourceInfo {
        find("", "v1", "pods").unwrap()
    }

    #[test]
    fn parses_terms_and_escapes() {
        let s = FieldSelector::parse_any(r"b!=x\,y,a==1\=2\\").unwrap();
        assert_eq!(s.requirements.len(), 2);
        assert_eq!(
            s.requirements[0],
            FieldRequirement {
                field: "a".into(),
                operator: FieldOperator::DoubleEquals,
                value: r"1=2\".into()
            }
        );
        assert_eq!(s.requirements[1].value, "x,y");
        assert_eq!(s.to_string(), r"a==1\=2\\,b!=x\,y");
        assert!(FieldSelector::parse_any("").unwrap().is_empty());
        assert!(FieldSelector::parse_any("a=b,").unwrap().requirements.len() == 1);
    }

    #[test]
    fn rejects_bad_syntax_with_upstream_messages() {
        let msg = |s: &str| FieldSelector::parse_any(s).unwrap_err().message;
        assert_eq!(
            msg("abc"),
            "invalid selector: 'abc'; can't understand 'abc'"
        );
        assert_eq!(
            msg(r"a=b\c"),
            r"invalid field selector: invalid escape sequence: \c"
        );
        assert_eq!(
            msg(r"a=b\"),
            r"invalid field selector: invalid escape sequence: \"
        );
        assert_eq!(
            msg("a=b=c"),
            "invalid field selector: unescaped character in value: 61"
        );
    }

    #[test]
    fn field_support_per_kind() {
        let cases: &[(&str, &str, &str, Result<&str, &str>)] = &[
            ("", "pods", "spec.nodeName=n1", Ok("spec.nodeName")),
            ("", "pods", "spec.host=n1", Ok("spec.nodeName")),
            ("", "pods", "status.phase!=Running", Ok("status.phase")),
            (
                "",
                "pods",
                "spec.foo=1",
                Err("field label not supported: spec.foo"),
            ),
            (
                "",
                "nodes",
                "spec.unschedulable=false",
                Ok("spec.unschedulable"),
            ),
            (
                "",
                "nodes",
                "metadata.namespace=x",
                Err("field label not supported: metadata.namespace"),
            ),
            ("", "secrets", "type=Opaque", Ok("type")),
            (
                "",
                "events",
                "involvedObject.name=web",
                Ok("involvedObject.name"),
            ),
            ("", "namespaces", "status.phase=Active", Ok("status.phase")),
            (
                "batch",
                "jobs",
                "status.successful=1",
                Ok("status.successful"),
            ),
            (
                "batch",
                "jobs",
                "spec.x=1",
                Err("field label \"spec.x\" not supported for batchv1.Job"),
            ),
            ("", "configmaps", "metadata.name=a", Ok("metadata.name")),
            (
                "apps",
                "deployments",
                "spec.replicas=1",
                Err(
                    "\"spec.replicas\" is not a known field selector: only \"metadata.name\", \"metadata.namespace\"",
                ),
            ),
        ];
        for (g, plural, sel, want) in cases {
            let info = find(g, "v1", plural).unwrap();
            match (FieldSelector::parse(info, sel), want) {
                (Ok(s), Ok(field)) => assert_eq!(s.requirements[0].field, *field, "{sel}"),
                (Err(e), Err(msg)) => {
                    assert_eq!(e.message, *msg, "{sel}");
                    assert_eq!(e.code, 400);
                }
                (got, _) => panic!("{plural} {sel}: {got:?}"),
            }
        }
    }

    #[test]
    fn pod_fields_and_matching() {
        let pod = json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"nodeName": "n1", "restartPolicy": "Always", "schedulerName": "default-scheduler"},
            "status": {"phase": "Running", "podIPs": [{"ip": "10.42.0.5"}], "podIP": "10.42.0.5"}
        });
        let f = object_fields(pods(), &pod);
        assert_eq!(f["spec.hostNetwork"], "false");
        assert_eq!(f["status.podIP"], "10.42.0.5");
        assert_eq!(f["metadata.namespace"], "default");
        for (sel, want) in [
            ("spec.nodeName=n1", true),
            ("spec.nodeName=n2", false),
            ("spec.nodeName!=n2", true),
            ("status.phase=Running,metadata.name=web", true),
            ("status.nominatedNodeName=", true),
            ("spec.host=n1", true),
            ("spec.serviceAccountName=x", false),
        ] {
            assert_eq!(
                FieldSelector::parse(pods(), sel).unwrap().matches(&f),
                want,
                "{sel}"
            );
        }
        assert_eq!(
            FieldSelector::parse(pods(), "spec.nodeName=n1")
                .unwrap()
                .requires_exact_match("spec.nodeName"),
            Some("n1")
        );
    }

    #[test]
    fn other_kinds_fields() {
        let node = find("", "v1", "nodes").unwrap();
        let f = object_fields(
            node,
            &json!({"metadata": {"name": "n"}, "spec": {"unschedulable": true}}),
        );
        assert_eq!(f.get("metadata.namespace"), None);
        assert_eq!(f["spec.unschedulable"], "true");
        let ev = find("", "v1", "events").unwrap();
        let f = object_fields(
            ev,
            &json!({"metadata": {"name": "e", "namespace": "d"}, "involvedObject": {"kind": "Pod", "name": "web"},
            "source": {"component": "kubelet"}, "type": "Normal", "reason": "Pulled"}),
        );
        assert_eq!(
            (
                f["involvedObject.kind"].as_str(),
                f["source"].as_str(),
                f["involvedObject.uid"].as_str()
            ),
            ("Pod", "kubelet", "")
        );
        let job = find("batch", "v1", "jobs").unwrap();
        assert_eq!(
            object_fields(job, &json!({"status": {"succeeded": 2}}))["status.successful"],
            "2"
        );
        let svc = find("", "v1", "services").unwrap();
        assert_eq!(
            object_fields(svc, &json!({"spec": {"type": "NodePort"}}))["spec.type"],
            "NodePort"
        );
    }
}
