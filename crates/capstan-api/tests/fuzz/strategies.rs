//! Structure-aware generators: JSON shaped like Kubernetes objects (valid templates plus random
//! mutations), patch documents with strategic-merge directives, JSON patch operations,
//! selector strings from the selector alphabet, and protobuf messages in the k8s envelope.

use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{Map, Value};

/// Field names of the built-in kinds, plus patch directives and odd keys.
#[rustfmt::skip]
pub const KEYS: &[&str] = &[
    "metadata", "name", "namespace", "labels", "annotations", "generateName", "uid",
    "resourceVersion", "finalizers", "ownerReferences", "managedFields", "creationTimestamp",
    "deletionTimestamp", "generation", "spec", "status", "containers", "initContainers", "image",
    "command", "args", "ports", "containerPort", "hostPort", "protocol", "env", "value",
    "valueFrom", "resources", "limits", "requests", "cpu", "memory", "volumes", "volumeMounts",
    "mountPath", "configMap", "secret", "emptyDir", "replicas", "selector", "matchLabels",
    "matchExpressions", "key", "operator", "values", "template", "strategy", "type",
    "rollingUpdate", "maxSurge", "maxUnavailable", "data", "stringData", "binaryData", "rules",
    "apiGroups", "verbs", "subjects", "roleRef", "kind", "apiVersion", "clusterIP", "clusterIPs",
    "targetPort", "port", "nodePort", "tolerations", "effect", "nodeSelector", "nodeName",
    "restartPolicy", "schedule", "jobTemplate", "completions", "parallelism", "backoffLimit",
    "serviceName", "holderIdentity", "leaseDurationSeconds", "conditions", "phase", "podIP",
    "hostNetwork", "securityContext", "privileged", "runAsUser", "accessModes", "storage",
    "fieldsV1", "fieldsType", "manager", "operation", "time", "f:metadata", "k:{\"name\":\"a\"}",
    "v:\"a\"", "$patch", "$retainKeys", "$setElementOrder/containers", "$setElementOrder/ports",
    "$deleteFromPrimitiveList/finalizers", "$setElementOrder/finalizers", "x", "",
];

/// String values that mean something somewhere (quantities, enums, times, base64, names).
#[rustfmt::skip]
pub const STRINGS: &[&str] = &[
    "", "a", "web", "nginx", "busybox:1.36", "100m", "1Gi", "0.5", "-1", "1e3", "1E", "12x", "TCP",
    "UDP", "SCTP", "Always", "Never", "OnFailure", "IfNotPresent", "ClusterIP", "NodePort",
    "LoadBalancer", "ExternalName", "None", "Recreate", "RollingUpdate", "25%", "Exists", "Equal",
    "In", "NotIn", "DoesNotExist", "NoSchedule", "NoExecute", "Opaque", "kubernetes.io/tls",
    "2024-01-02T03:04:05Z", "not-a-time", "aGVsbG8=", "aGVsbG8", "!!", "*/5 * * * *", "@hourly",
    "bad cron", "replace", "delete", "merge", "retainKeys", "x.io/k", "10.0.0.1", "::1", "fd00::1",
    "300.1.1.1", "A_B", "-leading", "trailing-", "é", "\u{0}", "apps/v1", "v1", "Pod", "Deployment",
    "k8s\u{0}", "80", "http", "65536", "0", "true",
];

/// A JSON scalar with a bias toward Kubernetes-looking values.
pub fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::Bool),
        1 => any::<i64>().prop_map(Value::from),
        2 => (-3i64..70_000).prop_map(Value::from),
        1 => any::<u64>().prop_map(Value::from),
        1 => any::<f64>().prop_map(Value::from),
        4 => select(STRINGS).prop_map(|s| Value::String(s.into())),
        2 => ".{0,12}".prop_map(Value::String),
    ]
}

