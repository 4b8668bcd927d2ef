//! Fuzzing targets (proptest) over what a request can reach in capstan-api: body decoding
//! (JSON, YAML, protobuf), decoding checks, defaulting and validation of the decoded object,
//! JSON patch, merge patch, strategic merge patch, server-side apply, label and field
//! selectors and quantities. Property everywhere: no panic; plus cheap invariants (empty
//! patches are identities, selectors round-trip through Display, applying twice = once).
//! `scripts/fuzz.sh` runs each target for a time budget (see runner.rs for the env vars).

mod runner;
mod strategies;
mod templates;

use capstan_api::resources::{RESOURCES, find_kind};
use capstan_api::selectors::{FieldSelector, LabelSelector, Operator};
use capstan_api::table::IncludeObject;
use capstan_api::{
    ResourceInfo, Subresource, apply, defaults, patch, protobuf, quantity, selectors, table, typed,
    validation,
};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use runner::{check, fuzz};
use serde_json::{Value, json};

const NOW: &str = "2024-05-06T07:08:09Z";

fn resource(i: usize) -> &'static ResourceInfo {
    &RESOURCES[i % RESOURCES.len()]
}

/// What the API server does with a decoded body before storing it: decoding checks, the typed
/// round trip, defaulting, validation (create, and update against `old`), field and label
/// extraction for selectors, table rendering and managedFields tracking.
fn pipeline(
    info: &'static ResourceInfo,
    obj: &Value,
    old: Option<&Value>,
) -> Result<(), TestCaseError> {
    let _ = validation::unknown_field_messages(info, obj);
    if validation::check_decodes(info, obj).is_err() {
        return Ok(());
    }
    let Ok(mut norm) = typed::roundtrip(info, obj) else {
        return Ok(());
    };
    let again = typed::roundtrip(info, &norm);
    check(again.as_ref() == Ok(&norm), || {
        format!("typed round trip is not idempotent: {norm} then {again:?}")
    })?;
    defaults::apply_defaults(info, &mut norm);
    let mut twice = norm.clone();
    defaults::apply_defaults(info, &mut twice);
    check(twice == norm, || {
        format!("defaulting is not idempotent: {norm} then {twice}")
    })?;
    let _ = validation::validate(info, &norm, None);
    if let Some(old) = old {
        let _ = validation::validate(info, &norm, Some(old));
    }
    let fields = selectors::object_fields(info, &norm);
    let labels = selectors::object_labels(&norm);
    let _ = (fields, labels);
    let now = jiff::Timestamp::UNIX_EPOCH;
    let _ = table::to_row(info, &norm, IncludeObject::Object, now);
    let _ = table::to_table(
        info,
        std::slice::from_ref(&norm),
        IncludeObject::Metadata,
        now,
    );
    let mut tracked = norm.clone();
    apply::track_update(info, old, &mut tracked, "fuzz", None, NOW);
    if info.has_subresource(Subresource::Status) {
        apply::track_update(
            info,
            Some(&tracked.clone()),
            &mut norm,
            "kubelet",
            Some("status"),
            NOW,
        );
    }
    let _ = apply::managed_fields(&tracked);
    Ok(())
}

/// The stored form of a template (normalised and defaulted), the `old` of an update.
fn stored(index: usize) -> Value {
    let info = templates::info(index);
    let mut v = typed::roundtrip(info, &templates::object(index)).unwrap_or_default();
    defaults::apply_defaults(info, &mut v);
    v
}

fn object_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => prop::collection::vec(any::<u8>(), 0..64),
        3 => strategies::mutated(6).prop_map(|(i, m)| serde_json::to_vec(&strategies::build(i, &m)).unwrap_or_default()),
        2 => (strategies::mutated(3), any::<prop::sample::Index>(), any::<u8>(), any::<bool>()).prop_map(
            |((i, m), at, byte, cut)| {
                let mut b = serde_json::to_vec(&strategies::build(i, &m)).unwrap_or_default();
                if !b.is_empty() {
                    let at = at.index(b.len());
                    if cut { b.truncate(at) } else { b[at] = byte }
                }
                b
            }
        ),
    ]
}

#[test]
fn decode_json() {
    fuzz(
        "decode_json",
        (object_bytes(), any::<usize>()),
        |(body, r)| {
            let Ok(obj) = serde_json::from_slice::<Value>(&body) else {
                return Ok(());
            };
            let info = obj
                .get("apiVersion")
                .and_then(Value::as_str)
                .zip(obj.get("kind").and_then(Value::as_str))
                .and_then(|(a, k)| find_kind(a, k))
                .unwrap_or_else(|| resource(r));
            pipeline(info, &obj, None)
        },
    );
}

