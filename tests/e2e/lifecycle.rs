//! Garbage collection and node lifecycle end to end with kubectl 1.32: foreground and orphan
//! cascades of a Deployment, namespace deletion, and a simulated node failure (its
//! `capstan simulate-nodes` process killed) whose pods are recreated on the other node.

use crate::harness::{Kubectl, Server, ServerOptions, Streaming};
use serde_json::{Value, json};
use std::process::Command;
use std::time::{Duration, Instant};

const K: Kubectl = Kubectl::Minor(32);
const TIMEOUT: Duration = Duration::from_secs(60);

fn get(server: &Server, args: &[&str]) -> Value {
    let mut a = vec!["get"];
    a.extend_from_slice(args);
    a.extend(["-o", "json"]);
    server.kubectl(K, &a, None).ok().json()
}

fn items(v: &Value) -> Vec<Value> {
    v["items"].as_array().cloned().unwrap_or_default()
}

/// Polls `f` until it returns Some, with a deadline.
#[track_caller]
fn wait<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn deployment(name: &str, ns: &str, replicas: u32) -> String {
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {
                "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                    "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": {"matchLabels": {"app": name}}}],
                "containers": [{"name": "c", "image": "busybox:latest",
                    "resources": {"requests": {"cpu": "100m"}}}]}}}})
    .to_string()
}

fn live(pods: &[Value]) -> Vec<Value> {
    pods.iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .cloned()
        .collect()
}

#[test]
fn foreground_and_orphan_cascades_and_namespace_deletion() {
    let server = Server::start();
    for (name, ns) in [("fg", "default"), ("keep", "default")] {
        server
            .kubectl(K, &["create", "-f", "-"], Some(&deployment(name, ns, 2)))
            .ok();
    }
    for app in ["fg", "keep"] {
        wait("pods created", TIMEOUT, || {
            (items(&get(&server, &["pods", "-l", &format!("app={app}")])).len() == 2).then_some(())
        });
    }
    // kubectl waits until the Deployment is gone, which foreground deletion allows only after
    // its ReplicaSet (and that one's pods) are gone.
    server
        .kubectl(
            K,
            &["delete", "deployment", "fg", "--cascade=foreground"],
            None,
        )
        .ok()
        .stdout_has("deployment.apps \"fg\" deleted");
    assert!(items(&get(&server, &["replicasets", "-l", "app=fg"])).is_empty());
    assert!(items(&get(&server, &["pods", "-l", "app=fg"])).is_empty());

    server
        .kubectl(
            K,
            &["delete", "deployment", "keep", "--cascade=orphan"],
            None,
        )
        .ok();
    let rs = wait("orphaned ReplicaSet without owner", TIMEOUT, || {
        let rs = items(&get(&server, &["replicasets", "-l", "app=keep"]));
        (rs.len() == 1
            && rs[0]["metadata"]["ownerReferences"]
                .as_array()
                .is_none_or(|a| a.is_empty()))
        .then(|| rs[0].clone())
    });
    assert!(
        server
            .kubectl(K, &["get", "deployment", "keep"], None)
            .stderr
            .contains("NotFound")
    );
    let pods = live(&items(&get(&server, &["pods", "-l", "app=keep"])));
    assert_eq!(pods.len(), 2);
    for p in &pods {
        assert_eq!(
            p["metadata"]["ownerReferences"][0]["uid"],
            rs["metadata"]["uid"]
        );
    }

    server
        .kubectl(K, &["create", "namespace", "doomed"], None)
        .ok();
    server
        .kubectl(
            K,
            &["create", "-f", "-"],
            Some(&deployment("web", "doomed", 2)),
        )
        .ok();
    server
        .kubectl(
            K,
            &[
                "-n",
                "doomed",
                "create",
                "configmap",
                "cfg",
                "--from-literal=k=v",
            ],
            None,
        )
        .ok();
    server
        .kubectl(
            K,
            &[
                "-n",
                "doomed",
                "create",
                "service",
                "clusterip",
                "web",
                "--tcp=80:80",
            ],
            None,
        )
        .ok();
    wait("pods in doomed", TIMEOUT, || {
        (items(&get(&server, &["pods", "-n", "doomed"])).len() == 2).then_some(())
    });
    server
        .kubectl(K, &["delete", "namespace", "doomed", "--timeout=60s"], None)
        .ok();
    assert!(
        server
            .kubectl(K, &["get", "namespace", "doomed"], None)
            .stderr
            .contains("NotFound")
    );
    for kind in [
        "pods",
        "replicasets",
        "deployments",
        "configmaps",
        "services",
    ] {
        assert!(
            items(&get(&server, &[kind, "-n", "doomed"])).is_empty(),
            "{kind} left in the deleted namespace"
        );
    }
}

