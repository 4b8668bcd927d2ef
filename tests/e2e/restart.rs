//! Must show 3: kill -9 and restart on the same data dir loses nothing and changes nothing.

use std::time::Duration;

use serde_json::Value;

use crate::harness::{Kubectl, Server, Streaming, fixture_path};
use crate::util::configmap_yaml;

const K: Kubectl = Kubectl::Minor(33);
const KINDS: &str = "namespaces,configmaps,secrets,deployments,services,pods";

/// `kind namespace/name uid resourceVersion` of every object of [`KINDS`], sorted.
fn snapshot(server: &Server) -> Vec<String> {
    let template = concat!(
        r#"jsonpath={range .items[*]}{.kind} {.metadata.namespace}/{.metadata.name} "#,
        r#"{.metadata.uid} {.metadata.resourceVersion}{"\n"}{end}"#
    );
    let out = server
        .kubectl(K, &["get", KINDS, "-A", "-o", template], None)
        .ok();
    let mut items: Vec<String> = out.lines().into_iter().map(str::to_owned).collect();
    items.sort();
    items
}

/// The resourceVersion of a list of ConfigMaps in `shop`: the store revision the list was read at.
fn list_revision(server: &Server) -> u64 {
    let list = server
        .kubectl(
            K,
            &["get", "--raw", "/api/v1/namespaces/shop/configmaps"],
            None,
        )
        .ok()
        .json();
    rv_of(&list)
}

fn rv_of(object: &Value) -> u64 {
    let rv = object["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or_default();
    rv.parse()
        .unwrap_or_else(|_| panic!("resourceVersion {rv:?} is not a number in {object}"))
}

fn populate(server: &Server) {
    let app = fixture_path("app.yaml");
    server
        .kubectl(K, &["apply", "-f", app.to_str().expect("utf-8")], None)
        .ok();
    let many: String = (0..20)
        .map(|i| format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm-{i}\n  namespace: shop\ndata:\n  i: \"{i}\"\n---\n"))
        .collect();
    server.kubectl(K, &["apply", "-f", "-"], Some(&many)).ok();
    let seed = fixture_path("seed-mysql.yaml");
    // The example's hostPath volume needs the privileged Pod Security level.
    server
        .kubectl(
            K,
            &[
                "label",
                "namespace",
                "default",
                "pod-security.kubernetes.io/enforce=privileged",
                "--overwrite",
            ],
            None,
        )
        .ok();
    server
        .kubectl(K, &["apply", "-f", seed.to_str().expect("utf-8")], None)
        .ok();
    // Updates and a delete, so that the log holds more than creations.
    let patch = r#"{"data":{"color":"green"}}"#;
    server
        .kubectl(
            K,
            &[
                "patch",
                "configmap",
                "web-config",
                "-n",
                "shop",
                "--type",
                "merge",
                "-p",
                patch,
            ],
            None,
        )
        .ok();
    server
        .kubectl(K, &["delete", "configmap", "cm-19", "-n", "shop"], None)
        .ok();
}

#[test]
fn kill_9_and_restart_keeps_every_object_and_resource_version() {
    let mut server = Server::start();
    populate(&server);
    let before_last_write = list_revision(&server);
    // The last acknowledged write, immediately followed by the crash.
    server
        .kubectl(
            K,
            &["create", "-f", "-"],
            Some(&configmap_yaml("shop", "last-write", "k", "v")),
        )
        .ok();
    let before = snapshot(&server);
    let revision = list_revision(&server);
    assert!(revision > before_last_write);
    let old_kubeconfig = server.write_file(
        "old.kubeconfig",
        &std::fs::read_to_string(server.kubeconfig()).expect("read admin.kubeconfig"),
    );
    server.kill9();
    server.restart();

    assert_eq!(
        snapshot(&server),
        before,
        "objects or resourceVersions changed across kill -9"
    );
    assert!(
        before
            .iter()
            .any(|l| l.starts_with("ConfigMap shop/last-write ")),
        "{before:?}"
    );
    assert!(
        !before
            .iter()
            .any(|l| l.starts_with("ConfigMap shop/cm-19 ")),
        "deleted object came back"
    );
    // Leases (controller manager, API server identity) are renewed every few seconds, so the
    // store revision moves on without user writes, as on upstream etcd; it never goes back.
    assert!(
        list_revision(&server) >= revision,
        "the store revision went backwards across kill -9"
    );
    let data = server
        .kubectl(
            K,
            &[
                "get",
                "configmap",
                "web-config",
                "-n",
                "shop",
                "-o",
                "jsonpath={.data.color}",
            ],
            None,
        )
        .ok();
    assert_eq!(data.stdout, "green");

    let out = crate::harness::run(
        server.kubectl_cmd_with(
            K,
            &old_kubeconfig,
            &["get", "namespace", "shop", "-o", "name"],
        ),
        None,
    );
    assert_eq!(
        out.ok().stdout.trim(),
        "namespace/shop",
        "the old kubeconfig must keep working"
    );

    watch_resumes(&server, revision);
    watch_from_before_restart_replays_or_expires(&server, before_last_write);
}

/// A watch from the last revision seen before the crash gets exactly the changes made after it.
fn watch_resumes(server: &Server, revision: u64) {
    let url = format!("/api/v1/namespaces/shop/configmaps?watch=1&resourceVersion={revision}");
    let mut watch = Streaming::spawn(server.kubectl_cmd(K, &["get", "--raw", &url]));
    let patch = r#"{"data":{"i":"changed"}}"#;
    server
        .kubectl(
            K,
            &[
                "patch",
                "configmap",
                "cm-3",
                "-n",
                "shop",
                "--type",
                "merge",
                "-p",
                patch,
            ],
            None,
        )
        .ok();
    let event: Value = serde_json::from_str(&watch.next_line(Duration::from_secs(20)))
        .expect("watch event is JSON");
    assert_eq!(event["type"], "MODIFIED", "{event}");
    assert_eq!(event["object"]["metadata"]["name"], "cm-3", "{event}");
    assert_eq!(event["object"]["data"]["i"], "changed", "{event}");
    assert!(
        rv_of(&event["object"]) > revision,
        "revisions continue after restart: {event}"
    );
    server
        .kubectl(
            K,
            &["create", "-f", "-"],
            Some(&configmap_yaml("shop", "after-restart", "k", "v")),
        )
        .ok();
    let event: Value = serde_json::from_str(&watch.next_line(Duration::from_secs(20)))
        .expect("watch event is JSON");
    assert_eq!(event["type"], "ADDED", "{event}");
    assert_eq!(
        event["object"]["metadata"]["name"], "after-restart",
        "{event}"
    );
}

/// An older revision either replays the missed event, or (like a fresh upstream watch cache)
/// answers 410 Expired; silently starting from "now" would lose the event.
fn watch_from_before_restart_replays_or_expires(server: &Server, revision: u64) {
    let url = format!("/api/v1/namespaces/shop/configmaps?watch=1&resourceVersion={revision}");
    let mut watch = Streaming::spawn(server.kubectl_cmd(K, &["get", "--raw", &url]));
    let event: Value = serde_json::from_str(&watch.next_line(Duration::from_secs(20)))
        .expect("watch event is JSON");
    match event["type"].as_str() {
        Some("ADDED") => assert_eq!(event["object"]["metadata"]["name"], "last-write", "{event}"),
        Some("ERROR") => {
            assert_eq!(event["object"]["code"], 410, "{event}");
            assert_eq!(event["object"]["reason"], "Expired", "{event}");
        }
        _ => panic!("expected the missed ADDED event or a 410 ERROR, got {event}"),
    }
}
