//! The kubelet HTTPS API the API server proxies to: `/healthz`, `/containerLogs`, `/exec`,
//! `/attach`, `/portForward` and `/stats/summary`, served over TLS with the serving certificate
//! in `cert_dir` (CA-signed when the node joined, else self-signed). Every request is
//! authenticated and authorized first ([`auth`]): client certificates the cluster CA in
//! `cert_dir/ca.crt` signed, or bearer tokens by TokenReview; SubjectAccessReview decides.

pub mod auth;
pub mod channels;
pub mod exec;
pub mod logs;
pub mod pods;
pub mod portforward;
pub mod spdy;
pub mod stats;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use bytes::Bytes;
use capstan_runtime::cri::RuntimeService;
use capstan_runtime::cri::runtime_service::ContainerState;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use pods::{HttpError, find_container, query_map};

/// Where and how the kubelet API listens.
#[derive(Clone, Debug)]
pub struct KubeletServerConfig {
    /// 0.0.0.0:10250 by default (flag --kubelet-port).
    pub bind: SocketAddr,
    /// The serving certificate (`kubelet.crt`, `kubelet.key`; self-signed when missing) and
    /// the CA client certificates must be signed by (`ca.crt`) live here.
    pub cert_dir: PathBuf,
    pub pods_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("serving certificate: {0}")]
    Cert(String),
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServerError {
    let context = context.into();
    move |source| ServerError::Io { context, source }
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub runtime: Arc<dyn RuntimeService>,
    pub shutdown: CancellationToken,
    pub pods_dir: PathBuf,
}

/// Binds, then serves the kubelet API until `shutdown`; returns the bound address and the
/// serving task (which ends after open connections were asked to finish).
pub async fn serve(
    config: KubeletServerConfig,
    runtime: Arc<dyn RuntimeService>,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, JoinHandle<()>), ServerError> {
    serve_with(config, runtime, auth::KubeletAuth::default(), shutdown).await
}

/// [`serve`], checking callers against the API server in `auth` (TokenReview,
/// SubjectAccessReview); without one only `system:masters` client certificates get in.
pub async fn serve_with(
    config: KubeletServerConfig,
    runtime: Arc<dyn RuntimeService>,
    auth: auth::KubeletAuth,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, JoinHandle<()>), ServerError> {
    let tls = tls_config(&config.cert_dir, config.bind)?;
    let listener = TcpListener::bind(config.bind)
        .await
        .map_err(io_err(format!(
            "binding the kubelet API to {}",
            config.bind
        )))?;
    let addr = listener
        .local_addr()
        .map_err(io_err("kubelet API address"))?;
    let state = AppState {
        runtime,
        shutdown: shutdown.clone(),
        pods_dir: config.pods_dir.clone(),
    };
    let router = router(state).layer(axum::middleware::from_fn_with_state(
        auth::Checker::new(auth),
        auth::check,
    ));
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let task = tokio::spawn(accept_loop(listener, acceptor, router, shutdown));
    Ok((addr, task))
}

/// The routes, upstream's paths.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/containerLogs/{ns}/{pod}/{container}", get(container_logs))
        .route("/exec/{ns}/{pod}/{container}", any(exec::exec))
        .route("/attach/{ns}/{pod}/{container}", any(exec::attach))
        .route("/portForward/{ns}/{pod}", any(portforward::port_forward))
        .route("/stats/summary", get(stats::summary))
        .with_state(state)
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    router: Router,
    shutdown: CancellationToken,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "kubelet API: accept failed");
                    // Back off briefly on fd exhaustion instead of spinning.
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
                    }
                }
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = router.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(t)) => t,
                    _ => {
                        tracing::debug!(%peer, "kubelet API: TLS handshake failed");
                        return;
                    }
                };
            let peer_cert = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(auth::caller_of);
            let service =
                TowerToHyperService::new(router.layer(axum::Extension(auth::PeerCert(peer_cert))));
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "kubelet API connection ended with error");
                },
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                }
            }
        });
    }
}

async fn container_logs(
    State(st): State<AppState>,
    UrlPath((ns, pod, container)): UrlPath<(String, String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    let opts =
        match logs::LogOptions::from_query(&query_map(query.as_deref()), jiff::Timestamp::now()) {
            Ok(o) => o,
            Err(e) => return HttpError::bad_request(e).into_response(),
        };
    let c = match find_container(st.runtime.as_ref(), &ns, &pod, &container, opts.previous).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let follow = (opts.follow && !opts.previous && c.state == ContainerState::Running)
        .then(|| (st.runtime.clone(), c.id.clone()));
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    tokio::spawn(logs::stream_file(
        c.log_path.clone(),
        opts,
        follow,
        tx,
        st.shutdown.clone(),
    ));
    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
    });
    http::Response::builder()
        .status(200)
        .header(http::header::CONTENT_TYPE, "text/plain")
        .body(axum::body::Body::from_stream(body))
        .unwrap_or_else(|_| http::StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Loads `<dir>/kubelet.{crt,key}`, creating a self-signed pair on first start; client
/// certificates are verified against `<dir>/ca.crt` when present (optional: tokens also work).
fn tls_config(dir: &Path, bind: SocketAddr) -> Result<rustls::ServerConfig, ServerError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let crt = dir.join("kubelet.crt");
    let key = dir.join("kubelet.key");
    if !crt.exists() || !key.exists() {
        std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".into());
        let mut names = vec![
            host,
            "localhost".to_string(),
            "127.0.0.1".into(),
            "::1".into(),
        ];
        if !bind.ip().is_unspecified() {
            names.push(bind.ip().to_string());
        }
        names.dedup();
        let generated = rcgen::generate_simple_self_signed(names)
            .map_err(|e| ServerError::Cert(e.to_string()))?;
        write_private(&key, generated.signing_key.serialize_pem().as_bytes())?;
        std::fs::write(&crt, generated.cert.pem())
            .map_err(io_err(format!("writing {}", crt.display())))?;
    }
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&crt)
        .map_err(|e| ServerError::Cert(format!("{}: {e}", crt.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| ServerError::Cert(format!("{}: {e}", crt.display())))?;
    let key = PrivateKeyDer::from_pem_file(&key)
        .map_err(|e| ServerError::Cert(format!("{}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ServerError::Cert(e.to_string()))?;
    let ca = dir.join("ca.crt");
    let builder = if ca.exists() {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&ca)
            .map_err(|e| ServerError::Cert(format!("{}: {e}", ca.display())))?
        {
            let c = c.map_err(|e| ServerError::Cert(format!("{}: {e}", ca.display())))?;
            roots
                .add(c)
                .map_err(|e| ServerError::Cert(format!("{}: {e}", ca.display())))?;
        }
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| ServerError::Cert(format!("client verifier: {e}")))?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut cfg = builder
        .with_single_cert(certs, key)
        .map_err(|e| ServerError::Cert(e.to_string()))?;
    // Upgrades (exec, port-forward) need HTTP/1.1; logs work over either.
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), ServerError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(format!("writing {}", path.display())))?;
    f.write_all(data)
        .map_err(io_err(format!("writing {}", path.display())))
}
