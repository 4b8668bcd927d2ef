//! Label selectors and node selector terms, compiled once per pod and matched many times.

use k8s_openapi::api::core::v1::{NodeSelector, NodeSelectorRequirement};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use std::collections::BTreeMap;

/// Set-based operators of label and node selector requirements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    In,
    NotIn,
    Exists,
    DoesNotExist,
    Gt,
    Lt,
}

/// One requirement on one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirement {
    pub key: String,
    pub op: Op,
    pub values: Vec<String>,
}

impl Requirement {
    fn parse(key: &str, op: &str, values: Option<&Vec<String>>) -> Option<Requirement> {
        let op = match op {
            "In" => Op::In,
            "NotIn" => Op::NotIn,
            "Exists" => Op::Exists,
            "DoesNotExist" => Op::DoesNotExist,
            "Gt" => Op::Gt,
            "Lt" => Op::Lt,
            _ => return None,
        };
        Some(Requirement {
            key: key.to_string(),
            op,
            values: values.cloned().unwrap_or_default(),
        })
    }

    /// Whether `value` (the label's value, if present) satisfies this requirement.
    pub fn matches_value(&self, value: Option<&str>) -> bool {
        match self.op {
            Op::In => value.is_some_and(|v| self.values.iter().any(|x| x == v)),
            Op::NotIn => value.is_none_or(|v| !self.values.iter().any(|x| x == v)),
            Op::Exists => value.is_some(),
            Op::DoesNotExist => value.is_none(),
            Op::Gt | Op::Lt => {
                let (Some(v), Some(bound)) = (
                    value.and_then(|v| v.parse::<i64>().ok()),
                    self.values.first().and_then(|b| b.parse::<i64>().ok()),
                ) else {
                    return false;
                };
                if self.op == Op::Gt {
                    v > bound
                } else {
                    v < bound
                }
            }
        }
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matches_value(labels.get(&self.key).map(String::as_str))
    }
}

/// A compiled metav1.LabelSelector. An absent selector matches nothing; an empty one, everything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector {
    reqs: Vec<Requirement>,
    nothing: bool,
}

impl Selector {
    pub fn everything() -> Selector {
        Selector {
            reqs: Vec::new(),
            nothing: false,
        }
    }

    pub fn nothing() -> Selector {
        Selector {
            reqs: Vec::new(),
            nothing: true,
        }
    }

    /// From an API selector; an unknown operator makes it match nothing (as upstream's error).
    pub fn from_api(sel: Option<&LabelSelector>) -> Selector {
        let Some(sel) = sel else {
            return Selector::nothing();
        };
        let mut reqs: Vec<Requirement> = sel
            .match_labels
            .iter()
            .flatten()
            .map(|(k, v)| Requirement {
                key: k.clone(),
                op: Op::In,
                values: vec![v.clone()],
            })
            .collect();
        for e in sel.match_expressions.iter().flatten() {
            let LabelSelectorRequirement {
                key,
                operator,
                values,
            } = e;
            match Requirement::parse(key, operator, values.as_ref()) {
                Some(r) if !matches!(r.op, Op::Gt | Op::Lt) => reqs.push(r),
                _ => return Selector::nothing(),
            }
        }
        Selector {
            reqs,
            nothing: false,
        }
    }

    /// From a plain `key: value` map (nodeSelector, Service selectors).
    pub fn from_map(map: &BTreeMap<String, String>) -> Selector {
        Selector {
            reqs: map
                .iter()
                .map(|(k, v)| Requirement {
                    key: k.clone(),
                    op: Op::In,
                    values: vec![v.clone()],
                })
                .collect(),
            nothing: false,
        }
    }

    /// Adds `key In (value)` (matchLabelKeys of topology spread constraints).
    pub fn and_equals(&mut self, key: &str, value: &str) {
        self.reqs.push(Requirement {
            key: key.to_string(),
            op: Op::In,
            values: vec![value.to_string()],
        });
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        !self.nothing && self.reqs.iter().all(|r| r.matches(labels))
    }
}

