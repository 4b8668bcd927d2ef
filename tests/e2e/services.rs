//! Services through the node's service proxy (nftables) and ServiceLB, on one node-backed
//! server driven by kubectl 1.32: ClusterIP balancing from the host and from a pod, NodePort,
//! LoadBalancer ingress, readiness removal, drain on scale-down, the seed's canary, and an agent
//! restart that keeps the rules serving.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use crate::harness::{Kubectl, Server, ServerOptions};

const K: Kubectl = Kubectl::Minor(32);
const IMAGE: &str = "capstan.test/e2e/busybox:1";
const NS: &str = "svc";
const TIMEOUT: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(200);

struct Node {
    server: Server,
    _images: TempDir,
}

impl Node {
    fn start() -> Node {
        let images = tempfile::Builder::new()
            .prefix("capstan-e2e-img-")
            .tempdir()
            .expect("tempdir");
        let archive = images.path().join("busybox.tar");
        capstan_runtime::testimage::busybox_oci_archive(&archive, IMAGE)
            .expect("build the busybox test image");
        let server = Server::start_with(ServerOptions {
            agent: true,
            import_images: vec![archive],
            ..Default::default()
        });
        Node {
            server,
            _images: images,
        }
    }

    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> crate::harness::Out {
        self.server.kubectl(K, args, stdin)
    }

    fn apply(&self, yaml: &str) {
        self.kubectl(&["apply", "-f", "-"], Some(yaml)).ok();
    }

    fn get(&self, kind: &str, name: &str) -> Value {
        let out = self.kubectl(&["get", kind, "-n", NS, name, "-o", "json"], None);
        if out.status.success() {
            out.json()
        } else {
            Value::Null
        }
    }

    fn wait(&self, what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + TIMEOUT;
        while !cond() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; log:\n{}",
                self.server.log_tail(80)
            );
            thread::sleep(POLL);
        }
    }

    /// Names of the pods with `selector` that are Ready (and not terminating).
    fn ready_pods(&self, selector: &str) -> Vec<String> {
        let out = self.kubectl(
            &["get", "pods", "-n", NS, "-l", selector, "-o", "json"],
            None,
        );
        if !out.status.success() {
            return vec![];
        }
        out.json()["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null() && pod_ready(p))
            .filter_map(|p| p["metadata"]["name"].as_str().map(String::from))
            .collect()
    }

    fn wait_ready_pods(&self, selector: &str, n: usize) -> Vec<String> {
        let mut pods = vec![];
        self.wait(&format!("{n} ready pods {selector}"), || {
            pods = self.ready_pods(selector);
            pods.len() == n
        });
        pods
    }

    fn cluster_ip(&self, svc: &str) -> String {
        self.get("service", svc)["spec"]["clusterIP"]
            .as_str()
            .expect("clusterIP")
            .to_string()
    }

    /// Waits until the Service's EndpointSlices list `n` ready endpoints.
    fn wait_endpoints(&self, svc: &str, n: usize) {
        self.wait(&format!("{n} ready endpoints of {svc}"), || {
            let label = format!("kubernetes.io/service-name={svc}");
            let out = self.kubectl(
                &[
                    "get",
                    "endpointslices",
                    "-n",
                    NS,
                    "-l",
                    &label,
                    "-o",
                    "json",
                ],
                None,
            );
            out.status.success()
                && out.json()["items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
                    .filter(|e| e["conditions"]["ready"] == true)
                    .count()
                    == n
        });
    }
}

fn pod_ready(p: &Value) -> bool {
    p["status"]["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

/// One HTTP/1.0 GET; the body, trimmed.
fn http_get(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: e2e\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .ok_or_else(|| std::io::Error::other(format!("no HTTP body in {text:?}")))?;
    Ok(body.trim().to_string())
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("ip"), port)
}

fn tally(answers: impl IntoIterator<Item = String>) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for a in answers {
        *out.entry(a).or_default() += 1;
    }
    out
}

fn assert_balanced(seen: &BTreeMap<String, usize>, pods: &[String], total: usize, who: &str) {
    for p in pods {
        let n = seen.get(p).copied().unwrap_or(0);
        let share = n as f64 / total as f64;
        assert!(
            (0.20..=0.47).contains(&share),
            "{who}: pod {p} got {n}/{total}: {seen:?}"
        );
    }
    assert_eq!(seen.values().sum::<usize>(), total, "{who}: {seen:?}");
    assert!(
        seen.keys().all(|k| pods.contains(k)),
        "{who}: answers from elsewhere or failures: {seen:?}"
    );
}

/// The host's address on its default route (a node address other than loopback).
fn host_ip() -> String {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").expect("udp");
    s.connect("192.0.2.1:53").expect("route");
    s.local_addr().expect("local").ip().to_string()
}

fn deployment(name: &str, replicas: u32, labels: &str, body: &str, extra: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\n  namespace: {NS}\nspec:\n  replicas: {replicas}\n  selector:\n    matchLabels: {{{labels}}}\n  template:\n    metadata:\n      labels: {{{labels}}}\n    spec:\n      terminationGracePeriodSeconds: 10\n      containers:\n      - name: httpd\n        image: {IMAGE}\n        env:\n        - name: POD_NAME\n          valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}\n        command: [\"sh\", \"-c\", \"mkdir -p /www && echo {body} > /www/index.html && touch /tmp/ready && exec httpd -f -p 8080 -h /www\"]\n{extra}"
    )
}

