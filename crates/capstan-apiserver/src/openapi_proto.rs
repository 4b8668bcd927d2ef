//! The Swagger 2.0 document as the protobuf message `openapi.v2.Document` of gnostic
//! (`github.com/google/gnostic-models/openapiv2/OpenAPIv2.proto`): what kubectl asks for with
//! `Accept: application/com.github.proto-openapi.spec.v2@v1.0+protobuf`. The kube-apiserver
//! builds it by compiling its JSON document with gnostic; this module does the same walk by
//! hand: one field table per message, values picked by JSON key, oneofs chosen the way
//! gnostic's compiler chooses them, and free-form values (`default`, `example`, `enum`, vendor
//! extensions) carried as `Any { yaml }` holding the value as block YAML, which clients
//! (kube-openapi's `VendorExtensionToMap`, `parseDefault`) read back with a YAML parser.

use serde_json::{Map, Value};

/// Protobuf wire types.
const VARINT: u64 = 0;
const FIXED64: u64 = 1;
const LEN: u64 = 2;

/// Encodes `doc` (the JSON Swagger 2.0 document of [`crate::openapi::openapi_v2`]) as the
/// protobuf bytes of gnostic's `openapi.v2.Document`.
pub fn encode_v2_document(doc: &Value) -> Vec<u8> {
    let mut encoder = Encoder::default();
    let bytes = encoder.document(doc);
    if !encoder.dropped.is_empty() {
        tracing::debug!(keys = ?encoder.dropped, "OpenAPI v2 keys gnostic has no field for");
    }
    bytes
}

/// One protobuf message being written; proto3 scalars equal to their default are omitted.
#[derive(Default)]
struct Writer(Vec<u8>);

impl Writer {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn key(&mut self, field: u32, wire: u64) {
        self.varint((u64::from(field) << 3) | wire);
    }

    /// A length-delimited field, written even when empty (sub-messages have presence).
    fn bytes(&mut self, field: u32, b: &[u8]) {
        self.key(field, LEN);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }

    fn string(&mut self, field: u32, s: &str) {
        if !s.is_empty() {
            self.bytes(field, s.as_bytes());
        }
    }

    fn bool(&mut self, field: u32, b: bool) {
        if b {
            self.key(field, VARINT);
            self.varint(1);
        }
    }

    fn int64(&mut self, field: u32, v: i64) {
        if v != 0 {
            self.key(field, VARINT);
            // Negative int64 values are sign-extended to ten bytes on the wire.
            self.varint(v as u64);
        }
    }

    fn double(&mut self, field: u32, v: f64) {
        if v.to_bits() != 0 {
            self.key(field, FIXED64);
            self.0.extend_from_slice(&v.to_bits().to_le_bytes());
        }
    }
}

/// Encodes one JSON value as a nested message.
type Encode = fn(&mut Encoder, &Value) -> Vec<u8>;

/// How one JSON key of an object becomes a protobuf field.
#[derive(Clone, Copy)]
enum Kind {
    Str,
    Bool,
    Int,
    Double,
    /// A free-form value as `Any { yaml }`.
    Any,
    /// An array of free-form values, each an `Any`.
    AnyList,
    Strings,
    /// An object (or, for the few oneofs with a scalar arm, any value) as a message.
    Msg(Encode),
    /// An array, each element a message.
    List(Encode),
}

/// The fields of one message: (JSON key, field number, kind), in field-number order, and the
/// field number of its `repeated NamedAny vendor_extension` (keys starting `x-`).
struct Layout {
    name: &'static str,
    fields: &'static [(&'static str, u32, Kind)],
    extensions: u32,
}

/// Walks a document; remembers the keys that had no field (gnostic rejects those).
#[derive(Default)]
struct Encoder {
    dropped: Vec<String>,
}

impl Encoder {
    fn object(&mut self, v: &Value, layout: &Layout) -> Vec<u8> {
        let mut w = Writer::default();
        let Some(map) = v.as_object() else {
            self.dropped.push(format!("{}: not an object", layout.name));
            return w.0;
        };
        for (key, number, kind) in layout.fields {
            if let Some(value) = map.get(*key) {
                self.field(&mut w, *number, *kind, value);
            }
        }
        self.extensions(&mut w, layout.extensions, map);
        for key in map.keys() {
            let known = layout.fields.iter().any(|(k, _, _)| k == key);
            if !known && !key.starts_with("x-") {
                self.dropped.push(format!("{}.{key}", layout.name));
            }
        }
        w.0
    }

    fn field(&mut self, w: &mut Writer, number: u32, kind: Kind, value: &Value) {
        match kind {
            Kind::Str => w.string(number, &scalar_text(value)),
            Kind::Bool => w.bool(number, value.as_bool().unwrap_or(false)),
            Kind::Int => w.int64(number, as_int(value)),
            Kind::Double => w.double(number, value.as_f64().unwrap_or(0.0)),
            Kind::Any => w.bytes(number, &any(value)),
            Kind::AnyList => each(value).for_each(|v| w.bytes(number, &any(v))),
            Kind::Strings => each(value).for_each(|v| w.bytes(number, scalar_text(v).as_bytes())),
            Kind::Msg(encode) => {
                let b = encode(self, value);
                w.bytes(number, &b);
            }
            Kind::List(encode) => {
                for v in each(value) {
                    let b = encode(self, v);
                    w.bytes(number, &b);
                }
            }
        }
    }

    /// `repeated NamedAny vendor_extension`: every `x-` key, in document order.
    fn extensions(&mut self, w: &mut Writer, number: u32, map: &Map<String, Value>) {
        for (key, value) in map.iter().filter(|(k, _)| k.starts_with("x-")) {
            w.bytes(number, &named_any(key, value));
        }
    }

    /// A map-shaped message whose only field (number 1) repeats `Named* { name, value }`.
    fn named_map(&mut self, v: &Value, value: Encode) -> Vec<u8> {
        let mut w = Writer::default();
        for (name, item) in v.as_object().into_iter().flatten() {
            let b = value(self, item);
            w.bytes(1, &named(name, &b));
        }
        w.0
    }

    fn document(&mut self, v: &Value) -> Vec<u8> {
        self.object(v, &DOCUMENT)
    }
}

/// `Named* { string name = 1; <message> value = 2; }`.
fn named(name: &str, value: &[u8]) -> Vec<u8> {
    let mut w = Writer::default();
    w.string(1, name);
    w.bytes(2, value);
    w.0
}

fn named_any(name: &str, value: &Value) -> Vec<u8> {
    named(name, &any(value))
}

