//! Renders path items as Swagger 2.0 or OpenAPI 3.0 JSON.

use serde_json::{Map, Value, json};

use super::definitions::{V2_REF_PREFIX, V3_REF_PREFIX};
use super::paths::{In, Operation, Param, PathItem};

fn location(param: &Param) -> &'static str {
    match param.location {
        In::Path => "path",
        In::Query => "query",
    }
}

fn response_description(code: u16) -> &'static str {
    match code {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        _ => "",
    }
}

fn v2_param(param: &Param) -> Value {
    let mut out = json!({
        "description": param.description,
        "in": location(param),
        "name": param.name,
        "type": param.ty,
        "uniqueItems": true,
    });
    if param.location == In::Path {
        out["required"] = true.into();
    }
    out
}

fn v3_param(param: &Param) -> Value {
    let mut out = json!({
        "description": param.description,
        "in": location(param),
        "name": param.name,
        "schema": {"type": param.ty, "uniqueItems": true},
    });
    if param.location == In::Path {
        out["required"] = true.into();
    }
    out
}

/// The vendor extensions every operation carries (none on discovery operations).
fn add_extensions(out: &mut Map<String, Value>, op: &Operation) {
    if op.action.is_empty() {
        return;
    }
    out.insert("x-kubernetes-action".into(), op.action.into());
    out.insert("x-kubernetes-group-version-kind".into(), op.gvk.to_json());
}

fn unauthorized() -> (String, Value) {
    ("401".to_string(), json!({"description": "Unauthorized"}))
}

pub(super) fn v2_path_item(item: &PathItem) -> Value {
    let mut out = Map::new();
    for op in &item.ops {
        out.insert(op.method.into(), v2_operation(op));
    }
    if !item.params.is_empty() {
        out.insert(
            "parameters".into(),
            item.params.iter().map(v2_param).collect(),
        );
    }
    Value::Object(out)
}

fn v2_operation(op: &Operation) -> Value {
    let mut params: Vec<Value> = Vec::new();
    let consumes: Vec<&str> = match &op.body {
        Some(body) => {
            params.push(json!({
                "in": "body",
                "name": "body",
                "required": op.method != "delete",
                "schema": {"$ref": format!("{V2_REF_PREFIX}{}", body.definition)},
            }));
            body.content_types.to_vec()
        }
        None => vec!["*/*"],
    };
    params.extend(op.params.iter().map(v2_param));
    let mut responses: Map<String, Value> = op
        .responses
        .iter()
        .map(|(code, def)| {
            let schema = json!({"$ref": format!("{V2_REF_PREFIX}{def}")});
            (
                code.to_string(),
                json!({"description": response_description(*code), "schema": schema}),
            )
        })
        .collect();
    responses.extend([unauthorized()]);
    let mut out = Map::new();
    out.insert("consumes".into(), json!(consumes));
    out.insert("description".into(), op.description.clone().into());
    out.insert("operationId".into(), op.id.clone().into());
    if !params.is_empty() {
        out.insert("parameters".into(), params.into());
    }
    out.insert("produces".into(), json!(op.produces));
    out.insert("responses".into(), responses.into());
    out.insert("schemes".into(), json!(["https"]));
    out.insert("tags".into(), json!([op.tag]));
    add_extensions(&mut out, op);
    Value::Object(out)
}

pub(super) fn v3_path_item(item: &PathItem) -> Value {
    let mut out = Map::new();
    for op in &item.ops {
        out.insert(op.method.into(), v3_operation(op));
    }
    if !item.params.is_empty() {
        out.insert(
            "parameters".into(),
            item.params.iter().map(v3_param).collect(),
        );
    }
    Value::Object(out)
}

fn v3_content(types: &[&str], definition: &str) -> Value {
    let schema = json!({"$ref": format!("{V3_REF_PREFIX}{definition}")});
    let content: Map<String, Value> = types
        .iter()
        .map(|t| (t.to_string(), json!({"schema": schema.clone()})))
        .collect();
    Value::Object(content)
}

fn v3_operation(op: &Operation) -> Value {
    let mut out = Map::new();
    out.insert("description".into(), op.description.clone().into());
    out.insert("operationId".into(), op.id.clone().into());
    if !op.params.is_empty() {
        out.insert(
            "parameters".into(),
            op.params.iter().map(v3_param).collect(),
        );
    }
    if let Some(body) = &op.body {
        let content = v3_content(body.content_types, &body.definition);
        let required = op.method != "delete";
        out.insert(
            "requestBody".into(),
            json!({"content": content, "required": required}),
        );
    }
    let mut responses: Map<String, Value> = op
        .responses
        .iter()
        .map(|(code, def)| {
            let content = v3_content(op.produces, def);
            (
                code.to_string(),
                json!({"content": content, "description": response_description(*code)}),
            )
        })
        .collect();
    responses.extend([unauthorized()]);
    out.insert("responses".into(), responses.into());
    out.insert("tags".into(), json!([op.tag]));
    add_extensions(&mut out, op);
    Value::Object(out)
}