pub fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => select(KEYS).prop_map(String::from),
        1 => "[a-zA-Z$/.:{}\"-]{0,10}",
    ]
}

/// A JSON value up to a few levels deep whose object keys are mostly Kubernetes field names.
pub fn value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<String, Value>>())),
        ]
    })
}

/// A change at a path of child indexes (taken modulo the number of children at each level).
#[derive(Clone, Debug)]
pub enum Mutation {
    Set(Vec<u8>, Value),
    Remove(Vec<u8>),
    Insert(Vec<u8>, String, Value),
    Duplicate(Vec<u8>),
}

fn path() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..7)
}

pub fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (path(), value()).prop_map(|(p, v)| Mutation::Set(p, v)),
        2 => path().prop_map(Mutation::Remove),
        3 => (path(), key(), value()).prop_map(|(p, k, v)| Mutation::Insert(p, k, v)),
        1 => path().prop_map(Mutation::Duplicate),
    ]
}

fn child_mut(v: &mut Value, step: u8) -> Option<&mut Value> {
    match v {
        Value::Object(m) if !m.is_empty() => {
            let i = usize::from(step) % m.len();
            m.values_mut().nth(i)
        }
        Value::Array(a) if !a.is_empty() => {
            let i = usize::from(step) % a.len();
            a.get_mut(i)
        }
        _ => None,
    }
}

fn navigate<'a>(mut v: &'a mut Value, path: &[u8]) -> &'a mut Value {
    for &step in path {
        if child_mut(v, step).is_none() {
            break;
        }
        v = child_mut(v, step).expect("checked above");
    }
    v
}

pub fn apply_mutation(root: &mut Value, m: &Mutation) {
    match m {
        Mutation::Set(p, val) => *navigate(root, p) = val.clone(),
        Mutation::Remove(p) => {
            let Some((last, parent)) = p.split_last() else {
                return;
            };
            match navigate(root, parent) {
                Value::Object(o) if !o.is_empty() => {
                    let i = usize::from(*last) % o.len();
                    if let Some(k) = o.keys().nth(i).cloned() {
                        o.remove(&k);
                    }
                }
                Value::Array(a) if !a.is_empty() => {
                    let i = usize::from(*last) % a.len();
                    a.remove(i);
                }
                _ => {}
            }
        }
        Mutation::Insert(p, k, val) => match navigate(root, p) {
            Value::Object(o) => {
                o.insert(k.clone(), val.clone());
            }
            Value::Array(a) => a.push(val.clone()),
            other => *other = Value::Object([(k.clone(), val.clone())].into_iter().collect()),
        },
        Mutation::Duplicate(p) => {
            if let Value::Array(a) = navigate(root, p)
                && let Some(first) = a.first().cloned()
            {
                a.push(first);
            }
        }
    }
}

/// A template index with mutations: the mutated object stays mostly valid, so decoding,
/// defaulting and validation get past their first checks.
pub fn mutated(max: usize) -> impl Strategy<Value = (usize, Vec<Mutation>)> {
    (
        0..crate::templates::count(),
        prop::collection::vec(mutation(), 0..max),
    )
}

pub fn build(index: usize, muts: &[Mutation]) -> Value {
    let mut v = crate::templates::object(index);
    for m in muts {
        apply_mutation(&mut v, m);
    }
    v
}

