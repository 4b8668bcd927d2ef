//! The kubelet API and the API server's pods/log, pods/exec, pods/attach and pods/portforward
//! proxy, driven by the real kubectl 1.32 (WebSocket, SPDY tunnelled in WebSocket) and 1.27
//! (SPDY). Independent of the pod workers: the test runs `capstan server --disable-agent`,
//! serves the kubelet API in-process over a real runtime, registers a Node pointing at it and
//! makes the pod's sandbox and containers itself with the kubelet's labels.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use capstan_kubelet::labels::{
    CONTAINER_NAME, CONTAINER_RESTART_COUNT, POD_NAME, POD_NAMESPACE, POD_UID,
};
use capstan_kubelet::server::{KubeletServerConfig, serve};
use capstan_runtime::container::rootfs::{KernelMounter, Mounter, mounts_under};
use capstan_runtime::container::{ContainerRuntime, ImageSource, RuntimeConfig};
use capstan_runtime::cri::RuntimeService;
use capstan_runtime::cri::runtime_service::{
    ContainerConfig, ContainerMetadata, PodSandboxConfig, PodSandboxFilter, PodSandboxMetadata,
};
use capstan_runtime::image::ImageStore;
use capstan_runtime::testimage::{self, TestFile, TestImageOptions};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

use crate::harness::{Kubectl, Server, Streaming, free_port};

const IMAGE: &str = "test.local/busybox:streaming";
const WAIT: Duration = Duration::from_secs(30);

