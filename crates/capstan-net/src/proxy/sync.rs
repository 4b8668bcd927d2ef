//! The sync loop: Service and EndpointSlice caches fed by watches; on a change (rate-limited,
//! so bursts coalesce) the table is rendered again and applied only when the text differs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::reflector::{self, Store};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::ProxyOptions;
use super::model::build;
use super::nft::NftApply;
use super::render::{RenderOptions, render};
use crate::watch::reflect;

/// Pause before applying again after nft failed.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// The current script for the caches' content.
pub fn current_script(
    services: &Store<Service>,
    slices: &Store<EndpointSlice>,
    options: &ProxyOptions,
) -> String {
    let ports = build(&services.state(), &slices.state(), &options.node_name);
    render(
        &ports,
        &RenderOptions {
            table: options.table.clone(),
            pod_cidrs: options.pod_cidrs.clone(),
        },
    )
}

/// Runs the proxy with `nft` applying the scripts; returns when `stop` is cancelled. The table
/// is left in place then: a restarted agent replaces it only once its caches are full.
pub async fn run_with(
    client: kube::Client,
    options: ProxyOptions,
    nft: Arc<dyn NftApply>,
    stop: CancellationToken,
) {
    let changed = Arc::new(Notify::new());
    let (services, svc_writer) = reflector::store::<Service>();
    let (slices, slice_writer) = reflector::store::<EndpointSlice>();
    let watches = [
        tokio::spawn(reflect(
            Api::<Service>::all(client.clone()),
            svc_writer,
            changed.clone(),
            stop.clone(),
            "service proxy watch",
        )),
        tokio::spawn(reflect(
            Api::<EndpointSlice>::all(client),
            slice_writer,
            changed.clone(),
            stop.clone(),
            "service proxy watch",
        )),
    ];
    // Never apply from a partial cache: that would drop the previous agent's good rules.
    let synced = tokio::select! {
        _ = stop.cancelled() => false,
        r = async { services.wait_until_ready().await.and(slices.wait_until_ready().await) } => r.is_ok(),
    };
    if synced {
        sync_loop(&services, &slices, &options, &*nft, &changed, &stop).await;
    }
    stop.cancel();
    for w in watches {
        let _ = w.await;
    }
}

async fn sync_loop(
    services: &Store<Service>,
    slices: &Store<EndpointSlice>,
    options: &ProxyOptions,
    nft: &dyn NftApply,
    changed: &Notify,
    stop: &CancellationToken,
) {
    let mut applied: Option<String> = None;
    loop {
        let started = Instant::now();
        let script = current_script(services, slices, options);
        let mut failed = false;
        if applied.as_deref() != Some(script.as_str()) {
            match nft.apply(&script).await {
                Ok(()) => {
                    tracing::debug!(table = %options.table, elapsed = ?started.elapsed(), bytes = script.len(), "service rules applied");
                    applied = Some(script);
                }
                Err(e) => {
                    tracing::warn!(table = %options.table, error = %e, "applying service rules");
                    failed = true;
                }
            }
        }
        // At most one sync per interval: a burst of changes lands in the next one.
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(options.min_sync_interval) => {}
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = changed.notified() => {}
            _ = tokio::time::sleep(RETRY_INTERVAL), if failed => {}
        }
    }
}
