//! Container logs in the CRI format the kubelet and `kubectl logs` read:
//! `<RFC3339Nano time> <stdout|stderr> <F|P> <message>\n`, one record per line; a line longer
//! than [`MAX_LINE`] is cut into partial (`P`) records closed by a full (`F`) one.

use std::fs::File;
use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};

use jiff::Timestamp;

/// Longest message in one record (containerd's default, 16 KiB).
pub const MAX_LINE: usize = 16 * 1024;

/// Which stream a record came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// One parsed record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRecord {
    pub time: Timestamp,
    pub stream: Stream,
    pub partial: bool,
    pub message: String,
}

/// Formats one record (without locking or I/O), `message` without its newline.
pub fn format_record(time: Timestamp, stream: Stream, partial: bool, message: &[u8]) -> Vec<u8> {
    let tag = if partial { "P" } else { "F" };
    let mut out = format!("{time} {} {tag} ", stream.as_str()).into_bytes();
    out.extend_from_slice(message);
    out.push(b'\n');
    out
}

/// Parses one line of a CRI log file (without its trailing newline).
pub fn parse_record(line: &str) -> Option<LogRecord> {
    let mut parts = line.splitn(4, ' ');
    let time = parts.next()?.parse().ok()?;
    let stream = match parts.next()? {
        "stdout" => Stream::Stdout,
        "stderr" => Stream::Stderr,
        _ => return None,
    };
    let partial = match parts.next()? {
        "P" => true,
        "F" => false,
        _ => return None,
    };
    let message = parts.next().unwrap_or("").to_string();
    Some(LogRecord {
        time,
        stream,
        partial,
        message,
    })
}

/// The whole messages of a log file: partial records joined, one string per line.
pub fn read_messages(text: &str) -> Vec<(Stream, String)> {
    let mut out = Vec::new();
    let mut pending: [String; 2] = Default::default();
    for record in text.lines().filter_map(parse_record) {
        let slot = &mut pending[record.stream as usize];
        slot.push_str(&record.message);
        if !record.partial {
            out.push((record.stream, std::mem::take(slot)));
        }
    }
    out
}

/// Copies one stream of a container into the shared log file until EOF, cutting lines into
/// records. Write errors stop the copy but the stream is still drained, so the container never
/// blocks on a full pipe.
pub fn copy_stream(mut input: impl Read, stream: Stream, file: Arc<Mutex<File>>) -> io::Result<()> {
    let mut buf = vec![0u8; 32 * 1024];
    let mut line: Vec<u8> = Vec::with_capacity(1024);
    let mut failed: Option<io::Error> = None;
    let emit = |msg: &[u8], partial: bool, failed: &mut Option<io::Error>| {
        if failed.is_some() {
            return;
        }
        // The time is read under the lock, so records of both streams stay in time order in
        // the shared file.
        let result = match file.lock() {
            Ok(mut f) => f.write_all(&format_record(Timestamp::now(), stream, partial, msg)),
            Err(_) => Err(io::Error::other("log file lock poisoned")),
        };
        if let Err(e) = result {
            *failed = Some(e);
        }
    };
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let mut chunk = &buf[..n];
        while !chunk.is_empty() {
            match chunk.iter().position(|&b| b == b'\n') {
                Some(pos) if line.len() + pos <= MAX_LINE => {
                    line.extend_from_slice(&chunk[..pos]);
                    emit(&line, false, &mut failed);
                    line.clear();
                    chunk = &chunk[pos + 1..];
                }
                _ => {
                    let room = MAX_LINE - line.len();
                    let take = room.min(chunk.len());
                    line.extend_from_slice(&chunk[..take]);
                    chunk = &chunk[take..];
                    if line.len() == MAX_LINE {
                        emit(&line, true, &mut failed);
                        line.clear();
                    }
                }
            }
        }
    }
    if !line.is_empty() {
        emit(&line, false, &mut failed);
    }
    failed.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(input: &[u8]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let file = Arc::new(Mutex::new(File::create(&path).unwrap()));
        copy_stream(input, Stream::Stderr, file).unwrap();
        std::fs::read_to_string(&path).unwrap()
    }

    #[test]
    fn lines_become_full_records() {
        let text = copy(b"hello\n\nworld");
        let records: Vec<_> = text.lines().map(|l| parse_record(l).unwrap()).collect();
        assert_eq!(records.len(), 3);
        assert_eq!(records[0].message, "hello");
        assert_eq!(records[1].message, "");
        assert_eq!(records[2].message, "world");
        assert!(
            records
                .iter()
                .all(|r| !r.partial && r.stream == Stream::Stderr)
        );
    }

    #[test]
    fn long_lines_are_split_into_partial_records() {
        let long = "x".repeat(MAX_LINE * 2 + 10);
        let text = copy(format!("{long}\nend\n").as_bytes());
        let records: Vec<_> = text.lines().map(|l| parse_record(l).unwrap()).collect();
        let tags: Vec<bool> = records.iter().map(|r| r.partial).collect();
        assert_eq!(tags, vec![true, true, false, false]);
        let messages = read_messages(&text);
        assert_eq!(messages[0].1, long);
        assert_eq!(messages[1].1, "end");
    }

    #[test]
    fn record_format_matches_cri() {
        let t: Timestamp = "2016-10-06T00:17:09.669794202Z".parse().unwrap();
        let line = format_record(t, Stream::Stdout, false, b"a b");
        assert_eq!(line, b"2016-10-06T00:17:09.669794202Z stdout F a b\n");
        assert_eq!(parse_record("bogus"), None);
    }
}
