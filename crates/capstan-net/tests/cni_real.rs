//! The real plugins from /usr/lib/cni (bridge, host-local, portmap, loopback) in throwaway network
//! namespaces: ADD gives an IP reachable from the host and from another pod, hostPort works from
//! 127.0.0.1, DEL releases the IP and the iptables chains. Runs as root.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use capstan_net::cni::{
    AttachRequest, Cni, CniConfig, NodeNetwork, PortMapping, write_default_conflist,
};

/// A named netns (`ip netns add`), deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn create(name: String) -> Netns {
        run("ip", &["netns", "add", &name]);
        Netns { name }
    }
    fn path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&self.name)
    }
    /// Runs `f` on a thread that entered this netns (sockets it makes stay in the netns).
    fn within<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = self.path();
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("open netns");
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("netns thread")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// The test's bridge, deleted on drop (the bridge plugin never deletes it).
struct Bridge(String);

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).status();
    }
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn iptables_rules() -> String {
    run("iptables-save", &[])
}

fn request(id: &str, ns: &Netns, mappings: Vec<PortMapping>) -> AttachRequest {
    AttachRequest {
        container_id: id.into(),
        netns: ns.path(),
        ifname: "eth0".into(),
        pod_name: format!("pod-{id}"),
        pod_namespace: "default".into(),
        pod_uid: format!("uid-{id}"),
        port_mappings: mappings,
    }
}

fn listen(ns: &Netns, port: u16) -> TcpListener {
    ns.within(move || TcpListener::bind(("0.0.0.0", port)).expect("bind in netns"))
}

/// Connects to `addr`, sends a line and expects the listener's thread to answer it.
fn exchange(listener: &TcpListener, connect: impl FnOnce() -> TcpStream) {
    let listener = listener.try_clone().expect("clone listener");
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut buf = [0u8; 5];
        conn.read_exact(&mut buf).expect("read");
        conn.write_all(&buf).expect("echo");
    });
    let mut stream = connect();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream.write_all(b"hello").expect("write");
    let mut buf = [0u8; 5];
    stream.read_exact(&mut buf).expect("read echo");
    assert_eq!(&buf, b"hello");
    server.join().expect("server");
}

