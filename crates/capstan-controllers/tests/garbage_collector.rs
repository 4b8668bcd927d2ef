//! The garbage collector and pod GC against an in-process API server: background deletion of
//! dependents whose owners are gone (checked by UID), foreground deletion that waits for
//! blocking dependents, orphaning, and pod GC of terminated and orphaned pods.

use capstan_apiserver::testing::TestServer;
use capstan_controllers::{ControllerOptions, podgc::PodGcOptions};
use capstan_store::MemoryStore;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

struct Cluster {
    server: TestServer,
    client: Client,
    stop: CancellationToken,
    manager: JoinHandle<()>,
}

async fn start(ns: &str, options: ControllerOptions) -> Cluster {
    let server = TestServer::start(Arc::new(MemoryStore::new())).await;
    let client = server.client().await;
    let stop = CancellationToken::new();
    let manager = tokio::spawn(capstan_controllers::run_controllers_with(
        client.clone(),
        options,
        stop.clone(),
    ));
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": ns}})),
        )
        .await
        .unwrap();
    Cluster {
        server,
        client,
        stop,
        manager,
    }
}

impl Cluster {
    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.manager)
            .await
            .expect("controllers did not stop")
            .unwrap();
        self.server.shutdown().await;
    }
}

fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).unwrap()
}

async fn wait_for<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn configmap(
    api: &Api<ConfigMap>,
    name: &str,
    owners: serde_json::Value,
    finalizers: &[&str],
) -> ConfigMap {
    api.create(
        &PostParams::default(),
        &obj(json!({"metadata": {"name": name, "ownerReferences": owners, "finalizers": finalizers}})),
    )
    .await
    .unwrap()
}

fn owner_ref(cm: &ConfigMap, block: bool) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "name": cm.name_any(),
           "uid": cm.uid().unwrap(), "blockOwnerDeletion": block})
}

async fn gone(api: &Api<ConfigMap>, name: &str) -> bool {
    api.get_opt(name).await.unwrap().is_none()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_deletion_removes_dependents_of_absent_owners_by_uid() {
    let c = start("gc-bg", ControllerOptions::default()).await;
    let cms: Api<ConfigMap> = Api::namespaced(c.client.clone(), "gc-bg");
    let parent = configmap(&cms, "parent", json!([]), &[]).await;
    let other = configmap(&cms, "other", json!([]), &[]).await;
    configmap(&cms, "child", json!([owner_ref(&parent, false)]), &[]).await;
    configmap(
        &cms,
        "grandchild",
        json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "child",
        "uid": cms.get("child").await.unwrap().uid().unwrap()}]),
        &[],
    )
    .await;
    configmap(
        &cms,
        "shared",
        json!([owner_ref(&parent, false), owner_ref(&other, false)]),
        &[],
    )
    .await;
    // An owner reference to a name that exists with another UID: the owner is absent.
    configmap(
        &cms,
        "stale",
        json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "other", "uid": "not-the-uid"}]),
        &[],
    )
    .await;

    cms.delete("parent", &DeleteParams::background())
        .await
        .unwrap();
    // Recreated under the same name: the dependents still belong to the old UID.
    configmap(&cms, "parent", json!([]), &[]).await;

    wait_for("child and grandchild deleted", || async {
        gone(&cms, "child").await && gone(&cms, "grandchild").await
    })
    .await;
    wait_for("stale deleted", || gone(&cms, "stale")).await;
    wait_for("shared keeps only its live owner", || async {
        let s = cms.get("shared").await.unwrap();
        s.owner_references().len() == 1 && s.owner_references()[0].name == "other"
    })
    .await;
    assert!(!gone(&cms, "other").await);
    assert!(!gone(&cms, "parent").await);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreground_deletion_waits_for_blocking_dependents() {
    let c = start("gc-fg", ControllerOptions::default()).await;
    let cms: Api<ConfigMap> = Api::namespaced(c.client.clone(), "gc-fg");
    let owner = configmap(&cms, "owner", json!([]), &[]).await;
    // Both are held by a finalizer of their own, so their deletion can be watched.
    configmap(
        &cms,
        "blocking",
        json!([owner_ref(&owner, true)]),
        &["test.capstan.io/hold"],
    )
    .await;
    configmap(
        &cms,
        "loose",
        json!([owner_ref(&owner, false)]),
        &["test.capstan.io/hold"],
    )
    .await;
    let plain = configmap(&cms, "plain", json!([owner_ref(&owner, true)]), &[]).await;
    configmap(&cms, "plain-child", json!([owner_ref(&plain, true)]), &[]).await;

    cms.delete("owner", &DeleteParams::foreground())
        .await
        .unwrap();
    let terminating = |name: &'static str| {
        let cms = cms.clone();
        async move {
            cms.get_opt(name)
                .await
                .unwrap()
                .is_some_and(|c| c.metadata.deletion_timestamp.is_some())
        }
    };
    wait_for("blocking dependent deleted", || terminating("blocking")).await;
    wait_for("loose dependent deleted", || terminating("loose")).await;
    wait_for("plain dependents gone", || async {
        gone(&cms, "plain").await && gone(&cms, "plain-child").await
    })
    .await;
    // The owner waits for the blocking dependent.
    let o = cms.get("owner").await.unwrap();
    assert!(o.metadata.deletion_timestamp.is_some());
    assert!(
        o.finalizers().iter().any(|f| f == "foregroundDeletion"),
        "{o:?}"
    );
    // Releasing the non-blocking one changes nothing.
    let release = Patch::Merge(json!({"metadata": {"finalizers": null}}));
    cms.patch("loose", &PatchParams::default(), &release)
        .await
        .unwrap();
    wait_for("loose gone", || gone(&cms, "loose")).await;
    assert!(!gone(&cms, "owner").await);
    cms.patch("blocking", &PatchParams::default(), &release)
        .await
        .unwrap();
    wait_for("owner gone after its blocking dependent", || {
        gone(&cms, "owner")
    })
    .await;
    c.stop().await;
}

