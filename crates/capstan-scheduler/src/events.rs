//! Events the scheduler records (Scheduled, FailedScheduling, Preempted), posted by one task
//! from a bounded channel; when the API cannot keep up, events are dropped, as upstream's
//! broadcaster drops them, rather than slowing scheduling down.

use futures::StreamExt;
use k8s_openapi::api::core::v1::Event;
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const QUEUE: usize = 1000;
const IN_FLIGHT: usize = 8;

/// Which pod an event is about.
#[derive(Clone, Debug)]
pub struct Subject {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

struct Record {
    subject: Subject,
    warning: bool,
    reason: &'static str,
    message: String,
}

/// A cheap handle to queue events.
#[derive(Clone)]
pub struct EventRecorder {
    tx: mpsc::Sender<Record>,
}

static SEQ: AtomicU64 = AtomicU64::new(0);

impl EventRecorder {
    /// Starts the posting task; it ends when `stop` fires or every handle is dropped.
    pub fn start(
        client: Client,
        component: String,
        stop: CancellationToken,
    ) -> (EventRecorder, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel::<Record>(QUEUE);
        let task = tokio::spawn(async move {
            let stream = tokio_stream_from(rx);
            let posts = stream
                .map(|r| post(client.clone(), component.clone(), r))
                .buffer_unordered(IN_FLIGHT)
                .for_each(|_| async {});
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = posts => {}
            }
        });
        (EventRecorder { tx }, task)
    }

    pub fn normal(&self, subject: Subject, reason: &'static str, message: String) {
        self.record(subject, false, reason, message);
    }

    pub fn warning(&self, subject: Subject, reason: &'static str, message: String) {
        self.record(subject, true, reason, message);
    }

    fn record(&self, subject: Subject, warning: bool, reason: &'static str, message: String) {
        if self
            .tx
            .try_send(Record {
                subject,
                warning,
                reason,
                message,
            })
            .is_err()
        {
            tracing::debug!(reason, "event queue full: dropping event");
        }
    }
}

fn tokio_stream_from(mut rx: mpsc::Receiver<Record>) -> impl futures::Stream<Item = Record> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

async fn post(client: Client, component: String, r: Record) {
    let now = jiff::Timestamp::now();
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let name = format!(
        "{}.{:x}{:04x}",
        r.subject.name,
        now.as_nanosecond(),
        seq & 0xffff
    );
    let ev = json!({
        "metadata": {"name": name, "namespace": r.subject.namespace},
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", "namespace": r.subject.namespace,
                           "name": r.subject.name, "uid": r.subject.uid},
        "reason": r.reason,
        "message": r.message,
        "type": if r.warning { "Warning" } else { "Normal" },
        "source": {"component": component},
        "reportingComponent": component,
        "firstTimestamp": now.to_string(),
        "lastTimestamp": now.to_string(),
        "count": 1
    });
    let ev: Event = match serde_json::from_value(ev) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %e, "building an event");
            return;
        }
    };
    let api: Api<Event> = Api::namespaced(client, &r.subject.namespace);
    if let Err(e) = api.create(&PostParams::default(), &ev).await {
        tracing::debug!(error = %e, "posting an event");
    }
}
