//! Two API servers on one store (each with its own watch cache, allocator and data dir), the
//! in-process model of an HA control plane: Service allocations never collide, one CA serves
//! both, and the `kubernetes` Endpoints list every live server.

use capstan_apiserver::testing::TestServer;
use capstan_store::{MemoryStore, Store};
use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, PostParams};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn node_port_service(name: &str) -> Service {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {"type": "NodePort", "selector": {"app": name}, "ports": [{"port": 80}]},
    }))
    .unwrap()
}

async fn reservations(store: &dyn Store) -> Vec<String> {
    store
        .list(
            capstan_apiserver::allocator::ALLOCATIONS_PREFIX,
            None,
            0,
            None,
        )
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|kv| kv.key)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_service_creates_on_two_servers_get_distinct_addresses_and_ports() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let a = TestServer::start(store.clone()).await;
    let b = TestServer::start(store.clone()).await;
    let apis = [
        Api::<Service>::namespaced(a.client().await, "default"),
        Api::<Service>::namespaced(b.client().await, "default"),
    ];
    let started = Instant::now();
    let creates = (0..200).map(|i| {
        let api = apis[i % 2].clone();
        async move {
            api.create(&PostParams::default(), &node_port_service(&format!("s{i}")))
                .await
                .unwrap()
        }
    });
    let created = futures::future::join_all(creates).await;
    eprintln!(
        "200 concurrent Service creates on two servers: {:?}",
        started.elapsed()
    );
    let mut ips = HashSet::new();
    let mut ports = HashSet::new();
    for s in &created {
        let spec = s.spec.as_ref().unwrap();
        assert!(
            ips.insert(spec.cluster_ip.clone().unwrap()),
            "duplicate ClusterIP"
        );
        let p = spec.ports.as_ref().unwrap()[0].node_port.unwrap();
        assert!(ports.insert(p), "duplicate NodePort {p}");
    }
    // 200 ClusterIPs + 200 NodePorts + the kubernetes Service's ClusterIP.
    assert_eq!(reservations(store.as_ref()).await.len(), 401);

    // A requested address held through the other server is refused with upstream's wording.
    let taken = created[0]
        .spec
        .as_ref()
        .unwrap()
        .cluster_ip
        .clone()
        .unwrap();
    let mut dup = node_port_service("dup");
    dup.spec.as_mut().unwrap().cluster_ip = Some(taken.clone());
    let err = apis[1]
        .create(&PostParams::default(), &dup)
        .await
        .unwrap_err();
    let kube::Error::Api(status) = err else {
        panic!("expected an API error, got {err}")
    };
    assert_eq!(status.code, 422);
    assert!(
        status.message.contains(&format!(
            "failed to allocate IP {taken}: provided IP is already allocated"
        )),
        "{}",
        status.message
    );

    // Deleting releases, whichever server serves the delete.
    for i in 0..200 {
        apis[(i + 1) % 2]
            .delete(&format!("s{i}"), &DeleteParams::default())
            .await
            .unwrap();
    }
    assert_eq!(reservations(store.as_ref()).await.len(), 1);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starting_server_repairs_leaked_and_missing_reservations() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let a = TestServer::start(store.clone()).await;
    let api = Api::<Service>::namespaced(a.client().await, "default");
    let svc = api
        .create(&PostParams::default(), &node_port_service("web"))
        .await
        .unwrap();
    let ip = svc.spec.as_ref().unwrap().cluster_ip.clone().unwrap();
    a.shutdown().await;
    // A reservation lost (e.g. deleted by hand) and a leaked one from a crashed create.
    let lost = format!("/capstan/allocations/serviceips/{ip}");
    store.delete(&lost, None).await.unwrap();
    let leaked = "/capstan/allocations/serviceips/10.43.200.200";
    store
        .create(
            leaked,
            br#"{"owner":"default/gone","reservedAt":0}"#.to_vec(),
        )
        .await
        .unwrap();
    let b = TestServer::start(store.clone()).await;
    let keys = reservations(store.as_ref()).await;
    assert!(
        keys.contains(&lost),
        "missing reservation restored: {keys:?}"
    );
    assert!(!keys.iter().any(|k| k == leaked), "leak freed: {keys:?}");
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_with_separate_data_dirs_serve_certificates_of_one_ca() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let a = TestServer::start(store.clone()).await;
    let b = TestServer::start(store.clone()).await;
    // A's admin kubeconfig (its CA, its client certificate) against B.
    let cross = a.client_at(Some(b.url())).await;
    let svc = Api::<Service>::namespaced(cross, "default")
        .get("kubernetes")
        .await
        .unwrap();
    assert_eq!(svc.spec.unwrap().cluster_ip.as_deref(), Some("10.43.0.1"));
    let ca = |s: &TestServer| std::fs::read_to_string(s.data_dir().join("tls/ca.crt")).unwrap();
    assert_eq!(ca(&a), ca(&b));
    a.shutdown().await;
    b.shutdown().await;
}

