//! The remote-command stream protocols (`channel.k8s.io` versions 1-5) over both transports
//! kubectl speaks: SPDY/3.1 (one SPDY stream per channel, named by the `streamtype` header) and
//! WebSocket (binary messages whose first byte is the channel; v5 adds channel 255 = "close
//! channel N"). Both are turned into the same [`Channels`] for exec and attach.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;

use super::spdy::{Session, StreamWriter};

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const ERROR: u8 = 3;
pub const RESIZE: u8 = 4;
/// v5 only: a message `[255, n]` half-closes channel n.
pub const CLOSE: u8 = 255;

pub const V1: &str = "channel.k8s.io";
pub const V2: &str = "v2.channel.k8s.io";
pub const V3: &str = "v3.channel.k8s.io";
pub const V4: &str = "v4.channel.k8s.io";
pub const V5: &str = "v5.channel.k8s.io";
/// SPDY versions we accept, preferred first (kubectl's SPDY client stops at v4).
pub const SPDY_PROTOCOLS: &[&str] = &[V4, V3, V2, V1];
/// WebSocket subprotocols we accept, preferred first.
pub const WS_PROTOCOLS: &[&str] = &[V5, V4, V3, V2, V1];

/// What the client asked for (query parameters of exec/attach).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Wanted {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// Where one output channel goes.
#[derive(Clone)]
pub enum Output {
    Spdy(StreamWriter),
    Ws(u8, mpsc::Sender<Message>),
    Discard,
}

impl Output {
    pub async fn write(&self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Output::Spdy(w) => w.write(data).await,
            Output::Ws(ch, tx) => {
                // Keep WebSocket messages modest; kubectl's reader buffers 32 KiB.
                for chunk in data.chunks(32 * 1024) {
                    let mut m = Vec::with_capacity(chunk.len() + 1);
                    m.push(*ch);
                    m.extend_from_slice(chunk);
                    tx.send(Message::Binary(m.into())).await.map_err(|_| {
                        std::io::Error::new(std::io::ErrorKind::BrokenPipe, "websocket closed")
                    })?;
                }
                Ok(())
            }
            Output::Discard => Ok(()),
        }
    }

    /// End of this channel's output (SPDY FIN; WebSocket has no per-channel end from the
    /// server, the close of the connection ends every channel).
    pub async fn close(&self) {
        if let Output::Spdy(w) = self {
            w.close().await;
        }
    }
}

/// The negotiated channels of one exec/attach connection.
pub struct Channels {
    pub protocol: String,
    pub stdin: Option<mpsc::Receiver<Bytes>>,
    pub resize: Option<mpsc::Receiver<Bytes>>,
    pub stdout: Output,
    pub stderr: Output,
    pub error: Output,
    finish: Finish,
}

enum Finish {
    Spdy(Session),
    Ws {
        out: mpsc::Sender<Message>,
        writer: tokio::task::JoinHandle<()>,
        reader: tokio::task::JoinHandle<()>,
    },
}

impl Channels {
    /// Ends the connection after the error channel was written.
    pub async fn finish(self) {
        drop(self.stdin);
        drop(self.resize);
        match self.finish {
            Finish::Spdy(session) => session.close().await,
            Finish::Ws {
                out,
                writer,
                reader,
            } => {
                let _ = out
                    .send(Message::Close(Some(CloseFrame {
                        code: 1000,
                        reason: "".into(),
                    })))
                    .await;
                drop(out);
                drop(self.stdout);
                drop(self.stderr);
                drop(self.error);
                let mut writer = writer;
                if tokio::time::timeout(Duration::from_secs(10), &mut writer)
                    .await
                    .is_err()
                {
                    writer.abort();
                }
                // The reader ends when the client answers the close or hangs up.
                let mut reader = reader;
                if tokio::time::timeout(Duration::from_secs(5), &mut reader)
                    .await
                    .is_err()
                {
                    reader.abort();
                }
            }
        }
    }

    /// Waits (bounded) for the streams kubectl opens over SPDY: error, then stdin/stdout/stderr
    /// as requested, resize with a TTY (v3+).
    pub async fn from_spdy(
        mut session: Session,
        protocol: &str,
        wanted: Wanted,
    ) -> Option<Channels> {
        let mut expected = 1 + wanted.stdin as usize + wanted.stdout as usize;
        if wanted.stderr && !wanted.tty {
            expected += 1;
        }
        if wanted.tty && protocol != V1 && protocol != V2 {
            expected += 1;
        }
        let (mut stdin, mut resize) = (None, None);
        let (mut stdout, mut stderr, mut error) =
            (Output::Discard, Output::Discard, Output::Discard);
        let mut got = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while got < expected {
            let stream = match tokio::time::timeout_at(deadline, session.streams.recv()).await {
                Ok(Some(s)) => s,
                Ok(None) => return None,
                Err(_) => {
                    tracing::debug!(got, expected, "timed out waiting for the client's streams");
                    break;
                }
            };
            got += 1;
            match stream.header("streamtype").unwrap_or("") {
                "error" => error = Output::Spdy(stream.writer),
                "stdin" => stdin = Some(stream.data),
                "stdout" => stdout = Output::Spdy(stream.writer),
                "stderr" => stderr = Output::Spdy(stream.writer),
                "resize" => resize = Some(stream.data),
                other => {
                    tracing::debug!(streamtype = other, "unknown stream type");
                    stream.writer.reset().await;
                }
            }
        }
        Some(Channels {
            protocol: protocol.to_string(),
            stdin,
            resize,
            stdout,
            stderr,
            error,
            finish: Finish::Spdy(session),
        })
    }