fn connect_to(addr: SocketAddr) -> TcpStream {
    TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_plugins_attach_connect_map_ports_and_release() {
    let pid = std::process::id();
    let tag = format!("{:x}", pid % 0xffff);
    let octet = 100 + pid % 150;
    let subnet = format!("10.201.{octet}.0/24");
    let network = format!("capstan-h1-{tag}");
    let bridge = Bridge(format!("cpt{tag}"));
    let dir = tempfile::tempdir().expect("tempdir");
    let ipam_dir = dir.path().join("ipam");
    let config = CniConfig {
        conf_dir: dir.path().join("net.d"),
        bin_dirs: vec!["/opt/cni/bin-missing".into(), "/usr/lib/cni".into()],
        cache_dir: dir.path().join("cache"),
    };
    write_default_conflist(
        &config.conf_dir,
        &NodeNetwork {
            network_name: network.clone(),
            bridge: bridge.0.clone(),
            pod_cidr: subnet.clone(),
            ipam_data_dir: ipam_dir.clone(),
            mtu: None,
        },
    )
    .expect("conflist");
    let cni = Cni::new(config);

    let ns_a = Netns::create(format!("capstan-h1-{tag}-a"));
    let ns_b = Netns::create(format!("capstan-h1-{tag}-b"));
    let host_port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let id_a = format!("h1sandboxa{tag}");
    let id_b = format!("h1sandboxb{tag}");
    let req_a = request(
        &id_a,
        &ns_a,
        vec![PortMapping {
            host_port,
            container_port: 8080,
            protocol: "tcp".into(),
            host_ip: String::new(),
        }],
    );
    let req_b = request(&id_b, &ns_b, Vec::new());

    let a = cni.add(&req_a).await.expect("ADD a");
    let b = cni.add(&req_b).await.expect("ADD b");
    let ip_a = a.ips.first().copied().expect("an IP for a");
    let ip_b = b.ips.first().copied().expect("an IP for b");
    let prefix = format!("10.201.{octet}.");
    assert!(ip_a.to_string().starts_with(&prefix), "{ip_a} in {subnet}");
    assert!(ip_b.to_string().starts_with(&prefix), "{ip_b} in {subnet}");
    assert_ne!(ip_a, ip_b);
    assert!(
        ipam_dir.join(&network).join(ip_a.to_string()).exists(),
        "host-local reserved {ip_a}"
    );
    // Loopback is up in the sandbox.
    let lo = run("ip", &["-n", &ns_a.name, "link", "show", "lo"]);
    assert!(lo.contains("UP"), "{lo}");
    let rules = iptables_rules();
    assert!(
        rules.contains(&id_a),
        "bridge/portmap chains for {id_a}:\n{rules}"
    );

    let listener = listen(&ns_a, 8080);
    // Host -> pod.
    exchange(&listener, || connect_to(SocketAddr::new(ip_a, 8080)));
    // Pod b -> pod a by IP.
    exchange(&listener, || {
        ns_b.within(move || connect_to(SocketAddr::new(ip_a, 8080)))
    });
    // hostPort from 127.0.0.1 through portmap.
    exchange(&listener, || {
        connect_to(SocketAddr::new(IpAddr::from([127, 0, 0, 1]), host_port))
    });
    drop(listener);

    cni.del(&req_a).await.expect("DEL a");
    // The sandbox's netns is gone before DEL (a crashed sandbox): DEL still releases the IP.
    drop(ns_b);
    cni.del(&req_b).await.expect("DEL b without its netns");
    cni.del(&req_b).await.expect("DEL b again");
    assert!(
        !ipam_dir.join(&network).join(ip_a.to_string()).exists(),
        "{ip_a} released"
    );
    assert!(
        !ipam_dir.join(&network).join(ip_b.to_string()).exists(),
        "{ip_b} released"
    );
    let rules = iptables_rules();
    assert!(
        !rules.contains(&id_a) && !rules.contains(&id_b),
        "chains left:\n{rules}"
    );
    assert!(
        !rules.contains(&network),
        "chains of {network} left:\n{rules}"
    );
    drop(ns_a);
    drop(bridge);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_plugin_error_is_surfaced() {
    let tag = format!("{:x}", std::process::id() % 0xffff);
    let bridge = Bridge(format!("cpe{tag}"));
    let dir = tempfile::tempdir().expect("tempdir");
    let config = CniConfig {
        conf_dir: dir.path().join("net.d"),
        bin_dirs: vec!["/usr/lib/cni".into()],
        cache_dir: dir.path().join("cache"),
    };
    write_default_conflist(
        &config.conf_dir,
        &NodeNetwork {
            network_name: format!("capstan-h1-err-{tag}"),
            bridge: bridge.0.clone(),
            pod_cidr: "not-a-cidr".into(),
            ipam_data_dir: dir.path().join("ipam"),
            mtu: None,
        },
    )
    .expect("conflist");
    let ns = Netns::create(format!("capstan-h1-{tag}-err"));
    let cni = Cni::new(config);
    let req = request(&format!("h1sandboxerr{tag}"), &ns, Vec::new());
    let err = cni.add(&req).await.expect_err("invalid subnet");
    let text = err.to_string();
    assert!(
        text.contains("ADD on eth0 failed") && text.contains("/usr/lib/cni/bridge failed (code"),
        "{text}"
    );
    assert!(
        text.contains("not-a-cidr"),
        "the plugin's own message: {text}"
    );
    // Nothing was cached for a failed ADD.
    assert!(
        !dir.path()
            .join("cache/results")
            .join(format!("{}-eth0", req.container_id))
            .exists()
    );
}
