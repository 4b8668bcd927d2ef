//! Strategic merge patch, as upstream's `strategicpatch.StrategicMergeMapPatch` applies it
//! (MergeParallelList and IgnoreUnmatchedNulls both on).

use super::PatchError;
use crate::schema::{PatchMeta, SchemaNode};
use serde_json::{Map, Value};

const DIRECTIVE: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const DELETE_PRIMITIVE_PREFIX: &str = "$deleteFromPrimitiveList";
const SET_ORDER_PREFIX: &str = "$setElementOrder";

const BAD_RETAIN_KEYS: &str = "invalid patch format of retainKeys";
const BAD_PRIMITIVE_LIST: &str = "invalid patch format of primitive list";
const BAD_SET_ORDER: &str = "invalid patch format of setElementOrder list";

type Result<T> = std::result::Result<T, PatchError>;

/// Merges `patch` into `original`, `node` being the schema of both.
pub fn strategic_merge(
    mut original: Map<String, Value>,
    mut patch: Map<String, Value>,
    node: SchemaNode,
) -> Result<Map<String, Value>> {
    if let Some(directive) = patch.get(DIRECTIVE).cloned() {
        return directive_in_map(&directive, patch);
    }
    apply_retain_keys(&mut original, &mut patch)?;
    merge_set_element_orders(&mut original, &mut patch, node)?;
    for (key, patch_value) in patch {
        let (key, delete_list) = match key.strip_prefix(DELETE_PRIMITIVE_PREFIX) {
            Some(rest) => (
                rest.strip_prefix('/')
                    .ok_or_else(|| bad(BAD_PRIMITIVE_LIST))?
                    .to_string(),
                true,
            ),
            None => (key, false),
        };
        if patch_value.is_null() {
            original.remove(&key);
            continue;
        }
        let (child, meta) = node.field(&key);
        let merged = match original.remove(&key) {
            None if delete_list => continue,
            None => fresh_value(patch_value, child, &meta)?,
            Some(current) => merge_value(current, patch_value, child, &meta, delete_list)?,
        };
        original.insert(key, merged);
    }
    Ok(original)
}

/// `$patch` in a map: `replace` keeps the patch as the whole value, `delete` empties it.
fn directive_in_map(
    directive: &Value,
    mut patch: Map<String, Value>,
) -> Result<Map<String, Value>> {
    match directive.as_str() {
        Some("replace") => {
            patch.remove(DIRECTIVE);
            Ok(patch)
        }
        Some("delete") => Ok(Map::new()),
        _ => Err(PatchError::Internal(format!(
            "unknown patch type: {} in map: {}",
            go_fmt(directive),
            Value::Object(patch)
        ))),
    }
}

/// `$retainKeys`: drops keys of `original` not listed; every key set in the patch must be listed.
fn apply_retain_keys(
    original: &mut Map<String, Value>,
    patch: &mut Map<String, Value>,
) -> Result<()> {
    let Some(retain) = patch.remove(RETAIN_KEYS) else {
        return Ok(());
    };
    let Value::Array(retain) = retain else {
        return Err(bad(BAD_RETAIN_KEYS));
    };
    let listed = |k: &str| retain.iter().any(|r| r.as_str() == Some(k));
    for (k, v) in patch.iter() {
        let directive = k.starts_with(DELETE_PRIMITIVE_PREFIX) || k.starts_with(SET_ORDER_PREFIX);
        if !v.is_null() && !directive && !listed(k) {
            return Err(bad(BAD_RETAIN_KEYS));
        }
    }
    original.retain(|k, _| listed(k));
    Ok(())
}

/// A patch value for a key the original lacks: taken as is, minus nulls and directives.
fn fresh_value(patch_value: Value, node: SchemaNode, meta: &PatchMeta) -> Result<Value> {
    match patch_value {
        Value::Object(p) if meta.patch_strategy != Some("replace") => {
            strategic_merge(Map::new(), p, node).map(Value::Object)
        }
        Value::Array(p) if meta.has_strategy("merge") => {
            merge_list(Vec::new(), p, node, meta, false).map(Value::Array)
        }
        other => Ok(other),
    }
}

