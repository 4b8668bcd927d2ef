//! A cluster of three hosts (network namespaces on one bridge): one `capstan server`, two
//! `capstan agent`s joined with a token, host-gw routes between the nodes' pod CIDRs.
//! Pod-to-pod by IP (source address kept), Service by DNS name, NodePort on every host; then a
//! partitioned host: NotReady, its pods recreated elsewhere, back to Ready and cleaned up.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::{Kubectl, run};
use crate::hosts::Cluster;

const K: Kubectl = Kubectl::Minor(32);
pub(crate) const IMAGE: &str = "capstan.test/e2e/busybox:1";
pub(crate) const NS: &str = "mn";
const TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(300);

/// The web Deployment (httpd answering its hostname, and the client's address at
/// /cgi-bin/ip) and its NodePort Service; `when`: the spread constraint's whenUnsatisfiable.
pub(crate) fn web(replicas: u32, when: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: {NS}\nspec:\n  replicas: {replicas}\n  selector:\n    matchLabels: {{app: web}}\n  template:\n    metadata:\n      labels: {{app: web}}\n    spec:\n      terminationGracePeriodSeconds: 1\n      topologySpreadConstraints:\n      - {{maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: {when}, labelSelector: {{matchLabels: {{app: web}}}}}}\n      containers:\n      - name: httpd\n        image: {IMAGE}\n        imagePullPolicy: IfNotPresent\n        command: [\"sh\", \"-c\", \"mkdir -p /www/cgi-bin && hostname > /www/index.html && printf \x27#!/bin/sh\\\\necho Content-Type: text/plain\\\\necho\\\\necho $REMOTE_ADDR\\\\n\x27 > /www/cgi-bin/ip && chmod +x /www/cgi-bin/ip && exec httpd -f -p 8080 -h /www\"]\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: {NS}\nspec:\n  type: NodePort\n  selector: {{app: web}}\n  ports:\n  - port: 80\n    targetPort: 8080\n"
    )
}

/// Running web pods with an IP: name → (node, pod IP).
pub(crate) fn running_pods(c: &Cluster) -> BTreeMap<String, (String, String)> {
    let out = c.kubectl(
        K,
        &["get", "pods", "-n", NS, "-l", "app=web", "-o", "json"],
        None,
    );
    if !out.status.success() {
        return BTreeMap::new();
    }
    let json = out.json();
    let mut pods = BTreeMap::new();
    for p in json["items"].as_array().into_iter().flatten() {
        let running = p["status"]["phase"] == "Running"
            && p["metadata"]["deletionTimestamp"].is_null()
            && p["status"]["containerStatuses"][0]["ready"] == true;
        let (Some(name), Some(node), Some(ip)) = (
            p["metadata"]["name"].as_str(),
            p["spec"]["nodeName"].as_str(),
            p["status"]["podIP"].as_str(),
        ) else {
            continue;
        };
        if running {
            pods.insert(name.to_string(), (node.to_string(), ip.to_string()));
        }
    }
    pods
}

