//! Container probes (exec, httpGet, tcpSocket; grpc answers "not supported") and the periodic
//! prober task per container and probe kind, with upstream's timing fields and thresholds.

use std::sync::Arc;
use std::time::Duration;

use capstan_runtime::cri::RuntimeService;
use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Which probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    Liveness,
    Readiness,
    Startup,
}

impl ProbeKind {
    pub fn name(self) -> &'static str {
        match self {
            ProbeKind::Liveness => "Liveness",
            ProbeKind::Readiness => "Readiness",
            ProbeKind::Startup => "Startup",
        }
    }
}

/// One probe outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeOutcome {
    Success,
    Failure(String),
}

/// What a prober reports to its pod worker: a result that crossed a threshold, or a single
/// failed attempt (for the Unhealthy event).
#[derive(Clone, Debug)]
pub struct ProbeReport {
    pub container_id: String,
    pub container_name: String,
    pub kind: ProbeKind,
    /// Some(..) when the state changed (success/failure threshold reached).
    pub healthy: Option<bool>,
    /// A failed attempt's message.
    pub failure: Option<String>,
}

/// Where probes go: the runtime (exec) and the pod's IP (network probes).
#[derive(Clone)]
pub struct ProbeTarget {
    pub runtime: Arc<dyn RuntimeService>,
    pub container_id: String,
    pub pod_ip: String,
}

fn resolve_port(port: &IntOrString, container: &Container) -> Result<u16, String> {
    match port {
        IntOrString::Int(p) => u16::try_from(*p).map_err(|_| format!("invalid port {p}")),
        IntOrString::String(name) => {
            if let Ok(p) = name.parse::<u16>() {
                return Ok(p);
            }
            container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .and_then(|p| u16::try_from(p.container_port).ok())
                .ok_or_else(|| format!("couldn't find port {name:?} in container"))
        }
    }
}

/// Runs `probe` once against `target`.
pub async fn probe_once(
    probe: &Probe,
    container: &Container,
    target: &ProbeTarget,
) -> ProbeOutcome {
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
    if let Some(exec) = &probe.exec {
        let cmd = exec.command.clone().unwrap_or_default();
        return match target
            .runtime
            .exec_sync(&target.container_id, &cmd, Some(timeout))
            .await
        {
            Ok(r) if r.exit_code == 0 => ProbeOutcome::Success,
            Ok(r) => {
                let mut out = String::from_utf8_lossy(&r.stdout).into_owned();
                out.push_str(&String::from_utf8_lossy(&r.stderr));
                ProbeOutcome::Failure(out.trim().to_string())
            }
            Err(e) => ProbeOutcome::Failure(format!("command {cmd:?} failed: {e}")),
        };
    }
    if let Some(http) = &probe.http_get {
        let port = match resolve_port(&http.port, container) {
            Ok(p) => p,
            Err(e) => return ProbeOutcome::Failure(e),
        };
        if http.scheme.as_deref() == Some("HTTPS") {
            return ProbeOutcome::Failure("HTTPS probes are not supported yet".into());
        }
        let host = http.host.clone().unwrap_or_else(|| target.pod_ip.clone());
        let path = http.path.clone().unwrap_or_else(|| "/".into());
        let headers: Vec<(String, String)> = http
            .http_headers
            .iter()
            .flatten()
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect();
        return match tokio::time::timeout(timeout, http_get(&host, port, &path, &headers)).await {
            Ok(Ok(code)) if (200..400).contains(&code) => ProbeOutcome::Success,
            Ok(Ok(code)) => {
                ProbeOutcome::Failure(format!("HTTP probe failed with statuscode: {code}"))
            }
            Ok(Err(e)) => ProbeOutcome::Failure(format!(
                "Get \"http://{}/{}\": {e}",
                join_host(&host, port),
                path.trim_start_matches('/')
            )),
            Err(_) => ProbeOutcome::Failure(format!(
                "Get \"http://{}{path}\": context deadline exceeded",
                join_host(&host, port)
            )),
        };
    }
    if let Some(tcp) = &probe.tcp_socket {
        let port = match resolve_port(&tcp.port, container) {
            Ok(p) => p,
            Err(e) => return ProbeOutcome::Failure(e),
        };
        let host = tcp.host.clone().unwrap_or_else(|| target.pod_ip.clone());
        let addr = join_host(&host, port);
        return match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&addr)).await {
            Ok(Ok(_)) => ProbeOutcome::Success,
            Ok(Err(e)) => ProbeOutcome::Failure(format!("dial tcp {addr}: {e}")),
            Err(_) => ProbeOutcome::Failure(format!("dial tcp {addr}: i/o timeout")),
        };
    }
    if probe.grpc.is_some() {
        return ProbeOutcome::Failure("gRPC probes are not supported yet".into());
    }
    ProbeOutcome::Failure("probe has no handler".into())
}