fn service(name: &str, selector: &str, ty: &str, port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {NS}\nspec:\n  type: {ty}\n  selector: {{{selector}}}\n  ports:\n  - port: {port}\n    targetPort: 8080\n"
    )
}

/// A client loop against `target` in a thread: (time, ok) per request until stopped.
struct Prober {
    stop: Arc<AtomicBool>,
    handle: thread::JoinHandle<Vec<(Instant, Result<String, String>)>>,
}

impl Prober {
    fn start(target: SocketAddr) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = thread::spawn(move || {
            let mut out = Vec::new();
            while !flag.load(Ordering::SeqCst) {
                let r = http_get(target).map_err(|e| e.to_string());
                let failed = r.is_err();
                out.push((Instant::now(), r));
                if failed {
                    // A refused connect returns at once: pace the retries.
                    thread::sleep(Duration::from_millis(20));
                }
            }
            out
        });
        Prober { stop, handle }
    }

    fn finish(self) -> Vec<(Instant, Result<String, String>)> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().expect("prober thread")
    }
}

/// The longest stretch from a failed request to the next success.
fn longest_outage(results: &[(Instant, Result<String, String>)]) -> Duration {
    let mut longest = Duration::ZERO;
    let mut since: Option<Instant> = None;
    for (t, r) in results {
        match (r, since) {
            (Err(_), None) => since = Some(*t),
            (Ok(_), Some(s)) => {
                longest = longest.max(t.duration_since(s));
                since = None;
            }
            _ => {}
        }
    }
    if let (Some(s), Some((t, _))) = (since, results.last()) {
        longest = longest.max(t.duration_since(s));
    }
    longest
}