/// Polls `f` until it returns Some, or panics with `what` and the hosts' logs.
pub(crate) fn wait_for<T>(
    c: &mut Cluster,
    what: &str,
    timeout: Duration,
    mut f: impl FnMut(&Cluster) -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    let mut last_log = Instant::now();
    loop {
        c.assert_running();
        if let Some(v) = f(c) {
            return v;
        }
        if last_log.elapsed() > Duration::from_secs(10) {
            eprintln!("still waiting for {what}");
            last_log = Instant::now();
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(POLL);
    }
}

/// From `pod`: every IP in `ips` on :8080 and the Service by name; what failed, if anything.
pub(crate) fn probe_from(c: &Cluster, pod: &str, ips: &[&str]) -> Result<String, String> {
    let script = format!(
        "for ip in {}; do timeout 3 wget -qO- http://$ip:8080/ || echo FAIL $ip; \
         echo \"from $ip\" $(timeout 3 wget -qO- http://$ip:8080/cgi-bin/ip); done; \
         timeout 5 wget -qO- http://web.{NS}/ || echo FAIL service",
        ips.join(" ")
    );
    let out = c.kubectl(K, &["exec", "-n", NS, pod, "--", "sh", "-c", &script], None);
    if out.status.success() && !out.stdout.contains("FAIL") {
        Ok(out.stdout)
    } else {
        Err(format!("{}{}", out.stdout, out.stderr))
    }
}

pub(crate) fn curl(url: &str) -> Option<String> {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-m", "3", url]);
    let out = run(cmd, None);
    (out.status.success() && !out.stdout.trim().is_empty()).then(|| out.stdout.trim().to_string())
}

#[test]
fn multinode_three_hosts_pods_reach_each_other_services_and_node_ports() {
    let started = Instant::now();
    let images = tempfile::Builder::new()
        .prefix("capstan-e2e-mn-img-")
        .tempdir()
        .expect("tempdir");
    let archive = images.path().join("busybox.tar");
    capstan_runtime::testimage::busybox_oci_archive(&archive, IMAGE).expect("busybox image");
    let mut c = Cluster::start(3, &[], &[archive]);
    eprintln!("3 hosts Ready after {:?}", started.elapsed());

    let nodes = c.kubectl(K, &["get", "nodes"], None).ok();
    let names: Vec<String> = c.hosts.iter().map(|h| h.node.name.clone()).collect();
    for n in &names {
        let row = nodes
            .stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(n.as_str()))
            .unwrap_or_else(|| panic!("{n} missing: {nodes}"));
        assert_eq!(row.split_whitespace().nth(1), Some("Ready"), "{nodes}");
    }
    assert_eq!(nodes.lines().len(), 4, "{nodes}");

    c.kubectl(K, &["create", "namespace", NS], None).ok();
    c.kubectl(K, &["apply", "-f", "-"], Some(&web(6, "DoNotSchedule")))
        .ok();
    let pods = wait_for(&mut c, "6 running web pods on 3 nodes", TIMEOUT, |c| {
        let pods = running_pods(c);
        let on: BTreeSet<&String> = pods.values().map(|(n, _)| n).collect();
        (pods.len() == 6 && on.len() == 3).then_some(pods)
    });
    eprintln!("6 pods on 3 nodes after {:?}", started.elapsed());

    // From every pod: every pod by IP, and the Service by its DNS name.
    let ips: Vec<&str> = pods.values().map(|(_, ip)| ip.as_str()).collect();
    for (pod, (node, _)) in &pods {
        let body = wait_for(
            &mut c,
            &format!("pod {pod} on {node} reaching all pods"),
            TIMEOUT,
            |c| match probe_from(c, pod, &ips) {
                Ok(b) => Some(b),
                Err(e) => {
                    eprintln!("from {pod}: {e}");
                    None
                }
            },
        );
        // Cross-node traffic is routed, not masqueraded: every pod saw this pod's own IP.
        let own_ip = &pods[pod].1;
        let seen: Vec<&str> = body.lines().filter(|l| l.starts_with("from ")).collect();
        assert_eq!(seen.len(), ips.len(), "{body}");
        for line in &seen {
            assert!(
                // busybox httpd shows IPv4 clients as [::ffff:a.b.c.d].
                line.ends_with(&format!(" {own_ip}")) || line.ends_with(&format!(":{own_ip}]")),
                "source of {pod} rewritten: {line}"
            );
        }
        for name in pods.keys() {
            assert!(
                body.contains(name.as_str()),
                "{name} did not answer {pod}: {body}"
            );
        }
    }
    eprintln!(
        "pod-to-pod and service checks after {:?}",
        started.elapsed()
    );

    // NodePort on every host's address, from the root namespace.
    let svc = c
        .kubectl(K, &["get", "svc", "-n", NS, "web", "-o", "json"], None)
        .ok()
        .json();
    let node_port = svc["spec"]["ports"][0]["nodePort"]
        .as_u64()
        .expect("nodePort");
    let addrs: Vec<String> = c.hosts.iter().map(|h| h.addr.to_string()).collect();
    for addr in &addrs {
        let url = format!("http://{addr}:{node_port}/");
        let body = wait_for(&mut c, &format!("NodePort {url}"), TIMEOUT, |_| curl(&url));
        assert!(pods.contains_key(body.as_str()), "{url} answered {body:?}");
    }
    eprintln!("NodePort on 3 hosts after {:?}", started.elapsed());
}

