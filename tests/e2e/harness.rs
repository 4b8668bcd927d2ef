//! Runs `capstan server` as a real process and drives it with the stock kubectl.
//!
//! Each [`Server`] owns a fresh data dir, a free loopback port, its log file and a private HOME
//! for kubectl (the /usr/bin/kubectl dispatcher caches its version choice under ~/.kube). The
//! server is killed when the handle drops. Nothing here skips: a missing binary is a failure.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use capstan_store::etcd::testing::EtcdCluster;
use tempfile::TempDir;

/// How long a server may take from spawn to `/readyz` answering "ok".
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Upper bound for one kubectl invocation; a hung server must fail the test, not stall CI.
const KUBECTL_TIMEOUT: Duration = Duration::from_secs(60);
/// Interval between readiness probes and child-exit checks.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Where the google-cloud-sdk puts the version-pinned kubectl binaries.
const SDK_BIN: &str = "/usr/lib/google-cloud-sdk/bin";

/// Which kubectl binary to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kubectl {
    /// /usr/bin/kubectl: the SDK dispatcher that picks a version from the server's /version.
    Dispatcher,
    /// /usr/lib/google-cloud-sdk/bin/kubectl.1.NN
    Minor(u32),
}

impl Kubectl {
    /// The binary's path; panics with a clear message if it is not installed.
    pub fn path(self) -> PathBuf {
        let path = match self {
            Kubectl::Dispatcher => PathBuf::from("/usr/bin/kubectl"),
            Kubectl::Minor(minor) => PathBuf::from(format!("{SDK_BIN}/kubectl.1.{minor}")),
        };
        assert!(
            path.exists(),
            "{} is not installed: the end-to-end tests need the stock kubectl binaries \
             (google-cloud-sdk kubectl components, 1.27 to 1.33)",
            path.display()
        );
        path
    }
}

/// The result of one kubectl run.
#[derive(Debug)]
pub struct Out {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// The command line, for failure messages.
    pub command: String,
}

impl Out {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Panics (showing both streams) unless the command exited 0.
    #[track_caller]
    pub fn ok(self) -> Self {
        assert!(self.status.success(), "command failed: {self}");
        self
    }

    /// Panics unless the command exited with `code`.
    #[track_caller]
    pub fn code_is(self, code: i32) -> Self {
        assert_eq!(self.code(), Some(code), "unexpected exit code: {self}");
        self
    }

    /// Panics unless stdout contains `needle`.
    #[track_caller]
    pub fn stdout_has(self, needle: &str) -> Self {
        assert!(
            self.stdout.contains(needle),
            "stdout lacks {needle:?}: {self}"
        );
        self
    }

    /// Panics unless stderr contains `needle`.
    #[track_caller]
    pub fn stderr_has(self, needle: &str) -> Self {
        assert!(
            self.stderr.contains(needle),
            "stderr lacks {needle:?}: {self}"
        );
        self
    }