/// A strategic-merge directive key and value (`$patch`, `$retainKeys`, `$setElementOrder/..`,
/// `$deleteFromPrimitiveList/..`), well-formed or not.
pub fn directive() -> impl Strategy<Value = (String, Value)> {
    let list_field = select(
        &[
            "containers",
            "ports",
            "env",
            "finalizers",
            "volumes",
            "args",
            "x",
        ][..],
    );
    let names = prop::collection::vec(
        select(&["web", "side", "http", "a", "", "kubernetes"][..]),
        0..4,
    );
    prop_oneof![
        3 => select(&["replace", "delete", "merge", "bogus", ""][..])
            .prop_map(|v| ("$patch".to_string(), Value::String(v.into()))),
        2 => prop::collection::vec(key(), 0..4)
            .prop_map(|k| ("$retainKeys".to_string(), k.into_iter().map(Value::String).collect())),
        2 => (list_field.clone(), names.clone(), any::<bool>()).prop_map(|(f, n, objects)| {
            let items = n.into_iter().map(|n| if objects {
                serde_json::json!({"name": n})
            } else {
                Value::String(n.into())
            });
            (format!("$setElementOrder/{f}"), items.collect())
        }),
        2 => (list_field, names).prop_map(|(f, n)| {
            (format!("$deleteFromPrimitiveList/{f}"), n.into_iter().map(|s| Value::String(s.into())).collect())
        }),
        1 => value().prop_map(|v| ("$patch".to_string(), v)),
    ]
}

/// A mutation that inserts a directive somewhere.
pub fn directive_mutation() -> impl Strategy<Value = Mutation> {
    (path(), directive()).prop_map(|(p, (k, v))| Mutation::Insert(p, k, v))
}

/// A patch for template `index`: the template with value and directive mutations.
pub fn strategic_patch_for() -> impl Strategy<Value = Vec<Mutation>> {
    prop::collection::vec(
        prop_oneof![2 => mutation(), 3 => directive_mutation()],
        0..6,
    )
}

/// Strategic merge patch documents: k8s-shaped objects with `$patch` and friends.
pub fn strategic_patch() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => (0..crate::templates::count(), prop::collection::vec(mutation(), 0..6))
            .prop_map(|(i, m)| build(i, &m)),
        2 => value(),
        1 => prop::collection::vec((key(), value()), 0..4)
            .prop_map(|kv| Value::Object(kv.into_iter().collect())),
    ]
}

#[rustfmt::skip]
pub const POINTERS: &[&str] = &[
    "", "/", "/metadata", "/metadata/labels", "/metadata/labels/app", "/metadata/labels/a~1b",
    "/metadata/annotations/x", "/metadata/name", "/metadata/finalizers/0", "/metadata/finalizers/-",
    "/spec", "/spec/replicas", "/spec/containers", "/spec/containers/0", "/spec/containers/-",
    "/spec/containers/0/image", "/spec/containers/1", "/spec/template/spec/containers/0/image",
    "/spec/ports/0/port", "/data/a", "/status", "/kind", "/apiVersion", "/x/y/z", "/~0", "/~1",
    "/~2", "/spec/containers/00", "/spec/containers/-1", "/spec/containers/99999999999999999999",
];

fn pointer() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        4 => select(KEYS).prop_map(String::from),
        2 => "[0-9]{1,2}",
        1 => Just("-".to_string()),
        1 => select(&["~0", "~1", "~2", "~", ""][..]).prop_map(String::from),
        1 => ".{0,3}",
    ];
    prop_oneof![
        2 => select(POINTERS).prop_map(String::from),
        1 => prop::collection::vec(segment, 0..5)
            .prop_map(|segs| segs.iter().map(|s| format!("/{s}")).collect()),
    ]
}

/// RFC 6902 documents: operations over Kubernetes-looking paths, sometimes malformed.
pub fn json_patch() -> impl Strategy<Value = Value> {
    let op = (
        select(&["add", "remove", "replace", "move", "copy", "test", "bogus"][..]),
        pointer(),
        pointer(),
        value(),
        0u8..8,
    )
        .prop_map(|(op, path, from, value, shape)| {
            let mut m = Map::new();
            m.insert("op".into(), Value::String(op.into()));
            if shape != 1 {
                m.insert("path".into(), Value::String(path));
            }
            if matches!(op, "move" | "copy") || shape == 2 {
                m.insert("from".into(), Value::String(from));
            }
            if shape != 3 {
                m.insert("value".into(), value);
            }
            Value::Object(m)
        });
    prop_oneof![
        4 => prop::collection::vec(op, 0..5).prop_map(Value::Array),
        1 => value(),
    ]
}

