//! Graceful deletion against an in-process API server, as upstream's generic registry store
//! does it: a terminating pod outlives updates until its grace period is cut to 0, a second
//! delete may only shorten the grace period, and finalizers hold an object whose grace is over.

use capstan_apiserver::testing::TestServer;
use capstan_store::MemoryStore;
use futures::TryStreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions, WatchEvent};
use kube::api::{ObjectMeta, WatchParams};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

async fn namespace(client: &kube::Client, name: &str) {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create the namespace");
}

/// A pod bound to a node (so it is deleted gracefully), with `finalizers`.
fn pod(name: &str, finalizers: &[&str]) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "finalizers": finalizers},
        "spec": {"nodeName": "graceful-node", "containers": [{"name": "c", "image": "busybox"}]}
    }))
    .expect("pod")
}

fn grace(secs: i64) -> DeleteParams {
    DeleteParams {
        grace_period_seconds: Some(secs as u32),
        ..DeleteParams::default()
    }
}

async fn delete_pod(api: &Api<Pod>, name: &str, dp: &DeleteParams) -> Pod {
    api.delete(name, dp)
        .await
        .expect("delete")
        .left()
        .expect("the object, not a Status")
}

fn deletion(p: &Pod) -> (String, i64) {
    let ts = p
        .metadata
        .deletion_timestamp
        .as_ref()
        .expect("deletionTimestamp");
    let g = p
        .metadata
        .deletion_grace_period_seconds
        .expect("deletionGracePeriodSeconds");
    (ts.0.to_string(), g)
}

/// Status code and body of a raw request.
async fn call(client: &kube::Client, method: &str, path: &str, body: Value) -> (u16, Value) {
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(kube::client::Body::from(
            serde_json::to_vec(&body).expect("json"),
        ))
        .expect("request");
    let resp = client.send(req).await.expect("response");
    let code = resp.status().as_u16();
    let bytes = resp.into_body().collect_bytes().await.expect("body");
    (code, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

async fn gone(api: &Api<Pod>, name: &str) -> bool {
    matches!(api.get(name).await, Err(kube::Error::Api(e)) if e.code == 404)
}

#[tokio::test]
async fn graceful_pod_outlives_updates_until_grace_zero() {
    let server = TestServer::start(Arc::new(MemoryStore::new())).await;
    let client = server.client().await;
    namespace(&client, "gd-updates").await;
    let api: Api<Pod> = Api::namespaced(client.clone(), "gd-updates");
    let created = api
        .create(&PostParams::default(), &pod("p", &[]))
        .await
        .expect("create");
    let rv = created.metadata.resource_version.clone().expect("rv");
    let events = api
        .watch(&WatchParams::default().timeout(60), &rv)
        .await
        .expect("watch");

    let first = delete_pod(&api, "p", &grace(30)).await;
    let (ts30, g) = deletion(&first);
    assert_eq!(g, 30);

    // The kubelet's status update and a metadata update leave the terminating pod in place.
    let status = json!({"status": {"phase": "Running"}});
    api.patch_status("p", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("status update");
    let labels = json!({"metadata": {"labels": {"seen": "yes"}}});
    let p = api
        .patch("p", &PatchParams::default(), &Patch::Merge(&labels))
        .await
        .expect("metadata update");
    assert_eq!(
        deletion(&p),
        (ts30.clone(), 30),
        "updates keep the deletion"
    );
    let p = api.get("p").await.expect("still there after updates");
    assert_eq!(p.status.and_then(|s| s.phase).as_deref(), Some("Running"));

    // The kubelet's final delete: grace 0 with the uid precondition removes it now.
    let last = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: created.metadata.uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    let out = delete_pod(&api, "p", &last).await;
    let (ts0, g0) = deletion(&out);
    assert_eq!(g0, 0);
    assert!(
        ts0 <= ts30,
        "the deadline only moves earlier: {ts0} vs {ts30}"
    );
    assert!(gone(&api, "p").await, "a grace-0 delete removes the pod");

    // Watchers saw the deletion start, both updates, the cut to 0, then the removal.
    let mut events = std::pin::pin!(events);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    loop {
        let ev = tokio::time::timeout_at(deadline, events.try_next())
            .await
            .expect("events before the deadline")
            .expect("watch")
            .expect("the watch stays open");
        match ev {
            WatchEvent::Modified(p) => seen.push(p.metadata.deletion_grace_period_seconds),
            WatchEvent::Deleted(p) => {
                assert_eq!(p.metadata.deletion_grace_period_seconds, Some(0));
                break;
            }
            other => panic!("unexpected event {other:?}"),
        }
    }
    assert_eq!(seen, [Some(30), Some(30), Some(30), Some(0)]);
    server.shutdown().await;
}

#[tokio::test]
async fn finalizer_holds_pod_cut_to_grace_zero() {
    let server = TestServer::start(Arc::new(MemoryStore::new())).await;
    let client = server.client().await;
    namespace(&client, "gd-finalizer").await;
    let api: Api<Pod> = Api::namespaced(client.clone(), "gd-finalizer");
    api.create(&PostParams::default(), &pod("f", &["example.com/hold"]))
        .await
        .expect("create");
    let (ts30, _) = deletion(&delete_pod(&api, "f", &grace(30)).await);

    let out = delete_pod(&api, "f", &grace(0)).await;
    let (ts0, g0) = deletion(&out);
    assert_eq!(g0, 0);
    assert!(
        ts0 <= ts30,
        "the deadline only moves earlier: {ts0} vs {ts30}"
    );
    let p = api.get("f").await.expect("the finalizer holds the pod");
    assert_eq!(p.metadata.deletion_grace_period_seconds, Some(0));
    assert_eq!(
        p.metadata.finalizers.as_deref(),
        Some(&["example.com/hold".to_string()][..])
    );

    // A status update with the finalizer still there changes nothing about the deletion.
    let status = json!({"status": {"phase": "Failed"}});
    api.patch_status("f", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("status update");
    assert!(!gone(&api, "f").await, "still held by its finalizer");

    // Removing the finalizer (grace is now 0) removes the pod.
    let drop = json!({"metadata": {"finalizers": null}});
    api.patch("f", &PatchParams::default(), &Patch::Merge(&drop))
        .await
        .expect("remove the finalizer");
    assert!(gone(&api, "f").await, "no finalizers and grace 0: removed");
    server.shutdown().await;
}

#[tokio::test]
async fn second_delete_may_only_shorten_grace() {
    let server = TestServer::start(Arc::new(MemoryStore::new())).await;
    let client = server.client().await;
    namespace(&client, "gd-longer").await;
    let api: Api<Pod> = Api::namespaced(client.clone(), "gd-longer");
    api.create(&PostParams::default(), &pod("l", &[]))
        .await
        .expect("create");
    let first = delete_pod(&api, "l", &grace(10)).await;
    let path = "/api/v1/namespaces/gd-longer/pods/l";

    // The same, a longer or no grace period: accepted, nothing changes.
    for body in [
        json!({"gracePeriodSeconds": 10}),
        json!({"gracePeriodSeconds": 60}),
        json!({}),
    ] {
        let (code, obj) = call(&client, "DELETE", path, body.clone()).await;
        assert_eq!(code, 202, "{body}: {obj}");
        assert_eq!(
            obj["metadata"]["resourceVersion"].as_str(),
            first.metadata.resource_version.as_deref(),
            "{body} changes nothing"
        );
    }
    let p = api.get("l").await.expect("still there");
    assert_eq!(deletion(&p), deletion(&first));

    // A dry run of the shortening answers with the result but stores nothing.
    let (code, obj) = call(
        &client,
        "DELETE",
        &format!("{path}?dryRun=All"),
        json!({"gracePeriodSeconds": 0}),
    )
    .await;
    assert_eq!(code, 200, "{obj}");
    assert_eq!(obj["metadata"]["deletionGracePeriodSeconds"], json!(0));
    let p = api.get("l").await.expect("a dry run keeps it");
    assert_eq!(deletion(&p), deletion(&first));

    // A shorter, non-zero period: updated, still there.
    let out = delete_pod(&api, "l", &grace(3)).await;
    assert_eq!(deletion(&out).1, 3);
    assert!(deletion(&out).0 <= deletion(&first).0);
    assert!(!gone(&api, "l").await, "grace 3 keeps it");

    // A stale resourceVersion precondition still conflicts.
    let stale = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: None,
            resource_version: first.metadata.resource_version.clone(),
        }),
        ..DeleteParams::default()
    };
    match api.delete("l", &stale).await {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 409),
        other => panic!("a stale precondition must conflict: {other:?}"),
    }
    delete_pod(&api, "l", &grace(0)).await;
    assert!(gone(&api, "l").await);

    // A pod on no node has nothing to stop: deleted at once, as before.
    let mut unbound = pod("u", &[]);
    unbound.spec.as_mut().expect("spec").node_name = None;
    api.create(&PostParams::default(), &unbound)
        .await
        .expect("create");
    api.delete("u", &DeleteParams::default())
        .await
        .expect("delete");
    assert!(gone(&api, "u").await);
    server.shutdown().await;
}

