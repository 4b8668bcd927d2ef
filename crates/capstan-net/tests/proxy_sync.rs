//! The sync loop against an in-process API server and the real nft: the table follows Service
//! and EndpointSlice changes, bursts coalesce, and stopping the proxy leaves the rules in place.

mod proxy_common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use capstan_apiserver::testing::TestServer;
use capstan_net::proxy::{NftApply, NftBinary, ProxyError, ProxyOptions};
use capstan_store::MemoryStore;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::PostParams;
use proxy_common::*;
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// The real nft, counting applies.
struct Counting {
    inner: NftBinary,
    applies: AtomicUsize,
}

#[async_trait::async_trait]
impl NftApply for Counting {
    async fn apply(&self, script: &str) -> Result<(), ProxyError> {
        self.applies.fetch_add(1, Ordering::SeqCst);
        self.inner.apply(script).await
    }
}

async fn wait_for(table: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let listed = nft_list(table);
        if listed.contains(what) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "table never had {what:?}:\n{listed}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn slice_json(ip: &str) -> EndpointSlice {
    serde_json::from_value(json!({
        "metadata": {"name": "web-1", "namespace": "psync", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [ip], "nodeName": "n1", "conditions": {"ready": true}}]
    }))
    .expect("slice")
}

#[tokio::test]
async fn the_table_follows_the_api_and_survives_the_proxy() {
    let server = TestServer::start(Arc::new(MemoryStore::new())).await;
    let client = server.client().await;
    let (_, tag) = unique();
    let table = format!("cpxs{tag}");
    let _guard = TableGuard(table.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "psync"}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("namespace");
    let services: Api<Service> = Api::namespaced(client.clone(), "psync");
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "web"}, "spec": {"ports": [{"port": 80, "targetPort": 8080}], "selector": {"app": "web"}}
    }))
    .unwrap();
    let svc = services
        .create(&PostParams::default(), &svc)
        .await
        .expect("service");
    let cluster_ip = svc
        .spec
        .and_then(|s| s.cluster_ip)
        .expect("allocated ClusterIP");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "psync");
    slices
        .create(&PostParams::default(), &slice_json("10.42.0.2"))
        .await
        .expect("slice");

    let nft = Arc::new(Counting {
        inner: NftBinary::default(),
        applies: AtomicUsize::new(0),
    });
    let mut options = ProxyOptions::new(&table, "n1");
    options.pod_cidrs = vec!["10.42.0.0/24".into()];
    let stop = CancellationToken::new();
    let proxy = tokio::spawn(capstan_net::proxy::sync::run_with(
        client.clone(),
        options,
        nft.clone(),
        stop.clone(),
    ));
    wait_for(
        &table,
        &format!("{cluster_ip} . tcp . 80 : goto cip-psync/web/tcp/p80"),
    )
    .await;
    wait_for(&table, "dnat ip to 10.42.0.2:8080").await;

    // A burst of endpoint changes lands in a few syncs, ending with the last state.
    let before = nft.applies.load(Ordering::SeqCst);
    for i in 0..20 {
        let mut s = slices.get("web-1").await.expect("get slice");
        s.endpoints = slice_json(&format!("10.42.0.{}", 10 + i)).endpoints;
        slices
            .replace("web-1", &PostParams::default(), &s)
            .await
            .expect("replace slice");
    }
    wait_for(&table, "dnat ip to 10.42.0.29:8080").await;
    let burst = nft.applies.load(Ordering::SeqCst) - before;
    assert!((1..20).contains(&burst), "{burst} applies for 20 changes");

    // Deleting the slice: the ClusterIP now rejects.
    slices
        .delete("web-1", &Default::default())
        .await
        .expect("delete slice");
    wait_for(
        &table,
        &format!("{cluster_ip} . tcp . 80 : goto reject-chain"),
    )
    .await;

    // A stopped proxy leaves its rules: the next agent replaces them when ready.
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), proxy)
        .await
        .expect("proxy stops")
        .expect("proxy task");
    assert!(nft_list(&table).contains("reject-chain"));
    server.shutdown().await;
}
