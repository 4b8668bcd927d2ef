//! `as=Table` rendering for `kubectl get`: the `meta.k8s.io/v1` Table with the same columns
//! and cells as upstream's server-side printers (pkg/printers/internalversion), wide columns
//! included (priority 1), since kubectl hides them unless `-o wide`.

mod format;
mod printers;
mod workloads;

#[cfg(test)]
mod tests;

use std::str::FromStr;

use serde_json::{Map, Value, json};

use crate::ResourceInfo;

pub use format::human_duration;

/// What each row's `object` carries (`?includeObject=`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IncludeObject {
    /// No object.
    None,
    /// A `PartialObjectMetadata` with the object's metadata (the default).
    #[default]
    Metadata,
    /// The full object.
    Object,
}

/// An `includeObject` value other than None, Metadata or Object.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unsupported includeObject value {0:?}: must be None, Metadata or Object")]
pub struct InvalidIncludeObject(pub String);

impl FromStr for IncludeObject {
    type Err = InvalidIncludeObject;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "None" => Ok(IncludeObject::None),
            "" | "Metadata" => Ok(IncludeObject::Metadata),
            "Object" => Ok(IncludeObject::Object),
            other => Err(InvalidIncludeObject(other.to_string())),
        }
    }
}

/// One column: name, JSON-schema type, format, description and priority (0 always shown,
/// 1 only with `-o wide`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Column {
    pub name: &'static str,
    pub ty: &'static str,
    pub format: &'static str,
    pub description: &'static str,
    pub priority: u8,
}

pub(crate) const fn col(name: &'static str, ty: &'static str, description: &'static str) -> Column {
    Column {
        name,
        ty,
        format: "",
        description,
        priority: 0,
    }
}

pub(crate) const fn wide(
    name: &'static str,
    ty: &'static str,
    description: &'static str,
) -> Column {
    Column {
        name,
        ty,
        format: "",
        description,
        priority: 1,
    }
}

pub(crate) const NAME: Column = Column {
    name: "Name",
    ty: "string",
    format: "name",
    description: "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names",
    priority: 0,
};

pub(crate) const AGE: Column = col(
    "Age",
    "string",
    "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.",
);

/// One rendered row: its cells and, for pods, upstream's row conditions.
pub(crate) struct Row {
    pub cells: Vec<Value>,
    pub conditions: Vec<Value>,
}

impl From<Vec<Value>> for Row {
    fn from(cells: Vec<Value>) -> Self {
        Row {
            cells,
            conditions: Vec::new(),
        }
    }
}

/// Renders `objects` (all of the resource `info`) as a `meta.k8s.io/v1` Table; the caller
/// sets `metadata` (resourceVersion, continue) from the list it rendered.
pub fn to_table(
    info: &ResourceInfo,
    objects: &[Value],
    include_object: IncludeObject,
    now: jiff::Timestamp,
) -> Value {
    let (columns, render) = printers::printer(info);
    let rows: Vec<Value> = objects
        .iter()
        .map(|obj| row_json(render(obj, now), obj, include_object))
        .collect();
    let definitions: Vec<Value> = columns.iter().map(column_json).collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {},
        "columnDefinitions": definitions,
        "rows": rows,
    })
}

fn column_json(c: &Column) -> Value {
    json!({
        "name": c.name,
        "type": c.ty,
        "format": c.format,
        "description": c.description,
        "priority": c.priority,
    })
}

/// One row of [`to_table`] for `obj`, for callers that stream large lists row by row.
pub fn to_row(
    info: &ResourceInfo,
    obj: &Value,
    include_object: IncludeObject,
    now: jiff::Timestamp,
) -> Value {
    let (_, render) = printers::printer(info);
    row_json(render(obj, now), obj, include_object)
}

fn row_json(row: Row, obj: &Value, include: IncludeObject) -> Value {
    let mut out = Map::new();
    out.insert("cells".into(), Value::Array(row.cells));
    if !row.conditions.is_empty() {
        out.insert("conditions".into(), Value::Array(row.conditions));
    }
    match include {
        IncludeObject::None => {}
        IncludeObject::Metadata => {
            let partial = json!({
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
            });
            out.insert("object".into(), partial);
        }
        IncludeObject::Object => {
            out.insert("object".into(), obj.clone());
        }
    }
    Value::Object(out)
}
