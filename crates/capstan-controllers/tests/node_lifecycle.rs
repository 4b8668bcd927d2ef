//! The node lifecycle controller and taint manager against an in-process API server, with a
//! short grace period: a node whose heartbeats stop goes Unknown and gets the unreachable
//! taints, a NotReady node the not-ready taints, pods that do not tolerate the taint long
//! enough are evicted (DisruptionTarget condition, TaintManagerEviction event), tolerating pods
//! stay, and recovery removes the taints.

use capstan_apiserver::testing::TestServer;
use capstan_controllers::ControllerOptions;
use capstan_controllers::node_lifecycle::NodeLifecycleOptions;
use capstan_store::MemoryStore;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Namespace, Node, Pod};
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const NS: &str = "lifecycle";
const GRACE: Duration = Duration::from_secs(2);
const TOLERATION: i64 = 3;

fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).unwrap()
}

async fn wait_for<F, Fut>(what: &str, mut f: F)
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

fn now() -> String {
    jiff::Timestamp::now().to_string()
}

async fn create_node(client: &Client, name: &str, ready: &str) {
    let t = now();
    let node: Node = obj(
        json!({"metadata": {"name": name}, "status": {"conditions": [
        {"type": "Ready", "status": ready, "reason": "KubeletReady", "lastHeartbeatTime": t, "lastTransitionTime": t},
        {"type": "MemoryPressure", "status": "False", "lastHeartbeatTime": t, "lastTransitionTime": t}]}}),
    );
    let nodes: Api<Node> = Api::all(client.clone());
    nodes.create(&PostParams::default(), &node).await.unwrap();
    // Status may be dropped on create: post it as a kubelet would.
    nodes
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": node.status})),
        )
        .await
        .unwrap();
}

async fn renew(client: &Client, node: &str) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let body = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": node, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": node, "leaseDurationSeconds": 40, "renewTime": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()}});
    let r = leases
        .patch(
            node,
            &PatchParams::apply("test-kubelet").force(),
            &Patch::Apply(&body),
        )
        .await;
    if r.is_err() {
        leases
            .create(&PostParams::default(), &obj(body))
            .await
            .unwrap();
    }
}

fn taint_keys(n: &Node) -> Vec<String> {
    let mut k: Vec<String> = n
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
        .iter()
        .map(|t| format!("{}:{}", t.key, t.effect))
        .collect();
    k.sort();
    k
}

fn ready_condition(n: &Node) -> (String, String, String) {
    let c = n
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .cloned()
        .unwrap();
    (
        c.status,
        c.reason.unwrap_or_default(),
        c.message.unwrap_or_default(),
    )
}