    /// Splits an accepted WebSocket into channels (`protocol` "" means the legacy unnamed one).
    pub fn from_ws(ws: WebSocket, protocol: &str, wanted: Wanted) -> Channels {
        let (mut sink, mut source) = ws.split();
        let (out, mut out_rx) = mpsc::channel::<Message>(64);
        let writer = tokio::spawn(async move {
            while let Some(m) = out_rx.recv().await {
                let close = matches!(m, Message::Close(_));
                if sink.send(m).await.is_err() {
                    return;
                }
                if close {
                    break;
                }
            }
            let _ = sink.flush().await;
        });
        let (stdin_tx, stdin_rx) = mpsc::channel::<Bytes>(16);
        let (resize_tx, resize_rx) = mpsc::channel::<Bytes>(4);
        let v5 = protocol == V5;
        let reader = tokio::spawn(async move {
            let mut stdin_tx = Some(stdin_tx);
            let mut resize_tx = Some(resize_tx);
            while let Some(Ok(m)) = source.next().await {
                let data = match m {
                    Message::Binary(b) => b,
                    Message::Close(_) => break,
                    // Pings are answered by the WebSocket layer; text frames are not used.
                    _ => continue,
                };
                let Some((&channel, rest)) = data.split_first() else {
                    continue;
                };
                match channel {
                    STDIN => {
                        if let Some(tx) = &stdin_tx
                            && tx.send(data.slice(1..)).await.is_err()
                        {
                            stdin_tx = None;
                        }
                    }
                    RESIZE => {
                        if let Some(tx) = &resize_tx {
                            let _ = tx.try_send(data.slice(1..));
                        }
                    }
                    CLOSE if v5 => match rest.first() {
                        Some(&STDIN) => stdin_tx = None,
                        Some(&RESIZE) => resize_tx = None,
                        _ => {}
                    },
                    _ => {}
                }
            }
        });
        let output = |id: u8, on: bool| {
            if on {
                Output::Ws(id, out.clone())
            } else {
                Output::Discard
            }
        };
        Channels {
            protocol: protocol.to_string(),
            stdin: wanted.stdin.then_some(stdin_rx),
            resize: wanted.tty.then_some(resize_rx),
            stdout: output(STDOUT, wanted.stdout),
            stderr: output(STDERR, wanted.stderr && !wanted.tty),
            error: output(ERROR, true),
            finish: Finish::Ws {
                out,
                writer,
                reader,
            },
        }
    }

    /// Writes the outcome on the error channel in the form the protocol version expects.
    pub async fn report(&self, outcome: &Outcome) {
        let body = status_body(&self.protocol, outcome);
        if let Some(body) = body {
            let _ = self.error.write(&body).await;
        }
        self.error.close().await;
    }
}

/// How an exec or attach ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Exited(i32),
    Failed(String),
}

/// The error channel's content: a metav1.Status for v4+, plain text before (nothing on success).
pub fn status_body(protocol: &str, outcome: &Outcome) -> Option<Vec<u8>> {
    let structured = protocol == V4 || protocol == V5;
    match outcome {
        Outcome::Exited(0) if structured => Some(
            serde_json::json!({"metadata": {}, "status": "Success"})
                .to_string()
                .into_bytes(),
        ),
        Outcome::Exited(0) => None,
        Outcome::Exited(code) if structured => Some(
            serde_json::json!({
                "metadata": {},
                "status": "Failure",
                "message": format!("command terminated with non-zero exit code: exit status {code}"),
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
            })
            .to_string()
            .into_bytes(),
        ),
        Outcome::Exited(code) => Some(format!("command terminated with exit code {code}").into_bytes()),
        Outcome::Failed(message) if structured => Some(
            serde_json::json!({
                "metadata": {},
                "status": "Failure",
                "message": message,
                "reason": "InternalError",
                "code": 500,
            })
            .to_string()
            .into_bytes(),
        ),
        Outcome::Failed(message) => Some(message.clone().into_bytes()),
    }
}

/// Picks the first of `ours` the client offered in `X-Stream-Protocol-Version` headers.
pub fn negotiate(offered: &[String], ours: &[&'static str]) -> Option<&'static str> {
    ours.iter()
        .copied()
        .find(|p| offered.iter().any(|o| o.split(',').any(|x| x.trim() == *p)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_follows_the_protocol_version() {
        let s: serde_json::Value =
            serde_json::from_slice(&status_body(V4, &Outcome::Exited(3)).unwrap()).unwrap();
        assert_eq!(s["status"], "Failure");
        assert_eq!(s["reason"], "NonZeroExitCode");
        assert_eq!(s["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(s["details"]["causes"][0]["message"], "3");
        let ok: serde_json::Value =
            serde_json::from_slice(&status_body(V5, &Outcome::Exited(0)).unwrap()).unwrap();
        assert_eq!(ok["status"], "Success");
        assert_eq!(status_body(V2, &Outcome::Exited(0)), None);
        assert_eq!(
            status_body(V1, &Outcome::Failed("boom".into())),
            Some(b"boom".to_vec())
        );
    }

    #[test]
    fn negotiation_prefers_our_order() {
        let offered = vec![V1.to_string(), format!("{V2}, {V4}"), V3.to_string()];
        assert_eq!(negotiate(&offered, SPDY_PROTOCOLS), Some(V4));
        assert_eq!(negotiate(&["x".into()], SPDY_PROTOCOLS), None);
    }

    #[tokio::test]
    async fn ws_output_prefixes_the_channel() {
        let (tx, mut rx) = mpsc::channel(4);
        Output::Ws(STDERR, tx).write(b"oops").await.unwrap();
        match rx.recv().await.unwrap() {
            Message::Binary(b) => assert_eq!(&b[..], b"\x02oops"),
            other => panic!("unexpected {other:?}"),
        }
    }
}
