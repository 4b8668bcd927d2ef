//! Field paths and field sets in structured-merge-diff's model, with the `FieldsV1` encoding
//! (`f:<field>`, `k:<keys json>`, `v:<value json>`, `i:<index>`, `.` for the node itself).

use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// One step of a path: a field, a list-map item by keys, a set item by value, or an index.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PathElement {
    Field(String),
    /// The item's key fields, sorted by name: (name, JSON value).
    Key(Vec<(String, String)>),
    /// A set item, as JSON.
    Value(String),
    Index(usize),
}

impl PathElement {
    /// The `FieldsV1` key of this element.
    pub fn encode(&self) -> String {
        match self {
            PathElement::Field(f) => format!("f:{f}"),
            PathElement::Key(keys) => {
                let parts: Vec<String> = keys
                    .iter()
                    .map(|(k, v)| format!("{}:{v}", Value::String(k.clone())))
                    .collect();
                format!("k:{{{}}}", parts.join(","))
            }
            PathElement::Value(v) => format!("v:{v}"),
            PathElement::Index(i) => format!("i:{i}"),
        }
    }

    /// Parses a `FieldsV1` key; None for "." and for malformed keys.
    pub fn decode(s: &str) -> Option<PathElement> {
        let (kind, rest) = s.split_once(':')?;
        match kind {
            "f" => Some(PathElement::Field(rest.to_string())),
            "v" => serde_json::from_str::<Value>(rest)
                .ok()
                .map(|v| PathElement::Value(v.to_string())),
            "i" => rest.parse().ok().map(PathElement::Index),
            "k" => {
                let Value::Object(m) = serde_json::from_str::<Value>(rest).ok()? else {
                    return None;
                };
                let mut keys: Vec<(String, String)> =
                    m.into_iter().map(|(k, v)| (k, v.to_string())).collect();
                keys.sort();
                Some(PathElement::Key(keys))
            }
            _ => None,
        }
    }

    /// How upstream prints this element in a path: `.field`, `[k="v",...]`, `[=v]`, `[3]`.
    pub fn display(&self) -> String {
        match self {
            PathElement::Field(f) => format!(".{f}"),
            PathElement::Key(keys) => {
                let parts: Vec<String> = keys.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("[{}]", parts.join(","))
            }
            PathElement::Value(v) => format!("[={v}]"),
            PathElement::Index(i) => format!("[{i}]"),
        }
    }
}

/// A path from the object root.
pub type Path = Vec<PathElement>;

/// Renders a path as upstream does in conflict messages, e.g. `.spec.containers[name="a"].image`.
pub fn path_string(path: &[PathElement]) -> String {
    path.iter().map(PathElement::display).collect()
}

/// A set of paths as a tree: `members` end here, `children` continue.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Set {
    members: BTreeSet<PathElement>,
    children: BTreeMap<PathElement, Set>,
}

impl Set {
    pub fn is_empty(&self) -> bool {
        self.members.is_empty() && self.children.values().all(Set::is_empty)
    }

    pub fn insert(&mut self, path: &[PathElement]) {
        match path {
            [] => {}
            [last] => {
                self.members.insert(last.clone());
            }
            [first, rest @ ..] => self.children.entry(first.clone()).or_default().insert(rest),
        }
    }

    pub fn has(&self, path: &[PathElement]) -> bool {
        match path {
            [] => false,
            [last] => self.members.contains(last),
            [first, rest @ ..] => self.children.get(first).is_some_and(|c| c.has(rest)),
        }
    }

    /// True if the set holds `path` or any path below it.
    pub fn has_prefix(&self, path: &[PathElement]) -> bool {
        match path {
            [] => !self.is_empty(),
            [last] => {
                self.members.contains(last)
                    || self.children.get(last).is_some_and(|c| !c.is_empty())
            }
            [first, rest @ ..] => self.children.get(first).is_some_and(|c| c.has_prefix(rest)),
        }
    }

    /// The subtree below `pe`, if any.
    pub fn child(&self, pe: &PathElement) -> Option<&Set> {
        self.children.get(pe)
    }

    pub fn is_member(&self, pe: &PathElement) -> bool {
        self.members.contains(pe)
    }

    pub fn union(&self, other: &Set) -> Set {
        let mut out = self.clone();
        out.members.extend(other.members.iter().cloned());
        for (pe, child) in &other.children {
            let merged = match out.children.get(pe) {
                Some(mine) => mine.union(child),
                None => child.clone(),
            };
            out.children.insert(pe.clone(), merged);
        }
        out
    }

    pub fn difference(&self, other: &Set) -> Set {
        let members = self
            .members
            .iter()
            .filter(|m| !other.members.contains(*m))
            .cloned()
            .collect();
        let children = self
            .children
            .iter()
            .map(|(pe, c)| {
                (
                    pe.clone(),
                    other
                        .children
                        .get(pe)
                        .map_or_else(|| c.clone(), |o| c.difference(o)),
                )
            })
            .filter(|(_, c)| !c.is_empty())
            .collect();
        Set { members, children }
    }

    pub fn intersection(&self, other: &Set) -> Set {
        let members = self.members.intersection(&other.members).cloned().collect();
        let children = self
            .children
            .iter()
            .filter_map(|(pe, c)| {
                other
                    .children
                    .get(pe)
                    .map(|o| (pe.clone(), c.intersection(o)))
            })
            .filter(|(_, c)| !c.is_empty())
            .collect();
        Set { members, children }
    }

    /// Every member path, in order.
    pub fn paths(&self) -> Vec<Path> {
        let mut out = Vec::new();
        self.collect(&mut Vec::new(), &mut out);
        out
    }

    fn collect(&self, prefix: &mut Path, out: &mut Vec<Path>) {
        let mut pes: BTreeSet<&PathElement> = self.members.iter().collect();
        pes.extend(self.children.keys());
        for pe in pes {
            prefix.push(pe.clone());
            if self.members.contains(pe) {
                out.push(prefix.clone());
            }
            if let Some(c) = self.children.get(pe) {
                c.collect(prefix, out);
            }
            prefix.pop();
        }
    }

    /// The `fieldsV1` JSON of this set.
    pub fn to_fields_v1(&self) -> Value {
        let mut pes: BTreeSet<&PathElement> = self.members.iter().collect();
        pes.extend(
            self.children
                .keys()
                .filter(|pe| !self.children[*pe].is_empty()),
        );
        let mut out = Map::new();
        for pe in pes {
            let mut node = match self.children.get(pe) {
                Some(c) if !c.is_empty() => c.to_fields_v1(),
                _ => Value::Object(Map::new()),
            };
            if self.members.contains(pe)
                && let Value::Object(m) = &mut node
                && !m.is_empty()
            {
                let mut with_dot = Map::new();
                with_dot.insert(".".into(), Value::Object(Map::new()));
                with_dot.extend(std::mem::take(m));
                *m = with_dot;
            }
            out.insert(pe.encode(), node);
        }
        Value::Object(out)
    }

    /// Parses `fieldsV1`; unknown keys are skipped.
    pub fn from_fields_v1(v: &Value) -> Set {
        let mut set = Set::default();
        let Value::Object(m) = v else {
            return set;
        };
        for (k, child) in m {
            let Some(pe) = PathElement::decode(k) else {
                continue;
            };
            let Value::Object(cm) = child else {
                continue;
            };
            if cm.is_empty() || cm.contains_key(".") {
                set.members.insert(pe.clone());
            }
            let sub = Set::from_fields_v1(child);
            if !sub.is_empty() {
                set.children.insert(pe, sub);
            }
        }
        set
    }
}
