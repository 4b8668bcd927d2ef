//! pods/log, pods/exec, pods/attach and pods/portforward: find the pod's node and container,
//! then proxy to that node's kubelet API over HTTPS — logs as a streamed GET, the others as a
//! raw HTTP Upgrade tunnel (SPDY or WebSocket bytes copied both ways after both sides
//! switched protocols).
//!
//! The API server presents its kubelet client certificate (`kube-apiserver-kubelet-client`,
//! `system:masters`) and verifies the kubelet's serving certificate against the cluster CA.

use std::sync::Arc;

use bytes::Bytes;
use capstan_api::{ApiError, Subresource};
use http::Method;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::request::{Query, ResourcePath};
use crate::response::{self, Body};
use crate::server::ApiServer;

/// True for the subresources served by the kubelet.
pub(crate) fn is_proxied(sub: Subresource) -> bool {
    matches!(
        sub,
        Subresource::Log | Subresource::Exec | Subresource::Attach | Subresource::PortForward
    )
}

/// Headers that belong to the client↔API server hop and must not reach the kubelet.
const HOP_HEADERS: &[&str] = &[
    "authorization",
    "host",
    "content-length",
    "transfer-encoding",
];

pub(crate) async fn handle(
    server: &ApiServer,
    rp: &ResourcePath,
    sub: Subresource,
    mut req: http::Request<Incoming>,
    q: &Query,
) -> Result<http::Response<Body>, ApiError> {
    let method = req.method().clone();
    let allowed = match sub {
        Subresource::Log => method == Method::GET,
        _ => method == Method::GET || method == Method::POST,
    };
    if !allowed {
        return Err(ApiError::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource ({method})"),
        ));
    }
    let info = rp.info();
    let ns = rp.namespace.clone().unwrap_or_default();
    let name = rp.name.clone().unwrap_or_default();
    let pod = get_object(server, info, Some(&ns), &name)
        .await?
        .ok_or_else(|| ApiError::not_found(info, &name))?;
    let node_name = pod["spec"]["nodeName"].as_str().unwrap_or("");
    if node_name.is_empty() {
        return Err(ApiError::bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    }
    let path = match sub {
        Subresource::PortForward => format!("/portForward/{}/{}", enc(&ns), enc(&name)),
        _ => {
            let container = pick_container(&pod, &name, q.get("container"))?;
            let prefix = match sub {
                Subresource::Log => "containerLogs",
                Subresource::Exec => "exec",
                _ => "attach",
            };
            format!("/{prefix}/{}/{}/{}", enc(&ns), enc(&name), enc(&container))
        }
    };
    let query: Vec<(String, String)> =
        form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .filter(|(k, _)| k != "container")
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
    let mut target = path;
    if !query.is_empty() {
        target.push('?');
        target.push_str(
            &form_urlencoded::Serializer::new(String::new())
                .extend_pairs(query)
                .finish(),
        );
    }
    let node_info = capstan_api::resources::find("", "v1", "nodes")
        .ok_or_else(|| ApiError::internal("nodes are not served"))?;
    let node = get_object(server, node_info, None, node_name)
        .await?
        .ok_or_else(|| ApiError::not_found(node_info, node_name))?;
    let (host, port) = kubelet_endpoint(&node)
        .ok_or_else(|| ApiError::bad_request(format!("node {node_name} has no usable address")))?;

    let upgrade = sub != Subresource::Log;
    let mut out = http::Request::builder().method(method).uri(&target);
    for (k, v) in req.headers() {
        if !HOP_HEADERS.contains(&k.as_str()) {
            out = out.header(k, v);
        }
    }
    let authority = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    out = out.header(http::header::HOST, &authority);
    let out = out
        .body(Empty::<Bytes>::new())
        .map_err(|e| ApiError::internal(format!("building the kubelet request: {e}")))?;
    let mut resp = send(&server.config.data_dir, &host, port, out)
        .await
        .map_err(|e| {
            ApiError::service_unavailable(format!(
                "error dialing backend: dial tcp {authority}: {e}"
            ))
        })?;
    let status = resp.status();
    if upgrade && status == http::StatusCode::SWITCHING_PROTOCOLS {
        let client_upgrade = hyper::upgrade::on(&mut req);
        let kubelet_upgrade = hyper::upgrade::on(&mut resp);
        let mut reply = http::Response::builder().status(status);
        for (k, v) in resp.headers() {
            reply = reply.header(k, v);
        }
        let mut shutdown = server.shutdown.clone();
        tokio::spawn(async move {
            let (client, kubelet) = match tokio::join!(client_upgrade, kubelet_upgrade) {
                (Ok(c), Ok(k)) => (c, k),
                (c, k) => {
                    tracing::debug!(
                        client = c.is_ok(),
                        kubelet = k.is_ok(),
                        "proxy upgrade failed"
                    );
                    return;
                }
            };
            let mut client = TokioIo::new(client);
            let mut kubelet = TokioIo::new(kubelet);
            tokio::select! {
                r = tokio::io::copy_bidirectional(&mut client, &mut kubelet) => {
                    if let Err(e) = r { tracing::debug!(error = %e, "stream proxy ended"); }
                }
                _ = shutdown.changed() => {}
            }
        });
        return reply
            .body(response::full(Bytes::new()))
            .map_err(|e| ApiError::internal(e.to_string()));
    }
    if !status.is_success() {
        // The kubelet answers errors in plain text; clients expect a Status.
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&body).trim().to_string();
        let reason = match status.as_u16() {
            400 => "BadRequest",
            403 => "Forbidden",
            404 => "NotFound",
            _ => "InternalError",
        };
        return Err(ApiError::new(status.as_u16(), reason, text));
    }
    let mut reply = http::Response::builder().status(status);
    if let Some(ct) = resp.headers().get(http::header::CONTENT_TYPE) {
        reply = reply.header(http::header::CONTENT_TYPE, ct);
    }
    let body = resp.into_body().map_err(|_| ()).boxed().into_data_stream();
    // Errors mid-stream end the body (the client sees a short read), as Body cannot fail.
    let stream = futures::StreamExt::filter_map(body, |r| async move {
        r.ok()
            .map(|b| Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(b)))
    });
    let body = http_body_util::StreamBody::new(stream).boxed();
    reply
        .body(body)
        .map_err(|e| ApiError::internal(e.to_string()))
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