#[test]
fn decode_yaml() {
    // Deep nesting must be refused, not overflow the stack (a body may be up to 3 MB).
    for depth in [1_000, 100_000] {
        for (open, close) in [("[", "]"), ("{a: ", "}"), ("- ", "")] {
            let text = format!("{}1{}", open.repeat(depth), close.repeat(depth));
            let _ = serde_saphyr::from_str::<Value>(&text);
        }
    }
    let text = prop_oneof![
        3 => strategies::yaml_text(),
        2 => strategies::mutated(6).prop_map(|(i, m)| serde_json::to_string_pretty(&strategies::build(i, &m)).unwrap_or_default()),
    ];
    fuzz("decode_yaml", (text, any::<usize>()), |(text, r)| {
        // As the API server's decode_body does for application/yaml and apply-patch+yaml.
        let Ok(obj) = serde_saphyr::from_str::<Value>(&text) else {
            return Ok(());
        };
        pipeline(resource(r), &obj, None)
    });
}

#[test]
fn decode_protobuf() {
    let body = prop_oneof![
        4 => strategies::pb_body(),
        1 => (0..strategies::PB_TYPES.len(), prop::collection::vec(any::<u8>(), 0..64))
            .prop_map(|(t, b)| (t, [b"k8s\0".as_slice(), &b].concat())),
    ];
    fuzz(
        "decode_protobuf",
        (body, any::<usize>()),
        |((t, body), r)| {
            let (api_version, kind) = strategies::PB_TYPES[t];
            let info = find_kind(api_version, kind).unwrap_or_else(|| resource(r));
            let Ok(obj) = protobuf::decode_request(info, &body) else {
                return Ok(());
            };
            check(obj.is_object(), || {
                format!("protobuf decoded to a non-object: {obj}")
            })?;
            pipeline(info, &obj, None)
        },
    );
}

#[test]
fn validate_objects() {
    let input = prop_oneof![
        4 => strategies::mutated(6).prop_map(|(i, m)| (templates::info(i), strategies::build(i, &m), Some(stored(i)))),
        1 => (any::<usize>(), strategies::value()).prop_map(|(r, v)| (resource(r), v, None)),
    ];
    fuzz("validate_objects", input, |(info, obj, old)| {
        pipeline(info, &obj, old.as_ref())
    });
}

#[test]
fn json_patch() {
    fuzz(
        "json_patch",
        (strategies::mutated(3), strategies::json_patch()),
        |((i, m), p)| {
            let info = templates::info(i);
            let target = strategies::build(i, &m);
            let same = patch::apply_json_patch(&target, b"[]");
            check(same.as_ref().ok() == Some(&target), || {
                format!("[] changed the object: {same:?}")
            })?;
            let bytes = serde_json::to_vec(&p).unwrap_or_default();
            if let Ok(out) = patch::apply_json_patch(&target, &bytes) {
                pipeline(info, &out, Some(&stored(i)))?;
            }
            Ok(())
        },
    );
}

#[test]
fn merge_patch() {
    fuzz(
        "merge_patch",
        (strategies::mutated(3), strategies::strategic_patch()),
        |((i, m), p)| {
            let info = templates::info(i);
            let target = strategies::build(i, &m);
            let same = patch::apply_merge_patch(&target, b"{}");
            // RFC 7386 turns a non-object target into an object; an object stays as it is.
            check(
                !target.is_object() || same.as_ref().ok() == Some(&target),
                || format!("{{}} changed the object: {same:?}"),
            )?;
            let bytes = serde_json::to_vec(&p).unwrap_or_default();
            let Ok(once) = patch::apply_merge_patch(&target, &bytes) else {
                return Err(TestCaseError::fail(
                    "a JSON merge patch that is JSON was refused",
                ));
            };
            let twice = patch::apply_merge_patch(&once, &bytes);
            check(twice.as_ref().ok() == Some(&once), || {
                format!("merge patch is not idempotent: {once} then {twice:?}")
            })?;
            pipeline(info, &once, Some(&stored(i)))
        },
    );
}

#[test]
fn strategic_merge_patch() {
    let input = (
        strategies::mutated(3),
        prop_oneof![
            3 => strategies::strategic_patch_for(),
            1 => strategies::strategic_patch().prop_map(|p| vec![strategies::Mutation::Set(Vec::new(), p)]),
        ],
        any::<bool>(),
    );
    fuzz(
        "strategic_merge_patch",
        input,
        |((i, m), patch_muts, prune)| {
            let info = templates::info(i);
            let target = strategies::build(i, &m);
            if target.is_object() {
                let same = patch::apply_strategic_merge_patch(info, &target, b"{}");
                check(same.as_ref().ok() == Some(&target), || {
                    format!("{{}} changed the object: {same:?}")
                })?;
            }
            // A patch of the same kind: the template with directives, or only its changed parts.
            let mut p = strategies::build(i, &patch_muts);
            if prune && let Value::Object(o) = &mut p {
                o.retain(|k, _| k == "spec" || k == "metadata" || k.starts_with('$'));
            }
            let bytes = serde_json::to_vec(&p).unwrap_or_default();
            if let Ok(out) = patch::apply_strategic_merge_patch(info, &target, &bytes) {
                pipeline(info, &out, Some(&stored(i)))?;
            }
            Ok(())
        },
    );
}

