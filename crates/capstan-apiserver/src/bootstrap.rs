//! Objects and loops the API server owns: the initial namespaces, the `kubernetes` Service and
//! its Endpoints, periodic store compaction, and namespace finalization.

use crate::handlers;
use crate::server::ApiServer;
use capstan_api::ApiError;
use capstan_api::resources::find;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How often the store's history is compacted, keeping one interval of history.
const COMPACTION_INTERVAL: Duration = Duration::from_secs(300);
/// How often namespaces being deleted are checked for remaining content.
const NAMESPACE_SWEEP: Duration = Duration::from_millis(500);

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

/// Create what a fresh cluster has: four namespaces and the `kubernetes` Service.
pub async fn ensure_initial_objects(server: &ApiServer, addr: SocketAddr) -> Result<(), ApiError> {
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        ensure(server, "namespaces", None, json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns}}})).await?;
    }
    let ip = crate::allocator::first_service_ip(&server.config.service_cidr)
        .map_err(ApiError::internal)?;
    let svc = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {"type": "ClusterIP", "clusterIP": ip.to_string(), "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": addr.port()}], "sessionAffinity": "None"},
    });
    ensure(server, "services", Some("default"), svc).await?;
    let host = if addr.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        addr.ip().to_string()
    };
    let ep = json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": [{"addresses": [{"ip": host}], "ports": [{"name": "https", "port": addr.port(), "protocol": "TCP"}]}],
    });
    ensure(server, "endpoints", Some("default"), ep).await
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

/// Delete the content of namespaces marked for deletion, then the namespaces themselves
/// (the `kubernetes` finalizer's work).
pub async fn namespace_finalizer_loop(server: Arc<ApiServer>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(NAMESPACE_SWEEP);
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = tick.tick() => {
                if let Err(e) = handlers::sweep_terminating_namespaces(&server).await {
                    tracing::warn!(error = %e, "namespace cleanup failed");
                }
            }
        }
    }
}
