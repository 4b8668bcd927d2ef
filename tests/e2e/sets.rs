//! StatefulSets and DaemonSets end to end, driven by the stock kubectl 1.32: a StatefulSet of 3
//! on the server's real node comes up in ordinal order with stable names (a deleted pod comes
//! back under its name), and a DaemonSet lands one pod per simulated node, skips a tainted node
//! and follows a node added later.

use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use crate::harness::{Kubectl, Server, ServerOptions, Streaming};

const K: Kubectl = Kubectl::Minor(32);
/// The busybox test image (imported, never pulled).
const IMAGE: &str = "capstan.test/e2e/busybox:1";
const TIMEOUT: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(250);

/// Polls until `cond` holds, panicking with the server log after [`TIMEOUT`].
fn wait(server: &Server, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; log:\n{}",
            server.log_tail(80)
        );
        thread::sleep(POLL);
    }
}

fn pods(server: &Server, ns: &str, selector: &str) -> Vec<Value> {
    let out = server
        .kubectl(
            K,
            &["get", "pods", "-n", ns, "-l", selector, "-o", "json"],
            None,
        )
        .ok();
    out.json()["items"].as_array().cloned().unwrap_or_default()
}

fn ready(p: &Value) -> bool {
    p["metadata"]["deletionTimestamp"].is_null()
        && p["status"]["conditions"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

fn ready_since(p: &Value) -> jiff::Timestamp {
    let c = p["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .cloned()
        .unwrap_or_default();
    c["lastTransitionTime"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no Ready time in {p}"))
}

fn created(p: &Value) -> jiff::Timestamp {
    p["metadata"]["creationTimestamp"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no creationTimestamp in {p}"))
}

fn name(p: &Value) -> &str {
    p["metadata"]["name"].as_str().unwrap_or_default()
}

fn statefulset_yaml(ns: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Namespace
metadata:
  name: {ns}
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: {ns}
spec:
  clusterIP: None
  selector:
    app: web
  ports:
  - port: 80
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: web
  namespace: {ns}
spec:
  replicas: 3
  serviceName: web
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: app
        image: {IMAGE}
        command: ["sh", "-c", "exec sleep 3600"]
"#
    )
}

#[test]
fn statefulset_comes_up_in_order_with_stable_names() {
    let images = tempfile::Builder::new()
        .prefix("capstan-e2e-img-")
        .tempdir()
        .expect("tempdir");
    let archive = images.path().join("busybox.tar");
    capstan_runtime::testimage::busybox_oci_archive(&archive, IMAGE)
        .expect("build the busybox test image");
    let server = Server::start_with(ServerOptions {
        agent: true,
        import_images: vec![archive],
        ..Default::default()
    });
    let _images: TempDir = images;
    let ns = "sts-e2e";
    server
        .kubectl(K, &["apply", "-f", "-"], Some(&statefulset_yaml(ns)))
        .ok();
    server
        .kubectl(
            K,
            &[
                "rollout",
                "status",
                "statefulset/web",
                "-n",
                ns,
                "--timeout=180s",
            ],
            None,
        )
        .ok()
        // Defaulting sets partition 0, so kubectl reports a partitioned rollout, as upstream.
        .stdout_has("roll out complete: 3 new pods have been updated");

    let mut items = pods(&server, ns, "app=web");
    items.sort_by_key(|p| name(p).to_string());
    let names: Vec<&str> = items.iter().map(name).collect();
    assert_eq!(names, ["web-0", "web-1", "web-2"]);
    assert!(items.iter().all(ready), "all ready");
    // OrderedReady: each pod is created only after the previous one is Ready.
    for w in items.windows(2) {
        assert!(
            created(&w[0]) <= created(&w[1]),
            "{} before {}",
            name(&w[0]),
            name(&w[1])
        );
        assert!(
            ready_since(&w[0]) <= created(&w[1]),
            "{} ready ({}) before {} created ({})",
            name(&w[0]),
            ready_since(&w[0]),
            name(&w[1]),
            created(&w[1])
        );
    }
    for p in &items {
        assert_eq!(p["spec"]["hostname"], name(p));
        assert_eq!(p["spec"]["subdomain"], "web");
        assert_eq!(
            p["metadata"]["labels"]["statefulset.kubernetes.io/pod-name"],
            name(p)
        );
    }
    server
        .kubectl(K, &["exec", "-n", ns, "web-1", "--", "hostname"], None)
        .ok()
        .stdout_has("web-1");

    let old_uid = items[1]["metadata"]["uid"].clone();
    server
        .kubectl(
            K,
            &["delete", "pod", "-n", ns, "web-1", "--wait=false"],
            None,
        )
        .ok();
    wait(&server, "web-1 recreated and ready", || {
        pods(&server, ns, "app=web")
            .iter()
            .any(|p| name(p) == "web-1" && p["metadata"]["uid"] != old_uid && ready(p))
    });
    let names: Vec<String> = {
        let mut n: Vec<String> = pods(&server, ns, "app=web")
            .iter()
            .map(|p| name(p).to_string())
            .collect();
        n.sort();
        n
    };
    assert_eq!(names, ["web-0", "web-1", "web-2"]);
    server
        .kubectl(K, &["get", "statefulset", "web", "-n", ns], None)
        .ok()
        .stdout_has("3/3");
    // Leave no pods behind on the node: scale to zero and wait for them to go.
    server
        .kubectl(
            K,
            &["scale", "statefulset/web", "-n", ns, "--replicas=0"],
            None,
        )
        .ok();
    wait(&server, "pods gone", || {
        pods(&server, ns, "app=web").is_empty()
    });
}

/// Starts `capstan simulate-nodes` against `server` and waits until its nodes are registered.
fn simulate(server: &Server, prefix: &str, count: usize, extra: &[&str]) -> Streaming {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_capstan"));
    cmd.args([
        "simulate-nodes",
        "--count",
        &count.to_string(),
        "--name-prefix",
        prefix,
        "--lease-interval",
        "2",
    ])
    .arg("--kubeconfig")
    .arg(server.kubeconfig())
    .args(extra);
    let mut s = Streaming::spawn(cmd);
    let line = s.next_line(Duration::from_secs(60));
    assert!(
        line.contains("simulated nodes ready"),
        "unexpected output: {line}"
    );
    s
}

const DAEMONSET: &str = r#"apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: agent
  namespace: default
spec:
  selector:
    matchLabels:
      app: agent
  template:
    metadata:
      labels:
        app: agent
    spec:
      containers:
      - name: c
        image: busybox:latest
"#;

/// Node name of each Running pod of the DaemonSet, sorted.
fn daemon_nodes(server: &Server) -> Vec<String> {
    let mut n: Vec<String> = pods(server, "default", "app=agent")
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| {
            p["spec"]["nodeName"]
                .as_str()
                .unwrap_or("<unbound>")
                .to_string()
        })
        .collect();
    n.sort();
    n
}

#[test]
fn daemonset_runs_one_pod_per_node_skipping_tainted_and_following_new_nodes() {
    let server = Server::start();
    let _plain = simulate(&server, "dsw-", 3, &[]);
    let _tainted = simulate(&server, "dst-", 1, &["--taint", "dedicated=gpu:NoSchedule"]);
    server
        .kubectl(K, &["apply", "-f", "-"], Some(DAEMONSET))
        .ok();
    server
        .kubectl(
            K,
            &["rollout", "status", "daemonset/agent", "--timeout=120s"],
            None,
        )
        .ok()
        .stdout_has("successfully rolled out");
    assert_eq!(daemon_nodes(&server), ["dsw-0", "dsw-1", "dsw-2"]);
    let status = server
        .kubectl(K, &["get", "daemonset", "agent", "-o", "json"], None)
        .ok()
        .json()["status"]
        .clone();
    assert_eq!(status["desiredNumberScheduled"], 3, "{status}");
    assert_eq!(status["numberReady"], 3, "{status}");
    assert_eq!(status["numberMisscheduled"], 0, "{status}");

    let _later = simulate(&server, "dsl-", 1, &[]);
    wait(&server, "a pod on the new node", || {
        daemon_nodes(&server) == ["dsl-0", "dsw-0", "dsw-1", "dsw-2"]
            && pods(&server, "default", "app=agent").iter().all(ready)
    });
    server
        .kubectl(
            K,
            &["rollout", "status", "daemonset/agent", "--timeout=60s"],
            None,
        )
        .ok();
    let status = server
        .kubectl(K, &["get", "daemonset", "agent", "-o", "json"], None)
        .ok()
        .json()["status"]
        .clone();
    assert_eq!(status["desiredNumberScheduled"], 4, "{status}");
}