fn pod(name: &str, node: &str, tolerations: serde_json::Value) -> Pod {
    obj(
        json!({"metadata": {"name": name}, "spec": {"nodeName": node, "tolerations": tolerations,
        "containers": [{"name": "c", "image": "busybox"}]}}),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_nodes_are_tainted_their_pods_evicted_and_recovery_untaints() {
    // The API server's DefaultTolerationSeconds admission gives pods these tolerations.
    capstan_apiserver::admission::tolerations::set_default_seconds(TOLERATION, TOLERATION);
    let server = TestServer::start(Arc::new(MemoryStore::new())).await;
    let client = server.client().await;
    // kube-node-lease exists from the start, as upstream.
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": NS}})),
        )
        .await
        .unwrap();
    create_node(&client, "alive", "True").await;
    create_node(&client, "dead", "True").await;
    create_node(&client, "sick", "False").await;
    for n in ["alive", "dead", "sick"] {
        renew(&client, n).await;
    }
    // A kubelet for "alive" and "sick": keeps their Leases fresh until the test ends.
    let heartbeats = CancellationToken::new();
    let beating = tokio::spawn({
        let (client, stop) = (client.clone(), heartbeats.clone());
        async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(300)) => {}
                }
                renew(&client, "alive").await;
                renew(&client, "sick").await;
            }
        }
    });
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let pp = PostParams::default();
    pods.create(&pp, &pod("default-toleration", "dead", json!([])))
        .await
        .unwrap();
    let forever = json!([{"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"}]);
    pods.create(&pp, &pod("tolerates-forever", "dead", forever))
        .await
        .unwrap();
    pods.create(&pp, &pod("on-alive", "alive", json!([])))
        .await
        .unwrap();
    pods.create(&pp, &pod("on-sick", "sick", json!([])))
        .await
        .unwrap();

    let stop = CancellationToken::new();
    let options = ControllerOptions {
        node_lifecycle: NodeLifecycleOptions {
            monitor_period: Duration::from_millis(200),
            grace_period: GRACE,
            startup_grace_period: GRACE,
            default_not_ready_toleration_seconds: TOLERATION,
            default_unreachable_toleration_seconds: TOLERATION,
        },
        ..Default::default()
    };
    let started = Instant::now();
    let manager = tokio::spawn(capstan_controllers::run_controllers_with(
        client.clone(),
        options,
        stop.clone(),
    ));
    let nodes: Api<Node> = Api::all(client.clone());

    wait_for("dead node Unknown and tainted unreachable", || async {
        let n = nodes.get("dead").await.unwrap();
        ready_condition(&n).0 == "Unknown"
            && taint_keys(&n)
                == [
                    "node.kubernetes.io/unreachable:NoExecute",
                    "node.kubernetes.io/unreachable:NoSchedule",
                ]
    })
    .await;
    let tainted_at = Instant::now();
    assert!(
        started.elapsed() >= GRACE,
        "tainted before the grace period"
    );
    let dead = nodes.get("dead").await.unwrap();
    assert_eq!(
        ready_condition(&dead),
        (
            "Unknown".into(),
            "NodeStatusUnknown".into(),
            "Kubelet stopped posting node status.".into()
        )
    );
    let memory = dead
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .unwrap()
        .iter()
        .find(|c| c.type_ == "MemoryPressure")
        .unwrap()
        .clone();
    assert_eq!(memory.status, "Unknown");
    // The kubelet reports NotReady: not-ready taints.
    wait_for("sick node tainted not-ready", || async {
        taint_keys(&nodes.get("sick").await.unwrap())
            == [
                "node.kubernetes.io/not-ready:NoExecute",
                "node.kubernetes.io/not-ready:NoSchedule",
            ]
    })
    .await;
    assert!(taint_keys(&nodes.get("alive").await.unwrap()).is_empty());

    let terminating = |name: &'static str| {
        let pods = pods.clone();
        async move {
            pods.get_opt(name)
                .await
                .unwrap()
                .is_some_and(|p| p.metadata.deletion_timestamp.is_some())
        }
    };
    wait_for("pod without a toleration evicted", || {
        terminating("default-toleration")
    })
    .await;
    let waited = tainted_at.elapsed();
    assert!(
        waited + Duration::from_millis(500) >= Duration::from_secs(TOLERATION as u64),
        "evicted after {waited:?}, before the default toleration"
    );
    wait_for("pod on the NotReady node evicted", || {
        terminating("on-sick")
    })
    .await;
    let evicted = pods.get("default-toleration").await.unwrap();
    let disruption = evicted
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .unwrap()
        .iter()
        .find(|c| c.type_ == "DisruptionTarget")
        .cloned()
        .expect("DisruptionTarget condition");
    assert_eq!(disruption.reason.as_deref(), Some("DeletionByTaintManager"));
    let events = Api::<Event>::namespaced(client.clone(), NS)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(
        events
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("TaintManagerEviction")
                && e.involved_object.name.as_deref() == Some("default-toleration")
                && e.message.as_deref()
                    == Some("Marking for deletion Pod lifecycle/default-toleration"))
    );
    assert!(!terminating("tolerates-forever").await);
    assert!(!terminating("on-alive").await);

    // The kubelet comes back: status and Lease again.
    let t = now();
    nodes
        .patch_status("dead", &PatchParams::default(), &Patch::Strategic(json!({"status": {"conditions": [
            {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "back", "lastHeartbeatTime": t, "lastTransitionTime": t}]}})))
        .await
        .unwrap();
    renew(&client, "dead").await;
    wait_for("taints removed on recovery", || async {
        taint_keys(&nodes.get("dead").await.unwrap()).is_empty()
    })
    .await;
    assert!(!terminating("tolerates-forever").await);

    heartbeats.cancel();
    beating.await.unwrap();
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(15), manager)
        .await
        .expect("controllers did not stop")
        .unwrap();
    server.shutdown().await;
}