#[test]
fn server_side_apply() {
    fuzz(
        "server_side_apply",
        (
            strategies::mutated(4),
            prop::collection::vec(strategies::mutation(), 0..4),
            any::<bool>(),
        ),
        |((i, m), other, force)| {
            let info = templates::info(i);
            let applied = strategies::build(i, &m);
            let Ok(created) = apply::server_side_apply(info, None, &applied, "fuzz", false, NOW)
            else {
                return Ok(());
            };
            if validation::check_decodes(info, &created).is_err() {
                return Ok(());
            }
            let normalize = |v: &Value| {
                let mut n = typed::roundtrip(info, v).unwrap_or_else(|_| v.clone());
                defaults::apply_defaults(info, &mut n);
                n
            };
            let live = normalize(&created);
            // Only what the API server would store: an invalid object never gets a second apply.
            if validation::validate(info, &live, None).is_err() {
                return Ok(());
            }
            let again = apply::server_side_apply(info, Some(&live), &applied, "fuzz", false, NOW)
                .map(|v| normalize(&v));
            check(again.as_ref().ok() == Some(&live), || {
                format!("applying twice differs from once:\nonce:  {live}\ntwice: {again:?}")
            })?;
            let mut theirs = applied.clone();
            for mu in &other {
                strategies::apply_mutation(&mut theirs, mu);
            }
            let res = apply::server_side_apply(info, Some(&live), &theirs, "other", force, NOW);
            if let Err(e) = &res {
                check(!(force && e.code == 409), || {
                    format!("a forced apply conflicted: {e:?}")
                })?;
            }
            if let Ok(out) = res {
                pipeline(info, &out, Some(&live))?;
            }
            Ok(())
        },
    );
}

#[test]
fn label_selector() {
    fuzz(
        "label_selector",
        (strategies::label_selector(), strategies::value()),
        |(text, labels)| {
            let Ok(sel) = LabelSelector::parse(&text) else {
                return Ok(());
            };
            let shown = sel.to_string();
            let back = LabelSelector::parse(&shown);
            check(back.as_ref().ok() == Some(&sel), || {
                format!("{text:?} parsed, displayed as {shown:?}, reparsed as {back:?}")
            })?;
            let obj = json!({"metadata": {"labels": labels}});
            let _ = sel.matches(&selectors::object_labels(&obj));
            let _ = sel.requires_exact_match("app");
            // The same requirements through metav1.LabelSelector (matchExpressions) must agree.
            let exprs: Vec<Value> = sel
            .requirements
            .iter()
            .map(|r| json!({"key": r.key, "operator": format!("{:?}", r.operator), "values": r.values}))
            .collect();
            let set_based = sel.requirements.iter().all(|r| {
                matches!(
                    r.operator,
                    Operator::In | Operator::NotIn | Operator::Exists | Operator::DoesNotExist
                )
            });
            if let Ok(meta) = serde_json::from_value(json!({"matchExpressions": exprs})) {
                let converted = LabelSelector::from_label_selector(&meta);
                check(!set_based || converted.as_ref().ok() == Some(&sel), || {
                    format!("{text:?} parsed as {sel:?} but as matchExpressions {converted:?}")
                })?;
            }
            Ok(())
        },
    );
}

#[test]
fn field_selector() {
    fuzz(
        "field_selector",
        (strategies::field_selector(), any::<usize>()),
        |(text, r)| {
            let _ = FieldSelector::parse(resource(r), &text);
            let Ok(sel) = FieldSelector::parse_any(&text) else {
                return Ok(());
            };
            let shown = sel.to_string();
            let back = FieldSelector::parse_any(&shown);
            check(back.as_ref().ok() == Some(&sel), || {
                format!("{text:?} parsed, displayed as {shown:?}, reparsed as {back:?}")
            })?;
            let fields = selectors::object_fields(resource(r), &templates::object(r));
            let _ = sel.matches(&fields);
            Ok(())
        },
    );
}

#[test]
fn quantity() {
    fuzz("quantity", strategies::quantity(), |text| {
        let got = quantity::parse(&text);
        let padded = quantity::parse(&format!(" {text}\t"));
        check(got.map(f64::to_bits) == padded.map(f64::to_bits), || {
            format!("{text:?} parses as {got:?} but padded as {padded:?}")
        })?;
        // The same text must pass or fail validation of a container limit without a panic.
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "q"},
            "spec": {"containers": [{"name": "c", "image": "i",
                "resources": {"limits": {"cpu": text}, "requests": {"memory": text}}}]}});
        pipeline(templates::info(0), &pod, None)
    });
}
