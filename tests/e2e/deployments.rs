//! A Deployment on a real node, driven by the stock kubectl 1.32 (issue 7, must-show 1): pods are
//! replaced after `kubectl delete pod` and restarted after a kill, `kubectl scale` to 10 and 0, a
//! rolling update to a second image tag never drops below `replicas - maxUnavailable` ready pods,
//! `rollout history` lists the revisions and `rollout undo` brings the first template back.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use serde_json::Value;

use crate::harness::ServerOptions;
use crate::node::{IMAGE, Node, condition, namespace};

const NS: &str = "rollout";
const V2: &str = "capstan.test/e2e/busybox:2";

fn deployment_yaml() -> String {
    // Ready once the container has written its marker; a restart is visible as a new marker.
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: {NS}
spec:
  replicas: 3
  selector:
    matchLabels: {{app: web}}
  strategy:
    type: RollingUpdate
    rollingUpdate: {{maxSurge: 1, maxUnavailable: 1}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: app
        image: {IMAGE}
        imagePullPolicy: IfNotPresent
        command: ["sh", "-c", "sleep 1; touch /tmp/ready; exec sleep 3600"]
        readinessProbe:
          exec: {{command: ["cat", "/tmp/ready"]}}
          periodSeconds: 1
"#
    )
}

/// One pod of the Deployment as the test sees it.
#[derive(Debug)]
struct PodView {
    name: String,
    image: String,
    ready: bool,
    terminating: bool,
    restarts: i64,
}

fn pods(node: &Node) -> Vec<PodView> {
    let out = node.kubectl(
        &["get", "pods", "-n", NS, "-l", "app=web", "-o", "json"],
        None,
    );
    if !out.status.success() {
        return Vec::new();
    }
    out.json()["items"]
        .as_array()
        .map(|items| items.iter().map(view).collect())
        .unwrap_or_default()
}

fn view(pod: &Value) -> PodView {
    PodView {
        name: pod["metadata"]["name"].as_str().unwrap_or("").to_string(),
        image: pod["spec"]["containers"][0]["image"]
            .as_str()
            .unwrap_or("")
            .to_string(),
        ready: condition(pod, "Ready") == "True",
        terminating: !pod["metadata"]["deletionTimestamp"].is_null(),
        restarts: pod["status"]["containerStatuses"][0]["restartCount"]
            .as_i64()
            .unwrap_or(0),
    }
}

/// Waits until exactly `n` pods exist, all ready, none terminating, all running `image`.
fn wait_ready(node: &Node, n: usize, image: &str) -> Vec<PodView> {
    let mut last = Vec::new();
    let mut done = false;
    node.wait(&format!("{n} ready pods of {image}"), || {
        last = pods(node);
        done = last.len() == n
            && last
                .iter()
                .all(|p| p.ready && !p.terminating && p.image == image);
        done
    });
    assert!(done, "{last:?}");
    last
}

fn rollout_status(node: &Node) {
    node.kubectl(
        &[
            "rollout",
            "status",
            "-n",
            NS,
            "deployment/web",
            "--timeout=180s",
        ],
        None,
    )
    .ok()
    .stdout_has("successfully rolled out");
}

/// The revision numbers `kubectl rollout history` lists.
fn revisions(node: &Node) -> Vec<String> {
    node.kubectl(&["rollout", "history", "-n", NS, "deployment/web"], None)
        .ok()
        .lines()
        .into_iter()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.chars().all(|c| c.is_ascii_digit()))
        .map(String::from)
        .collect()
}

fn names(pods: &[PodView]) -> BTreeSet<String> {
    pods.iter().map(|p| p.name.clone()).collect()
}

/// Watches the pods during a rollout and records the lowest count of ready, not terminating
/// pods seen, until `stop` is set.
fn watch_availability(node: Arc<Node>, stop: Arc<AtomicBool>) -> thread::JoinHandle<usize> {
    thread::spawn(move || {
        let mut lowest = usize::MAX;
        while !stop.load(Ordering::Relaxed) {
            let seen = pods(&node);
            if !seen.is_empty() {
                lowest = lowest.min(seen.iter().filter(|p| p.ready && !p.terminating).count());
            }
            thread::sleep(Duration::from_millis(150));
        }
        lowest
    })
}

#[test]
fn deployment_survives_pod_loss_scales_rolls_out_and_back() {
    let node = Arc::new(Node::start_with(ServerOptions::default(), &[V2]));
    namespace(&node, NS);
    node.apply(&deployment_yaml());
    rollout_status(&node);
    let first = wait_ready(&node, 3, IMAGE);

    // A deleted pod is replaced by a new one.
    let victim = first[0].name.clone();
    node.kubectl(&["delete", "pod", "-n", NS, &victim, "--wait=false"], None)
        .ok();
    let replaced = wait_ready(&node, 3, IMAGE);
    assert!(!names(&replaced).contains(&victim), "{replaced:?}");

    // A killed container is restarted in place; the pod comes back ready.
    let target = replaced[0].name.clone();
    let pod = node.pod(NS, &target);
    node.kill_container_process(&pod, "app");
    node.wait(&format!("{target} restarted and ready"), || {
        pods(&node)
            .iter()
            .any(|p| p.name == target && p.restarts >= 1 && p.ready)
    });
    wait_ready(&node, 3, IMAGE);

    // kubectl scale: up to 10, down to 0, back to 3.
    for (replicas, want) in [
        ("--replicas=10", 10),
        ("--replicas=0", 0),
        ("--replicas=3", 3),
    ] {
        node.kubectl(&["scale", "-n", NS, "deployment/web", replicas], None)
            .ok();
        wait_ready(&node, want, IMAGE);
    }
    rollout_status(&node);

    // Rolling update to the second tag: never fewer than replicas - maxUnavailable ready.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_availability(node.clone(), stop.clone());
    node.kubectl(
        &[
            "set",
            "image",
            "-n",
            NS,
            "deployment/web",
            &format!("app={V2}"),
        ],
        None,
    )
    .ok();
    rollout_status(&node);
    let updated = wait_ready(&node, 3, V2);
    stop.store(true, Ordering::Relaxed);
    let lowest = watcher.join().expect("availability watcher");
    assert!(
        lowest >= 2,
        "a moment with {lowest} ready pods during the rollout (want >= 2)"
    );
    assert!(names(&updated).is_disjoint(&names(&replaced)));

    assert_eq!(revisions(&node), ["1", "2"]);

    // Undo goes back to the first template, as revision 3.
    node.kubectl(&["rollout", "undo", "-n", NS, "deployment/web"], None)
        .ok()
        .stdout_has("rolled back");
    rollout_status(&node);
    wait_ready(&node, 3, IMAGE);
    assert_eq!(revisions(&node), ["2", "3"]);
}
