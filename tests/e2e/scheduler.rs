//! The scheduler end to end: `capstan server --disable-agent` with its built-in scheduler,
//! simulated nodes started through `capstan simulate-nodes`, driven by kubectl 1.32.

use crate::harness::{Kubectl, Server, Streaming};
use serde_json::{Value, json};
use std::process::Command;
use std::time::{Duration, Instant};

const K: Kubectl = Kubectl::Minor(32);
/// Upper bound for a pod to be scheduled and marked Running by a simulated node.
const PLACE_TIMEOUT: Duration = Duration::from_secs(60);

/// Starts `capstan simulate-nodes` against `server` and waits until its nodes are registered.
fn simulate(server: &Server, prefix: &str, count: usize, extra: &[&str]) -> Streaming {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_capstan"));
    cmd.args([
        "simulate-nodes",
        "--count",
        &count.to_string(),
        "--name-prefix",
        prefix,
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

fn create(server: &Server, obj: Value) {
    server
        .kubectl(K, &["create", "-f", "-"], Some(&obj.to_string()))
        .ok();
}

fn pod(name: &str, labels: Value, spec: Value) -> Value {
    let mut spec = spec;
    spec["containers"] = json!([{"name": "c", "image": "busybox:latest",
        "resources": spec.get("requests").map(|r| json!({"requests": r})).unwrap_or(json!({}))}]);
    if let Some(m) = spec.as_object_mut() {
        m.remove("requests");
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels}, "spec": spec})
}

fn get_pod(server: &Server, name: &str) -> Value {
    server
        .kubectl(K, &["get", "pod", name, "-o", "json"], None)
        .ok()
        .json()
}

/// Polls (with a deadline) until `pred` holds for the pod's JSON; returns it.
#[track_caller]
fn wait_pod(server: &Server, name: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + PLACE_TIMEOUT;
    loop {
        let p = get_pod(server, name);
        if pred(&p) {
            return p;
        }
        assert!(Instant::now() < deadline, "pod {name} never {what}: {p:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[track_caller]
fn wait_running(server: &Server, name: &str) -> String {
    let p = wait_pod(server, name, "Running", |p| {
        p["status"]["phase"] == "Running"
    });
    assert!(
        p["status"]["podIP"]
            .as_str()
            .is_some_and(|ip| ip.starts_with("10.")),
        "{p:#}"
    );
    p["spec"]["nodeName"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The FailedScheduling event message of `name`, once one exists.
#[track_caller]
fn failed_scheduling(server: &Server, name: &str) -> String {
    let deadline = Instant::now() + PLACE_TIMEOUT;
    let selector = format!("involvedObject.name={name},reason=FailedScheduling");
    loop {
        let out = server
            .kubectl(
                K,
                &["get", "events", "--field-selector", &selector, "-o", "json"],
                None,
            )
            .ok()
            .json();
        if let Some(m) = out["items"]
            .as_array()
            .and_then(|a| a.last())
            .and_then(|e| e["message"].as_str())
        {
            return m.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no FailedScheduling event for {name}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn explain(server: &Server, name: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_capstan"))
        .args(["explain", "pod", name, "-n", "default", "--kubeconfig"])
        .arg(server.kubeconfig())
        .output()
        .expect("run capstan explain");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "capstan explain failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Two ssd nodes, one hdd node, one tainted gpu node.
fn cluster() -> (Server, Vec<Streaming>) {
    let server = Server::start();
    let small = ["--cpu", "2", "--memory", "4Gi", "--pods", "10"];
    let sims = vec![
        simulate(
            &server,
            "ssd-",
            2,
            &[&small[..], &["--label", "disk=ssd"]].concat(),
        ),
        simulate(
            &server,
            "hdd-",
            1,
            &[&small[..], &["--label", "disk=hdd"]].concat(),
        ),
        simulate(
            &server,
            "gpu-",
            1,
            &["--cpu", "8", "--taint", "dedicated=gpu:NoSchedule"],
        ),
    ];
    (server, sims)
}

#[test]
fn scheduler_honours_selectors_affinity_and_taints() {
    let (server, _sims) = cluster();
    create(
        &server,
        pod(
            "on-ssd",
            json!({}),
            json!({"nodeSelector": {"disk": "ssd"}}),
        ),
    );
    let required = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "disk", "operator": "In", "values": ["hdd"]}]}]}}});
    create(
        &server,
        pod("on-hdd", json!({}), json!({"affinity": required})),
    );
    let to_gpu = json!({"kubernetes.io/hostname": "gpu-0"});
    create(
        &server,
        pod(
            "tolerant",
            json!({}),
            json!({"nodeSelector": to_gpu,
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]}),
        ),
    );
    create(
        &server,
        pod("intolerant", json!({}), json!({"nodeSelector": to_gpu})),
    );

    assert!(wait_running(&server, "on-ssd").starts_with("ssd-"));
    assert_eq!(wait_running(&server, "on-hdd"), "hdd-0");
    assert_eq!(wait_running(&server, "tolerant"), "gpu-0");
    assert_eq!(
        failed_scheduling(&server, "intolerant"),
        "0/4 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, \
         3 node(s) didn't match Pod's node affinity/selector. preemption: 0/4 nodes are available: \
         4 Preemption is not helpful for scheduling."
    );
    let p = get_pod(&server, "intolerant");
    assert_eq!(p["spec"]["nodeName"], Value::Null);
    let events = server
        .kubectl(
            K,
            &[
                "get",
                "events",
                "--field-selector",
                "involvedObject.name=on-hdd",
            ],
            None,
        )
        .ok();
    assert!(
        events
            .stdout
            .contains("Successfully assigned default/on-hdd to hdd-0"),
        "{events}"
    );
}

#[test]
fn resource_exhaustion_leaves_pods_pending_with_upstream_message_and_explain_says_why() {
    let (server, _sims) = cluster();
    create(
        &server,
        pod("big", json!({}), json!({"requests": {"cpu": "4"}})),
    );
    create(
        &server,
        pod(
            "fits",
            json!({}),
            json!({"requests": {"cpu": "1", "memory": "1Gi"}, "nodeSelector": {"disk": "ssd"}}),
        ),
    );
    let message = failed_scheduling(&server, "big");
    assert_eq!(
        message,
        "0/4 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, 3 Insufficient cpu. \
         preemption: 0/4 nodes are available: 1 Preemption is not helpful for scheduling, \
         3 No preemption victims found for incoming pod."
    );
    let p = wait_pod(&server, "big", "PodScheduled=False", |p| {
        p["status"]["conditions"].as_array().is_some_and(|c| {
            c.iter().any(|c| {
                c["type"] == "PodScheduled"
                    && c["status"] == "False"
                    && c["reason"] == "Unschedulable"
            })
        })
    });
    assert_eq!(p["status"]["phase"], "Pending");
    let describe = server.kubectl(K, &["describe", "pod", "big"], None).ok();
    assert!(describe.stdout.contains("FailedScheduling"), "{describe}");
    assert!(describe.stdout.contains("3 Insufficient cpu"), "{describe}");

    let pending = explain(&server, "big");
    for needle in [
        "NODE",
        "NodeResourcesFit",
        "TaintToleration",
        "NO: Insufficient cpu",
        "NO: node(s) had untolerated taint {dedicated: gpu}",
        "would stay Pending: 0/4 nodes are available",
    ] {
        assert!(
            pending.contains(needle),
            "missing {needle:?} in:\n{pending}"
        );
    }
    assert_eq!(
        pending
            .lines()
            .filter(|l| l.starts_with("ssd-") || l.starts_with("hdd-") || l.starts_with("gpu-"))
            .count(),
        4,
        "{pending}"
    );

    let node = wait_running(&server, "fits");
    let bound = explain(&server, "fits");
    let last = bound.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(&format!("bound to {node}: total ")),
        "{bound}"
    );
    assert!(last.contains("NodeResourcesFit"), "{bound}");
    let row = bound
        .lines()
        .find(|l| l.starts_with("hdd-0"))
        .unwrap_or_default();
    assert!(
        row.contains("NO: node(s) didn't match Pod's node affinity/selector"),
        "{bound}"
    );
}