#[rustfmt::skip]
const LABEL_TOKENS: &[&str] = &[
    "a", "b", "app", "tier", "x.io/k", "example.com/name", "in", "notin", "(", ")", ",", "=", "==",
    "!=", "!", ">", "<", " ", " ", "\t", "1", "-1", "12", "007", "A_b-c.d", "a/b/c", "-a", "a-",
    "é", "in(", "x in (a,b)", "!x", "9223372036854775808", "", ".",
];

/// Label selector text from the selector alphabet.
pub fn label_selector() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::collection::vec(select(LABEL_TOKENS), 0..12).prop_map(|t| t.concat()),
        2 => "[a-z0-9./_ =!(),<>-]{0,40}",
        1 => ".{0,40}",
    ]
}

#[rustfmt::skip]
const FIELD_TOKENS: &[&str] = &[
    "metadata.name", "metadata.namespace", "spec.nodeName", "status.phase", "spec.type",
    "involvedObject.name", "a", "=", "==", "!=", ",", "\\", "\\,", "\\=", "\\\\", "x", "", " ", "!",
    "é", "Running",
];

/// Field selector text from the selector alphabet.
pub fn field_selector() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::collection::vec(select(FIELD_TOKENS), 0..10).prop_map(|t| t.concat()),
        2 => "[a-z.=!,\\\\ ]{0,30}",
        1 => ".{0,40}",
    ]
}

/// Quantity-shaped text: sign, digits, fraction, exponent, suffix, stray characters.
pub fn quantity() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[ +-]?[0-9]{0,20}(\\.[0-9]{0,6})?([eE][+-]?[0-9]{0,4})?(n|u|m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei|e|E|i|x)? ?",
        1 => ".{0,16}",
    ]
}

/// One protobuf field as generated; `Msg` nests an encoded message as a length-delimited field.
#[derive(Clone, Debug)]
pub enum Pb {
    Varint(u32, u64),
    Fixed64(u32, u64),
    Fixed32(u32, u32),
    Bytes(u32, Vec<u8>),
    Msg(u32, Vec<Pb>),
    Garbage(Vec<u8>),
}

fn field_number() -> impl Strategy<Value = u32> {
    prop_oneof![8 => 1u32..16, 1 => 16u32..40, 1 => any::<u32>()]
}

