//! Objects and loops the API server owns: the initial namespaces, the `kubernetes` Service and
//! its Endpoints (kept by the "lease" endpoint reconciler so they list every live API server),
//! and periodic store compaction.

use crate::handlers;
use crate::server::ApiServer;
use capstan_api::ApiError;
use capstan_api::resources::find;
use capstan_store::StoreError;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How often the store's history is compacted, keeping one interval of history.
const COMPACTION_INTERVAL: Duration = Duration::from_secs(300);
/// Prefix of the API servers' master leases (upstream's `/registry/masterleases/`), kept
/// outside `/registry/` so they are never served as API resources.
pub const MASTER_LEASES_PREFIX: &str = "/capstan/masterleases/";
/// A master lease not renewed for this long is expired (upstream's 15 s).
pub const MASTER_LEASE_TTL: Duration = Duration::from_secs(15);
/// How often each server renews its lease and rewrites the Endpoints.
pub const ENDPOINT_RECONCILE_INTERVAL: Duration = Duration::from_secs(5);

async fn ensure(
    server: &ApiServer,
    plural: &str,
    ns: Option<&str>,
    obj: Value,
) -> Result<(), ApiError> {
    let info = find("", "v1", plural).expect("core resource served");
    let name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let key = info.store_key(ns, &name);
    if server
        .store
        .get(&key)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .is_some()
    {
        return Ok(());
    }
    match handlers::create_internal(server, info, obj).await {
        Ok(_) => Ok(()),
        Err(e) if e.reason == "AlreadyExists" => Ok(()),
        Err(e) => Err(e),
    }
}

/// Create what a fresh cluster has: four namespaces and the `kubernetes` Service, and list this
/// server in its Endpoints; returns the reconciler that keeps them current.
pub async fn ensure_initial_objects(
    server: &Arc<ApiServer>,
    addr: SocketAddr,
) -> Result<EndpointReconciler, ApiError> {
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        ensure(server, "namespaces", None, json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns}}})).await?;
    }
    crate::auth::rbac::bootstrap::ensure(server).await?;
    crate::admission::priority::ensure_builtin(server).await?;
    let ip = crate::allocator::first_service_ip(&server.config.service_cidr)
        .map_err(ApiError::internal)?;
    let svc = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {"type": "ClusterIP", "clusterIP": ip.to_string(), "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": addr.port()}], "sessionAffinity": "None"},
    });
    ensure(server, "services", Some("default"), svc).await?;
    let reconciler = EndpointReconciler::new(server.clone(), addr);
    reconciler
        .renew()
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    reconciler.reconcile().await?;
    Ok(reconciler)
}

/// Compact the store every interval to the revision seen one interval earlier.
pub async fn compaction_loop(server: Arc<ApiServer>, mut shutdown: watch::Receiver<bool>) {
    let mut previous: Option<i64> = None;
    let mut tick = tokio::time::interval(COMPACTION_INTERVAL);
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = tick.tick() => {
                if let Some(rev) = previous
                    && let Err(e) = server.store.compact(rev).await {
                        tracing::warn!(error = %e, rev, "compaction failed");
                    }
                previous = server.store.current_revision().await.ok();
            }
        }
    }
}

/// One API server's record: the address it serves on and when it last renewed.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
struct MasterLease {
    ip: String,
    port: u16,
    /// Unix milliseconds of the last renewal.
    renew_time: i64,
}

/// The `kubernetes` Endpoints as every live API server sees them: its own master lease renewed
/// periodically, and the Endpoints rewritten from all unexpired leases (upstream's "lease"
/// endpoint reconciler), so they list every server and never flip between them.
pub struct EndpointReconciler {
    server: Arc<ApiServer>,
    ip: String,
    port: u16,
    key: String,
}

fn endpoints_host(addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        addr.ip().to_string()
    }
}

impl EndpointReconciler {
    pub fn new(server: Arc<ApiServer>, addr: SocketAddr) -> Self {
        let ip = endpoints_host(addr);
        let key = format!("{MASTER_LEASES_PREFIX}{ip}:{}", addr.port());
        EndpointReconciler {
            server,
            ip,
            port: addr.port(),
            key,
        }
    }