/// A runtime and an in-process kubelet API over it, removed (with everything they made) on drop.
struct Node {
    rt: tokio::runtime::Runtime,
    runtime: ContainerRuntime,
    data: TempDir,
    run_dir: PathBuf,
    cgroup_parent: String,
    port: u16,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Node {
    /// `server_tls`: the server's CA directory; the kubelet gets a serving certificate from it
    /// and lets in client certificates it signed, as a joined node does.
    fn start(server_tls: &Path) -> Node {
        let data = tempfile::Builder::new()
            .prefix("capstan-stream-")
            .tempdir()
            .expect("temp dir");
        let admin = capstan_apiserver::auth::UserInfo::new("system:admin", &["system:masters"]);
        let ask = capstan_apiserver::auth::join::CredentialsRequest {
            node_name: "stream-node".into(),
            addresses: vec![],
        };
        let creds = capstan_apiserver::auth::join::issue(server_tls, &admin, &ask)
            .expect("node credentials");
        std::fs::create_dir_all(data.path().join("pki")).expect("pki dir");
        for (file, pem) in [
            ("ca.crt", &creds.ca_cert),
            ("kubelet.crt", &creds.serving_cert),
            ("kubelet.key", &creds.serving_key),
        ] {
            std::fs::write(data.path().join("pki").join(file), pem).expect("node credentials");
        }
        let tag = data
            .path()
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("capstan-stream")
            .to_string();
        let run_dir = PathBuf::from("/run").join(&tag);
        let cgroup_parent = format!("/{tag}");
        let store = ImageStore::open(&data.path().join("images")).expect("image store");
        let archive = data.path().join("image.tar");
        let opts = TestImageOptions {
            files: vec![TestFile::Symlink {
                path: "/bin/tar".into(),
                target: "/bin/busybox".into(),
            }],
            ..Default::default()
        };
        testimage::busybox_oci_archive_with(&archive, IMAGE, &opts).expect("test image");
        store.import_archive(&archive).expect("import test image");
        let images: Arc<dyn ImageSource> = Arc::new(store);
        let mut config = RuntimeConfig::new(
            data.path().join("runtime"),
            run_dir.clone(),
            PathBuf::from(env!("CARGO_BIN_EXE_capstan")),
        );
        config.cgroup_parent = cgroup_parent.clone();
        let runtime = ContainerRuntime::new(config, images).expect("runtime");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let stop = CancellationToken::new();
        let server_config = KubeletServerConfig {
            bind: "127.0.0.1:0".parse().expect("address"),
            cert_dir: data.path().join("pki"),
            pods_dir: data.path().join("pods"),
        };
        let service: Arc<dyn RuntimeService> = Arc::new(runtime.clone());
        let (addr, task) = rt
            .block_on(serve(server_config, service, stop.clone()))
            .expect("kubelet API");
        Node {
            rt,
            runtime,
            data,
            run_dir,
            cgroup_parent,
            port: addr.port(),
            stop,
            task: Some(task),
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop.cancel();
        let runtime = self.runtime.clone();
        let task = self.task.take();
        self.rt.block_on(async {
            if let Some(t) = task {
                let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
            }
            if let Ok(pods) = runtime
                .list_pod_sandboxes(&PodSandboxFilter::default())
                .await
            {
                for p in pods {
                    if let Err(e) = runtime.remove_pod_sandbox(&p.id).await {
                        eprintln!("cleanup: removing sandbox {}: {e}", p.id);
                    }
                }
            }
        });
        for m in mounts_under(self.data.path())
            .into_iter()
            .chain(mounts_under(&self.run_dir))
        {
            let _ = KernelMounter.unmount(Path::new(&m));
        }
        let _ = std::fs::remove_dir_all(&self.run_dir);
        let parent = self.cgroup_parent.clone();
        self.runtime.cgroup_mounts().remove_empty(&parent, &parent);
    }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The pod's sandbox and two instances of container "main": restart 0 (exited, for -p) and
/// restart 1 running httpd plus a ticking loop.
fn run_pod(node: &Node, pod: &str, uid: &str) {
    let pod_labels = [(POD_NAME, pod), (POD_NAMESPACE, "default"), (POD_UID, uid)];
    let sandbox_config = PodSandboxConfig {
        metadata: PodSandboxMetadata {
            name: pod.into(),
            uid: uid.into(),
            namespace: "default".into(),
            attempt: 0,
        },
        hostname: pod.into(),
        log_directory: node
            .data
            .path()
            .join("logs")
            .join(format!("default_{pod}_{uid}")),
        labels: labels(&pod_labels),
        ..Default::default()
    };
    let rt = &node.runtime;
    node.rt.block_on(async {
        let sandbox = rt
            .run_pod_sandbox(&sandbox_config, "")
            .await
            .expect("sandbox");
        // No CNI here: bring loopback up ourselves so httpd and port-forward can use it.
        let netns = rt
            .pod_sandbox_status(&sandbox)
            .await
            .expect("sandbox status")
            .network_namespace;
        let status = Command::new("nsenter")
            .arg(format!("--net={}", netns.display()))
            .args(["ip", "link", "set", "lo", "up"])
            .status()
            .expect("nsenter");
        assert!(status.success(), "bringing lo up in {}", netns.display());
        let container = |restart: u32, script: &str| {
            let mut l = labels(&pod_labels);
            l.insert(CONTAINER_NAME.into(), "main".into());
            ContainerConfig {
                metadata: ContainerMetadata {
                    name: "main".into(),
                    attempt: restart,
                },
                image: IMAGE.into(),
                command: vec!["sh".into(), "-c".into(), script.into()],
                log_path: PathBuf::from(format!("main/{restart}.log")),
                labels: l,
                annotations: labels(&[(CONTAINER_RESTART_COUNT, &restart.to_string())]),
                ..Default::default()
            }
        };
        let first = rt
            .create_container(
                &sandbox,
                &container(0, "echo previous-run"),
                &sandbox_config,
            )
            .await
            .expect("create first");
        rt.start_container(&first).await.expect("start first");
        assert!(
            rt.wait_container(&first, WAIT).await.expect("wait"),
            "first run did not exit"
        );
        let script = "mkdir -p /www && echo hello-from-httpd > /www/index.html && \
                      httpd -p 127.0.0.1:8080 -h /www; echo line1; echo line2 >&2; echo line3; \
                      i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.3; done";
        let second = rt
            .create_container(&sandbox, &container(1, script), &sandbox_config)
            .await
            .expect("create second");
        rt.start_container(&second).await.expect("start second");
    });
}

fn register(server: &Server, node: &Node, node_name: &str, pod: &str) -> String {
    let k = Kubectl::Minor(32);
    let node_json =
        format!(r#"{{"apiVersion":"v1","kind":"Node","metadata":{{"name":"{node_name}"}}}}"#);
    server
        .kubectl(k, &["apply", "-f", "-"], Some(&node_json))
        .ok();
    let status = format!(
        r#"{{"status":{{"addresses":[{{"type":"InternalIP","address":"127.0.0.1"}}],"daemonEndpoints":{{"kubeletEndpoint":{{"Port":{}}}}}}}}}"#,
        node.port
    );
    server
        .kubectl(
            k,
            &[
                "patch",
                "node",
                node_name,
                "--subresource=status",
                "--type=merge",
                "-p",
                &status,
            ],
            None,
        )
        .ok();
    let pod_json = format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{pod}","namespace":"default"}},
            "spec":{{"nodeName":"{node_name}","containers":[{{"name":"main","image":"{IMAGE}"}}]}}}}"#
    );
    server
        .kubectl(k, &["apply", "-f", "-"], Some(&pod_json))
        .ok();
    server
        .kubectl(
            k,
            &[
                "patch",
                "pod",
                pod,
                "--subresource=status",
                "--type=merge",
                "-p",
                r#"{"status":{"phase":"Running"}}"#,
            ],
            None,
        )
        .ok();
    server
        .kubectl(
            k,
            &["get", "pod", pod, "-o", "jsonpath={.metadata.uid}"],
            None,
        )
        .ok()
        .stdout
        .trim()
        .to_string()
}

fn http_get(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the forwarded port");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    s.write_all(b"GET /index.html HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .expect("send request");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// Waits for a stdout line containing `needle`, returning it.
fn line_with(stream: &mut Streaming, needle: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = stream.next_line(left.max(Duration::from_millis(1)));
        if line.contains(needle) {
            return line;
        }
    }
}

fn tick_number(line: &str) -> u64 {
    line.trim()
        .strip_prefix("tick ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a tick line: {line:?}"))
}

