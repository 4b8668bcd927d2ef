//! Hosts made of network namespaces: N namespaces, each with a veth into one Linux bridge in
//! the root namespace (its own /24), a `capstan server` in host 0 and `capstan agent`s in the
//! others (entered with `nsenter --net`, so their mounts stay in the root mount namespace).
//! Every name, directory and subnet is unique to the run; all of it goes on drop.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::harness::{Kubectl, NodeSettings, Out, run};

/// How long the server may take to answer /readyz, and a node to become Ready.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(250);
/// The API port inside host 0 (each host has its own network stack).
const API_PORT: u16 = 6443;

/// One host: a network namespace, its veth, its node's state and process.
pub struct Host {
    pub netns: String,
    /// The root-namespace end of the veth.
    pub veth: String,
    pub addr: Ipv4Addr,
    pub node: NodeSettings,
    pub data_dir: TempDir,
    child: Option<Child>,
}

impl Host {
    pub fn log(&self) -> String {
        fs::read_to_string(self.data_dir.path().join("capstan.log")).unwrap_or_default()
    }

    /// Brings the root-namespace end of the host's link down or up (a partition).
    pub fn set_link(&self, up: bool) {
        ip(&["link", "set", &self.veth, if up { "up" } else { "down" }]).ok();
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A cluster of hosts on one bridge.
pub struct Cluster {
    pub hosts: Vec<Host>,
    pub bridge: String,
    scratch: TempDir,
    /// The `capstan server` arguments of host 0, for [`Cluster::restart_server`].
    server_args: Vec<String>,
    /// Extra `capstan agent` arguments of the other hosts.
    agent_args: Vec<String>,
}

fn ip(args: &[&str]) -> Out {
    let mut c = Command::new("ip");
    c.args(args);
    run(c, None)
}

/// A cluster CIDR (a /16 of 172.20.0.0/14) the root namespace has no route or NAT rule for:
/// with br_netfilter, bridged packets meet the root namespace's per-pod-IP CNI rules.
fn free_cluster_cidr(seed: u32) -> String {
    let mut seen = ip(&["-4", "route", "show", "table", "all"]).stdout;
    let mut cmd = Command::new("iptables-save");
    cmd.args(["-t", "nat"]);
    seen.push_str(&run(cmd, None).stdout);
    (0..12u32)
        .map(|i| 20 + (seed + i) % 12)
        .find(|x| !seen.contains(&format!("172.{x}.")))
        .map(|x| format!("172.{x}.0.0/16"))
        .expect("a free 172.x.0.0/16 for the cluster CIDR")
}

/// A /24 of 10.250.0.0/16 no interface of the root namespace uses yet.
fn free_subnet(seed: u32) -> u8 {
    let addrs = ip(&["-4", "-o", "addr", "show"]).stdout;
    (0..250u32)
        .map(|i| ((seed + i) % 250 + 1) as u8)
        .find(|x| !addrs.contains(&format!(" 10.250.{x}.")))
        .expect("a free 10.250.x.0/24")
}

/// The busybox test image as an OCI archive tagged `image`, for `Cluster::start`'s `images`;
/// the returned directory holds it and must outlive the start.
pub fn busybox_archive(image: &str) -> (TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("capstan-e2e-hosts-img-")
        .tempdir()
        .expect("tempdir");
    let archive = dir.path().join("busybox.tar");
    capstan_runtime::testimage::busybox_oci_archive(&archive, image).expect("busybox image");
    (dir, archive)
}

impl Cluster {
    /// Builds `n` hosts, starts the server (with `server_args`) in host 0 and agents in the
    /// others, with `images` imported into every node, and waits until all nodes are Ready.
    pub fn start(n: usize, server_args: &[&str], images: &[PathBuf]) -> Cluster {
        Self::start_with(n, server_args, &[], false, images)
    }

    /// As [`Cluster::start`], but the hosts share no L2 segment: each host's veth ends in the
    /// root namespace (its gateway) on a /24 of its own, the root namespace routing between
    /// them; agents get `agent_args` too.
    pub fn start_routed(
        n: usize,
        server_args: &[&str],
        agent_args: &[&str],
        images: &[PathBuf],
    ) -> Cluster {
        Self::start_with(n, server_args, agent_args, true, images)
    }

    fn start_with(
        n: usize,
        server_args: &[&str],
        agent_args: &[&str],
        routed: bool,
        images: &[PathBuf],
    ) -> Cluster {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let seq = NEXT.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let tag = format!("{}m{seq}", pid % 100_000);
        let scratch = tempfile::Builder::new()
            .prefix("capstan-e2e-hosts-")
            .tempdir()
            .expect("scratch dir");
        fs::create_dir_all(scratch.path().join("home")).expect("kubectl HOME");
        let x = free_subnet(pid + seq * 7);
        let gateway = Ipv4Addr::new(10, 250, x, 1);
        let mut cluster = Cluster {
            hosts: Vec::new(),
            bridge: format!("cmb{tag}"),
            scratch,
            server_args: Vec::new(),
            agent_args: agent_args.iter().map(|a| a.to_string()).collect(),
        };
        if !routed {
            ip(&["link", "add", &cluster.bridge, "type", "bridge"]).ok();
            ip(&[
                "addr",
                "add",
                &format!("{gateway}/24"),
                "dev",
                &cluster.bridge,
            ])
            .ok();
            ip(&["link", "set", &cluster.bridge, "up"]).ok();
        }
        for i in 0..n {
            // Routed: a /24 per host (the address just added makes the next one differ).
            let (x, gateway) = if routed {
                let y = free_subnet(pid + seq * 7 + i as u32 * 13);
                (y, Ipv4Addr::new(10, 250, y, 1))
            } else {
                (x, gateway)
            };
            let data_dir = tempfile::Builder::new()
                .prefix("capstan-e2e-host-")
                .tempdir()
                .expect("host data dir");
            let mut node = NodeSettings::unique(data_dir.path());
            node.name = format!("mn{tag}-h{i}");
            let host = Host {
                netns: format!("capstan-e2e-{tag}-h{i}"),
                veth: format!("cmv{tag}h{i}"),
                addr: Ipv4Addr::new(10, 250, x, 10 + i as u8),
                node,
                data_dir,
                child: None,
            };
            cluster.hosts.push(host);
            let host = &cluster.hosts[i];
            let ns = host.netns.as_str();
            ip(&["netns", "add", ns]).ok();
            ip(&[
                "link", "add", &host.veth, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ])
            .ok();
            if routed {
                let gw = format!("{gateway}/24");
                ip(&["addr", "add", &gw, "dev", &host.veth]).ok();
                ip(&["link", "set", &host.veth, "up"]).ok();
            } else {
                ip(&["link", "set", &host.veth, "master", &cluster.bridge, "up"]).ok();
            }
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/24", host.addr),
                "dev",
                "eth0",
            ])
            .ok();
            ip(&["-n", ns, "link", "set", "eth0", "up"]).ok();
            ip(&["-n", ns, "link", "set", "lo", "up"]).ok();
            ip(&[
                "-n",
                ns,
                "route",
                "add",
                "default",
                "via",
                &gateway.to_string(),
            ])
            .ok();
            for archive in images {
                let mut cmd = Command::new(env!("CARGO_BIN_EXE_capstan"));
                cmd.args(["images", "import", "--data-dir"])
                    .arg(host.data_dir.path())
                    .arg(archive);
                run(cmd, None).ok();
            }
        }
        cluster.spawn_server(server_args);
        cluster.wait_api();
        let token = {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_capstan"));
            cmd.args(["token", "--data-dir"])
                .arg(cluster.hosts[0].data_dir.path());
            run(cmd, None).ok().stdout.trim().to_string()
        };
        for i in 1..n {
            cluster.spawn_agent(i, &token);
        }
        cluster.wait_all_ready();
        cluster
    }

