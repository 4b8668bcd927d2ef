//! Node IPAM against a real in-process API server: nodes without a podCIDR get the next free
//! subnet of the cluster CIDR, pre-assigned subnets are respected, and a restarted controller
//! manager rebuilds its state from the Nodes instead of handing a subnet out twice.

use std::sync::Arc;
use std::time::{Duration, Instant};

use capstan_apiserver::testing::TestServer;
use capstan_controllers::{ControllerOptions, run_controller_manager_with};
use capstan_store::{MemoryStore, Store};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, PostParams};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

fn options() -> ControllerOptions {
    ControllerOptions {
        cluster_cidr: "10.77.0.0/16".into(),
        node_cidr_mask_size: 24,
        ..Default::default()
    }
}

fn start(client: kube::Client, identity: &str) -> (CancellationToken, JoinHandle<()>) {
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let shutdown = shutdown.clone();
        let identity = identity.to_string();
        async move {
            run_controller_manager_with(client, identity, options(), shutdown)
                .await
                .expect("controller manager");
        }
    });
    (shutdown, task)
}

async fn stop(shutdown: CancellationToken, task: JoinHandle<()>) {
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(15), task)
        .await
        .expect("controller manager did not stop")
        .expect("join");
}

async fn create(nodes: &Api<Node>, name: &str, cidr: Option<&str>) {
    let mut node = serde_json::json!({"metadata": {"name": name}, "spec": {}});
    if let Some(c) = cidr {
        node["spec"] = serde_json::json!({"podCIDR": c, "podCIDRs": [c]});
    }
    let node: Node = serde_json::from_value(node).expect("node");
    nodes
        .create(&PostParams::default(), &node)
        .await
        .expect("create node");
}

/// Waits for the node's podCIDR and checks podCIDRs agrees.
async fn cidr_of(nodes: &Api<Node>, name: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let node = nodes.get(name).await.expect("get node");
        let spec = node.spec.unwrap_or_default();
        if let Some(cidr) = spec.pod_cidr.filter(|c| !c.is_empty()) {
            assert_eq!(
                spec.pod_cidrs,
                Some(vec![cidr.clone()]),
                "podCIDRs of {name}"
            );
            return cidr;
        }
        assert!(Instant::now() < deadline, "{name} got no podCIDR in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_get_distinct_subnets_across_restarts() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let server = TestServer::start(store).await;
    let client = server.client().await;
    let nodes = Api::<Node>::all(client.clone());

    create(&nodes, "pre", Some("10.77.0.0/24")).await;
    create(&nodes, "outside", Some("192.168.5.0/24")).await;
    create(&nodes, "n1", None).await;
    let (shutdown, task) = start(client.clone(), "ipam-a");
    assert_eq!(cidr_of(&nodes, "n1").await, "10.77.1.0/24");
    create(&nodes, "n2", None).await;
    create(&nodes, "n3", None).await;
    let mut got = vec![cidr_of(&nodes, "n2").await, cidr_of(&nodes, "n3").await];
    got.sort();
    assert_eq!(got, vec!["10.77.2.0/24", "10.77.3.0/24"]);
    assert_eq!(cidr_of(&nodes, "pre").await, "10.77.0.0/24");
    assert_eq!(cidr_of(&nodes, "outside").await, "192.168.5.0/24");
    stop(shutdown, task).await;

    // A new controller manager learns the assignments from the Nodes.
    create(&nodes, "n4", None).await;
    nodes
        .delete("n1", &DeleteParams::default())
        .await
        .expect("delete n1");
    let (shutdown, task) = start(client.clone(), "ipam-b");
    assert_eq!(
        cidr_of(&nodes, "n4").await,
        "10.77.1.0/24",
        "n1's freed subnet is reused"
    );
    create(&nodes, "n5", None).await;
    assert_eq!(cidr_of(&nodes, "n5").await, "10.77.4.0/24");
    stop(shutdown, task).await;
    server.shutdown().await;
}
