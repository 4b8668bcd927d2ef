//! `/exec` and `/attach`: upgrade to SPDY/3.1 or WebSocket, then pump the runtime's streamed
//! exec (or, for attach, the container's log) through the negotiated channels.

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use capstan_runtime::cri::runtime_service::{ContainerState, ExecRequest};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::AppState;
use super::channels::{self, Channels, Outcome, Output, Wanted};
use super::pods::{HttpError, find_container, query_pairs};
use super::spdy::Session;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Exec,
    Attach,
}

pub async fn exec(
    State(st): State<AppState>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    req: Request,
) -> Response {
    handle(st, ns, pod, container, req, Kind::Exec)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

pub async fn attach(
    State(st): State<AppState>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    req: Request,
) -> Response {
    handle(st, ns, pod, container, req, Kind::Attach)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

fn is_true(v: &str) -> bool {
    v == "true" || v == "1"
}

/// True when the request asks for a WebSocket upgrade.
pub fn wants_websocket(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// The values of every `X-Stream-Protocol-Version` header.
pub fn offered_protocols(headers: &http::HeaderMap) -> Vec<String> {
    headers
        .get_all("x-stream-protocol-version")
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_string))
        .collect()
}

/// A 101 answer to an SPDY upgrade with the chosen protocol.
pub fn spdy_switching(protocol: &str) -> Response {
    http::Response::builder()
        .status(http::StatusCode::SWITCHING_PROTOCOLS)
        .header(http::header::CONNECTION, "Upgrade")
        .header(http::header::UPGRADE, "SPDY/3.1")
        .header("X-Stream-Protocol-Version", protocol)
        .body(axum::body::Body::empty())
        .unwrap_or_else(|_| http::StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn handle(
    st: AppState,
    ns: String,
    pod: String,
    container: String,
    req: Request,
    kind: Kind,
) -> Result<Response, HttpError> {
    let mut wanted = Wanted::default();
    let mut command = Vec::new();
    for (k, v) in query_pairs(req.uri().query()) {
        match k.as_str() {
            "command" => command.push(v),
            "stdin" | "input" => wanted.stdin = is_true(&v),
            "stdout" | "output" => wanted.stdout = is_true(&v),
            "stderr" | "error" => wanted.stderr = is_true(&v),
            "tty" => wanted.tty = is_true(&v),
            _ => {}
        }
    }
    if kind == Kind::Exec && command.is_empty() {
        return Err(HttpError::bad_request(
            "you must specify at least 1 command",
        ));
    }
    if !(wanted.stdin || wanted.stdout || wanted.stderr) {
        return Err(HttpError::bad_request(
            "you must specify at least one of stdin, stdout, stderr",
        ));
    }
    let target = find_container(st.runtime.as_ref(), &ns, &pod, &container, false).await?;
    if target.state != ContainerState::Running {
        return Err(HttpError::bad_request(format!(
            "container {container:?} in pod {pod:?} is not running"
        )));
    }
    let job = Job {
        st: st.clone(),
        kind,
        id: target.id.clone(),
        log_path: target.log_path.clone(),
        command,
        wanted,
    };
    if wants_websocket(req.headers()) {
        let (mut parts, _) = req.into_parts();
        let ws = WebSocketUpgrade::from_request_parts(&mut parts, &())
            .await
            .map_err(|e| HttpError::bad_request(format!("websocket upgrade: {e}")))?;
        let ws = ws.protocols(channels::WS_PROTOCOLS.iter().copied());
        let protocol = ws
            .selected_protocol()
            .and_then(|p| p.to_str().ok())
            .unwrap_or("")
            .to_string();
        return Ok(ws
            .on_upgrade(move |socket| async move {
                let ch = Channels::from_ws(socket, &protocol, wanted);
                job.run(ch).await;
            })
            .into_response());
    }
    let offered = offered_protocols(req.headers());
    let Some(protocol) = channels::negotiate(&offered, channels::SPDY_PROTOCOLS) else {
        return Err(HttpError(
            403,
            format!(
                "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server supports {:?}",
                channels::SPDY_PROTOCOLS
            ),
        ));
    };
    let mut req = req;
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let io = match on_upgrade.await {
            Ok(u) => TokioIo::new(u),
            Err(e) => {
                tracing::debug!(error = %e, "exec: upgrade failed");
                return;
            }
        };
        let session = Session::start(io);
        if let Some(ch) = Channels::from_spdy(session, protocol, wanted).await {
            job.run(ch).await;
        }
    });
    Ok(spdy_switching(protocol))
}

struct Job {
    st: AppState,
    kind: Kind,
    id: String,
    log_path: std::path::PathBuf,
    command: Vec<String>,
    wanted: Wanted,
}

impl Job {
    async fn run(self, mut ch: Channels) {
        let outcome = match self.kind {
            Kind::Exec => self.exec(&mut ch).await,
            Kind::Attach => self.attach(&ch).await,
        };
        ch.stdout.close().await;
        ch.stderr.close().await;
        ch.report(&outcome).await;
        ch.finish().await;
    }

    async fn exec(&self, ch: &mut Channels) -> Outcome {
        let request = ExecRequest {
            cmd: self.command.clone(),
            tty: self.wanted.tty,
            stdin: self.wanted.stdin,
        };
        let session = match self.st.runtime.exec(&self.id, &request).await {
            Ok(s) => s,
            Err(e) => return Outcome::Failed(format!("error executing command in container: {e}")),
        };
        // Resize requests need a handle on the pty the runtime does not expose yet: drained.
        if let Some(mut resize) = ch.resize.take() {
            tokio::spawn(async move { while resize.recv().await.is_some() {} });
        }
        let stdin_task = match (session.stdin, ch.stdin.take()) {
            (Some(mut w), Some(mut rx)) => Some(tokio::spawn(async move {
                while let Some(data) = rx.recv().await {
                    if w.write_all(&data).await.is_err() {
                        break;
                    }
                    let _ = w.flush().await;
                }
                let _ = w.shutdown().await;
            })),
            _ => None,
        };
        let out = copy_out(session.stdout, ch.stdout.clone());
        let err = async {
            if let Some(r) = session.stderr {
                copy_out(r, ch.stderr.clone()).await;
            }
        };
        let ((), (), code) = tokio::join!(out, err, session.exit);
        if let Some(t) = stdin_task {
            t.abort();
        }
        match code {
            Ok(c) => Outcome::Exited(c),
            Err(e) => Outcome::Failed(format!("error executing command in container: {e}")),
        }
    }

    /// The runtime cannot attach to a container's stdio yet: output is followed from the log
    /// file (from now on, as attach shows only new output); stdin is refused honestly.
    async fn attach(&self, ch: &Channels) -> Outcome {
        if self.wanted.stdin {
            return Outcome::Failed(
                "attaching to a container's stdin is not supported by this runtime yet".into(),
            );
        }
        let offset = super::logs::file_len(&self.log_path).await;
        let (out_tx, mut out_rx) = mpsc::channel::<Bytes>(16);
        let (err_tx, mut err_rx) = mpsc::channel::<Bytes>(16);
        let follow = tokio::spawn(super::logs::follow_streams(
            self.log_path.clone(),
            offset,
            self.st.runtime.clone(),
            self.id.clone(),
            out_tx,
            err_tx,
            self.st.shutdown.clone(),
        ));
        let stderr = if self.wanted.tty {
            ch.stdout.clone()
        } else {
            ch.stderr.clone()
        };
        // Each pump owns its receiver, so a gone client also stops the log follower.
        let stdout = ch.stdout.clone();
        let a = async move {
            while let Some(b) = out_rx.recv().await {
                if stdout.write(&b).await.is_err() {
                    break;
                }
            }
        };
        let b = async move {
            while let Some(b) = err_rx.recv().await {
                if stderr.write(&b).await.is_err() {
                    break;
                }
            }
        };
        tokio::join!(a, b);
        follow.abort();
        Outcome::Exited(0)
    }
}

async fn copy_out(mut r: std::pin::Pin<Box<dyn AsyncRead + Send>>, out: Output) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if out.write(&buf[..n]).await.is_err() {
                    // The client is gone: keep draining so the process never blocks on a pipe.
                    while matches!(r.read(&mut buf).await, Ok(n) if n > 0) {}
                    return;
                }
            }
        }
    }
}
