//! Service account tokens and admission against an in-process API server: TokenRequest issues
//! a verifiable token bound to its pod with upstream's defaults and errors, and new pods get
//! the `default` service account and the projected token volume unless automount is off.

use capstan_apiserver::testing::TestServer;
use capstan_apiserver::tokens::ISSUER;
use capstan_store::MemoryStore;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use std::sync::Arc;

fn obj<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("object")
}

fn pod(name: &str, extra_spec: Value) -> Pod {
    let mut spec = json!({"containers": [{"name": "c", "image": "busybox"}],
                          "initContainers": [{"name": "i", "image": "busybox"}]});
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra_spec.as_object()) {
        s.extend(e.clone());
    }
    obj(json!({"metadata": {"name": name}, "spec": spec}))
}

fn request(v: Value) -> TokenRequest {
    obj(json!({"spec": v}))
}

async fn token_for(
    sas: &Api<ServiceAccount>,
    name: &str,
    spec: Value,
) -> Result<TokenRequest, kube::Error> {
    sas.create_subresource("token", name, &PostParams::default(), &request(spec))
        .await
}

fn api_code(r: Result<TokenRequest, kube::Error>) -> (u16, String) {
    match r {
        Err(kube::Error::Api(s)) => (s.code, s.message),
        other => panic!("want an API error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_request_issues_bound_tokens_with_upstream_defaults_and_errors() {
    let server = TestServer::start(Arc::new(MemoryStore::new())).await;
    let client = server.client().await;
    let sas = Api::<ServiceAccount>::namespaced(client.clone(), "default");
    let sa = sas
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "robot"}})),
        )
        .await
        .unwrap();
    let pods = Api::<Pod>::namespaced(client.clone(), "default");
    let p = pods
        .create(
            &PostParams::default(),
            &pod("worker", json!({"serviceAccountName": "robot"})),
        )
        .await
        .unwrap();

    let answer = token_for(&sas, "robot", json!({
        "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": "worker", "uid": p.metadata.uid},
    }))
    .await
    .unwrap();
    assert_eq!(answer.spec.expiration_seconds, Some(3600));
    assert_eq!(answer.spec.audiences, vec![ISSUER.to_string()]);
    let status = answer.status.expect("status");
    let now = jiff::Timestamp::now().as_second();
    let claims = server
        .running
        .server
        .tokens
        .verify(&status.token, now)
        .unwrap();
    assert_eq!(claims["sub"], "system:serviceaccount:default:robot");
    assert_eq!(claims["aud"], json!([ISSUER]));
    assert_eq!(
        claims["kubernetes.io"]["serviceaccount"]["uid"],
        json!(sa.metadata.uid)
    );
    assert_eq!(claims["kubernetes.io"]["pod"]["name"], "worker");
    let exp = claims["exp"].as_i64().unwrap();
    assert!(
        (3590..=3610).contains(&(exp - now)),
        "exp - now = {}",
        exp - now
    );

    // Audiences and expiration are honoured; the minimum is ten minutes.
    let custom = token_for(
        &sas,
        "robot",
        json!({"audiences": ["vault"], "expirationSeconds": 7200}),
    )
    .await
    .unwrap();
    let claims = server
        .running
        .server
        .tokens
        .verify(&custom.status.unwrap().token, now)
        .unwrap();
    assert_eq!(claims["aud"], json!(["vault"]));
    assert!(claims["kubernetes.io"]["pod"].is_null());
    let (code, msg) = api_code(token_for(&sas, "robot", json!({"expirationSeconds": 60})).await);
    assert_eq!(code, 422, "{msg}");
    assert!(
        msg.contains("may not specify a duration less than 10 minutes"),
        "{msg}"
    );

    // A missing service account, a recreated pod (UID mismatch), another pod's account.
    let (code, msg) = api_code(token_for(&sas, "ghost", json!({})).await);
    assert_eq!(code, 404, "{msg}");
    let (code, msg) = api_code(token_for(&sas, "robot", json!({
        "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": "worker", "uid": "not-the-uid"},
    })).await);
    assert_eq!(code, 409, "{msg}");
    assert!(msg.contains("does not match the UID in record"), "{msg}");
    sas.create(
        &PostParams::default(),
        &obj(json!({"metadata": {"name": "other"}})),
    )
    .await
    .unwrap();
    let (code, msg) = api_code(
        token_for(
            &sas,
            "other",
            json!({
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": "worker"},
            }),
        )
        .await,
    );
    assert_eq!(code, 400, "{msg}");
    let (code, msg) = api_code(
        token_for(
            &sas,
            "robot",
            json!({
                "boundObjectRef": {"apiVersion": "v1", "kind": "ConfigMap", "name": "x"},
            }),
        )
        .await,
    );
    assert_eq!(code, 422, "{msg}");
    server.shutdown().await;
}

