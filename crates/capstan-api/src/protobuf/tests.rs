//! Bodies built with a tiny encoder, shaped as gogo-protobuf marshals kubectl's objects.

use serde_json::json;

use super::decode_request;
use crate::ResourceInfo;
use crate::resources::find;

fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// A varint field.
fn num(n: u32, v: i64) -> Vec<u8> {
    let mut out = varint(u64::from(n) << 3);
    out.extend(varint(v as u64));
    out
}

/// A length-delimited field.
fn bytes(n: u32, b: &[u8]) -> Vec<u8> {
    let mut out = varint((u64::from(n) << 3) | 2);
    out.extend(varint(b.len() as u64));
    out.extend_from_slice(b);
    out
}

fn s(n: u32, text: &str) -> Vec<u8> {
    bytes(n, text.as_bytes())
}

/// A nested message field from its encoded parts.
fn m(n: u32, parts: &[Vec<u8>]) -> Vec<u8> {
    bytes(n, &parts.concat())
}

fn body(api_version: &str, kind: &str, raw: &[Vec<u8>]) -> Vec<u8> {
    let mut out = b"k8s\0".to_vec();
    out.extend(m(1, &[s(1, api_version), s(2, kind)]));
    out.extend(bytes(2, &raw.concat()));
    out.extend(s(3, ""));
    out.extend(s(4, ""));
    out
}

fn info(group: &str, plural: &str) -> &'static ResourceInfo {
    find(group, "v1", plural).expect("served resource")
}

/// ObjectMeta as gogo writes it for a fresh object: every plain field, zero or not.
fn meta(name: &str, labels: &[(&str, &str)]) -> Vec<u8> {
    let mut parts = vec![
        s(1, name),
        s(2, ""),
        s(3, ""),
        s(4, ""),
        s(5, ""),
        s(6, ""),
        num(7, 0),
        bytes(8, &[]),
    ];
    parts.extend(labels.iter().map(|(k, v)| m(11, &[s(1, k), s(2, v)])));
    m(1, &parts)
}

#[test]
fn config_map_with_data_and_binary_data() {
    let raw = [
        meta("c", &[("app", "web")]),
        m(2, &[s(1, "a"), s(2, "1")]),
        m(3, &[s(1, "bin"), bytes(2, &[0, 1, 2])]),
    ];
    let got =
        decode_request(info("", "configmaps"), &body("v1", "ConfigMap", &raw)).expect("decodes");
    let want = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "c", "labels": {"app": "web"}},
        "data": {"a": "1"}, "binaryData": {"bin": "AAEC"},
    });
    assert_eq!(got, want);
}

#[test]
fn secret_bytes_are_base64_and_type_kept() {
    let raw = [
        meta("s", &[]),
        m(2, &[s(1, "p"), s(2, "q")]),
        s(3, "Opaque"),
        num(5, 1),
    ];
    let got = decode_request(info("", "secrets"), &body("v1", "Secret", &raw)).expect("decodes");
    let want = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "s"}, "data": {"p": "cQ=="}, "type": "Opaque", "immutable": true,
    });
    assert_eq!(got, want);
}

#[test]
fn deployment_with_container_int_or_string_and_explicit_zero() {
    let container = m(
        2,
        &[
            s(1, "nginx"),
            s(2, "nginx"),
            m(6, &[s(1, ""), num(2, 0), num(3, 80), s(4, "TCP"), s(5, "")]),
            m(8, &[m(1, &[s(1, "cpu"), m(2, &[s(1, "500m")])])]),
            s(13, ""),
            num(16, 0),
        ],
    );
    let template = m(
        3,
        &[
            meta("", &[("app", "d")]),
            m(
                2,
                &[
                    container,
                    s(3, "Always"),
                    num(4, 30),
                    s(6, "ClusterFirst"),
                    m(14, &[]),
                ],
            ),
        ],
    );
    let strategy = m(
        4,
        &[
            s(1, "RollingUpdate"),
            m(
                2,
                &[
                    m(1, &[num(1, 1), num(2, 0), s(3, "25%")]),
                    m(2, &[num(1, 0), num(2, 2), s(3, "")]),
                ],
            ),
        ],
    );
    let spec = m(
        2,
        &[
            num(1, 0),
            m(2, &[m(1, &[s(1, "app"), s(2, "d")])]),
            template,
            strategy,
            num(5, 0),
        ],
    );
    let raw = [
        meta("d", &[("app", "d")]),
        spec,
        m(3, &[num(1, 0), num(2, 0)]),
    ];
    let got = decode_request(
        info("apps", "deployments"),
        &body("apps/v1", "Deployment", &raw),
    )
    .expect("decodes");
    let want = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "d", "labels": {"app": "d"}},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "d"}},
            "template": {
                "metadata": {"labels": {"app": "d"}},
                "spec": {
                    "containers": [{
                        "name": "nginx", "image": "nginx",
                        "ports": [{"containerPort": 80, "protocol": "TCP"}],
                        "resources": {"limits": {"cpu": "500m"}},
                    }],
                    "restartPolicy": "Always", "terminationGracePeriodSeconds": 30,
                    "dnsPolicy": "ClusterFirst", "securityContext": {},
                },
            },
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": 2}},
        },
        "status": {},
    });
    assert_eq!(got, want);
}

