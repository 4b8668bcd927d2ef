//! HTTPS serving: the TLS listener, per-connection HTTP/1.1 + HTTP/2, and request dispatch.

use crate::allocator::ServiceAllocator;
use crate::cache::WatchCache;
use crate::pki::{self, ClusterCa};
use crate::request::{self, Query, Target};
use crate::response::{self, Body};
use crate::{auth, discovery, handlers};
use capstan_api::ApiError;
use capstan_store::Store;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

/// Settings of the API server (the `capstan server` flags that concern it).
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub bind_address: IpAddr,
    pub https_port: u16,
    /// Service CIDR, e.g. 10.43.0.0/16; its first address is the `kubernetes` Service.
    pub service_cidr: String,
    /// Inclusive NodePort range.
    pub node_port_range: (u16, u16),
    /// Extra SANs for the serving certificate.
    pub tls_sans: Vec<String>,
    /// Static bearer tokens, upstream's `--token-auth-file` CSV: token,user,uid,"group1,group2".
    pub token_auth_file: Option<PathBuf>,
    /// Where the audit log is written (JSON lines); none when unset.
    pub audit_log_path: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("certificates")]
    Pki(#[from] pki::PkiError),
    #[error("TLS configuration")]
    Tls(#[from] rustls::Error),
    #[error("binding {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("loading the watch cache")]
    Cache(#[from] crate::cache::CacheError),
    #[error("bootstrapping initial objects: {0}")]
    Bootstrap(String),
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// Shared state of all request handlers.
pub struct ApiServer {
    pub store: Arc<dyn Store>,
    pub cache: Arc<WatchCache>,
    pub config: ServerConfig,
    pub allocator: Arc<ServiceAllocator>,
    pub shutdown: watch::Receiver<bool>,
    /// Serialises read-check-write sequences that must not interleave (allocations, deletes).
    pub write_lock: tokio::sync::Mutex<()>,
    /// Signs service account tokens (TokenRequest).
    pub tokens: crate::tokens::TokenSigner,
    /// Users of `--token-auth-file`, read at start.
    pub static_tokens: auth::tokens::StaticTokens,
    /// The audit log's queue, when `--audit-log-path` is set.
    pub audit: Option<auth::audit::AuditLog>,
}

/// The client's address, put in every request's extensions by the accept loop.
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub SocketAddr);

/// A running API server: the bound address and a future that completes on shutdown.
pub struct Running {
    pub addr: SocketAddr,
    pub server: Arc<ApiServer>,
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn tls_config(ca: &ClusterCa, config: &ServerConfig) -> Result<rustls::ServerConfig, ServeError> {
    let mut dns = vec![
        "localhost".to_string(),
        "kubernetes".to_string(),
        "kubernetes.default".to_string(),
        "kubernetes.default.svc".to_string(),
        "kubernetes.default.svc.cluster.local".to_string(),
    ];
    let mut ips: Vec<IpAddr> = vec![
        IpAddr::from([127, 0, 0, 1]),
        IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
    ];
    if !config.bind_address.is_unspecified() && !ips.contains(&config.bind_address) {
        ips.push(config.bind_address);
    }
    if let Ok(first) = crate::allocator::first_service_ip(&config.service_cidr) {
        ips.push(IpAddr::V4(first));
    }
    for san in &config.tls_sans {
        match san.parse::<IpAddr>() {
            Ok(ip) => ips.push(ip),
            Err(_) => dns.push(san.clone()),
        }
    }
    let serving = ca.serving_cert(&dns, &ips)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut serving.cert_pem.as_bytes())
        .filter_map(Result::ok)
        .collect();
    let key = rustls_pemfile::private_key(&mut serving.key_pem.as_bytes())
        .ok()
        .flatten()
        .ok_or_else(|| ServeError::Config("generated serving key unreadable".into()))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca.cert_pem.as_bytes()).filter_map(Result::ok) {
        roots.add(c)?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
        .allow_unauthenticated()
        .build()
        .map_err(|e| ServeError::Config(format!("client verifier: {e}")))?;
    let mut tls = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tls)
}

/// Start the API server on `store`: load the CA, write the admin kubeconfig, fill the watch
/// cache, create the initial objects, bind and serve until `shutdown` becomes true.
pub async fn start(
    config: ServerConfig,
    store: Arc<dyn Store>,
    shutdown: watch::Receiver<bool>,
) -> Result<Running, ServeError> {
    let static_tokens = match &config.token_auth_file {
        Some(path) => auth::tokens::StaticTokens::load(path).map_err(ServeError::Config)?,
        None => auth::tokens::StaticTokens::default(),
    };
    let tls_dir = config.data_dir.join("tls");
    let ca = ClusterCa::shared(store.as_ref(), &tls_dir).await?;
    auth::join::ensure(store.as_ref(), &config.data_dir, &ca.cert_pem).await?;
    let tls = tls_config(&ca, &config)?;
    let addr = SocketAddr::new(config.bind_address, config.https_port);
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| ServeError::Bind { addr, source })?;

    let kubeconfig_path = config.data_dir.join("admin.kubeconfig");
    let host = if config.bind_address.is_unspecified() {
        IpAddr::from([127, 0, 0, 1])
    } else {
        config.bind_address
    };
    let url = format!("https://{}", SocketAddr::new(host, addr.port()));
    let admin = ca.client_cert("system:admin", &["system:masters"])?;
    pki::write_private(
        &kubeconfig_path,
        pki::kubeconfig(&url, &ca.cert_pem, &admin, "capstan").as_bytes(),
    )?;

    let (cache, cache_task) = WatchCache::start(store.clone(), shutdown.clone()).await?;
    let allocator = Arc::new(
        ServiceAllocator::new(&config.service_cidr, config.node_port_range, store.clone())
            .map_err(ServeError::Config)?,
    );
    let tokens = crate::tokens::TokenSigner::shared(store.as_ref())
        .await
        .map_err(|e| ServeError::Bootstrap(e.to_string()))?;
    let mut audit_task = None;
    let audit = match &config.audit_log_path {
        Some(path) => {
            let (log, task) = auth::audit::AuditLog::start(path, shutdown.clone())
                .await
                .map_err(|e| ServeError::Config(format!("audit log {}: {e}", path.display())))?;
            audit_task = Some(task);
            Some(log)
        }
        None => None,
    };
    let server = Arc::new(ApiServer {
        tokens,
        static_tokens,
        audit,
        store,
        cache,
        config,
        allocator,
        shutdown: shutdown.clone(),
        write_lock: tokio::sync::Mutex::new(()),
    });
    if let Err(e) = server.allocator.repair(crate::allocator::LEAK_GRACE).await {
        tracing::warn!(error = %e, "service allocation repair at start failed");
    }
    let endpoints = crate::bootstrap::ensure_initial_objects(&server, addr)
        .await
        .map_err(|e| ServeError::Bootstrap(e.message))?;

    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let accept_task = tokio::spawn(accept_loop(
        listener,
        acceptor,
        server.clone(),
        shutdown.clone(),
    ));
    let compact_task = tokio::spawn(crate::bootstrap::compaction_loop(
        server.clone(),
        shutdown.clone(),
    ));
    let repair_task = tokio::spawn(crate::allocator::repair_loop(
        server.allocator.clone(),
        shutdown.clone(),
    ));
    let endpoints_task = tokio::spawn(endpoints.run(shutdown));
    tracing::info!(%addr, kubeconfig = %kubeconfig_path.display(), "API server listening");
    let mut tasks = vec![
        cache_task,
        accept_task,
        compact_task,
        repair_task,
        endpoints_task,
    ];
    tasks.extend(audit_task);
    Ok(Running {
        addr,
        server,
        tasks,
    })
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    server: Arc<ApiServer>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.changed() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let server = server.clone();
        let mut conn_shutdown = shutdown.clone();
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(t)) => t,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
            let peer_user = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(crate::auth::x509::user_of);
            let identity = crate::auth::PeerIdentity(peer_user);
            let svc = service_fn(move |mut req: http::Request<Incoming>| {
                let server = server.clone();
                req.extensions_mut().insert(identity.clone());
                req.extensions_mut().insert(PeerAddr(peer));
                async move { Ok::<_, std::convert::Infallible>(dispatch(server, req).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => if let Err(e) = r { tracing::debug!(%peer, error = %e, "connection ended with error") },
                _ = conn_shutdown.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                }
            }
        });
    }
}