fn merge_value(
    current: Value,
    patch_value: Value,
    node: SchemaNode,
    meta: &PatchMeta,
    delete_list: bool,
) -> Result<Value> {
    match (current, patch_value) {
        (Value::Object(c), Value::Object(p)) => {
            if meta.patch_strategy == Some("replace") {
                Ok(Value::Object(p))
            } else {
                strategic_merge(c, p, node).map(Value::Object)
            }
        }
        (Value::Array(c), Value::Array(p)) => {
            if meta.has_strategy("merge") {
                merge_list(c, p, node, meta, delete_list).map(Value::Array)
            } else {
                Ok(Value::Array(p))
            }
        }
        // A deletion list never replaces a value of another type.
        (current, _) if delete_list => Ok(current),
        (_, p) => Ok(p),
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Map,
    Scalar,
}

/// The common kind of the elements of `lists`, as upstream's sliceElementType checks it.
fn element_kind(lists: &[&[Value]]) -> Result<Option<Kind>> {
    let mut seen: Option<&Value> = None;
    for v in lists.iter().flat_map(|l| l.iter()) {
        if v.is_array() {
            return Err(PatchError::Unprocessable(
                "lists of lists are not supported".into(),
            ));
        }
        if let Some(prev) = seen
            && std::mem::discriminant(prev) != std::mem::discriminant(v)
        {
            let shown: Vec<String> = lists
                .iter()
                .map(|l| Value::Array(l.to_vec()).to_string())
                .collect();
            return Err(PatchError::Internal(format!(
                "list element types are not identical: {}",
                shown.join(" ")
            )));
        }
        seen = Some(v);
    }
    Ok(seen.map(|v| {
        if v.is_object() {
            Kind::Map
        } else {
            Kind::Scalar
        }
    }))
}

/// Merges two lists with the `merge` strategy.
fn merge_list(
    original: Vec<Value>,
    patch: Vec<Value>,
    node: SchemaNode,
    meta: &PatchMeta,
    delete_list: bool,
) -> Result<Vec<Value>> {
    let Some(kind) = element_kind(&[&original, &patch])? else {
        return Ok(original);
    };
    let key = meta.patch_merge_key.unwrap_or("");
    let (server_order, merged, patch) = match kind {
        Kind::Scalar if delete_list => {
            return Ok(original
                .into_iter()
                .filter(|v| !patch.contains(v))
                .collect());
        }
        Kind::Scalar => {
            let mut merged: Vec<Value> = Vec::new();
            for v in original.iter().chain(patch.iter()) {
                if !merged.contains(v) {
                    merged.push(v.clone());
                }
            }
            (original, merged, patch)
        }
        Kind::Map => {
            if key.is_empty() {
                return Err(PatchError::Internal(
                    "cannot merge lists without merge key for type map".into(),
                ));
            }
            let (original, patch) = apply_special_elements(original, patch, key)?;
            let server_order = original.clone();
            let merged = merge_maps_by_key(original, &patch, key, node)?;
            (server_order, merged, patch)
        }
    };
    let (in_patch, server_only) = partition(merged, &patch, key, kind)?;
    normalize_order(in_patch, server_only, &patch, &server_order, key, kind)
}

/// Handles list items carrying `$patch`: `delete` removes the items with that key from the
/// original, `replace` makes the other patch items the whole list.
fn apply_special_elements(
    mut original: Vec<Value>,
    patch: Vec<Value>,
    key: &str,
) -> Result<(Vec<Value>, Vec<Value>)> {
    let mut plain = Vec::new();
    let mut replace = false;
    for item in patch {
        let Some(directive) = item.get(DIRECTIVE) else {
            plain.push(item);
            continue;
        };
        match directive.as_str() {
            Some("delete") => {
                let value = item.get(key).ok_or_else(|| no_merge_key(&item, key))?;
                original.retain(|o| o.get(key) != Some(value));
            }
            Some("replace") => replace = true,
            Some("merge") => {
                return Err(PatchError::Internal(
                    "merging lists cannot yet be specified in the patch".into(),
                ));
            }
            _ => {
                return Err(PatchError::Internal(format!(
                    "unknown patch type: {} in map: {}",
                    go_fmt(directive),
                    item
                )));
            }
        }
    }
    if replace {
        // Items of a replaced list may still carry nested directives: strip them.
        let items = plain
            .into_iter()
            .map(|i| fresh_item(i, SchemaNode::Unknown))
            .collect::<Result<_>>()?;
        return Ok((items, Vec::new()));
    }
    Ok((original, plain))
}

fn fresh_item(item: Value, node: SchemaNode) -> Result<Value> {
    match item {
        Value::Object(m) => strategic_merge(Map::new(), m, node).map(Value::Object),
        other => Ok(other),
    }
}

/// Merges each patch item into the original item with the same merge key, or appends it.
fn merge_maps_by_key(
    mut original: Vec<Value>,
    patch: &[Value],
    key: &str,
    node: SchemaNode,
) -> Result<Vec<Value>> {
    for item in patch {
        let value = item.get(key).ok_or_else(|| no_merge_key(item, key))?;
        let Value::Object(p) = item.clone() else {
            return Err(no_merge_key(item, key));
        };
        match original.iter().position(|o| o.get(key) == Some(value)) {
            Some(i) => {
                let Value::Object(o) = std::mem::take(&mut original[i]) else {
                    return Err(PatchError::Internal(format!(
                        "value for key {i} is not a map."
                    )));
                };
                original[i] = Value::Object(strategic_merge(o, p, node)?);
            }
            None => original.push(fresh_item(Value::Object(p), node)?),
        }
    }
    Ok(original)
}

/// Splits `merged` into the items present in `by` and the others.
fn partition(
    merged: Vec<Value>,
    by: &[Value],
    key: &str,
    kind: Kind,
) -> Result<(Vec<Value>, Vec<Value>)> {
    let mut present = Vec::new();
    let mut others = Vec::new();
    for item in merged {
        if kind == Kind::Map && item.get(key).is_none() {
            return Err(no_merge_key(&item, key));
        }
        if index_of(by, &item, key, kind).is_some() {
            present.push(item);
        } else {
            others.push(item);
        }
    }
    Ok((present, others))
}

/// Upstream's ordering: patch items in patch order, server-only items in server order, and the
/// two interleaved following the server order; a new item goes before the remaining server items.
fn normalize_order(
    in_patch: Vec<Value>,
    server_only: Vec<Value>,
    patch_order: &[Value],
    server_order: &[Value],
    key: &str,
    kind: Kind,
) -> Result<Vec<Value>> {
    let right = sort_by_order(in_patch, patch_order, key, kind)?;
    let left = sort_by_order(server_only, server_order, key, kind)?;
    let mut out = Vec::with_capacity(left.len() + right.len());
    let (mut l, mut r) = (left.into_iter().peekable(), right.into_iter().peekable());
    loop {
        let take_left = match (l.peek(), r.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(a), Some(b)) => match (
                index_of(server_order, a, key, kind),
                index_of(server_order, b, key, kind),
            ) {
                (Some(ia), Some(ib)) => ia < ib,
                _ => false,
            },
        };
        let next = if take_left { l.next() } else { r.next() };
        out.extend(next);
    }
    Ok(out)
}

