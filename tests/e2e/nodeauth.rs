//! Node credentials end to end: join token, node identity, Node authorizer, kubelet API authentication.
//! A `capstan server --disable-agent` and a separate `capstan agent --token $(capstan token)`
//! process; the node's own kubeconfig is then used with kubectl 1.32.

use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::Instant;

use tempfile::TempDir;

use crate::harness::{NodeSettings, Out, Server, run};
use crate::node::{IMAGE, K, POD_TIMEOUT, POLL, condition, pod_yaml, sh_container};

/// The agent process, stopped and its node cleaned up on drop.
struct Agent {
    child: std::process::Child,
    node: NodeSettings,
    dir: TempDir,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            let log =
                std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default();
            eprintln!("--- capstan agent log ---\n{log}");
        }
        self.node.clean_up(self.dir.path());
    }
}

fn capstan(args: &[&str]) -> Out {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_capstan"));
    cmd.args(args);
    run(cmd, None)
}

/// The HTTP status of a raw HTTPS request to the kubelet API (`curl_args`: credentials).
fn kubelet_status(port: u16, method: &str, path: &str, curl_args: &[&str]) -> String {
    let mut cmd = Command::new("curl");
    cmd.args(["-sk", "-o", "/dev/null", "-w", "%{http_code}", "-X", method])
        .args(curl_args)
        .arg(format!("https://127.0.0.1:{port}{path}"));
    run(cmd, None).stdout.trim().to_string()
}

fn spawn_agent(server: &Server, token: &str, dir: TempDir, node: NodeSettings) -> Agent {
    let child = spawn(server, token, dir.path(), &node);
    Agent { child, node, dir }
}

fn spawn(server: &Server, token: &str, dir: &Path, node: &NodeSettings) -> std::process::Child {
    let log = std::fs::File::create(dir.join("agent.log")).expect("agent log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_capstan"));
    cmd.args(["agent", "--server", &server.url()]);
    if !token.is_empty() {
        cmd.args(["--token", token]);
    }
    cmd.arg("--data-dir")
        .arg(dir)
        .args(node.args())
        .env_remove("CAPSTAN_TOKEN")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("spawn capstan agent")
}

fn wait_ready(server: &Server, node: &str) {
    let deadline = Instant::now() + POD_TIMEOUT;
    loop {
        let out = server.kubectl(K, &["get", "node", node, "-o", "json"], None);
        if out.status.success() && condition(&out.json(), "Ready") == "True" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node {node} never became Ready; server log:\n{}",
            server.log_tail(30)
        );
        thread::sleep(POLL);
    }
}

fn as_node(server: &Server, kubeconfig: &Path, args: &[&str]) -> Out {
    run(server.kubectl_cmd_with(K, kubeconfig, args), None)
}

