//! Schema-driven walks over objects: the field set of a value, the merge of an applied
//! configuration into a live object, the comparison of two objects, and field removal.

use super::fieldpath::{Path, PathElement, Set};
use crate::schema::{PatchMeta, SchemaNode, property_type};
use serde_json::{Map, Value};

/// How a value is owned: as a whole, or through its fields / items.
#[derive(Clone, Copy, Debug)]
enum Shape<'a> {
    Leaf,
    Struct,
    Map,
    ListMap(&'a [&'static str], Option<&'static str>),
    ListSet,
}

fn shape<'a>(value: &Value, node: SchemaNode, meta: &'a PatchMeta) -> Shape<'a> {
    match value {
        Value::Object(_) if meta.map_type == Some("atomic") || node.is_atomic() => Shape::Leaf,
        Value::Object(_) if node.is_struct() => Shape::Struct,
        Value::Object(_) => Shape::Map,
        Value::Array(_) => match meta.list_type {
            Some("map") if !meta.list_map_keys.is_empty() => {
                Shape::ListMap(meta.list_map_keys, None)
            }
            Some("set") => Shape::ListSet,
            None if meta.has_strategy("merge") => match meta.patch_merge_key {
                Some(k) => Shape::ListMap(&[], Some(k)),
                None => Shape::ListSet,
            },
            _ => Shape::Leaf,
        },
        _ => Shape::Leaf,
    }
}

/// The path element of a list item.
fn item_element(item: &Value, shape: Shape) -> PathElement {
    match shape {
        Shape::ListMap(keys, single) => {
            let mut out: Vec<(String, String)> = Vec::new();
            let names: Vec<&str> = if keys.is_empty() {
                single.into_iter().collect()
            } else {
                keys.to_vec()
            };
            for k in names {
                match item.get(k) {
                    Some(v) => out.push((k.to_string(), v.to_string())),
                    // Upstream defaults `protocol` before keying ports; the applied config may omit it.
                    None if k == "protocol" => out.push((k.to_string(), "\"TCP\"".to_string())),
                    None => {}
                }
            }
            out.sort();
            PathElement::Key(out)
        }
        _ => PathElement::Value(item.to_string()),
    }
}

fn is_declared(node: SchemaNode, key: &str) -> bool {
    matches!(node, SchemaNode::Def(d) if property_type(d, key).is_some())
}

/// The fields an object sets, as structured-merge-diff's ToFieldSet: leaves, list items,
/// map entries, and empty or null struct fields.
pub fn object_set(obj: &Map<String, Value>, node: SchemaNode) -> Set {
    let mut set = Set::default();
    add_object(obj, node, &mut Vec::new(), &mut set);
    set
}

fn add_object(obj: &Map<String, Value>, node: SchemaNode, path: &mut Path, set: &mut Set) {
    for (key, value) in obj {
        let (child, meta) = node.field(key);
        path.push(PathElement::Field(key.clone()));
        let leaf = add_value(value, child, &meta, path, set);
        let empty = value.is_null() || value.as_object().is_some_and(Map::is_empty);
        if leaf || empty || !is_declared(node, key) {
            set.insert(path);
        }
        path.pop();
    }
}

/// Adds the fields below `value`; returns true when `value` is itself a leaf.
fn add_value(
    value: &Value,
    node: SchemaNode,
    meta: &PatchMeta,
    path: &mut Path,
    set: &mut Set,
) -> bool {
    let sh = shape(value, node, meta);
    match (sh, value) {
        (Shape::Struct | Shape::Map, Value::Object(m)) => add_object(m, node, path, set),
        (Shape::ListMap(..) | Shape::ListSet, Value::Array(items)) => {
            for item in items {
                path.push(item_element(item, sh));
                set.insert(path);
                if let Value::Object(m) = item {
                    add_object(m, node, path, set);
                }
                path.pop();
            }
        }
        _ => return true,
    }
    false
}

/// Merges `rhs` (the applied configuration) into `lhs` (the live object): rhs wins on leaves,
/// maps and structs merge by key, associative lists by item key.
pub fn merge_objects(
    lhs: &Map<String, Value>,
    rhs: &Map<String, Value>,
    node: SchemaNode,
) -> Map<String, Value> {
    let mut out = lhs.clone();
    for (key, r) in rhs {
        if r.is_null() {
            continue;
        }
        let (child, meta) = node.field(key);
        let merged = match lhs.get(key) {
            Some(l) => merge_values(l, r, child, &meta),
            None => r.clone(),
        };
        out.insert(key.clone(), merged);
    }
    out
}

