//! The Deployment controller (with the ReplicaSet controller) against a real in-process API
//! server; no kubelet, so tests mark pods Ready through pods/status to let a rollout advance.

mod support;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use std::time::{Duration, Instant};
use support::{live_pods, mark_ready, pod_ready, start, wait_for};

const REVISION: &str = "deployment.kubernetes.io/revision";

fn deployment(name: &str, replicas: i32, strategy: serde_json::Value) -> Deployment {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "strategy": strategy,
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": "busybox:1"}]}
            }
        }
    }))
    .unwrap()
}

async fn set_image(api: &Api<Deployment>, name: &str, image: &str) {
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"template": {"spec": {
            "containers": [{"name": "c", "image": image}]
        }}}})),
    )
    .await
    .unwrap();
}

async fn replicasets(api: &Api<ReplicaSet>, app: &str) -> Vec<ReplicaSet> {
    api.list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .unwrap()
        .items
}

fn image_of(rs: &ReplicaSet) -> String {
    rs.spec
        .as_ref()
        .unwrap()
        .template
        .as_ref()
        .unwrap()
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
        .image
        .clone()
        .unwrap()
}

fn rs_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().unwrap().replicas.unwrap_or(0)
}

/// Marks every live, not yet ready pod of `app` ready; returns how many.
async fn ready_all(pods: &Api<Pod>, app: &str) -> usize {
    let mut n = 0;
    for p in live_pods(pods, app).await {
        if !pod_ready(&p) {
            mark_ready(pods, &p.name_any()).await;
            n += 1;
        }
    }
    n
}

fn progressing_reason(d: &Deployment) -> Option<String> {
    d.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Progressing")?
        .reason
        .clone()
}

