//! Helpers shared by the workload controller tests: an in-process API server with the
//! controllers running, pod listing, polling with a deadline, and simulated readiness.
#![allow(dead_code)]

use capstan_apiserver::testing::TestServer;
use capstan_store::MemoryStore;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub struct Cluster {
    pub server: TestServer,
    pub client: Client,
    stop: CancellationToken,
    manager: JoinHandle<()>,
}

pub async fn start(ns: &str) -> Cluster {
    let server = TestServer::start(Arc::new(MemoryStore::new())).await;
    let client = server.client().await;
    let stop = CancellationToken::new();
    let manager = tokio::spawn(capstan_controllers::run_controllers(
        client.clone(),
        stop.clone(),
    ));
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": ns}})).unwrap(),
        )
        .await
        .unwrap();
    Cluster {
        server,
        client,
        stop,
        manager,
    }
}

impl Cluster {
    /// Stops the controllers and starts fresh ones (empty caches), as a failover would.
    pub async fn restart_controllers(&mut self) {
        self.stop.cancel();
        (&mut self.manager).await.unwrap();
        self.stop = CancellationToken::new();
        self.manager = tokio::spawn(capstan_controllers::run_controllers(
            self.client.clone(),
            self.stop.clone(),
        ));
    }

    pub async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.manager)
            .await
            .expect("controllers did not stop")
            .unwrap();
        self.server.shutdown().await;
    }
}

/// Live (not terminating) pods with label app=`app`.
pub async fn live_pods(pods: &Api<Pod>, app: &str) -> Vec<Pod> {
    pods.list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

pub async fn wait_for<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn count_is(pods: &Api<Pod>, app: &str, n: usize) -> bool {
    live_pods(pods, app).await.len() == n
}

/// Marks a pod Running and Ready through the status subresource, as a kubelet would.
pub async fn mark_ready(pods: &Api<Pod>, name: &str) {
    let now = jiff::Timestamp::now().to_string();
    pods.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}]
        }})),
    )
    .await
    .unwrap();
}

/// Whether a pod's Ready condition is True.
pub fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}
