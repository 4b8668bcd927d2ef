//! Must show 2: bad input gets upstream's error (exit code, HTTP code, reason, message) and
//! leaves the store untouched.

use crate::harness::{Kubectl, Out, Server};
use crate::util::configmap_yaml;

const K: Kubectl = Kubectl::Minor(33);

/// `kind/name@resourceVersion` of every ConfigMap and Secret in `default`, sorted.
fn snapshot(server: &Server) -> Vec<String> {
    let template = r#"jsonpath={range .items[*]}{.kind}/{.metadata.name}@{.metadata.resourceVersion}{"\n"}{end}"#;
    let out = server
        .kubectl(
            K,
            &["get", "configmaps,secrets", "-n", "default", "-o", template],
            None,
        )
        .ok();
    let mut items: Vec<String> = out.lines().into_iter().map(str::to_owned).collect();
    items.sort();
    items
}

/// A server with one ConfigMap already stored, and the snapshot taken before the bad request.
fn server_with_bystander() -> (Server, Vec<String>) {
    let server = Server::start();
    server
        .kubectl(
            K,
            &["create", "-f", "-"],
            Some(&configmap_yaml("default", "bystander", "k", "v")),
        )
        .ok();
    let before = snapshot(&server);
    assert!(
        before.iter().any(|i| i.starts_with("ConfigMap/bystander@")),
        "{before:?}"
    );
    (server, before)
}

/// kubectl at -v=6 logs each response's HTTP status line on stderr.
#[track_caller]
fn assert_http_status(out: &Out, status: &str) {
    assert!(
        out.stderr.contains(status),
        "HTTP status {status:?} not seen: {out}"
    );
}

#[track_caller]
fn assert_unchanged(server: &Server, before: &[String], absent: &str) {
    let after = snapshot(server);
    assert_eq!(after, before, "the bad request changed the store");
    assert!(
        !after.iter().any(|i| i.contains(&format!("/{absent}@"))),
        "{absent} was stored: {after:?}"
    );
}

