//! Small helpers shared by the per-kind validators.

use crate::status::Cause;
use serde_json::{Map, Value};

pub fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

pub fn obj<'a>(v: &'a Value, key: &str) -> Option<&'a Map<String, Value>> {
    v.get(key).and_then(Value::as_object)
}

pub fn arr<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

pub fn int(v: &Value, key: &str) -> Option<i64> {
    v.get(key).and_then(Value::as_i64)
}

pub fn join(path: &str, child: &str) -> String {
    if path.is_empty() {
        child.to_string()
    } else {
        format!("{path}.{child}")
    }
}

/// One cause per message, as upstream's `for _, msg := range isX(v)` loops.
pub fn invalid_each(field: &str, value: &str, msgs: Vec<String>) -> Vec<Cause> {
    msgs.into_iter()
        .map(|m| Cause::invalid(field, &Value::String(value.to_string()), &m))
        .collect()
}

pub fn non_negative(field: &str, v: Option<i64>) -> Option<Cause> {
    match v {
        Some(n) if n < 0 => Some(Cause::invalid(
            field,
            &Value::from(n),
            "must be greater than or equal to 0",
        )),
        _ => None,
    }
}

/// `Too long: must have at most N bytes`, the 1.27–1.33 wording of field.TooLong.
pub fn too_long(field: &str, max: usize) -> Cause {
    Cause::new(
        "FieldValueTooLong",
        field,
        format!("Too long: must have at most {max} bytes"),
    )
}

/// Go's `%#v` of a `map[string]string`, used in selector/label mismatch messages.
pub fn go_string_map(m: Option<&Map<String, Value>>) -> String {
    let mut entries: Vec<(String, String)> = m
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
        .collect();
    entries.sort();
    let body: Vec<String> = entries
        .iter()
        .map(|(k, v)| format!("{k:?}:{v:?}"))
        .collect();
    format!("map[string]string{{{}}}", body.join(", "))
}

/// A raw value shown in a message (`field is immutable` and friends).
pub fn invalid_raw(field: &str, shown: &str, detail: &str) -> Cause {
    Cause::new(
        "FieldValueInvalid",
        field,
        format!("Invalid value: {shown}: {detail}"),
    )
}

/// Parses a resource quantity into a comparable number (base units).
pub fn quantity(q: &Value) -> Option<f64> {
    match q {
        Value::String(s) => crate::quantity::parse(s),
        Value::Number(n) => crate::quantity::parse(&n.to_string()),
        _ => None,
    }
}
