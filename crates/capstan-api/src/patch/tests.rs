use super::*;
use crate::resources::find_kind;
use serde_json::json;

fn pod() -> &'static ResourceInfo {
    find_kind("v1", "Pod").unwrap()
}

fn smp(info: &ResourceInfo, original: Value, patch: Value) -> Result<Value, ApiError> {
    apply_strategic_merge_patch(info, &original, patch.to_string().as_bytes())
}

fn containers(names: &[&str]) -> Value {
    Value::Array(
        names
            .iter()
            .map(|n| json!({"name": n, "image": format!("{n}:1")}))
            .collect(),
    )
}

fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|c| {
            c.get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        })
        .collect()
}

#[test]
fn strategic_merge_lists_with_merge_keys() {
    // (description, original containers, patch containers value, expected names in order)
    let cases: &[(&str, Value, Value, &[&str])] = &[
        (
            "update an item keeps the order",
            containers(&["a", "b"]),
            json!([{"name": "b", "image": "b:2"}]),
            &["a", "b"],
        ),
        (
            "a new item goes before the server-only items",
            containers(&["a", "b"]),
            json!([{"name": "c"}]),
            &["c", "a", "b"],
        ),
        (
            "patch items keep the patch order",
            containers(&["a", "b", "c"]),
            json!([{"name": "c"}, {"name": "a"}]),
            &["b", "c", "a"],
        ),
        (
            "$patch delete removes by merge key",
            containers(&["a", "b"]),
            json!([{"name": "a", "$patch": "delete"}]),
            &["b"],
        ),
        (
            "$patch replace replaces the list",
            containers(&["a", "b"]),
            json!([{"$patch": "replace"}, {"name": "z"}]),
            &["z"],
        ),
        (
            "merging into an empty list",
            json!([]),
            json!([{"name": "x"}]),
            &["x"],
        ),
    ];
    for (desc, original, patch, want) in cases {
        let obj = json!({"spec": {"containers": original}});
        let got = smp(pod(), obj, json!({"spec": {"containers": patch}})).unwrap();
        assert_eq!(names(&got["spec"]["containers"]), want.to_vec(), "{desc}");
    }
}

