//! Watches on etcd: one etcd watch stream per store watch, forwarded by a task.
//!
//! The task always drains etcd's stream into a bounded queue, so a watcher that does not
//! read never holds up the gRPC connection other requests share. When the queue is full the
//! task drops the etcd stream and, once the reader caught up, opens a new one from the
//! last revision it received: etcd keeps the history, so a slow reader loses nothing
//! unless that history is compacted meanwhile (then it gets `Compacted`). A stream broken
//! by a failed member is resumed the same way on another member.

use super::error::{EtcdError, Kind};
use super::{Clients, EtcdStore, Failure, convert};
use crate::{Result, Store, StoreError, WatchEvent, WatchReceiver};
use etcd_client::{EventType, WatchOptions, WatchResponse, WatchStream};
use std::collections::VecDeque;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Events buffered in the channel to the reader.
const WATCH_CHANNEL: usize = 1024;
/// Events received from etcd but not yet taken by the reader before the stream is paused.
const QUEUE_LIMIT: usize = 4096;
/// How long a broken stream keeps trying to resume before the watch fails.
const RESUME_BUDGET: Duration = Duration::from_secs(30);

/// Opens the etcd watch (so a refusal reaches the caller) and starts the forwarding task.
pub(super) async fn start(store: EtcdStore, prefix: String, after: i64) -> Result<WatchReceiver> {
    let stream = match open(&store, &prefix, after).await {
        Ok(stream) => stream,
        Err(Opened::Compacted(compacted)) => {
            return Err(StoreError::Compacted {
                requested: after,
                compacted,
            });
        }
        Err(Opened::Failed(err)) => return Err(err),
    };
    let (tx, rx) = mpsc::channel(WATCH_CHANNEL);
    let forwarder = Forwarder {
        store,
        prefix,
        last: after,
        queue: VecDeque::new(),
        tx,
    };
    tokio::spawn(forwarder.run(stream));
    Ok(rx)
}

enum Opened {
    Compacted(i64),
    Failed(StoreError),
}

/// Creates an etcd watch for events after `after` and waits for etcd to confirm it.
async fn open(store: &EtcdStore, prefix: &str, after: i64) -> Result<WatchStream, Opened> {
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(after + 1)
        .with_prev_key();
    let created = store
        .call("watch", |c: Clients| {
            let options = options.clone();
            let mut client = c.watch;
            async move {
                let mut stream = client.watch(prefix, Some(options)).await?;
                let first = stream.message().await?;
                Ok((stream, first))
            }
        })
        .await;
    match created {
        Ok((stream, Some(resp))) if resp.created() && !resp.canceled() => Ok(stream),
        Ok((_, Some(resp))) if resp.compact_revision() > 0 => {
            Err(Opened::Compacted(resp.compact_revision()))
        }
        Ok((_, Some(resp))) => Err(Opened::Failed(
            EtcdError::WatchCanceled(resp.cancel_reason().to_string()).into(),
        )),
        Ok((_, None)) => Err(Opened::Failed(
            EtcdError::Malformed {
                op: "watch",
                what: "a created response",
            }
            .into(),
        )),
        Err(Failure {
            kind: Kind::Compacted,
            ..
        }) => Err(Opened::Compacted(
            store.compacted_revision().await.unwrap_or(after + 1),
        )),
        Err(f) => Err(Opened::Failed(f.into())),
    }
}

struct Forwarder {
    store: EtcdStore,
    prefix: String,
    /// Revision of the last event received from etcd (the resume point).
    last: i64,
    /// Received events the reader has not taken yet.
    queue: VecDeque<WatchEvent>,
    tx: mpsc::Sender<Result<WatchEvent>>,
}

/// Why the forwarding stopped reading the current etcd stream.
enum Interrupt {
    /// The reader is gone or the watch ended with a final error.
    Done,
    /// The queue is full: resume once the reader has drained it.
    Paused,
    /// The stream broke: resume at once, on any member.
    Broken(String),
}

impl Forwarder {
    async fn run(mut self, first: WatchStream) {
        let mut stream = first;
        loop {
            match self.forward(stream).await {
                Interrupt::Done => return,
                Interrupt::Paused => {
                    if !self.drain().await {
                        return;
                    }
                    tracing::debug!(prefix = %self.prefix, last = self.last, "resuming paused etcd watch");
                }
                Interrupt::Broken(reason) => {
                    tracing::info!(prefix = %self.prefix, last = self.last, reason, "etcd watch stream broke; resuming");
                }
            }
            stream = match self.resume().await {
                Some(s) => s,
                None => return,
            };
        }
    }

