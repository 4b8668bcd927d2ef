//! RBAC against an in-process API server over real HTTPS: the bootstrap policy, a Role bound to
//! a ServiceAccount, the access reviews, and privilege-escalation prevention.

use capstan_apiserver::pki::{self, ClusterCa};
use capstan_apiserver::testing::TestServer;
use capstan_store::MemoryStore;
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A client presenting a client certificate for `user` in `groups`, signed by the cluster CA.
async fn client_as(server: &TestServer, user: &str, groups: &[&str]) -> kube::Client {
    let ca = ClusterCa::load(&server.data_dir().join("tls"))
        .expect("read the CA")
        .expect("the CA exists");
    let cert = ca.client_cert(user, groups).expect("client certificate");
    let yaml = pki::kubeconfig(&server.url(), &ca.cert_pem, &cert, "rbac-test");
    let kc = Kubeconfig::from_yaml(&yaml).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("client configuration");
    kube::Client::try_from(config).expect("client")
}

/// One raw JSON request: the status code and the JSON body (Null when not JSON).
async fn call(
    client: &kube::Client,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut b = http::Request::builder().method(method).uri(path);
    if body.is_some() {
        b = b.header("content-type", "application/json");
    }
    let body = body
        .map(|v| serde_json::to_vec(&v).unwrap())
        .unwrap_or_default();
    let resp = client
        .send(b.body(kube::client::Body::from(body)).unwrap())
        .await
        .unwrap();
    let code = resp.status().as_u16();
    let bytes = resp.into_body().collect_bytes().await.unwrap();
    (code, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

async fn create(client: &kube::Client, path: &str, body: Value) -> Value {
    let (code, v) = call(client, "POST", path, Some(body)).await;
    assert_eq!(code, 201, "POST {path}: {v}");
    v
}

/// Polls `path` until it answers `want` (RBAC reads the watch cache, which follows writes).
async fn await_code(
    client: &kube::Client,
    method: &str,
    path: &str,
    body: Option<Value>,
    want: u16,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, v) = call(client, method, path, body.clone()).await;
        if code == want {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{method} {path}: {code} {v}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const RBAC: &str = "/apis/rbac.authorization.k8s.io/v1";
const SSAR: &str = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews";
const SAR: &str = "/apis/authorization.k8s.io/v1/subjectaccessreviews";
const SSRR: &str = "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews";

fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
}

fn role(name: &str, rules: Value) -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": name}, "rules": rules})
}

fn role_binding(name: &str, kind: &str, role: &str, subject: Value) -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": name},
           "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role},
           "subjects": [subject]})
}