#[test]
fn nodeauth_joined_node_is_confined_and_the_kubelet_api_needs_credentials() {
    let server = Server::start();
    let dir = tempfile::Builder::new()
        .prefix("capstan-e2e-nodeauth-")
        .tempdir()
        .expect("tempdir");
    let archive = dir.path().join("busybox.tar");
    capstan_runtime::testimage::busybox_oci_archive(&archive, IMAGE).expect("busybox image");
    let data = dir.path().to_str().expect("utf-8 path").to_string();
    capstan(&[
        "images",
        "import",
        "--data-dir",
        &data,
        archive.to_str().expect("path"),
    ])
    .ok();

    // The token carries the CA's hash; a wrong hash is refused before anything is sent.
    let token = capstan(&[
        "token",
        "--data-dir",
        server.data_dir().to_str().expect("path"),
    ])
    .ok()
    .stdout
    .trim()
    .to_string();
    assert!(
        token.starts_with("K10") && token.contains("::node:"),
        "{token}"
    );
    let secret = token.split("::node:").nth(1).expect("secret");
    let forged = format!("K10{}::node:{secret}", "0".repeat(64));
    let node = NodeSettings::unique(dir.path());
    let mut bad = spawn_agent(
        &server,
        &forged,
        tempfile::tempdir().expect("tempdir"),
        node.clone(),
    );
    let deadline = Instant::now() + POD_TIMEOUT;
    let status = loop {
        if let Some(status) = bad.child.try_wait().expect("agent with a forged token") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the agent with a forged token kept running"
        );
        thread::sleep(POLL);
    };
    assert!(!status.success());
    let bad_log = std::fs::read_to_string(bad.dir.path().join("agent.log")).unwrap_or_default();
    assert!(
        bad_log.contains("does not match the join token's CA hash"),
        "{bad_log}"
    );
    drop(bad);

    let agent = spawn_agent(&server, &token, dir, node.clone());
    wait_ready(&server, &node.name);
    let kubeconfig = agent.dir.path().join("agent/kubelet.kubeconfig");
    as_node(&server, &kubeconfig, &["auth", "whoami", "-o", "json"])
        .ok()
        .stdout_has(&format!("system:node:{}", node.name))
        .stdout_has("system:nodes");

    // A pod bound to the node uses one secret; another secret is used by no pod there.
    let ns = "nodeauth";
    server.kubectl(K, &["create", "namespace", ns], None).ok();
    for s in ["used", "unused"] {
        server
            .kubectl(
                K,
                &[
                    "create",
                    "secret",
                    "generic",
                    s,
                    "-n",
                    ns,
                    &format!("--from-literal=key=value-{s}"),
                ],
                None,
            )
            .ok();
    }
    let spec = format!(
        "  nodeName: {}\n  volumes:\n  - name: s\n    secret:\n      secretName: used\n",
        node.name
    );
    let containers = sh_container(
        "app",
        "exec sleep 3600",
        "    volumeMounts:\n    - name: s\n      mountPath: /secret\n",
    );
    server
        .kubectl(
            K,
            &["apply", "-f", "-"],
            Some(&pod_yaml(ns, "web", "Always", &containers, &spec)),
        )
        .ok();
    let deadline = Instant::now() + POD_TIMEOUT;
    loop {
        let out = server.kubectl(K, &["get", "pod", "-n", ns, "web", "-o", "json"], None);
        if out.status.success() && out.json()["status"]["phase"] == "Running" {
            break;
        }
        assert!(Instant::now() < deadline, "pod never ran: {out}");
        thread::sleep(POLL);
    }
    as_node(
        &server,
        &kubeconfig,
        &["get", "secret", "-n", ns, "used", "-o", "name"],
    )
    .ok()
    .stdout_has("secret/used");
    as_node(&server, &kubeconfig, &["get", "secret", "-n", ns, "unused"])
        .code_is(1)
        .stderr_has("Forbidden")
        .stderr_has(&format!(
            "no relationship found between node '{}'",
            node.name
        ));
    as_node(&server, &kubeconfig, &["get", "secrets", "-n", ns]).code_is(1);

    // Its own node yes, another node no.
    let other = format!("{}-other", node.name);
    server
        .kubectl(
            K,
            &["apply", "-f", "-"],
            Some(&format!(
                "{{\"apiVersion\":\"v1\",\"kind\":\"Node\",\"metadata\":{{\"name\":\"{other}\"}}}}"
            )),
        )
        .ok();
    as_node(
        &server,
        &kubeconfig,
        &["label", "node", &node.name, "nodeauth=own"],
    )
    .ok();
    as_node(
        &server,
        &kubeconfig,
        &["label", "node", &other, "nodeauth=other"],
    )
    .code_is(1)
    .stderr_has("Forbidden");
    as_node(&server, &kubeconfig, &["delete", "node", &other]).code_is(1);

    // The kubelet API: no credentials 401; a node's own client certificate is no admin (403);
    // the API server's path (kubectl exec) works.
    let port = node.kubelet_port;
    let exec = format!("/exec/{ns}/web/app?command=true&output=1");
    assert_eq!(kubelet_status(port, "POST", &exec, &[]), "401");
    assert_eq!(
        kubelet_status(port, "GET", "/containerLogs/nodeauth/web/app", &[]),
        "401"
    );
    assert_eq!(
        kubelet_status(
            port,
            "GET",
            "/stats/summary",
            &["-H", "Authorization: Bearer nonsense"]
        ),
        "401"
    );
    let pki = agent.dir.path().join("agent/pki");
    let (crt, key) = (
        pki.join("client-kubelet.crt"),
        pki.join("client-kubelet.key"),
    );
    let cert_args = [
        "--cert",
        crt.to_str().expect("path"),
        "--key",
        key.to_str().expect("path"),
    ];
    assert_eq!(kubelet_status(port, "POST", &exec, &cert_args), "403");
    // A bearer token is checked by TokenReview: valid but not allowed is 403, not 401.
    server
        .kubectl(K, &["create", "serviceaccount", "probe", "-n", ns], None)
        .ok();
    let sa_token = server
        .kubectl(K, &["create", "token", "probe", "-n", ns], None)
        .ok()
        .stdout
        .trim()
        .to_string();
    let bearer = format!("Authorization: Bearer {sa_token}");
    assert_eq!(
        kubelet_status(port, "GET", "/stats/summary", &["-H", &bearer]),
        "403"
    );
    server
        .kubectl(
            K,
            &["exec", "-n", ns, "web", "--", "cat", "/secret/key"],
            None,
        )
        .ok()
        .stdout_has("value-used");
    server
        .kubectl(
            K,
            &["delete", "pod", "-n", ns, "web", "--grace-period=1"],
            None,
        )
        .ok();
    server.kubectl(K, &["delete", "node", &other], None).ok();

    // Restarted without a token, the node keeps its credentials.
    let mut agent = agent;
    let _ = agent.child.kill();
    let _ = agent.child.wait();
    agent.child = spawn(&server, "", agent.dir.path(), &agent.node);
    let deadline = Instant::now() + POD_TIMEOUT;
    let log = agent.dir.path().join("agent.log");
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("node registered") {
            break;
        }
        assert!(
            !text.contains("Error:"),
            "restart without a token failed: {text}"
        );
        assert!(
            Instant::now() < deadline,
            "restarted agent never registered: {text}"
        );
        thread::sleep(POLL);
    }
    drop(agent);
}
