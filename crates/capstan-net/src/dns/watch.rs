//! Keeps the zone current: one watch per kind feeds a reflector store, and every change wakes
//! one rebuild task that swaps in a new zone snapshot (changes arriving meanwhile coalesce).

use std::fmt::Debug;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::zone::Zone;

/// Runs the three watches and the rebuild loop until `stop`.
pub async fn keep_zone(
    client: Client,
    domain: String,
    ttl: u32,
    zone: Arc<RwLock<Arc<Zone>>>,
    stop: CancellationToken,
) {
    let changed = Arc::new(Notify::new());
    let (services, services_w) = reflector::store::<Service>();
    let (slices, slices_w) = reflector::store::<EndpointSlice>();
    let (pods, pods_w) = reflector::store::<Pod>();
    let tasks = [
        tokio::spawn(feed(
            Api::all(client.clone()),
            services_w,
            changed.clone(),
            stop.clone(),
        )),
        tokio::spawn(feed(
            Api::all(client.clone()),
            slices_w,
            changed.clone(),
            stop.clone(),
        )),
        tokio::spawn(feed(
            Api::all(client),
            pods_w,
            changed.clone(),
            stop.clone(),
        )),
    ];
    let mut serial: u32 = 1;
    let mut next_allowed = Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = changed.notified() => {}
        }
        // Under a stream of changes (thousands of pods starting) rebuilding after every one
        // would keep a core busy: the next rebuild waits out a gap proportional to the last
        // one's cost, and the changes arriving meanwhile coalesce into it.
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep_until(next_allowed.into()) => {}
        }
        serial = serial.wrapping_add(1);
        let started = Instant::now();
        let built = rebuild(&domain, ttl, serial, &services, &slices, &pods);
        next_allowed = Instant::now() + rebuild_gap(started.elapsed());
        match built {
            Ok(z) => {
                tracing::debug!(names = z.len(), serial, "cluster DNS zone rebuilt");
                let z = Arc::new(z);
                match zone.write() {
                    Ok(mut w) => *w = z,
                    Err(poisoned) => *poisoned.into_inner() = z,
                }
            }
            Err(e) => tracing::warn!(error = %e, "building the cluster DNS zone"),
        }
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// Least pause between two rebuilds, so a burst of changes costs one rebuild.
const MIN_REBUILD_GAP: Duration = Duration::from_millis(50);
/// Most pause between two rebuilds: the staleness bound for a very large zone.
const MAX_REBUILD_GAP: Duration = Duration::from_secs(2);

/// The pause after a rebuild that took `cost`: rebuilding stays under a ninth of a core.
fn rebuild_gap(cost: Duration) -> Duration {
    (cost * 8).clamp(MIN_REBUILD_GAP, MAX_REBUILD_GAP)
}

fn rebuild(
    domain: &str,
    ttl: u32,
    serial: u32,
    services: &Store<Service>,
    slices: &Store<EndpointSlice>,
    pods: &Store<Pod>,
) -> Result<Zone, hickory_server::proto::ProtoError> {
    Zone::build(
        domain,
        ttl,
        serial,
        &services.state(),
        &slices.state(),
        &pods.state(),
    )
}

/// Applies `api`'s watch events to `writer` and signals `changed` after each.
async fn feed<K>(
    api: Api<K>,
    mut writer: reflector::store::Writer<K>,
    changed: Arc<Notify>,
    stop: CancellationToken,
) where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            e = events.next() => e,
        };
        match event {
            Some(Ok(e)) => {
                writer.apply_watcher_event(&e);
                // The store swaps in a relist only at InitDone; partial pages need no rebuild.
                if !matches!(e, watcher::Event::Init | watcher::Event::InitApply(_)) {
                    changed.notify_one();
                }
            }
            Some(Err(e)) => tracing::debug!(error = %e, "cluster DNS watch"),
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebuild_gap_grows_with_the_cost_within_bounds() {
        assert_eq!(rebuild_gap(Duration::ZERO), MIN_REBUILD_GAP);
        assert_eq!(
            rebuild_gap(Duration::from_millis(100)),
            Duration::from_millis(800)
        );
        assert_eq!(rebuild_gap(Duration::from_secs(5)), MAX_REBUILD_GAP);
    }
}