async fn dispatch(server: Arc<ApiServer>, req: http::Request<Incoming>) -> http::Response<Body> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let query = Query::parse(req.uri().query());
    let started = std::time::Instant::now();
    let target = request::parse_path(&path);
    if target == Target::CaCerts {
        // Public: agents fetch the CA before they have credentials (checked against the token).
        return auth::join::cacerts(&server, &method);
    }
    let audit_start = server.audit.as_ref().map(|_| {
        let peer = req.extensions().get::<PeerAddr>().map(|p| p.0.ip());
        let verb = auth::verb_of(&method, &target, &query);
        auth::audit::Start::new(req.headers(), req.uri(), peer, verb, &target)
    });
    let mut who = Admitted::default();
    let (resp, refusal) = match admit(&server, req, &method, &path, &target, &query, &mut who).await
    {
        Ok(req) => (
            route(&server, req, &method, &path, target, query).await,
            None,
        ),
        Err(e) => (response::error(&e), Some(e)),
    };
    let resp = match (&server.audit, &audit_start) {
        (Some(log), Some(start)) => {
            let event = auth::audit::event(
                start,
                &auth::audit::Finish {
                    user: who.requestor.as_ref(),
                    impersonated: who.impersonated.as_ref(),
                    code: resp.status().as_u16(),
                    error: refusal.as_ref(),
                },
            );
            log.on_complete(resp, event)
        }
        _ => resp,
    };
    tracing::debug!(%method, %path, status = resp.status().as_u16(), micros = started.elapsed().as_micros() as u64, "request");
    resp
}