/// `Any { google.protobuf.Any value = 1; string yaml = 2; }`: gnostic leaves `value` unset.
fn any(value: &Value) -> Vec<u8> {
    let mut w = Writer::default();
    w.string(2, &yaml::to_yaml(value));
    w.0
}

/// The elements of an array; a lone value counts as one element.
fn each(value: &Value) -> impl Iterator<Item = &Value> {
    match value {
        Value::Array(items) => items.iter().collect::<Vec<_>>().into_iter(),
        other => vec![other].into_iter(),
    }
}

/// A scalar as gnostic reads it into a string field (numbers and booleans by their text).
fn scalar_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => String::new(),
    }
}

fn as_int(value: &Value) -> i64 {
    value
        .as_i64()
        .or_else(|| value.as_f64().map(|f| f as i64))
        .unwrap_or(0)
}

fn get_str<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

// ---- message layouts (field numbers from OpenAPIv2.proto) ----

const DOCUMENT: Layout = Layout {
    name: "Document",
    fields: &[
        ("swagger", 1, Kind::Str),
        ("info", 2, Kind::Msg(info)),
        ("host", 3, Kind::Str),
        ("basePath", 4, Kind::Str),
        ("schemes", 5, Kind::Strings),
        ("consumes", 6, Kind::Strings),
        ("produces", 7, Kind::Strings),
        ("paths", 8, Kind::Msg(paths)),
        ("definitions", 9, Kind::Msg(named_schemas)),
        ("parameters", 10, Kind::Msg(parameter_definitions)),
        ("responses", 11, Kind::Msg(response_definitions)),
        ("security", 12, Kind::List(security_requirement)),
        ("securityDefinitions", 13, Kind::Msg(security_definitions)),
        ("tags", 14, Kind::List(tag)),
        ("externalDocs", 15, Kind::Msg(external_docs)),
    ],
    extensions: 16,
};

fn info(e: &mut Encoder, v: &Value) -> Vec<u8> {
    const INFO: Layout = Layout {
        name: "Info",
        fields: &[
            ("title", 1, Kind::Str),
            ("version", 2, Kind::Str),
            ("description", 3, Kind::Str),
            ("termsOfService", 4, Kind::Str),
            ("contact", 5, Kind::Msg(contact)),
            ("license", 6, Kind::Msg(license)),
        ],
        extensions: 7,
    };
    e.object(v, &INFO)
}

fn contact(e: &mut Encoder, v: &Value) -> Vec<u8> {
    const CONTACT: Layout = Layout {
        name: "Contact",
        fields: &[
            ("name", 1, Kind::Str),
            ("url", 2, Kind::Str),
            ("email", 3, Kind::Str),
        ],
        extensions: 4,
    };
    e.object(v, &CONTACT)
}

fn license(e: &mut Encoder, v: &Value) -> Vec<u8> {
    const LICENSE: Layout = Layout {
        name: "License",
        fields: &[("name", 1, Kind::Str), ("url", 2, Kind::Str)],
        extensions: 3,
    };
    e.object(v, &LICENSE)
}

fn external_docs(e: &mut Encoder, v: &Value) -> Vec<u8> {
    const EXTERNAL_DOCS: Layout = Layout {
        name: "ExternalDocs",
        fields: &[("description", 1, Kind::Str), ("url", 2, Kind::Str)],
        extensions: 3,
    };
    e.object(v, &EXTERNAL_DOCS)
}

fn tag(e: &mut Encoder, v: &Value) -> Vec<u8> {
    const TAG: Layout = Layout {
        name: "Tag",
        fields: &[
            ("name", 1, Kind::Str),
            ("description", 2, Kind::Str),
            ("externalDocs", 3, Kind::Msg(external_docs)),
        ],
        extensions: 4,
    };
    e.object(v, &TAG)
}

/// `Paths { repeated NamedAny vendor_extension = 1; repeated NamedPathItem path = 2; }`:
/// keys starting `/` are paths, as gnostic's pattern `^/` decides.
fn paths(e: &mut Encoder, v: &Value) -> Vec<u8> {
    let mut w = Writer::default();
    let Some(map) = v.as_object() else {
        return w.0;
    };
    e.extensions(&mut w, 1, map);
    for (name, item) in map.iter().filter(|(k, _)| k.starts_with('/')) {
        let b = path_item(e, item);
        w.bytes(2, &named(name, &b));
    }
    w.0
}

fn path_item(e: &mut Encoder, v: &Value) -> Vec<u8> {
    const PATH_ITEM: Layout = Layout {
        name: "PathItem",
        fields: &[
            ("$ref", 1, Kind::Str),
            ("get", 2, Kind::Msg(operation)),
            ("put", 3, Kind::Msg(operation)),
            ("post", 4, Kind::Msg(operation)),
            ("delete", 5, Kind::Msg(operation)),
            ("options", 6, Kind::Msg(operation)),
            ("head", 7, Kind::Msg(operation)),
            ("patch", 8, Kind::Msg(operation)),
            ("parameters", 9, Kind::List(parameters_item)),
        ],
        extensions: 10,
    };
    e.object(v, &PATH_ITEM)
}

fn operation(e: &mut Encoder, v: &Value) -> Vec<u8> {
    const OPERATION: Layout = Layout {
        name: "Operation",
        fields: &[
            ("tags", 1, Kind::Strings),
            ("summary", 2, Kind::Str),
            ("description", 3, Kind::Str),
            ("externalDocs", 4, Kind::Msg(external_docs)),
            ("operationId", 5, Kind::Str),
            ("produces", 6, Kind::Strings),
            ("consumes", 7, Kind::Strings),
            ("parameters", 8, Kind::List(parameters_item)),
            ("responses", 9, Kind::Msg(responses)),
            ("schemes", 10, Kind::Strings),
            ("deprecated", 11, Kind::Bool),
            ("security", 12, Kind::List(security_requirement)),
        ],
        extensions: 13,
    };
    e.object(v, &OPERATION)
}

/// `ParametersItem { oneof { Parameter parameter = 1; JsonReference json_reference = 2; } }`:
/// an object with `$ref` (which no parameter has) is a reference.
fn parameters_item(e: &mut Encoder, v: &Value) -> Vec<u8> {
    let mut w = Writer::default();
    if v.get("$ref").is_some() {
        w.bytes(2, &json_reference(v));
    } else {
        let b = parameter(e, v);
        w.bytes(1, &b);
    }
    w.0
}

