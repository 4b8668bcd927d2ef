//! A launcher for real etcd clusters in tests: `/usr/bin/etcd` members on free loopback
//! ports, each with its own data directory and log file, torn down on drop.
//!
//! Public (not `cfg(test)`) so other crates' tests start etcd the same way.

use super::{EtcdConfig, EtcdRestoreOptions};
use std::fs::File;
use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The etcd server binary (Debian's etcd-server, 3.4).
pub const ETCD_BINARY: &str = "/usr/bin/etcd";
/// The etcd client binary (Debian's etcd-client), used for health and status.
pub const ETCDCTL_BINARY: &str = "/usr/bin/etcdctl";

const START_DEADLINE: Duration = Duration::from_secs(30);
const LEADER_DEADLINE: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(50);
/// Launch attempts when a picked port was taken meanwhile.
const LAUNCH_ATTEMPTS: usize = 3;

/// Certificates for a TLS cluster: members serve `server_*` and require client
/// certificates signed by `ca_file`; `client_*` is what etcdctl and clients present.
#[derive(Clone, Debug)]
pub struct ClusterTls {
    pub ca_file: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// A running etcd cluster of one or more members.
pub struct EtcdCluster {
    members: Vec<Member>,
    tls: Option<ClusterTls>,
    // Last, so members are killed before their directories go.
    _root: tempfile::TempDir,
}

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    initial_cluster: String,
    token: String,
    child: Mutex<Option<Child>>,
}

impl EtcdCluster {
    /// Starts `members` members over plain HTTP and waits until all are healthy.
    pub fn start(members: usize) -> io::Result<EtcdCluster> {
        Self::launch(members, None)
    }

    /// Like [`start`](Self::start), serving clients over TLS with client-cert auth.
    pub fn start_tls(members: usize, tls: ClusterTls) -> io::Result<EtcdCluster> {
        Self::launch(members, Some(tls))
    }

    /// Restore options for a one-member cluster on a free loopback peer port, to pass to
    /// [`restore_snapshot`](super::restore_snapshot) before
    /// [`start_from_data_dir`](Self::start_from_data_dir).
    pub fn restore_options(data_dir: PathBuf) -> io::Result<EtcdRestoreOptions> {
        let [peer] = free_ports::<1>()?;
        Ok(EtcdRestoreOptions::single_member(
            data_dir,
            "restored",
            &format!("http://127.0.0.1:{peer}"),
        ))
    }

    /// Starts one member on a restored data directory (left in place on drop; the caller
    /// owns it), with the name and peer URL it was restored with.
    pub fn start_from_data_dir(opts: &EtcdRestoreOptions) -> io::Result<EtcdCluster> {
        let peer_port = opts
            .initial_advertise_peer_urls
            .split(',')
            .next()
            .and_then(|url| url.rsplit(':').next())
            .and_then(|port| port.trim_end_matches('/').parse::<u16>().ok())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("no port in {}", opts.initial_advertise_peer_urls),
                )
            })?;
        let root = tempfile::Builder::new()
            .prefix("etcd-restored-")
            .tempdir()?;
        let [client_port] = free_ports::<1>()?;
        let member = Member {
            name: opts.name.clone(),
            client_port,
            peer_port,
            data_dir: opts.data_dir.clone(),
            log: root.path().join("etcd.log"),
            initial_cluster: opts.initial_cluster.clone(),
            token: "etcd-cluster".into(),
            child: Mutex::new(None),
        };
        let cluster = EtcdCluster {
            members: vec![member],
            tls: None,
            _root: root,
        };
        cluster.spawn(0, "existing")?;
        cluster.wait_healthy(0)?;
        Ok(cluster)
    }

    fn launch(members: usize, tls: Option<ClusterTls>) -> io::Result<EtcdCluster> {
        if members == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a cluster needs at least one member",
            ));
        }
        check_binary(ETCD_BINARY)?;
        check_binary(ETCDCTL_BINARY)?;
        let mut last_err = None;
        for _ in 0..LAUNCH_ATTEMPTS {
            match Self::try_launch(members, tls.clone()) {
                Ok(cluster) => return Ok(cluster),
                // A port picked as free may have been taken meanwhile: pick new ones.
                Err(err) if err.to_string().contains("address already in use") => {
                    last_err = Some(err);
                }
                Err(err) => return Err(err),
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("etcd did not start")))
    }

    fn try_launch(members: usize, tls: Option<ClusterTls>) -> io::Result<EtcdCluster> {
        let root = tempfile::Builder::new().prefix("etcd-cluster-").tempdir()?;
        let ports = free_port_list(2 * members)?;
        let token = root
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "capstan-test".into());
        let initial_cluster = (0..members)
            .map(|i| format!("m{i}=http://127.0.0.1:{}", ports[2 * i + 1]))
            .collect::<Vec<_>>()
            .join(",");
        let members = (0..members)
            .map(|i| {
                let dir = root.path().join(format!("m{i}"));
                std::fs::create_dir_all(&dir)?;
                Ok(Member {
                    name: format!("m{i}"),
                    client_port: ports[2 * i],
                    peer_port: ports[2 * i + 1],
                    data_dir: dir.join("data"),
                    log: dir.join("etcd.log"),
                    initial_cluster: initial_cluster.clone(),
                    token: token.clone(),
                    child: Mutex::new(None),
                })
            })
            .collect::<io::Result<Vec<_>>>()?;
        let cluster = EtcdCluster {
            members,
            tls,
            _root: root,
        };
        for i in 0..cluster.members.len() {
            cluster.spawn(i, "new")?;
        }
        for i in 0..cluster.members.len() {
            cluster.wait_healthy(i)?;
        }
        Ok(cluster)
    }

    /// Client URLs of all members (including stopped ones).
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len())
            .map(|i| self.member_client_url(i))
            .collect()
    }

    /// The client URL of member `i`.
    pub fn member_client_url(&self, i: usize) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.members[i].client_port)
    }

    /// A store configuration for this cluster (with the client certificate when TLS).
    pub fn config(&self) -> EtcdConfig {
        EtcdConfig {
            endpoints: self.endpoints(),
            ca_file: self.tls.as_ref().map(|t| t.ca_file.clone()),
            cert_file: self.tls.as_ref().map(|t| t.client_cert.clone()),
            key_file: self.tls.as_ref().map(|t| t.client_key.clone()),
        }
    }

    /// Number of members (running or not).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Always false: a cluster has at least one member.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Index of the current leader among the running members, waiting (bounded) for an
    /// election to settle. Panics when no running member leads within the deadline: this
    /// is a test helper, and no leader is a test failure.
    pub fn leader(&self) -> usize {
        let deadline = Instant::now() + LEADER_DEADLINE;
        loop {
            let last = match self.find_leader() {
                Ok(Some(i)) => return i,
                Ok(None) => "no running member leads".to_string(),
                Err(err) => err.to_string(),
            };
            if Instant::now() >= deadline {
                panic!("etcd cluster has no leader after {LEADER_DEADLINE:?}: {last}");
            }
            std::thread::sleep(POLL);
        }
    }

    fn find_leader(&self) -> io::Result<Option<usize>> {
        let running: Vec<usize> = (0..self.members.len())
            .filter(|&i| self.is_running(i))
            .collect();
        let urls: Vec<String> = running.iter().map(|&i| self.member_client_url(i)).collect();
        let output = self
            .etcdctl(&urls.join(","))
            .args(["endpoint", "status", "-w", "json"])
            .output()?;
        let statuses: serde_json::Value = match serde_json::from_slice(&output.stdout) {
            Ok(v) => v,
            Err(_) => return Ok(None),
        };
        let Some(statuses) = statuses.as_array() else {
            return Ok(None);
        };
        for status in statuses {
            let endpoint = status["Endpoint"].as_str().unwrap_or_default();
            let member_id = status["Status"]["header"]["member_id"].as_u64();
            let leader = status["Status"]["leader"].as_u64();
            if member_id.is_some() && member_id == leader {
                let index = running
                    .iter()
                    .copied()
                    .find(|&i| self.member_client_url(i) == endpoint);
                return Ok(index);
            }
        }
        Ok(None)
    }

    /// Kills member `i` with SIGKILL (no clean shutdown) and reaps it.
    pub fn kill(&self, i: usize) -> io::Result<()> {
        let mut child = self.members[i]
            .child
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(mut c) = child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    /// Starts member `i` again on its data directory and waits until it is healthy.
    pub fn restart(&self, i: usize) -> io::Result<()> {
        self.kill(i)?;
        self.spawn(i, "existing")?;
        self.wait_healthy(i)
    }

    /// Whether member `i` is running (started and not killed).
    pub fn is_running(&self, i: usize) -> bool {
        let mut child = self.members[i]
            .child
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => true,
            Some(_) => {
                *child = None;
                false
            }
            None => false,
        }
    }

    /// The data directory of member `i`.
    pub fn data_dir(&self, i: usize) -> &Path {
        &self.members[i].data_dir
    }

    /// The last lines of member `i`'s log.
    pub fn log_tail(&self, i: usize) -> String {
        let text = std::fs::read_to_string(&self.members[i].log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn spawn(&self, i: usize, state: &str) -> io::Result<()> {
        let m = &self.members[i];
        let log = File::options().create(true).append(true).open(&m.log)?;
        let client_url = self.member_client_url(i);
        let peer_url = format!("http://127.0.0.1:{}", m.peer_port);
        let mut cmd = Command::new(ETCD_BINARY);
        cmd.arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&m.data_dir)
            .arg("--listen-client-urls")
            .arg(&client_url)
            .arg("--advertise-client-urls")
            .arg(&client_url)
            .arg("--listen-peer-urls")
            .arg(&peer_url)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer_url)
            .arg("--initial-cluster")
            .arg(&m.initial_cluster)
            .arg("--initial-cluster-state")
            .arg(state)
            .arg("--initial-cluster-token")
            .arg(&m.token)
            // Fast elections on loopback, yet slack enough for two busy cores.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--snapshot-count", "10000"])
            .args(["--logger", "zap", "--log-outputs", "stderr"]);
        if let Some(tls) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&tls.server_cert)
                .arg("--key-file")
                .arg(&tls.server_key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca_file)
                .arg("--client-cert-auth");
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        *m.child.lock().unwrap_or_else(|e| e.into_inner()) = Some(child);
        Ok(())
    }

    fn wait_healthy(&self, i: usize) -> io::Result<()> {
        let deadline = Instant::now() + START_DEADLINE;
        let url = self.member_client_url(i);
        loop {
            if !self.is_running(i) {
                return Err(self.startup_error(i, "exited during startup"));
            }
            let status = self
                .etcdctl(&url)
                .args(["endpoint", "health"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()?;
            if status.success() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(self.startup_error(i, "not healthy in time"));
            }
            std::thread::sleep(POLL);
        }
    }

    fn startup_error(&self, i: usize, what: &str) -> io::Error {
        let tail = self.log_tail(i);
        eprintln!(
            "etcd member {} {what}; log {}:\n{tail}",
            self.members[i].name,
            self.members[i].log.display()
        );
        let _ = self.kill(i);
        io::Error::other(format!(
            "etcd member {} {what}: {}",
            self.members[i].name,
            tail.lines().last().unwrap_or_default()
        ))
    }

    fn etcdctl(&self, endpoints: &str) -> Command {
        let mut cmd = Command::new(ETCDCTL_BINARY);
        cmd.env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(endpoints)
            .args(["--dial-timeout", "1s", "--command-timeout", "2s"]);
        if let Some(tls) = &self.tls {
            cmd.arg("--cacert")
                .arg(&tls.ca_file)
                .arg("--cert")
                .arg(&tls.client_cert)
                .arg("--key")
                .arg(&tls.client_key);
        }
        cmd
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            let _ = self.kill(i);
        }
    }
}

fn check_binary(path: &str) -> io::Result<()> {
    if Path::new(path).is_file() {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "{path} is missing: install etcd-server and etcd-client (scripts/install-deps.sh)"
            ),
        ))
    }
}

/// `n` distinct free loopback ports (all bound at once, then released).
fn free_port_list(n: usize) -> io::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}

fn free_ports<const N: usize>() -> io::Result<[u16; N]> {
    let ports = free_port_list(N)?;
    ports
        .try_into()
        .map_err(|_| io::Error::other("port allocation"))
}