    /// Write this server's lease with the current time.
    pub async fn renew(&self) -> Result<(), StoreError> {
        let lease = MasterLease {
            ip: self.ip.clone(),
            port: self.port,
            renew_time: jiff::Timestamp::now().as_millisecond(),
        };
        let value = serde_json::to_vec(&lease).unwrap_or_default();
        let store = &self.server.store;
        for _ in 0..5 {
            let r = match store.get(&self.key).await? {
                Some(kv) => {
                    store
                        .update(&self.key, value.clone(), kv.mod_revision)
                        .await
                }
                None => store.create(&self.key, value.clone()).await,
            };
            match r {
                Ok(_) => return Ok(()),
                Err(StoreError::Conflict { .. })
                | Err(StoreError::AlreadyExists(_))
                | Err(StoreError::NotFound(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Drop this server's lease (graceful shutdown) and rewrite the Endpoints without it.
    pub async fn remove(&self) -> Result<(), ApiError> {
        match self.server.store.delete(&self.key, None).await {
            Ok(_) | Err(StoreError::NotFound(_)) => {}
            Err(e) => return Err(ApiError::internal(e.to_string())),
        }
        self.reconcile().await
    }

    /// Unexpired leases as Endpoints subsets, one per port, addresses sorted; expired leases
    /// are deleted on the way.
    async fn live_subsets(&self) -> Result<Value, ApiError> {
        let store = &self.server.store;
        let internal = |e: StoreError| ApiError::internal(e.to_string());
        let page = store
            .list(MASTER_LEASES_PREFIX, None, 0, None)
            .await
            .map_err(internal)?;
        let now = jiff::Timestamp::now().as_millisecond();
        let ttl = MASTER_LEASE_TTL.as_millis() as i64;
        let mut by_port: BTreeMap<u16, BTreeSet<String>> = BTreeMap::new();
        for kv in page.items {
            match serde_json::from_slice::<MasterLease>(&kv.value) {
                Ok(l) if now - l.renew_time <= ttl => {
                    by_port.entry(l.port).or_default().insert(l.ip);
                }
                _ => match store.delete(&kv.key, Some(kv.mod_revision)).await {
                    Ok(_) | Err(StoreError::NotFound(_)) | Err(StoreError::Conflict { .. }) => {}
                    Err(e) => return Err(internal(e)),
                },
            }
        }
        let subsets: Vec<Value> = by_port
            .into_iter()
            .map(|(port, ips)| {
                let addresses: Vec<Value> = ips.into_iter().map(|ip| json!({"ip": ip})).collect();
                json!({"addresses": addresses, "ports": [{"name": "https", "port": port, "protocol": "TCP"}]})
            })
            .collect();
        Ok(Value::Array(subsets))
    }

    /// Rewrite `default/kubernetes` Endpoints and EndpointSlice from the live leases when they
    /// differ (the service proxy reads slices, older clients Endpoints).
    pub async fn reconcile(&self) -> Result<(), ApiError> {
        let subsets = self.live_subsets().await?;
        let endpoints = kubernetes_endpoints(subsets.clone());
        self.write_if_changed(find("", "v1", "endpoints"), endpoints, &["subsets"])
            .await?;
        let slice = kubernetes_slice(&subsets);
        self.write_if_changed(
            find("discovery.k8s.io", "v1", "endpointslices"),
            slice,
            &["endpoints", "ports"],
        )
        .await
    }

    /// Creates `desired` in default/kubernetes, or copies its `fields` over the stored object
    /// when they differ.
    async fn write_if_changed(
        &self,
        info: Option<&'static capstan_api::ResourceInfo>,
        desired: Value,
        fields: &[&str],
    ) -> Result<(), ApiError> {
        let info = info.expect("resource served");
        let key = info.store_key(Some("default"), "kubernetes");
        let store = &self.server.store;
        let internal = |e: StoreError| ApiError::internal(e.to_string());
        for _ in 0..5 {
            let Some(kv) = store.get(&key).await.map_err(internal)? else {
                match handlers::create_internal(&self.server, info, desired.clone()).await {
                    Err(e) if e.reason == "AlreadyExists" => continue,
                    other => return other.map(|_| ()),
                }
            };
            let mut current: Value = serde_json::from_slice(&kv.value)
                .map_err(|e| ApiError::internal(format!("stored {} is corrupt: {e}", info.kind)))?;
            if fields.iter().all(|f| current[*f] == desired[*f]) {
                return Ok(());
            }
            for f in fields {
                current[*f] = desired[*f].clone();
            }
            let bytes =
                serde_json::to_vec(&current).map_err(|e| ApiError::internal(e.to_string()))?;
            match store.update(&key, bytes, kv.mod_revision).await {
                Ok(_) => {
                    tracing::info!(kind = info.kind, "kubernetes endpoints updated");
                    return Ok(());
                }
                Err(StoreError::Conflict { .. }) | Err(StoreError::NotFound(_)) => continue,
                Err(e) => return Err(internal(e)),
            }
        }
        Err(ApiError::internal(
            "kubernetes endpoints kept changing during reconcile",
        ))
    }

    async fn pass(&self) {
        if let Err(e) = self.renew().await {
            tracing::warn!(error = %e, "renewing the API server's master lease");
        }
        if let Err(e) = self.reconcile().await {
            tracing::warn!(error = %e, "reconciling the kubernetes endpoints");
        }
    }

    /// Renew and reconcile every interval; on shutdown drop this server from the Endpoints.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(ENDPOINT_RECONCILE_INTERVAL);
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tick.tick() => self.pass().await,
            }
        }
        if let Err(e) = self.remove().await {
            tracing::warn!(error = %e, "removing this API server from the kubernetes endpoints");
        }
    }
}

fn kubernetes_endpoints(subsets: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": subsets,
    })
}

/// The `kubernetes` EndpointSlice: the servers of the first port (HA servers share one port).
fn kubernetes_slice(subsets: &Value) -> Value {
    let first = subsets.get(0).cloned().unwrap_or(Value::Null);
    let endpoints: Vec<Value> = first["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| json!({"addresses": [a["ip"]], "conditions": {"ready": true}}))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {
            "kubernetes.io/service-name": "kubernetes",
            "endpointslice.kubernetes.io/managed-by": "capstan-apiserver",
        }},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": first["ports"].as_array().cloned().unwrap_or_default(),
    })
}