fn json_reference(v: &Value) -> Vec<u8> {
    let mut w = Writer::default();
    w.string(1, get_str(v, "$ref"));
    w.string(2, get_str(v, "description"));
    w.0
}

/// `Parameter { oneof { BodyParameter = 1; NonBodyParameter = 2; } }`, by `in`; a
/// `NonBodyParameter` holds one sub-schema per location (header 1, formData 2, query 3,
/// path 4), the same oneof arm gnostic's `in` enum checks select.
fn parameter(e: &mut Encoder, v: &Value) -> Vec<u8> {
    let mut w = Writer::default();
    let (arm, layout) = match get_str(v, "in") {
        "body" => {
            let b = e.object(v, &BODY_PARAMETER);
            w.bytes(1, &b);
            return w.0;
        }
        "header" => (1, &HEADER_PARAMETER),
        "formData" => (2, &FORM_DATA_PARAMETER),
        "path" => (4, &PATH_PARAMETER),
        _ => (3, &QUERY_PARAMETER),
    };
    let mut non_body = Writer::default();
    let b = e.object(v, layout);
    non_body.bytes(arm, &b);
    w.bytes(2, &non_body.0);
    w.0
}

const BODY_PARAMETER: Layout = Layout {
    name: "BodyParameter",
    fields: &[
        ("description", 1, Kind::Str),
        ("name", 2, Kind::Str),
        ("in", 3, Kind::Str),
        ("required", 4, Kind::Bool),
        ("schema", 5, Kind::Msg(schema)),
    ],
    extensions: 6,
};

/// Header and path sub-schemas share one numbering; query and formData insert
/// `allow_empty_value = 5` and shift the rest by one.
macro_rules! simple_parameter {
    ($name:literal, $($extra:expr)?; $shift:literal) => {
        Layout {
            name: $name,
            fields: &[
                ("required", 1, Kind::Bool),
                ("in", 2, Kind::Str),
                ("description", 3, Kind::Str),
                ("name", 4, Kind::Str),
                $($extra,)?
                ("type", 5 + $shift, Kind::Str),
                ("format", 6 + $shift, Kind::Str),
                ("items", 7 + $shift, Kind::Msg(primitives_items)),
                ("collectionFormat", 8 + $shift, Kind::Str),
                ("default", 9 + $shift, Kind::Any),
                ("maximum", 10 + $shift, Kind::Double),
                ("exclusiveMaximum", 11 + $shift, Kind::Bool),
                ("minimum", 12 + $shift, Kind::Double),
                ("exclusiveMinimum", 13 + $shift, Kind::Bool),
                ("maxLength", 14 + $shift, Kind::Int),
                ("minLength", 15 + $shift, Kind::Int),
                ("pattern", 16 + $shift, Kind::Str),
                ("maxItems", 17 + $shift, Kind::Int),
                ("minItems", 18 + $shift, Kind::Int),
                ("uniqueItems", 19 + $shift, Kind::Bool),
                ("enum", 20 + $shift, Kind::AnyList),
                ("multipleOf", 21 + $shift, Kind::Double),
            ],
            extensions: 22 + $shift,
        }
    };
}

const HEADER_PARAMETER: Layout = simple_parameter!("HeaderParameterSubSchema", ; 0);
const PATH_PARAMETER: Layout = simple_parameter!("PathParameterSubSchema", ; 0);
const QUERY_PARAMETER: Layout =
    simple_parameter!("QueryParameterSubSchema", ("allowEmptyValue", 5, Kind::Bool); 1);
const FORM_DATA_PARAMETER: Layout =
    simple_parameter!("FormDataParameterSubSchema", ("allowEmptyValue", 5, Kind::Bool); 1);

/// `PrimitivesItems` and `Header` share everything but where `description` sits.
fn primitives_items(e: &mut Encoder, v: &Value) -> Vec<u8> {
    const PRIMITIVES_ITEMS: Layout = Layout {
        name: "PrimitivesItems",
        fields: &[
            ("type", 1, Kind::Str),
            ("format", 2, Kind::Str),
            ("items", 3, Kind::Msg(primitives_items)),
            ("collectionFormat", 4, Kind::Str),
            ("default", 5, Kind::Any),
            ("maximum", 6, Kind::Double),
            ("exclusiveMaximum", 7, Kind::Bool),
            ("minimum", 8, Kind::Double),
            ("exclusiveMinimum", 9, Kind::Bool),
            ("maxLength", 10, Kind::Int),
            ("minLength", 11, Kind::Int),
            ("pattern", 12, Kind::Str),
            ("maxItems", 13, Kind::Int),
            ("minItems", 14, Kind::Int),
            ("uniqueItems", 15, Kind::Bool),
            ("enum", 16, Kind::AnyList),
            ("multipleOf", 17, Kind::Double),
        ],
        extensions: 18,
    };
    e.object(v, &PRIMITIVES_ITEMS)
}

fn header(e: &mut Encoder, v: &Value) -> Vec<u8> {
    const HEADER: Layout = Layout {
        name: "Header",
        fields: &[
            ("type", 1, Kind::Str),
            ("format", 2, Kind::Str),
            ("items", 3, Kind::Msg(primitives_items)),
            ("collectionFormat", 4, Kind::Str),
            ("default", 5, Kind::Any),
            ("maximum", 6, Kind::Double),
            ("exclusiveMaximum", 7, Kind::Bool),
            ("minimum", 8, Kind::Double),
            ("exclusiveMinimum", 9, Kind::Bool),
            ("maxLength", 10, Kind::Int),
            ("minLength", 11, Kind::Int),
            ("pattern", 12, Kind::Str),
            ("maxItems", 13, Kind::Int),
            ("minItems", 14, Kind::Int),
            ("uniqueItems", 15, Kind::Bool),
            ("enum", 16, Kind::AnyList),
            ("multipleOf", 17, Kind::Double),
            ("description", 18, Kind::Str),
        ],
        extensions: 19,
    };
    e.object(v, &HEADER)
}

/// `Responses { repeated NamedResponseValue response_code = 1; vendor_extension = 2; }`:
/// three-digit codes and `default` are responses (gnostic's pattern).
fn responses(e: &mut Encoder, v: &Value) -> Vec<u8> {
    let mut w = Writer::default();
    let Some(map) = v.as_object() else {
        return w.0;
    };
    for (code, value) in map.iter().filter(|(k, _)| is_response_code(k)) {
        let b = response_value(e, value);
        w.bytes(1, &named(code, &b));
    }
    e.extensions(&mut w, 2, map);
    w.0
}