fn exercise(server: &Server, k: Kubectl, pod: &str, scratch: &Path) {
    // Logs: both streams, --tail, -p (previous instance), -f (follows new lines).
    let logs = server.kubectl(k, &["logs", pod], None).ok();
    for want in ["line1", "line2", "line3", "tick 1"] {
        assert!(logs.stdout.contains(want), "{k:?} logs lack {want}: {logs}");
    }
    let tail = server.kubectl(k, &["logs", pod, "--tail=1"], None).ok();
    assert_eq!(tail.stdout.lines().count(), 1, "{k:?} --tail=1: {tail}");
    let stamped = server
        .kubectl(k, &["logs", pod, "--tail=1", "--timestamps"], None)
        .ok();
    assert!(
        stamped.stdout.contains("Z tick "),
        "{k:?} --timestamps: {stamped}"
    );
    for flags in [
        &["--all-containers=true"][..],
        &["--since=1h"],
        &["-c", "main"],
    ] {
        let args: Vec<&str> = ["logs", pod]
            .into_iter()
            .chain(flags.iter().copied())
            .collect();
        let out = server.kubectl(k, &args, None).ok();
        assert!(
            out.stdout.contains("line1\n") && out.stdout.contains("line3\n"),
            "{k:?} {flags:?}: {out}"
        );
    }
    let limited = server
        .kubectl(k, &["logs", pod, "--limit-bytes=3"], None)
        .ok();
    assert_eq!(limited.stdout, "lin", "{k:?} --limit-bytes: {limited}");
    let previous = server
        .kubectl(k, &["logs", "-p", pod, "-c", "main"], None)
        .ok();
    assert_eq!(
        previous.stdout, "previous-run\n",
        "{k:?} logs -p: {previous}"
    );
    let last = logs
        .stdout
        .lines()
        .rev()
        .find(|l| l.starts_with("tick "))
        .map(tick_number)
        .unwrap_or(0);
    let mut follow = Streaming::spawn(server.kubectl_cmd(k, &["logs", "-f", pod, "--tail=1"]));
    let first = tick_number(&line_with(&mut follow, "tick "));
    let later = tick_number(&line_with(&mut follow, "tick "));
    assert!(
        later > first && later > last,
        "{k:?} logs -f did not follow ({last} {first} {later})"
    );
    drop(follow);

    // Exec: output, stdin, exit codes.
    let hi = server
        .kubectl(k, &["exec", pod, "--", "echo", "hi"], None)
        .ok();
    assert_eq!(hi.stdout, "hi\n", "{k:?} exec: {hi}");
    let verbose = server
        .kubectl(k, &["-v=4", "exec", pod, "--", "true"], None)
        .ok();
    let want = if k == Kubectl::Minor(32) {
        "The subprotocol is v5.channel.k8s.io"
    } else {
        "v4.channel.k8s.io"
    };
    assert!(
        verbose.stderr.contains(want) || k == Kubectl::Minor(27),
        "{k:?} did not negotiate {want}: {verbose}"
    );
    let input = "hello stdin\nsecond line\n";
    let cat = server
        .kubectl(k, &["exec", "-i", pod, "--", "cat"], Some(input))
        .ok();
    assert_eq!(cat.stdout, input, "{k:?} exec -i cat: {cat}");
    let err = server
        .kubectl(k, &["exec", pod, "--", "sh", "-c", "echo oops >&2"], None)
        .ok();
    assert_eq!(err.stderr.trim(), "oops", "{k:?} exec stderr: {err}");
    server
        .kubectl(k, &["exec", pod, "--", "sh", "-c", "exit 3"], None)
        .code_is(3);

    // cp both ways (tar over exec).
    let local = scratch.join(format!("cp-in-{k:?}.txt"));
    let content = format!("copied by {k:?}\n{}\n", "x".repeat(100_000));
    std::fs::write(&local, &content).expect("write local file");
    let remote = format!("{pod}:/tmp/cp.txt");
    server
        .kubectl(
            k,
            &["cp", local.to_str().unwrap_or_default(), &remote],
            None,
        )
        .ok();
    let size = server
        .kubectl(k, &["exec", pod, "--", "wc", "-c", "/tmp/cp.txt"], None)
        .ok();
    assert!(
        size.stdout.starts_with(&content.len().to_string()),
        "{k:?} cp in: {size}"
    );
    let back = scratch.join(format!("cp-out-{k:?}.txt"));
    server
        .kubectl(k, &["cp", &remote, back.to_str().unwrap_or_default()], None)
        .ok();
    assert_eq!(
        std::fs::read_to_string(&back).unwrap_or_default(),
        content,
        "{k:?} cp out"
    );

    // Attach (output only): new ticks arrive.
    let mut attach = Streaming::spawn(server.kubectl_cmd(k, &["attach", pod, "-c", "main"]));
    line_with(&mut attach, "tick ");
    drop(attach);

    // Port-forward to busybox httpd inside the pod's network namespace.
    let local_port = free_port();
    let mapping = format!("{local_port}:8080");
    // Verbose output merged into stdout shows which transport kubectl ended up with.
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"exec "$0" --kubeconfig "$1" -v=4 port-forward "$2" "$3" 2>&1"#)
        .arg(k.path())
        .arg(server.kubeconfig())
        .arg(format!("pod/{pod}"))
        .arg(&mapping)
        .env("HOME", server.scratch().join("home"))
        .env_remove("KUBECONFIG");
    let mut pf = Streaming::spawn(cmd);
    let mut seen = Vec::new();
    let deadline = Instant::now() + WAIT;
    while !seen.iter().any(|l: &String| l.contains("Forwarding from")) {
        let left = deadline.saturating_duration_since(Instant::now());
        seen.push(pf.next_line(left.max(Duration::from_millis(1))));
    }
    if k == Kubectl::Minor(32) {
        // SPDY tunnelled through a WebSocket, no fallback to plain SPDY.
        assert!(
            seen.iter().any(|l| l.contains("tunneling_dialer")
                && l.contains("negotiated protocol: portforward.k8s.io")),
            "{k:?} port-forward did not use the WebSocket tunnel: {seen:#?}"
        );
    }
    for _ in 0..2 {
        let reply = http_get(local_port);
        assert!(
            reply.contains("hello-from-httpd"),
            "{k:?} port-forward reply: {reply:?}"
        );
    }
    drop(pf);
}