async fn route(
    server: &Arc<ApiServer>,
    req: http::Request<Incoming>,
    method: &http::Method,
    path: &str,
    target: Target,
    query: Query,
) -> http::Response<Body> {
    match target {
        Target::Version => response::json(200, &discovery::version()),
        Target::Health(_) => response::text(200, "ok"),
        Target::CoreVersions => discovery::core_response(req.headers(), &server.config),
        Target::Groups | Target::Group(_) | Target::GroupVersion(..)
            if method != http::Method::GET =>
        {
            response::error(&ApiError::new(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            ))
        }
        Target::Groups => discovery::groups_response(req.headers()),
        Target::Group(g) => response::json(200, &discovery::group(&g)),
        Target::GroupVersion(g, v) => response::json(200, &discovery::resource_list(&g, &v)),
        Target::OpenApiV2 => discovery::openapi_v2_response(req.headers()),
        Target::OpenApiV3Index => response::json(200, crate::openapi::openapi_v3_index()),
        Target::OpenApiV3(p) => match crate::openapi::openapi_v3_group_version(&p) {
            Some(doc) => response::json(200, doc),
            None => response::error(&ApiError::path_not_found(path)),
        },
        Target::Resource(rp) => handlers::handle(server, rp, req, query).await,
        Target::NotFound => response::error(&ApiError::path_not_found(path)),
        Target::CaCerts => auth::join::cacerts(server, method),
        Target::NodeCredentials => auth::join::credentials(server, req)
            .await
            .unwrap_or_else(|e| response::error(&e)),
    }
}

/// Who a request came from and, with impersonation headers, whom it acts as (for the audit log).
#[derive(Default)]
struct Admitted {
    requestor: Option<auth::UserInfo>,
    impersonated: Option<auth::UserInfo>,
}

/// Authenticates (client certificate or bearer token), applies impersonation and authorizes a
/// request; the handlers then find the user it acts as in the extensions.
async fn admit(
    server: &ApiServer,
    mut req: http::Request<Incoming>,
    method: &http::Method,
    path: &str,
    target: &Target,
    query: &Query,
    who: &mut Admitted,
) -> Result<http::Request<Incoming>, ApiError> {
    let peer = req
        .extensions()
        .get::<auth::PeerIdentity>()
        .cloned()
        .unwrap_or_default();
    let requestor = match auth::authenticate(server, req.headers(), &peer).await? {
        Some(user) => user,
        None if auth::is_public(path) => {
            auth::UserInfo::new("system:anonymous", &["system:unauthenticated"])
        }
        None => return Err(ApiError::unauthorized()),
    };
    // Credentials are not passed on (e.g. to a kubelet through a proxy), as upstream.
    req.headers_mut().remove(http::header::AUTHORIZATION);
    who.requestor = Some(requestor.clone());
    let user = if auth::impersonation::requested(req.headers()) {
        let acting = auth::impersonation::impersonate(server, &requestor, req.headers()).await?;
        auth::impersonation::strip(req.headers_mut());
        who.impersonated = acting.clone();
        acting.unwrap_or(requestor)
    } else {
        requestor
    };
    let attrs = auth::attributes(&user, method, path, target, query);
    match auth::authorize(server, &attrs).await {
        auth::Decision::Allow => {}
        auth::Decision::Deny(reason) => return Err(auth::forbidden(&attrs, &reason)),
        auth::Decision::NoOpinion => return Err(auth::forbidden(&attrs, "")),
    }
    req.extensions_mut().insert(user);
    Ok(req)
}