fn deployment(name: &str, replicas: i32) -> Deployment {
    obj(
        json!({"metadata": {"name": name}, "spec": {"replicas": replicas,
        "selector": {"matchLabels": {"app": name}},
        "template": {"metadata": {"labels": {"app": name}},
                     "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}}),
    )
}

async fn count<K>(api: &Api<K>, app: &str) -> usize
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .unwrap()
        .items
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_deleted_in_foreground_go_last_and_orphaned_ones_leave_their_replicasets() {
    let ns = "gc-deploy";
    let c = start(ns, ControllerOptions::default()).await;
    let deploys: Api<Deployment> = Api::namespaced(c.client.clone(), ns);
    let rss: Api<ReplicaSet> = Api::namespaced(c.client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), ns);
    let pp = PostParams::default();
    deploys.create(&pp, &deployment("fg", 2)).await.unwrap();
    deploys.create(&pp, &deployment("orphan", 2)).await.unwrap();
    for app in ["fg", "orphan"] {
        wait_for("pods created", || async { count(&pods, app).await == 2 }).await;
    }

    deploys
        .delete("fg", &DeleteParams::foreground())
        .await
        .unwrap();
    wait_for("foreground deployment gone", || async {
        deploys.get_opt("fg").await.unwrap().is_none()
    })
    .await;
    // Gone last: nothing it owned (directly or not) is left.
    assert_eq!(count(&rss, "fg").await, 0);
    assert_eq!(count(&pods, "fg").await, 0);

    deploys
        .delete("orphan", &DeleteParams::orphan())
        .await
        .unwrap();
    wait_for("orphaning deployment gone", || async {
        deploys.get_opt("orphan").await.unwrap().is_none()
    })
    .await;
    let left = rss
        .list(&ListParams::default().labels("app=orphan"))
        .await
        .unwrap()
        .items;
    assert_eq!(left.len(), 1);
    assert!(
        left[0].owner_references().is_empty(),
        "{:?}",
        left[0].metadata
    );
    // The orphaned ReplicaSet keeps (and still owns) its pods.
    assert_eq!(count(&pods, "orphan").await, 2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(count(&pods, "orphan").await, 2);
    assert_eq!(count(&rss, "orphan").await, 1);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_gc_deletes_terminated_pods_over_the_threshold_and_pods_of_missing_nodes() {
    let ns = "podgc";
    let options = ControllerOptions {
        pod_gc: PodGcOptions {
            terminated_pod_gc_threshold: 1,
            check_period: Duration::from_millis(200),
            orphan_quarantine: Duration::from_millis(500),
        },
        ..Default::default()
    };
    let c = start(ns, options).await;
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), ns);
    let pod = |name: &str, node: Option<&str>| -> Pod {
        obj(
            json!({"metadata": {"name": name, "labels": {"app": "podgc"}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]}}),
        )
    };
    for name in ["done-1", "done-2", "done-3"] {
        pods.create(&PostParams::default(), &pod(name, None))
            .await
            .unwrap();
        pods.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Succeeded"}})),
        )
        .await
        .unwrap();
        // Distinct creation seconds so "oldest" is well defined.
        if name != "done-3" {
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
    }
    pods.create(&PostParams::default(), &pod("ghost", Some("no-such-node")))
        .await
        .unwrap();
    let started = Instant::now();
    wait_for("the two oldest terminated pods deleted", || async {
        pods.get_opt("done-1").await.unwrap().is_none()
            && pods.get_opt("done-2").await.unwrap().is_none()
    })
    .await;
    assert!(pods.get_opt("done-3").await.unwrap().is_some());
    wait_for("the pod on a missing node deleted", || async {
        pods.get_opt("ghost").await.unwrap().is_none()
    })
    .await;
    assert!(started.elapsed() >= Duration::from_millis(500));
    c.stop().await;
}