#[test]
fn timestamps_render_rfc3339_and_negative_int32_survives() {
    let raw = [
        m(1, &[s(1, "pc"), m(8, &[num(1, 1_767_323_045), num(2, 5)])]),
        num(2, -5),
        s(4, "low"),
    ];
    let got = decode_request(
        info("scheduling.k8s.io", "priorityclasses"),
        &body("scheduling.k8s.io/v1", "PriorityClass", &raw),
    )
    .expect("decodes");
    let want = json!({
        "apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
        "metadata": {"name": "pc", "creationTimestamp": "2026-01-02T03:04:05Z"},
        "value": -5, "description": "low",
    });
    assert_eq!(got, want);
}

#[test]
fn unknown_field_is_refused_not_dropped() {
    let raw = [meta("c", &[]), s(99, "x")];
    let err = decode_request(info("", "configmaps"), &body("v1", "ConfigMap", &raw))
        .expect_err("field 99");
    assert_eq!(err.code, 400);
    assert_eq!(
        err.message,
        "unsupported protobuf field 99 in ConfigMap; send JSON instead"
    );
    // managedFields (17) is not decoded either, so it must be refused too.
    let raw = [m(1, &[s(1, "c"), m(17, &[s(1, "kubectl")])])];
    let err = decode_request(info("", "configmaps"), &body("v1", "ConfigMap", &raw))
        .expect_err("field 17");
    assert_eq!(
        err.message,
        "unsupported protobuf field 17 in ObjectMeta; send JSON instead"
    );
}

#[test]
fn unsupported_kind_and_bad_framing() {
    let err = decode_request(info("", "nodes"), &body("v1", "Node", &[meta("n", &[])]))
        .expect_err("no Node table");
    assert_eq!(err.code, 415);
    let err = decode_request(info("", "configmaps"), b"{}").expect_err("no magic");
    assert_eq!(err.code, 400);
    let mut truncated = body("v1", "ConfigMap", &[meta("c", &[])]);
    truncated.truncate(truncated.len() - 6);
    assert_eq!(
        decode_request(info("", "configmaps"), &truncated)
            .expect_err("truncated")
            .code,
        400
    );
}

#[test]
fn role_rules_and_binding_subjects() {
    let rule = m(2, &[s(1, "get"), s(1, "list"), s(2, ""), s(3, "pods")]);
    let got = decode_request(
        info("rbac.authorization.k8s.io", "roles"),
        &body(
            "rbac.authorization.k8s.io/v1",
            "Role",
            &[meta("r", &[]), rule],
        ),
    )
    .expect("decodes");
    assert_eq!(
        got["rules"],
        json!([{"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods"]}])
    );
    let raw = [
        meta("rb", &[]),
        m(
            2,
            &[
                s(1, "User"),
                s(2, "rbac.authorization.k8s.io"),
                s(3, "alice"),
                s(4, ""),
            ],
        ),
        m(
            3,
            &[s(1, "rbac.authorization.k8s.io"), s(2, "Role"), s(3, "r")],
        ),
    ];
    let got = decode_request(
        info("rbac.authorization.k8s.io", "rolebindings"),
        &body("rbac.authorization.k8s.io/v1", "RoleBinding", &raw),
    )
    .expect("decodes");
    assert_eq!(
        got["subjects"],
        json!([{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "alice"}])
    );
    assert_eq!(
        got["roleRef"],
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r"})
    );
}
