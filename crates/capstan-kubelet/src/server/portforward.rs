//! `/portForward/{ns}/{pod}`: SPDY/3.1 (`portforward.k8s.io`), directly or tunnelled inside a
//! WebSocket (`SPDY/3.1+portforward.k8s.io`, kubectl 1.31+). Each forwarded connection is a
//! pair of streams (error, data) sharing a `requestid`; the data stream is joined to a TCP
//! connection to 127.0.0.1:<port> made inside the pod's network namespace.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::AppState;
use super::exec::{offered_protocols, spdy_switching, wants_websocket};
use super::pods::{HttpError, find_sandbox};
use super::spdy::{Session, SpdyStream};

pub const PROTOCOL: &str = "portforward.k8s.io";
pub const WS_TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";

pub async fn port_forward(
    State(st): State<AppState>,
    Path((ns, pod)): Path<(String, String)>,
    req: Request,
) -> Response {
    handle(st, ns, pod, req)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn handle(
    st: AppState,
    ns: String,
    pod: String,
    req: Request,
) -> Result<Response, HttpError> {
    let sandbox = find_sandbox(st.runtime.as_ref(), &ns, &pod).await?;
    let netns = sandbox.network_namespace.clone();
    let target = Target {
        netns,
        pod: format!("{ns}/{pod}"),
    };
    if wants_websocket(req.headers()) {
        let (mut parts, _) = req.into_parts();
        let ws = WebSocketUpgrade::from_request_parts(&mut parts, &())
            .await
            .map_err(|e| HttpError::bad_request(format!("websocket upgrade: {e}")))?
            .protocols([WS_TUNNEL_PROTOCOL]);
        if ws.selected_protocol().is_none() {
            return Err(HttpError::bad_request(format!(
                "port-forward over WebSocket needs the {WS_TUNNEL_PROTOCOL} subprotocol"
            )));
        }
        return Ok(ws
            .on_upgrade(move |socket| async move {
                let (io, pump) = ws_byte_stream(socket);
                serve_session(Session::start(io), target).await;
                pump.abort();
            })
            .into_response());
    }
    let offered = offered_protocols(req.headers());
    if !offered
        .iter()
        .any(|o| o.split(',').any(|p| p.trim() == PROTOCOL))
    {
        return Err(HttpError(
            403,
            format!(
                "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server supports [\"{PROTOCOL}\"]"
            ),
        ));
    }
    let mut req = req;
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(u) => serve_session(Session::start(TokioIo::new(u)), target).await,
            Err(e) => tracing::debug!(error = %e, "port-forward: upgrade failed"),
        }
    });
    Ok(spdy_switching(PROTOCOL))
}

/// Turns a WebSocket carrying a byte stream in binary messages into an AsyncRead/AsyncWrite.
fn ws_byte_stream(ws: WebSocket) -> (tokio::io::DuplexStream, tokio::task::JoinHandle<()>) {
    let (ours, theirs) = tokio::io::duplex(256 * 1024);
    let pump = tokio::spawn(async move {
        let (mut sink, mut source) = ws.split();
        let (mut r, mut w) = tokio::io::split(theirs);
        let up = async {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match r.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if sink
                            .send(Message::Binary(buf[..n].to_vec().into()))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }
            let _ = sink.send(Message::Close(None)).await;
        };
        let down = async {
            while let Some(Ok(m)) = source.next().await {
                let Message::Binary(b) = m else {
                    if matches!(m, Message::Close(_)) {
                        break;
                    }
                    continue;
                };
                if w.write_all(&b).await.is_err() {
                    break;
                }
            }
            let _ = w.shutdown().await;
        };
        tokio::join!(up, down);
    });
    (ours, pump)
}

#[derive(Clone)]
struct Target {
    netns: PathBuf,
    pod: String,
}

async fn serve_session(mut session: Session, target: Target) {
    let mut pending: HashMap<String, (Option<SpdyStream>, Option<SpdyStream>)> = HashMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    while let Some(stream) = session.streams.recv().await {
        let id = stream.header("requestid").unwrap_or("").to_string();
        let slot = pending.entry(id.clone()).or_default();
        match stream.header("streamtype") {
            Some("error") => slot.0 = Some(stream),
            Some("data") => slot.1 = Some(stream),
            _ => {
                stream.writer.reset().await;
                continue;
            }
        }
        if slot.0.is_some()
            && slot.1.is_some()
            && let Some((Some(error), Some(data))) = pending.remove(&id)
        {
            tasks.spawn(forward(error, data, target.clone()));
        }
        while tasks.try_join_next().is_some() {}
    }
    tasks.abort_all();
    session.close().await;
}

async fn forward(error: SpdyStream, data: SpdyStream, target: Target) {
    let port = match data.header("port").map(str::parse::<u16>) {
        Some(Ok(p)) if p > 0 => p,
        _ => {
            let _ = error.writer.write(b"invalid port header").await;
            error.writer.close().await;
            data.writer.reset().await;
            return;
        }
    };
    let tcp = match connect(target.netns.clone(), port).await {
        Ok(t) => t,
        Err(e) => {
            let msg = format!(
                "error forwarding port {port} to pod {}: failed to connect to localhost:{port} inside namespace: {e}",
                target.pod
            );
            let _ = error.writer.write(msg.as_bytes()).await;
            error.writer.close().await;
            data.writer.close().await;
            return;
        }
    };
    let (mut r, mut w) = tcp.into_split();
    // Client to pod until the client half-closes the data stream (or the session ends).
    let mut input = data.data;
    let down = tokio::spawn(async move {
        while let Some(b) = input.recv().await {
            if w.write_all(&b).await.is_err() {
                break;
            }
        }
        let _ = w.shutdown().await;
    });
    // Pod to client; when the pod side is done, both our streams end, as upstream's kubelet
    // does: kubectl waits for the error stream to end before closing the local connection.
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if data.writer.write(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    data.writer.close().await;
    error.writer.close().await;
    let _ = down.await;
}

/// Connects to the port on loopback inside the network namespace at `netns` (the host's when
/// the sandbox has none, as for hostNetwork pods). setns only affects the calling thread, so a
/// dedicated thread enters the namespace, connects, and hands the socket back.
async fn connect(netns: PathBuf, port: u16) -> std::io::Result<tokio::net::TcpStream> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("portforward-connect".into())
        .spawn(move || {
            let _ = tx.send(connect_in(&netns, port));
        })?;
    let std_stream = rx
        .await
        .map_err(|_| std::io::Error::other("connect thread ended"))??;
    std_stream.set_nonblocking(true)?;
    tokio::net::TcpStream::from_std(std_stream)
}

fn connect_in(netns: &std::path::Path, port: u16) -> std::io::Result<TcpStream> {
    if !netns.as_os_str().is_empty() && netns.exists() {
        let f = std::fs::File::open(netns)?;
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| std::io::Error::other(format!("entering {}: {e}", netns.display())))?;
    }
    let timeout = Duration::from_secs(10);
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    match TcpStream::connect_timeout(&v4, timeout) {
        Ok(s) => Ok(s),
        Err(e4) => {
            TcpStream::connect_timeout(&SocketAddr::from((Ipv6Addr::LOCALHOST, port)), timeout)
                .map_err(|_| e4)
        }
    }
}
