//! The audit log (`--audit-log-path`): one upstream `audit.k8s.io/v1` Event per request at
//! level Metadata, stage ResponseComplete, as JSON lines. Requests hand events to one writer
//! task through a bounded channel and never wait for it; events that do not fit are counted.

use super::UserInfo;
use crate::request::Target;
use crate::response::Body;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, SizeHint};
use serde_json::{Value, json};
use std::convert::Infallible;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};

/// Events queued for the writer before new ones are dropped.
const QUEUE: usize = 4096;

/// The sending side, held by the API server (and by response bodies still being sent).
#[derive(Clone, Debug)]
pub struct AuditLog {
    tx: mpsc::Sender<String>,
    dropped: Arc<AtomicU64>,
}

impl AuditLog {
    /// Opens (appending) `path` and starts the writer, which stops, flushed, on `shutdown`.
    pub async fn start(
        path: &Path,
        shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<(AuditLog, tokio::task::JoinHandle<()>)> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir).await?;
        }
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(writer(file, path.to_path_buf(), rx, shutdown));
        Ok((
            AuditLog {
                tx,
                dropped: Arc::new(AtomicU64::new(0)),
            },
            task,
        ))
    }

    /// Queues one event; never blocks.
    pub fn log(&self, event: &Value) {
        let mut line = event.to_string();
        line.push('\n');
        if self.tx.try_send(line).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(
                    dropped = n,
                    "audit events dropped: the audit log cannot keep up"
                );
            }
        }
    }

    /// `resp` with a body that logs `event` when it has been sent (or the client went away):
    /// a watch or log stream is complete when it ends, as upstream's ResponseComplete stage.
    pub fn on_complete(&self, resp: http::Response<Body>, event: Value) -> http::Response<Body> {
        resp.map(|inner| {
            Completion {
                inner,
                log: self.clone(),
                event: Some(event),
            }
            .boxed()
        })
    }

    /// Events dropped so far because the queue was full or the writer had stopped.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// A response body that logs its request's event once dropped.
struct Completion {
    inner: Body,
    log: AuditLog,
    event: Option<Value>,
}

impl hyper::body::Body for Completion {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        if let Some(mut event) = self.event.take() {
            event["stageTimestamp"] = json!(micro_time(jiff::Timestamp::now()));
            self.log.log(&event);
        }
    }
}

async fn writer(
    file: tokio::fs::File,
    path: PathBuf,
    mut rx: mpsc::Receiver<String>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut out = tokio::io::BufWriter::new(file);
    let mut failed = false;
    loop {
        let line = tokio::select! {
            biased;
            _ = shutdown.changed() => None,
            l = rx.recv() => l,
        };
        let Some(line) = line else { break };
        write(&mut out, &line, &path, &mut failed).await;
        // Write whatever else is queued, then flush once: one syscall per burst.
        while let Ok(line) = rx.try_recv() {
            write(&mut out, &line, &path, &mut failed).await;
        }
        if let Err(e) = out.flush().await {
            note(&path, &e, &mut failed);
        }
    }
    rx.close();
    while let Ok(line) = rx.try_recv() {
        write(&mut out, &line, &path, &mut failed).await;
    }
    if let Err(e) = out.flush().await {
        note(&path, &e, &mut failed);
    }
}

async fn write(
    out: &mut tokio::io::BufWriter<tokio::fs::File>,
    line: &str,
    path: &Path,
    failed: &mut bool,
) {
    if let Err(e) = out.write_all(line.as_bytes()).await {
        note(path, &e, failed);
    }
}

fn note(path: &Path, e: &std::io::Error, failed: &mut bool) {
    if !*failed {
        tracing::error!(path = %path.display(), error = %e, "writing the audit log failed");
        *failed = true;
    }
}

/// What is known of a request when it arrives.
#[derive(Debug)]
pub struct Start {
    pub received: jiff::Timestamp,
    pub uri: String,
    pub user_agent: Option<String>,
    pub source_ips: Vec<String>,
    pub verb: String,
    pub object_ref: Option<Value>,
}

