//! A server-side SPDY/3.1 session over any byte stream, as Kubernetes streaming (exec, attach,
//! port-forward) uses it: the client opens streams with SYN_STREAM, we answer each with
//! SYN_REPLY and exchange DATA until both sides sent FIN. Flow control is not enforced: Go's
//! spdystream (kubectl's side) neither sends nor honours WINDOW_UPDATE, TCP pushes back instead.

pub mod frame;

use std::collections::HashMap;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use frame::{FLAG_FIN, Frame, HeaderCodec, Headers};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Largest DATA frame we send.
const CHUNK: usize = 32 * 1024;

enum Out {
    Frame(Frame),
    Shutdown,
}

/// One stream the client opened: its headers, the data it sends (the channel closes on FIN,
/// reset or the end of the session) and our writing half.
pub struct SpdyStream {
    pub id: u32,
    pub headers: Headers,
    pub data: mpsc::Receiver<Bytes>,
    pub writer: StreamWriter,
}

impl SpdyStream {
    pub fn header(&self, name: &str) -> Option<&str> {
        frame::header(&self.headers, name)
    }
}

/// Our half of a stream.
#[derive(Clone)]
pub struct StreamWriter {
    id: u32,
    out: mpsc::Sender<Out>,
}

impl StreamWriter {
    /// Sends `data` as DATA frames; fails when the session is gone.
    pub async fn write(&self, data: &[u8]) -> std::io::Result<()> {
        for chunk in data.chunks(CHUNK) {
            self.send(Frame::Data {
                stream_id: self.id,
                flags: 0,
                data: Bytes::copy_from_slice(chunk),
            })
            .await?;
        }
        Ok(())
    }

    /// Half-closes the stream (empty DATA with FIN).
    pub async fn close(&self) {
        let _ = self
            .send(Frame::Data {
                stream_id: self.id,
                flags: FLAG_FIN,
                data: Bytes::new(),
            })
            .await;
    }

    /// Aborts the stream.
    pub async fn reset(&self) {
        let _ = self
            .send(Frame::RstStream {
                stream_id: self.id,
                status: frame::RST_CANCEL,
            })
            .await;
    }

    async fn send(&self, f: Frame) -> std::io::Result<()> {
        self.out
            .send(Out::Frame(f))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "session closed"))
    }
}

/// A running session: new streams arrive on `streams` (closed when the client goes away).
pub struct Session {
    pub streams: mpsc::Receiver<SpdyStream>,
    out: mpsc::Sender<Out>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl Session {
    /// Starts the reader and writer tasks over `io` (already upgraded).
    pub fn start<IO>(io: IO) -> Session
    where
        IO: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (read, write) = tokio::io::split(io);
        let (out_tx, out_rx) = mpsc::channel(64);
        let (streams_tx, streams) = mpsc::channel(16);
        let writer = tokio::spawn(write_loop(write, out_rx));
        let reader = tokio::spawn(read_loop(read, out_tx.clone(), streams_tx));
        Session {
            streams,
            out: out_tx,
            reader,
            writer,
        }
    }

    /// Sends GOAWAY, flushes, closes our side and waits (bounded) for the client to hang up.
    pub async fn close(self) {
        let _ = self
            .out
            .send(Out::Frame(Frame::GoAway {
                last_good_stream_id: 0,
                status: 0,
            }))
            .await;
        let _ = self.out.send(Out::Shutdown).await;
        let mut writer = self.writer;
        if tokio::time::timeout(Duration::from_secs(10), &mut writer)
            .await
            .is_err()
        {
            writer.abort();
        }
        let mut reader = self.reader;
        if tokio::time::timeout(Duration::from_secs(5), &mut reader)
            .await
            .is_err()
        {
            reader.abort();
        }
    }
}

async fn write_loop<W: AsyncWrite>(write: W, mut rx: mpsc::Receiver<Out>) {
    tokio::pin!(write);
    let mut codec = HeaderCodec::new();
    let mut buf = BytesMut::with_capacity(CHUNK + 64);
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        let mut shutdown = false;
        // Batch whatever is queued into one write.
        while let Some(item) = next.take() {
            match item {
                Out::Frame(f) => {
                    if let Err(e) = frame::encode_frame(&f, &mut codec, &mut buf) {
                        tracing::debug!(error = %e, "spdy: cannot encode frame");
                    }
                }
                Out::Shutdown => {
                    shutdown = true;
                    break;
                }
            }
            if buf.len() < 256 * 1024 {
                next = rx.try_recv().ok();
            }
        }
        if write.write_all(&buf).await.is_err() || write.flush().await.is_err() {
            return;
        }
        buf.clear();
        if shutdown {
            let _ = write.shutdown().await;
            return;
        }
    }
    let _ = write.shutdown().await;
}

