//! `/containerLogs`: a container's CRI log file turned into what `kubectl logs` shows, with
//! upstream's options (tailLines, sinceSeconds/sinceTime, timestamps, limitBytes, follow).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use capstan_runtime::container::logs::{LogRecord, parse_record};
use capstan_runtime::cri::RuntimeService;
use capstan_runtime::cri::runtime_service::ContainerState;
use jiff::Timestamp;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How often a followed log file is checked for new records.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// The query options of a log request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogOptions {
    pub follow: bool,
    pub previous: bool,
    pub tail_lines: Option<usize>,
    pub since: Option<Timestamp>,
    pub timestamps: bool,
    pub limit_bytes: Option<usize>,
}

fn flag(q: &HashMap<String, String>, name: &str) -> bool {
    q.get(name).is_some_and(|v| v == "true" || v == "1")
}

impl LogOptions {
    /// Parses upstream's PodLogOptions query parameters; `now` anchors sinceSeconds.
    pub fn from_query(q: &HashMap<String, String>, now: Timestamp) -> Result<LogOptions, String> {
        let num = |name: &str| -> Result<Option<i64>, String> {
            q.get(name)
                .map(|v| {
                    v.parse::<i64>()
                        .map_err(|_| format!("invalid {name} {v:?}: not an integer"))
                })
                .transpose()
        };
        let tail_lines = match num("tailLines")? {
            Some(n) if n < 0 => None,
            Some(n) => Some(n as usize),
            None => None,
        };
        let limit_bytes = match num("limitBytes")? {
            Some(n) if n < 1 => return Err("limitBytes: must be greater than 0".into()),
            Some(n) => Some(n as usize),
            None => None,
        };
        let since = match (num("sinceSeconds")?, q.get("sinceTime")) {
            (Some(_), Some(_)) => {
                return Err("at most one of sinceTime or sinceSeconds may be specified".into());
            }
            (Some(s), None) if s < 1 => {
                return Err("sinceSeconds: must be greater than 0".into());
            }
            (Some(s), None) => Some(
                now.checked_sub(jiff::SignedDuration::from_secs(s))
                    .unwrap_or(Timestamp::MIN),
            ),
            (None, Some(t)) => Some(
                t.parse::<Timestamp>()
                    .map_err(|e| format!("invalid sinceTime {t:?}: {e}"))?,
            ),
            (None, None) => None,
        };
        Ok(LogOptions {
            follow: flag(q, "follow"),
            previous: flag(q, "previous"),
            tail_lines,
            since,
            timestamps: flag(q, "timestamps"),
            limit_bytes,
        })
    }
}

/// The bytes one record contributes to the output.
pub fn render(record: &LogRecord, timestamps: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(record.message.len() + 40);
    if timestamps {
        out.extend_from_slice(format!("{} ", rfc3339_nano(record.time)).as_bytes());
    }
    out.extend_from_slice(record.message.as_bytes());
    if !record.partial {
        out.push(b'\n');
    }
    out
}

/// RFC 3339 with nanoseconds, as Go's RFC3339Nano prints (trailing zeros dropped).
fn rfc3339_nano(t: Timestamp) -> String {
    t.to_string()
}

/// Parsed complete records of `text` (lines ending in '\n'), and how many bytes they span.
pub fn complete_records(text: &[u8]) -> (Vec<LogRecord>, usize) {
    let end = text.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
    let records = String::from_utf8_lossy(&text[..end])
        .lines()
        .filter_map(parse_record)
        .collect();
    (records, end)
}

/// Applies since, tail and timestamps to the records already in the file.
pub fn select(records: &[LogRecord], opts: &LogOptions) -> Vec<u8> {
    let records: Vec<&LogRecord> = records
        .iter()
        .filter(|r| opts.since.is_none_or(|s| r.time >= s))
        .collect();
    let start = match opts.tail_lines {
        Some(n) => {
            // A line is a run of partial records closed by a full one: count full records back.
            let mut seen = 0;
            let mut start = records.len();
            for (i, r) in records.iter().enumerate().rev() {
                if !r.partial {
                    if seen == n {
                        break;
                    }
                    seen += 1;
                }
                start = i;
            }
            if n == 0 { records.len() } else { start }
        }
        None => 0,
    };
    records[start..]
        .iter()
        .flat_map(|r| render(r, opts.timestamps))
        .collect()
}

/// Cuts `out` to what limitBytes still allows; returns false when the limit is reached.
fn limit(out: &mut Vec<u8>, remaining: &mut Option<usize>) -> bool {
    match remaining {
        Some(left) => {
            out.truncate(*left);
            *left -= out.len();
            *left > 0
        }
        None => true,
    }
}