fn is_response_code(key: &str) -> bool {
    key == "default" || (key.len() == 3 && key.bytes().all(|b| b.is_ascii_digit()))
}

/// `ResponseValue { oneof { Response response = 1; JsonReference json_reference = 2; } }`:
/// a response needs `description`, so a bare `$ref` object is a reference.
fn response_value(e: &mut Encoder, v: &Value) -> Vec<u8> {
    let mut w = Writer::default();
    if v.get("$ref").is_some() && v.get("description").is_none() {
        w.bytes(2, &json_reference(v));
    } else {
        let b = response(e, v);
        w.bytes(1, &b);
    }
    w.0
}

fn response(e: &mut Encoder, v: &Value) -> Vec<u8> {
    const RESPONSE: Layout = Layout {
        name: "Response",
        fields: &[
            ("description", 1, Kind::Str),
            ("schema", 2, Kind::Msg(schema_item)),
            ("headers", 3, Kind::Msg(headers)),
            ("examples", 4, Kind::Msg(examples)),
        ],
        extensions: 5,
    };
    e.object(v, &RESPONSE)
}

fn headers(e: &mut Encoder, v: &Value) -> Vec<u8> {
    e.named_map(v, header)
}

fn examples(_: &mut Encoder, v: &Value) -> Vec<u8> {
    let mut w = Writer::default();
    for (name, value) in v.as_object().into_iter().flatten() {
        w.bytes(1, &named_any(name, value));
    }
    w.0
}

/// `SchemaItem { oneof { Schema schema = 1; FileSchema file_schema = 2; } }`: gnostic tries
/// both and keeps the last match, so `type: file` is a file schema.
fn schema_item(e: &mut Encoder, v: &Value) -> Vec<u8> {
    const FILE_SCHEMA: Layout = Layout {
        name: "FileSchema",
        fields: &[
            ("format", 1, Kind::Str),
            ("title", 2, Kind::Str),
            ("description", 3, Kind::Str),
            ("default", 4, Kind::Any),
            ("required", 5, Kind::Strings),
            ("type", 6, Kind::Str),
            ("readOnly", 7, Kind::Bool),
            ("externalDocs", 8, Kind::Msg(external_docs)),
            ("example", 9, Kind::Any),
        ],
        extensions: 10,
    };
    let mut w = Writer::default();
    if get_str(v, "type") == "file" {
        let b = e.object(v, &FILE_SCHEMA);
        w.bytes(2, &b);
    } else {
        let b = schema(e, v);
        w.bytes(1, &b);
    }
    w.0
}

fn schema(e: &mut Encoder, v: &Value) -> Vec<u8> {
    const SCHEMA: Layout = Layout {
        name: "Schema",
        fields: &[
            ("$ref", 1, Kind::Str),
            ("format", 2, Kind::Str),
            ("title", 3, Kind::Str),
            ("description", 4, Kind::Str),
            ("default", 5, Kind::Any),
            ("multipleOf", 6, Kind::Double),
            ("maximum", 7, Kind::Double),
            ("exclusiveMaximum", 8, Kind::Bool),
            ("minimum", 9, Kind::Double),
            ("exclusiveMinimum", 10, Kind::Bool),
            ("maxLength", 11, Kind::Int),
            ("minLength", 12, Kind::Int),
            ("pattern", 13, Kind::Str),
            ("maxItems", 14, Kind::Int),
            ("minItems", 15, Kind::Int),
            ("uniqueItems", 16, Kind::Bool),
            ("maxProperties", 17, Kind::Int),
            ("minProperties", 18, Kind::Int),
            ("required", 19, Kind::Strings),
            ("enum", 20, Kind::AnyList),
            ("additionalProperties", 21, Kind::Msg(additional_properties)),
            ("type", 22, Kind::Msg(type_item)),
            ("items", 23, Kind::Msg(items_item)),
            ("allOf", 24, Kind::List(schema)),
            ("properties", 25, Kind::Msg(named_schemas)),
            ("discriminator", 26, Kind::Str),
            ("readOnly", 27, Kind::Bool),
            ("xml", 28, Kind::Msg(xml)),
            ("externalDocs", 29, Kind::Msg(external_docs)),
            ("example", 30, Kind::Any),
        ],
        extensions: 31,
    };
    e.object(v, &SCHEMA)
}

/// `Definitions` and `Properties`: `repeated NamedSchema additional_properties = 1`.
fn named_schemas(e: &mut Encoder, v: &Value) -> Vec<u8> {
    e.named_map(v, schema)
}

/// `AdditionalPropertiesItem { oneof { Schema schema = 1; bool boolean = 2; } }`; a oneof
/// member has presence, so `false` is written too.
fn additional_properties(e: &mut Encoder, v: &Value) -> Vec<u8> {
    let mut w = Writer::default();
    if let Some(b) = v.as_bool() {
        w.key(2, VARINT);
        w.varint(u64::from(b));
    } else {
        let b = schema(e, v);
        w.bytes(1, &b);
    }
    w.0
}

/// `TypeItem { repeated string value = 1; }`: one type or a list of them.
fn type_item(_: &mut Encoder, v: &Value) -> Vec<u8> {
    let mut w = Writer::default();
    for t in each(v) {
        w.bytes(1, scalar_text(t).as_bytes());
    }
    w.0
}

/// `ItemsItem { repeated Schema schema = 1; }`: gnostic accepts one schema; a tuple-style
/// array is kept element by element.
fn items_item(e: &mut Encoder, v: &Value) -> Vec<u8> {
    let mut w = Writer::default();
    for item in each(v) {
        let b = schema(e, item);
        w.bytes(1, &b);
    }
    w.0
}

fn xml(e: &mut Encoder, v: &Value) -> Vec<u8> {
    const XML: Layout = Layout {
        name: "Xml",
        fields: &[
            ("name", 1, Kind::Str),
            ("namespace", 2, Kind::Str),
            ("prefix", 3, Kind::Str),
            ("attribute", 4, Kind::Bool),
            ("wrapped", 5, Kind::Bool),
        ],
        extensions: 6,
    };
    e.object(v, &XML)
}

fn parameter_definitions(e: &mut Encoder, v: &Value) -> Vec<u8> {
    e.named_map(v, parameter)
}

fn response_definitions(e: &mut Encoder, v: &Value) -> Vec<u8> {
    e.named_map(v, response)
}

