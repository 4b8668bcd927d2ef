//! Cluster DNS (the CoreDNS `kubernetes` plugin's role): an in-memory zone kept from watches of
//! Services, EndpointSlices and Pods, served over UDP and TCP with hickory-server; names outside
//! the cluster domain (and unknown reverse names) are forwarded to the host's resolvers.

mod forward;
mod handler;
pub mod kube_dns;
mod watch;
pub mod zone;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;

pub use forward::Forwarder;
pub use kube_dns::{KubeDnsService, keep_kube_dns_service};
pub use zone::Zone;

/// Upstream CoreDNS's default TTL for cluster records.
pub const DEFAULT_TTL: u32 = 5;
/// Idle TCP connections are closed after this long.
const TCP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("binding the DNS listener {addr} ({proto})")]
    Bind {
        addr: SocketAddr,
        proto: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("no free port for both UDP and TCP on {0}")]
    NoFreePort(IpAddr),
    #[error("the DNS server stopped: {0}")]
    Serve(String),
    #[error("invalid cluster domain {0:?}")]
    Domain(String),
}

/// How the cluster DNS server runs.
#[derive(Clone, Debug)]
pub struct DnsOptions {
    /// Addresses served over both UDP and TCP (port 0: one free port for both).
    pub listen: Vec<SocketAddr>,
    /// The cluster domain, `cluster.local`.
    pub domain: String,
    /// Resolvers for names outside the cluster domain, tried in order.
    pub upstreams: Vec<SocketAddr>,
    /// TTL of cluster records (and the SOA minimum).
    pub ttl: u32,
}

impl Default for DnsOptions {
    fn default() -> Self {
        DnsOptions {
            listen: vec![SocketAddr::from((Ipv4Addr::UNSPECIFIED, 53))],
            domain: "cluster.local".into(),
            upstreams: host_upstreams(),
            ttl: DEFAULT_TTL,
        }
    }
}

/// Sockets bound for the DNS server, UDP and TCP on the same addresses.
pub struct Listeners {
    udp: Vec<UdpSocket>,
    tcp: Vec<TcpListener>,
}

impl Listeners {
    /// Bind UDP and TCP on every address; a port 0 gets one port that is free for both.
    pub async fn bind(listen: &[SocketAddr]) -> Result<Listeners, DnsError> {
        let mut l = Listeners {
            udp: Vec::new(),
            tcp: Vec::new(),
        };
        for addr in listen {
            let (u, t) = if addr.port() == 0 {
                bind_free_pair(addr.ip()).await?
            } else {
                bind_pair(*addr).await?
            };
            l.udp.push(u);
            l.tcp.push(t);
        }
        Ok(l)
    }

    /// The bound addresses (UDP and TCP share them).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.udp
            .iter()
            .filter_map(|s| s.local_addr().ok())
            .collect()
    }
}

async fn bind_pair(addr: SocketAddr) -> Result<(UdpSocket, TcpListener), DnsError> {
    let tcp = TcpListener::bind(addr)
        .await
        .map_err(|source| DnsError::Bind {
            addr,
            proto: "tcp",
            source,
        })?;
    let addr = tcp.local_addr().unwrap_or(addr);
    let udp = UdpSocket::bind(addr)
        .await
        .map_err(|source| DnsError::Bind {
            addr,
            proto: "udp",
            source,
        })?;
    Ok((udp, tcp))
}

async fn bind_free_pair(ip: IpAddr) -> Result<(UdpSocket, TcpListener), DnsError> {
    for _ in 0..50 {
        if let Ok(pair) = bind_pair(SocketAddr::new(ip, 0)).await {
            return Ok(pair);
        }
    }
    Err(DnsError::NoFreePort(ip))
}

/// The nameservers of the host's /etc/resolv.conf (port 53); empty if it cannot be read.
pub fn host_upstreams() -> Vec<SocketAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .map(|t| parse_resolv_conf(&t))
        .unwrap_or_default()
}

