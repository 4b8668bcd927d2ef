//! Authentication against an in-process API server over real HTTPS: anonymous and bad
//! credentials are 401 on every resource path, service account tokens authenticate until they
//! expire or their bound pod is gone, static token file users, TokenReview, impersonation, and
//! the audit log.

use capstan_api::resources::RESOURCES;
use capstan_apiserver::ServerConfig;
use capstan_apiserver::testing::TestServer;
use capstan_apiserver::tokens::{self, ISSUER};
use capstan_store::MemoryStore;
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A client that trusts the cluster CA but presents no credentials of its own.
async fn anonymous(server: &TestServer) -> kube::Client {
    let kc = Kubeconfig::read_from(server.data_dir().join("admin.kubeconfig")).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    config.auth_info = Default::default();
    kube::Client::try_from(config).unwrap()
}

/// One raw request; the status code and the JSON body (Null when not JSON).
async fn call(
    client: &kube::Client,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (u16, Value) {
    let mut b = http::Request::builder().method(method).uri(path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let body = body
        .map(|v| serde_json::to_vec(&v).unwrap())
        .unwrap_or_default();
    if !body.is_empty() {
        b = b.header("content-type", "application/json");
    }
    let resp = client
        .send(b.body(kube::client::Body::from(body)).unwrap())
        .await
        .unwrap();
    let code = resp.status().as_u16();
    let bytes = resp.into_body().collect_bytes().await.unwrap();
    (code, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

const WHOAMI: &str = "/apis/authentication.k8s.io/v1/selfsubjectreviews";

/// `kubectl auth whoami` as the bearer of `token` (plus any other headers).
async fn whoami(client: &kube::Client, token: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let auth = format!("Bearer {token}");
    let mut h = vec![("authorization", auth.as_str())];
    h.extend_from_slice(headers);
    let body = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"});
    let (code, v) = call(client, "POST", WHOAMI, &h, Some(body)).await;
    (code, v["status"]["userInfo"].clone())
}

async fn token_review(admin: &kube::Client, token: &str, audiences: &[&str]) -> Value {
    let body = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                      "spec": {"token": token, "audiences": audiences}});
    let (code, v) = call(
        admin,
        "POST",
        "/apis/authentication.k8s.io/v1/tokenreviews",
        &[],
        Some(body),
    )
    .await;
    assert_eq!(code, 201, "{v}");
    v["status"].clone()
}

fn assert_unauthorized(code: u16, body: &Value, what: &str) {
    assert_eq!(code, 401, "{what}: {body}");
    assert_eq!(body["kind"], "Status", "{what}");
    assert_eq!(body["reason"], "Unauthorized", "{what}");
}

fn base(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{group}/{version}")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_or_bad_credentials_are_401_on_every_resource_path_but_public_paths_answer() {
    let server = TestServer::start(Arc::new(MemoryStore::new())).await;
    let anon = anonymous(&server).await;
    let mut paths = vec![];
    for r in RESOURCES {
        let b = base(r.group, r.version);
        let collection = if r.namespaced {
            paths.push(format!("{b}/{}", r.plural));
            format!("{b}/namespaces/default/{}", r.plural)
        } else {
            format!("{b}/{}", r.plural)
        };
        paths.push(collection.clone());
        paths.push(format!("{collection}/some-name"));
        for sub in r.subresources {
            paths.push(format!("{collection}/some-name/{}", sub.name()));
        }
    }
    assert!(paths.len() > 3 * RESOURCES.len());
    for path in &paths {
        let (code, body) = call(&anon, "GET", path, &[], None).await;
        assert_unauthorized(code, &body, path);
    }
    for (method, path) in [
        ("POST", "/api/v1/namespaces/default/pods"),
        ("DELETE", "/api/v1/nodes/n1"),
        ("GET", "/apis"),
        ("GET", "/api"),
        ("GET", "/openapi/v2"),
    ] {
        let (code, body) = call(&anon, method, path, &[], None).await;
        assert_unauthorized(code, &body, path);
    }
    for path in ["/healthz", "/livez", "/readyz", "/version"] {
        let (code, body) = call(&anon, "GET", path, &[], None).await;
        assert_eq!(code, 200, "{path}: {body}");
    }
    // A token nobody issued is refused even where no credentials are needed, as upstream.
    for token in [
        "garbage",
        "a.b.c",
        "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJ4In0.AAAA",
    ] {
        let auth = format!("Bearer {token}");
        for path in ["/api/v1/namespaces/default/pods", "/version", WHOAMI] {
            let (code, body) = call(&anon, "GET", path, &[("authorization", &auth)], None).await;
            assert_unauthorized(code, &body, &format!("{path} with {token}"));
        }
    }
    // Other schemes are no credentials at all.
    let (code, _) = call(
        &anon,
        "GET",
        "/version",
        &[("authorization", "Basic Zm9vOmJhcg==")],
        None,
    )
    .await;
    assert_eq!(code, 200);
    let (code, body) = call(
        &anon,
        "GET",
        "/api/v1/pods",
        &[("authorization", "Basic Zm9vOmJhcg==")],
        None,
    )
    .await;
    assert_unauthorized(code, &body, "basic auth");
    server.shutdown().await;
}

async fn request_token(admin: &kube::Client, sa: &str, spec: Value) -> String {
    let (code, v) = call(
        admin,
        "POST",
        &format!("/api/v1/namespaces/default/serviceaccounts/{sa}/token"),
        &[],
        Some(
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}),
        ),
    )
    .await;
    assert_eq!(code, 201, "{v}");
    v["status"]["token"].as_str().unwrap().to_string()
}

