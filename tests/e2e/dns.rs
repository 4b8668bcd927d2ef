//! Cluster DNS on a node-backed server with kubectl 1.32: the kube-dns Service at the pods'
//! nameserver, `nslookup` of a Service from a busybox pod (straight at the DNS endpoint, and
//! through the kube-dns ClusterIP), `wget http://NAME.NS/` through the service proxy, and an
//! ExternalName Service answered as a CNAME.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::node::{K, Node, POLL, namespace, pod_yaml, sh_container};

/// Bound on the client pod's whole script (its retries are bounded by `timeout`).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(300);

fn json(node: &Node, args: &[&str]) -> Value {
    node.server.kubectl(K, args, None).ok().json()
}

#[test]
fn dns_pods_resolve_services_cnames_and_reach_them_by_name() {
    let node = Node::start();
    let ns = "dnsweb";
    namespace(&node, ns);

    // The server keeps kube-system/kube-dns: a selector-less Service whose EndpointSlice names
    // the node address and the DNS port.
    let mut dns_svc = Value::Null;
    node.wait("the kube-dns Service and EndpointSlice", || {
        let svc = node.server.kubectl(
            K,
            &["get", "svc", "-n", "kube-system", "kube-dns", "-o", "json"],
            None,
        );
        let slice = node.server.kubectl(
            K,
            &[
                "get",
                "endpointslice",
                "-n",
                "kube-system",
                "kube-dns",
                "-o",
                "json",
            ],
            None,
        );
        if svc.status.success() && slice.status.success() {
            dns_svc = svc.json();
            true
        } else {
            false
        }
    });
    let dns_ip = dns_svc["spec"]["clusterIP"]
        .as_str()
        .expect("kube-dns ClusterIP")
        .to_string();
    assert_eq!(dns_svc["metadata"]["labels"]["k8s-app"], "kube-dns");
    let ports: Vec<String> = dns_svc["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| format!("{}/{}/{}", p["name"], p["port"], p["protocol"]))
        .collect();
    assert_eq!(
        ports,
        vec![r#""dns"/53/"UDP""#, r#""dns-tcp"/53/"TCP""#],
        "{dns_svc}"
    );
    let slice = json(
        &node,
        &[
            "get",
            "endpointslice",
            "-n",
            "kube-system",
            "kube-dns",
            "-o",
            "json",
        ],
    );
    let dns_endpoint = format!(
        "{}:{}",
        slice["endpoints"][0]["addresses"][0]
            .as_str()
            .expect("kube-dns endpoint address"),
        slice["ports"][0]["port"]
    );

    // A web pod behind a ClusterIP Service and an ExternalName alias of it.
    node.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  namespace: {ns}\n  labels:\n    app: web\nspec:\n  containers:\n{}",
        sh_container(
            "httpd",
            "mkdir -p /www; echo hello-from-dns-web > /www/index.html; exec httpd -f -p 8080 -h /www",
            "    readinessProbe:\n      tcpSocket:\n        port: 8080\n      periodSeconds: 1\n",
        )
    ));
    node.apply(&format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: {ns}\nspec:\n  selector:\n    app: web\n  ports:\n  - name: http\n    port: 80\n    targetPort: 8080\n---\n\
         apiVersion: v1\nkind: Service\nmetadata:\n  name: alias\n  namespace: {ns}\nspec:\n  type: ExternalName\n  externalName: web.{ns}.svc.cluster.local\n"
    ));
    let web_ip = json(&node, &["get", "svc", "-n", ns, "web", "-o", "json"])["spec"]["clusterIP"]
        .as_str()
        .expect("web ClusterIP")
        .to_string();
    node.wait_pod(ns, "web", "ready", |p| {
        crate::node::condition(p, "Ready") == "True"
    });

    // The client retries each step a bounded number of times: the proxy's rules and the DNS
    // zone follow the API asynchronously.
    let fqdn = format!("web.{ns}.svc.cluster.local");
    // Each try is bounded by `timeout`; the whole script stays under CLIENT_TIMEOUT. (The
    // image's busybox wget crashes with its own -T option, so `timeout` bounds it instead.)
    let script = format!(
        "cat /etc/resolv.conf; \
         ok=; for i in $(seq 1 20); do timeout 3 nslookup {fqdn} {dns_endpoint} > /tmp/direct 2>&1 && ok=1 && break; sleep 1; done; \
         echo \"== direct $ok\"; cat /tmp/direct; \
         ok=; for i in $(seq 1 25); do timeout 3 nslookup {fqdn} > /tmp/svc 2>&1 && ok=1 && break; sleep 1; done; \
         echo \"== via-cluster-dns $ok\"; cat /tmp/svc; \
         ok=; for i in $(seq 1 10); do timeout 3 nslookup -type=cname alias.{ns}.svc.cluster.local {dns_endpoint} > /tmp/cname 2>&1 && ok=1 && break; sleep 1; done; \
         echo \"== cname $ok\"; cat /tmp/cname; \
         ok=; for i in $(seq 1 20); do timeout 5 wget -qO- http://web.{ns}/ > /tmp/page 2>&1 && ok=1 && break; sleep 1; done; \
         echo \"== wget $ok\"; cat /tmp/page; echo dns-client-done"
    );
    node.apply(&pod_yaml(
        ns,
        "client",
        "Never",
        &sh_container("client", &script, ""),
        "",
    ));
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    loop {
        let phase = node.pod(ns, "client")["status"]["phase"].clone();
        if phase == "Succeeded" || phase == "Failed" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "client pod not done within {CLIENT_TIMEOUT:?}; logs so far:\n{}\nserver log:\n{}",
            node.logs(ns, "client"),
            node.server.log_tail(40)
        );
        std::thread::sleep(POLL);
    }
    let logs = node
        .kubectl(&["logs", "-n", ns, "client"], None)
        .ok()
        .stdout;
    assert!(logs.contains("dns-client-done"), "{logs}");
    assert!(
        logs.contains(&format!("nameserver {dns_ip}")),
        "the pod's resolv.conf names kube-dns {dns_ip}: {logs}"
    );
    assert!(
        logs.contains(&format!(
            "search {ns}.svc.cluster.local svc.cluster.local cluster.local"
        )) && logs.contains("options ndots:5"),
        "ClusterFirst search path: {logs}"
    );
    let section = |name: &str| -> String {
        let start = logs
            .find(&format!("== {name} "))
            .unwrap_or_else(|| panic!("no {name} section: {logs}"));
        let rest = &logs[start..];
        let end = rest[3..].find("== ").map(|e| e + 3).unwrap_or(rest.len());
        rest[..end].to_string()
    };
    let direct = section("direct");
    assert!(
        direct.starts_with("== direct 1") && direct.contains(&web_ip),
        "nslookup at the DNS endpoint {dns_endpoint} gives {web_ip}: {direct}"
    );
    let cname = section("cname");
    assert!(
        cname.starts_with("== cname 1") && cname.contains(&format!("canonical name = {fqdn}")),
        "ExternalName answered as a CNAME: {cname}"
    );
    let via = section("via-cluster-dns");
    assert!(
        via.starts_with("== via-cluster-dns 1") && via.contains(&web_ip),
        "nslookup through kube-dns {dns_ip} (service proxy) gives {web_ip}: {via}"
    );
    let page = section("wget");
    assert!(
        page.starts_with("== wget 1") && page.contains("hello-from-dns-web"),
        "wget http://web.{ns}/ through DNS and the ClusterIP: {page}"
    );
}