/// Starts one simulated node `name` (prefix `name`, count 1) renewing its Lease every second.
fn simulate(server: &Server, prefix: &str) -> Streaming {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_capstan"));
    cmd.args([
        "simulate-nodes",
        "--count",
        "1",
        "--name-prefix",
        prefix,
        "--lease-interval",
        "1",
    ])
    .arg("--kubeconfig")
    .arg(server.kubeconfig());
    let mut s = Streaming::spawn(cmd);
    let line = s.next_line(Duration::from_secs(60));
    assert!(
        line.contains("simulated nodes ready"),
        "unexpected output: {line}"
    );
    s
}

fn node_of(p: &Value) -> String {
    p["spec"]["nodeName"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_failed_node_is_tainted_and_its_pods_are_recreated_elsewhere() {
    let grace = Duration::from_secs(10);
    let server = Server::start_with(ServerOptions {
        extra_args: [
            "--node-monitor-grace-period",
            "10s",
            "--node-monitor-period",
            "1s",
            "--default-unreachable-toleration-seconds",
            "5",
            "--default-not-ready-toleration-seconds",
            "5",
        ]
        .map(String::from)
        .to_vec(),
        ..Default::default()
    });
    let doomed_node = simulate(&server, "lcdoomed-");
    let _survivor = simulate(&server, "lcsurvivor-");
    server
        .kubectl(
            K,
            &["create", "-f", "-"],
            Some(&deployment("spread", "default", 4)),
        )
        .ok();
    let pods = wait("4 running pods", TIMEOUT, || {
        let p = items(&get(&server, &["pods", "-l", "app=spread"]));
        (p.len() == 4 && p.iter().all(|p| p["status"]["phase"] == "Running")).then_some(p)
    });
    let on_doomed: Vec<String> = pods
        .iter()
        .filter(|p| node_of(p) == "lcdoomed-0")
        .map(|p| {
            p["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert!(
        !on_doomed.is_empty() && on_doomed.len() < 4,
        "pods not spread on both nodes: {:?}",
        pods.iter().map(node_of).collect::<Vec<_>>()
    );

    // The node's heartbeats stop.
    drop(doomed_node);
    let killed = Instant::now();
    let node = wait(
        "node unreachable and tainted",
        grace + Duration::from_secs(20),
        || {
            let n = get(&server, &["node", "lcdoomed-0"]);
            let ready = n["status"]["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == "Ready").cloned())?;
            let taints = n["spec"]["taints"].as_array().cloned().unwrap_or_default();
            let tainted = taints.iter().any(|t| {
                t["key"] == "node.kubernetes.io/unreachable" && t["effect"] == "NoExecute"
            });
            (ready["status"] == "Unknown" && tainted).then_some(n)
        },
    );
    let unreachable_after = killed.elapsed();
    eprintln!("node unreachable {unreachable_after:?} after its heartbeats stopped");
    assert!(
        unreachable_after + Duration::from_secs(2) >= grace,
        "{node:#}"
    );
    let ready = node["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready").cloned())
        .unwrap_or_default();
    assert_eq!(ready["reason"], "NodeStatusUnknown");
    assert_eq!(ready["message"], "Kubelet stopped posting node status.");
    let describe = server.kubectl(K, &["get", "nodes"], None).ok();
    assert!(describe.stdout.contains("NotReady"), "{}", describe.stdout);

    // After the default toleration its pods are evicted and recreated on the other node.
    let moved = wait("pods recreated on the surviving node", TIMEOUT, || {
        let p = live(&items(&get(&server, &["pods", "-l", "app=spread"])));
        (p.len() == 4
            && p.iter()
                .all(|p| node_of(p) == "lcsurvivor-0" && p["status"]["phase"] == "Running"))
        .then_some(p)
    });
    eprintln!(
        "pods recreated {:?} after the node failed",
        killed.elapsed()
    );
    assert!(killed.elapsed() >= grace + Duration::from_secs(4));
    assert_eq!(moved.len(), 4);
    let events = get(
        &server,
        &["events", "--field-selector", "reason=TaintManagerEviction"],
    );
    for name in &on_doomed {
        assert!(
            items(&events)
                .iter()
                .any(|e| e["involvedObject"]["name"] == name.as_str()),
            "no TaintManagerEviction event for {name}"
        );
    }
}
