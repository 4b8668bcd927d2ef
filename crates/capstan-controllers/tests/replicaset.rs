//! The ReplicaSet controller against a real in-process API server (no kubelet: tests mark pods
//! Ready through pods/status): it creates N pods, scales, replaces deleted pods, adopts orphans,
//! releases pods that stop matching, and never creates more than N.

mod support;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use std::time::Duration;
use support::{count_is, live_pods, mark_ready, start, wait_for};

fn rs(name: &str, app: &str, replicas: i32) -> ReplicaSet {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": app}},
            "template": {
                "metadata": {"labels": {"app": app}},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]}
            }
        }
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicaset_creates_scales_and_replaces_pods_exactly() {
    let ns = "rs-basic";
    let c = start(ns).await;
    let rss = Api::<ReplicaSet>::namespaced(c.client.clone(), ns);
    let pods = Api::<Pod>::namespaced(c.client.clone(), ns);
    rss.create(&PostParams::default(), &rs("web", "web", 3))
        .await
        .unwrap();
    wait_for("3 pods", || count_is(&pods, "web", 3)).await;
    let created = live_pods(&pods, "web").await;
    for p in &created {
        let name = p.name_any();
        assert!(
            name.starts_with("web-") && name.len() == "web-".len() + 5,
            "{name}"
        );
        let owner = &p.owner_references()[0];
        assert_eq!(owner.kind, "ReplicaSet");
        assert_eq!(owner.name, "web");
        assert_eq!(owner.controller, Some(true));
        assert_eq!(owner.block_owner_deletion, Some(true));
    }

    // Several resyncs (each status write and annotation change requeues) never add a pod.
    for i in 0..5 {
        rss.patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(
                serde_json::json!({"metadata": {"annotations": {"poke": i.to_string()}}}),
            ),
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(live_pods(&pods, "web").await.len(), 3);
    }

    // Readiness shows up in status.
    for p in &created {
        mark_ready(&pods, &p.name_any()).await;
    }
    wait_for("readyReplicas 3", || async {
        let s = rss.get("web").await.unwrap().status.unwrap_or_default();
        s.replicas == 3
            && s.ready_replicas == Some(3)
            && s.available_replicas == Some(3)
            && s.fully_labeled_replicas == Some(3)
            && s.observed_generation.is_some()
    })
    .await;

    // A deleted pod is replaced.
    let victim = created[0].name_any();
    pods.delete(&victim, &DeleteParams::default())
        .await
        .unwrap();
    wait_for("replacement", || async {
        let live = live_pods(&pods, "web").await;
        live.len() == 3 && live.iter().all(|p| p.name_any() != victim)
    })
    .await;

    // Scale up, then down: the not-ready (new) pods go first, the ready ones stay.
    rss.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"replicas": 6}})),
    )
    .await
    .unwrap();
    wait_for("6 pods", || count_is(&pods, "web", 6)).await;
    let ready: Vec<String> = live_pods(&pods, "web")
        .await
        .into_iter()
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .map(|p| p.name_any())
        .collect();
    assert_eq!(ready.len(), 2);
    rss.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"replicas": 2}})),
    )
    .await
    .unwrap();
    wait_for("2 pods", || count_is(&pods, "web", 2)).await;
    let mut left: Vec<String> = live_pods(&pods, "web")
        .await
        .iter()
        .map(|p| p.name_any())
        .collect();
    left.sort();
    let mut ready = ready;
    ready.sort();
    assert_eq!(left, ready, "scale down must keep the ready pods");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(live_pods(&pods, "web").await.len(), 2);

    rss.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"replicas": 0}})),
    )
    .await
    .unwrap();
    wait_for("0 pods", || count_is(&pods, "web", 0)).await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicaset_adopts_orphans_and_releases_pods_that_stop_matching() {
    let ns = "rs-adopt";
    let c = start(ns).await;
    let rss = Api::<ReplicaSet>::namespaced(c.client.clone(), ns);
    let pods = Api::<Pod>::namespaced(c.client.clone(), ns);
    let orphan: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "orphan", "labels": {"app": "api"}},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &orphan).await.unwrap();
    rss.create(&PostParams::default(), &rs("api", "api", 2))
        .await
        .unwrap();
    wait_for("2 pods", || count_is(&pods, "api", 2)).await;
    let rs_uid = rss.get("api").await.unwrap().uid().unwrap();
    wait_for("orphan adopted", || async {
        let p = pods.get("orphan").await.unwrap();
        p.owner_references()
            .iter()
            .any(|o| o.uid == rs_uid && o.controller == Some(true))
    })
    .await;
    // Exactly one pod was created besides the orphan.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(live_pods(&pods, "api").await.len(), 2);

    // Relabel the orphan: it is released and replaced.
    pods.patch(
        "orphan",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"metadata": {"labels": {"app": "elsewhere"}}})),
    )
    .await
    .unwrap();
    wait_for("orphan released", || async {
        pods.get("orphan")
            .await
            .unwrap()
            .owner_references()
            .is_empty()
    })
    .await;
    wait_for("replacement", || count_is(&pods, "api", 2)).await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicaset_reports_available_only_after_min_ready_seconds() {
    let ns = "rs-minready";
    let c = start(ns).await;
    let rss = Api::<ReplicaSet>::namespaced(c.client.clone(), ns);
    let pods = Api::<Pod>::namespaced(c.client.clone(), ns);
    let mut r = rs("slow", "slow", 1);
    r.spec.as_mut().unwrap().min_ready_seconds = Some(2);
    rss.create(&PostParams::default(), &r).await.unwrap();
    wait_for("1 pod", || count_is(&pods, "slow", 1)).await;
    let p = live_pods(&pods, "slow").await.remove(0);
    mark_ready(&pods, &p.name_any()).await;
    wait_for("ready", || async {
        rss.get("slow")
            .await
            .unwrap()
            .status
            .unwrap_or_default()
            .ready_replicas
            == Some(1)
    })
    .await;
    let s = rss.get("slow").await.unwrap().status.unwrap_or_default();
    assert_eq!(
        s.available_replicas,
        Some(0),
        "available before minReadySeconds"
    );
    wait_for("available", || async {
        rss.get("slow")
            .await
            .unwrap()
            .status
            .unwrap_or_default()
            .available_replicas
            == Some(1)
    })
    .await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_replicaset_gets_exactly_its_replicas_and_recreation_starts_clean() {
    let ns = "rs-large";
    let c = start(ns).await;
    let rss = Api::<ReplicaSet>::namespaced(c.client.clone(), ns);
    let pods = Api::<Pod>::namespaced(c.client.clone(), ns);
    rss.create(&PostParams::default(), &rs("big", "big", 25))
        .await
        .unwrap();
    wait_for("25 pods", || count_is(&pods, "big", 25)).await;
    wait_for("status 25", || async {
        rss.get("big")
            .await
            .unwrap()
            .status
            .unwrap_or_default()
            .replicas
            == 25
    })
    .await;
    for i in 0..3 {
        rss.patch(
            "big",
            &PatchParams::default(),
            &Patch::Merge(
                serde_json::json!({"metadata": {"annotations": {"poke": i.to_string()}}}),
            ),
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Every pod ever created still exists: none was created twice.
    let all = pods.list(&Default::default()).await.unwrap().items;
    assert_eq!(all.len(), 25);

    // Delete the ReplicaSet orphaning its pods (the garbage collector removes their owner
    // references; clearing them again below is a no-op), then make a new one of the same name
    // right away: it adopts the 25 pods and creates exactly one.
    rss.delete("big", &DeleteParams::orphan()).await.unwrap();
    wait_for("ReplicaSet gone", || async {
        rss.get_opt("big").await.unwrap().is_none()
    })
    .await;
    for p in live_pods(&pods, "big").await {
        pods.patch(
            &p.name_any(),
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"ownerReferences": null}})),
        )
        .await
        .unwrap();
    }
    rss.create(&PostParams::default(), &rs("big", "big", 26))
        .await
        .unwrap();
    wait_for("26 pods", || count_is(&pods, "big", 26)).await;
    let uid = rss.get("big").await.unwrap().uid().unwrap();
    wait_for("all adopted", || async {
        live_pods(&pods, "big")
            .await
            .iter()
            .all(|p| p.owner_references().iter().any(|o| o.uid == uid))
    })
    .await;
    assert_eq!(
        pods.list(&Default::default()).await.unwrap().items.len(),
        26
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_controllers_wait_for_their_caches_and_create_nothing() {
    let ns = "rs-restart";
    let mut c = start(ns).await;
    let rss = Api::<ReplicaSet>::namespaced(c.client.clone(), ns);
    let pods = Api::<Pod>::namespaced(c.client.clone(), ns);
    rss.create(&PostParams::default(), &rs("keep", "keep", 5))
        .await
        .unwrap();
    wait_for("5 pods", || count_is(&pods, "keep", 5)).await;
    for _ in 0..3 {
        c.restart_controllers().await;
        // A pod deleted while restarting is replaced, and nothing else is created.
        let victim = live_pods(&pods, "keep").await.remove(0).name_any();
        pods.delete(&victim, &DeleteParams::default())
            .await
            .unwrap();
        wait_for("replacement", || async {
            let live = live_pods(&pods, "keep").await;
            live.len() == 5 && live.iter().all(|p| p.name_any() != victim)
        })
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(pods.list(&Default::default()).await.unwrap().items.len(), 5);
    }
    c.stop().await;
}