    /// The common node flags of host `i` (its address as the node IP, its own state).
    fn node_args(&self, i: usize) -> Vec<String> {
        let h = &self.hosts[i];
        let n = &h.node;
        let dns = self.hosts[0].node.cluster_dns();
        [
            "--node-name",
            &n.name,
            "--node-ip",
            &h.addr.to_string(),
            "--kubelet-port",
            "10250",
            "--cni-bridge",
            &n.bridge,
            "--run-dir",
            &n.run_dir.display().to_string(),
            "--cgroup-parent",
            &n.cgroup_parent,
            "--pod-log-dir",
            &n.pod_log_dir.display().to_string(),
            "--proxy-table",
            &n.proxy_table,
            "--cluster-dns",
            &dns,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    fn spawn_in(&mut self, i: usize, args: Vec<String>) {
        let h = &self.hosts[i];
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(h.data_dir.path().join("capstan.log"))
            .expect("host log");
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", h.netns))
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_capstan"))
            .args(args)
            .arg("--data-dir")
            .arg(h.data_dir.path())
            .args(self.node_args(i))
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env_remove("CAPSTAN_TOKEN")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn capstan");
        self.hosts[i].child = Some(child);
    }

    fn spawn_server(&mut self, extra: &[&str]) {
        let h = &self.hosts[0];
        let addr = h.addr.to_string();
        let (low, high) = h.node.node_port_range;
        let mut args: Vec<String> = [
            "server",
            "--bind-address",
            &addr,
            "--https-port",
            &API_PORT.to_string(),
            "--tls-san",
            &addr,
            "--service-cidr",
            &h.node.service_cidr,
            "--service-node-port-range",
            &format!("{low}-{high}"),
            "--cluster-cidr",
            &free_cluster_cidr(std::process::id()),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        self.server_args = args.clone();
        self.spawn_in(0, args);
    }

    /// The PID of host `i`'s capstan process (nsenter execs it, so it is the child itself).
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.hosts[i].child.as_ref().map(Child::id)
    }

    /// `kill -9` of the server process in host 0, reaped; its pods' containers stay.
    pub fn kill_server(&mut self) {
        let child = self.hosts[0].child.as_mut().expect("the server runs");
        child.kill().expect("SIGKILL capstan server");
        child.wait().expect("reap capstan server");
        self.hosts[0].child = None;
    }

    /// Starts the server again with the same arguments, data dir and netns; waits for /readyz.
    pub fn restart_server(&mut self) {
        self.hosts[0].kill();
        self.spawn_in(0, self.server_args.clone());
        self.wait_api();
    }

    /// Starts (again) the agent of host `i` (`token` may be empty once it joined).
    pub fn spawn_agent(&mut self, i: usize, token: &str) {
        self.hosts[i].kill();
        let mut args = vec!["agent".to_string(), "--server".into(), self.url()];
        if !token.is_empty() {
            args.extend(["--token".to_string(), token.to_string()]);
        }
        args.extend(self.agent_args.iter().cloned());
        self.spawn_in(i, args);
    }

    pub fn url(&self) -> String {
        format!("https://{}:{API_PORT}", self.hosts[0].addr)
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.hosts[0].data_dir.path().join("admin.kubeconfig")
    }

    pub fn scratch(&self) -> &Path {
        self.scratch.path()
    }

    pub fn kubectl(&self, version: Kubectl, args: &[&str], stdin: Option<&str>) -> Out {
        let mut cmd = Command::new(version.path());
        cmd.arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(args)
            .env("HOME", self.scratch().join("home"))
            .env_remove("KUBECONFIG");
        run(cmd, stdin)
    }

    /// Panics (with every host's log tail) unless every started process still runs.
    pub fn assert_running(&mut self) {
        let mut dead = Vec::new();
        for h in &mut self.hosts {
            if let Some(c) = h.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                dead.push(format!("{} exited {status}", h.node.name));
            }
        }
        assert!(dead.is_empty(), "{}\n{}", dead.join("; "), self.logs(40));
    }

    /// The last `lines` lines of every host's log.
    pub fn logs(&self, lines: usize) -> String {
        let mut s = String::new();
        for h in &self.hosts {
            let log = h.log();
            let all: Vec<&str> = log.lines().collect();
            s.push_str(&format!(
                "--- {} ({}) ---\n{}\n",
                h.node.name,
                h.addr,
                all[all.len().saturating_sub(lines)..].join("\n")
            ));
        }
        s
    }

    fn wait_api(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            self.assert_running();
            if self.kubeconfig().exists() {
                let out = self.kubectl(
                    Kubectl::Minor(32),
                    &["--request-timeout=2s", "get", "--raw", "/readyz"],
                    None,
                );
                if out.status.success() && out.stdout.trim() == "ok" {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "server not ready within {START_TIMEOUT:?}\n{}",
                self.logs(40)
            );
            thread::sleep(POLL);
        }
    }

    /// Names of the nodes whose Ready condition is True.
    pub fn ready_nodes(&self) -> Vec<String> {
        let out = self.kubectl(
            Kubectl::Minor(32),
            &[
                "get",
                "nodes",
                "-o",
                "jsonpath={range .items[*]}{.metadata.name} {.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}",
            ],
            None,
        );
        out.stdout
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter(|(_, s)| s.trim() == "True")
            .map(|(n, _)| n.to_string())
            .collect()
    }

    fn wait_all_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            self.assert_running();
            let ready = self.ready_nodes();
            if self.hosts.iter().all(|h| ready.contains(&h.node.name)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nodes not Ready within {START_TIMEOUT:?} (ready: {ready:?})\n{}",
                self.logs(40)
            );
            thread::sleep(POLL);
        }
    }
}

/// Runs `f` on a thread that entered the network namespace `netns` (processes it spawns,
/// e.g. CNI plugins and `ip`, inherit it).
fn in_netns(netns: &str, f: impl FnOnce() + Send) {
    thread::scope(|s| {
        s.spawn(|| {
            let Ok(file) = fs::File::open(format!("/run/netns/{netns}")) else {
                return;
            };
            if let Err(e) = nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET) {
                eprintln!("setns {netns}: {e}");
                return;
            }
            f();
        });
    });
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("{}", self.logs(80));
        }
        for h in &mut self.hosts {
            h.kill();
        }
        for h in &self.hosts {
            // Pods, CNI, the node's bridge and nft table go from inside the host.
            in_netns(&h.netns, || h.node.clean_up(h.data_dir.path()));
            let _ = Command::new("ip")
                .args(["netns", "del", &h.netns])
                .stderr(Stdio::null())
                .status();
            let _ = Command::new("ip")
                .args(["link", "del", &h.veth])
                .stderr(Stdio::null())
                .status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(Stdio::null())
            .status();
    }
}