/// The rollout is complete as `kubectl rollout status` judges it.
async fn rollout_complete(api: &Api<Deployment>, name: &str, replicas: i32) -> bool {
    let d = api.get(name).await.unwrap();
    let s = d.status.clone().unwrap_or_default();
    s.observed_generation >= d.metadata.generation
        && s.updated_replicas == Some(replicas)
        && s.replicas == Some(replicas)
        && s.available_replicas == Some(replicas)
        && progressing_reason(&d).as_deref() == Some("NewReplicaSetAvailable")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_update_respects_surge_and_unavailability_then_rolls_back() {
    let ns = "deploy-rolling";
    let c = start(ns).await;
    let deploys = Api::<Deployment>::namespaced(c.client.clone(), ns);
    let rss = Api::<ReplicaSet>::namespaced(c.client.clone(), ns);
    let pods = Api::<Pod>::namespaced(c.client.clone(), ns);
    let strategy = serde_json::json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}});
    deploys
        .create(&PostParams::default(), &deployment("web", 3, strategy))
        .await
        .unwrap();

    wait_for("first ReplicaSet with 3 pods", || async {
        live_pods(&pods, "web").await.len() == 3
    })
    .await;
    let first = replicasets(&rss, "web").await;
    assert_eq!(first.len(), 1);
    let first = first.into_iter().next().unwrap();
    let hash = first
        .labels()
        .get("pod-template-hash")
        .cloned()
        .expect("hash label");
    assert_eq!(first.name_any(), format!("web-{hash}"));
    assert_eq!(
        first
            .spec
            .as_ref()
            .unwrap()
            .selector
            .match_labels
            .as_ref()
            .unwrap()
            .get("pod-template-hash"),
        Some(&hash)
    );
    let a = first.annotations();
    assert_eq!(a.get(REVISION).map(String::as_str), Some("1"));
    assert_eq!(
        a.get("deployment.kubernetes.io/desired-replicas")
            .map(String::as_str),
        Some("3")
    );
    assert_eq!(
        a.get("deployment.kubernetes.io/max-replicas")
            .map(String::as_str),
        Some("4")
    );
    assert_eq!(first.owner_references()[0].kind, "Deployment");

    ready_all(&pods, "web").await;
    wait_for("rollout 1 complete", || {
        rollout_complete(&deploys, "web", 3)
    })
    .await;
    let d = deploys.get("web").await.unwrap();
    assert_eq!(d.annotations().get(REVISION).map(String::as_str), Some("1"));
    let available = d
        .status
        .as_ref()
        .unwrap()
        .conditions
        .as_ref()
        .unwrap()
        .iter()
        .find(|c| c.type_ == "Available")
        .cloned()
        .unwrap();
    assert_eq!(available.status, "True");

    // Roll out busybox:2, marking new pods ready one at a time; never more than 3 + 1 pods and
    // never fewer than 3 ready ones.
    set_image(&deploys, "web", "busybox:2").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut max_seen = 0;
    loop {
        assert!(Instant::now() < deadline, "rolling update did not finish");
        let live = live_pods(&pods, "web").await;
        let ready = live.iter().filter(|p| pod_ready(p)).count();
        max_seen = max_seen.max(live.len());
        assert!(live.len() <= 4, "maxSurge exceeded: {} pods", live.len());
        assert!(ready >= 3, "maxUnavailable exceeded: {ready} ready");
        if rollout_complete(&deploys, "web", 3).await
            && deploys
                .get("web")
                .await
                .unwrap()
                .annotations()
                .get(REVISION)
                .map(String::as_str)
                == Some("2")
        {
            break;
        }
        if let Some(p) = live.iter().find(|p| !pod_ready(p)) {
            mark_ready(&pods, &p.name_any()).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(max_seen, 4, "the rollout surged");
    let all = replicasets(&rss, "web").await;
    assert_eq!(all.len(), 2);
    for rs in &all {
        let (rev, want) = if image_of(rs) == "busybox:2" {
            ("2", 3)
        } else {
            ("1", 0)
        };
        assert_eq!(
            rs.annotations().get(REVISION).map(String::as_str),
            Some(rev),
            "{}",
            rs.name_any()
        );
        assert_eq!(rs_replicas(rs), want, "{}", rs.name_any());
    }
    wait_for("old pods gone", || async {
        live_pods(&pods, "web")
            .await
            .iter()
            .all(|p| p.spec.as_ref().unwrap().containers[0].image.as_deref() == Some("busybox:2"))
    })
    .await;

    // Back to busybox:1 (what `kubectl rollout undo` does): the first ReplicaSet is reused and
    // becomes revision 3, remembering revision 1.
    set_image(&deploys, "web", "busybox:1").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !rollout_complete(&deploys, "web", 3).await
        || deploys
            .get("web")
            .await
            .unwrap()
            .annotations()
            .get(REVISION)
            .map(String::as_str)
            != Some("3")
    {
        assert!(Instant::now() < deadline, "rollback did not finish");
        ready_all(&pods, "web").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first = rss.get(&first.name_any()).await.unwrap();
    assert_eq!(
        first.annotations().get(REVISION).map(String::as_str),
        Some("3")
    );
    assert_eq!(
        first
            .annotations()
            .get("deployment.kubernetes.io/revision-history")
            .map(String::as_str),
        Some("1")
    );
    assert_eq!(rs_replicas(&first), 3);
    assert_eq!(replicasets(&rss, "web").await.len(), 2);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revision_history_limit_deletes_old_replicasets() {
    let ns = "deploy-history";
    let c = start(ns).await;
    let deploys = Api::<Deployment>::namespaced(c.client.clone(), ns);
    let rss = Api::<ReplicaSet>::namespaced(c.client.clone(), ns);
    let pods = Api::<Pod>::namespaced(c.client.clone(), ns);
    let mut d = deployment(
        "hist",
        1,
        serde_json::json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}),
    );
    d.spec.as_mut().unwrap().revision_history_limit = Some(1);
    deploys.create(&PostParams::default(), &d).await.unwrap();
    for v in 2..=4 {
        wait_for("rollout", || async {
            ready_all(&pods, "hist").await;
            rollout_complete(&deploys, "hist", 1).await
        })
        .await;
        set_image(&deploys, "hist", &format!("busybox:{v}")).await;
    }
    wait_for(
        "revision 4 complete with one old ReplicaSet kept",
        || async {
            ready_all(&pods, "hist").await;
            let all = replicasets(&rss, "hist").await;
            rollout_complete(&deploys, "hist", 1).await && all.len() == 2
        },
    )
    .await;
    let mut revisions: Vec<String> = replicasets(&rss, "hist")
        .await
        .iter()
        .filter_map(|rs| rs.annotations().get(REVISION).cloned())
        .collect();
    revisions.sort();
    assert_eq!(revisions, ["3", "4"]);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreate_scales_old_to_zero_before_new_and_pause_holds_the_rollout() {
    let ns = "deploy-recreate";
    let c = start(ns).await;
    let deploys = Api::<Deployment>::namespaced(c.client.clone(), ns);
    let rss = Api::<ReplicaSet>::namespaced(c.client.clone(), ns);
    let pods = Api::<Pod>::namespaced(c.client.clone(), ns);
    deploys
        .create(
            &PostParams::default(),
            &deployment("db", 2, serde_json::json!({"type": "Recreate"})),
        )
        .await
        .unwrap();
    wait_for("first rollout", || async {
        ready_all(&pods, "db").await;
        rollout_complete(&deploys, "db", 2).await
    })
    .await;

    // Paused: a template change creates no ReplicaSet.
    deploys
        .patch(
            "db",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"paused": true}})),
        )
        .await
        .unwrap();
    set_image(&deploys, "db", "busybox:2").await;
    wait_for("paused condition", || async {
        progressing_reason(&deploys.get("db").await.unwrap()).as_deref() == Some("DeploymentPaused")
    })
    .await;
    assert_eq!(replicasets(&rss, "db").await.len(), 1);

    // Resume: old pods all go before any new pod exists.
    deploys
        .patch(
            "db",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"paused": false}})),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "recreate did not finish");
        let live = live_pods(&pods, "db").await;
        let new = live
            .iter()
            .filter(|p| {
                p.spec.as_ref().unwrap().containers[0].image.as_deref() == Some("busybox:2")
            })
            .count();
        assert!(
            new == 0 || new == live.len(),
            "old and new pods at once: {new} of {}",
            live.len()
        );
        if new == 2 && rollout_complete(&deploys, "db", 2).await {
            break;
        }
        ready_all(&pods, "db").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for rs in replicasets(&rss, "db").await {
        let want = if image_of(&rs) == "busybox:2" { 2 } else { 0 };
        assert_eq!(rs_replicas(&rs), want);
    }
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_in_mid_rollout_resizes_replicasets_proportionally() {
    let ns = "deploy-proportional";
    let c = start(ns).await;
    let deploys = Api::<Deployment>::namespaced(c.client.clone(), ns);
    let rss = Api::<ReplicaSet>::namespaced(c.client.clone(), ns);
    let pods = Api::<Pod>::namespaced(c.client.clone(), ns);
    let strategy = serde_json::json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}});
    deploys
        .create(&PostParams::default(), &deployment("prop", 4, strategy))
        .await
        .unwrap();
    wait_for("first rollout", || async {
        ready_all(&pods, "prop").await;
        rollout_complete(&deploys, "prop", 4).await
    })
    .await;
    // The new pods never become ready: the rollout stays at old 4 + new 1.
    set_image(&deploys, "prop", "busybox:2").await;
    let sizes = || async {
        let mut v: Vec<(String, i32)> = replicasets(&rss, "prop")
            .await
            .iter()
            .map(|rs| (image_of(rs), rs_replicas(rs)))
            .collect();
        v.sort();
        v
    };
    wait_for("surged by one", || async {
        sizes().await == [("busybox:1".to_string(), 4), ("busybox:2".to_string(), 1)]
    })
    .await;
    // 4 -> 8 with maxSurge 1: 9 allowed, 4 more shared as 4*9/5 and 1*9/5 (rounded).
    deploys
        .patch(
            "prop",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"replicas": 8}})),
        )
        .await
        .unwrap();
    wait_for("proportional sizes", || async {
        sizes().await == [("busybox:1".to_string(), 7), ("busybox:2".to_string(), 2)]
    })
    .await;
    // Then the rollout finishes at the new size.
    wait_for("rollout at 8", || async {
        ready_all(&pods, "prop").await;
        rollout_complete(&deploys, "prop", 8).await
    })
    .await;
    assert_eq!(
        sizes().await,
        [("busybox:1".to_string(), 0), ("busybox:2".to_string(), 8)]
    );
    c.stop().await;
}