#[test]
fn strategic_merge_documents() {
    let deploy = find_kind("apps/v1", "Deployment").unwrap();
    let svc = find_kind("v1", "Service").unwrap();
    // (description, kind, original, patch, expected)
    let cases: Vec<(&str, &ResourceInfo, Value, Value, Value)> = vec![
        (
            "merged item keeps its other fields",
            pod(),
            json!({"spec": {"containers": [{"name": "a", "image": "a:1", "args": ["x"]}]}}),
            json!({"spec": {"containers": [{"name": "a", "image": "a:2"}]}}),
            json!({"spec": {"containers": [{"name": "a", "image": "a:2", "args": ["x"]}]}}),
        ),
        (
            "null deletes a key, unmatched null is dropped",
            pod(),
            json!({"metadata": {"labels": {"a": "1", "b": "2"}}}),
            json!({"metadata": {"labels": {"a": null, "c": "3", "d": null}}}),
            json!({"metadata": {"labels": {"b": "2", "c": "3"}}}),
        ),
        (
            "primitive list with merge strategy is a union",
            pod(),
            json!({"metadata": {"finalizers": ["a", "b"]}}),
            json!({"metadata": {"finalizers": ["b", "c"]}}),
            json!({"metadata": {"finalizers": ["a", "b", "c"]}}),
        ),
        (
            "new primitive goes first",
            pod(),
            json!({"metadata": {"finalizers": ["a"]}}),
            json!({"metadata": {"finalizers": ["c"]}}),
            json!({"metadata": {"finalizers": ["c", "a"]}}),
        ),
        (
            "$deleteFromPrimitiveList removes values",
            pod(),
            json!({"metadata": {"finalizers": ["a", "b", "c"]}}),
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["b"]}}),
            json!({"metadata": {"finalizers": ["a", "c"]}}),
        ),
        (
            "$deleteFromPrimitiveList on a missing list is a no-op",
            pod(),
            json!({"metadata": {}}),
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["b"]}}),
            json!({"metadata": {}}),
        ),
        (
            "lists without a strategy are replaced",
            pod(),
            json!({"spec": {"tolerations": [{"key": "a"}], "containers": [{"name": "a", "args": ["1", "2"]}]}}),
            json!({"spec": {"tolerations": [{"key": "b"}], "containers": [{"name": "a", "args": ["3"]}]}}),
            json!({"spec": {"tolerations": [{"key": "b"}], "containers": [{"name": "a", "args": ["3"]}]}}),
        ),
        (
            "$patch replace on a map",
            pod(),
            json!({"spec": {"nodeSelector": {"a": "1", "b": "2"}}}),
            json!({"spec": {"nodeSelector": {"$patch": "replace", "c": "3"}}}),
            json!({"spec": {"nodeSelector": {"c": "3"}}}),
        ),
        (
            "$patch delete on a map",
            pod(),
            json!({"spec": {"nodeSelector": {"a": "1"}, "hostname": "h"}}),
            json!({"spec": {"nodeSelector": {"$patch": "delete"}}}),
            json!({"spec": {"nodeSelector": {}, "hostname": "h"}}),
        ),
        (
            "$setElementOrder reorders",
            pod(),
            json!({"spec": {"containers": containers(&["a", "b"])}}),
            json!({"spec": {"$setElementOrder/containers": [{"name": "b"}, {"name": "a"}]}}),
            json!({"spec": {"containers": [{"name": "b", "image": "b:1"}, {"name": "a", "image": "a:1"}]}}),
        ),
        (
            "$setElementOrder places a new item",
            pod(),
            json!({"spec": {"containers": containers(&["a", "b"])}}),
            json!({"spec": {"$setElementOrder/containers": [{"name": "a"}, {"name": "c"}, {"name": "b"}], "containers": [{"name": "c"}]}}),
            json!({"spec": {"containers": [{"name": "a", "image": "a:1"}, {"name": "c"}, {"name": "b", "image": "b:1"}]}}),
        ),
        (
            "$setElementOrder on primitives",
            pod(),
            json!({"metadata": {"finalizers": ["a", "b"]}}),
            json!({"metadata": {"$setElementOrder/finalizers": ["b", "c", "a"], "finalizers": ["c"]}}),
            json!({"metadata": {"finalizers": ["b", "c", "a"]}}),
        ),
        (
            "$retainKeys clears keys not listed",
            deploy,
            json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}}),
            json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}}),
            json!({"spec": {"strategy": {"type": "Recreate"}}}),
        ),
        (
            "volumes merge with retainKeys",
            pod(),
            json!({"spec": {"volumes": [{"name": "v", "emptyDir": {}}]}}),
            json!({"spec": {"volumes": [{"name": "v", "$retainKeys": ["name", "hostPath"], "hostPath": {"path": "/x"}}]}}),
            json!({"spec": {"volumes": [{"name": "v", "hostPath": {"path": "/x"}}]}}),
        ),
        (
            "nested env merges by name inside a deployment template",
            deploy,
            json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}]}]}}}}),
            json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "env": [{"name": "Y", "value": "3"}]}]}}}}),
            json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "3"}]}]}}}}),
        ),
        (
            "service ports merge by port",
            svc,
            json!({"spec": {"ports": [{"port": 80, "targetPort": 8080}, {"port": 443}]}}),
            json!({"spec": {"ports": [{"port": 80, "targetPort": 9090}]}}),
            json!({"spec": {"ports": [{"port": 80, "targetPort": 9090}, {"port": 443}]}}),
        ),
        (
            "directives are stripped from new values",
            pod(),
            json!({"spec": {}}),
            json!({"spec": {"containers": [{"name": "a", "env": [{"name": "X", "$patch": "delete"}]}]}}),
            json!({"spec": {"containers": [{"name": "a", "env": []}]}}),
        ),
        (
            "type change replaces",
            pod(),
            json!({"metadata": {"labels": {"a": "1"}}}),
            json!({"metadata": {"labels": "x"}}),
            json!({"metadata": {"labels": "x"}}),
        ),
    ];
    for (desc, info, original, patch, want) in cases {
        let got = smp(info, original, patch).unwrap_or_else(|e| panic!("{desc}: {e}"));
        assert_eq!(got, want, "{desc}");
    }
}

