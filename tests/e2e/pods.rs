//! Real pods on the all-in-one server's local agent: sandboxes with CNI pod IPs, volumes, env,
//! restarts and back-off, probes, OOM kills, image pull errors, and adoption of running
//! containers after a kill -9 of the server. Driven by the stock kubectl 1.32.

use std::thread;
use std::time::{Duration, Instant};

use capstan_runtime::cri::RuntimeService;
use tempfile::TempDir;

use crate::harness::{NodeSettings, Server};
use crate::node::{
    IMAGE, K, Node, POD_TIMEOUT, POLL, condition, container_status, namespace, pod_yaml,
    sh_container,
};

#[test]
fn pods_stateful_example_configmap_secret_and_host_path_survive_recreate() {
    let node = Node::start();
    let ns = "stateful";
    namespace(&node, ns);
    // hostPath volumes need the privileged Pod Security level (baseline is the default).
    node.kubectl(
        &[
            "label",
            "namespace",
            ns,
            "pod-security.kubernetes.io/enforce=privileged",
        ],
        None,
    )
    .ok();
    let data = node.server.scratch().join("mysql-data");
    node.apply(&format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: mysql-config\n  namespace: {ns}\ndata:\n  mysql.cnf: |\n    [mysqld]\n    character-set-server=utf8mb4\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata:\n  name: mysql-password\n  namespace: {ns}\ntype: Opaque\ndata:\n  PASSWORD: MTIzNDU2Cg==\n"
    ));
    let volumes = format!(
        "  volumes:\n  - name: conf-volume\n    configMap:\n      name: mysql-config\n  - name: data-volume\n    hostPath:\n      path: {}\n      type: DirectoryOrCreate\n",
        data.display()
    );
    let mounts = "    env:\n    - name: MYSQL_ROOT_PASSWORD\n      valueFrom:\n        secretKeyRef:\n          name: mysql-password\n          key: PASSWORD\n          optional: false\n    volumeMounts:\n    - mountPath: /var/lib/mysql\n      name: data-volume\n    - mountPath: /etc/mysql/conf.d\n      name: conf-volume\n      readOnly: true\n";
    // The Secret's value is "123456\n"; $(...) drops the newline.
    let first = "set -ex; grep -q character-set-server=utf8mb4 /etc/mysql/conf.d/mysql.cnf; \
                 test \"$(echo \"$MYSQL_ROOT_PASSWORD\")\" = 123456; ! touch /etc/mysql/conf.d/x 2>/dev/null; \
                 echo written-by-first > /var/lib/mysql/table.ibd; echo first-ok";
    let spec = |script: &str| {
        let c = sh_container("mysql", script, mounts);
        let mut y = pod_yaml(ns, "mysql-pod", "Never", &c, "");
        y.push_str(&volumes);
        y
    };
    node.apply(&spec(first));
    node.wait_phase(ns, "mysql-pod", "Succeeded");
    node.kubectl(&["logs", "-n", ns, "mysql-pod"], None)
        .ok()
        .stdout_has("first-ok");
    assert_eq!(
        std::fs::read_to_string(data.join("table.ibd")).expect("host path data"),
        "written-by-first\n"
    );
    node.kubectl(
        &["delete", "pod", "-n", ns, "mysql-pod", "--wait=false"],
        None,
    )
    .ok();
    node.wait_gone(ns, "mysql-pod");
    node.apply(&spec(
        "set -e; cat /var/lib/mysql/table.ibd; grep -q written-by-first /var/lib/mysql/table.ibd",
    ));
    node.wait_phase(ns, "mysql-pod", "Succeeded");
    node.kubectl(&["logs", "-n", ns, "mysql-pod", "-c", "mysql"], None)
        .ok()
        .stdout_has("written-by-first");
}

