//! ResourceQuota usage and PodDisruptionBudget status against a real in-process API server
//! with the controllers running.

mod support;

use k8s_openapi::api::core::v1::{ConfigMap, Pod, ResourceQuota};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{Value, json};
use support::{start, wait_for};

fn obj<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).unwrap()
}

fn pod(name: &str, cpu: &str, memory: &str) -> Pod {
    obj(
        json!({"metadata": {"name": name, "labels": {"app": "db"}}, "spec": {"containers": [
        {"name": "c", "image": "busybox", "resources": {
            "requests": {"cpu": cpu, "memory": memory}, "limits": {"cpu": cpu, "memory": memory}}}]}}),
    )
}

fn used(q: &ResourceQuota, key: &str) -> Option<String> {
    q.status
        .as_ref()?
        .used
        .as_ref()?
        .get(key)
        .map(|q| q.0.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_status_tracks_counts_and_compute_of_live_pods() {
    let c = start("quota").await;
    let quotas = Api::<ResourceQuota>::namespaced(c.client.clone(), "quota");
    quotas
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "q"}, "spec": {"hard": {
            "pods": "10", "requests.cpu": "4", "limits.memory": "2Gi", "configmaps": "5",
            "count/deployments.apps": "3"}}})),
        )
        .await
        .unwrap();
    let pods = Api::<Pod>::namespaced(c.client.clone(), "quota");
    for (name, cpu) in [("a", "250m"), ("b", "500m")] {
        pods.create(&PostParams::default(), &pod(name, cpu, "256Mi"))
            .await
            .unwrap();
    }
    let want = |q: &ResourceQuota, pods: &str, cpu: &str, mem: &str| {
        used(q, "pods").as_deref() == Some(pods)
            && used(q, "requests.cpu").as_deref() == Some(cpu)
            && used(q, "limits.memory").as_deref() == Some(mem)
    };
    wait_for("usage of two pods", || async {
        want(&quotas.get("q").await.unwrap(), "2", "750m", "512Mi")
    })
    .await;
    let q = quotas.get("q").await.unwrap();
    let status = q.status.clone().unwrap();
    assert_eq!(status.hard, q.spec.clone().unwrap().hard);
    // kube-root-ca.crt is published only by the server, not in this controller-only cluster.
    assert_eq!(used(&q, "count/deployments.apps").as_deref(), Some("0"));
    let configmaps_before: i64 = used(&q, "configmaps").unwrap().parse().unwrap();

    Api::<ConfigMap>::namespaced(c.client.clone(), "quota")
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "cm"}})),
        )
        .await
        .unwrap();
    pods.delete("a", &DeleteParams::default()).await.unwrap();
    wait_for("usage after a delete", || async {
        let q = quotas.get("q").await.unwrap();
        // A pod change triggers the recount, which sees the new ConfigMap too.
        want(&q, "1", "500m", "256Mi")
            && used(&q, "configmaps").and_then(|s| s.parse::<i64>().ok())
                == Some(configmaps_before + 1)
    })
    .await;
    c.stop().await;
}

fn ready_pod(name: &str, ready: bool) -> Value {
    json!({"metadata": {"name": name, "labels": {"app": "web"}},
           "spec": {"containers": [{"name": "c", "image": "busybox"}]},
           "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_status_counts_healthy_pods_and_allowed_disruptions() {
    let c = start("pdb").await;
    let pods = Api::<Pod>::namespaced(c.client.clone(), "pdb");
    for (name, ready) in [("w1", true), ("w2", true), ("w3", false)] {
        let p: Pod = obj(ready_pod(name, ready));
        pods.create(&PostParams::default(), &p).await.unwrap();
        let status = json!({"status": ready_pod(name, ready)["status"]});
        pods.patch_status(name, &Default::default(), &kube::api::Patch::Merge(status))
            .await
            .unwrap();
    }
    let budgets = Api::<PodDisruptionBudget>::namespaced(c.client.clone(), "pdb");
    budgets
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "web"}, "spec": {
            "minAvailable": 1, "selector": {"matchLabels": {"app": "web"}}}})),
        )
        .await
        .unwrap();
    let state = |b: &PodDisruptionBudget| {
        let s = b.status.clone().unwrap_or_default();
        let cond = s
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "DisruptionAllowed")
            .map(|c| c.status.clone());
        (
            s.current_healthy,
            s.desired_healthy,
            s.expected_pods,
            s.disruptions_allowed,
            cond,
        )
    };
    wait_for("budget status", || async {
        state(&budgets.get("web").await.unwrap()) == (2, 1, 3, 1, Some("True".into()))
    })
    .await;
    // One healthy pod fewer: no disruption allowed.
    pods.delete("w1", &DeleteParams::default()).await.unwrap();
    wait_for("budget exhausted", || async {
        state(&budgets.get("web").await.unwrap()) == (1, 1, 2, 0, Some("False".into()))
    })
    .await;
    c.stop().await;
}
