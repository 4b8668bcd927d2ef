//! The shape of a Kubernetes protobuf message: field numbers mapped to JSON names and kinds.
//! Numbers come from upstream's `generated.proto` files; Go pointer fields are marked so a
//! zero value that was explicitly set (e.g. `replicas: 0`) survives, while zero values of
//! plain Go fields are dropped as `omitempty` would.

/// How one field's value is encoded and rendered to JSON.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Str,
    Int32,
    Int64,
    Bool,
    /// Raw bytes, rendered as standard base64 as Go's JSON does for `[]byte`.
    Bytes,
    Msg(&'static Message),
    /// A Go embedded struct tagged `json:",inline"`: its fields merge into the parent.
    Inline(&'static Message),
    /// metav1.Time (Timestamp seconds=1, nanos=2), rendered RFC3339 in UTC.
    Time,
    /// resource.Quantity (string=1), rendered as its string.
    Quantity,
    /// intstr.IntOrString (type=1, intVal=2, strVal=3), rendered as a number or a string.
    IntOrString,
    /// `map<string, V>` as repeated entries with key=1, value=2.
    Map(&'static Kind),
}

/// Whether a field repeats and whether Go holds it behind a pointer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Card {
    /// A plain Go value: zero values are omitted from the JSON.
    Value,
    /// A Go pointer: present on the wire means set, even when zero.
    Pointer,
    /// A Go slice.
    Repeated,
}

/// One field of a message.
#[derive(Debug)]
pub struct Field {
    pub number: u32,
    pub json: &'static str,
    pub kind: Kind,
    pub card: Card,
}

/// A message type: its Go name (for errors) and its fields.
#[derive(Debug)]
pub struct Message {
    pub name: &'static str,
    pub fields: &'static [Field],
}

impl Message {
    pub fn field(&self, number: u32) -> Option<&Field> {
        self.fields.iter().find(|f| f.number == number)
    }
}

/// A plain (non-pointer) field.
pub const fn v(number: u32, json: &'static str, kind: Kind) -> Field {
    Field {
        number,
        json,
        kind,
        card: Card::Value,
    }
}

/// A Go pointer field.
pub const fn p(number: u32, json: &'static str, kind: Kind) -> Field {
    Field {
        number,
        json,
        kind,
        card: Card::Pointer,
    }
}

/// A repeated field.
pub const fn r(number: u32, json: &'static str, kind: Kind) -> Field {
    Field {
        number,
        json,
        kind,
        card: Card::Repeated,
    }
}

pub const STR_MAP: Kind = Kind::Map(&Kind::Str);
pub const BYTES_MAP: Kind = Kind::Map(&Kind::Bytes);
pub const QUANTITY_MAP: Kind = Kind::Map(&Kind::Quantity);
