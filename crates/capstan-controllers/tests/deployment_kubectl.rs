//! `kubectl` 1.32 rollout commands (status, history, undo, pause, resume, restart, scale) against the Deployment controller on an in-process API server:
//! `rollout status` completes once (test-simulated) pods are ready, `set image` rolls out,
//! `rollout history` lists the revisions, `rollout undo` goes back, `scale` resizes, and a
//! rollout that cannot progress reports ProgressDeadlineExceeded.

mod support;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use std::process::Stdio;
use std::time::{Duration, Instant};
use support::{live_pods, mark_ready, pod_ready, start, wait_for};
use tokio::process::Command;

const KUBECTL: &str = "/usr/lib/google-cloud-sdk/bin/kubectl.1.32";

fn kubectl(c: &support::Cluster, ns: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(KUBECTL);
    cmd.arg("--kubeconfig")
        .arg(c.server.data_dir().join("admin.kubeconfig"))
        .arg("-n")
        .arg(ns)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

async fn run(c: &support::Cluster, ns: &str, args: &[&str]) -> String {
    let out = tokio::time::timeout(Duration::from_secs(60), kubectl(c, ns, args).output())
        .await
        .expect("kubectl timed out")
        .expect("run kubectl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "kubectl {args:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Runs `kubectl rollout status` while marking new pods ready, like kubelets would.
async fn rollout_status_with_ready_pods(c: &support::Cluster, ns: &str, app: &str) -> String {
    let pods = Api::<Pod>::namespaced(c.client.clone(), ns);
    let mut child = kubectl(
        c,
        ns,
        &[
            "rollout",
            "status",
            &format!("deployment/{app}"),
            "--timeout=60s",
        ],
    )
    .spawn()
    .expect("spawn kubectl");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "rollout status did not finish");
        if let Some(status) = child.try_wait().expect("kubectl") {
            let out = child.wait_with_output().await.expect("kubectl output");
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(
                status.success(),
                "rollout status: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            return stdout;
        }
        if let Some(p) = live_pods(&pods, app).await.iter().find(|p| !pod_ready(p)) {
            mark_ready(&pods, p.metadata.name.as_deref().unwrap_or_default()).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn image(d: &Deployment) -> String {
    d.spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
        .image
        .clone()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_rollout_status_history_undo_and_scale() {
    let ns = "deploy-kubectl";
    let c = start(ns).await;
    let deploys = Api::<Deployment>::namespaced(c.client.clone(), ns);
    let pods = Api::<Pod>::namespaced(c.client.clone(), ns);
    let d: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": "busybox:1"}]}
            }
        }
    }))
    .unwrap();
    deploys.create(&PostParams::default(), &d).await.unwrap();
    let out = rollout_status_with_ready_pods(&c, ns, "web").await;
    assert!(out.contains("successfully rolled out"), "{out}");

    run(&c, ns, &["set", "image", "deployment/web", "c=busybox:2"]).await;
    let out = rollout_status_with_ready_pods(&c, ns, "web").await;
    assert!(out.contains("successfully rolled out"), "{out}");

    let history = run(&c, ns, &["rollout", "history", "deployment/web"]).await;
    let revisions: Vec<&str> = history
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.parse::<u32>().is_ok())
        .collect();
    assert_eq!(revisions, ["1", "2"], "{history}");

    run(&c, ns, &["rollout", "undo", "deployment/web"]).await;
    assert_eq!(image(&deploys.get("web").await.unwrap()), "busybox:1");
    let out = rollout_status_with_ready_pods(&c, ns, "web").await;
    assert!(out.contains("successfully rolled out"), "{out}");
    let history = run(&c, ns, &["rollout", "history", "deployment/web"]).await;
    let revisions: Vec<&str> = history
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.parse::<u32>().is_ok())
        .collect();
    assert_eq!(revisions, ["2", "3"], "{history}");

    // Paused: a new template waits; resume rolls it out. Restart rolls out a new revision.
    let rss = Api::<ReplicaSet>::namespaced(c.client.clone(), ns);
    run(&c, ns, &["rollout", "pause", "deployment/web"]).await;
    run(&c, ns, &["set", "image", "deployment/web", "c=busybox:3"]).await;
    wait_for("paused observed", || async {
        let d = deploys.get("web").await.unwrap();
        d.status.and_then(|s| s.observed_generation) >= d.metadata.generation
    })
    .await;
    assert_eq!(rss.list(&Default::default()).await.unwrap().items.len(), 2);
    run(&c, ns, &["rollout", "resume", "deployment/web"]).await;
    let out = rollout_status_with_ready_pods(&c, ns, "web").await;
    assert!(out.contains("successfully rolled out"), "{out}");
    run(&c, ns, &["rollout", "restart", "deployment/web"]).await;
    let out = rollout_status_with_ready_pods(&c, ns, "web").await;
    assert!(out.contains("successfully rolled out"), "{out}");
    let history = run(&c, ns, &["rollout", "history", "deployment/web"]).await;
    assert!(history.lines().any(|l| l.starts_with("5 ")), "{history}");

    run(&c, ns, &["scale", "deployment/web", "--replicas=5"]).await;
    wait_for("5 pods", || async {
        live_pods(&pods, "web").await.len() == 5
    })
    .await;
    run(&c, ns, &["scale", "deployment/web", "--replicas=0"]).await;
    wait_for("0 pods", || async {
        live_pods(&pods, "web").await.is_empty()
    })
    .await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_rollout_exceeds_its_progress_deadline() {
    let ns = "deploy-deadline";
    let c = start(ns).await;
    let deploys = Api::<Deployment>::namespaced(c.client.clone(), ns);
    let d: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "stuck"},
        "spec": {
            "replicas": 1,
            "progressDeadlineSeconds": 1,
            "selector": {"matchLabels": {"app": "stuck"}},
            "template": {
                "metadata": {"labels": {"app": "stuck"}},
                "spec": {"containers": [{"name": "c", "image": "busybox:1"}]}
            }
        }
    }))
    .unwrap();
    deploys.create(&PostParams::default(), &d).await.unwrap();
    // Nobody marks the pod ready.
    wait_for("ProgressDeadlineExceeded", || async {
        let d = deploys.get("stuck").await.unwrap();
        d.status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| {
                c.type_ == "Progressing"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
            })
    })
    .await;
    let out = kubectl(
        &c,
        ns,
        &["rollout", "status", "deployment/stuck", "--timeout=20s"],
    )
    .output()
    .await
    .expect("kubectl");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("exceeded its progress deadline"),
        "{stderr}"
    );
    c.stop().await;
}