async fn get_object(
    server: &ApiServer,
    info: &'static capstan_api::ResourceInfo,
    ns: Option<&str>,
    name: &str,
) -> Result<Option<Value>, ApiError> {
    let key = info.store_key(ns, name);
    match server
        .store
        .get(&key)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
    {
        Some(kv) => serde_json::from_slice(&kv.value)
            .map(Some)
            .map_err(|e| ApiError::internal(e.to_string())),
        None => Ok(None),
    }
}

/// The container a request means: the named one, else the default-container annotation, else
/// the only container; upstream's messages otherwise.
pub(crate) fn pick_container(
    pod: &Value,
    name: &str,
    asked: Option<&str>,
) -> Result<String, ApiError> {
    let names = |field: &str| -> Vec<String> {
        pod["spec"][field]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| c["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let containers = names("containers");
    let init = names("initContainers");
    let ephemeral = names("ephemeralContainers");
    if let Some(c) = asked.filter(|c| !c.is_empty()) {
        if containers
            .iter()
            .chain(&init)
            .chain(&ephemeral)
            .any(|x| x == c)
        {
            return Ok(c.to_string());
        }
        return Err(ApiError::bad_request(format!(
            "container {c} is not valid for pod {name}"
        )));
    }
    if let Some(d) =
        pod["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"].as_str()
        && containers.iter().any(|x| x == d)
    {
        return Ok(d.to_string());
    }
    if containers.len() == 1 {
        return Ok(containers[0].clone());
    }
    let mut msg = format!(
        "a container name must be specified for pod {name}, choose one of: [{}]",
        containers.join(" ")
    );
    if !init.is_empty() {
        msg.push_str(&format!(
            " or one of the init containers: [{}]",
            init.join(" ")
        ));
    }
    Err(ApiError::bad_request(msg))
}

/// The node's InternalIP (else its first address) and kubelet port (10250 when unset).
pub(crate) fn kubelet_endpoint(node: &Value) -> Option<(String, u16)> {
    let addrs = node["status"]["addresses"].as_array()?;
    let pick = |t: &str| {
        addrs
            .iter()
            .find(|a| a["type"] == t)
            .and_then(|a| a["address"].as_str())
    };
    let host = pick("InternalIP")
        .or_else(|| pick("ExternalIP"))
        .or_else(|| addrs.first().and_then(|a| a["address"].as_str()))?;
    let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_u64()
        .filter(|p| *p > 0 && *p <= u16::MAX as u64)
        .unwrap_or(10250) as u16;
    Some((host.to_string(), port))
}

/// One request to the kubelet over a fresh TLS connection (HTTP/1.1, upgrades allowed).
async fn send(
    data_dir: &std::path::Path,
    host: &str,
    port: u16,
    req: http::Request<Empty<Bytes>>,
) -> Result<http::Response<Incoming>, String> {
    let tcp = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio::net::TcpStream::connect((host, port)),
    )
    .await
    .map_err(|_| "i/o timeout".to_string())?
    .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let connector = tokio_rustls::TlsConnector::from(tls_client(data_dir)?);
    let server_name =
        rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
    let tls = connector
        .connect(server_name, tcp)
        .await
        .map_err(|e| format!("tls: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "kubelet connection ended");
        }
    });
    sender.send_request(req).await.map_err(|e| e.to_string())
}

