//! Cluster DNS benchmark (issue 8): `capstan server --disable-agent` with N ClusterIP Services,
//! then many concurrent UDP clients asking for their A records for a fixed time; beside it, when
//! installed, dnsmasq serving the same names from a generated hosts file. Prints a markdown
//! table of queries/s and latency, with the ratio to the peer.

#[allow(dead_code)]
#[path = "../client.rs"]
mod client;
#[allow(dead_code)]
#[path = "../procs.rs"]
mod procs;
#[allow(dead_code)]
#[path = "../stats.rs"]
mod stats;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::net::UdpSocket;

use client::{Kubeconfig, collection, create_namespace, expect};
use procs::{Proc, free_port, temp_dir, wait_ready};
use stats::{Summary, ms};

const NS: &str = "dnsbench";
/// One query's answer must arrive within this; later counts as an error.
const QUERY_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Parser, Debug)]
#[command(about = "Benchmark cluster DNS (service A lookups over UDP) and print a markdown table")]
struct Args {
    /// The `capstan` binary (a release build for figures worth recording).
    #[arg(long)]
    capstan: PathBuf,
    /// Services created (and names queried round-robin).
    #[arg(long, default_value_t = 1000)]
    services: usize,
    /// Concurrent UDP clients, each with its own socket and one query in flight.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Seconds of load per server.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// The peer (dnsmasq); skipped with a note when the binary is missing.
    #[arg(long, default_value = "/usr/sbin/dnsmasq")]
    dnsmasq: PathBuf,
}

/// A DNS query for `name` type A, class IN, recursion desired.
fn encode_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// Whether `reply` answers query `id` with NOERROR and at least one answer record.
fn good_reply(reply: &[u8], id: u16) -> bool {
    reply.len() >= 12
        && u16::from_be_bytes([reply[0], reply[1]]) == id
        && reply[2] & 0x80 != 0
        && reply[3] & 0x0f == 0
        && u16::from_be_bytes([reply[6], reply[7]]) >= 1
}

async fn one_query(sock: &UdpSocket, id: u16, name: &str, buf: &mut [u8]) -> anyhow::Result<()> {
    sock.send(&encode_query(id, name)).await?;
    let deadline = tokio::time::Instant::now() + QUERY_TIMEOUT;
    loop {
        let n = tokio::time::timeout_at(deadline, sock.recv(buf))
            .await
            .context("timed out")??;
        // A late answer to an earlier (timed-out) query: keep waiting for ours.
        if n >= 2 && u16::from_be_bytes([buf[0], buf[1]]) != id {
            continue;
        }
        if good_reply(&buf[..n], id) {
            return Ok(());
        }
        bail!("bad answer for {name}");
    }
}

/// Asks `server` for `names` round-robin from `clients` sockets for `seconds`.
async fn load(
    server: SocketAddr,
    names: Arc<Vec<String>>,
    clients: usize,
    seconds: u64,
) -> Summary {
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let names = names.clone();
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut errors = 0u64;
            let mut first_error = None;
            let sock = match UdpSocket::bind("127.0.0.1:0").await {
                Ok(s) => s,
                Err(e) => return (samples, 1, Some(e.to_string())),
            };
            if let Err(e) = sock.connect(server).await {
                return (samples, 1, Some(e.to_string()));
            }
            let mut buf = vec![0u8; 4096];
            let mut i = c;
            let mut id = (c as u16).wrapping_mul(7919);
            while Instant::now() < end {
                let name = &names[i % names.len()];
                i += clients;
                id = id.wrapping_add(1);
                let t = Instant::now();
                match one_query(&sock, id, name, &mut buf).await {
                    Ok(()) => samples.push(t.elapsed()),
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| format!("{name}: {e:#}"));
                    }
                }
            }
            (samples, errors, first_error)
        }));
    }
    let mut samples = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    for t in tasks {
        if let Ok((s, e, f)) = t.await {
            samples.extend(s);
            errors += e;
            if first_error.is_none() {
                first_error = f;
            }
        }
    }
    let mut summary = Summary::from_samples(samples, errors, start.elapsed());
    summary.first_error = first_error;
    summary
}

/// Starts `capstan server --disable-agent` with cluster DNS on a free port.
fn start_capstan(binary: &Path) -> anyhow::Result<(Proc, u16, u16)> {
    let dir = temp_dir("capstan-dns-bench-")?;
    let port = free_port()?;
    let dns_port = free_port()?;
    let mut cmd = Command::new(binary);
    cmd.arg("server")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--https-port", &port.to_string()])
        .args(["--cluster-dns-port", &dns_port.to_string()])
        .arg("--disable-agent")
        .env("RUST_LOG", "warn");
    Ok((Proc::spawn("capstan", cmd, dir)?, port, dns_port))
}