fn ssar(verb: &str, resource: &str, ns: &str) -> Value {
    json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
           "spec": {"resourceAttributes": {"verb": verb, "resource": resource, "namespace": ns}}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_policy_a_service_account_role_and_access_reviews() {
    let server = TestServer::start(Arc::new(MemoryStore::new())).await;
    let admin = server.client().await;

    // The bootstrap policy is there, labelled as upstream's.
    for name in [
        "cluster-admin",
        "admin",
        "edit",
        "view",
        "system:basic-user",
        "system:node",
        "system:kube-scheduler",
    ] {
        let (code, v) = call(&admin, "GET", &format!("{RBAC}/clusterroles/{name}"), None).await;
        assert_eq!(code, 200, "{name}: {v}");
        assert_eq!(
            v["metadata"]["labels"]["kubernetes.io/bootstrapping"],
            "rbac-defaults"
        );
        assert_eq!(
            v["metadata"]["annotations"]["rbac.authorization.kubernetes.io/autoupdate"],
            "true"
        );
    }
    let (_, crb) = call(
        &admin,
        "GET",
        &format!("{RBAC}/clusterrolebindings/cluster-admin"),
        None,
    )
    .await;
    assert_eq!(crb["subjects"][0]["name"], "system:masters");

    let (a, b) = ("rbac-it-a", "rbac-it-b");
    create(&admin, "/api/v1/namespaces", namespace(a)).await;
    create(&admin, "/api/v1/namespaces", namespace(b)).await;
    create(
        &admin,
        &format!("{RBAC}/namespaces/{a}/roles"),
        role(
            "pod-reader",
            json!([{"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods"]}]),
        ),
    )
    .await;
    create(
        &admin,
        &format!("{RBAC}/namespaces/{a}/rolebindings"),
        role_binding(
            "sa-reads-pods",
            "Role",
            "pod-reader",
            json!({"kind": "ServiceAccount", "name": "sa", "namespace": a}),
        ),
    )
    .await;

    let sa_name = format!("system:serviceaccount:{a}:sa");
    let sa_ns_group = format!("system:serviceaccounts:{a}");
    let sa = client_as(&server, &sa_name, &["system:serviceaccounts", &sa_ns_group]).await;
    await_code(
        &sa,
        "GET",
        &format!("/api/v1/namespaces/{a}/pods"),
        None,
        200,
    )
    .await;
    let (code, v) = call(
        &sa,
        "GET",
        &format!("/api/v1/namespaces/{a}/pods/nope"),
        None,
    )
    .await;
    assert_eq!(code, 404, "{v}");
    let (code, v) = call(&sa, "GET", &format!("/api/v1/namespaces/{b}/pods"), None).await;
    assert_eq!(code, 403, "{v}");
    assert_eq!(v["reason"], "Forbidden");
    assert_eq!(
        v["message"],
        format!(
            "pods is forbidden: User \"{sa_name}\" cannot list resource \"pods\" in API group \"\" in the namespace \"{b}\""
        )
    );
    let (code, _) = call(&sa, "GET", &format!("/api/v1/namespaces/{a}/secrets"), None).await;
    assert_eq!(code, 403);
    let (code, _) = call(
        &sa,
        "DELETE",
        &format!("/api/v1/namespaces/{a}/pods/x"),
        None,
    )
    .await;
    assert_eq!(code, 403);
    // Discovery and the public paths through the bootstrap bindings.
    for path in ["/api", "/apis", "/version", "/healthz"] {
        let (code, v) = call(&sa, "GET", path, None).await;
        assert_eq!(code, 200, "{path}: {v}");
    }

    // Access reviews as the service account (system:basic-user lets everyone ask about itself).
    let v = create(&sa, SSAR, ssar("get", "pods", a)).await;
    assert_eq!(v["status"]["allowed"], true, "{v}");
    let v = create(&sa, SSAR, ssar("get", "pods", b)).await;
    assert_eq!(v["status"]["allowed"], false, "{v}");
    let v = create(&sa, SSRR, json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview", "spec": {"namespace": a}})).await;
    let rules = v["status"]["resourceRules"]
        .as_array()
        .expect("resourceRules");
    assert!(
        rules
            .iter()
            .any(|r| r["resources"] == json!(["pods"]) && r["verbs"] == json!(["get", "list"])),
        "{v}"
    );
    assert!(
        rules
            .iter()
            .any(|r| r["resources"]
                == json!(["selfsubjectaccessreviews", "selfsubjectrulesreviews"])),
        "{v}"
    );
    assert!(
        !v["status"]["nonResourceRules"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(v["status"]["incomplete"], false);
    // SubjectAccessReview needs create on subjectaccessreviews, which the SA lacks.
    let sar = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": sa_name, "groups": ["system:serviceaccounts"], "resourceAttributes": {"verb": "list", "resource": "pods", "namespace": a}}});
    let (code, _) = call(&sa, "POST", SAR, Some(sar.clone())).await;
    assert_eq!(code, 403);
    let v = create(&admin, SAR, sar.clone()).await;
    assert_eq!(v["status"]["allowed"], true, "{v}");
    let mut other = sar.clone();
    other["spec"]["resourceAttributes"]["namespace"] = json!(b);
    assert_eq!(create(&admin, SAR, other).await["status"]["allowed"], false);
    let masters = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": "root", "groups": ["system:masters"], "nonResourceAttributes": {"verb": "get", "path": "/anything"}}});
    assert_eq!(
        create(&admin, SAR, masters).await["status"]["allowed"],
        true
    );
    let (code, _) = call(
        &admin,
        "POST",
        SAR,
        Some(
            json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"resourceAttributes": {"verb": "get", "resource": "pods"}}}),
        ),
    )
    .await;
    assert!(
        code == 400 || code == 422,
        "a SAR without user or groups is refused: {code}"
    );
    // LocalSubjectAccessReview: about its own namespace only.
    let lsar = |ns: &str| {
        json!({"apiVersion": "authorization.k8s.io/v1", "kind": "LocalSubjectAccessReview",
        "spec": {"user": sa_name, "resourceAttributes": {"verb": "get", "resource": "pods", "namespace": ns}}})
    };
    let lsar_path =
        format!("/apis/authorization.k8s.io/v1/namespaces/{a}/localsubjectaccessreviews");
    assert_eq!(
        create(&admin, &lsar_path, lsar(a)).await["status"]["allowed"],
        true
    );
    let (code, _) = call(&admin, "POST", &lsar_path, Some(lsar(b))).await;
    assert!(
        code == 400 || code == 422,
        "namespace mismatch is refused: {code}"
    );

    // Removing the binding takes the access away again.
    let (code, _) = call(
        &admin,
        "DELETE",
        &format!("{RBAC}/namespaces/{a}/rolebindings/sa-reads-pods"),
        None,
    )
    .await;
    assert_eq!(code, 200);
    await_code(
        &sa,
        "GET",
        &format!("/api/v1/namespaces/{a}/pods"),
        None,
        403,
    )
    .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_and_bindings_cannot_grant_more_than_the_writer_holds() {
    let server = TestServer::start(Arc::new(MemoryStore::new())).await;
    let admin = server.client().await;
    let ns = "rbac-it-esc";
    create(&admin, "/api/v1/namespaces", namespace(ns)).await;
    let roles = format!("{RBAC}/namespaces/{ns}/roles");
    let bindings = format!("{RBAC}/namespaces/{ns}/rolebindings");
    create(&admin, &roles, role("rbac-manager", json!([
        {"verbs": ["get", "list", "create", "update", "patch", "delete"], "apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles", "rolebindings"]},
        {"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods"]},
    ]))).await;
    let dev_subject =
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "dev"});
    create(
        &admin,
        &bindings,
        role_binding("dev", "Role", "rbac-manager", dev_subject.clone()),
    )
    .await;
    let dev = client_as(&server, "dev", &["devs"]).await;
    await_code(&dev, "GET", &roles, None, 200).await;

    // Rules the writer holds: fine. Rules it does not: 403 with upstream's explanation.
    create(
        &dev,
        &roles,
        role(
            "pod-get",
            json!([{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}]),
        ),
    )
    .await;
    let secrets = role(
        "secret-del",
        json!([{"verbs": ["delete"], "apiGroups": [""], "resources": ["secrets"]}]),
    );
    let (code, v) = call(&dev, "POST", &roles, Some(secrets.clone())).await;
    assert_eq!(code, 403, "{v}");
    let msg = v["message"].as_str().unwrap_or_default();
    assert!(
        msg.starts_with(
            "roles.rbac.authorization.k8s.io \"secret-del\" is forbidden: user \"dev\""
        ),
        "{msg}"
    );
    assert!(msg.contains("is attempting to grant RBAC permissions not currently held:\n{APIGroups:[\"\"], Resources:[\"secrets\"], Verbs:[\"delete\"]}"), "{msg}");
    // Widening a held role by update is refused too.
    let (code, mut pod_get) = call(&dev, "GET", &format!("{roles}/pod-get"), None).await;
    assert_eq!(code, 200);
    pod_get["rules"][0]["verbs"] = json!(["get", "delete"]);
    let (code, v) = call(&dev, "PUT", &format!("{roles}/pod-get"), Some(pod_get)).await;
    assert_eq!(code, 403, "{v}");

    // Binding: a role whose rules the writer holds is fine; cluster-admin is not.
    create(
        &dev,
        &bindings,
        role_binding(
            "friend-pods",
            "Role",
            "pod-get",
            json!({"kind": "User", "name": "friend"}),
        ),
    )
    .await;
    let (code, v) = call(
        &dev,
        "POST",
        &bindings,
        Some(role_binding(
            "root",
            "ClusterRole",
            "cluster-admin",
            dev_subject.clone(),
        )),
    )
    .await;
    assert_eq!(code, 403, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap_or_default()
            .contains("not currently held"),
        "{v}"
    );

    // With `escalate` on roles and `bind` on the ClusterRole, both go through.
    create(&admin, &roles, role("escalator", json!([
        {"verbs": ["escalate"], "apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles"]},
        {"verbs": ["bind"], "apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"], "resourceNames": ["edit"]},
    ]))).await;
    create(
        &admin,
        &bindings,
        role_binding("dev-escalates", "Role", "escalator", dev_subject.clone()),
    )
    .await;
    await_code(&dev, "POST", &roles, Some(secrets), 201).await;
    create(
        &dev,
        &bindings,
        role_binding(
            "friend-edit",
            "ClusterRole",
            "edit",
            json!({"kind": "User", "name": "friend"}),
        ),
    )
    .await;
    let (code, _) = call(
        &dev,
        "POST",
        &bindings,
        Some(role_binding(
            "root",
            "ClusterRole",
            "cluster-admin",
            dev_subject,
        )),
    )
    .await;
    assert_eq!(code, 403, "bind is only granted for edit");
    server.shutdown().await;
}