/// Polls `whoami` with `token` until it is 401 (a deletion reaches the watch cache).
async fn until_refused(client: &kube::Client, token: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, _) = whoami(client, token, &[]).await;
        if code == 401 {
            return;
        }
        assert!(Instant::now() < deadline, "token still accepted: {code}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_account_tokens_authenticate_until_expired_or_unbound() {
    let server = TestServer::start(Arc::new(MemoryStore::new())).await;
    let admin = server.client().await;
    let anon = anonymous(&server).await;
    let (code, sa) = call(
        &admin,
        "POST",
        "/api/v1/namespaces/default/serviceaccounts",
        &[],
        Some(json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "robot"}})),
    )
    .await;
    assert_eq!(code, 201, "{sa}");
    let sa_uid = sa["metadata"]["uid"].as_str().unwrap().to_string();

    let token = request_token(&admin, "robot", json!({})).await;
    let (code, user) = whoami(&anon, &token, &[]).await;
    assert_eq!(code, 201, "{user}");
    assert_eq!(user["username"], "system:serviceaccount:default:robot");
    assert_eq!(user["uid"], sa_uid.as_str());
    assert_eq!(
        user["groups"],
        json!([
            "system:serviceaccounts",
            "system:serviceaccounts:default",
            "system:authenticated"
        ])
    );
    let cred = user["extra"]["authentication.kubernetes.io/credential-id"][0]
        .as_str()
        .unwrap();
    assert!(cred.starts_with("JTI="), "{cred}");

    let review = token_review(&admin, &token, &[]).await;
    assert_eq!(review["authenticated"], true, "{review}");
    assert_eq!(
        review["user"]["username"],
        "system:serviceaccount:default:robot"
    );
    assert_eq!(review["audiences"], json!([ISSUER]));
    let review = token_review(&admin, &token, &["vault"]).await;
    assert_eq!(review["authenticated"], Value::Null, "{review}");
    assert!(
        review["error"]
            .as_str()
            .unwrap()
            .contains("invalid for the target audiences"),
        "{review}"
    );

    // A token for another audience is no good for the API server, but TokenReview says whose.
    let vault = request_token(&admin, "robot", json!({"audiences": ["vault"]})).await;
    let (code, _) = whoami(&anon, &vault, &[]).await;
    assert_eq!(code, 401);
    let review = token_review(&admin, &vault, &["vault", "other"]).await;
    assert_eq!(review["authenticated"], true, "{review}");
    assert_eq!(review["audiences"], json!(["vault"]));

    // Expired: signed with the cluster's key, an hour past its end.
    let now = jiff::Timestamp::now().as_second();
    let claims = tokens::claims(
        "default",
        "robot",
        &sa_uid,
        &[ISSUER.into()],
        now - 7200,
        3600,
        None,
    );
    let expired = server.running.server.tokens.sign(&claims).unwrap();
    let (code, body) = whoami(&anon, &expired, &[]).await;
    assert_eq!(code, 401, "{body}");
    let review = token_review(&admin, &expired, &[]).await;
    assert_eq!(
        review["error"],
        "[invalid bearer token, service account token has expired]"
    );
    // A token naming another UID for the service account (deleted and recreated).
    let claims = tokens::claims(
        "default",
        "robot",
        "not-the-uid",
        &[ISSUER.into()],
        now,
        3600,
        None,
    );
    let stale = server.running.server.tokens.sign(&claims).unwrap();
    let (code, _) = whoami(&anon, &stale, &[]).await;
    assert_eq!(code, 401);
    let review = token_review(&admin, &stale, &[]).await;
    assert_eq!(
        review["error"],
        format!(
            "[invalid bearer token, ServiceAccount UID ({sa_uid}) does not match claim (not-the-uid)]"
        )
    );

    // Bound to a pod: good while the pod lives, refused once it is deleted.
    let (code, pod) = call(
        &admin,
        "POST",
        "/api/v1/namespaces/default/pods",
        &[],
        Some(
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bound"},
                    "spec": {"serviceAccountName": "robot", "automountServiceAccountToken": false,
                             "containers": [{"name": "c", "image": "busybox"}]}}),
        ),
    )
    .await;
    assert_eq!(code, 201, "{pod}");
    let pod_uid = pod["metadata"]["uid"].as_str().unwrap().to_string();
    let bound = request_token(&admin, "robot",
        json!({"boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "bound", "uid": pod_uid}})).await;
    let (code, user) = whoami(&anon, &bound, &[]).await;
    assert_eq!(code, 201, "{user}");
    assert_eq!(
        user["extra"]["authentication.kubernetes.io/pod-name"],
        json!(["bound"])
    );
    assert_eq!(
        user["extra"]["authentication.kubernetes.io/pod-uid"],
        json!([pod_uid])
    );
    let (code, body) = call(
        &admin,
        "DELETE",
        "/api/v1/namespaces/default/pods/bound?gracePeriodSeconds=0",
        &[],
        None,
    )
    .await;
    assert!(code == 200 || code == 202, "{body}");
    until_refused(&anon, &bound).await;
    let review = token_review(&admin, &bound, &[]).await;
    assert_eq!(
        review["error"],
        "[invalid bearer token, service account token has been invalidated]"
    );
    // Bound to a secret or a node: the same, and a node-bound token names its node.
    for (kind, collection, object) in [
        (
            "Secret",
            "/api/v1/namespaces/default/secrets",
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "bound-secret"}}),
        ),
        (
            "Node",
            "/api/v1/nodes",
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "bound-node"}}),
        ),
    ] {
        let (code, obj) = call(&admin, "POST", collection, &[], Some(object)).await;
        assert_eq!(code, 201, "{obj}");
        let name = obj["metadata"]["name"].as_str().unwrap().to_string();
        let uid = obj["metadata"]["uid"].as_str().unwrap().to_string();
        let bound = request_token(
            &admin,
            "robot",
            json!({"boundObjectRef": {"kind": kind, "apiVersion": "v1", "name": name, "uid": uid}}),
        )
        .await;
        let (code, user) = whoami(&anon, &bound, &[]).await;
        assert_eq!(code, 201, "{kind}: {user}");
        if kind == "Node" {
            assert_eq!(
                user["extra"]["authentication.kubernetes.io/node-name"],
                json!([name])
            );
            assert_eq!(
                user["extra"]["authentication.kubernetes.io/node-uid"],
                json!([uid])
            );
        }
        let (code, body) = call(&admin, "DELETE", &format!("{collection}/{name}"), &[], None).await;
        assert_eq!(code, 200, "{body}");
        until_refused(&anon, &bound).await;
    }
    // The unbound token still works; deleting the service account ends it too.
    assert_eq!(whoami(&anon, &token, &[]).await.0, 201);
    let (code, body) = call(
        &admin,
        "DELETE",
        "/api/v1/namespaces/default/serviceaccounts/robot",
        &[],
        None,
    )
    .await;
    assert_eq!(code, 200, "{body}");
    until_refused(&anon, &token).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_token_file_stops_the_server_from_starting() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.csv");
    std::fs::write(&file, "only-two,columns\n").unwrap();
    let config = ServerConfig {
        data_dir: dir.path().to_path_buf(),
        bind_address: [127, 0, 0, 1].into(),
        https_port: 0,
        service_cidr: "10.43.0.0/16".into(),
        node_port_range: (30000, 32767),
        tls_sans: vec![],
        token_auth_file: Some(file),
        audit_log_path: None,
    };
    let (_stop, rx) = tokio::sync::watch::channel(false);
    let err = capstan_apiserver::start(config, Arc::new(MemoryStore::new()), rx)
        .await
        .err()
        .expect("a token file with two columns is refused");
    assert!(err.to_string().contains("invalid configuration"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_tokens_impersonation_and_the_audit_log() {
    // Outside the data dir, which goes with the server at shutdown.
    let audit_dir = tempfile::tempdir().unwrap();
    let audit_path = audit_dir.path().join("audit/audit.log");
    let ap = audit_path.clone();
    let server = TestServer::start_with(Arc::new(MemoryStore::new()), move |dir, config| {
        let file = dir.join("tokens.csv");
        std::fs::write(
            &file,
            "tok-alice,alice,u-alice,\"devs,ops\"\ntok-nobody,nobody,u-nobody\n",
        )
        .unwrap();
        config.token_auth_file = Some(file);
        config.audit_log_path = Some(ap);
    })
    .await;
    let admin = server.client().await;
    let anon = anonymous(&server).await;

    let (code, user) = whoami(&anon, "tok-alice", &[]).await;
    assert_eq!(code, 201, "{user}");
    assert_eq!(
        user,
        json!({"username": "alice", "uid": "u-alice", "groups": ["devs", "ops", "system:authenticated"]})
    );
    let review = token_review(&admin, "tok-alice", &[]).await;
    assert_eq!(review["authenticated"], true);
    assert_eq!(review["user"]["username"], "alice");
    assert_eq!(review["audiences"], json!([ISSUER]));
    let review = token_review(&admin, "tok-unknown", &[]).await;
    assert_eq!(review, json!({"user": {}}));
    let (code, _) = whoami(&anon, "tok-unknown", &[]).await;
    assert_eq!(code, 401);

    // The admin (system:masters) may impersonate anyone, with groups, extras and a UID.
    let (code, body) = call(
        &admin,
        "POST",
        WHOAMI,
        &[
            ("impersonate-user", "bob"),
            ("impersonate-group", "g1"),
            ("impersonate-group", "g2"),
            ("impersonate-extra-scopes", "s1"),
            ("impersonate-extra-scopes", "s2"),
            ("impersonate-uid", "u-bob"),
        ],
        Some(json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(
        body["status"]["userInfo"],
        json!({"username": "bob", "uid": "u-bob", "groups": ["g1", "g2", "system:authenticated"],
               "extra": {"scopes": ["s1", "s2"]}})
    );
    let (code, body) = call(
        &admin,
        "POST",
        WHOAMI,
        &[("impersonate-user", "system:serviceaccount:ns1:robot")],
        Some(json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(
        body["status"]["userInfo"]["groups"],
        json!([
            "system:serviceaccounts",
            "system:serviceaccounts:ns1",
            "system:authenticated"
        ])
    );
    let (code, body) = call(
        &admin,
        "GET",
        "/api/v1/namespaces",
        &[("impersonate-group", "g1")],
        None,
    )
    .await;
    assert_eq!(code, 500, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("without impersonating a user"),
        "{body}"
    );

    // A user with no bindings may not impersonate: upstream's 403 for the first part refused.
    let (code, body) = whoami(&anon, "tok-nobody", &[("impersonate-user", "system:admin")]).await;
    assert_eq!(code, 403, "{body}");
    let (code, body) = call(
        &anon,
        "GET",
        "/api/v1/namespaces",
        &[
            ("authorization", "Bearer tok-nobody"),
            ("impersonate-user", "system:admin"),
            ("impersonate-group", "system:masters"),
        ],
        None,
    )
    .await;
    assert_eq!(code, 403, "{body}");
    assert_eq!(
        body["message"],
        "users \"system:admin\" is forbidden: User \"nobody\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope"
    );

    // Marked requests for the audit log.
    let (code, _) = call(
        &anon,
        "GET",
        "/api/v1/namespaces/default/pods/audit-one",
        &[
            ("authorization", "Bearer tok-alice"),
            ("user-agent", "authn-test/1"),
        ],
        None,
    )
    .await;
    assert!(code == 404 || code == 403, "{code}");
    let (code, _) = call(
        &anon,
        "GET",
        "/api/v1/namespaces/default/pods/audit-two",
        &[],
        None,
    )
    .await;
    assert_eq!(code, 401);
    let (code, _) = call(
        &admin,
        "GET",
        "/api/v1/namespaces/default/pods/audit-three",
        &[("impersonate-user", "carol")],
        None,
    )
    .await;
    assert!(code == 404 || code == 403, "{code}");
    let (code, _) = call(
        &admin,
        "GET",
        "/api/v1/namespaces/kube-system/configmaps/audit-four",
        &[],
        None,
    )
    .await;
    assert_eq!(code, 404);
    // A watch is complete when its stream ends.
    let (code, _) = call(
        &admin,
        "GET",
        "/api/v1/namespaces/default/pods?watch=true&timeoutSeconds=1&fieldSelector=metadata.name%3Daudit-watch",
        &[],
        None,
    )
    .await;
    assert_eq!(code, 200);

    server.shutdown().await;
    let text = std::fs::read_to_string(&audit_path).unwrap();
    let events: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(events.len() >= 12, "{} events", events.len());
    let ids: std::collections::BTreeSet<&str> = events
        .iter()
        .map(|e| e["auditID"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), events.len(), "audit IDs are unique");
    let one = |marker: &str| -> Value {
        let found: Vec<&Value> = events
            .iter()
            .filter(|e| e["requestURI"].as_str().unwrap().ends_with(marker))
            .collect();
        assert_eq!(found.len(), 1, "{marker}: {found:?}");
        found[0].clone()
    };
    let e = one("/pods/audit-one");
    assert_eq!(e["kind"], "Event");
    assert_eq!(e["apiVersion"], "audit.k8s.io/v1");
    assert_eq!(e["level"], "Metadata");
    assert_eq!(e["stage"], "ResponseComplete");
    assert_eq!(e["verb"], "get");
    assert_eq!(e["user"]["username"], "alice");
    assert_eq!(e["userAgent"], "authn-test/1");
    assert_eq!(e["sourceIPs"], json!(["127.0.0.1"]));
    assert_eq!(
        e["objectRef"],
        json!({"resource": "pods", "namespace": "default", "name": "audit-one", "apiVersion": "v1"})
    );
    assert!(e["impersonatedUser"].is_null());
    for ts in [&e["requestReceivedTimestamp"], &e["stageTimestamp"]] {
        let ts = ts.as_str().unwrap();
        // 2024-05-06T07:08:09.123456Z
        assert_eq!(ts.len(), 27, "{ts}");
        assert!(ts.ends_with('Z') && ts.as_bytes()[19] == b'.', "{ts}");
    }
    let e = one("/pods/audit-two");
    assert_eq!(e["responseStatus"]["code"], 401);
    assert_eq!(e["user"], json!({}));
    let e = one("/pods/audit-three");
    assert_eq!(e["user"]["username"], "system:admin");
    assert_eq!(e["impersonatedUser"]["username"], "carol");
    let e = one("metadata.name%3Daudit-watch");
    assert_eq!(e["verb"], "watch");
    let at = |k: &str| e[k].as_str().unwrap().parse::<jiff::Timestamp>().unwrap();
    let took = at("stageTimestamp").duration_since(at("requestReceivedTimestamp"));
    assert!(took.as_secs_f64() >= 0.9, "{e}");
    let e = one("/configmaps/audit-four");
    assert_eq!(e["responseStatus"]["code"], 404);
    assert_eq!(e["objectRef"]["namespace"], "kube-system");
    let refused = events
        .iter()
        .filter(|e| e["user"]["username"] == "nobody")
        .collect::<Vec<_>>();
    assert_eq!(refused.len(), 2);
    assert!(refused.iter().all(|e| e["responseStatus"]["code"] == 403));
    let whoamis = events
        .iter()
        .filter(|e| {
            e["objectRef"]["resource"] == "selfsubjectreviews" && e["responseStatus"]["code"] == 201
        })
        .count();
    assert_eq!(whoamis, 3);
}
