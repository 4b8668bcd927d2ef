//! Admission against an in-process API server over real HTTPS: PodSecurity (enforce and
//! warnings), LimitRanger, ResourceQuota (messages, charging, racing creates), Priority,
//! DefaultTolerationSeconds, NamespaceLifecycle and NodeRestriction.

use capstan_apiserver::pki::{self, ClusterCa};
use capstan_apiserver::testing::TestServer;
use capstan_store::MemoryStore;
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::{Value, json};
use std::sync::Arc;

/// A client presenting a client certificate for `user` in `groups`, signed by the cluster CA.
async fn client_as(server: &TestServer, user: &str, groups: &[&str]) -> kube::Client {
    let ca = ClusterCa::load(&server.data_dir().join("tls"))
        .expect("read the CA")
        .expect("the CA exists");
    let cert = ca.client_cert(user, groups).expect("client certificate");
    let yaml = pki::kubeconfig(&server.url(), &ca.cert_pem, &cert, "admission-test");
    let kc = Kubeconfig::from_yaml(&yaml).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("client configuration");
    kube::Client::try_from(config).expect("client")
}

struct Reply {
    code: u16,
    body: Value,
    warnings: Vec<String>,
}

async fn call(client: &kube::Client, method: &str, path: &str, body: Option<Value>) -> Reply {
    let ct = if method == "PATCH" {
        "application/merge-patch+json"
    } else {
        "application/json"
    };
    let b = http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", ct);
    let body = body
        .map(|v| serde_json::to_vec(&v).expect("json"))
        .unwrap_or_default();
    let resp = client
        .send(b.body(kube::client::Body::from(body)).expect("request"))
        .await
        .expect("response");
    let code = resp.status().as_u16();
    let warnings = resp
        .headers()
        .get_all("warning")
        .iter()
        .filter_map(|v| v.to_str().ok().map(String::from))
        .collect();
    let bytes = resp.into_body().collect_bytes().await.expect("body");
    Reply {
        code,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        warnings,
    }
}

async fn create(client: &kube::Client, path: &str, body: Value) -> Reply {
    let r = call(client, "POST", path, Some(body)).await;
    assert_eq!(r.code, 201, "POST {path}: {}", r.body);
    r
}

/// The message of a refusal with `code`.
async fn refused(client: &kube::Client, path: &str, body: Value, code: u16) -> String {
    let r = call(client, "POST", path, Some(body)).await;
    assert_eq!(r.code, code, "POST {path}: {}", r.body);
    r.body["message"].as_str().unwrap_or_default().to_string()
}

fn namespace(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}

