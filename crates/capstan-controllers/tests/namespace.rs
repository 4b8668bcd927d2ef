//! The controller manager against a real in-process API server: it takes the
//! `kube-system/kube-controller-manager` Lease, and deleting a namespace deletes its content
//! and then the namespace itself through the finalize subresource.

use capstan_apiserver::testing::TestServer;
use capstan_store::{MemoryStore, Store};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use kube::api::{Api, DeleteParams, PostParams};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_namespace_deletes_its_content_then_the_namespace() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let server = TestServer::start(store.clone()).await;
    let client = server.client().await;
    let shutdown = CancellationToken::new();
    let manager = tokio::spawn(capstan_controllers::run_controller_manager(
        client.clone(),
        "test-host_1".into(),
        shutdown.clone(),
    ));

    let namespaces = Api::<Namespace>::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &obj(serde_json::json!({"metadata": {"name": "doomed"}})),
        )
        .await
        .unwrap();
    let pp = PostParams::default();
    let cms = Api::<ConfigMap>::namespaced(client.clone(), "doomed");
    for i in 0..5 {
        cms.create(
            &pp,
            &obj(serde_json::json!({"metadata": {"name": format!("cm{i}")}, "data": {"k": "v"}})),
        )
        .await
        .unwrap();
    }
    Api::<Secret>::namespaced(client.clone(), "doomed")
        .create(
            &pp,
            &obj(serde_json::json!({"metadata": {"name": "s"}, "stringData": {"k": "v"}})),
        )
        .await
        .unwrap();
    Api::<Service>::namespaced(client.clone(), "doomed")
        .create(&pp, &obj(serde_json::json!({"metadata": {"name": "web"}, "spec": {"type": "NodePort", "ports": [{"port": 80}]}})))
        .await
        .unwrap();

    let started = Instant::now();
    namespaces
        .delete("doomed", &DeleteParams::default())
        .await
        .unwrap();
    let deadline = started + Duration::from_secs(30);
    while namespaces.get_opt("doomed").await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "namespace not deleted in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "namespace with 7 objects deleted in {:?}",
        started.elapsed()
    );
    assert!(
        cms.list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    // The Service's reservations went with it: only the kubernetes Service's address is left.
    let reservations = store
        .list(
            capstan_apiserver::allocator::ALLOCATIONS_PREFIX,
            None,
            0,
            None,
        )
        .await
        .unwrap();
    assert_eq!(reservations.items.len(), 1, "{:?}", reservations.items);

    let lease = Api::<Lease>::namespaced(client.clone(), "kube-system")
        .get(capstan_controllers::LEASE_NAME)
        .await
        .unwrap();
    assert_eq!(
        lease.spec.unwrap().holder_identity.as_deref(),
        Some("test-host_1")
    );

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(15), manager)
        .await
        .expect("controller manager did not stop")
        .unwrap()
        .unwrap();
    // Released on the way out.
    let lease = Api::<Lease>::namespaced(client.clone(), "kube-system")
        .get(capstan_controllers::LEASE_NAME)
        .await
        .unwrap();
    assert_eq!(lease.spec.unwrap().holder_identity.as_deref(), Some(""));
    server.shutdown().await;
}