pub fn pb_fields() -> impl Strategy<Value = Vec<Pb>> {
    let leaf = prop_oneof![
        3 => (field_number(), any::<u64>()).prop_map(|(n, v)| Pb::Varint(n, v)),
        2 => (field_number(), 0u64..3).prop_map(|(n, v)| Pb::Varint(n, v)),
        1 => (field_number(), any::<u64>()).prop_map(|(n, v)| Pb::Fixed64(n, v)),
        1 => (field_number(), any::<u32>()).prop_map(|(n, v)| Pb::Fixed32(n, v)),
        4 => (field_number(), select(STRINGS)).prop_map(|(n, s)| Pb::Bytes(n, s.as_bytes().to_vec())),
        2 => (field_number(), prop::collection::vec(any::<u8>(), 0..12)).prop_map(|(n, b)| Pb::Bytes(n, b)),
        1 => prop::collection::vec(any::<u8>(), 0..4).prop_map(Pb::Garbage),
    ];
    let one = leaf.prop_recursive(6, 96, 8, |inner| {
        (field_number(), prop::collection::vec(inner, 0..8)).prop_map(|(n, f)| Pb::Msg(n, f))
    });
    prop::collection::vec(one, 0..10)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_key(out: &mut Vec<u8>, number: u32, wire: u64) {
    put_varint(out, (u64::from(number) << 3) | wire);
}

fn put_bytes(out: &mut Vec<u8>, number: u32, b: &[u8]) {
    put_key(out, number, 2);
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

pub fn encode(fields: &[Pb]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in fields {
        match f {
            Pb::Varint(n, v) => {
                put_key(&mut out, *n, 0);
                put_varint(&mut out, *v);
            }
            Pb::Fixed64(n, v) => {
                put_key(&mut out, *n, 1);
                out.extend_from_slice(&v.to_le_bytes());
            }
            Pb::Fixed32(n, v) => {
                put_key(&mut out, *n, 5);
                out.extend_from_slice(&v.to_le_bytes());
            }
            Pb::Bytes(n, b) => put_bytes(&mut out, *n, b),
            Pb::Msg(n, inner) => put_bytes(&mut out, *n, &encode(inner)),
            Pb::Garbage(b) => out.extend_from_slice(b),
        }
    }
    out
}

/// The types kubectl sends as protobuf, plus a few it does not.
#[rustfmt::skip]
pub const PB_TYPES: &[(&str, &str)] = &[
    ("v1", "Namespace"), ("v1", "ConfigMap"), ("v1", "Secret"), ("v1", "ServiceAccount"),
    ("v1", "Service"), ("v1", "Pod"), ("v1", "ResourceQuota"), ("apps/v1", "Deployment"),
    ("batch/v1", "Job"), ("batch/v1", "CronJob"), ("rbac.authorization.k8s.io/v1", "Role"),
    ("rbac.authorization.k8s.io/v1", "ClusterRole"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
    ("scheduling.k8s.io/v1", "PriorityClass"), ("authentication.k8s.io/v1", "TokenRequest"),
    ("v1", "Node"), ("", ""), ("v1", "Nope"),
];

/// A request body: `k8s\0` and a runtime.Unknown carrying a type and a random message.
pub fn pb_body() -> impl Strategy<Value = (usize, Vec<u8>)> {
    (
        0..PB_TYPES.len(),
        pb_fields(),
        0u8..16,
        prop::collection::vec(any::<u8>(), 0..6),
    )
        .prop_map(|(t, fields, shape, junk)| {
            let (api_version, kind) = PB_TYPES[t];
            let mut type_meta = Vec::new();
            put_bytes(&mut type_meta, 1, api_version.as_bytes());
            put_bytes(&mut type_meta, 2, kind.as_bytes());
            let mut unknown = Vec::new();
            put_bytes(&mut unknown, 1, &type_meta);
            put_bytes(&mut unknown, 2, &encode(&fields));
            match shape {
                0 => put_bytes(&mut unknown, 3, b"gzip"),
                1 => put_bytes(&mut unknown, 4, b"application/json"),
                2 => put_bytes(&mut unknown, 4, b"application/vnd.kubernetes.protobuf"),
                3 => unknown.extend_from_slice(&junk),
                _ => {}
            }
            let mut body = if shape == 4 {
                Vec::new()
            } else {
                b"k8s\0".to_vec()
            };
            body.extend_from_slice(&unknown);
            (t, body)
        })
}

#[rustfmt::skip]
const YAML_TOKENS: &[&str] = &[
    "a", "b", "metadata", "name", ":", ": ", " ", "  ", "\n", "\n  ", "- ", "&x ", "*x", "{", "}",
    "[", "]", ",", "'", "\"", "!!str ", "!!binary ", "!!int ", "!!map ", "---\n", "...\n", "# c",
    "|\n", ">-\n", "? ", "<<: *x", "1e3", "0x1F", "0o17", "~", "null", "true", "no", "%YAML 1.2\n",
    "\t", "@", "`", "\\", "é", "\u{feff}", "9223372036854775808", "-.inf", ".nan", "2001-12-14",
];

/// YAML-ish text from YAML's punctuation and scalars.
pub fn yaml_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::collection::vec(select(YAML_TOKENS), 0..24).prop_map(|t| t.concat()),
        1 => ".{0,60}",
    ]
}
