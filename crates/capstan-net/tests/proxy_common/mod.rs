//! Shared pieces of the proxy tests: Service/EndpointSlice builders, a netns "pod network" with
//! real listeners, and a guard deleting the test's nft table.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;

/// A tag no other test (or test process) uses, and a subnet index for it.
pub fn unique() -> (u32, String) {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    let pid = std::process::id();
    ((pid + n * 7) % 250, format!("{}x{n}", pid % 100_000))
}

/// Deletes the nft table on drop.
pub struct TableGuard(pub String);

impl Drop for TableGuard {
    fn drop(&mut self) {
        let _ = capstan_net::proxy::delete_table_blocking(&self.0);
    }
}

pub fn service(ns: &str, name: &str, spec: serde_json::Value) -> Arc<Service> {
    Arc::new(
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns}, "spec": spec}))
            .expect("service"),
    )
}

pub fn lb_service(ns: &str, name: &str, spec: serde_json::Value, ingress: &[&str]) -> Arc<Service> {
    let ingress: Vec<_> = ingress
        .iter()
        .map(|ip| json!({"ip": ip, "ipMode": "VIP"}))
        .collect();
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns}, "spec": spec,
            "status": {"loadBalancer": {"ingress": ingress}}
        }))
        .expect("service"),
    )
}

/// One endpoint: (address, node, ready, serving, terminating).
pub type Ep<'a> = (&'a str, &'a str, bool, bool, bool);

pub fn slice(ns: &str, svc: &str, name: &str, port: u16, eps: &[Ep]) -> Arc<EndpointSlice> {
    let endpoints: Vec<_> = eps
        .iter()
        .map(|(ip, node, ready, serving, terminating)| {
            json!({"addresses": [ip], "nodeName": node,
                   "conditions": {"ready": ready, "serving": serving, "terminating": terminating}})
        })
        .collect();
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns, "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv4",
            "ports": [{"name": "", "port": port, "protocol": "TCP"}],
            "endpoints": endpoints
        }))
        .expect("slice"),
    )
}

pub fn ready(ip: &str) -> Ep<'_> {
    (ip, "node-a", true, true, false)
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A netns joined to the host by a veth, holding `addrs` (10.251.K.2, .3, ...) with a listener on
/// port 8080 that answers with the local address a connection came to.
pub struct PodNet {
    pub netns: String,
    pub host_veth: String,
    pub subnet: String,
    pub gateway: Ipv4Addr,
    pub addrs: Vec<Ipv4Addr>,
    stop: Arc<AtomicBool>,
    server: Option<std::thread::JoinHandle<()>>,
}

impl PodNet {
    pub fn create(k: u32, tag: &str, endpoints: u8) -> PodNet {
        let netns = format!("cpx{tag}");
        let host_veth = format!("cpxh{tag}");
        let peer = format!("cpxp{tag}");
        run("ip", &["netns", "add", &netns]);
        let mut net = PodNet {
            netns: netns.clone(),
            host_veth: host_veth.clone(),
            subnet: format!("10.251.{k}.0/24"),
            gateway: Ipv4Addr::new(10, 251, k as u8, 1),
            addrs: (0..endpoints)
                .map(|i| Ipv4Addr::new(10, 251, k as u8, 2 + i))
                .collect(),
            stop: Arc::new(AtomicBool::new(false)),
            server: None,
        };
        run(
            "ip",
            &[
                "link", "add", &host_veth, "type", "veth", "peer", "name", &peer,
            ],
        );
        run("ip", &["link", "set", &peer, "netns", &netns]);
        run(
            "ip",
            &[
                "addr",
                "add",
                &format!("{}/24", net.gateway),
                "dev",
                &host_veth,
            ],
        );
        run("ip", &["link", "set", &host_veth, "up"]);
        let ns = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &netns, "ip"];
            all.extend_from_slice(args);
            run("ip", &all);
        };
        ns(&["link", "set", "lo", "up"]);
        for a in &net.addrs {
            ns(&["addr", "add", &format!("{a}/24"), "dev", &peer]);
        }
        ns(&["link", "set", &peer, "up"]);
        ns(&["route", "add", "default", "via", &net.gateway.to_string()]);
        let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", "1");
        let _ = std::fs::write("/proc/sys/net/ipv4/conf/all/route_localnet", "1");
        let path = Path::new("/var/run/netns").join(&netns);
        let stop = net.stop.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        net.server = Some(std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("open netns");
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let listener = TcpListener::bind(("0.0.0.0", 8080)).expect("bind 8080 in netns");
            listener.set_nonblocking(true).expect("nonblocking");
            tx.send(()).expect("ready");
            serve(listener, &stop);
        }));
        rx.recv_timeout(Duration::from_secs(10))
            .expect("listener ready");
        net
    }
}

/// Answers every connection with its local address until `stop`.
fn serve(listener: TcpListener, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((mut conn, _)) => {
                let local = conn
                    .local_addr()
                    .map(|a| a.ip().to_string())
                    .unwrap_or_default();
                let _ = conn.set_nonblocking(false);
                let _ = conn.write_all(local.as_bytes());
            }
            // Non-blocking accept with nothing pending: look again shortly (a server loop).
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

impl Drop for PodNet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(s) = self.server.take() {
            let _ = s.join();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_veth])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}

/// Connects and reads the answer (which endpoint), or the connect/read error.
pub fn ask(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// The host's address on the default route.
pub fn host_ip() -> Ipv4Addr {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").expect("udp");
    s.connect("192.0.2.1:53").expect("connect");
    match s.local_addr().expect("local").ip() {
        std::net::IpAddr::V4(ip) => ip,
        std::net::IpAddr::V6(_) => panic!("no IPv4 default route"),
    }
}

pub fn nft_list(table: &str) -> String {
    let out = Command::new(capstan_net::proxy::nft::find_nft())
        .args(["list", "table", "inet", table])
        .output()
        .expect("nft list");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