/// `SecurityRequirement { repeated NamedStringArray additional_properties = 1; }`.
fn security_requirement(_: &mut Encoder, v: &Value) -> Vec<u8> {
    let mut w = Writer::default();
    for (name, scopes) in v.as_object().into_iter().flatten() {
        let mut array = Writer::default();
        each(scopes)
            .filter(|s| !s.is_array())
            .for_each(|s| array.bytes(1, scalar_text(s).as_bytes()));
        w.bytes(1, &named(name, &array.0));
    }
    w.0
}

fn security_definitions(e: &mut Encoder, v: &Value) -> Vec<u8> {
    e.named_map(v, security_definitions_item)
}

/// `SecurityDefinitionsItem`: the arm is chosen by `type` and, for OAuth 2, by `flow`.
fn security_definitions_item(e: &mut Encoder, v: &Value) -> Vec<u8> {
    let (arm, layout) = match (get_str(v, "type"), get_str(v, "flow")) {
        ("basic", _) => (1, &BASIC_SECURITY),
        ("oauth2", "implicit") => (3, &OAUTH2_IMPLICIT),
        ("oauth2", "password") => (4, &OAUTH2_PASSWORD),
        ("oauth2", "application") => (5, &OAUTH2_APPLICATION),
        ("oauth2", _) => (6, &OAUTH2_ACCESS_CODE),
        _ => (2, &API_KEY_SECURITY),
    };
    let mut w = Writer::default();
    let b = e.object(v, layout);
    w.bytes(arm, &b);
    w.0
}

const BASIC_SECURITY: Layout = Layout {
    name: "BasicAuthenticationSecurity",
    fields: &[("type", 1, Kind::Str), ("description", 2, Kind::Str)],
    extensions: 3,
};

const API_KEY_SECURITY: Layout = Layout {
    name: "ApiKeySecurity",
    fields: &[
        ("type", 1, Kind::Str),
        ("name", 2, Kind::Str),
        ("in", 3, Kind::Str),
        ("description", 4, Kind::Str),
    ],
    extensions: 5,
};

const OAUTH2_IMPLICIT: Layout = Layout {
    name: "Oauth2ImplicitSecurity",
    fields: &[
        ("type", 1, Kind::Str),
        ("flow", 2, Kind::Str),
        ("scopes", 3, Kind::Msg(oauth2_scopes)),
        ("authorizationUrl", 4, Kind::Str),
        ("description", 5, Kind::Str),
    ],
    extensions: 6,
};

const OAUTH2_PASSWORD: Layout = Layout {
    name: "Oauth2PasswordSecurity",
    fields: &[
        ("type", 1, Kind::Str),
        ("flow", 2, Kind::Str),
        ("scopes", 3, Kind::Msg(oauth2_scopes)),
        ("tokenUrl", 4, Kind::Str),
        ("description", 5, Kind::Str),
    ],
    extensions: 6,
};

const OAUTH2_APPLICATION: Layout = Layout {
    name: "Oauth2ApplicationSecurity",
    ..OAUTH2_PASSWORD
};

const OAUTH2_ACCESS_CODE: Layout = Layout {
    name: "Oauth2AccessCodeSecurity",
    fields: &[
        ("type", 1, Kind::Str),
        ("flow", 2, Kind::Str),
        ("scopes", 3, Kind::Msg(oauth2_scopes)),
        ("authorizationUrl", 4, Kind::Str),
        ("tokenUrl", 5, Kind::Str),
        ("description", 6, Kind::Str),
    ],
    extensions: 7,
};

/// `Oauth2Scopes { repeated NamedString additional_properties = 1; }`.
fn oauth2_scopes(_: &mut Encoder, v: &Value) -> Vec<u8> {
    let mut w = Writer::default();
    for (name, text) in v.as_object().into_iter().flatten() {
        let mut pair = Writer::default();
        pair.string(1, name);
        pair.string(2, &scalar_text(text));
        w.bytes(1, &pair.0);
    }
    w.0
}

/// Block YAML the way gnostic's `compiler.Marshal` writes a value after clearing its styles
/// (yaml.v3: four-space indent, plain scalars unless they would read back as another type).
mod yaml {
    use serde_json::{Map, Value};

    /// `value` as a YAML document ending in a newline.
    pub(super) fn to_yaml(value: &Value) -> String {
        let mut out = String::new();
        match value {
            Value::Object(map) if !map.is_empty() => mapping(map, 0, false, &mut out),
            Value::Array(items) if !items.is_empty() => sequence(items, 0, false, &mut out),
            other => {
                out.push_str(&scalar(other));
                out.push('\n');
            }
        }
        out
    }

    /// `inline`: the first entry continues a `- ` already written.
    fn mapping(map: &Map<String, Value>, indent: usize, inline: bool, out: &mut String) {
        for (i, (key, value)) in map.iter().enumerate() {
            if i > 0 || !inline {
                pad(indent, out);
            }
            out.push_str(&string(key));
            out.push(':');
            match value {
                Value::Object(inner) if !inner.is_empty() => {
                    out.push('\n');
                    mapping(inner, indent + 4, false, out);
                }
                Value::Array(items) if !items.is_empty() => {
                    out.push('\n');
                    sequence(items, indent + 4, false, out);
                }
                other => {
                    out.push(' ');
                    out.push_str(&scalar(other));
                    out.push('\n');
                }
            }
        }
    }

    fn sequence(items: &[Value], indent: usize, inline: bool, out: &mut String) {
        for (i, item) in items.iter().enumerate() {
            if i > 0 || !inline {
                pad(indent, out);
            }
            out.push_str("- ");
            match item {
                Value::Object(map) if !map.is_empty() => mapping(map, indent + 2, true, out),
                Value::Array(inner) if !inner.is_empty() => sequence(inner, indent + 2, true, out),
                other => {
                    out.push_str(&scalar(other));
                    out.push('\n');
                }
            }
        }
    }

    fn pad(indent: usize, out: &mut String) {
        out.extend(std::iter::repeat_n(' ', indent));
    }

    /// A leaf: empty collections in flow style, strings plain or double-quoted.
    fn scalar(value: &Value) -> String {
        match value {
            Value::Null => "null".to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Number(n) => n.to_string(),
            Value::String(s) => string(s),
            Value::Array(_) => "[]".to_string(),
            Value::Object(_) => "{}".to_string(),
        }
    }

    /// Plain when the text reads back as the same string, else a JSON string literal (a valid
    /// YAML double-quoted scalar).
    pub(super) fn string(s: &str) -> String {
        if is_plain_safe(s) {
            s.to_string()
        } else {
            serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
        }
    }

    /// Words YAML 1.1 or 1.2 resolvers read as null, booleans or special floats.
    const RESERVED: &[&str] = &[
        "null", "~", "true", "false", "yes", "no", "on", "off", "y", "n", ".inf", ".nan",
    ];

