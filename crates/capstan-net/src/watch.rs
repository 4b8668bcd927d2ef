//! The watch-to-cache loop the node's network loops (service proxy, host-gw) share.

use std::sync::Arc;

use futures::StreamExt;
use kube::Api;
use kube::runtime::reflector::store::Writer;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Keeps the store behind `writer` filled from a watch of `api`, signalling `changed` on every
/// event, until `stop`; `what` names the watch in logs.
pub async fn reflect<K>(
    api: Api<K>,
    writer: Writer<K>,
    changed: Arc<Notify>,
    stop: CancellationToken,
    what: &'static str,
) where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer);
    let mut stream = std::pin::pin!(stream);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            ev = stream.next() => match ev {
                Some(Ok(_)) => changed.notify_one(),
                Some(Err(e)) => tracing::debug!(error = %e, "{what}"),
                None => return,
            },
        }
    }
}