#[test]
fn required_anti_affinity_spreads_replicas_over_nodes() {
    let server = Server::start();
    let _sims = simulate(&server, "n-", 3, &["--cpu", "4"]);
    let anti = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}]}});
    for i in 0..4 {
        create(
            &server,
            pod(
                &format!("web-{i}"),
                json!({"app": "web"}),
                json!({"affinity": anti}),
            ),
        );
    }
    let deadline = Instant::now() + PLACE_TIMEOUT;
    let (mut nodes, pending) = loop {
        let list = server
            .kubectl(K, &["get", "pods", "-l", "app=web", "-o", "json"], None)
            .ok()
            .json();
        let items = list["items"].as_array().cloned().unwrap_or_default();
        let nodes: Vec<String> = items
            .iter()
            .filter_map(|p| p["spec"]["nodeName"].as_str().map(String::from))
            .collect();
        let pending: Vec<String> = items
            .iter()
            .filter(|p| p["spec"]["nodeName"].is_null())
            .filter_map(|p| p["metadata"]["name"].as_str().map(String::from))
            .collect();
        if nodes.len() == 3 {
            break (nodes, pending);
        }
        assert!(Instant::now() < deadline, "replicas not placed: {list:#}");
        std::thread::sleep(Duration::from_millis(100));
    };
    nodes.sort();
    assert_eq!(nodes, ["n-0", "n-1", "n-2"]);
    assert_eq!(pending.len(), 1);
    assert_eq!(
        failed_scheduling(&server, &pending[0]),
        "0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules. \
         preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod."
    );
}

#[test]
fn high_priority_pod_preempts_a_low_priority_one() {
    let server = Server::start();
    let _sims = simulate(&server, "solo-", 1, &["--cpu", "1", "--memory", "2Gi"]);
    let classes = server
        .kubectl(K, &["api-resources", "--api-group=scheduling.k8s.io"], None)
        .ok();
    assert!(classes.stdout.contains("priorityclasses"), "{classes}");
    for (name, value) in [("low", 100), ("high", 1000)] {
        create(
            &server,
            json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                               "metadata": {"name": name}, "value": value}),
        );
    }
    create(
        &server,
        pod(
            "victim",
            json!({}),
            json!({"priorityClassName": "low", "requests": {"cpu": "800m"}}),
        ),
    );
    assert_eq!(wait_running(&server, "victim"), "solo-0");
    create(
        &server,
        pod(
            "preemptor",
            json!({}),
            json!({"priorityClassName": "high", "requests": {"cpu": "800m"}}),
        ),
    );
    assert_eq!(wait_running(&server, "preemptor"), "solo-0");
    let gone = server.kubectl(K, &["get", "pod", "victim"], None);
    assert!(gone.stderr.contains("NotFound"), "{gone}");
    let events = server
        .kubectl(
            K,
            &[
                "get",
                "events",
                "--field-selector",
                "involvedObject.name=victim",
            ],
            None,
        )
        .ok();
    assert!(events.stdout.contains("Preempted"), "{events}");
}