    fn is_plain_safe(s: &str) -> bool {
        let Some(first) = s.chars().next() else {
            return false;
        };
        let looks_numeric = first.is_ascii_digit() || matches!(first, '+' | '-' | '.');
        let indicator = "?:,[]{}#&*!|>'\"%@`".contains(first);
        let printable = s.chars().all(|c| c.is_ascii_graphic() || c == ' ');
        !looks_numeric
            && !indicator
            && printable
            && !s.ends_with(' ')
            && !s.ends_with(':')
            && !s.contains(": ")
            && !s.contains(" #")
            && !RESERVED.contains(&s.to_ascii_lowercase().as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// One decoded field: its number and its payload.
    #[derive(Debug, Clone, PartialEq)]
    enum Wire {
        Varint(u64),
        Fixed64(u64),
        Bytes(Vec<u8>),
    }

    fn read_varint(buf: &[u8], pos: &mut usize) -> u64 {
        let mut v = 0u64;
        for shift in (0..70).step_by(7) {
            let b = buf[*pos];
            *pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return v;
            }
        }
        panic!("varint longer than ten bytes");
    }

    /// A minimal protobuf wire-format reader: every top-level field of one message.
    fn decode(buf: &[u8]) -> Vec<(u32, Wire)> {
        let mut pos = 0;
        let mut out = Vec::new();
        while pos < buf.len() {
            let key = read_varint(buf, &mut pos);
            let field = u32::try_from(key >> 3).expect("field number");
            let value = match key & 7 {
                0 => Wire::Varint(read_varint(buf, &mut pos)),
                1 => {
                    let bytes: [u8; 8] = buf[pos..pos + 8].try_into().expect("8 bytes");
                    pos += 8;
                    Wire::Fixed64(u64::from_le_bytes(bytes))
                }
                2 => {
                    let len = usize::try_from(read_varint(buf, &mut pos)).expect("length");
                    let bytes = buf[pos..pos + len].to_vec();
                    pos += len;
                    Wire::Bytes(bytes)
                }
                wire => panic!("unexpected wire type {wire} for field {field}"),
            };
            out.push((field, value));
        }
        out
    }

    fn all(buf: &[u8], field: u32) -> Vec<Wire> {
        decode(buf)
            .into_iter()
            .filter(|(f, _)| *f == field)
            .map(|(_, v)| v)
            .collect()
    }

    /// The single length-delimited field `field`.
    fn msg(buf: &[u8], field: u32) -> Vec<u8> {
        match all(buf, field).as_slice() {
            [Wire::Bytes(b)] => b.clone(),
            other => panic!("field {field}: expected one message, got {other:?}"),
        }
    }

    fn text(buf: &[u8], field: u32) -> String {
        String::from_utf8(msg(buf, field)).expect("utf-8")
    }

    fn texts(buf: &[u8], field: u32) -> Vec<String> {
        all(buf, field)
            .into_iter()
            .map(|w| match w {
                Wire::Bytes(b) => String::from_utf8(b).expect("utf-8"),
                other => panic!("field {field}: expected bytes, got {other:?}"),
            })
            .collect()
    }

    fn varint(buf: &[u8], field: u32) -> u64 {
        match all(buf, field).as_slice() {
            [Wire::Varint(v)] => *v,
            other => panic!("field {field}: expected one varint, got {other:?}"),
        }
    }

    fn double(buf: &[u8], field: u32) -> f64 {
        match all(buf, field).as_slice() {
            [Wire::Fixed64(v)] => f64::from_bits(*v),
            other => panic!("field {field}: expected one fixed64, got {other:?}"),
        }
    }

    /// The value of the `Named* { name = 1; value = 2 }` entry called `name` among the
    /// repeated field `field`.
    fn named_entry(buf: &[u8], field: u32, name: &str) -> Vec<u8> {
        all(buf, field)
            .into_iter()
            .filter_map(|w| match w {
                Wire::Bytes(b) => Some(b),
                _ => None,
            })
            .find(|b| text(b, 1) == name)
            .map(|b| msg(&b, 2))
            .unwrap_or_else(|| panic!("no entry {name} in field {field}"))
    }

    fn names(buf: &[u8], field: u32) -> Vec<String> {
        all(buf, field)
            .into_iter()
            .map(|w| match w {
                Wire::Bytes(b) => text(&b, 1),
                other => panic!("expected a named entry, got {other:?}"),
            })
            .collect()
    }

    /// The `Any.yaml` of vendor extension `name` in repeated field `field`.
    fn extension(buf: &[u8], field: u32, name: &str) -> String {
        let any = named_entry(buf, field, name);
        assert!(all(&any, 1).is_empty(), "Any.value stays unset");
        text(&any, 2)
    }

    fn small_document() -> Value {
        json!({
            "swagger": "2.0",
            "info": {"title": "Kubernetes", "version": "v1.33.0"},
            "paths": {
                "/apis/apps/v1/namespaces/{namespace}/deployments/{name}": {
                    "parameters": [
                        {"name": "name", "in": "path", "required": true, "type": "string",
                         "uniqueItems": true, "description": "name of the Deployment"},
                        {"$ref": "#/parameters/pretty"},
                    ],
                    "patch": {
                        "operationId": "patchAppsV1NamespacedDeployment",
                        "consumes": ["application/apply-patch+yaml", "application/merge-patch+json"],
                        "produces": ["application/json"],
                        "schemes": ["https"],
                        "tags": ["apps_v1"],
                        "parameters": [
                            {"name": "body", "in": "body", "required": true,
                             "schema": {"type": "object"}},
                            {"name": "fieldValidation", "in": "query", "type": "string",
                             "uniqueItems": true},
                        ],
                        "responses": {
                            "200": {"description": "OK",
                                    "schema": {"$ref": "#/definitions/io.k8s.api.apps.v1.Deployment"}},
                            "401": {"description": "Unauthorized"},
                        },
                        "x-kubernetes-action": "patch",
                        "x-kubernetes-group-version-kind":
                            {"group": "apps", "kind": "Deployment", "version": "v1"},
                    },
                },
            },
            "definitions": {
                "io.k8s.api.core.v1.PodSpec": {
                    "description": "PodSpec is a description of a pod.",
                    "required": ["containers"],
                    "type": "object",
                    "properties": {
                        "containers": {
                            "type": "array",
                            "items": {"$ref": "#/definitions/io.k8s.api.core.v1.Container"},
                            "x-kubernetes-list-map-keys": ["name"],
                            "x-kubernetes-list-type": "map",
                            "x-kubernetes-patch-merge-key": "name",
                            "x-kubernetes-patch-strategy": "merge",
                        },
                        "nodeSelector": {
                            "type": "object",
                            "additionalProperties": {"type": "string", "default": ""},
                            "x-kubernetes-map-type": "atomic",
                        },
                        "closed": {"type": "object", "additionalProperties": false},
                        "replicas": {"type": "integer", "format": "int32", "default": 1,
                                     "minimum": -1.5, "maxLength": 300},
                        "policy": {"type": "string", "enum": ["Always", "Never"]},
                    },
                    "x-kubernetes-group-version-kind": [
                        {"group": "", "kind": "Pod", "version": "v1"},
                    ],
                },
            },
            "securityDefinitions": {
                "BearerToken": {"description": "Bearer Token authentication", "in": "header",
                                "name": "authorization", "type": "apiKey"},
            },
            "security": [{"BearerToken": []}],
        })
    }

    #[test]
    fn writer_encodes_varints_and_skips_defaults() {
        let mut w = Writer::default();
        w.varint(300);
        assert_eq!(w.0, [0xAC, 0x02]);
        let mut w = Writer::default();
        w.string(1, "");
        w.bool(2, false);
        w.int64(3, 0);
        w.double(4, 0.0);
        assert!(w.0.is_empty(), "proto3 defaults are not written");
        w.int64(3, -1);
        assert_eq!(w.0.len(), 11, "negative int64 is a ten-byte varint");
        assert_eq!(varint(&w.0, 3), u64::MAX);
        let mut w = Writer::default();
        w.string(1, "testing");
        assert_eq!(w.0, b"\x0a\x07testing");
    }

    #[test]
    fn document_top_level_fields() {
        let doc = encode_v2_document(&small_document());
        assert_eq!(text(&doc, 1), "2.0");
        let info = msg(&doc, 2);
        assert_eq!(text(&info, 1), "Kubernetes");
        assert_eq!(text(&info, 2), "v1.33.0");
        let security = msg(&doc, 12);
        let requirement = named_entry(&security, 1, "BearerToken");
        assert!(decode(&requirement).is_empty(), "an empty scope list");
        let definitions = msg(&doc, 13);
        let item = named_entry(&definitions, 1, "BearerToken");
        let api_key = msg(&item, 2);
        assert_eq!(text(&api_key, 1), "apiKey");
        assert_eq!(text(&api_key, 2), "authorization");
        assert_eq!(text(&api_key, 3), "header");
        assert_eq!(text(&api_key, 4), "Bearer Token authentication");
    }

    #[test]
    fn operations_parameters_and_responses() {
        let doc = encode_v2_document(&small_document());
        let paths = msg(&doc, 8);
        let item = named_entry(
            &paths,
            2,
            "/apis/apps/v1/namespaces/{namespace}/deployments/{name}",
        );
        let shared = all(&item, 9);
        assert_eq!(shared.len(), 2);
        let Wire::Bytes(first) = &shared[0] else {
            panic!("parameter")
        };
        let path_param = msg(&msg(&msg(first, 1), 2), 4);
        assert_eq!(varint(&path_param, 1), 1, "required");
        assert_eq!(text(&path_param, 2), "path");
        assert_eq!(text(&path_param, 3), "name of the Deployment");
        assert_eq!(text(&path_param, 4), "name");
        assert_eq!(text(&path_param, 5), "string");
        assert_eq!(varint(&path_param, 19), 1, "uniqueItems");
        let Wire::Bytes(second) = &shared[1] else {
            panic!("reference")
        };
        assert_eq!(text(&msg(second, 2), 1), "#/parameters/pretty");

        let patch = msg(&item, 8);
        assert!(all(&item, 2).is_empty(), "no GET operation");
        assert_eq!(texts(&patch, 1), ["apps_v1"]);
        assert_eq!(text(&patch, 5), "patchAppsV1NamespacedDeployment");
        assert_eq!(texts(&patch, 6), ["application/json"]);
        assert_eq!(texts(&patch, 7).len(), 2);
        assert_eq!(texts(&patch, 10), ["https"]);
        let params = all(&patch, 8);
        let Wire::Bytes(body) = &params[0] else {
            panic!("body")
        };
        let body = msg(&msg(body, 1), 1);
        assert_eq!(text(&body, 2), "body");
        assert_eq!(text(&body, 3), "body");
        assert_eq!(varint(&body, 4), 1);
        assert_eq!(texts(&msg(&msg(&body, 5), 22), 1), ["object"]);
        let Wire::Bytes(query) = &params[1] else {
            panic!("query")
        };
        let query = msg(&msg(&msg(query, 1), 2), 3);
        assert_eq!(text(&query, 4), "fieldValidation");
        assert_eq!(
            text(&query, 6),
            "string",
            "type shifts past allowEmptyValue"
        );
        assert_eq!(varint(&query, 20), 1, "uniqueItems");

        let responses = msg(&patch, 9);
        assert_eq!(names(&responses, 1), ["200", "401"]);
        let ok = msg(&named_entry(&responses, 1, "200"), 1);
        assert_eq!(text(&ok, 1), "OK");
        let schema = msg(&msg(&ok, 2), 1);
        assert_eq!(
            text(&schema, 1),
            "#/definitions/io.k8s.api.apps.v1.Deployment"
        );
        assert_eq!(extension(&patch, 13, "x-kubernetes-action"), "patch\n");
        assert_eq!(
            extension(&patch, 13, "x-kubernetes-group-version-kind"),
            "group: apps\nkind: Deployment\nversion: v1\n"
        );
    }

    #[test]
    fn definitions_schemas_and_extensions() {
        let doc = encode_v2_document(&small_document());
        let pod_spec = named_entry(&msg(&doc, 9), 1, "io.k8s.api.core.v1.PodSpec");
        assert_eq!(text(&pod_spec, 4), "PodSpec is a description of a pod.");
        assert_eq!(texts(&pod_spec, 19), ["containers"]);
        assert_eq!(texts(&msg(&pod_spec, 22), 1), ["object"]);
        assert_eq!(
            extension(&pod_spec, 31, "x-kubernetes-group-version-kind"),
            "- group: \"\"\n  kind: Pod\n  version: v1\n"
        );
        let properties = msg(&pod_spec, 25);
        assert_eq!(
            names(&properties, 1),
            ["containers", "nodeSelector", "closed", "replicas", "policy"]
        );

        let containers = named_entry(&properties, 1, "containers");
        let items = all(&msg(&containers, 23), 1);
        let [Wire::Bytes(item)] = items.as_slice() else {
            panic!("one item schema")
        };
        assert_eq!(text(item, 1), "#/definitions/io.k8s.api.core.v1.Container");
        assert_eq!(
            extension(&containers, 31, "x-kubernetes-patch-merge-key"),
            "name\n"
        );
        assert_eq!(
            extension(&containers, 31, "x-kubernetes-patch-strategy"),
            "merge\n"
        );
        assert_eq!(
            extension(&containers, 31, "x-kubernetes-list-type"),
            "map\n"
        );
        assert_eq!(
            extension(&containers, 31, "x-kubernetes-list-map-keys"),
            "- name\n"
        );

        let node_selector = named_entry(&properties, 1, "nodeSelector");
        let value_schema = msg(&msg(&node_selector, 21), 1);
        assert_eq!(texts(&msg(&value_schema, 22), 1), ["string"]);
        assert_eq!(
            text(&msg(&value_schema, 5), 2),
            "\"\"\n",
            "an empty-string default"
        );
        let closed = named_entry(&properties, 1, "closed");
        assert_eq!(
            varint(&msg(&closed, 21), 2),
            0,
            "additionalProperties: false is kept"
        );

        let replicas = named_entry(&properties, 1, "replicas");
        assert_eq!(text(&replicas, 2), "int32");
        assert_eq!(text(&msg(&replicas, 5), 2), "1\n");
        assert_eq!(double(&replicas, 9), -1.5);
        assert_eq!(varint(&replicas, 11), 300);
        let policy = named_entry(&properties, 1, "policy");
        let yaml: Vec<String> = all(&policy, 20)
            .into_iter()
            .map(|w| match w {
                Wire::Bytes(any) => text(&any, 2),
                other => panic!("enum value {other:?}"),
            })
            .collect();
        assert_eq!(yaml, ["Always\n", "Never\n"]);
    }

    #[test]
    fn oneof_arms_follow_gnostic() {
        let mut e = Encoder::default();
        let file = schema_item(&mut e, &json!({"type": "file"}));
        assert_eq!(text(&msg(&file, 2), 6), "file");
        let reference = response_value(&mut e, &json!({"$ref": "#/responses/x"}));
        assert_eq!(text(&msg(&reference, 2), 1), "#/responses/x");
        let header = parameter(
            &mut e,
            &json!({"in": "header", "name": "h", "type": "string"}),
        );
        assert_eq!(text(&msg(&msg(&header, 2), 1), 5), "string");
        let form = parameter(
            &mut e,
            &json!({"in": "formData", "name": "f", "type": "file"}),
        );
        assert_eq!(text(&msg(&msg(&form, 2), 2), 6), "file");
        let basic = security_definitions_item(&mut e, &json!({"type": "basic"}));
        assert_eq!(text(&msg(&basic, 1), 1), "basic");
        let types = type_item(&mut e, &json!(["string", "null"]));
        assert_eq!(texts(&types, 1), ["string", "null"]);
        assert!(e.dropped.is_empty(), "{:?}", e.dropped);
        schema(&mut e, &json!({"nullable": true}));
        assert_eq!(e.dropped, ["Schema.nullable"]);
    }

    #[test]
    fn yaml_matches_gnostic_block_style() {
        let cases = [
            (json!("merge"), "merge\n"),
            (json!(""), "\"\"\n"),
            (json!("true"), "\"true\"\n"),
            (json!("1.5"), "\"1.5\"\n"),
            (json!("a: b"), "\"a: b\"\n"),
            (json!("two\nlines"), "\"two\\nlines\"\n"),
            (json!(3), "3\n"),
            (json!(false), "false\n"),
            (json!(null), "null\n"),
            (json!({}), "{}\n"),
            (json!([]), "[]\n"),
            (
                json!(["containerPort", "protocol"]),
                "- containerPort\n- protocol\n",
            ),
            (
                json!({"a": {"b": [1, {"c": "d", "e": []}]}}),
                "a:\n    b:\n        - 1\n        - c: d\n          e: []\n",
            ),
            (json!([["x", "w"], "z"]), "- - x\n  - w\n- z\n"),
            (json!("y"), "\"y\"\n"),
        ];
        for (value, expected) in cases {
            assert_eq!(yaml::to_yaml(&value), expected, "{value}");
        }
    }

    #[test]
    fn yaml_reads_back_as_the_same_value() {
        let values = [
            json!({"group": "", "kind": "Pod", "version": "v1"}),
            json!([
                "-",
                "- a",
                "#x",
                "a #b",
                "yes",
                "Off",
                "~",
                "0x1F",
                ".inf",
                "é",
                "tab\there"
            ]),
            json!({"quoted key: x": {"nested": [[1, 2.5], {"k": null}]}, "t": "retainKeys,merge"}),
        ];
        for value in values {
            let text = yaml::to_yaml(&value);
            let back: Value = serde_saphyr::from_str(&text).expect("valid YAML");
            assert_eq!(back, value, "{text}");
        }
    }

    #[test]
    fn served_document_encodes_completely() {
        let json_doc = crate::openapi::openapi_v2();
        let mut e = Encoder::default();
        let doc = e.document(json_doc);
        assert!(
            e.dropped.is_empty(),
            "keys gnostic rejects: {:?}",
            e.dropped
        );
        assert!(doc.len() > 100_000, "{} bytes", doc.len());
        assert_eq!(text(&doc, 1), "2.0");
        let count = |key: &str| json_doc[key].as_object().map_or(0, Map::len);
        assert_eq!(all(&msg(&doc, 8), 2).len(), count("paths"));
        let definitions = msg(&doc, 9);
        assert_eq!(all(&definitions, 1).len(), count("definitions"));
        let pod_spec = named_entry(&definitions, 1, "io.k8s.api.core.v1.PodSpec");
        let containers = named_entry(&msg(&pod_spec, 25), 1, "containers");
        assert_eq!(
            extension(&containers, 31, "x-kubernetes-patch-merge-key"),
            "name\n"
        );
        assert_eq!(
            extension(&containers, 31, "x-kubernetes-patch-strategy"),
            "merge\n"
        );
        let deployment = named_entry(&definitions, 1, "io.k8s.api.apps.v1.Deployment");
        assert_eq!(
            extension(&deployment, 31, "x-kubernetes-group-version-kind"),
            "- group: apps\n  kind: Deployment\n  version: v1\n"
        );
    }
}