fn mounts_of(p: &Pod) -> Vec<Vec<String>> {
    let spec = p.spec.as_ref().unwrap();
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .map(|c| {
            c.volume_mounts
                .iter()
                .flatten()
                .map(|m| {
                    format!(
                        "{}:{}:{}",
                        m.name,
                        m.mount_path,
                        m.read_only.unwrap_or(false)
                    )
                })
                .collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_pods_get_the_default_account_and_a_token_volume_unless_automount_is_off() {
    let server = TestServer::start(Arc::new(MemoryStore::new())).await;
    let client = server.client().await;
    let pods = Api::<Pod>::namespaced(client.clone(), "default");
    let p = pods
        .create(&PostParams::default(), &pod("plain", json!({})))
        .await
        .unwrap();
    let spec = p.spec.as_ref().unwrap();
    assert_eq!(spec.service_account_name.as_deref(), Some("default"));
    let volumes = spec.volumes.as_ref().expect("volumes");
    assert_eq!(volumes.len(), 1);
    let v = &volumes[0];
    assert!(v.name.starts_with("kube-api-access-"), "{}", v.name);
    let sources = v.projected.as_ref().unwrap().sources.as_ref().unwrap();
    assert_eq!(
        sources[0]
            .service_account_token
            .as_ref()
            .unwrap()
            .expiration_seconds,
        Some(3607)
    );
    assert_eq!(
        sources[1].config_map.as_ref().unwrap().name,
        "kube-root-ca.crt"
    );
    let want = format!(
        "{}:/var/run/secrets/kubernetes.io/serviceaccount:true",
        v.name
    );
    assert_eq!(mounts_of(&p), vec![vec![want.clone()], vec![want]]);

    // Off on the pod, or on its service account: nothing is added.
    let off = pods
        .create(
            &PostParams::default(),
            &pod("off", json!({"automountServiceAccountToken": false})),
        )
        .await
        .unwrap();
    assert!(
        off.spec.as_ref().unwrap().volumes.is_none(),
        "{:?}",
        off.spec
    );
    Api::<ServiceAccount>::namespaced(client.clone(), "default")
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "quiet"}, "automountServiceAccountToken": false})),
        )
        .await
        .unwrap();
    let quiet = pods
        .create(
            &PostParams::default(),
            &pod("quiet", json!({"serviceAccountName": "quiet"})),
        )
        .await
        .unwrap();
    assert!(quiet.spec.as_ref().unwrap().volumes.is_none());
    // A container with its own volume at the path keeps it; the others get the token.
    let own = pods
        .create(&PostParams::default(), &obj(json!({"metadata": {"name": "own"}, "spec": {
            "volumes": [{"name": "mine", "emptyDir": {}}],
            "containers": [
                {"name": "a", "image": "busybox", "volumeMounts": [{"name": "mine", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]},
                {"name": "b", "image": "busybox"},
            ]}})))
        .await
        .unwrap();
    let m = mounts_of(&own);
    assert_eq!(
        m[0],
        vec!["mine:/var/run/secrets/kubernetes.io/serviceaccount:false".to_string()]
    );
    assert!(m[1][0].starts_with("kube-api-access-"), "{m:?}");
    server.shutdown().await;
}
