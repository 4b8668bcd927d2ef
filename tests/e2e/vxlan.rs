//! Two hosts without a shared L2 segment (each on its own /24, the root namespace routing
//! between them) and `--flannel-backend vxlan`: pods on both nodes reach each other by IP
//! with their source address kept, and a Service by name across nodes, over `capstan.1`.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::{Kubectl, run};
use crate::hosts::{Cluster, busybox_archive};

const K: Kubectl = Kubectl::Minor(32);
const IMAGE: &str = "capstan.test/e2e/busybox:1";
const NS: &str = "vx";
const TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(300);
const DEVICE: &str = "capstan.1";

/// httpd answering its hostname, and the client's address at /cgi-bin/ip, one per node; the
/// Service `web` over both, `far` over the pod labelled `side=far` only.
fn manifests() -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: {NS}\nspec:\n  replicas: 2\n  selector:\n    matchLabels: {{app: web}}\n  template:\n    metadata:\n      labels: {{app: web}}\n    spec:\n      terminationGracePeriodSeconds: 1\n      topologySpreadConstraints:\n      - {{maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule, labelSelector: {{matchLabels: {{app: web}}}}}}\n      containers:\n      - name: httpd\n        image: {IMAGE}\n        imagePullPolicy: IfNotPresent\n        command: [\"sh\", \"-c\", \"mkdir -p /www/cgi-bin && hostname > /www/index.html && printf \x27#!/bin/sh\\\\necho Content-Type: text/plain\\\\necho\\\\necho $REMOTE_ADDR\\\\n\x27 > /www/cgi-bin/ip && chmod +x /www/cgi-bin/ip && exec httpd -f -p 8080 -h /www\"]\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: {NS}\nspec:\n  selector: {{app: web}}\n  ports:\n  - port: 80\n    targetPort: 8080\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: far\n  namespace: {NS}\nspec:\n  selector: {{app: web, side: far}}\n  ports:\n  - port: 80\n    targetPort: 8080\n"
    )
}

/// Ready web pods: name → (node, pod IP).
fn running_pods(c: &Cluster) -> BTreeMap<String, (String, String)> {
    crate::multinode::running_pods_in(c, NS)
}

/// Polls `f` until it returns Some, or panics with `what` (the hosts' logs follow on drop).
fn wait_for<T>(c: &mut Cluster, what: &str, mut f: impl FnMut(&Cluster) -> Option<T>) -> T {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        c.assert_running();
        if let Some(v) = f(c) {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(POLL);
    }
}

/// `ip -n <netns> args...` stdout.
fn ip_in(netns: &str, args: &[&str]) -> String {
    let mut cmd = Command::new("ip");
    cmd.args(["-n", netns]).args(args);
    run(cmd, None).ok().stdout
}

/// (rx, tx) packet counters of the VXLAN device in `netns`.
fn counters(netns: &str) -> (u64, u64) {
    let json: serde_json::Value =
        serde_json::from_str(&ip_in(netns, &["-s", "-j", "link", "show", DEVICE]))
            .expect("ip -s -j link show JSON");
    let stats = &json[0]["stats64"];
    (
        stats["rx"]["packets"].as_u64().expect("rx packets"),
        stats["tx"]["packets"].as_u64().expect("tx packets"),
    )
}

