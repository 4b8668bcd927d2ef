//! In-process watch fan-out shared by the embedded backends.
//!
//! Writers publish each event into one broadcast ring while holding their write lock, so the
//! ring is in revision order and publishing never blocks. Every watch is a task that first
//! replays history page by page, then follows the ring, skipping what replay already sent.
//! The task subscribes to the ring *before* reading history, so nothing falls in between.

use crate::{Result, StoreError, WatchEvent, WatchReceiver};
use std::future::Future;
use std::sync::Arc;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::mpsc;

/// Live events a watcher may fall behind by before it is cut off with `Compacted`.
const LIVE_BUFFER: usize = 4096;
/// Events buffered per watch channel.
const WATCH_CHANNEL: usize = 1024;
/// Events read from history per page during replay.
pub(crate) const HISTORY_PAGE: usize = 512;

/// The broadcast ring of live events.
pub(crate) struct Fanout {
    tx: broadcast::Sender<Arc<WatchEvent>>,
}

pub(crate) type LiveEvents = broadcast::Receiver<Arc<WatchEvent>>;

impl Fanout {
    pub(crate) fn new() -> Self {
        let (tx, _) = broadcast::channel(LIVE_BUFFER);
        Fanout { tx }
    }

    pub(crate) fn subscribe(&self) -> LiveEvents {
        self.tx.subscribe()
    }

    /// Whether anyone listens; lets writers skip building events (and reading prev values).
    pub(crate) fn has_watchers(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    /// Publishes one event; call with the write lock held so the ring stays in revision order.
    pub(crate) fn publish(&self, event: impl FnOnce() -> WatchEvent) {
        if self.has_watchers() {
            // An error only means every receiver went away meanwhile.
            let _ = self.tx.send(Arc::new(event()));
        }
    }
}

/// Starts a watch task. `first` is the first history page (already read, so errors such
/// as `Compacted` reach the caller of `watch`); `history(after)` reads the next page of
/// events with revision > `after` under `prefix`, empty when replay is complete.
pub(crate) fn spawn_watch<H, Fut>(
    prefix: String,
    after: i64,
    first: Vec<WatchEvent>,
    live: LiveEvents,
    history: H,
) -> WatchReceiver
where
    H: FnMut(i64) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Vec<WatchEvent>>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(WATCH_CHANNEL);
    tokio::spawn(async move {
        let Some(last) = replay(&tx, after, first, history).await else {
            return;
        };
        follow(&tx, &prefix, last, live).await;
    });
    rx
}

/// Sends history until a page comes back empty; returns the last revision sent, or None
/// when the watch ended (receiver gone or history failed).
async fn replay<H, Fut>(
    tx: &mpsc::Sender<Result<WatchEvent>>,
    mut last: i64,
    first: Vec<WatchEvent>,
    mut history: H,
) -> Option<i64>
where
    H: FnMut(i64) -> Fut,
    Fut: Future<Output = Result<Vec<WatchEvent>>>,
{
    let mut page = first;
    while !page.is_empty() {
        for event in page {
            last = event.revision();
            tx.send(Ok(event)).await.ok()?;
        }
        page = match history(last).await {
            Ok(page) => page,
            Err(err) => {
                let _ = tx.send(Err(err)).await;
                return None;
            }
        };
    }
    Some(last)
}

/// Forwards live events under `prefix` newer than `last` until the receiver goes away,
/// the store closes, or the watcher lags behind the ring.
async fn follow(
    tx: &mpsc::Sender<Result<WatchEvent>>,
    prefix: &str,
    mut last: i64,
    mut live: LiveEvents,
) {
    loop {
        let received = tokio::select! {
            _ = tx.closed() => return,
            received = live.recv() => received,
        };
        match received {
            Ok(event) => {
                if event.revision() <= last || !event.key().starts_with(prefix) {
                    continue;
                }
                last = event.revision();
                if tx.send(Ok(WatchEvent::clone(&event))).await.is_err() {
                    return;
                }
            }
            Err(RecvError::Lagged(skipped)) => {
                tracing::debug!(prefix, last, skipped, "watcher fell behind; closing it");
                let skipped = i64::try_from(skipped).unwrap_or(i64::MAX);
                let err = StoreError::Compacted {
                    requested: last + 1,
                    compacted: last.saturating_add(skipped).saturating_add(1),
                };
                let _ = tx.send(Err(err)).await;
                return;
            }
            Err(RecvError::Closed) => return,
        }
    }
}