#[test]
fn services_cluster_ip_node_port_lb_readiness_drain_canary_and_restart() {
    let mut node = Node::start();
    node.wait("node Ready", || {
        let name = node.server.node().name.clone();
        let out = node.kubectl(&["get", "node", &name, "-o", "json"], None);
        out.status.success()
            && out.json()["status"]["conditions"]
                .as_array()
                .is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
    });
    node.kubectl(&["create", "namespace", NS], None).ok();
    let probe_and_hook = "        readinessProbe:\n          exec: {command: [\"cat\", \"/tmp/ready\"]}\n          periodSeconds: 1\n          failureThreshold: 1\n        lifecycle:\n          preStop:\n            exec: {command: [\"sleep\", \"5\"]}\n";
    node.apply(&deployment(
        "web",
        3,
        "app: web",
        "$POD_NAME",
        probe_and_hook,
    ));
    let (np_low, np_high) = node.server.node().node_port_range;
    let lb_port = np_high;
    node.apply(&service("web", "app: web", "ClusterIP", 80));
    node.apply(&service("web-np", "app: web", "NodePort", 80));
    node.apply(&service("web-lb", "app: web", "LoadBalancer", lb_port));
    node.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: client\n  namespace: {NS}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: {IMAGE}\n    command: [\"sleep\", \"3600\"]\n"
    ));
    let web = node.wait_ready_pods("app=web", 3);
    node.wait_endpoints("web", 3);
    node.wait("client pod Ready", || pod_ready(&node.get("pod", "client")));
    let vip = node.cluster_ip("web");

    // 1. ClusterIP from the host: all three pods, each 20%..47%.
    let host: Vec<String> = (0..300)
        .map(|i| http_get(addr(&vip, 80)).unwrap_or_else(|e| panic!("host request {i}: {e}")))
        .collect();
    assert_balanced(&tally(host), &web, 300, "from the host");

    // ...and from another pod (one exec running a wget loop).
    let script = format!(
        "i=0; while [ $i -lt 300 ]; do timeout 5 wget -q -O - http://{vip}/ || echo FAILED; i=$((i+1)); done"
    );
    let out = node
        .kubectl(
            &["exec", "-n", NS, "client", "--", "sh", "-c", &script],
            None,
        )
        .ok();
    let from_pod = tally(out.stdout.lines().map(|l| l.trim().to_string()));
    if from_pod.contains_key("FAILED") {
        let diag = node.kubectl(
            &[
                "exec",
                "-n",
                NS,
                "client",
                "--",
                "sh",
                "-c",
                &format!("timeout 5 wget -O - http://{vip}/ 2>&1; ip route; ip addr"),
            ],
            None,
        );
        let table = std::process::Command::new("nft")
            .args(["list", "table", "inet", &node.server.node().proxy_table])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        panic!(
            "requests from a pod failed: {from_pod:?}\n{}{}\n{table}",
            diag.stdout, diag.stderr
        );
    }
    assert_balanced(&from_pod, &web, 300, "from a pod");

    // 2. NodePort on the node's addresses.
    let node_port = node.get("service", "web-np")["spec"]["ports"][0]["nodePort"]
        .as_u64()
        .expect("nodePort") as u16;
    assert!((np_low..=np_high).contains(&node_port));
    for ip in ["127.0.0.1".to_string(), host_ip()] {
        let who = http_get(addr(&ip, node_port)).unwrap_or_else(|e| panic!("NodePort {ip}: {e}"));
        assert!(web.contains(&who), "NodePort {ip} answered {who}");
    }

    // 3. LoadBalancer: ServiceLB sets the node address as ingress, and it answers.
    let mut ingress = String::new();
    node.wait("LoadBalancer ingress", || {
        let svc = node.get("service", "web-lb");
        ingress = svc["status"]["loadBalancer"]["ingress"][0]["ip"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        !ingress.is_empty()
    });
    assert_eq!(
        node.get("service", "web-lb")["status"]["loadBalancer"]["ingress"][0]["ipMode"],
        "VIP"
    );
    let mut lb_answer = Err(std::io::Error::other("not tried"));
    node.wait("the LoadBalancer address to answer", || {
        lb_answer = http_get(addr(&ingress, lb_port));
        lb_answer.is_ok()
    });
    assert!(web.contains(lb_answer.as_ref().expect("answer")));

    // 4. A failed readiness probe takes the pod out of the Service within 5 s of the verdict.
    let victim = web[0].clone();
    node.kubectl(&["exec", "-n", NS, &victim, "--", "rm", "/tmp/ready"], None)
        .ok();
    let removed = Instant::now();
    node.wait("the readiness verdict", || {
        !pod_ready(&node.get("pod", &victim))
    });
    let verdict = Instant::now();
    loop {
        let answers: Vec<String> = (0..15)
            .map(|_| http_get(addr(&vip, 80)).expect("request while one pod is unready"))
            .collect();
        if !answers.contains(&victim) {
            break;
        }
        assert!(
            verdict.elapsed() < Duration::from_secs(5),
            "{victim} still served {:?} after its readiness verdict ({:?} after the rm)",
            verdict.elapsed(),
            removed.elapsed()
        );
    }
    let gone_after = verdict.elapsed();
    node.kubectl(
        &["exec", "-n", NS, &victim, "--", "touch", "/tmp/ready"],
        None,
    )
    .ok();
    node.wait_endpoints("web", 3);
    eprintln!("readiness: removed from the Service {gone_after:?} after the verdict");

    // 5. Scale down with a client loop running: no failed request (preStop keeps the
    // terminating pods serving while the proxy drops them). The hook's 5 s covers the
    // terminating endpoint's way to the proxy (EndpointSlice controller, watch, nft swap) even
    // with the whole suite loading 2 cores; 3 s once fell short by one request in 13,306.
    let prober = Prober::start(addr(&vip, 80));
    let scaled = Instant::now();
    node.kubectl(
        &["scale", "deployment", "web", "-n", NS, "--replicas=1"],
        None,
    )
    .ok();
    node.wait("scale down to one pod", || {
        let out = node.kubectl(
            &["get", "pods", "-n", NS, "-l", "app=web", "-o", "name"],
            None,
        );
        out.status.success() && out.stdout.lines().count() == 1
    });
    let results = prober.finish();
    let failed: Vec<_> = results.iter().filter(|(_, r)| r.is_err()).collect();
    assert!(results.len() > 20, "too few requests: {}", results.len());
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during the scale-down: {:?}",
        failed.len(),
        results.len(),
        failed
            .iter()
            .take(5)
            .map(|(t, r)| (t.duration_since(scaled), r))
            .collect::<Vec<_>>()
    );

    // 6. The seed's canary: 3 stable (v1) + 1 canary (v2) behind one Service.
    node.apply(&deployment(
        "stable",
        3,
        "app: canary, track: stable",
        "v1",
        "",
    ));
    node.apply(&deployment(
        "canary",
        1,
        "app: canary, track: canary",
        "v2",
        "",
    ));
    node.apply(&service("canary", "app: canary", "ClusterIP", 80));
    node.wait_ready_pods("app=canary", 4);
    node.wait_endpoints("canary", 4);
    let canary_ip = node.cluster_ip("canary");
    let seen = tally((0..400).map(|i| {
        http_get(addr(&canary_ip, 80)).unwrap_or_else(|e| panic!("canary request {i}: {e}"))
    }));
    let v2 = seen.get("v2").copied().unwrap_or(0) as f64 / 400.0;
    assert!((0.15..=0.35).contains(&v2), "v2 share {v2}: {seen:?}");
    assert_eq!(seen.keys().collect::<Vec<_>>(), ["v1", "v2"]);

    // Hairpin: the canary pod reaches its own Service, and itself through it.
    let canary_pod = node.wait_ready_pods("track=canary", 1).remove(0);
    let script = format!(
        "i=0; while [ $i -lt 40 ]; do timeout 5 wget -q -O - http://{canary_ip}/ || echo FAILED; i=$((i+1)); done"
    );
    let out = node
        .kubectl(
            &["exec", "-n", NS, &canary_pod, "--", "sh", "-c", &script],
            None,
        )
        .ok();
    let hairpin = tally(out.stdout.lines().map(|l| l.trim().to_string()));
    assert!(
        hairpin.contains_key("v2") && !hairpin.contains_key("FAILED"),
        "from the canary pod itself: {hairpin:?}"
    );

    // 7. Restart of the agent (kill -9 of the server, pods keep running): no window of
    // refused connections longer than 1 s.
    let prober = Prober::start(addr(&canary_ip, 80));
    let before = Instant::now();
    node.server.restart();
    node.wait_endpoints("canary", 4);
    // Keep probing across the new proxy's first syncs.
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_secs(3) {
        thread::sleep(POLL);
    }
    let results = prober.finish();
    let outage = longest_outage(&results);
    eprintln!(
        "restart: {} requests over {:?}, {} failed, longest outage {outage:?}",
        results.len(),
        before.elapsed(),
        results.iter().filter(|(_, r)| r.is_err()).count()
    );
    assert!(outage < Duration::from_secs(1), "outage {outage:?}");
}