#[test]
fn pods_restart_after_kill_liveness_readiness_and_oom() {
    let node = Node::start();
    let ns = "restarts";
    namespace(&node, ns);
    // kill -9 of the main process: restarted once, restartCount 1, lastState terminated.
    node.apply(&pod_yaml(
        ns,
        "victim",
        "Always",
        &sh_container("app", "echo started; exec sleep 3600", ""),
        "",
    ));
    let pod = node.wait_pod(ns, "victim", "running", |p| {
        container_status(p, "app")["state"]["running"].is_object()
    });
    node.kill_container_process(&pod, "app");
    let pod = node.wait_pod(ns, "victim", "restarted", |p| {
        container_status(p, "app")["restartCount"] == 1
            && container_status(p, "app")["state"]["running"].is_object()
    });
    let last = &container_status(&pod, "app")["lastState"]["terminated"];
    assert_eq!(last["exitCode"], 137, "{last}");
    node.kubectl(&["logs", "-n", ns, "victim", "-p"], None)
        .ok()
        .stdout_has("started");

    // A failing liveness probe restarts the container.
    let liveness = "    livenessProbe:\n      exec:\n        command: [\"test\", \"-e\", \"/tmp/healthy\"]\n      periodSeconds: 1\n      failureThreshold: 2\n";
    node.apply(&pod_yaml(
        ns,
        "liveness",
        "Always",
        &sh_container(
            "app",
            "touch /tmp/healthy; sleep 4; rm /tmp/healthy; exec sleep 3600",
            liveness,
        ),
        "",
    ));
    node.wait_pod(ns, "liveness", "restarted by liveness", |p| {
        container_status(p, "app")["restartCount"].as_i64() >= Some(1)
    });
    let events = node
        .kubectl(
            &[
                "get",
                "events",
                "-n",
                ns,
                "--field-selector",
                "involvedObject.name=liveness",
            ],
            None,
        )
        .ok();
    assert!(
        events.stdout.contains("Unhealthy") && events.stdout.contains("Liveness probe failed"),
        "{events}"
    );

    // A failing readiness probe flips Ready without restarts.
    let readiness = "    readinessProbe:\n      exec:\n        command: [\"test\", \"-e\", \"/tmp/ready\"]\n      periodSeconds: 1\n      failureThreshold: 1\n";
    node.apply(&pod_yaml(
        ns,
        "readiness",
        "Always",
        &sh_container(
            "app",
            "touch /tmp/ready; sleep 6; rm /tmp/ready; exec sleep 3600",
            readiness,
        ),
        "",
    ));
    node.wait_pod(ns, "readiness", "Ready", |p| {
        condition(p, "Ready") == "True"
    });
    let pod = node.wait_pod(ns, "readiness", "not Ready", |p| {
        condition(p, "Ready") == "False"
    });
    assert_eq!(container_status(&pod, "app")["restartCount"], 0);
    assert_eq!(container_status(&pod, "app")["ready"], false);

    // Over the memory limit: OOMKilled in lastState.
    let limits = "    resources:\n      limits:\n        memory: 16Mi\n";
    node.apply(&pod_yaml(
        ns,
        "oom",
        "Always",
        &sh_container("app", "x=a; while true; do x=$x$x; done", limits),
        "",
    ));
    let pod = node.wait_pod(ns, "oom", "OOMKilled", |p| {
        container_status(p, "app")["lastState"]["terminated"]["reason"] == "OOMKilled"
            || container_status(p, "app")["state"]["terminated"]["reason"] == "OOMKilled"
    });
    assert_eq!(pod["status"]["qosClass"], "Burstable");
}

#[test]
fn pods_bad_image_err_image_pull_then_image_pull_back_off() {
    let node = Node::start();
    let ns = "badimage";
    namespace(&node, ns);
    let c =
        "  - name: app\n    image: 127.0.0.1:1/nope/missing:1\n    imagePullPolicy: IfNotPresent\n";
    node.apply(&pod_yaml(ns, "bad", "Always", c, ""));
    node.wait_pod(ns, "bad", "ErrImagePull", |p| {
        container_status(p, "app")["state"]["waiting"]["reason"] == "ErrImagePull"
    });
    node.wait_pod(ns, "bad", "ImagePullBackOff", |p| {
        container_status(p, "app")["state"]["waiting"]["reason"] == "ImagePullBackOff"
    });
    let pod = node.pod(ns, "bad");
    assert_eq!(pod["status"]["phase"], "Pending");
    let events = node.kubectl(&["get", "events", "-n", ns], None).ok();
    assert!(
        events.stdout.contains("Pulling") && events.stdout.contains("Failed"),
        "{events}"
    );
}

