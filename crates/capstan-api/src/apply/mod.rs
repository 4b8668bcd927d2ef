//! Server-side apply and managedFields tracking, as upstream's structured-merge-diff does them
//! for the built-in kinds: field sets per manager in the `FieldsV1` encoding, apply with
//! conflict detection and pruning of fields a manager stopped applying, and Update entries
//! for ordinary writes.
//!
//! Deviation: upstream diffs an Update against the Go zero value of the kind, in which
//! non-pointer structs exist; Capstan diffs against the JSON and so never marks a struct
//! field itself (`.`) as owned, only maps, lists and list items.

mod fieldpath;
mod walk;

pub use fieldpath::{Path, PathElement, Set, path_string};

use crate::ResourceInfo;
use crate::schema::SchemaNode;
use crate::status::{ApiError, Cause};
use serde_json::{Map, Value, json};

/// One `metadata.managedFields` entry.
#[derive(Clone, Debug, PartialEq)]
pub struct ManagedEntry {
    pub manager: String,
    /// "Apply" or "Update".
    pub operation: String,
    pub api_version: String,
    pub time: Option<String>,
    pub subresource: String,
    pub fields: Set,
}

impl ManagedEntry {
    /// Upstream keys managers by name, operation, subresource, and (for Update) apiVersion.
    fn same_manager(&self, other: &ManagedEntry) -> bool {
        self.manager == other.manager
            && self.operation == other.operation
            && self.subresource == other.subresource
            && (self.operation == "Apply" || self.api_version == other.api_version)
    }

    fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("manager".into(), json!(self.manager));
        m.insert("operation".into(), json!(self.operation));
        m.insert("apiVersion".into(), json!(self.api_version));
        if let Some(t) = &self.time {
            m.insert("time".into(), json!(t));
        }
        m.insert("fieldsType".into(), json!("FieldsV1"));
        m.insert("fieldsV1".into(), self.fields.to_fields_v1());
        if !self.subresource.is_empty() {
            m.insert("subresource".into(), json!(self.subresource));
        }
        Value::Object(m)
    }

    fn from_json(v: &Value) -> Option<ManagedEntry> {
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        Some(ManagedEntry {
            manager: s("manager")?,
            operation: s("operation").unwrap_or_else(|| "Update".into()),
            api_version: s("apiVersion").unwrap_or_default(),
            time: s("time"),
            subresource: s("subresource").unwrap_or_default(),
            fields: v
                .get("fieldsV1")
                .map(Set::from_fields_v1)
                .unwrap_or_default(),
        })
    }

    /// How upstream names a manager in conflict messages.
    fn display(&self) -> String {
        let mut s = format!("{:?}", self.manager);
        if !self.subresource.is_empty() {
            s = format!("{s} with subresource {:?}", self.subresource);
        }
        if self.operation == "Update" {
            s = format!("{s} using {}", self.api_version);
        }
        s
    }
}

/// The managedFields entries of an object.
pub fn managed_fields(obj: &Value) -> Vec<ManagedEntry> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(ManagedEntry::from_json).collect())
        .unwrap_or_default()
}

/// Writes `entries` as `metadata.managedFields`, in upstream's order (Apply before Update,
/// then by time, manager, apiVersion, subresource), dropping empty ones.
fn set_managed_fields(obj: &mut Value, mut entries: Vec<ManagedEntry>) {
    entries.retain(|e| !e.fields.is_empty());
    entries.sort_by(|a, b| {
        (
            &a.operation,
            &a.time,
            &a.manager,
            &a.api_version,
            &a.subresource,
        )
            .cmp(&(
                &b.operation,
                &b.time,
                &b.manager,
                &b.api_version,
                &b.subresource,
            ))
    });
    let Some(meta) = obj
        .as_object_mut()
        .map(|o| o.entry("metadata").or_insert_with(|| json!({})))
    else {
        return;
    };
    let Some(meta) = meta.as_object_mut() else {
        return;
    };
    if entries.is_empty() {
        meta.remove("managedFields");
    } else {
        meta.insert(
            "managedFields".into(),
            Value::Array(entries.iter().map(ManagedEntry::to_json).collect()),
        );
    }
}

const IGNORED_META: &[&str] = &[
    "name",
    "namespace",
    "creationTimestamp",
    "selfLink",
    "uid",
    "generation",
    "managedFields",
    "resourceVersion",
];

/// The part of an object whose fields are tracked: no apiVersion/kind, no server-owned
/// metadata, and only the fields the request's (sub)resource may change.
fn tracked(
    info: &ResourceInfo,
    obj: Option<&Value>,
    subresource: Option<&str>,
) -> Map<String, Value> {
    let mut m = obj.and_then(Value::as_object).cloned().unwrap_or_default();
    m.remove("apiVersion");
    m.remove("kind");
    if let Some(Value::Object(meta)) = m.get_mut("metadata") {
        for k in IGNORED_META {
            meta.remove(*k);
        }
    }
    let has_status = info.has_subresource(crate::Subresource::Status);
    match subresource {
        Some("status") => m.retain(|k, _| k == "status" || k == "metadata"),
        None if has_status => {
            m.remove("status");
        }
        _ => {}
    }
    m
}