#[test]
fn vxlan_two_routed_hosts_pods_reach_each_other_and_services() {
    let started = Instant::now();
    let (_images, archive) = busybox_archive(IMAGE);
    let backend = ["--flannel-backend", "vxlan"];
    let mut c = Cluster::start_routed(2, &backend, &backend, &[archive]);
    eprintln!("2 hosts Ready after {:?}", started.elapsed());
    let names: Vec<String> = c.hosts.iter().map(|h| h.node.name.clone()).collect();
    let ready = c.ready_nodes();
    assert!(names.iter().all(|n| ready.contains(n)), "{ready:?}");

    // No shared L2: the hosts are on different subnets, one reaches the other via a router.
    let route = ip_in(
        &c.hosts[1].netns,
        &["-4", "route", "get", &c.hosts[0].addr.to_string()],
    );
    assert!(route.contains(" via "), "{route}");

    // Every node published its VTEP; every host has the device with the other's route on it.
    let nodes = wait_for(&mut c, "both VTEPs published", |c| {
        let json = c
            .kubectl(K, &["get", "nodes", "-o", "json"], None)
            .ok()
            .json();
        let items = json["items"].as_array().cloned().unwrap_or_default();
        let published: BTreeMap<String, String> = items
            .iter()
            .filter_map(|n| {
                n["metadata"]["annotations"]["capstan.io/vxlan-vtep-mac"].as_str()?;
                let cidr = n["spec"]["podCIDR"].as_str()?;
                Some((
                    n["metadata"]["name"].as_str()?.to_string(),
                    cidr.to_string(),
                ))
            })
            .collect();
        (published.len() == 2).then_some(published)
    });
    for (i, h) in c.hosts.iter().enumerate() {
        let other = &nodes[&names[1 - i]];
        let mut routes = ip_in(&h.netns, &["-4", "route", "show", other]);
        let deadline = Instant::now() + TIMEOUT;
        while !routes.contains(&format!("dev {DEVICE}")) {
            assert!(
                Instant::now() < deadline,
                "{}: no route to {other} over {DEVICE}: {routes}",
                h.node.name
            );
            thread::sleep(POLL);
            routes = ip_in(&h.netns, &["-4", "route", "show", other]);
        }
        let link = ip_in(&h.netns, &["-d", "link", "show", DEVICE]);
        assert!(
            link.contains("vxlan id 1") && link.contains("dstport 8472"),
            "{link}"
        );
    }
    let before: Vec<(u64, u64)> = c.hosts.iter().map(|h| counters(&h.netns)).collect();

    c.kubectl(K, &["create", "namespace", NS], None).ok();
    c.kubectl(K, &["apply", "-f", "-"], Some(&manifests())).ok();
    let pods = wait_for(&mut c, "2 running web pods on 2 nodes", |c| {
        let pods = running_pods(c);
        let on: BTreeSet<&String> = pods.values().map(|(n, _)| n).collect();
        (pods.len() == 2 && on.len() == 2).then_some(pods)
    });
    let list: Vec<(String, String, String)> = pods
        .iter()
        .map(|(p, (n, ip))| (p.clone(), n.clone(), ip.clone()))
        .collect();
    // `far` is the second pod; the first calls it across nodes by Service name.
    c.kubectl(K, &["label", "pod", "-n", NS, &list[1].0, "side=far"], None)
        .ok();
    eprintln!("pods {list:?} after {:?}", started.elapsed());

    for (from, to) in [(0, 1), (1, 0)] {
        let (pod, _, own_ip) = &list[from];
        let (target, _, target_ip) = &list[to];
        let far = if from == 0 {
            format!("echo far $(timeout 5 wget -qO- http://far.{NS}/ || echo FAIL); ")
        } else {
            String::new()
        };
        let script = format!(
            "echo ip $(timeout 3 wget -qO- http://{target_ip}:8080/ || echo FAIL); \
             echo from $(timeout 3 wget -qO- http://{target_ip}:8080/cgi-bin/ip); \
             timeout 5 wget -qO- http://web.{NS}/ || echo FAIL web; {far}\
             echo mtu $(cat /sys/class/net/eth0/mtu)"
        );
        let body = wait_for(&mut c, &format!("{pod} reaching {target}"), |c| {
            let out = c.kubectl(K, &["exec", "-n", NS, pod, "--", "sh", "-c", &script], None);
            if out.status.success() && !out.stdout.contains("FAIL") {
                Some(out.stdout)
            } else {
                eprintln!("from {pod}: {}{}", out.stdout, out.stderr);
                None
            }
        });
        // By IP, and (from the first pod) by the `far` Service: the other node's pod answers.
        assert!(body.contains(&format!("ip {target}\n")), "{body}");
        assert!(
            from != 0 || body.contains(&format!("far {target}\n")),
            "{body}"
        );
        let seen = body
            .lines()
            .find(|l| l.starts_with("from "))
            .unwrap_or_default();
        assert!(
            // busybox httpd shows IPv4 clients as [::ffff:a.b.c.d].
            seen.ends_with(&format!(" {own_ip}")) || seen.ends_with(&format!(":{own_ip}]")),
            "source of {pod} rewritten: {seen}"
        );
        assert!(
            body.contains("mtu 1450"),
            "pod MTU not the tunnel's: {body}"
        );
    }

    // The traffic went through the tunnel on both hosts.
    for (h, (rx0, tx0)) in c.hosts.iter().zip(before) {
        let (rx, tx) = counters(&h.netns);
        assert!(
            rx > rx0 && tx > tx0,
            "{}: {DEVICE} rx {rx0}→{rx}, tx {tx0}→{tx}",
            h.node.name
        );
    }
    eprintln!("vxlan checks done after {:?}", started.elapsed());

    // A restarted agent keeps the device it finds (same ifindex and MAC) and the tunnel.
    let h1 = c.hosts[1].netns.clone();
    let link_before = ip_in(&h1, &["-o", "link", "show", DEVICE]);
    let count = |c: &Cluster, what: &str| c.hosts[1].log().matches(what).count();
    assert_eq!(count(&c, "vxlan VTEP up"), 1, "{}", c.logs(40));
    c.spawn_agent(1, "");
    wait_for(&mut c, "the restarted agent's VTEP up", |c| {
        (count(c, "vxlan VTEP up") == 2).then_some(())
    });
    assert_eq!(count(&c, "vxlan device created"), 1, "{}", c.logs(40));
    assert_eq!(ip_in(&h1, &["-o", "link", "show", DEVICE]), link_before);
    let (pod, _, _) = &list[1];
    let target_ip = &list[0].2;
    let script = format!("timeout 3 wget -qO- http://{target_ip}:8080/");
    let out = c.kubectl(K, &["exec", "-n", NS, pod, "--", "sh", "-c", &script], None);
    assert!(
        out.stdout.contains(&list[0].0),
        "{}{}",
        out.stdout,
        out.stderr
    );
    eprintln!("agent restart checked after {:?}", started.elapsed());
}