fn sort_by_order(items: Vec<Value>, order: &[Value], key: &str, kind: Kind) -> Result<Vec<Value>> {
    if kind == Kind::Map
        && let Some(bad) = items
            .iter()
            .chain(order.iter())
            .find(|i| i.get(key).is_none())
    {
        return Err(no_merge_key(bad, key));
    }
    let mut keyed: Vec<(usize, Value)> = items
        .into_iter()
        .map(|i| (index_of(order, &i, key, kind).unwrap_or(usize::MAX), i))
        .collect();
    keyed.sort_by_key(|(i, _)| *i);
    Ok(keyed.into_iter().map(|(_, v)| v).collect())
}

/// Position of `item` in `list`, comparing merge-key values for maps and values for scalars.
fn index_of(list: &[Value], item: &Value, key: &str, kind: Kind) -> Option<usize> {
    match kind {
        Kind::Map => {
            let wanted = item.get(key);
            list.iter().position(|v| v.get(key) == wanted)
        }
        Kind::Scalar => list.iter().position(|v| v == item),
    }
}

/// Processes every `$setElementOrder/<field>`: merges the field's lists and orders the result
/// by the directive, then removes both from the patch.
fn merge_set_element_orders(
    original: &mut Map<String, Value>,
    patch: &mut Map<String, Value>,
    node: SchemaNode,
) -> Result<()> {
    let keys: Vec<String> = patch
        .keys()
        .filter(|k| k.starts_with(SET_ORDER_PREFIX))
        .cloned()
        .collect();
    for directive_key in keys {
        let order = patch.remove(&directive_key).unwrap_or(Value::Null);
        let Value::Array(order) = order else {
            return Err(bad(BAD_SET_ORDER));
        };
        let field = directive_key
            .strip_prefix(SET_ORDER_PREFIX)
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(|| bad(BAD_SET_ORDER))?
            .to_string();
        let current = take_list(original, &field)?;
        let patch_list = take_list(patch, &field)?;
        let (child, meta) = node.field(&field);
        let key = meta.patch_merge_key.unwrap_or("");
        validate_order(patch_list.as_deref().unwrap_or(&[]), &order, key)?;
        let server_order = current.clone().unwrap_or_default();
        let patch_items = patch_list.clone().unwrap_or_default();
        let merged = match (current, patch_list) {
            (Some(c), None) => c,
            (None, Some(p)) => match fresh_value(Value::Array(p), child, &meta)? {
                Value::Array(v) => v,
                _ => Vec::new(),
            },
            (Some(c), Some(p)) => {
                match merge_value(Value::Array(c), Value::Array(p), child, &meta, false)? {
                    Value::Array(v) => v,
                    _ => Vec::new(),
                }
            }
            (None, None) => continue,
        };
        let Some(kind) = element_kind(&[&server_order, &patch_items])? else {
            original.insert(field, Value::Array(merged));
            continue;
        };
        let (in_order, server_only) = partition(merged, &order, key, kind)?;
        let sorted = normalize_order(in_order, server_only, &order, &server_order, key, kind)?;
        original.insert(field, Value::Array(sorted));
    }
    Ok(())
}

