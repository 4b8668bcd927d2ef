//! pods/log, pods/exec, pods/attach and pods/portforward: find the pod's node and container,
//! then proxy to that node's kubelet API over HTTPS — logs as a streamed GET, the others as a
//! raw HTTP Upgrade tunnel (SPDY or WebSocket bytes copied both ways after both sides
//! switched protocols).
//!
//! The kubelet's serving certificate is not verified and the API server presents no client
//! certificate yet; the security issue adds both.

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
    let mut resp = send(&host, port, out).await.map_err(|e| {
        ApiError::service_unavailable(format!("error dialing backend: dial tcp {authority}: {e}"))
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
    let connector = tokio_rustls::TlsConnector::from(tls_client()?);
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

fn tls_client() -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = Arc::new(NoVerify(provider.clone()));
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Accepts any kubelet certificate (signatures are still checked) until kubelet serving
/// certificates are issued by the cluster CA (security issue).
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
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

    #[test]
    fn endpoint_prefers_internal_ip() {
        let node = json!({"status": {"addresses": [{"type": "Hostname", "address": "n"}, {"type": "InternalIP", "address": "10.0.0.2"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 12345}}}});
        assert_eq!(kubelet_endpoint(&node), Some(("10.0.0.2".into(), 12345)));
        let bare = json!({"status": {"addresses": [{"type": "Hostname", "address": "n"}]}});
        assert_eq!(kubelet_endpoint(&bare), Some(("n".into(), 10250)));
    }
}