/// Streams a log file into `tx`: the selected existing records, then with `follow` new ones
/// until the container stops running (`container_id`), the receiver goes away or shutdown.
pub async fn stream_file(
    path: PathBuf,
    opts: LogOptions,
    follow: Option<(Arc<dyn RuntimeService>, String)>,
    tx: mpsc::Sender<Bytes>,
    shutdown: CancellationToken,
) {
    let mut remaining = opts.limit_bytes;
    let mut offset = match tokio::fs::read(&path).await {
        Ok(data) => {
            let (records, end) = complete_records(&data);
            let mut out = select(&records, &opts);
            let more = limit(&mut out, &mut remaining);
            if !out.is_empty() && tx.send(Bytes::from(out)).await.is_err() {
                return;
            }
            if !more {
                return;
            }
            end as u64
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => {
            tracing::debug!(path = %path.display(), error = %e, "reading a log file");
            return;
        }
    };
    let Some((runtime, id)) = follow else { return };
    let mut live_opts = opts.clone();
    live_opts.tail_lines = None;
    loop {
        let running = runtime
            .container_status(&id)
            .await
            .is_ok_and(|s| s.state == ContainerState::Running);
        let data = read_from(&path, offset).await;
        let (records, end) = complete_records(&data);
        offset += end as u64;
        let mut out = select(&records, &live_opts);
        let more = limit(&mut out, &mut remaining);
        if !out.is_empty() && tx.send(Bytes::from(out)).await.is_err() {
            return;
        }
        // Stop once the container ended and everything it wrote was sent.
        if !more || (!running && end == 0) {
            return;
        }
        if end > 0 {
            continue;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tx.closed() => return,
            _ = tokio::time::sleep(FOLLOW_POLL) => {}
        }
    }
}

async fn read_from(path: &Path, offset: u64) -> Vec<u8> {
    let mut out = Vec::new();
    if let Ok(mut f) = tokio::fs::File::open(path).await
        && f.seek(std::io::SeekFrom::Start(offset)).await.is_ok()
    {
        let _ = f.take(4 * 1024 * 1024).read_to_end(&mut out).await;
    }
    out
}

/// Size of the log file now (where attach starts following).
pub async fn file_len(path: &Path) -> u64 {
    tokio::fs::metadata(path).await.map_or(0, |m| m.len())
}

/// Follows `path` from `offset`, sending stdout and stderr records' bytes (messages with their
/// newlines) to the two senders until the container stops or a receiver is gone.
pub async fn follow_streams(
    path: PathBuf,
    mut offset: u64,
    runtime: Arc<dyn RuntimeService>,
    id: String,
    stdout: mpsc::Sender<Bytes>,
    stderr: mpsc::Sender<Bytes>,
    shutdown: CancellationToken,
) {
    use capstan_runtime::container::logs::Stream;
    loop {
        let running = runtime
            .container_status(&id)
            .await
            .is_ok_and(|s| s.state == ContainerState::Running);
        let data = read_from(&path, offset).await;
        let (records, end) = complete_records(&data);
        offset += end as u64;
        for r in &records {
            let tx = if r.stream == Stream::Stdout {
                &stdout
            } else {
                &stderr
            };
            if tx.send(Bytes::from(render(r, false))).await.is_err() {
                return;
            }
        }
        if !running && end == 0 {
            return;
        }
        if end > 0 {
            continue;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = stdout.closed() => return,
            _ = tokio::time::sleep(FOLLOW_POLL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use capstan_runtime::container::logs::{Stream, format_record};

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn file() -> Vec<u8> {
        let mut f = Vec::new();
        f.extend(format_record(
            t("2024-01-01T00:00:01Z"),
            Stream::Stdout,
            false,
            b"one",
        ));
        f.extend(format_record(
            t("2024-01-01T00:00:02Z"),
            Stream::Stderr,
            false,
            b"two",
        ));
        f.extend(format_record(
            t("2024-01-01T00:00:03Z"),
            Stream::Stdout,
            true,
            b"thr",
        ));
        f.extend(format_record(
            t("2024-01-01T00:00:03.5Z"),
            Stream::Stdout,
            false,
            b"ee",
        ));
        f.extend(format_record(
            t("2024-01-01T00:00:04Z"),
            Stream::Stdout,
            false,
            b"four",
        ));
        f.extend_from_slice(b"2024-01-01T00:00:05Z stdout F incomp");
        f
    }

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn run(pairs: &[(&str, &str)]) -> String {
        let opts = LogOptions::from_query(&q(pairs), t("2024-01-01T00:00:06Z")).unwrap();
        let (records, _) = complete_records(&file());
        let mut out = select(&records, &opts);
        let mut remaining = opts.limit_bytes;
        limit(&mut out, &mut remaining);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn whole_log_joins_partial_records_and_skips_the_incomplete_line() {
        assert_eq!(run(&[]), "one\ntwo\nthree\nfour\n");
        let (_, end) = complete_records(&file());
        assert!(end < file().len());
    }

    #[test]
    fn tail_counts_lines_not_records() {
        assert_eq!(run(&[("tailLines", "2")]), "three\nfour\n");
        assert_eq!(run(&[("tailLines", "0")]), "");
        assert_eq!(run(&[("tailLines", "10")]), "one\ntwo\nthree\nfour\n");
    }

    #[test]
    fn since_filters_by_record_time() {
        assert_eq!(run(&[("sinceSeconds", "3")]), "three\nfour\n");
        assert_eq!(run(&[("sinceTime", "2024-01-01T00:00:04Z")]), "four\n");
        let err = LogOptions::from_query(
            &q(&[("sinceSeconds", "1"), ("sinceTime", "2024-01-01T00:00:04Z")]),
            Timestamp::now(),
        );
        assert!(err.is_err());
    }

    #[test]
    fn timestamps_prefix_each_record_and_limit_bytes_cuts() {
        assert_eq!(
            run(&[("timestamps", "true"), ("tailLines", "1")]),
            "2024-01-01T00:00:04Z four\n"
        );
        assert_eq!(run(&[("limitBytes", "6")]), "one\ntw");
        assert!(LogOptions::from_query(&q(&[("limitBytes", "0")]), Timestamp::now()).is_err());
    }

    #[test]
    fn flags_parse() {
        let o = LogOptions::from_query(
            &q(&[("follow", "true"), ("previous", "true")]),
            Timestamp::now(),
        )
        .unwrap();
        assert!(o.follow && o.previous && !o.timestamps);
    }
}