fn join_host(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A minimal HTTP/1.1 GET; returns the status code.
async fn http_get(
    host: &str,
    port: u16,
    path: &str,
    headers: &[(String, String)],
) -> std::io::Result<u16> {
    let mut stream = tokio::net::TcpStream::connect(join_host(host, port)).await?;
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n", join_host(host, port));
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("user-agent"))
    {
        request.push_str("User-Agent: kube-probe/1.33\r\n");
    }
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut buf = vec![0u8; 1024];
    let mut len = 0;
    // The status line is all that is needed.
    while len < buf.len() {
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 || buf[..len + n].contains(&b'\n') {
            len += n;
            break;
        }
        len += n;
    }
    let text = String::from_utf8_lossy(&buf[..len]);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("malformed HTTP response"))
}

/// Runs `probe` periodically until `stop`, reporting threshold crossings and failures.
#[allow(clippy::too_many_arguments)]
pub async fn run_prober(
    kind: ProbeKind,
    probe: Probe,
    container: Container,
    target: ProbeTarget,
    reports: mpsc::Sender<ProbeReport>,
    stop: CancellationToken,
) {
    let initial = Duration::from_secs(probe.initial_delay_seconds.unwrap_or(0).max(0) as u64);
    let period = Duration::from_secs(probe.period_seconds.unwrap_or(10).max(1) as u64);
    let success_threshold = probe.success_threshold.unwrap_or(1).max(1);
    let failure_threshold = probe.failure_threshold.unwrap_or(3).max(1);
    tokio::select! {
        _ = stop.cancelled() => return,
        _ = tokio::time::sleep(initial) => {}
    }
    let mut state: Option<bool> = None;
    let (mut successes, mut failures) = (0, 0);
    let mut ticker = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let outcome = tokio::select! {
            _ = stop.cancelled() => return,
            o = probe_once(&probe, &container, &target) => o,
        };
        let mut report = ProbeReport {
            container_id: target.container_id.clone(),
            container_name: container.name.clone(),
            kind,
            healthy: None,
            failure: None,
        };
        match outcome {
            ProbeOutcome::Success => {
                failures = 0;
                successes += 1;
                if state != Some(true) && successes >= success_threshold {
                    state = Some(true);
                    report.healthy = Some(true);
                }
            }
            ProbeOutcome::Failure(message) => {
                successes = 0;
                failures += 1;
                report.failure = Some(message);
                if state != Some(false) && failures >= failure_threshold {
                    state = Some(false);
                    report.healthy = Some(false);
                }
                // A liveness or startup failure restarts the container: count afresh after.
                if report.healthy == Some(false) && kind != ProbeKind::Readiness {
                    failures = 0;
                    state = None;
                }
            }
        }
        if (report.healthy.is_some() || report.failure.is_some())
            && reports.send(report).await.is_err()
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{HTTPGetAction, TCPSocketAction};

    struct NoRuntime;

    #[async_trait::async_trait]
    impl RuntimeService for NoRuntime {
        async fn run_pod_sandbox(
            &self,
            _: &capstan_runtime::cri::PodSandboxConfig,
            _: &str,
        ) -> Result<String, capstan_runtime::cri::RuntimeError> {
            unimplemented!()
        }
        async fn stop_pod_sandbox(
            &self,
            _: &str,
        ) -> Result<(), capstan_runtime::cri::RuntimeError> {
            unimplemented!()
        }
        async fn remove_pod_sandbox(
            &self,
            _: &str,
        ) -> Result<(), capstan_runtime::cri::RuntimeError> {
            unimplemented!()
        }
        async fn pod_sandbox_status(
            &self,
            _: &str,
        ) -> Result<capstan_runtime::cri::PodSandboxStatus, capstan_runtime::cri::RuntimeError>
        {
            unimplemented!()
        }
        async fn list_pod_sandboxes(
            &self,
            _: &capstan_runtime::cri::PodSandboxFilter,
        ) -> Result<Vec<capstan_runtime::cri::PodSandbox>, capstan_runtime::cri::RuntimeError>
        {
            unimplemented!()
        }
        async fn create_container(
            &self,
            _: &str,
            _: &capstan_runtime::cri::ContainerConfig,
            _: &capstan_runtime::cri::PodSandboxConfig,
        ) -> Result<String, capstan_runtime::cri::RuntimeError> {
            unimplemented!()
        }
        async fn start_container(&self, _: &str) -> Result<(), capstan_runtime::cri::RuntimeError> {
            unimplemented!()
        }
        async fn stop_container(
            &self,
            _: &str,
            _: Duration,
        ) -> Result<(), capstan_runtime::cri::RuntimeError> {
            unimplemented!()
        }
        async fn remove_container(
            &self,
            _: &str,
        ) -> Result<(), capstan_runtime::cri::RuntimeError> {
            unimplemented!()
        }
        async fn container_status(
            &self,
            _: &str,
        ) -> Result<capstan_runtime::cri::ContainerStatus, capstan_runtime::cri::RuntimeError>
        {
            unimplemented!()
        }
        async fn list_containers(
            &self,
            _: &capstan_runtime::cri::ContainerFilter,
        ) -> Result<Vec<capstan_runtime::cri::Container>, capstan_runtime::cri::RuntimeError>
        {
            unimplemented!()
        }
        async fn exec_sync(
            &self,
            _: &str,
            cmd: &[String],
            _: Option<Duration>,
        ) -> Result<capstan_runtime::cri::ExecSyncResponse, capstan_runtime::cri::RuntimeError>
        {
            Ok(capstan_runtime::cri::ExecSyncResponse {
                stdout: b"out".to_vec(),
                stderr: vec![],
                exit_code: if cmd[0] == "true" { 0 } else { 1 },
            })
        }
        async fn exec(
            &self,
            _: &str,
            _: &capstan_runtime::cri::ExecRequest,
        ) -> Result<capstan_runtime::cri::ExecSession, capstan_runtime::cri::RuntimeError> {
            unimplemented!()
        }
    }

    fn target() -> ProbeTarget {
        ProbeTarget {
            runtime: Arc::new(NoRuntime),
            container_id: "c1".into(),
            pod_ip: "127.0.0.1".into(),
        }
    }

    fn exec_probe(cmd: &str) -> Probe {
        Probe {
            exec: Some(k8s_openapi::api::core::v1::ExecAction {
                command: Some(vec![cmd.into()]),
            }),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn exec_http_and_tcp_probes() {
        let c = Container::default();
        assert_eq!(
            probe_once(&exec_probe("true"), &c, &target()).await,
            ProbeOutcome::Success
        );
        assert_eq!(
            probe_once(&exec_probe("false"), &c, &target()).await,
            ProbeOutcome::Failure("out".into())
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port() as i32;
        let server = tokio::spawn(async move {
            for code in ["200 OK", "500 Internal Server Error"] {
                let (mut s, _) = listener.accept().await.expect("accept");
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(format!("HTTP/1.1 {code}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        let http = Probe {
            http_get: Some(HTTPGetAction {
                port: IntOrString::Int(port),
                path: Some("/healthz".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            probe_once(&http, &c, &target()).await,
            ProbeOutcome::Success
        );
        assert_eq!(
            probe_once(&http, &c, &target()).await,
            ProbeOutcome::Failure("HTTP probe failed with statuscode: 500".into())
        );
        server.await.expect("server");
        let tcp = Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(port),
                host: None,
            }),
            ..Default::default()
        };
        assert!(matches!(
            probe_once(&tcp, &c, &target()).await,
            ProbeOutcome::Failure(_)
        ));
    }

    #[tokio::test]
    async fn prober_reports_after_failure_threshold() {
        let (tx, mut rx) = mpsc::channel(16);
        let stop = CancellationToken::new();
        let probe = Probe {
            period_seconds: Some(1),
            failure_threshold: Some(2),
            ..exec_probe("false")
        };
        let task = tokio::spawn(run_prober(
            ProbeKind::Readiness,
            probe,
            Container::default(),
            target(),
            tx,
            stop.clone(),
        ));
        let first = rx.recv().await.expect("report");
        assert_eq!(
            (first.healthy, first.failure.as_deref()),
            (None, Some("out"))
        );
        let second = rx.recv().await.expect("report");
        assert_eq!(second.healthy, Some(false));
        stop.cancel();
        task.await.expect("prober");
    }
}