#[test]
fn pods_network_pod_to_pod_hostname_hosts_and_resolv_conf() {
    let node = Node::start();
    let ns = "net";
    namespace(&node, ns);
    node.apply(&pod_yaml(
        ns,
        "web",
        "Always",
        &sh_container(
            "httpd",
            "mkdir -p /www; echo hello-from-web > /www/index.html; exec httpd -f -p 8080 -h /www",
            "",
        ),
        "",
    ));
    let web = node.wait_pod(ns, "web", "running with an IP", |p| {
        p["status"]["podIP"].is_string()
            && container_status(p, "httpd")["state"]["running"].is_object()
    });
    let ip = web["status"]["podIP"].as_str().expect("podIP").to_string();
    let cidr = &node.server.node().pod_cidr;
    let prefix = cidr.rsplit_once('.').expect("cidr").0;
    assert!(ip.starts_with(prefix), "pod IP {ip} not in {cidr}");
    let script = format!(
        "set -ex; for i in $(seq 1 20); do wget -qO- http://{ip}:8080/ > /tmp/out && break; sleep 0.5; done; \
         grep -q hello-from-web /tmp/out; test \"$(hostname)\" = client; \
         grep -E \"^[0-9.]+[[:space:]]+client$\" /etc/hosts; grep -q localhost /etc/hosts; \
         cat /etc/resolv.conf; grep -q nameserver /etc/resolv.conf; echo net-ok"
    );
    node.apply(&pod_yaml(
        ns,
        "client",
        "Never",
        &sh_container("client", &script, ""),
        "",
    ));
    node.wait_phase(ns, "client", "Succeeded");
    let client = node.pod(ns, "client");
    let client_ip = client["status"]["podIP"].as_str().expect("client podIP");
    let logs = node.kubectl(&["logs", "-n", ns, "client"], None).ok();
    assert!(logs.stdout.contains("net-ok"), "{logs}");
    // ClusterFirst: the cluster DNS Service and the namespace's search path, not the host's.
    let dns_line = format!("nameserver {}", node.server.node().cluster_dns());
    assert!(
        logs.stdout.contains(&dns_line)
            && logs.stdout.contains(&format!(
                "search {ns}.svc.cluster.local svc.cluster.local cluster.local"
            ))
            && logs.stdout.contains("options ndots:5"),
        "resolv.conf is not ClusterFirst ({dns_line}): {logs}"
    );
    // `set -x` traced the grep of /etc/hosts; its match shows the pod's own entry.
    assert!(
        logs.stdout.contains(&format!("{client_ip}\tclient")),
        "/etc/hosts lacks {client_ip}: {logs}"
    );
    assert_eq!(web["status"]["hostIP"], "127.0.0.1");
}

#[test]
fn pods_keep_running_across_server_kill9_without_restarts() {
    let mut node = Node::start();
    let ns = "adopt";
    namespace(&node, ns);
    node.apply(&pod_yaml(
        ns,
        "steady",
        "Always",
        &sh_container("app", "exec sleep 3600", ""),
        "",
    ));
    let before = node.wait_pod(ns, "steady", "Ready", |p| condition(p, "Ready") == "True");
    let id_before = container_status(&before, "app")["containerID"].clone();
    let ip_before = before["status"]["podIP"].clone();
    node.server.kill9();
    node.server.restart();
    // Give the new agent time to look at the pod; it must adopt, not restart.
    let deadline = Instant::now() + Duration::from_secs(8);
    while Instant::now() < deadline {
        let p = node.pod(ns, "steady");
        if p.is_object() {
            assert_eq!(
                container_status(&p, "app")["containerID"],
                id_before,
                "container replaced: {p}"
            );
            assert_eq!(container_status(&p, "app")["restartCount"], 0);
        }
        thread::sleep(POLL);
    }
    let after = node.wait_pod(ns, "steady", "Ready after restart", |p| {
        condition(p, "Ready") == "True"
    });
    assert_eq!(container_status(&after, "app")["containerID"], id_before);
    assert_eq!(after["status"]["podIP"], ip_before);
    assert_eq!(after["status"]["phase"], "Running");
    node.kubectl(&["exec", "-n", ns, "steady", "--", "hostname"], None)
        .ok()
        .stdout_has("steady");
    // Deleting still works after adoption: graceful stop, then the pod object goes.
    node.kubectl(
        &[
            "delete",
            "pod",
            "-n",
            ns,
            "steady",
            "--grace-period=1",
            "--wait=false",
        ],
        None,
    )
    .ok();
    node.wait_gone(ns, "steady");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");
    let left = rt
        .block_on(node.runtime().list_pod_sandboxes(&Default::default()))
        .expect("sandboxes");
    assert!(left.is_empty(), "sandboxes left after delete: {left:?}");
}

/// A `capstan agent` process and its node's clean-up.
struct JoinedAgent {
    child: std::process::Child,
    node: NodeSettings,
    dir: TempDir,
}

impl Drop for JoinedAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            let log =
                std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default();
            eprintln!("--- capstan agent log ---\n{log}");
        }
        self.node.clean_up(self.dir.path());
    }
}

