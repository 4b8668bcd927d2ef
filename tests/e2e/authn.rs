//! Authentication end to end: 401 without credentials, whoami, static tokens, service account tokens, impersonation, audit log.

use crate::harness::{Kubectl, Server, ServerOptions};
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};

const K: Kubectl = Kubectl::Minor(32);

fn whoami(server: &Server, kubeconfig: &Path) -> Value {
    let out = crate::harness::run(
        server.kubectl_cmd_with(K, kubeconfig, &["auth", "whoami", "-o", "json"]),
        None,
    )
    .ok();
    let v = out.json();
    assert_eq!(v["kind"], "SelfSubjectReview", "{out}");
    v["status"]["userInfo"].clone()
}

#[test]
fn kubectl_whoami_with_certificates_service_account_and_static_tokens() {
    let files = tempfile::tempdir().expect("temp dir");
    let tokens = files.path().join("tokens.csv");
    std::fs::write(&tokens, "e2e-static-token,dana,u-dana,\"team-a,team-b\"\n").unwrap();
    let audit = files.path().join("audit.log");
    let server = Server::start_with(ServerOptions {
        extra_args: vec![
            "--token-auth-file".into(),
            tokens.display().to_string(),
            "--audit-log-path".into(),
            audit.display().to_string(),
        ],
        ..Default::default()
    });

    let admin = whoami(&server, &server.kubeconfig());
    assert_eq!(admin["username"], "system:admin");
    assert_eq!(
        admin["groups"],
        json!(["system:masters", "system:authenticated"])
    );
    // The table form kubectl prints by default.
    server
        .kubectl(K, &["auth", "whoami"], None)
        .ok()
        .stdout_has("system:admin")
        .stdout_has("[system:masters system:authenticated]");

    // The default service account appears shortly after start.
    let deadline = Instant::now() + Duration::from_secs(30);
    let token = loop {
        let out = server.kubectl(K, &["create", "token", "default"], None);
        if out.status.success() {
            break out.stdout.trim().to_string();
        }
        assert!(Instant::now() < deadline, "no token: {out}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let sa_config = server.token_kubeconfig("sa.kubeconfig", &token);
    let sa = whoami(&server, &sa_config);
    assert_eq!(sa["username"], "system:serviceaccount:default:default");
    assert_eq!(
        sa["groups"],
        json!([
            "system:serviceaccounts",
            "system:serviceaccounts:default",
            "system:authenticated"
        ])
    );
    assert!(
        sa["extra"]["authentication.kubernetes.io/credential-id"][0]
            .as_str()
            .is_some_and(|c| c.starts_with("JTI=")),
        "{sa}"
    );

    // Impersonation: the admin may; the service account may not.
    let jane = server
        .kubectl(
            K,
            &[
                "auth",
                "whoami",
                "--as",
                "jane",
                "--as-group",
                "devs",
                "-o",
                "json",
            ],
            None,
        )
        .ok()
        .json();
    assert_eq!(
        jane["status"]["userInfo"],
        json!({"username": "jane", "groups": ["devs", "system:authenticated"]})
    );
    crate::harness::run(
        server.kubectl_cmd_with(K, &sa_config, &["get", "pods", "--as", "jane"]),
        None,
    )
    .code_is(1)
    // kubectl's aggregated discovery shows no message for refusals (it reads the body raw);
    // the message itself is checked in the apiserver's authn tests.
    .stderr_has("Error from server (Forbidden)");

    let static_config = server.token_kubeconfig("static.kubeconfig", "e2e-static-token");
    let dana = whoami(&server, &static_config);
    assert_eq!(
        dana,
        json!({"username": "dana", "uid": "u-dana", "groups": ["team-a", "team-b", "system:authenticated"]})
    );

    let bogus = server.token_kubeconfig("bogus.kubeconfig", "not-a-real-token");
    crate::harness::run(server.kubectl_cmd_with(K, &bogus, &["get", "pods"]), None)
        .code_is(1)
        // kubectl's wording for a 401 Status (as against upstream's API server).
        .stderr_has("error: You must be logged in to the server");

    // The audit log names who asked: the service account's whoami is there.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&audit).unwrap_or_default();
        let found = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|e| {
                e["user"]["username"] == "system:serviceaccount:default:default"
                    && e["objectRef"]["resource"] == "selfsubjectreviews"
                    && e["responseStatus"]["code"] == 201
            });
        if found {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no audit event for the whoami:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