    /// stdout parsed as JSON; panics on invalid JSON.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self}"))
    }

    /// stdout split into trimmed, non-empty lines.
    pub fn lines(&self) -> Vec<&str> {
        self.stdout
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect()
    }
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` exited {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command,
            self.code(),
            self.stdout,
            self.stderr
        )
    }
}

/// Which store the servers of this test run use: `CAPSTAN_E2E_DATASTORE=etcd` runs every
/// end-to-end test on a fresh one-member etcd per server instead of the embedded SQLite store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Datastore {
    Sqlite,
    Etcd,
}

impl Datastore {
    pub fn from_env() -> Datastore {
        match std::env::var("CAPSTAN_E2E_DATASTORE").as_deref() {
            Ok("etcd") => Datastore::Etcd,
            Ok("sqlite") | Err(_) => Datastore::Sqlite,
            Ok(other) => panic!("CAPSTAN_E2E_DATASTORE={other:?}: expected sqlite or etcd"),
        }
    }
}

/// How to start a [`Server`] beyond the defaults.
#[derive(Clone, Debug, Default)]
pub struct ServerOptions {
    /// `--datastore-endpoint`; None = the run's [`Datastore`] (own SQLite file or own etcd).
    pub datastore_endpoint: Option<String>,
    /// More flags for `capstan server`.
    pub extra_args: Vec<String>,
    /// Run the local node agent (no `--disable-agent`) with a node name, kubelet port, pod
    /// CIDR, bridge, run dir, pod log dir and cgroup parent unique to this server; its pods,
    /// mounts, netns and bridge are removed on drop.
    pub agent: bool,
    /// Image archives imported (`capstan images import`) before the first start.
    pub import_images: Vec<PathBuf>,
}

/// The node settings of a server started with [`ServerOptions::agent`].
#[derive(Clone, Debug)]
pub struct NodeSettings {
    pub name: String,
    pub kubelet_port: u16,
    pub pod_cidr: String,
    pub bridge: String,
    pub run_dir: PathBuf,
    pub cgroup_parent: String,
    pub pod_log_dir: PathBuf,
    /// The service proxy's nft table (inet), deleted at clean-up.
    pub proxy_table: String,
    /// `--service-cidr` of a server with this node; `--cluster-dns` is its 10th address.
    pub service_cidr: String,
    /// `--service-node-port-range` of a server with this node (a slice of 100 ports).
    pub node_port_range: (u16, u16),
}

impl NodeSettings {
    /// Settings no other test uses; logs under `data_dir`.
    pub fn unique(data_dir: &Path) -> NodeSettings {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let tag = format!("{}x{n}", pid % 100_000);
        NodeSettings {
            name: format!("e2e-node-{tag}"),
            kubelet_port: free_port(),
            pod_cidr: format!("10.{}.{}.0/24", 200 + pid % 50, n % 256),
            bridge: format!("cpe{tag}"),
            run_dir: PathBuf::from(format!("/run/capstan-e2e-{tag}")),
            cgroup_parent: format!("/capstan-e2e-{tag}"),
            pod_log_dir: data_dir.join("pod-logs"),
            proxy_table: format!("cpt{tag}"),
            service_cidr: format!("10.{}.0.0/16", 100 + (pid + n) % 100),
            node_port_range: {
                let low = 30000 + ((pid + n) % 27) as u16 * 100;
                (low, low + 99)
            },
        }
    }

    /// The cluster DNS address: the 10th of the service CIDR (kube-dns's ClusterIP).
    pub fn cluster_dns(&self) -> String {
        let base = self.service_cidr.trim_end_matches(".0.0/16");
        format!("{base}.0.10")
    }

    /// The flags of `capstan server` with this node: the node flags plus its service ranges.
    pub fn server_args(&self) -> Vec<String> {
        let mut args = self.args();
        args.extend([
            "--service-cidr".into(),
            self.service_cidr.clone(),
            "--service-node-port-range".into(),
            format!("{}-{}", self.node_port_range.0, self.node_port_range.1),
        ]);
        args
    }

    /// The node flags of `capstan server` / `capstan agent`.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--node-name".into(),
            self.name.clone(),
            "--node-ip".into(),
            "127.0.0.1".into(),
            "--kubelet-port".into(),
            self.kubelet_port.to_string(),
            "--pod-cidr".into(),
            self.pod_cidr.clone(),
            "--cni-bridge".into(),
            self.bridge.clone(),
            "--run-dir".into(),
            self.run_dir.display().to_string(),
            "--cgroup-parent".into(),
            self.cgroup_parent.clone(),
            "--pod-log-dir".into(),
            self.pod_log_dir.display().to_string(),
            "--proxy-table".into(),
            self.proxy_table.clone(),
            "--cluster-dns".into(),
            self.cluster_dns(),
        ]
    }

    /// Removes the node's pods (CNI DEL, sandboxes, containers, volumes), bridge, run dir
    /// and cgroups; the server must be dead.
    pub fn clean_up(&self, data_dir: &Path) {
        let mut config = capstan_kubelet::AgentConfig::new(
            self.name.clone(),
            std::net::IpAddr::from([127, 0, 0, 1]),
            data_dir.to_path_buf(),
            PathBuf::from(env!("CARGO_BIN_EXE_capstan")),
        );
        config.run_dir = self.run_dir.clone();
        config.cgroup_parent = self.cgroup_parent.clone();
        config.pod_log_dir = self.pod_log_dir.clone();
        config.cni_bridge = self.bridge.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime for clean-up");
        if let Err(e) = rt.block_on(capstan_kubelet::agent::remove_all_pods(&config)) {
            eprintln!("e2e clean-up of node {}: {e}", self.name);
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(Stdio::null())
            .status();
        // Whatever is still mounted under the run dir (netns bind mounts) goes with it.
        if let Ok(mounts) = fs::read_to_string("/proc/self/mounts") {
            let run = self.run_dir.display().to_string();
            let mut targets: Vec<&str> = mounts
                .lines()
                .filter_map(|l| l.split_whitespace().nth(1))
                .filter(|t| t.starts_with(&run))
                .collect();
            targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
            for t in targets {
                let _ = Command::new("umount").args(["-l", t]).status();
            }
        }
        let _ = fs::remove_dir_all(&self.run_dir);
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &self.proxy_table])
            .stderr(Stdio::null())
            .status();
        remove_cgroup_tree(
            &Path::new("/sys/fs/cgroup").join(self.cgroup_parent.trim_start_matches('/')),
        );
    }
}

/// rmdir a cgroup and its children, deepest first.
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

/// A `capstan server --disable-agent` child process with its own data dir and port.
pub struct Server {
    child: Option<Child>,
    port: u16,
    data_dir: TempDir,
    /// Scratch space for kubectl's HOME, fixtures written by tests and the server log.
    scratch: TempDir,
    starts: u32,
    args: Vec<String>,
    /// The server's own etcd when the run uses [`Datastore::Etcd`]; dropped after the server.
    _etcd: Option<EtcdCluster>,
    /// The local agent's settings when started with [`ServerOptions::agent`].
    node: Option<NodeSettings>,
}

impl Server {
    /// Starts a server on a fresh data dir and a free port and waits until it is ready.
    pub fn start() -> Server {
        Server::start_with(ServerOptions::default())
    }

    /// Starts a server with `options` and waits until it is ready.
    pub fn start_with(options: ServerOptions) -> Server {
        let mut etcd = None;
        let mut args = options.extra_args;
        // Cluster DNS listens on a port of its own per server (53 is shared by all of them).
        if !args
            .iter()
            .any(|a| a == "--cluster-dns-port" || a == "--disable-dns")
        {
            args.extend(["--cluster-dns-port".to_string(), free_port().to_string()]);
        }
        let endpoint = match options.datastore_endpoint {
            Some(e) => Some(e),
            None if Datastore::from_env() == Datastore::Etcd => {
                let cluster =
                    EtcdCluster::start(1).expect("start a one-member etcd for the server");
                let endpoint = etcd_endpoint(&cluster);
                etcd = Some(cluster);
                Some(endpoint)
            }
            None => None,
        };
        if let Some(e) = endpoint {
            args.extend(["--datastore-endpoint".to_string(), e]);
        }
        let data_dir = tempfile::Builder::new()
            .prefix("capstan-e2e-data-")
            .tempdir()
            .expect("create data dir");
        let scratch = tempfile::Builder::new()
            .prefix("capstan-e2e-")
            .tempdir()
            .expect("create scratch dir");
        fs::create_dir_all(scratch.path().join("home")).expect("create kubectl HOME");
        for archive in &options.import_images {
            let out = run(
                {
                    let mut cmd = Command::new(env!("CARGO_BIN_EXE_capstan"));
                    cmd.args(["images", "import", "--data-dir"])
                        .arg(data_dir.path())
                        .arg(archive);
                    cmd
                },
                None,
            );
            assert!(out.status.success(), "image import failed: {out}");
        }
        let node = options.agent.then(|| NodeSettings::unique(data_dir.path()));
        let mut server = Server {
            child: None,
            port: free_port(),
            data_dir,
            scratch,
            starts: 0,
            args,
            _etcd: etcd,
            node,
        };
        server.spawn_and_wait();
        server
    }

    /// The URL of the HTTPS API.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    /// The admin kubeconfig the server writes on start.
    pub fn kubeconfig(&self) -> PathBuf {
        self.data_dir().join("admin.kubeconfig")
    }

    /// A directory tests may write files into; removed with the server.
    pub fn scratch(&self) -> &Path {
        self.scratch.path()
    }

    /// Writes `contents` to a file in the scratch dir and returns its path.
    pub fn write_file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.scratch().join(name);
        fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    /// A kubeconfig in the scratch dir for this server whose user holds only `token`.
    pub fn token_kubeconfig(&self, name: &str, token: &str) -> PathBuf {
        let admin = fs::read_to_string(self.kubeconfig()).expect("admin kubeconfig");
        let ca = admin
            .lines()
            .find_map(|l| l.trim().strip_prefix("certificate-authority-data:"))
            .expect("CA data in the admin kubeconfig")
            .trim()
            .to_string();
        self.write_file(
            name,
            &format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority-data: {ca}\nusers:\n- name: u\n  user:\n    token: {token}\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\n",
                self.url()
            ),
        )
    }

    /// SIGKILL, the `kill -9` of a crash: no shutdown code runs.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL capstan server");
            child.wait().expect("reap capstan server");
        }
    }

    /// Starts the server again on the same data dir and port, and waits until it is ready.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn_and_wait();
    }

    /// Runs kubectl against this server with `--kubeconfig` and a private HOME.
    pub fn kubectl(&self, version: Kubectl, args: &[&str], stdin: Option<&str>) -> Out {
        run(self.kubectl_cmd(version, args), stdin)
    }

    /// The kubectl command line, for tests that need extra env vars or a long-running child.
    pub fn kubectl_cmd(&self, version: Kubectl, args: &[&str]) -> Command {
        self.kubectl_cmd_with(version, &self.kubeconfig(), args)
    }

    /// Like [`Server::kubectl_cmd`] with another kubeconfig file.
    pub fn kubectl_cmd_with(&self, version: Kubectl, kubeconfig: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(version.path());
        cmd.arg("--kubeconfig").arg(kubeconfig).args(args);
        cmd.env("HOME", self.scratch().join("home"))
            .env_remove("KUBECONFIG")
            .env_remove("KUBECTL_EXTERNAL_DIFF")
            .env_remove("KUBE_EDITOR")
            .env_remove("EDITOR");
        cmd
    }

    /// The server's whole log so far (all starts).
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The last `lines` lines of the server's log (stderr), for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(self.log_path()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn log_path(&self) -> PathBuf {
        self.scratch().join("capstan.log")
    }

    fn spawn_and_wait(&mut self) {
        self.starts += 1;
        let mut log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open server log");
        writeln!(log, "=== e2e harness: start #{} ===", self.starts).expect("write server log");
        let child = Command::new(env!("CARGO_BIN_EXE_capstan"))
            .arg("server")
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--https-port", &self.port.to_string()])
            .args(["--bind-address", "127.0.0.1"])
            .args(match &self.node {
                Some(node) => node.server_args(),
                None => vec!["--disable-agent".to_string()],
            })
            .args(&self.args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn capstan server");
        self.child = Some(child);
        self.wait_ready();
    }

    /// Polls (with a deadline) until the child lives, the kubeconfig exists and /readyz says ok.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            self.assert_running();
            if self.probe_ready() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "capstan server not ready after {READY_TIMEOUT:?}; log:\n{}",
                self.log_tail(40)
            );
            thread::sleep(POLL_INTERVAL);
        }
    }

    fn assert_running(&mut self) {
        let child = self.child.as_mut().expect("server was started");
        if let Some(status) = child.try_wait().expect("poll capstan server") {
            panic!(
                "capstan server exited during start-up ({status}); log:\n{}",
                self.log_tail(40)
            );
        }
    }

    fn probe_ready(&self) -> bool {
        if !self.kubeconfig().exists() || TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            return false;
        }
        let out = run(
            self.kubectl_cmd(
                Kubectl::Minor(33),
                &["--request-timeout=2s", "get", "--raw", "/readyz"],
            ),
            None,
        );
        out.status.success() && out.stdout.trim() == "ok"
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if thread::panicking() {
            eprintln!("--- capstan server log (tail) ---\n{}", self.log_tail(60));
        }
        if let Some(node) = &self.node {
            node.clean_up(self.data_dir.path());
        }
    }
}

impl Server {
    /// The local agent's node settings (servers started with [`ServerOptions::agent`]).
    pub fn node(&self) -> &NodeSettings {
        self.node.as_ref().expect("server started with agent: true")
    }
}

/// `etcd://host:port,...` for `--datastore-endpoint`.
pub fn etcd_endpoint(cluster: &EtcdCluster) -> String {
    let hosts: Vec<String> = cluster
        .endpoints()
        .iter()
        .map(|e| e.trim_start_matches("http://").to_string())
        .collect();
    format!("etcd://{}", hosts.join(","))
}