#[tokio::test]
async fn configmap_finalizer_removal_deletes() {
    let server = TestServer::start(Arc::new(MemoryStore::new())).await;
    let client = server.client().await;
    namespace(&client, "gd-configmap").await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "gd-configmap");
    let cm = |name: &str, finalizers: Vec<String>| ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            finalizers: Some(finalizers),
            ..Default::default()
        },
        ..Default::default()
    };
    api.create(
        &PostParams::default(),
        &cm("held", vec!["example.com/hold".into()]),
    )
    .await
    .expect("create");
    let out = api
        .delete("held", &DeleteParams::default())
        .await
        .expect("delete")
        .left()
        .expect("the object");
    assert!(out.metadata.deletion_timestamp.is_some());
    assert_eq!(out.metadata.deletion_grace_period_seconds, Some(0));

    let data = json!({"data": {"k": "v"}});
    api.patch("held", &PatchParams::default(), &Patch::Merge(&data))
        .await
        .expect("update");
    assert!(api.get("held").await.is_ok(), "the finalizer holds it");
    let drop = json!({"metadata": {"finalizers": null}});
    api.patch("held", &PatchParams::default(), &Patch::Merge(&drop))
        .await
        .expect("remove the finalizer");
    assert!(
        matches!(api.get("held").await, Err(kube::Error::Api(e)) if e.code == 404),
        "no finalizers left: removed"
    );

    // Without finalizers a ConfigMap goes at once, whatever grace period is asked for.
    api.create(&PostParams::default(), &cm("free", Vec::new()))
        .await
        .expect("create");
    api.delete("free", &grace(30)).await.expect("delete");
    assert!(matches!(api.get("free").await, Err(kube::Error::Api(e)) if e.code == 404));
    server.shutdown().await;
}