/// The client name the API server presents to kubelets (kubeadm's choice), in
/// `system:masters` so kubelets allow it without asking back.
pub const KUBELET_CLIENT_USER: &str = "kube-apiserver-kubelet-client";

/// TLS to kubelets: the API server's kubelet client certificate, and kubelet serving
/// certificates verified against the cluster CA. Built once per data dir (one per API server).
fn tls_client(data_dir: &std::path::Path) -> Result<Arc<rustls::ClientConfig>, String> {
    type Configs = std::collections::HashMap<std::path::PathBuf, Arc<rustls::ClientConfig>>;
    static CONFIGS: std::sync::OnceLock<std::sync::Mutex<Configs>> = std::sync::OnceLock::new();
    let configs = CONFIGS.get_or_init(Default::default);
    if let Some(c) = configs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(data_dir)
    {
        return Ok(c.clone());
    }
    let cfg = Arc::new(kubelet_client_config(&data_dir.join("tls"))?);
    configs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(data_dir.to_path_buf(), cfg.clone());
    Ok(cfg)
}

/// A client configuration with a fresh kubelet client certificate signed by the CA in `tls_dir`.
pub fn kubelet_client_config(tls_dir: &std::path::Path) -> Result<rustls::ClientConfig, String> {
    let ca = crate::pki::ClusterCa::load(tls_dir)
        .map_err(|e| format!("loading the cluster CA: {e}"))?
        .ok_or("the cluster CA is missing")?;
    let client = ca
        .client_cert(KUBELET_CLIENT_USER, &[crate::auth::MASTERS])
        .map_err(|e| format!("kubelet client certificate: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca.cert_pem.as_bytes()).filter_map(Result::ok) {
        roots.add(c).map_err(|e| e.to_string())?;
    }
    let certs: Vec<_> = rustls_pemfile::certs(&mut client.cert_pem.as_bytes())
        .filter_map(Result::ok)
        .collect();
    let key = rustls_pemfile::private_key(&mut client.key_pem.as_bytes())
        .ok()
        .flatten()
        .ok_or("kubelet client key unreadable")?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|e| e.to_string())?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn container_defaults_follow_upstream() {
        let one = json!({"spec": {"containers": [{"name": "a"}]}});
        assert_eq!(pick_container(&one, "p", None).unwrap(), "a");
        let two = json!({"metadata": {}, "spec": {"containers": [{"name": "a"}, {"name": "b"}], "initContainers": [{"name": "i"}]}});
        let e = pick_container(&two, "p", None).unwrap_err();
        assert!(e.to_status()["message"].as_str().unwrap().contains(
            "a container name must be specified for pod p, choose one of: [a b] or one of the init containers: [i]"
        ));
        assert_eq!(pick_container(&two, "p", Some("i")).unwrap(), "i");
        assert!(pick_container(&two, "p", Some("zz")).is_err());
        let annotated = json!({"metadata": {"annotations": {"kubectl.kubernetes.io/default-container": "b"}},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}]}});
        assert_eq!(pick_container(&annotated, "p", None).unwrap(), "b");
    }

    /// Serves one TLS handshake with `cert`; returns the port and the client name it saw.
    async fn tls_once(
        cert: crate::pki::CertKey,
        ca_pem: &str,
    ) -> (u16, tokio::task::JoinHandle<Option<String>>) {
        let certs: Vec<_> = rustls_pemfile::certs(&mut cert.cert_pem.as_bytes())
            .map(Result::unwrap)
            .collect();
        let key = rustls_pemfile::private_key(&mut cert.key_pem.as_bytes())
            .unwrap()
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .unwrap();
        let cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.ok()?;
            let tls = acceptor.accept(tcp).await.ok()?;
            let chain = tls.get_ref().1.peer_certificates()?;
            crate::auth::x509::user_of(chain).map(|u| u.name)
        });
        (port, task)
    }

    #[tokio::test]
    async fn kubelets_are_verified_and_see_the_api_server_client_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let ca = crate::pki::ClusterCa::load_or_create(dir.path()).unwrap();
        let cfg = Arc::new(kubelet_client_config(dir.path()).unwrap());
        let connect = |port: u16| {
            let cfg = cfg.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .unwrap();
                let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
                tokio_rustls::TlsConnector::from(cfg)
                    .connect(name, tcp)
                    .await
            }
        };
        let signed = ca
            .kubelet_serving_cert("system:node:n1", &[], &["127.0.0.1".parse().unwrap()])
            .unwrap();
        let (port, seen) = tls_once(signed, &ca.cert_pem).await;
        let mut stream = connect(port).await.expect("CA-signed kubelet accepted");
        tokio::io::AsyncWriteExt::flush(&mut stream).await.unwrap();
        assert_eq!(seen.await.unwrap().as_deref(), Some(KUBELET_CLIENT_USER));
        // A kubelet certificate from elsewhere is refused.
        let other = crate::pki::ClusterCa::generate().unwrap();
        let forged = other
            .kubelet_serving_cert("system:node:n1", &[], &["127.0.0.1".parse().unwrap()])
            .unwrap();
        let (port, _seen) = tls_once(forged, &ca.cert_pem).await;
        assert!(connect(port).await.is_err());
    }

    #[test]
    fn endpoint_prefers_internal_ip() {
        let node = json!({"status": {"addresses": [{"type": "Hostname", "address": "n"}, {"type": "InternalIP", "address": "10.0.0.2"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 12345}}}});
        assert_eq!(kubelet_endpoint(&node), Some(("10.0.0.2".into(), 12345)));
        let bare = json!({"status": {"addresses": [{"type": "Hostname", "address": "n"}]}});
        assert_eq!(kubelet_endpoint(&bare), Some(("n".into(), 10250)));
    }
}