fn pod(name: &str, container: Value, spec: Value) -> Value {
    let mut c = json!({"name": "c", "image": "busybox"});
    if let (Some(c), Some(extra)) = (c.as_object_mut(), container.as_object()) {
        c.extend(extra.clone());
    }
    let mut s = json!({"containers": [c]});
    if let (Some(s), Some(extra)) = (s.as_object_mut(), spec.as_object()) {
        s.extend(extra.clone());
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": s})
}

fn pods(ns: &str) -> String {
    format!("/api/v1/namespaces/{ns}/pods")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_security_enforces_baseline_by_default_and_warns_for_workloads() {
    let server = TestServer::start(Arc::new(MemoryStore::new())).await;
    let c = server.client().await;
    let privileged = json!({"securityContext": {"privileged": true}});
    assert_eq!(
        refused(
            &c,
            &pods("default"),
            pod("p", privileged.clone(), json!({})),
            403
        )
        .await,
        "pods \"p\" is forbidden: violates PodSecurity \"baseline:latest\": privileged (container \"c\" must not set securityContext.privileged=true)"
    );
    let host =
        json!({"hostNetwork": true, "volumes": [{"name": "h", "hostPath": {"path": "/tmp"}}]});
    assert_eq!(
        refused(&c, &pods("default"), pod("h", json!({}), host.clone()), 403).await,
        "pods \"h\" is forbidden: violates PodSecurity \"baseline:latest\": host namespaces (hostNetwork=true), hostPath volumes (volume \"h\")"
    );
    create(
        &c,
        "/api/v1/namespaces",
        namespace(
            "adm-priv",
            json!({"pod-security.kubernetes.io/enforce": "privileged"}),
        ),
    )
    .await;
    create(&c, &pods("adm-priv"), pod("p", privileged.clone(), host)).await;

    create(&c, "/api/v1/namespaces", namespace("adm-restricted", json!({"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "v1.33"}))).await;
    let msg = refused(
        &c,
        &pods("adm-restricted"),
        pod("r", json!({}), json!({})),
        403,
    )
    .await;
    assert!(
        msg.starts_with("pods \"r\" is forbidden: violates PodSecurity \"restricted:v1.33\": allowPrivilegeEscalation != false (container \"c\" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities"),
        "{msg}"
    );
    let hardened = pod(
        "r",
        json!({"securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}),
        json!({"securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}}}),
    );
    create(&c, &pods("adm-restricted"), hardened).await;

    // warn=restricted over the default enforce=baseline: admitted, with a warning.
    create(
        &c,
        "/api/v1/namespaces",
        namespace(
            "adm-warn",
            json!({"pod-security.kubernetes.io/warn": "restricted"}),
        ),
    )
    .await;
    let r = create(&c, &pods("adm-warn"), pod("w", json!({}), json!({}))).await;
    assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
    assert!(
        r.warnings[0].starts_with("299 - \"would violate PodSecurity \\\"restricted:latest\\\": allowPrivilegeEscalation != false"),
        "{:?}",
        r.warnings
    );

    // Workloads are admitted with a warning for their pod template.
    let deploy = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
        "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}},
        "spec": {"containers": [{"name": "c", "image": "busybox", "securityContext": {"privileged": true}}]}}}});
    let r = create(&c, "/apis/apps/v1/namespaces/default/deployments", deploy).await;
    assert_eq!(
        r.warnings,
        vec!["299 - \"would violate PodSecurity \\\"baseline:latest\\\": privileged (container \\\"c\\\" must not set securityContext.privileged=true)\"".to_string()]
    );
    // Tightening a namespace's level warns about the pods already there.
    let r = call(
        &c,
        "PATCH",
        "/api/v1/namespaces/adm-warn",
        Some(json!({"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})),
    )
    .await;
    assert_eq!(r.code, 200, "{}", r.body);
    assert_eq!(
        r.warnings,
        vec![
            r#"299 - "existing pods in namespace \"adm-warn\" violate the new PodSecurity enforce level \"restricted:latest\"""#.to_string(),
            r#"299 - "w: allowPrivilegeEscalation != false, unrestricted capabilities, runAsNonRoot != true, seccompProfile""#.to_string(),
        ]
    );
    // A plain pod gets no warning, the default tolerations and priority 0.
    let r = create(&c, &pods("default"), pod("plain", json!({}), json!({}))).await;
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    let t = &r.body["spec"]["tolerations"];
    assert_eq!(
        t,
        &json!([
            {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
        ])
    );
    assert_eq!(r.body["spec"]["priority"], 0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_ranges_quotas_priority_and_namespace_lifecycle() {
    let server = TestServer::start(Arc::new(MemoryStore::new())).await;
    let c = server.client().await;

    // Priority: the built-in classes exist; names resolve; unknown names are refused.
    let r = call(
        &c,
        "GET",
        "/apis/scheduling.k8s.io/v1/priorityclasses/system-node-critical",
        None,
    )
    .await;
    assert_eq!(r.body["value"], 2_000_001_000, "{}", r.body);
    let p = create(
        &c,
        &pods("default"),
        pod(
            "crit",
            json!({}),
            json!({"priorityClassName": "system-cluster-critical"}),
        ),
    )
    .await;
    assert_eq!(p.body["spec"]["priority"], 2_000_000_000);
    assert_eq!(p.body["spec"]["preemptionPolicy"], "PreemptLowerPriority");
    assert_eq!(
        refused(
            &c,
            &pods("default"),
            pod("x", json!({}), json!({"priorityClassName": "nope"})),
            403
        )
        .await,
        "pods \"x\" is forbidden: no PriorityClass with name nope was found"
    );
    create(
        &c,
        "/apis/scheduling.k8s.io/v1/priorityclasses",
        json!({"metadata": {"name": "adm-default"}, "value": 7, "globalDefault": true}),
    )
    .await;
    let msg = refused(
        &c,
        "/apis/scheduling.k8s.io/v1/priorityclasses",
        json!({"metadata": {"name": "adm-default2"}, "value": 8, "globalDefault": true}),
        403,
    )
    .await;
    assert!(
        msg.ends_with(
            "PriorityClass adm-default is already marked as default. Only one default can exist"
        ),
        "{msg}"
    );
    let p = create(&c, &pods("default"), pod("dflt", json!({}), json!({}))).await;
    assert_eq!(p.body["spec"]["priority"], 7);
    assert_eq!(p.body["spec"]["priorityClassName"], "adm-default");
    let msg = refused(
        &c,
        &pods("default"),
        pod("y", json!({}), json!({"priority": 3})),
        403,
    )
    .await;
    assert!(
        msg.contains("the integer value of priority (3) must not be provided in pod spec"),
        "{msg}"
    );

    // LimitRanger: defaults and bounds.
    create(&c, "/api/v1/namespaces", namespace("adm-lr", json!({}))).await;
    create(&c, "/api/v1/namespaces/adm-lr/limitranges", json!({"metadata": {"name": "lr"}, "spec": {"limits": [
        {"type": "Container", "default": {"cpu": "500m", "memory": "128Mi"}, "defaultRequest": {"cpu": "100m", "memory": "64Mi"}, "max": {"cpu": "1"}}
    ]}})).await;
    let p = create(&c, &pods("adm-lr"), pod("d", json!({}), json!({}))).await;
    let res = &p.body["spec"]["containers"][0]["resources"];
    assert_eq!(
        res["limits"],
        json!({"cpu": "500m", "memory": "128Mi"}),
        "{res}"
    );
    assert_eq!(
        res["requests"],
        json!({"cpu": "100m", "memory": "64Mi"}),
        "{res}"
    );
    assert_eq!(
        p.body["metadata"]["annotations"]["kubernetes.io/limit-ranger"],
        "LimitRanger plugin set: cpu, memory request for container c; cpu, memory limit for container c"
    );
    assert_eq!(
        refused(
            &c,
            &pods("adm-lr"),
            pod(
                "big",
                json!({"resources": {"limits": {"cpu": "2"}}}),
                json!({})
            ),
            403
        )
        .await,
        "pods \"big\" is forbidden: maximum cpu usage per Container is 1, but limit is 2"
    );

    // ResourceQuota: object counts, charged into status.used; compute needs requests.
    create(&c, "/api/v1/namespaces", namespace("adm-q", json!({}))).await;
    create(
        &c,
        "/api/v1/namespaces/adm-q/resourcequotas",
        json!({"metadata": {"name": "q"}, "spec": {"hard": {"pods": "1", "configmaps": "5"}}}),
    )
    .await;
    create(&c, &pods("adm-q"), pod("p1", json!({}), json!({}))).await;
    let q = call(&c, "GET", "/api/v1/namespaces/adm-q/resourcequotas/q", None).await;
    assert_eq!(q.body["status"]["used"]["pods"], "1", "{}", q.body);
    assert_eq!(
        refused(&c, &pods("adm-q"), pod("p2", json!({}), json!({})), 403).await,
        "pods \"p2\" is forbidden: exceeded quota: q, requested: pods=1, used: pods=1, limited: pods=1"
    );
    create(&c, "/api/v1/namespaces", namespace("adm-cq", json!({}))).await;
    create(&c, "/api/v1/namespaces/adm-cq/resourcequotas", json!({"metadata": {"name": "compute"}, "spec": {"hard": {"requests.cpu": "1", "limits.memory": "1Gi"}}})).await;
    assert_eq!(
        refused(&c, &pods("adm-cq"), pod("n", json!({}), json!({})), 403).await,
        "pods \"n\" is forbidden: failed quota: compute: must specify limits.memory for: c; requests.cpu for: c"
    );
    let sized = |name: &str, cpu: &str| {
        pod(
            name,
            json!({"resources": {"requests": {"cpu": cpu}, "limits": {"memory": "256Mi"}}}),
            json!({}),
        )
    };
    create(&c, &pods("adm-cq"), sized("a", "600m")).await;
    assert_eq!(
        refused(&c, &pods("adm-cq"), sized("b", "500m"), 403).await,
        "pods \"b\" is forbidden: exceeded quota: compute, requested: requests.cpu=500m, used: requests.cpu=600m, limited: requests.cpu=1"
    );
    create(&c, &pods("adm-cq"), sized("b", "400m")).await;

    // Racing creates cannot both pass a quota.
    create(&c, "/api/v1/namespaces", namespace("adm-race", json!({}))).await;
    create(
        &c,
        "/api/v1/namespaces/adm-race/resourcequotas",
        json!({"metadata": {"name": "q"}, "spec": {"hard": {"count/configmaps": "2"}}}),
    )
    .await;
    let mut tasks = Vec::new();
    for i in 0..6 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            call(
                &c,
                "POST",
                "/api/v1/namespaces/adm-race/configmaps",
                Some(json!({"metadata": {"name": format!("cm{i}")}})),
            )
            .await
            .code
        }));
    }
    let mut codes = Vec::new();
    for t in tasks {
        codes.push(t.await.expect("task"));
    }
    assert_eq!(codes.iter().filter(|c| **c == 201).count(), 2, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 403).count(), 4, "{codes:?}");

    // NamespaceLifecycle.
    let r = call(&c, "DELETE", "/api/v1/namespaces/kube-node-lease", None).await;
    assert_eq!(r.code, 403, "{}", r.body);
    assert_eq!(
        r.body["message"],
        "namespaces \"kube-node-lease\" is forbidden: this namespace may not be deleted"
    );
    refused(
        &c,
        &pods("adm-missing"),
        pod("p", json!({}), json!({})),
        404,
    )
    .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_restriction_limits_kubelets_to_their_own_objects() {
    let server = TestServer::start(Arc::new(MemoryStore::new())).await;
    let admin = server.client().await;
    let n1 = client_as(&server, "system:node:adm-n1", &["system:nodes"]).await;
    let node = |name: &str, labels: Value| json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}});
    create(
        &n1,
        "/api/v1/nodes",
        node("adm-n1", json!({"kubernetes.io/hostname": "adm-n1"})),
    )
    .await;
    let msg = refused(&n1, "/api/v1/nodes", node("adm-n2", json!({})), 403).await;
    assert!(msg.contains("adm-n2"), "{msg}");
    create(&admin, "/api/v1/nodes", node("adm-n2", json!({}))).await;
    let r = call(
        &n1,
        "PATCH",
        "/api/v1/nodes/adm-n1",
        Some(json!({"metadata": {"labels": {"node-restriction.kubernetes.io/pool": "a"}}})),
    )
    .await;
    assert_eq!(r.code, 403, "{}", r.body);
    assert_eq!(
        r.body["message"],
        "nodes \"adm-n1\" is forbidden: node \"adm-n1\" is not allowed to modify labels: node-restriction.kubernetes.io/pool"
    );
    let r = call(
        &n1,
        "PATCH",
        "/api/v1/nodes/adm-n1",
        Some(json!({"metadata": {"labels": {"team": "a"}}})),
    )
    .await;
    assert_eq!(r.code, 200, "{}", r.body);
    let r = call(&n1, "DELETE", "/api/v1/nodes/adm-n2", None).await;
    assert_eq!(r.code, 403, "{}", r.body);
    let r = call(&admin, "GET", "/api/v1/nodes/adm-n2", None).await;
    assert_eq!(r.code, 200, "the other node survives: {}", r.body);

    // Pods: status of its own pods only.
    for (name, on) in [("mine", "adm-n1"), ("theirs", "adm-n2")] {
        create(
            &admin,
            &pods("default"),
            pod(name, json!({}), json!({"nodeName": on})),
        )
        .await;
    }
    let status = json!({"status": {"phase": "Running"}});
    let r = call(
        &n1,
        "PATCH",
        "/api/v1/namespaces/default/pods/mine/status",
        Some(status.clone()),
    )
    .await;
    assert_eq!(r.code, 200, "{}", r.body);
    let r = call(
        &n1,
        "PATCH",
        "/api/v1/namespaces/default/pods/theirs/status",
        Some(status),
    )
    .await;
    assert_eq!(r.code, 403, "{}", r.body);
    server.shutdown().await;
}