/// Node name → its Ready condition status ("True", "False", "Unknown").
fn ready_status(c: &Cluster) -> BTreeMap<String, String> {
    let out = c.kubectl(K, &["get", "nodes", "-o", "json"], None);
    if !out.status.success() {
        return BTreeMap::new();
    }
    let json = out.json();
    let mut m = BTreeMap::new();
    for n in json["items"].as_array().into_iter().flatten() {
        let name = n["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let status = n["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Ready")
            .and_then(|c| c["status"].as_str())
            .unwrap_or_default()
            .to_string();
        m.insert(name, status);
    }
    m
}

/// All web pods in the API (terminating ones too): name → node.
fn all_pods(c: &Cluster) -> Option<BTreeMap<String, String>> {
    let out = c.kubectl(
        K,
        &["get", "pods", "-n", NS, "-l", "app=web", "-o", "json"],
        None,
    );
    if !out.status.success() {
        return None;
    }
    let json = out.json();
    Some(
        json["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                (
                    p["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    p["spec"]["nodeName"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
            })
            .collect(),
    )
}

#[test]
fn multinode_partitioned_node_goes_not_ready_and_its_pods_move() {
    let started = Instant::now();
    let images = tempfile::Builder::new()
        .prefix("capstan-e2e-mn-img-")
        .tempdir()
        .expect("tempdir");
    let archive = images.path().join("busybox.tar");
    capstan_runtime::testimage::busybox_oci_archive(&archive, IMAGE).expect("busybox image");
    let mut c = Cluster::start(
        3,
        &[
            "--node-monitor-grace-period",
            "20s",
            "--node-monitor-period",
            "2s",
            "--default-unreachable-toleration-seconds",
            "2",
            "--default-not-ready-toleration-seconds",
            "2",
        ],
        &[archive],
    );
    c.kubectl(K, &["create", "namespace", NS], None).ok();
    c.kubectl(K, &["apply", "-f", "-"], Some(&web(6, "ScheduleAnyway")))
        .ok();
    let pods = wait_for(&mut c, "6 running web pods", TIMEOUT, |c| {
        let pods = running_pods(c);
        (pods.len() == 6).then_some(pods)
    });
    // The agent host with the most pods is cut off.
    let victim = (1..c.hosts.len())
        .max_by_key(|i| {
            let name = &c.hosts[*i].node.name;
            pods.values().filter(|(n, _)| n == name).count()
        })
        .expect("an agent host");
    let victim_name = c.hosts[victim].node.name.clone();
    assert!(
        pods.values().any(|(n, _)| *n == victim_name),
        "no pod on any agent: {pods:?}"
    );
    let svc = c
        .kubectl(K, &["get", "svc", "-n", NS, "web", "-o", "json"], None)
        .ok()
        .json();
    let node_port = svc["spec"]["ports"][0]["nodePort"]
        .as_u64()
        .expect("nodePort");

    c.hosts[victim].set_link(false);
    let cut = Instant::now();
    wait_for(
        &mut c,
        "the cut-off node NotReady",
        Duration::from_secs(50),
        |c| {
            let s = ready_status(c);
            (s.get(&victim_name).is_some_and(|s| s != "True")).then_some(())
        },
    );
    eprintln!("{victim_name} NotReady {:?} after the cut", cut.elapsed());
    wait_for(
        &mut c,
        "6 running pods on the reachable nodes",
        TIMEOUT,
        |c| {
            let pods = running_pods(c);
            (pods.len() == 6 && pods.values().all(|(n, _)| *n != victim_name)).then_some(())
        },
    );
    eprintln!("pods recreated {:?} after the cut", cut.elapsed());
    // The Service answers through each reachable node, every time.
    for h in c.hosts.iter().filter(|h| h.node.name != victim_name) {
        let url = format!("http://{}:{node_port}/", h.addr);
        for _ in 0..10 {
            let body = curl(&url).unwrap_or_else(|| panic!("{url} did not answer after the cut"));
            assert!(!body.is_empty());
        }
    }

    c.hosts[victim].set_link(true);
    let back = Instant::now();
    wait_for(&mut c, "the reconnected node Ready", TIMEOUT, |c| {
        (ready_status(c).get(&victim_name).map(String::as_str) == Some("True")).then_some(())
    });
    eprintln!(
        "{victim_name} Ready {:?} after reconnecting",
        back.elapsed()
    );
    wait_for(
        &mut c,
        "stale pods on the reconnected node gone",
        TIMEOUT,
        |c| {
            all_pods(c)
                .filter(|p| p.values().all(|n| *n != victim_name))
                .map(|_| ())
        },
    );
    eprintln!(
        "stale pods cleaned {:?} after reconnecting (test {:?})",
        back.elapsed(),
        started.elapsed()
    );
}