fn merge_values(l: &Value, r: &Value, node: SchemaNode, meta: &PatchMeta) -> Value {
    let sh = shape(r, node, meta);
    match (sh, l, r) {
        (Shape::Struct | Shape::Map, Value::Object(lm), Value::Object(rm)) => {
            Value::Object(merge_objects(lm, rm, node))
        }
        (Shape::ListMap(..) | Shape::ListSet, Value::Array(la), Value::Array(ra)) => {
            Value::Array(merge_lists(la, ra, sh, node))
        }
        _ => r.clone(),
    }
}

/// structured-merge-diff's list merge: lhs-only items keep their place, shared and new items
/// follow the rhs order.
fn merge_lists(lhs: &[Value], rhs: &[Value], sh: Shape, node: SchemaNode) -> Vec<Value> {
    let lpe: Vec<PathElement> = lhs.iter().map(|i| item_element(i, sh)).collect();
    let rpe: Vec<PathElement> = rhs.iter().map(|i| item_element(i, sh)).collect();
    let shared: Vec<&PathElement> = rpe.iter().filter(|p| lpe.contains(p)).collect();
    let mut next_shared = 0;
    let mut merged: Vec<&PathElement> = Vec::new();
    let mut out = Vec::with_capacity(lhs.len() + rhs.len());
    let merge_item = |pe: &PathElement, r: &Value| -> Value {
        match (lpe.iter().position(|p| p == pe).map(|i| &lhs[i]), r) {
            (Some(Value::Object(lm)), Value::Object(rm)) => {
                Value::Object(merge_objects(lm, rm, node))
            }
            _ => r.clone(),
        }
    };
    let (mut li, mut ri) = (0, 0);
    while li < lhs.len() || ri < rhs.len() {
        if li < lhs.len() && ri < rhs.len() {
            if lpe[li] == rpe[ri] {
                merged.push(&rpe[ri]);
                out.push(merge_item(&rpe[ri], &rhs[ri]));
                li += 1;
                ri += 1;
                next_shared += 1;
                continue;
            }
            if rpe.contains(&lpe[li]) && shared.get(next_shared).is_some_and(|s| **s != lpe[li]) {
                li += 1;
                continue;
            }
        }
        if li < lhs.len() {
            if !rpe.contains(&lpe[li]) {
                out.push(lhs[li].clone());
                li += 1;
                continue;
            }
            if merged.contains(&&lpe[li]) {
                li += 1;
                continue;
            }
        }
        if ri < rhs.len() {
            merged.push(&rpe[ri]);
            out.push(merge_item(&rpe[ri], &rhs[ri]));
            if shared.get(next_shared).is_some_and(|s| **s == rpe[ri]) {
                next_shared += 1;
            }
            ri += 1;
        }
    }
    out
}

/// Fields added, modified and removed between two objects.
#[derive(Debug, Default)]
pub struct Comparison {
    pub added: Set,
    pub modified: Set,
    pub removed: Set,
}

/// Compares `old` and `new` as structured-merge-diff's TypedValue.Compare does.
pub fn compare_objects(
    old: &Map<String, Value>,
    new: &Map<String, Value>,
    node: SchemaNode,
) -> Comparison {
    let mut c = Comparison::default();
    compare_maps(Some(old), Some(new), node, &mut Vec::new(), &mut c);
    c
}