/// A free loopback port: bind port 0, read it, release it.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port");
    listener.local_addr().expect("local addr").port()
}

/// Runs `cmd` to completion with a deadline, feeding `stdin`.
pub fn run(mut cmd: Command, stdin: Option<&str>) -> Out {
    let command = format!("{cmd:?}");
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {command}: {e}"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        let input = input.to_owned();
        // A writer thread: a large stdin must not deadlock against a full stdout pipe.
        thread::spawn(move || {
            let _ = pipe.write_all(input.as_bytes());
        });
    }
    let stdout = read_all(child.stdout.take().expect("piped stdout"));
    let stderr = read_all(child.stderr.take().expect("piped stderr"));
    let status = wait_with_deadline(&mut child, KUBECTL_TIMEOUT, &command);
    let stdout = stdout.join().expect("stdout reader");
    let stderr = stderr.join().expect("stderr reader");
    Out {
        status,
        stdout,
        stderr,
        command,
    }
}

fn read_all(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

fn wait_with_deadline(child: &mut Child, timeout: Duration, command: &str) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("poll child") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command} did not finish within {timeout:?}");
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// A long-running child (e.g. `kubectl get -w`) whose stdout lines arrive on a channel.
pub struct Streaming {
    child: Child,
    lines: Receiver<String>,
    stderr: thread::JoinHandle<String>,
}