/// Starts dnsmasq answering `hosts` (a hosts file) on a free loopback port, nothing forwarded.
fn start_dnsmasq(binary: &Path, hosts: &str) -> anyhow::Result<(Proc, u16)> {
    let dir = temp_dir("capstan-dns-bench-dnsmasq-")?;
    let file = dir.path().join("hosts");
    std::fs::write(&file, hosts).context("write the hosts file")?;
    let port = free_port()?;
    let mut cmd = Command::new(binary);
    cmd.arg("--keep-in-foreground")
        .arg("--no-resolv")
        .arg("--no-hosts")
        .arg("--no-poll")
        .arg(format!("--addn-hosts={}", file.display()))
        .arg("--listen-address=127.0.0.1")
        .arg("--bind-interfaces")
        .arg(format!("--port={port}"))
        .arg("--local-ttl=5")
        .arg("--cache-size=10000")
        .arg(format!(
            "--pid-file={}",
            dir.path().join("dnsmasq.pid").display()
        ))
        .arg("--user=root")
        .arg("--log-facility=-");
    Ok((Proc::spawn("dnsmasq", cmd, dir)?, port))
}

async fn wait_dns(proc: &mut Proc, server: SocketAddr, name: &str) -> anyhow::Result<()> {
    wait_ready(proc, &format!("DNS answer for {name}"), || async {
        let sock = UdpSocket::bind("127.0.0.1:0").await?;
        sock.connect(server).await?;
        let mut buf = vec![0u8; 4096];
        one_query(&sock, 4242, name, &mut buf).await
    })
    .await
}

fn row(what: &str, s: &Summary, peer: Option<f64>) -> String {
    let ratio = match peer {
        Some(p) if p > 0.0 => format!("{:.2}", s.throughput() / p),
        _ => "—".into(),
    };
    format!(
        "| {what} | {:.0} | {} | {} | {} | {} | {ratio} |",
        s.throughput(),
        ms(s.p50),
        ms(s.p99),
        s.ok,
        s.errors
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    rustls::crypto::aws_lc_rs::default_provider()
        .install_default()
        .map_err(|_| anyhow::anyhow!("installing the TLS crypto provider"))?;
    let (mut capstan, _api_port, dns_port) = start_capstan(&args.capstan)?;
    let kubeconfig_path = capstan.dir().join("data/admin.kubeconfig");
    wait_ready(&mut capstan, "capstan API", || async {
        let kc = Kubeconfig::load(&kubeconfig_path)?;
        let c = kc.client()?;
        expect(c.get(format!("{}/readyz", kc.server)), StatusCode::OK).await
    })
    .await?;
    let kc = Kubeconfig::load(&kubeconfig_path)?;
    let http = kc.client()?;
    create_namespace(&http, &kc.server, NS).await?;
    let url = collection(&kc.server, NS, "services");
    let mut names = Vec::with_capacity(args.services);
    let mut hosts = String::new();
    eprintln!("creating {} Services", args.services);
    for i in 0..args.services {
        let name = format!("svc-{i}");
        let body = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"ports": [{"name": "http", "port": 80}]}});
        let created = expect(http.post(&url).json(&body), StatusCode::CREATED).await?;
        let svc: Value = serde_json::from_slice(&created).context("Service JSON")?;
        let ip = svc["spec"]["clusterIP"]
            .as_str()
            .context("created Service has no clusterIP")?
            .to_string();
        let fqdn = format!("{name}.{NS}.svc.cluster.local");
        hosts.push_str(&format!("{ip} {fqdn}\n"));
        names.push(fqdn);
    }
    let names = Arc::new(names);
    let capstan_dns = SocketAddr::from(([127, 0, 0, 1], dns_port));
    let last = names.last().cloned().unwrap_or_default();
    wait_dns(&mut capstan, capstan_dns, &last).await?;
    eprintln!(
        "capstan DNS: {} clients for {} s",
        args.clients, args.seconds
    );
    let ours = load(capstan_dns, names.clone(), args.clients, args.seconds).await;
    capstan.check_alive()?;
    drop(capstan);

    let peer = if args.dnsmasq.exists() {
        let (mut dnsmasq, port) = start_dnsmasq(&args.dnsmasq, &hosts)?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_dns(&mut dnsmasq, addr, &last).await?;
        eprintln!("dnsmasq: {} clients for {} s", args.clients, args.seconds);
        let s = load(addr, names.clone(), args.clients, args.seconds).await;
        dnsmasq.check_alive()?;
        Some(s)
    } else {
        None
    };

    println!(
        "\nCluster DNS, A lookups of {} Service names over UDP, {} concurrent clients, {} s each\n",
        args.services, args.clients, args.seconds
    );
    println!("| server | queries/s | p50 ms | p99 ms | answered | errors | ratio to dnsmasq |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let peer_qps = peer.as_ref().map(Summary::throughput);
    println!("{}", row("capstan (hickory-server)", &ours, peer_qps));
    match &peer {
        Some(p) => println!("{}", row("dnsmasq (hosts file)", p, peer_qps)),
        None => println!(
            "| dnsmasq | not installed ({}) | | | | | |",
            args.dnsmasq.display()
        ),
    }
    for (what, s) in std::iter::once(("capstan", &ours)).chain(peer.iter().map(|p| ("dnsmasq", p)))
    {
        if let Some(e) = &s.first_error {
            eprintln!("{what}: first error: {e}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_encoding_and_reply_check() {
        let q = encode_query(0x1234, "a.bc.");
        assert_eq!(
            q,
            vec![
                0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'a', 2, b'b', b'c', 0, 0, 1, 0, 1
            ]
        );
        let mut reply = q.clone();
        reply[2] |= 0x80;
        reply[7] = 1;
        assert!(good_reply(&reply, 0x1234));
        reply[3] = 3;
        assert!(!good_reply(&reply, 0x1234));
    }
}