impl Start {
    pub fn new(
        req_headers: &http::HeaderMap,
        uri: &http::Uri,
        peer: Option<IpAddr>,
        verb: String,
        target: &Target,
    ) -> Start {
        let header = |n: &str| {
            req_headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        // Upstream: X-Forwarded-For entries, X-Real-Ip, then the connection's address.
        let mut source_ips: Vec<String> = header("x-forwarded-for")
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| s.parse::<IpAddr>().is_ok())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        if let Some(real) = header("x-real-ip").filter(|s| s.parse::<IpAddr>().is_ok())
            && !source_ips.contains(&real)
        {
            source_ips.push(real);
        }
        if let Some(ip) = peer.map(|ip| ip.to_canonical().to_string())
            && !source_ips.contains(&ip)
        {
            source_ips.push(ip);
        }
        Start {
            received: jiff::Timestamp::now(),
            uri: uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| uri.path().to_string()),
            user_agent: header("user-agent"),
            source_ips,
            verb,
            object_ref: object_ref(target),
        }
    }
}

/// Upstream's timestamp form in audit events: RFC 3339 with microseconds.
pub fn micro_time(t: jiff::Timestamp) -> String {
    format!(
        "{}.{:06}Z",
        t.strftime("%Y-%m-%dT%H:%M:%S"),
        t.subsec_microsecond()
    )
}

fn user_json(u: &UserInfo) -> Value {
    let mut v = json!({ "username": u.name });
    if !u.uid.is_empty() {
        v["uid"] = json!(u.uid);
    }
    if !u.groups.is_empty() {
        v["groups"] = json!(u.groups);
    }
    if !u.extra.is_empty() {
        v["extra"] = json!(u.extra);
    }
    v
}

/// upstream's objectRef: what a resource request addressed.
fn object_ref(target: &Target) -> Option<Value> {
    let Target::Resource(rp) = target else {
        return None;
    };
    let info = rp.info();
    let mut r = json!({ "resource": info.plural, "apiVersion": info.version });
    if let Some(ns) = &rp.namespace {
        r["namespace"] = json!(ns);
    }
    if let Some(name) = &rp.name {
        r["name"] = json!(name);
    }
    if !info.group.is_empty() {
        r["apiGroup"] = json!(info.group);
    }
    if let Some(sub) = rp.subresource {
        r["subresource"] = json!(sub.name());
    }
    Some(r)
}

/// The finished request, as an Event.
pub struct Finish<'a> {
    pub user: Option<&'a UserInfo>,
    pub impersonated: Option<&'a UserInfo>,
    pub code: u16,
    /// The refusal, when the request was refused before any handler ran.
    pub error: Option<&'a capstan_api::ApiError>,
}

pub fn event(start: &Start, f: &Finish<'_>) -> Value {
    let mut ev = json!({
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "Metadata",
        "auditID": uuid::Uuid::new_v4().to_string(),
        "stage": "ResponseComplete",
        "requestURI": start.uri,
        "verb": start.verb,
        "user": f.user.map(user_json).unwrap_or_else(|| json!({})),
        "sourceIPs": start.source_ips,
        "requestReceivedTimestamp": micro_time(start.received),
        "stageTimestamp": micro_time(jiff::Timestamp::now()),
    });
    if let Some(imp) = f.impersonated {
        ev["impersonatedUser"] = user_json(imp);
    }
    if let Some(ua) = &start.user_agent {
        ev["userAgent"] = json!(ua);
    }
    if let Some(r) = &start.object_ref {
        ev["objectRef"] = r.clone();
    }
    let mut status = json!({ "metadata": {}, "code": f.code });
    if let Some(e) = f.error {
        status["status"] = json!("Failure");
        status["message"] = json!(e.message);
        status["reason"] = json!(e.reason);
    }
    ev["responseStatus"] = status;
    ev
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_carry_microseconds() {
        let t: jiff::Timestamp = "2024-05-06T07:08:09.123456789Z".parse().unwrap();
        assert_eq!(micro_time(t), "2024-05-06T07:08:09.123456Z");
    }

    #[tokio::test]
    async fn writer_flushes_queued_events_on_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/audit.log");
        let (stop, rx) = watch::channel(false);
        let (log, task) = AuditLog::start(&path, rx).await.unwrap();
        for i in 0..100 {
            log.log(&json!({ "n": i }));
        }
        stop.send(true).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 100);
        assert_eq!(lines[99]["n"], 99);
        assert_eq!(log.dropped(), 0);
        log.log(&json!({}));
        assert_eq!(
            log.dropped(),
            1,
            "after the writer stopped events are counted"
        );
    }
}
