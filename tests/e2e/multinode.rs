//! A cluster of three hosts (network namespaces on one bridge): one `capstan server`, two
//! `capstan agent`s joined with a token, host-gw routes between the nodes' pod CIDRs.
//! Pod-to-pod by IP (source address kept), Service by DNS name, NodePort on every host; then a
//! partitioned host: NotReady, its pods recreated elsewhere, back to Ready, and the stale pods'
//! containers, sandboxes, netns, cgroups and logs gone from it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::{Kubectl, run};
use crate::hosts::{Cluster, Host, busybox_archive};
use serde_json::Value;

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

/// The web pods of namespace `ns` as kubectl lists them (terminating ones too); None if
/// kubectl failed.
pub(crate) fn web_pods_in(c: &Cluster, ns: &str) -> Option<Vec<serde_json::Value>> {
    let out = c.kubectl(
        K,
        &["get", "pods", "-n", ns, "-l", "app=web", "-o", "json"],
        None,
    );
    if !out.status.success() {
        return None;
    }
    Some(out.json()["items"].as_array().cloned().unwrap_or_default())
}

/// The nodePort of Service `name` in the test namespace.
pub(crate) fn service_node_port(c: &Cluster, name: &str) -> u64 {
    let svc = c
        .kubectl(K, &["get", "svc", "-n", NS, name, "-o", "json"], None)
        .ok()
        .json();
    svc["spec"]["ports"][0]["nodePort"]
        .as_u64()
        .expect("nodePort")
}