#[test]
fn pods_run_on_a_node_joined_with_capstan_agent() {
    let server = Server::start();
    let dir = tempfile::Builder::new()
        .prefix("capstan-e2e-agent-")
        .tempdir()
        .expect("tempdir");
    let archive = dir.path().join("busybox.tar");
    capstan_runtime::testimage::busybox_oci_archive(&archive, IMAGE)
        .expect("build the busybox test image");
    let import = std::process::Command::new(env!("CARGO_BIN_EXE_capstan"))
        .args(["images", "import", "--data-dir"])
        .arg(dir.path())
        .arg(&archive)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("capstan images import");
    assert!(import.success());
    let node = NodeSettings::unique(dir.path());
    let log = std::fs::File::create(dir.path().join("agent.log")).expect("agent log");
    let token = std::fs::read_to_string(server.data_dir().join("token")).expect("join token");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_capstan"))
        .args([
            "agent",
            "--server",
            &server.url(),
            "--token",
            token.trim(),
            "--data-dir",
        ])
        .arg(dir.path())
        .args(node.args())
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("spawn capstan agent");
    let agent = JoinedAgent {
        child,
        node: node.clone(),
        dir,
    };
    let ns = "joined";
    server.kubectl(K, &["create", "namespace", ns], None).ok();
    let deadline = Instant::now() + POD_TIMEOUT;
    loop {
        let out = server.kubectl(K, &["get", "node", &node.name, "-o", "json"], None);
        if out.status.success()
            && out.json()["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
                == node.kubelet_port
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node {} never registered",
            node.name
        );
        thread::sleep(POLL);
    }
    let spec = format!("  nodeName: {}\n", node.name);
    let yaml = pod_yaml(
        ns,
        "hello",
        "Always",
        &sh_container("app", "echo hello-from-agent; exec sleep 3600", ""),
        &spec,
    );
    server.kubectl(K, &["apply", "-f", "-"], Some(&yaml)).ok();
    loop {
        let out = server.kubectl(K, &["get", "pod", "-n", ns, "hello", "-o", "json"], None);
        if out.status.success() {
            let p = out.json();
            if p["status"]["phase"] == "Running" && condition(&p, "Ready") == "True" {
                assert!(
                    p["status"]["podIP"]
                        .as_str()
                        .is_some_and(|ip| ip.starts_with("10.")),
                    "{p}"
                );
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "pod on the joined node never ran; server log:\n{}",
            server.log_tail(30)
        );
        thread::sleep(POLL);
    }
    server
        .kubectl(K, &["logs", "-n", ns, "hello"], None)
        .ok()
        .stdout_has("hello-from-agent");
    server
        .kubectl(
            K,
            &["delete", "pod", "-n", ns, "hello", "--grace-period=1"],
            None,
        )
        .ok();
    drop(agent);
}

/// The claims of a JWT (no verification: the API server's tests do that).
fn jwt_claims(token: &str) -> serde_json::Value {
    use base64::Engine;
    let part = token.split('.').nth(1).expect("a JWT has claims");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .expect("base64url claims");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

#[test]
fn pods_get_a_service_account_token_the_cluster_ca_and_their_namespace() {
    let node = Node::start();
    let ns = "satoken";
    namespace(&node, ns);
    // kubectl create token goes through the TokenRequest API.
    let token = node
        .kubectl(
            &["create", "token", "default", "-n", ns, "--duration=20m"],
            None,
        )
        .ok()
        .stdout
        .trim()
        .to_string();
    let claims = jwt_claims(&token);
    assert_eq!(claims["sub"], "system:serviceaccount:satoken:default");
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        1200
    );

    let script = "D=/var/run/secrets/kubernetes.io/serviceaccount; echo ns=$(cat $D/namespace); \
                  echo token=$(cat $D/token); cat $D/ca.crt";
    node.apply(&pod_yaml(
        ns,
        "reader",
        "Never",
        &sh_container("c", script, ""),
        "",
    ));
    node.wait_phase(ns, "reader", "Succeeded");
    let logs = node
        .kubectl(&["logs", "-n", ns, "reader"], None)
        .ok()
        .stdout;
    assert!(logs.contains("ns=satoken\n"), "{logs}");
    let token = logs
        .lines()
        .find_map(|l| l.strip_prefix("token="))
        .expect("token line");
    let claims = jwt_claims(token);
    assert_eq!(claims["kubernetes.io"]["pod"]["name"], "reader");
    assert_eq!(claims["sub"], "system:serviceaccount:satoken:default");
    let ca = std::fs::read_to_string(node.server.data_dir().join("tls").join("ca.crt")).unwrap();
    assert!(
        logs.contains(ca.trim()),
        "the pod's ca.crt is the cluster CA:\n{logs}"
    );
}
