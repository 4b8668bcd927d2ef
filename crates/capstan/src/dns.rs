//! Cluster DNS in `capstan server`: the DNS server on `--cluster-dns-port` and the kube-dns
//! Service at `--cluster-dns` (default: the 10th address of `--service-cidr`, 10.43.0.10).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::Context;
use capstan_net::dns::{self, DnsOptions, KubeDnsService, Listeners};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::server::ServerArgs;

/// Binds the DNS port, then serves and keeps kube-dns until `stop`. Also makes the cluster
/// DNS address the local agent's `--cluster-dns` unless one was given.
pub async fn start(
    args: &mut ServerArgs,
    stop: CancellationToken,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let cluster_ip = match args.node.cluster_dns {
        Some(ip) => ip,
        None => dns::nth_address(&args.service_cidr, 10).with_context(|| {
            format!(
                "--service-cidr {:?} has no 10th address for cluster DNS",
                args.service_cidr
            )
        })?,
    };
    args.node.cluster_dns = Some(cluster_ip);
    let endpoint_ip =
        dns::reachable_address(args.node.node_ip.unwrap_or(IpAddr::from([127, 0, 0, 1])));
    // The published address and loopback, not the wildcard: a UDP answer must leave from the
    // address the query was sent to (the pod's resolver and the proxy's conntrack both check).
    let mut listen = vec![SocketAddr::new(endpoint_ip, args.cluster_dns_port)];
    let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, args.cluster_dns_port));
    if !listen.contains(&loopback) {
        listen.push(loopback);
    }
    let listeners = Listeners::bind(&listen).await.with_context(|| {
        format!(
            "cluster DNS cannot listen on port {} (in use?): pass --cluster-dns-port or --disable-dns",
            args.cluster_dns_port
        )
    })?;
    let port = listeners
        .local_addrs()
        .first()
        .map(|a| a.port())
        .unwrap_or(args.cluster_dns_port);
    let options = DnsOptions {
        listen,
        domain: args.node.cluster_domain.clone(),
        upstreams: dns::host_upstreams(),
        ttl: dns::DEFAULT_TTL,
    };
    tracing::info!(%cluster_ip, %endpoint_ip, port, upstreams = ?options.upstreams, "starting cluster DNS");
    let client = crate::server::admin_client(&args.data_dir).await?;
    let serve_client = client.clone();
    let serve_stop = stop.clone();
    let server = tokio::spawn(async move {
        if let Err(e) = dns::serve(serve_client, options, listeners, serve_stop).await {
            tracing::error!(error = %e, "cluster DNS failed");
        }
    });
    let spec = KubeDnsService {
        cluster_ip,
        endpoint_ip,
        port,
    };
    let keeper = tokio::spawn(dns::keep_kube_dns_service(client, spec, stop));
    Ok(vec![server, keeper])
}