/// Running, ready web pods of namespace `ns` with an IP: name → (node, pod IP).
pub(crate) fn running_pods_in(c: &Cluster, ns: &str) -> BTreeMap<String, (String, String)> {
    let mut pods = BTreeMap::new();
    for p in web_pods_in(c, ns).unwrap_or_default() {
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

/// Running, ready web pods with an IP: name → (node, pod IP).
pub(crate) fn running_pods(c: &Cluster) -> BTreeMap<String, (String, String)> {
    running_pods_in(c, NS)
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
    let (_images, archive) = busybox_archive(IMAGE);
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
    let node_port = service_node_port(&c, "web");
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
    Some(
        web_pods_in(c, NS)?
            .iter()
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

/// A web pod's sandbox as one host's runtime keeps it (`<data dir>/runtime`, `<run dir>`).
#[derive(Debug)]
struct HostSandbox {
    pod: String,
    uid: String,
    id: String,
    pause_pid: u64,
    netns: PathBuf,
    containers: Vec<String>,
}

fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_str(&fs::read_to_string(path).ok()?).ok()
}

/// The web pods' sandboxes (with their containers) in host `h`'s runtime state.
fn host_sandboxes(h: &Host) -> Vec<HostSandbox> {
    let root = h.data_dir.path().join("runtime");
    let mut containers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in fs::read_dir(root.join("containers"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Some(c) = read_json(&e.path().join("container.json")) {
            let sandbox = c["pod_sandbox_id"].as_str().unwrap_or_default().to_string();
            let id = c["id"].as_str().unwrap_or_default().to_string();
            containers.entry(sandbox).or_default().push(id);
        }
    }
    let mut out = Vec::new();
    for e in fs::read_dir(root.join("sandboxes"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let Some(s) = read_json(&e.path().join("sandbox.json")) else {
            continue;
        };
        let meta = &s["config"]["metadata"];
        if meta["namespace"] != NS {
            continue;
        }
        let id = s["id"].as_str().unwrap_or_default().to_string();
        out.push(HostSandbox {
            pod: meta["name"].as_str().unwrap_or_default().to_string(),
            uid: meta["uid"].as_str().unwrap_or_default().to_string(),
            pause_pid: s["pid"].as_u64().unwrap_or_default(),
            netns: PathBuf::from(s["netns_path"].as_str().unwrap_or_default()),
            containers: containers.remove(&id).unwrap_or_default(),
            id,
        });
    }
    out
}

/// `runc list` in host `h`'s runc root: container id → status.
fn runc_list(h: &Host) -> BTreeMap<String, String> {
    let mut cmd = Command::new("runc");
    cmd.arg("--root")
        .arg(h.node.run_dir.join("runc"))
        .args(["list", "-f", "json"]);
    let out = run(cmd, None);
    let list: Value = serde_json::from_str(&out.stdout).unwrap_or(Value::Null);
    list.as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let field = |k: &str| c[k].as_str().unwrap_or_default().to_string();
            (field("id"), field("status"))
        })
        .collect()
}

/// The pod cgroup directories of sandbox `id` on host `h` (every hierarchy, v1 or v2).
fn pod_cgroups(h: &Host, id: &str) -> Vec<PathBuf> {
    let rel = format!("{}/pod{id}", h.node.cgroup_parent.trim_matches('/'));
    let root = Path::new("/sys/fs/cgroup");
    let hierarchies = fs::read_dir(root).into_iter().flatten().flatten();
    std::iter::once(root.to_path_buf())
        .chain(hierarchies.map(|e| e.path()))
        .map(|r| r.join(&rel))
        .filter(|d| d.is_dir())
        .collect()
}

/// Pod names host `h`'s kubelet reports in /stats/summary (asked inside the host, as admin).
fn kubelet_pods(c: &Cluster, h: &Host) -> Option<BTreeSet<String>> {
    use base64::Engine as _;
    let (crt, key) = (c.scratch().join("admin.crt"), c.scratch().join("admin.key"));
    if !key.exists() {
        let kubeconfig = fs::read_to_string(c.kubeconfig()).ok()?;
        for (field, path) in [
            ("client-certificate-data:", &crt),
            ("client-key-data:", &key),
        ] {
            let data = kubeconfig
                .lines()
                .find_map(|l| l.trim().strip_prefix(field))?;
            let pem = base64::engine::general_purpose::STANDARD
                .decode(data.trim())
                .ok()?;
            fs::write(path, pem).ok()?;
        }
    }
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{}", h.netns))
        .args(["--", "curl", "-sfk", "-m", "5", "--cert"])
        .arg(&crt)
        .arg("--key")
        .arg(&key)
        .arg("https://127.0.0.1:10250/stats/summary");
    let out = run(cmd, None);
    let summary: Value = serde_json::from_str(&out.stdout).ok()?;
    Some(
        summary["pods"]
            .as_array()?
            .iter()
            .filter(|p| p["podRef"]["namespace"] == NS)
            .filter_map(|p| p["podRef"]["name"].as_str().map(str::to_string))
            .collect(),
    )
}

/// What of `sandboxes` still exists on host `h`: processes, runc containers, state, netns,
/// cgroups, log dirs, and the kubelet's own report.
fn leftovers(c: &Cluster, h: &Host, sandboxes: &[HostSandbox]) -> Vec<String> {
    let runc = runc_list(h);
    let reported = kubelet_pods(c, h);
    let state = h.data_dir.path().join("runtime");
    let mut left = Vec::new();
    for sb in sandboxes {
        let cmdline = fs::read(format!("/proc/{}/cmdline", sb.pause_pid)).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains("pause") {
            left.push(format!("{}: pause process {}", sb.pod, sb.pause_pid));
        }
        for id in &sb.containers {
            if let Some(status) = runc.get(id) {
                left.push(format!("{}: runc container {id} {status}", sb.pod));
            }
            if state.join("containers").join(id).exists() {
                left.push(format!("{}: container state {id}", sb.pod));
            }
        }
        if state.join("sandboxes").join(&sb.id).exists() {
            left.push(format!("{}: sandbox state {}", sb.pod, sb.id));
        }
        if sb.netns.exists() {
            left.push(format!("{}: netns {}", sb.pod, sb.netns.display()));
        }
        for d in pod_cgroups(h, &sb.id) {
            left.push(format!("{}: cgroup {}", sb.pod, d.display()));
        }
        let logs = h
            .node
            .pod_log_dir
            .join(format!("{NS}_{}_{}", sb.pod, sb.uid));
        if logs.exists() {
            left.push(format!("{}: log dir {}", sb.pod, logs.display()));
        }
        match &reported {
            Some(pods) if !pods.contains(&sb.pod) => {}
            Some(_) => left.push(format!("{}: reported by the kubelet", sb.pod)),
            None => left.push(format!("{}: kubelet stats unreadable", sb.pod)),
        }
    }
    left
}

/// Panics unless every sandbox runs on host `h`: pause, running containers, netns, cgroups,
/// and the kubelet reports the pod.
fn assert_running_on(c: &Cluster, h: &Host, sandboxes: &[HostSandbox], when: &str) {
    let runc = runc_list(h);
    let reported = kubelet_pods(c, h).unwrap_or_default();
    for sb in sandboxes {
        let cmdline = fs::read(format!("/proc/{}/cmdline", sb.pause_pid)).unwrap_or_default();
        assert!(
            String::from_utf8_lossy(&cmdline).contains("pause"),
            "{when}: pause of {} gone: {sb:?}",
            sb.pod
        );
        assert!(!sb.containers.is_empty(), "{when}: no containers: {sb:?}");
        for id in &sb.containers {
            assert_eq!(
                runc.get(id).map(String::as_str),
                Some("running"),
                "{when}: {} container {id} not running: {runc:?}",
                sb.pod
            );
        }
        assert!(sb.netns.exists(), "{when}: {sb:?}");
        assert!(
            !pod_cgroups(h, &sb.id).is_empty(),
            "{when}: no cgroup: {sb:?}"
        );
        assert!(
            reported.contains(&sb.pod),
            "{when}: kubelet does not report {}: {reported:?}",
            sb.pod
        );
    }
}

#[test]
fn multinode_partitioned_node_goes_not_ready_and_its_pods_move() {
    let started = Instant::now();
    let (_images, archive) = busybox_archive(IMAGE);
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
    let node_port = service_node_port(&c, "web");

    // The victim's pods as its runtime runs them, before the cut.
    let on_victim: BTreeSet<&String> = pods
        .iter()
        .filter(|(_, (n, _))| *n == victim_name)
        .map(|(p, _)| p)
        .collect();
    let stale: Vec<HostSandbox> = host_sandboxes(&c.hosts[victim])
        .into_iter()
        .filter(|sb| on_victim.contains(&sb.pod))
        .collect();
    assert_eq!(stale.len(), on_victim.len(), "{stale:?} vs {on_victim:?}");
    assert_running_on(&c, &c.hosts[victim], &stale, "before the cut");
    let names: Vec<&str> = stale.iter().map(|sb| sb.pod.as_str()).collect();
    eprintln!("cutting off {victim_name} running {names:?}");

    c.hosts[victim].set_link(false);
    let cut = Instant::now();
    // One is force-deleted at once, before any eviction marks it: the kubelet misses both, so
    // only the deletion (or its absence on a re-list) after reconnecting tells it the pod is
    // gone. The others are evicted and stay Terminating until the kubelet has stopped them.
    let forced = stale[0].pod.clone();
    c.kubectl(
        K,
        &[
            "delete",
            "pod",
            "-n",
            NS,
            &forced,
            "--grace-period=0",
            "--force",
        ],
        None,
    )
    .ok();
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
    // Cut off, the kubelet keeps running what it last knew of.
    assert_running_on(&c, &c.hosts[victim], &stale, "during the partition");
    // The clean-up check below sees all of it now (it cannot pass for lack of looking).
    let left = leftovers(&c, &c.hosts[victim], &stale).join("\n");
    for sb in &stale {
        for what in [
            "pause process",
            "runc container",
            "container state",
            "sandbox state",
            "netns",
            "cgroup",
            "log dir",
            "reported by the kubelet",
        ] {
            let needle = format!("{}: ", sb.pod);
            assert!(
                left.lines()
                    .any(|l| l.starts_with(&needle) && l.contains(what)),
                "{what} of {} not seen: {left}",
                sb.pod
            );
        }
    }
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
        "stale pods left the API {:?} after reconnecting",
        back.elapsed()
    );
    // And off the host: containers, pause, netns, cgroups, state, logs, the kubelet's report.
    let mut shown = Instant::now();
    wait_for(
        &mut c,
        "the stale pods' containers gone from the reconnected host",
        TIMEOUT,
        |c| {
            let mut left = leftovers(c, &c.hosts[victim], &stale);
            // Nor any other web pod (one bound there during the partition and evicted).
            let ids: BTreeSet<&String> = stale.iter().map(|sb| &sb.id).collect();
            for sb in host_sandboxes(&c.hosts[victim]) {
                if !ids.contains(&sb.id) {
                    left.push(format!("{}: sandbox {}", sb.pod, sb.id));
                }
            }
            if !left.is_empty() && shown.elapsed() > Duration::from_secs(15) {
                eprintln!("left on {victim_name}: {left:?}");
                shown = Instant::now();
            }
            left.is_empty().then_some(())
        },
    );
    eprintln!(
        "stale pods' containers cleaned from {victim_name} {:?} after reconnecting (test {:?})",
        back.elapsed(),
        started.elapsed()
    );
}