fn compare_maps(
    l: Option<&Map<String, Value>>,
    r: Option<&Map<String, Value>>,
    node: SchemaNode,
    path: &mut Path,
    c: &mut Comparison,
) {
    let mut keys: Vec<&String> = l.into_iter().flat_map(|m| m.keys()).collect();
    for k in r.into_iter().flat_map(|m| m.keys()) {
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    for key in keys {
        let (child, meta) = node.field(key);
        path.push(PathElement::Field(key.clone()));
        let lv = l.and_then(|m| m.get(key));
        let rv = r.and_then(|m| m.get(key));
        compare_values(lv, rv, child, &meta, !is_declared(node, key), path, c);
        path.pop();
    }
}

fn compare_values(
    l: Option<&Value>,
    r: Option<&Value>,
    node: SchemaNode,
    meta: &PatchMeta,
    entry: bool,
    path: &mut Path,
    c: &mut Comparison,
) {
    let sh = match (l, r) {
        (_, Some(v)) | (Some(v), None) => shape(v, node, meta),
        (None, None) => return,
    };
    let empty = |v: Option<&Value>| match v {
        None | Some(Value::Null) => true,
        Some(Value::Object(m)) => m.is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        _ => false,
    };
    let same_kind = match (l, r) {
        (Some(a), Some(b)) => std::mem::discriminant(a) == std::mem::discriminant(b),
        _ => true,
    };
    if matches!(sh, Shape::Leaf) || !same_kind || (empty(l) && empty(r)) {
        leaf_rule(l, r, path, c);
        return;
    }
    match sh {
        Shape::Struct | Shape::Map => compare_maps(
            l.and_then(Value::as_object),
            r.and_then(Value::as_object),
            node,
            path,
            c,
        ),
        _ => compare_lists(
            l.and_then(Value::as_array),
            r.and_then(Value::as_array),
            sh,
            node,
            path,
            c,
        ),
    }
    // Struct fields themselves are not owned unless upstream's zero value lacks them (maps,
    // lists and entries do); see the module docs of `apply`.
    let owned_node = entry || !matches!(sh, Shape::Struct);
    if owned_node {
        container_rule(l, r, path, c);
    }
}

fn leaf_rule(l: Option<&Value>, r: Option<&Value>, path: &Path, c: &mut Comparison) {
    match (l, r) {
        (None, Some(_)) => c.added.insert(path),
        (Some(_), None) => c.removed.insert(path),
        (Some(a), Some(b)) if a != b => c.modified.insert(path),
        _ => {}
    }
}

fn container_rule(l: Option<&Value>, r: Option<&Value>, path: &Path, c: &mut Comparison) {
    match (l, r) {
        (None, Some(_)) => c.added.insert(path),
        (Some(_), None) => c.removed.insert(path),
        _ => {}
    }
}

fn compare_lists(
    l: Option<&Vec<Value>>,
    r: Option<&Vec<Value>>,
    sh: Shape,
    node: SchemaNode,
    path: &mut Path,
    c: &mut Comparison,
) {
    let items = |v: Option<&Vec<Value>>| -> Vec<(PathElement, Value)> {
        v.map(|a| a.iter().map(|i| (item_element(i, sh), i.clone())).collect())
            .unwrap_or_default()
    };
    let (li, ri) = (items(l), items(r));
    let mut pes: Vec<&PathElement> = li.iter().map(|(p, _)| p).collect();
    for (p, _) in &ri {
        if !pes.contains(&p) {
            pes.push(p);
        }
    }
    for pe in pes {
        let lv = li.iter().find(|(p, _)| p == pe).map(|(_, v)| v);
        let rv = ri.iter().find(|(p, _)| p == pe).map(|(_, v)| v);
        path.push(pe.clone());
        match (lv, rv) {
            (Some(Value::Object(a)), Some(Value::Object(b))) => {
                compare_maps(Some(a), Some(b), node, path, c)
            }
            (None, Some(Value::Object(b))) => compare_maps(None, Some(b), node, path, c),
            (Some(Value::Object(a)), None) => compare_maps(Some(a), None, node, path, c),
            _ => {}
        }
        match (lv, rv) {
            (Some(a), Some(b)) if !a.is_object() && a != b => c.modified.insert(path),
            _ => container_rule(lv, rv, path, c),
        }
        path.pop();
    }
}

/// Removes from `obj` the member paths of `remove` that `keep` neither holds nor holds
/// anything below (structured-merge-diff's prune with owned items added back).
pub fn remove_fields(
    obj: &mut Map<String, Value>,
    remove: &Set,
    keep: &Set,
    node: SchemaNode,
    path: &mut Path,
) {
    let keys: Vec<String> = obj.keys().cloned().collect();
    for key in keys {
        let pe = PathElement::Field(key.clone());
        path.push(pe.clone());
        if remove.is_member(&pe) && !keep.has_prefix(path) {
            obj.remove(&key);
        } else if let Some(sub) = remove.child(&pe) {
            let (child, meta) = node.field(&key);
            if let Some(v) = obj.get_mut(&key) {
                remove_in_value(v, sub, keep, child, &meta, path);
            }
        }
        path.pop();
    }
}

fn remove_in_value(
    value: &mut Value,
    remove: &Set,
    keep: &Set,
    node: SchemaNode,
    meta: &PatchMeta,
    path: &mut Path,
) {
    let sh = shape(value, node, meta);
    match (sh, value) {
        (Shape::Struct | Shape::Map, Value::Object(m)) => {
            remove_fields(m, remove, keep, node, path)
        }
        (Shape::ListMap(..) | Shape::ListSet, Value::Array(items)) => {
            let mut kept = Vec::with_capacity(items.len());
            for mut item in std::mem::take(items) {
                let pe = item_element(&item, sh);
                path.push(pe.clone());
                let drop = remove.is_member(&pe) && !keep.has_prefix(path);
                if !drop {
                    if let (Some(sub), Value::Object(m)) = (remove.child(&pe), &mut item) {
                        remove_fields(m, sub, keep, node, path);
                    }
                    kept.push(item);
                }
                path.pop();
            }
            *items = kept;
        }
        _ => {}
    }
}
