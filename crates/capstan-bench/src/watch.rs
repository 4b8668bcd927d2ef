//! Watch event delivery latency: N watchers on one namespace, one writer creating objects at a
//! fixed rate; latency is the time from a create's response to each watcher's ADDED event.

use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use futures::StreamExt;
use reqwest::{Client, StatusCode};
use serde::Deserialize;
use tokio::task::JoinSet;

use crate::client::{collection, expect, list_resource_version};
use crate::payload::Kind;
use crate::stats::Summary;

/// Writer rate: low enough that delivery, not the writer, is measured.
pub const WRITES_PER_SEC: u32 = 200;
/// Events each run creates (2 s at the rate above).
pub const EVENTS: u64 = 400;
/// How long watchers wait for stragglers after the last create.
const DRAIN: Duration = Duration::from_secs(5);

#[derive(Deserialize)]
struct WatchEvent {
    #[serde(rename = "type")]
    kind: String,
    object: EventObject,
}

#[derive(Deserialize)]
struct EventObject {
    metadata: EventMeta,
}

#[derive(Deserialize)]
struct EventMeta {
    #[serde(default)]
    name: String,
}

/// What the headline figure hides: events that beat the create's response.
pub struct Detail {
    /// Share of (event, watcher) pairs received before the writer had the response.
    pub early_share: f64,
    /// From sending the create to the watcher receiving its event.
    pub from_send: Summary,
}

/// Runs one watch measurement with `watchers` clients (`clients[..watchers]`) and `writer`.
pub async fn run(
    server: &str,
    clients: &[Client],
    writer: &Client,
    kind: Kind,
    ns: &str,
    watchers: usize,
) -> anyhow::Result<(Summary, Detail)> {
    let url = collection(server, ns, kind.plural());
    let rv = list_resource_version(writer, &url).await?;
    let watch_url = format!("{url}?watch=1&resourceVersion={rv}&timeoutSeconds=60");
    let mut tasks = JoinSet::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(watchers);
    for client in clients.iter().take(watchers).cloned() {
        let (watch_url, ready_tx) = (watch_url.clone(), ready_tx.clone());
        tasks.spawn(async move { watch_one(client, watch_url, ready_tx).await });
    }
    drop(ready_tx);
    for _ in 0..watchers {
        tokio::time::timeout(Duration::from_secs(10), ready_rx.recv())
            .await
            .context("watchers did not connect within 10 s")?
            .context("a watcher failed before connecting")?;
    }
    let start = Instant::now();
    let writes = write_all(writer, &url, kind, ns).await?;
    let (mut samples, mut from_send, mut early, mut missing) = (Vec::new(), Vec::new(), 0u64, 0);
    while let Some(joined) = tasks.join_next().await {
        let received = joined??;
        missing += EVENTS - received.iter().filter(|r| r.is_some()).count() as u64;
        for (at, (sent, done)) in received.iter().zip(&writes) {
            if let Some(at) = at {
                early += u64::from(at < done);
                samples.push(at.saturating_duration_since(*done));
                from_send.push(at.saturating_duration_since(*sent));
            }
        }
    }
    let elapsed = start.elapsed();
    let delivered = samples.len().max(1) as f64;
    let detail = Detail {
        early_share: early as f64 / delivered,
        from_send: Summary::from_samples(from_send, missing, elapsed),
    };
    Ok((Summary::from_samples(samples, missing, elapsed), detail))
}

/// Creates `EVENTS` objects at `WRITES_PER_SEC`; returns when each create was sent and when
/// its response arrived.
async fn write_all(
    writer: &Client,
    url: &str,
    kind: Kind,
    ns: &str,
) -> anyhow::Result<Vec<(Instant, Instant)>> {
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / WRITES_PER_SEC);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut responded = Vec::with_capacity(EVENTS as usize);
    for index in 0..EVENTS {
        ticker.tick().await;
        let body = serde_json::to_vec(&kind.object(ns, &format!("w-{index}"), "watch"))?;
        let req = writer
            .post(url)
            .header("content-type", "application/json")
            .body(body);
        let sent = Instant::now();
        expect(req, StatusCode::CREATED)
            .await
            .with_context(|| format!("create w-{index}"))?;
        responded.push((sent, Instant::now()));
    }
    Ok(responded)
}

/// One watcher: signals once connected, then records when each `w-N` ADDED event arrives.
async fn watch_one(
    client: Client,
    url: String,
    ready: tokio::sync::mpsc::Sender<()>,
) -> anyhow::Result<Vec<Option<Instant>>> {
    let resp = client.get(&url).send().await.context("open watch")?;
    ensure!(
        resp.status() == StatusCode::OK,
        "watch: HTTP {}",
        resp.status()
    );
    ready.send(()).await.context("signal ready")?;
    let mut received = vec![None; EVENTS as usize];
    let mut remaining = EVENTS;
    let mut stream = resp.bytes_stream();
    let mut buf = Vec::new();
    // Bounded: the writer takes EVENTS / WRITES_PER_SEC seconds, plus the drain allowance.
    let deadline = tokio::time::Instant::now()
        + Duration::from_secs(EVENTS / WRITES_PER_SEC as u64 + 10)
        + DRAIN;
    while remaining > 0 {
        let chunk = match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) | Ok(None) => break,
            Ok(Some(chunk)) => chunk.context("watch stream")?,
        };
        let at = Instant::now();
        buf.extend_from_slice(&chunk);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            if let Some(index) = added_index(&line)?
                && received.get(index).is_some_and(Option::is_none)
            {
                received[index] = Some(at);
                remaining -= 1;
            }
        }
    }
    Ok(received)
}

/// The N of an ADDED `w-N` event; `None` for other events. An ERROR event fails the run.
fn added_index(line: &[u8]) -> anyhow::Result<Option<usize>> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let event: WatchEvent = serde_json::from_slice(line).context("watch event JSON")?;
    match event.kind.as_str() {
        "ADDED" => Ok(event
            .object
            .metadata
            .name
            .strip_prefix("w-")
            .and_then(|n| n.parse().ok())),
        "ERROR" => bail!("watch ERROR event: {}", String::from_utf8_lossy(line)),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_added_events_and_skips_others() {
        let added =
            br#"{"type":"ADDED","object":{"kind":"Pod","metadata":{"name":"w-17","uid":"u"}}}"#;
        assert_eq!(added_index(added).ok().flatten(), Some(17));
        let modified = br#"{"type":"MODIFIED","object":{"metadata":{"name":"w-3"}}}"#;
        assert_eq!(added_index(modified).ok().flatten(), None);
        let other = br#"{"type":"ADDED","object":{"metadata":{"name":"obj-3"}}}"#;
        assert_eq!(added_index(other).ok().flatten(), None);
        let bookmark = br#"{"type":"BOOKMARK","object":{"metadata":{"resourceVersion":"9"}}}"#;
        assert_eq!(added_index(bookmark).ok().flatten(), None);
        assert!(added_index(br#"{"type":"ERROR","object":{"metadata":{}}}"#).is_err());
        assert_eq!(added_index(b"\n").ok().flatten(), None);
    }
}