    /// Reads `stream` while handing queued events to the reader.
    async fn forward(&mut self, mut stream: WatchStream) -> Interrupt {
        loop {
            if self.queue.len() >= QUEUE_LIMIT {
                return Interrupt::Paused;
            }
            let message = tokio::select! {
                biased;
                _ = self.tx.closed() => return Interrupt::Done,
                permit = self.tx.reserve(), if !self.queue.is_empty() => {
                    let Ok(permit) = permit else { return Interrupt::Done };
                    if let Some(event) = self.queue.pop_front() {
                        permit.send(Ok(event));
                    }
                    continue;
                }
                message = stream.message() => message,
            };
            match message {
                Ok(Some(resp)) => {
                    if let Err(err) = self.accept(&resp) {
                        self.finish(err).await;
                        return Interrupt::Done;
                    }
                }
                Ok(None) => return Interrupt::Broken("stream ended".into()),
                Err(err) => return Interrupt::Broken(err.to_string()),
            }
        }
    }

    /// Queues the events of one response; an error ends the watch.
    fn accept(&mut self, resp: &WatchResponse) -> Result<()> {
        if resp.canceled() {
            if resp.compact_revision() > 0 {
                return Err(StoreError::Compacted {
                    requested: self.last + 1,
                    compacted: resp.compact_revision(),
                });
            }
            return Err(EtcdError::WatchCanceled(resp.cancel_reason().to_string()).into());
        }
        for event in resp.events() {
            let event = translate(event)?;
            // A resumed stream may repeat what the broken one already delivered.
            if event.revision() <= self.last {
                continue;
            }
            self.last = event.revision();
            self.queue.push_back(event);
        }
        Ok(())
    }

    /// Hands the whole queue to the reader; false when the reader went away.
    async fn drain(&mut self) -> bool {
        while let Some(event) = self.queue.pop_front() {
            if self.tx.send(Ok(event)).await.is_err() {
                return false;
            }
        }
        true
    }

    /// Opens a new etcd stream after `last`, retrying for a bounded time.
    async fn resume(&mut self) -> Option<WatchStream> {
        let deadline = Instant::now() + RESUME_BUDGET;
        loop {
            let attempt = tokio::select! {
                _ = self.tx.closed() => return None,
                attempt = open(&self.store, &self.prefix, self.last) => attempt,
            };
            match attempt {
                Ok(stream) => return Some(stream),
                Err(Opened::Compacted(compacted)) => {
                    let err = StoreError::Compacted {
                        requested: self.last + 1,
                        compacted,
                    };
                    self.finish(err).await;
                    return None;
                }
                Err(Opened::Failed(err)) if Instant::now() >= deadline => {
                    self.finish(err).await;
                    return None;
                }
                Err(Opened::Failed(err)) => {
                    tracing::debug!(prefix = %self.prefix, error = %err, "etcd watch not resumed yet");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Delivers what was received before the failure, then the error; the channel closes
    /// when the task returns.
    async fn finish(&mut self, err: StoreError) {
        if self.drain().await {
            let _ = self.tx.send(Err(err)).await;
        }
    }
}

/// One etcd event as a store event; an update or delete whose previous value etcd could
/// not attach (compacted meanwhile) cannot be told correctly, so it ends the watch.
fn translate(event: &etcd_client::Event) -> Result<WatchEvent> {
    let kv = event.kv().ok_or(EtcdError::Malformed {
        op: "watch",
        what: "an event's key",
    })?;
    let revision = kv.mod_revision();
    let prev = event.prev_kv().map(convert).transpose()?;
    let missing_prev = || StoreError::Compacted {
        requested: revision,
        compacted: revision,
    };
    match event.event_type() {
        EventType::Put => {
            if prev.is_none() && kv.version() > 1 {
                return Err(missing_prev());
            }
            Ok(WatchEvent::Put {
                kv: convert(kv)?,
                prev,
            })
        }
        EventType::Delete => Ok(WatchEvent::Delete {
            prev: prev.ok_or_else(missing_prev)?,
            revision,
        }),
    }
}
