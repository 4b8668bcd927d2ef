//! Turns message bytes into the JSON upstream's encoding/json would produce for the same Go
//! object, driven by the static tables in [`super::schema`].

use base64::Engine;
use serde_json::{Map, Value};
use thiserror::Error;

use super::schema::{Card, Field, Kind, Message};
use super::wire::{Fields, WireError, WireValue, read_packed_varints};

/// Why message bytes could not become JSON.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("malformed protobuf: {0}")]
    Wire(#[from] WireError),
    #[error("unsupported protobuf field {number} in {message}; send JSON instead")]
    UnknownField { number: u32, message: &'static str },
    #[error("protobuf field {number} in {message} has the wrong wire type")]
    WireType { number: u32, message: &'static str },
    #[error("protobuf field {field} is not valid UTF-8")]
    Utf8 { field: &'static str },
    #[error("timestamp {0} is out of range")]
    Time(i64),
}

/// Decodes one message into a JSON object.
pub fn decode_message(
    msg: &'static Message,
    buf: &[u8],
) -> Result<Map<String, Value>, DecodeError> {
    let mut out = Map::new();
    for item in Fields::new(buf) {
        let (number, value) = item?;
        let field = msg.field(number).ok_or(DecodeError::UnknownField {
            number,
            message: msg.name,
        })?;
        apply(&mut out, msg, field, value)?;
    }
    Ok(out)
}

fn apply(
    out: &mut Map<String, Value>,
    msg: &'static Message,
    field: &Field,
    value: WireValue,
) -> Result<(), DecodeError> {
    let wrong = || DecodeError::WireType {
        number: field.number,
        message: msg.name,
    };
    match field.kind {
        Kind::Map(value_kind) => {
            let WireValue::Bytes(entry) = value else {
                return Err(wrong());
            };
            let (key, val) = decode_map_entry(msg, field, value_kind, entry)?;
            let slot = out
                .entry(field.json)
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(map) = slot {
                map.insert(key, val);
            }
        }
        Kind::Inline(inner) => {
            let WireValue::Bytes(bytes) = value else {
                return Err(wrong());
            };
            out.extend(decode_message(inner, bytes)?);
        }
        kind if field.card == Card::Repeated => {
            let slot = out
                .entry(field.json)
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(items) = slot {
                items.extend(decode_repeated(msg, field, kind, value)?);
            }
        }
        kind => match decode_single(msg, field, kind, value)? {
            // Go omits zero plain values (omitempty); pointers keep an explicit zero.
            Some(v) if field.card == Card::Pointer || !is_zero(&v, kind) => {
                out.insert(field.json.to_string(), v);
            }
            _ => {
                out.remove(field.json);
            }
        },
    }
    Ok(())
}

/// Repeated scalars may arrive packed (one length-delimited run) or one per occurrence.
fn decode_repeated(
    msg: &'static Message,
    field: &Field,
    kind: Kind,
    value: WireValue,
) -> Result<Vec<Value>, DecodeError> {
    match (kind, value) {
        (Kind::Int32 | Kind::Int64 | Kind::Bool, WireValue::Bytes(run)) => {
            Ok(read_packed_varints(run)?
                .into_iter()
                .map(|v| varint_json(kind, v))
                .collect())
        }
        _ => Ok(decode_single(msg, field, kind, value)?
            .into_iter()
            .collect()),
    }
}

/// Decodes one non-map value; `None` stands for a zero metav1.Time, which JSON renders as null.
fn decode_single(
    msg: &'static Message,
    field: &Field,
    kind: Kind,
    value: WireValue,
) -> Result<Option<Value>, DecodeError> {
    let wrong = DecodeError::WireType {
        number: field.number,
        message: msg.name,
    };
    let value = match (kind, value) {
        (Kind::Int32 | Kind::Int64 | Kind::Bool, WireValue::Varint(v)) => varint_json(kind, v),
        (Kind::Str, WireValue::Bytes(b)) => Value::String(utf8(b, field.json)?),
        (Kind::Bytes, WireValue::Bytes(b)) => {
            Value::String(base64::engine::general_purpose::STANDARD.encode(b))
        }
        (Kind::Msg(inner), WireValue::Bytes(b)) => Value::Object(decode_message(inner, b)?),
        (Kind::Time, WireValue::Bytes(b)) => return decode_time(b),
        (Kind::Quantity, WireValue::Bytes(b)) => decode_quantity(b)?,
        (Kind::IntOrString, WireValue::Bytes(b)) => decode_int_or_string(b)?,
        _ => return Err(wrong),
    };
    Ok(Some(value))
}

fn varint_json(kind: Kind, v: u64) -> Value {
    match kind {
        Kind::Bool => Value::Bool(v != 0),
        // int32 negatives travel sign-extended to 64 bits; truncation recovers them.
        Kind::Int32 => Value::from(v as i64 as i32),
        _ => Value::from(v as i64),
    }
}

fn is_zero(v: &Value, kind: Kind) -> bool {
    match kind {
        Kind::Str | Kind::Bytes => v.as_str() == Some(""),
        Kind::Int32 | Kind::Int64 => v.as_i64() == Some(0),
        Kind::Bool => v.as_bool() == Some(false),
        // Go's omitempty never drops a struct, so messages always stay.
        _ => false,
    }
}

fn utf8(b: &[u8], field: &'static str) -> Result<String, DecodeError> {
    String::from_utf8(b.to_vec()).map_err(|_| DecodeError::Utf8 { field })
}

fn decode_map_entry(
    msg: &'static Message,
    field: &Field,
    value_kind: &Kind,
    entry: &[u8],
) -> Result<(String, Value), DecodeError> {
    let mut key = String::new();
    let mut val = None;
    for item in Fields::new(entry) {
        match item? {
            (1, WireValue::Bytes(b)) => key = utf8(b, field.json)?,
            (2, v) => val = decode_single(msg, field, *value_kind, v)?,
            (number, _) => {
                return Err(DecodeError::WireType {
                    number,
                    message: msg.name,
                });
            }
        }
    }
    // A proto3 map entry may leave out a zero value.
    let val = val.unwrap_or_else(|| match value_kind {
        Kind::Quantity => Value::String("0".into()),
        _ => Value::String(String::new()),
    });
    Ok((key, val))
}

/// metav1.Time travels as Timestamp{seconds=1, nanos=2}; upstream drops the nanos on decode.
fn decode_time(buf: &[u8]) -> Result<Option<Value>, DecodeError> {
    if buf.is_empty() {
        return Ok(None);
    }
    let mut seconds = 0i64;
    for item in Fields::new(buf) {
        match item? {
            (1, WireValue::Varint(v)) => seconds = v as i64,
            (2, WireValue::Varint(_)) => {}
            (number, _) => {
                return Err(DecodeError::UnknownField {
                    number,
                    message: "Timestamp",
                });
            }
        }
    }
    let ts = jiff::Timestamp::from_second(seconds).map_err(|_| DecodeError::Time(seconds))?;
    Ok(Some(Value::String(
        ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
    )))
}

fn decode_quantity(buf: &[u8]) -> Result<Value, DecodeError> {
    let mut text = String::new();
    for item in Fields::new(buf) {
        match item? {
            (1, WireValue::Bytes(b)) => text = utf8(b, "Quantity.string")?,
            (number, _) => {
                return Err(DecodeError::UnknownField {
                    number,
                    message: "Quantity",
                });
            }
        }
    }
    // A zero Quantity marshals to JSON as "0".
    Ok(Value::String(if text.is_empty() {
        "0".into()
    } else {
        text
    }))
}

fn decode_int_or_string(buf: &[u8]) -> Result<Value, DecodeError> {
    let (mut is_string, mut int_val, mut str_val) = (false, 0i32, String::new());
    for item in Fields::new(buf) {
        match item? {
            (1, WireValue::Varint(t)) => is_string = t == 1,
            (2, WireValue::Varint(v)) => int_val = v as i64 as i32,
            (3, WireValue::Bytes(b)) => str_val = utf8(b, "IntOrString.strVal")?,
            (number, _) => {
                return Err(DecodeError::UnknownField {
                    number,
                    message: "IntOrString",
                });
            }
        }
    }
    Ok(if is_string {
        Value::String(str_val)
    } else {
        Value::from(int_val)
    })
}
