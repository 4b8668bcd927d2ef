//! The rendered rules on the real kernel: traffic from the host to ClusterIPs, NodePorts and
//! LoadBalancer IPs reaches endpoints in a netns, at random, with affinity and draining, and a
//! Service without endpoints refuses connections instead of blackholing them.

mod proxy_common;

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::net::SocketAddr;

use capstan_net::proxy::{NftApply, NftBinary, RenderOptions, build, render};
use proxy_common::*;
use serde_json::json;

fn tally(addr: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for _ in 0..n {
        let who = ask(addr).unwrap_or_else(|e| panic!("request to {addr}: {e}"));
        *out.entry(who).or_default() += 1;
    }
    out
}

#[tokio::test]
async fn host_traffic_reaches_endpoints_and_empty_services_refuse() {
    let (k, tag) = unique();
    let net = PodNet::create(k, &tag, 3);
    let table = format!("cpxt{tag}");
    let _guard = TableGuard(table.clone());
    let (a, b, c) = (
        net.addrs[0].to_string(),
        net.addrs[1].to_string(),
        net.addrs[2].to_string(),
    );
    let vip = move |last: u8| format!("10.250.{k}.{last}");
    let node_port = 32700 + (k % 60) as u16;
    let services = vec![
        lb_service(
            "t",
            "web",
            json!({"type": "LoadBalancer", "clusterIP": vip(10), "ports": [{"port": 80, "targetPort": 8080, "nodePort": node_port}]}),
            &[&vip(20)],
        ),
        service(
            "t",
            "empty",
            json!({"clusterIP": vip(11), "ports": [{"port": 80}]}),
        ),
        service(
            "t",
            "sticky",
            json!({"clusterIP": vip(12), "ports": [{"port": 80}], "sessionAffinity": "ClientIP",
                   "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}),
        ),
        service(
            "t",
            "drain",
            json!({"clusterIP": vip(13), "ports": [{"port": 80}]}),
        ),
    ];
    let slices = vec![
        slice("t", "web", "web-1", 8080, &[ready(&a), ready(&b)]),
        slice(
            "t",
            "sticky",
            "sticky-1",
            8080,
            &[ready(&a), ready(&b), ready(&c)],
        ),
        slice(
            "t",
            "drain",
            "drain-1",
            8080,
            &[
                (&a, "node-a", false, true, true),
                (&b, "node-a", false, false, false),
            ],
        ),
    ];
    let options = RenderOptions {
        table: table.clone(),
        pod_cidrs: vec![net.subnet.clone()],
    };
    let nft = NftBinary::default();
    nft.apply(&render(&build(&services, &slices, "node-a"), &options))
        .await
        .expect("apply");

    tokio::task::spawn_blocking(move || {
        let at = |ip: &str, port: u16| SocketAddr::new(ip.parse().unwrap(), port);
        // Random balancing over the ready endpoints only.
        let seen = tally(at(&vip(10), 80), 120);
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert!(seen.values().all(|n| *n >= 30), "{seen:?}");
        assert!(!seen.contains_key(&c));
        // NodePort on the node's addresses, loopback included; the LoadBalancer IP.
        for addr in [
            at("127.0.0.1", node_port),
            at(&host_ip().to_string(), node_port),
            at(&vip(20), 80),
        ] {
            let who = ask(addr).unwrap_or_else(|e| panic!("{addr}: {e}"));
            assert!(who == a || who == b, "{addr} answered by {who}");
        }
        // No endpoints: refused at once, not a timeout.
        let started = std::time::Instant::now();
        let err = ask(at(&vip(11), 80)).expect_err("no endpoints");
        assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        // ClientIP affinity: one endpoint for every request of this client.
        let sticky = tally(at(&vip(12), 80), 30);
        assert_eq!(sticky.len(), 1, "{sticky:?}");
        // Nothing ready: the serving terminating endpoint drains, the not-serving one gets nothing.
        let drain = tally(at(&vip(13), 80), 20);
        assert_eq!(drain.keys().collect::<Vec<_>>(), vec![&a], "{drain:?}");
    })
    .await
    .expect("traffic checks");
    drop(net);
}