fn endpoint_ports(ep: &Endpoints) -> Vec<i32> {
    let mut out: Vec<i32> = ep
        .subsets
        .iter()
        .flatten()
        .flat_map(|s| s.ports.iter().flatten().map(|p| p.port))
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_endpoints_list_every_live_server() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let a = TestServer::start(store.clone()).await;
    let b = TestServer::start(store.clone()).await;
    let (pa, pb) = (
        i32::from(a.running.addr.port()),
        i32::from(b.running.addr.port()),
    );
    let eps = Api::<Endpoints>::namespaced(a.client().await, "default");
    let mut both = vec![pa, pb];
    both.sort();
    assert_eq!(endpoint_ports(&eps.get("kubernetes").await.unwrap()), both);
    // A graceful stop takes the server out at once.
    b.shutdown().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ports = endpoint_ports(&eps.get("kubernetes").await.unwrap());
        if ports == vec![pa] {
            break;
        }
        assert!(Instant::now() < deadline, "endpoints still {ports:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A server that died without cleaning up is listed until its lease expires.
    let stale = format!(
        "{}127.0.0.9:443",
        capstan_apiserver::bootstrap::MASTER_LEASES_PREFIX
    );
    let ttl = capstan_apiserver::bootstrap::MASTER_LEASE_TTL;
    let renewed = jiff::Timestamp::now().as_millisecond() - ttl.as_millis() as i64 + 8000;
    store
        .create(
            &stale,
            format!(r#"{{"ip":"127.0.0.9","port":443,"renewTime":{renewed}}}"#).into_bytes(),
        )
        .await
        .unwrap();
    let interval = capstan_apiserver::bootstrap::ENDPOINT_RECONCILE_INTERVAL;
    let deadline = Instant::now() + interval + Duration::from_secs(2);
    while !endpoint_ports(&eps.get("kubernetes").await.unwrap()).contains(&443) {
        assert!(Instant::now() < deadline, "live lease not listed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + interval + Duration::from_secs(10);
    loop {
        let ports = endpoint_ports(&eps.get("kubernetes").await.unwrap());
        if store.get(&stale).await.unwrap().is_none() && ports == vec![pa] {
            break;
        }
        assert!(Instant::now() < deadline, "expired lease kept: {ports:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The service proxy reads the same servers from the `kubernetes` EndpointSlice.
    let slices = Api::<EndpointSlice>::namespaced(a.client().await, "default");
    let slice = slices.get("kubernetes").await.unwrap();
    let addresses: Vec<&str> = slice
        .endpoints
        .iter()
        .flat_map(|e| e.addresses.iter().map(String::as_str))
        .collect();
    assert_eq!(addresses, ["127.0.0.1"]);
    let ports: Vec<Option<i32>> = slice.ports.iter().flatten().map(|p| p.port).collect();
    assert_eq!(ports, [Some(pa)]);
    assert_eq!(
        slice.metadata.labels.unwrap()["kubernetes.io/service-name"],
        "kubernetes"
    );
    a.shutdown().await;
}