async fn read_loop<R: AsyncRead>(
    read: R,
    out: mpsc::Sender<Out>,
    streams_tx: mpsc::Sender<SpdyStream>,
) {
    tokio::pin!(read);
    let mut codec = HeaderCodec::new();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut open: HashMap<u32, mpsc::Sender<Bytes>> = HashMap::new();
    loop {
        let frame = match frame::decode_frame(&mut buf, &mut codec) {
            Ok(Some(f)) => f,
            Ok(None) => match read.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            },
            Err(e) => {
                tracing::debug!(error = %e, "spdy: protocol error, closing the session");
                let _ = out
                    .send(Out::Frame(Frame::GoAway {
                        last_good_stream_id: 0,
                        status: 1,
                    }))
                    .await;
                return;
            }
        };
        match frame {
            Frame::SynStream {
                stream_id,
                flags,
                headers,
                ..
            } => {
                if out
                    .send(Out::Frame(Frame::SynReply {
                        stream_id,
                        flags: 0,
                        headers: Vec::new(),
                    }))
                    .await
                    .is_err()
                {
                    return;
                }
                let (tx, rx) = mpsc::channel(16);
                if flags & FLAG_FIN == 0 {
                    open.insert(stream_id, tx);
                }
                let stream = SpdyStream {
                    id: stream_id,
                    headers,
                    data: rx,
                    writer: StreamWriter {
                        id: stream_id,
                        out: out.clone(),
                    },
                };
                if streams_tx.send(stream).await.is_err() {
                    return;
                }
            }
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                if !data.is_empty()
                    && let Some(tx) = open.get(&stream_id)
                    && tx.send(data).await.is_err()
                {
                    open.remove(&stream_id);
                }
                if flags & FLAG_FIN != 0 {
                    open.remove(&stream_id);
                }
            }
            Frame::Headers {
                stream_id, flags, ..
            } => {
                if flags & FLAG_FIN != 0 {
                    open.remove(&stream_id);
                }
            }
            Frame::RstStream { stream_id, .. } => {
                open.remove(&stream_id);
            }
            Frame::Ping { id } => {
                if out.send(Out::Frame(Frame::Ping { id })).await.is_err() {
                    return;
                }
            }
            Frame::GoAway { .. } => return,
            Frame::SynReply { .. }
            | Frame::Settings { .. }
            | Frame::WindowUpdate { .. }
            | Frame::Unknown { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal client end for tests: encodes frames and decodes what the server sends.
    struct Client {
        io: tokio::io::DuplexStream,
        tx: HeaderCodec,
        rx: HeaderCodec,
        buf: BytesMut,
    }

    impl Client {
        async fn send(&mut self, f: Frame) {
            let mut out = BytesMut::new();
            frame::encode_frame(&f, &mut self.tx, &mut out).unwrap();
            self.io.write_all(&out).await.unwrap();
        }
        async fn recv(&mut self) -> Option<Frame> {
            loop {
                if let Some(f) = frame::decode_frame(&mut self.buf, &mut self.rx).unwrap() {
                    return Some(f);
                }
                if self.io.read_buf(&mut self.buf).await.unwrap() == 0 {
                    return None;
                }
            }
        }
    }

    #[tokio::test]
    async fn stream_lifecycle() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let mut session = Session::start(a);
        let mut c = Client {
            io: b,
            tx: HeaderCodec::new(),
            rx: HeaderCodec::new(),
            buf: BytesMut::new(),
        };
        c.send(Frame::SynStream {
            stream_id: 1,
            associated_id: 0,
            priority: 0,
            flags: 0,
            headers: vec![("streamtype".into(), "stdin".into())],
        })
        .await;
        assert_eq!(
            c.recv().await,
            Some(Frame::SynReply {
                stream_id: 1,
                flags: 0,
                headers: vec![]
            })
        );
        let mut s = session.streams.recv().await.unwrap();
        assert_eq!(s.header("streamtype"), Some("stdin"));
        c.send(Frame::Data {
            stream_id: 1,
            flags: 0,
            data: Bytes::from_static(b"abc"),
        })
        .await;
        c.send(Frame::Ping { id: 9 }).await;
        c.send(Frame::Data {
            stream_id: 1,
            flags: FLAG_FIN,
            data: Bytes::new(),
        })
        .await;
        assert_eq!(s.data.recv().await.unwrap(), Bytes::from_static(b"abc"));
        assert_eq!(s.data.recv().await, None, "FIN ends the stream's input");
        assert_eq!(c.recv().await, Some(Frame::Ping { id: 9 }));
        s.writer.write(b"out").await.unwrap();
        s.writer.close().await;
        assert_eq!(
            c.recv().await,
            Some(Frame::Data {
                stream_id: 1,
                flags: 0,
                data: Bytes::from_static(b"out")
            })
        );
        assert_eq!(
            c.recv().await,
            Some(Frame::Data {
                stream_id: 1,
                flags: FLAG_FIN,
                data: Bytes::new()
            })
        );
        let closing = tokio::spawn(session.close());
        assert!(matches!(c.recv().await, Some(Frame::GoAway { .. })));
        assert_eq!(c.recv().await, None, "server closed its side");
        drop(c);
        closing.await.unwrap();
    }

    #[tokio::test]
    async fn reset_and_client_hangup_close_streams() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let mut session = Session::start(a);
        let mut c = Client {
            io: b,
            tx: HeaderCodec::new(),
            rx: HeaderCodec::new(),
            buf: BytesMut::new(),
        };
        for id in [1, 3] {
            c.send(Frame::SynStream {
                stream_id: id,
                associated_id: 0,
                priority: 0,
                flags: 0,
                headers: vec![],
            })
            .await;
        }
        let mut s1 = session.streams.recv().await.unwrap();
        let mut s3 = session.streams.recv().await.unwrap();
        c.send(Frame::RstStream {
            stream_id: 1,
            status: frame::RST_CANCEL,
        })
        .await;
        assert_eq!(s1.data.recv().await, None);
        drop(c);
        assert_eq!(s3.data.recv().await, None);
        assert!(session.streams.recv().await.is_none());
    }
}