#[test]
fn malformed_yaml_is_rejected_by_kubectl() {
    let (server, before) = server_with_bystander();
    let yaml =
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: broken\ndata:\n  key: [unclosed\n";
    server
        .kubectl(K, &["apply", "-f", "-"], Some(yaml))
        .code_is(1)
        .stderr_has("error parsing STDIN: error converting YAML to JSON: yaml: line");
    assert_unchanged(&server, &before, "broken");
}

#[test]
fn malformed_json_body_is_bad_request() {
    let (server, before) = server_with_bystander();
    let file = server.write_file(
        "broken.json",
        r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"broken""#,
    );
    let path = file.to_str().expect("utf-8 path");
    let out = server.kubectl(
        K,
        &[
            "-v=6",
            "create",
            "--raw",
            "/api/v1/namespaces/default/configmaps",
            "-f",
            path,
        ],
        None,
    );
    let out = out.code_is(1).stderr_has("Error from server (BadRequest)");
    assert_http_status(&out, "400 Bad Request");
    assert_unchanged(&server, &before, "broken");
}

#[test]
fn unknown_kind_is_not_found() {
    let (server, before) = server_with_bystander();
    let yaml = "apiVersion: v1\nkind: Widget\nmetadata:\n  name: gadget\n";
    server
        .kubectl(K, &["apply", "-f", "-"], Some(yaml))
        .code_is(1)
        .stderr_has(r#"resource mapping not found for name: "gadget" namespace: "" from "STDIN": no matches for kind "Widget" in version "v1""#);
    let yaml = "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: gadget\n";
    server
        .kubectl(K, &["apply", "-f", "-"], Some(yaml))
        .code_is(1)
        .stderr_has(r#"no matches for kind "Widget" in version "example.com/v1""#);
    let out = server.kubectl(
        K,
        &["-v=6", "get", "--raw", "/api/v1/namespaces/default/widgets"],
        None,
    );
    let out = out.code_is(1).stderr_has("Error from server (NotFound)");
    assert_http_status(&out, "404 Not Found");
    assert_unchanged(&server, &before, "gadget");
}

#[test]
fn unknown_field_with_strict_validation_is_rejected() {
    let (server, before) = server_with_bystander();
    let yaml = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: typo\nspec:\n  color: blue\n";
    server
        .kubectl(K, &["apply", "--validate=strict", "-f", "-"], Some(yaml))
        .code_is(1)
        .stderr_has(r#"unknown field "spec""#);
    // The server itself enforces fieldValidation=Strict, whatever kubectl checks first.
    let json = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"typo"},"spec":{"color":"blue"}}"#;
    let file = server.write_file("typo.json", json);
    let url = "/api/v1/namespaces/default/configmaps?fieldValidation=Strict";
    let out = server.kubectl(
        K,
        &[
            "-v=6",
            "create",
            "--raw",
            url,
            "-f",
            file.to_str().expect("utf-8"),
        ],
        None,
    );
    let out = out
        .code_is(1)
        .stderr_has("Error from server (BadRequest)")
        .stderr_has(r#"strict decoding error: unknown field "spec""#);
    assert_http_status(&out, "400 Bad Request");
    assert_unchanged(&server, &before, "typo");
}

#[test]
fn invalid_name_is_unprocessable() {
    let (server, before) = server_with_bystander();
    let yaml = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: Bad_Name\ndata:\n  k: v\n";
    let out = server.kubectl(K, &["-v=6", "create", "-f", "-"], Some(yaml));
    let out = out.code_is(1).stderr_has(concat!(
        r#"The ConfigMap "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name": "#,
        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', ",
        "and must start and end with an alphanumeric character (e.g. 'example.com', regex used for ",
        r"validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
    ));
    assert_http_status(&out, "422 Unprocessable Entity");
    assert_unchanged(&server, &before, "Bad_Name");
}

#[test]
fn configmap_over_one_mebibyte_is_rejected() {
    let (server, before) = server_with_bystander();
    let payload = "x".repeat(1536 * 1024);
    let yaml = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: big\ndata:\n  blob: {payload}\n"
    );
    let file = server.write_file("big.yaml", &yaml);
    let out = server.kubectl(
        K,
        &["-v=6", "create", "-f", file.to_str().expect("utf-8")],
        None,
    );
    let out = out
        .code_is(1)
        .stderr_has(r#"The ConfigMap "big" is invalid"#)
        .stderr_has("Too long")
        .stderr_has("1048576");
    assert_http_status(&out, "422 Unprocessable Entity");
    assert_unchanged(&server, &before, "big");
}

#[test]
fn stale_resource_version_update_is_conflict() {
    let (server, _) = server_with_bystander();
    server
        .kubectl(
            K,
            &["create", "-f", "-"],
            Some(&configmap_yaml("default", "stale", "color", "blue")),
        )
        .ok();
    let old = server
        .kubectl(K, &["get", "configmap", "stale", "-o", "yaml"], None)
        .ok()
        .stdout;
    let patch = r#"{"data":{"color":"green"}}"#;
    server
        .kubectl(
            K,
            &[
                "patch",
                "configmap",
                "stale",
                "--type",
                "merge",
                "-p",
                patch,
            ],
            None,
        )
        .ok();
    let before = snapshot(&server);

    let edited = old.replace("color: blue", "color: yellow");
    assert_ne!(edited, old, "fixture edit did not apply:\n{old}");
    let file = server.write_file("old.yaml", &edited);
    let out = server.kubectl(
        K,
        &["-v=6", "replace", "-f", file.to_str().expect("utf-8")],
        None,
    );
    let out = out.code_is(1).stderr_has("Error from server (Conflict)").stderr_has(
        r#"Operation cannot be fulfilled on configmaps "stale": the object has been modified; please apply your changes to the latest version and try again"#,
    );
    assert_http_status(&out, "409 Conflict");
    assert_eq!(
        snapshot(&server),
        before,
        "the stale update changed the store"
    );
    let color = server
        .kubectl(
            K,
            &["get", "configmap", "stale", "-o", "jsonpath={.data.color}"],
            None,
        )
        .ok();
    assert_eq!(color.stdout, "green");
}

#[test]
fn secret_with_bad_base64_is_bad_request() {
    let (server, before) = server_with_bystander();
    let yaml =
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: garbled\ndata:\n  token: abc!defg\n";
    let out = server.kubectl(K, &["-v=6", "create", "-f", "-"], Some(yaml));
    let out = out.code_is(1).stderr_has(
        r#"Error from server (BadRequest): error when creating "STDIN": Secret in version "v1" cannot be handled as a Secret: illegal base64 data at input byte 3"#,
    );
    assert_http_status(&out, "400 Bad Request");
    assert_unchanged(&server, &before, "garbled");
}