/// One node selector term: all expressions (on labels) and fields (metadata.name) must hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeTerm {
    exprs: Vec<Requirement>,
    fields: Vec<Requirement>,
    valid: bool,
}

fn compile(reqs: Option<&Vec<NodeSelectorRequirement>>) -> Option<Vec<Requirement>> {
    reqs.into_iter()
        .flatten()
        .map(|r| Requirement::parse(&r.key, &r.operator, r.values.as_ref()))
        .collect()
}

impl NodeTerm {
    pub fn from_api(term: &k8s_openapi::api::core::v1::NodeSelectorTerm) -> NodeTerm {
        let exprs = compile(term.match_expressions.as_ref());
        let fields = compile(term.match_fields.as_ref());
        let valid = exprs.is_some()
            && fields
                .as_ref()
                .is_some_and(|f| f.iter().all(|r| r.key == "metadata.name"));
        NodeTerm {
            exprs: exprs.unwrap_or_default(),
            fields: fields.unwrap_or_default(),
            valid,
        }
    }

    /// An empty term matches no node (upstream).
    pub fn matches(&self, node_name: &str, labels: &BTreeMap<String, String>) -> bool {
        self.valid
            && !(self.exprs.is_empty() && self.fields.is_empty())
            && self.exprs.iter().all(|r| r.matches(labels))
            && self.fields.iter().all(|r| r.matches_value(Some(node_name)))
    }
}

/// A compiled v1.NodeSelector: terms are ORed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSelectorMatcher {
    terms: Vec<NodeTerm>,
}

impl NodeSelectorMatcher {
    pub fn from_api(sel: &NodeSelector) -> NodeSelectorMatcher {
        NodeSelectorMatcher {
            terms: sel
                .node_selector_terms
                .iter()
                .map(NodeTerm::from_api)
                .collect(),
        }
    }

    pub fn matches(&self, node_name: &str, labels: &BTreeMap<String, String>) -> bool {
        self.terms.iter().any(|t| t.matches(node_name, labels))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn label_selectors_match_like_upstream() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        let cases = [
            (json!({}), true),
            (json!({"matchLabels": {"app": "web"}}), true),
            (json!({"matchLabels": {"app": "db"}}), false),
            (
                json!({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["front", "x"]}]}),
                true,
            ),
            (
                json!({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["front"]}]}),
                false,
            ),
            (
                json!({"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["a"]}]}),
                true,
            ),
            (
                json!({"matchExpressions": [{"key": "app", "operator": "Exists"}]}),
                true,
            ),
            (
                json!({"matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]}),
                false,
            ),
            (
                json!({"matchExpressions": [{"key": "app", "operator": "Bogus"}]}),
                false,
            ),
        ];
        for (sel, want) in cases {
            let s: LabelSelector = serde_json::from_value(sel.clone()).unwrap();
            assert_eq!(Selector::from_api(Some(&s)).matches(&l), want, "{sel}");
        }
        assert!(!Selector::from_api(None).matches(&l));
    }

    #[test]
    fn node_selector_terms_or_and_fields() {
        let sel: NodeSelector = serde_json::from_value(json!({"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]},
                                  {"key": "cores", "operator": "Gt", "values": ["4"]}]},
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n9"]}]}
        ]}))
        .unwrap();
        let m = NodeSelectorMatcher::from_api(&sel);
        assert!(m.matches("n1", &labels(&[("disk", "ssd"), ("cores", "8")])));
        assert!(!m.matches("n1", &labels(&[("disk", "ssd"), ("cores", "2")])));
        assert!(!m.matches("n1", &labels(&[("disk", "hdd"), ("cores", "8")])));
        assert!(m.matches("n9", &labels(&[])));
        let empty: NodeSelector =
            serde_json::from_value(json!({"nodeSelectorTerms": [{}]})).unwrap();
        assert!(!NodeSelectorMatcher::from_api(&empty).matches("n1", &labels(&[])));
    }
}