/// The `nameserver` lines of a resolv.conf text as socket addresses on port 53.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver")).then(|| w.next()).flatten()
        })
        // Scoped IPv6 addresses (fe80::1%eth0) cannot be parsed as IpAddr; skip them.
        .filter_map(|s| s.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// Bind `options.listen` and serve until `stop`.
pub async fn run(
    client: kube::Client,
    options: DnsOptions,
    stop: CancellationToken,
) -> Result<(), DnsError> {
    let listeners = Listeners::bind(&options.listen).await?;
    serve(client, options, listeners, stop).await
}

/// Serve on already bound `listeners` until `stop`: the zone follows the API's watches.
pub async fn serve(
    client: kube::Client,
    options: DnsOptions,
    listeners: Listeners,
    stop: CancellationToken,
) -> Result<(), DnsError> {
    let domain = options.domain.trim_matches('.').to_ascii_lowercase();
    if domain.is_empty() {
        return Err(DnsError::Domain(options.domain.clone()));
    }
    let local = listeners.local_addrs();
    // Never forward to ourselves: a host whose resolv.conf names this server would loop.
    let upstreams: Vec<SocketAddr> = options
        .upstreams
        .iter()
        .copied()
        .filter(|u| {
            !local
                .iter()
                .any(|l| l.port() == u.port() && (l.ip() == u.ip() || l.ip().is_unspecified()))
        })
        .collect();
    let empty = Zone::empty(&domain, options.ttl).map_err(|_| DnsError::Domain(domain.clone()))?;
    let zone = Arc::new(RwLock::new(Arc::new(empty)));
    let handler = handler::Handler::new(zone.clone(), Forwarder::new(upstreams));
    let mut server = hickory_server::Server::new(handler);
    for s in listeners.udp {
        server.register_socket(s);
    }
    for t in listeners.tcp {
        server.register_listener(t, TCP_TIMEOUT, 64);
    }
    tracing::info!(listen = ?local, %domain, "cluster DNS serving");
    let watch_stop = stop.child_token();
    let watcher = tokio::spawn(watch::keep_zone(
        client,
        domain,
        options.ttl,
        zone,
        watch_stop.clone(),
    ));
    stop.cancelled().await;
    watch_stop.cancel();
    let _ = watcher.await;
    server
        .shutdown_gracefully()
        .await
        .map_err(|e| DnsError::Serve(e.to_string()))
}

/// The `n`th address of a CIDR (`10.43.0.0/16`, 10 -> 10.43.0.10): the default cluster DNS IP.
pub fn nth_address(cidr: &str, n: u32) -> Option<IpAddr> {
    let (base, bits) = cidr.split_once('/')?;
    let bits: u32 = bits.trim().parse().ok()?;
    match base.trim().parse::<IpAddr>().ok()? {
        IpAddr::V4(v4) if bits <= 32 => {
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - bits)
            };
            let ip = (u32::from(v4) & mask).checked_add(n)?;
            Some(IpAddr::V4(Ipv4Addr::from(ip)))
        }
        IpAddr::V6(v6) if bits <= 128 => {
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - bits)
            };
            let ip = (u128::from(v6) & mask).checked_add(u128::from(n))?;
            Some(IpAddr::V6(std::net::Ipv6Addr::from(ip)))
        }
        _ => None,
    }
}

/// The node address to publish for the DNS endpoint: `node_ip` unless it is loopback (pods
/// cannot reach the host's loopback), else the source address of the default route.
pub fn reachable_address(node_ip: IpAddr) -> IpAddr {
    if !node_ip.is_loopback() {
        return node_ip;
    }
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| {
            // connect() on UDP picks a route and source address; nothing is sent.
            s.connect("192.0.2.1:53")?;
            s.local_addr()
        })
        .map(|a| a.ip())
        .unwrap_or(node_ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenth_address_of_the_service_cidr() {
        assert_eq!(
            nth_address("10.43.0.0/16", 10),
            Some("10.43.0.10".parse().unwrap())
        );
        assert_eq!(
            nth_address("10.101.7.0/24", 10),
            Some("10.101.7.10".parse().unwrap())
        );
        assert_eq!(
            nth_address("fd00::/108", 10),
            Some("fd00::a".parse().unwrap())
        );
        assert_eq!(nth_address("bogus", 10), None);
    }

    #[test]
    fn resolv_conf_nameservers() {
        let got = parse_resolv_conf(
            "# c\nsearch a.example\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\nnameserver ::1\noptions ndots:1\n",
        );
        assert_eq!(
            got,
            vec![
                "10.0.0.2:53".parse::<SocketAddr>().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
    }
}