#[test]
fn strategic_merge_errors_use_upstream_codes() {
    let cases: &[(&str, Value, u16)] = &[
        (
            "$retainKeys missing a patched key",
            json!({"spec": {"volumes": [{"name": "v", "$retainKeys": ["name"], "hostPath": {}}]}}),
            400,
        ),
        (
            "$retainKeys not a list",
            json!({"metadata": {"$retainKeys": "x"}}),
            400,
        ),
        (
            "$setElementOrder not a list",
            json!({"spec": {"$setElementOrder/containers": "x"}}),
            400,
        ),
        (
            "unknown $patch in a map",
            json!({"spec": {"$patch": "explode"}}),
            500,
        ),
        (
            "$patch merge in a list",
            json!({"spec": {"containers": [{"$patch": "merge"}]}}),
            500,
        ),
        (
            "item without merge key",
            json!({"spec": {"containers": [{"image": "x"}]}}),
            500,
        ),
        (
            "lists of lists",
            json!({"metadata": {"finalizers": [["a"]]}}),
            422,
        ),
    ];
    let original =
        json!({"metadata": {"finalizers": ["a"]}, "spec": {"containers": containers(&["a"])}});
    for (desc, patch, code) in cases {
        let err = smp(pod(), original.clone(), patch.clone()).expect_err(desc);
        assert_eq!(err.code, *code, "{desc}: {}", err.message);
    }
    let err = apply_strategic_merge_patch(pod(), &original, b"[1]").unwrap_err();
    assert_eq!(
        (err.code, err.message.as_str()),
        (
            400,
            "json: cannot unmarshal array into Go value of type map[string]interface {}"
        )
    );
    assert_eq!(
        apply_strategic_merge_patch(pod(), &original, b"{")
            .unwrap_err()
            .code,
        400
    );
}

#[test]
fn json_patch_applies_and_reports_like_upstream() {
    let obj = json!({"metadata": {"name": "a", "labels": {"x": "1"}}, "spec": {"replicas": 1}});
    let ok = apply_json_patch(&obj, br#"[{"op":"replace","path":"/spec/replicas","value":3},{"op":"add","path":"/metadata/labels/y","value":"2"},{"op":"remove","path":"/metadata/labels/x"}]"#).unwrap();
    assert_eq!(
        ok,
        json!({"metadata": {"name": "a", "labels": {"y": "2"}}, "spec": {"replicas": 3}})
    );
    let cases: &[(&str, &[u8], u16)] = &[
        ("not a patch document", br#"{"op":"add"}"#, 400),
        ("unknown op", br#"[{"op":"frob","path":"/a"}]"#, 400),
        (
            "failing test",
            br#"[{"op":"test","path":"/metadata/name","value":"b"}]"#,
            422,
        ),
        (
            "missing path",
            br#"[{"op":"replace","path":"/spec/nope/x","value":1}]"#,
            422,
        ),
    ];
    for (desc, patch, code) in cases {
        let err = apply_json_patch(&obj, patch).expect_err(desc);
        assert_eq!(err.code, *code, "{desc}");
    }
    let err = apply_json_patch(
        &obj,
        br#"[{"op":"test","path":"/metadata/name","value":"b"}]"#,
    )
    .unwrap_err();
    assert_eq!(err.reason, "Invalid");
    assert_eq!(
        err.message,
        "the server rejected our request due to an error in our request"
    );
}

/// Fuzzing found json_patch's rollback panicking ("unable to undo applied patches") when a
/// later operation fails after a `move` to the root; a failed patch must be a 422, not a panic.
#[test]
fn json_patch_failing_after_move_to_root_is_422() {
    let obj = json!({"kind": "Pod", "metadata": {"name": "a", "labels": {"x": "1"}}});
    for patch in [
        br#"[{"op":"move","from":"/kind","path":""},{"op":"add","path":"/","value":null}]"#.as_slice(),
        br#"[{"op":"move","from":"/metadata","path":""},{"op":"add","path":"/metadata/labels","value":null}]"#,
        br#"[{"op":"move","from":"/metadata/labels","path":"/metadata"},{"op":"remove","path":""}]"#,
    ] {
        let err = apply_json_patch(&obj, patch).expect_err("the second operation fails");
        assert_eq!(err.code, 422, "{}", String::from_utf8_lossy(patch));
    }
}

#[test]
fn merge_patch_follows_rfc7386() {
    let obj = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"containers": [{"name": "a"}, {"name": "b"}]}});
    let got = apply_merge_patch(
        &obj,
        br#"{"metadata":{"labels":{"a":null,"c":"3"}},"spec":{"containers":[{"name":"z"}]}}"#,
    )
    .unwrap();
    assert_eq!(
        got,
        json!({"metadata": {"labels": {"b": "2", "c": "3"}}, "spec": {"containers": [{"name": "z"}]}})
    );
    assert_eq!(apply_merge_patch(&obj, b"{nope").unwrap_err().code, 400);
}