fn take_list(map: &mut Map<String, Value>, field: &str) -> Result<Option<Vec<Value>>> {
    match map.remove(field) {
        None => Ok(None),
        Some(Value::Array(v)) => Ok(Some(v)),
        Some(other) => Err(PatchError::Internal(format!(
            "expected a list for {field}, got {other}"
        ))),
    }
}

/// The relative order of the patch items must agree with the `$setElementOrder` list.
fn validate_order(patch_list: &[Value], order: &[Value], key: &str) -> Result<()> {
    let items: Vec<&Value> = patch_list
        .iter()
        .filter(|v| v.get(DIRECTIVE).is_none())
        .collect();
    let same = |a: &Value, b: &Value| {
        if key.is_empty() {
            a == b
        } else {
            a.get(key).is_some() && a.get(key) == b.get(key)
        }
    };
    let (mut pi, mut oi) = (0, 0);
    while pi < items.len() && oi < order.len() {
        if same(items[pi], &order[oi]) {
            pi += 1;
        }
        oi += 1;
    }
    if pi < items.len() {
        return Err(PatchError::Internal(format!(
            "The order in patch list:\n{}\n doesn't match {SET_ORDER_PREFIX} list:\n{}\n",
            Value::Array(patch_list.to_vec()),
            Value::Array(order.to_vec())
        )));
    }
    Ok(())
}

fn bad(msg: &str) -> PatchError {
    PatchError::BadRequest(msg.to_string())
}

fn no_merge_key(item: &Value, key: &str) -> PatchError {
    PatchError::Internal(format!(
        "map: {item} does not contain declared merge key: {key}"
    ))
}

/// A directive value as Go's `%s` prints it.
fn go_fmt(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