#[test]
fn kubectl_logs_exec_cp_attach_port_forward_through_the_kubelet_api() {
    let server = Server::start();
    let node = Node::start(&server.data_dir().join("tls"));
    let node_name = format!("stream-node-{}", node.port);
    let pod = "web";
    let uid = register(&server, &node, &node_name, pod);
    assert!(!uid.is_empty());
    run_pod(&node, pod, &uid);
    // The container logs its first lines quickly; wait for them through the API.
    let deadline = Instant::now() + WAIT;
    loop {
        let out = server.kubectl(Kubectl::Minor(32), &["logs", pod], None);
        if out.stdout.contains("tick 2") {
            break;
        }
        assert!(Instant::now() < deadline, "no logs through the API: {out}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Errors the API server reports before reaching the kubelet.
    server
        .kubectl(Kubectl::Minor(32), &["logs", "missing"], None)
        .stderr_has("pods \"missing\" not found");
    server
        .kubectl(
            Kubectl::Minor(32),
            &["exec", pod, "-c", "zz", "--", "true"],
            None,
        )
        .stderr_has("container zz is not valid for pod web");
    let unbound = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"unbound"},
        "spec":{"schedulerName":"nobody","containers":[{"name":"c","image":"x"}]}}"#;
    server
        .kubectl(Kubectl::Minor(32), &["apply", "-f", "-"], Some(unbound))
        .ok();
    server
        .kubectl(Kubectl::Minor(27), &["logs", "unbound"], None)
        .stderr_has("pod unbound does not have a host assigned");
    let scratch = server.scratch().to_path_buf();
    for k in [Kubectl::Minor(32), Kubectl::Minor(27)] {
        exercise(&server, k, pod, &scratch);
    }
    server
        .kubectl(
            Kubectl::Minor(32),
            &["delete", "pod", pod, "--wait=false"],
            None,
        )
        .ok();
    server
        .kubectl(Kubectl::Minor(32), &["delete", "node", &node_name], None)
        .ok();
    drop(node);
}