/// Server-side apply of `applied` by `manager`: merges it into `current` (None on create),
/// removes fields the manager applied before but no longer does (unless others own them),
/// and records the manager's Apply entry. A field another manager owns with a different
/// value is a 409 conflict unless `force`, which takes the field over.
pub fn server_side_apply(
    info: &ResourceInfo,
    current: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    now: &str,
) -> Result<Value, ApiError> {
    let Value::Object(applied_obj) = applied else {
        return Err(ApiError::bad_request(
            "the applied configuration must be an object",
        ));
    };
    let mut applied_obj = applied_obj.clone();
    if info.has_subresource(crate::Subresource::Status) {
        // The main resource's writes reset status, so an applied status is dropped.
        applied_obj.remove("status");
    }
    let node = SchemaNode::root(info);
    let live = current
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut managers = current.map(managed_fields).unwrap_or_default();
    let me = ManagedEntry {
        manager: manager.to_string(),
        operation: "Apply".into(),
        api_version: info.api_version(),
        time: Some(now.to_string()),
        subresource: String::new(),
        fields: walk::object_set(&tracked(info, Some(applied), None), node),
    };
    let previous = managers
        .iter()
        .position(|e| e.same_manager(&me))
        .map(|i| managers.remove(i));
    let mut merged = walk::merge_objects(&live, &applied_obj, node);
    if let Some(prev) = &previous {
        let owned = managers
            .iter()
            .fold(me.fields.clone(), |acc, e| acc.union(&e.fields));
        let stale = prev.fields.difference(&me.fields);
        walk::remove_fields(&mut merged, &stale, &owned, node, &mut Vec::new());
    }
    let old_tracked = tracked(info, current, None);
    let new_tracked = tracked(info, Some(&Value::Object(merged.clone())), None);
    let cmp = walk::compare_objects(&old_tracked, &new_tracked, node);
    let changed = cmp.modified.union(&cmp.added);
    let conflicts: Vec<(usize, Set)> = managers
        .iter()
        .enumerate()
        .map(|(i, e)| (i, e.fields.intersection(&changed)))
        .filter(|(_, s)| !s.is_empty())
        .collect();
    if !force && !conflicts.is_empty() {
        return Err(conflict_error(&managers, &conflicts));
    }
    for (i, lost) in conflicts {
        managers[i].fields = managers[i].fields.difference(&lost);
    }
    for e in managers.iter_mut() {
        e.fields = e.fields.difference(&cmp.removed);
    }
    let mut me = me;
    if let Some(prev) = previous
        && prev.fields == me.fields
        && cmp.added.is_empty()
        && cmp.modified.is_empty()
        && cmp.removed.is_empty()
    {
        // Nothing changed: upstream keeps the previous timestamp.
        me.time = prev.time;
    }
    managers.push(me);
    let mut out = Value::Object(merged);
    set_managed_fields(&mut out, managers);
    Ok(out)
}

/// The 409 upstream returns for apply conflicts, with one FieldManagerConflict cause per field.
fn conflict_error(managers: &[ManagedEntry], conflicts: &[(usize, Set)]) -> ApiError {
    let mut list: Vec<(String, String)> = conflicts
        .iter()
        .flat_map(|(i, set)| {
            set.paths()
                .into_iter()
                .map(move |p| (managers[*i].display(), path_string(&p)))
        })
        .collect();
    list.sort();
    let causes = list
        .iter()
        .map(|(m, p)| {
            Cause::new(
                "FieldManagerConflict",
                p.clone(),
                format!("conflict with {m}"),
            )
        })
        .collect();
    let message = if let [(m, p)] = list.as_slice() {
        format!("Apply failed with 1 conflict: conflict with {m}: {p}")
    } else {
        let mut lines: Vec<String> = Vec::new();
        let mut last: Option<&str> = None;
        for (m, p) in &list {
            if last != Some(m.as_str()) {
                lines.push(format!("conflicts with {m}:"));
                last = Some(m);
            }
            lines.push(format!("- {p}"));
        }
        format!(
            "Apply failed with {} conflicts: {}",
            list.len(),
            lines.join("\n")
        )
    };
    ApiError::new(409, "Conflict", message).with_causes(causes)
}

/// Records an ordinary write (create, update, patch) by `manager` in `new`'s managedFields:
/// the changed fields join the manager's Update entry and leave every other manager.
/// Managed fields the client sent (different from the stored ones) replace the stored ones;
/// `[{}]` clears them, as upstream.
pub fn track_update(
    info: &ResourceInfo,
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    subresource: Option<&str>,
    now: &str,
) {
    let node = SchemaNode::root(info);
    let stored = old.map(managed_fields).unwrap_or_default();
    let sent = new
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .cloned();
    let mut managers = match &sent {
        Some(entries)
            if old.and_then(|o| o.pointer("/metadata/managedFields"))
                != new.pointer("/metadata/managedFields") =>
        {
            entries.iter().filter_map(ManagedEntry::from_json).collect()
        }
        _ => stored,
    };
    let cmp = walk::compare_objects(
        &tracked(info, old, subresource),
        &tracked(info, Some(new), subresource),
        node,
    );
    let changed = cmp.modified.union(&cmp.added);
    let mine = ManagedEntry {
        manager: manager.to_string(),
        operation: "Update".into(),
        api_version: info.api_version(),
        time: Some(now.to_string()),
        subresource: subresource.unwrap_or("").to_string(),
        fields: Set::default(),
    };
    let previous = managers
        .iter()
        .position(|e| e.same_manager(&mine))
        .map(|i| managers.remove(i));
    for e in managers.iter_mut() {
        e.fields = e.fields.difference(&changed).difference(&cmp.removed);
    }
    let mut mine = mine;
    let prev_fields = previous
        .as_ref()
        .map(|p| p.fields.clone())
        .unwrap_or_default();
    mine.fields = prev_fields.difference(&cmp.removed).union(&changed);
    if let Some(prev) = previous
        && changed.is_empty()
        && cmp.removed.is_empty()
    {
        mine.time = prev.time;
    }
    managers.push(mine);
    set_managed_fields(new, managers);
}

#[cfg(test)]
mod tests;