impl Streaming {
    /// Spawns `cmd` with piped stdout/stderr.
    pub fn spawn(mut cmd: Command) -> Streaming {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn streaming command");
        let lines = line_channel(child.stdout.take().expect("piped stdout"));
        let stderr = read_all(child.stderr.take().expect("piped stderr"));
        Streaming {
            child,
            lines,
            stderr,
        }
    }

    /// The next stdout line, or a panic (with stderr) if none arrives within `timeout`.
    #[track_caller]
    pub fn next_line(&mut self, timeout: Duration) -> String {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => line,
            Err(e) => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "no output line within {timeout:?} ({e}); exit/stderr: {}",
                    self.stderr_now()
                );
            }
        }
    }

    fn stderr_now(&mut self) -> String {
        let handle = std::mem::replace(&mut self.stderr, thread::spawn(String::new));
        handle.join().unwrap_or_default()
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn line_channel(stdout: ChildStdout) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The path of a fixture, for `kubectl -f PATH`.
pub fn fixture_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/e2e/fixtures")
        .join(name)
}

impl Server {
    /// Adds flags for the next (re)start; a flag given again overrides its earlier value
    /// (e.g. a new `--datastore-endpoint` after the store moved).
    pub fn add_args(&mut self, args: &[&str]) {
        self.args.extend(args.iter().map(|a| a.to_string()));
    }
}
