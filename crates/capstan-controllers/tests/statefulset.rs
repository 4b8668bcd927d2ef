//! The StatefulSet controller against a real in-process API server (no kubelet: tests mark pods
//! Running and Ready through pods/status): ordered creation and reverse scale down, Parallel
//! management, stable names across deletion and failure, rolling updates with a partition,
//! OnDelete, ControllerRevisions, and PersistentVolumeClaims from volumeClaimTemplates.

mod support;

use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use std::time::Duration;
use support::{live_pods, mark_ready, start, wait_for};

fn sts(name: &str, replicas: i32, extra: serde_json::Value) -> StatefulSet {
    let mut v = serde_json::json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "serviceName": name,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": "busybox:1"}]}
            }
        }
    });
    if let (Some(spec), Some(extra)) = (v["spec"].as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    serde_json::from_value(v).unwrap()
}

async fn names(pods: &Api<Pod>, app: &str) -> Vec<String> {
    let mut n: Vec<String> = live_pods(pods, app)
        .await
        .iter()
        .map(|p| p.name_any())
        .collect();
    n.sort();
    n
}

fn revision(p: &Pod) -> String {
    p.labels()["controller-revision-hash"].clone()
}

async fn patch_spec(sets: &Api<StatefulSet>, name: &str, spec: serde_json::Value) {
    sets.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({ "spec": spec })),
    )
    .await
    .unwrap();
}

async fn status_is(
    sets: &Api<StatefulSet>,
    name: &str,
    f: impl Fn(&k8s_openapi::api::apps::v1::StatefulSetStatus) -> bool,
) -> bool {
    let s = sets.get(name).await.unwrap();
    s.status
        .as_ref()
        .is_some_and(|st| st.observed_generation == s.metadata.generation && f(st))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_ready_creates_in_order_with_identity_and_claims_and_scales_down_in_reverse() {
    let ns = "sts-ordered";
    let c = start(ns).await;
    let sets = Api::<StatefulSet>::namespaced(c.client.clone(), ns);
    let pods = Api::<Pod>::namespaced(c.client.clone(), ns);
    let pvcs = Api::<PersistentVolumeClaim>::namespaced(c.client.clone(), ns);
    let claims = serde_json::json!({"volumeClaimTemplates": [{"metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]});
    sets.create(&PostParams::default(), &sts("web", 3, claims))
        .await
        .unwrap();

    for i in 0..3 {
        let name = format!("web-{i}");
        wait_for(&name, || async {
            names(&pods, "web").await.contains(&name)
        })
        .await;
        // Nothing further until this one is Running and Ready.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(names(&pods, "web").await.len(), i + 1, "only up to {name}");
        let p = pods.get(&name).await.unwrap();
        assert_eq!(p.labels()["statefulset.kubernetes.io/pod-name"], name);
        assert_eq!(p.labels()["apps.kubernetes.io/pod-index"], i.to_string());
        assert!(revision(&p).starts_with("web-"));
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(spec.hostname.as_deref(), Some(name.as_str()));
        assert_eq!(spec.subdomain.as_deref(), Some("web"));
        let claim = format!("data-{name}");
        let vol = spec
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == "data")
            .unwrap();
        assert_eq!(
            vol.persistent_volume_claim.as_ref().unwrap().claim_name,
            claim
        );
        let pvc = pvcs.get(&claim).await.unwrap();
        assert_eq!(pvc.labels()["app"], "web");
        assert!(pvc.owner_references().is_empty(), "Retain by default");
        let owner = &p.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("StatefulSet", Some(true))
        );
        mark_ready(&pods, &name).await;
    }
    wait_for("status ready", || {
        status_is(&sets, "web", |s| {
            s.replicas == 3
                && s.ready_replicas == Some(3)
                && s.available_replicas == Some(3)
                && s.current_replicas == Some(3)
                && s.updated_replicas == Some(3)
                && s.current_revision.is_some()
                && s.current_revision == s.update_revision
        })
    })
    .await;
    let st = sets.get("web").await.unwrap().status.unwrap();
    let revs = Api::<ControllerRevision>::namespaced(c.client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    assert_eq!(revs.len(), 1);
    assert_eq!(Some(revs[0].name_any()), st.update_revision);
    assert_eq!(revs[0].revision, 1);

    // Scale down goes from the highest ordinal; claims are retained.
    patch_spec(&sets, "web", serde_json::json!({"replicas": 1})).await;
    wait_for("scaled to web-0", || async {
        names(&pods, "web").await == ["web-0"]
    })
    .await;
    for i in 0..3 {
        pvcs.get(&format!("data-web-{i}")).await.unwrap();
    }
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_ready_scale_down_waits_for_unhealthy_pods() {
    let ns = "sts-scaledown";
    let c = start(ns).await;
    let sets = Api::<StatefulSet>::namespaced(c.client.clone(), ns);
    let pods = Api::<Pod>::namespaced(c.client.clone(), ns);
    sets.create(&PostParams::default(), &sts("db", 3, serde_json::json!({})))
        .await
        .unwrap();
    for i in 0..3 {
        let name = format!("db-{i}");
        wait_for(&name, || async { names(&pods, "db").await.contains(&name) }).await;
        mark_ready(&pods, &name).await;
    }
    // db-0 turns not ready: scale down must not remove anything until it recovers.
    pods.patch_status(
        "db-0",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"status": {"conditions": [
            {"type": "Ready", "status": "False"}]}})),
    )
    .await
    .unwrap();
    patch_spec(&sets, "db", serde_json::json!({"replicas": 1})).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(names(&pods, "db").await.len(), 3);
    mark_ready(&pods, "db-0").await;
    wait_for("scaled to db-0", || async {
        names(&pods, "db").await == ["db-0"]
    })
    .await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_creates_all_and_deleted_or_failed_pods_come_back_with_their_names() {
    let ns = "sts-parallel";
    let c = start(ns).await;
    let sets = Api::<StatefulSet>::namespaced(c.client.clone(), ns);
    let pods = Api::<Pod>::namespaced(c.client.clone(), ns);
    sets.create(
        &PostParams::default(),
        &sts(
            "par",
            3,
            serde_json::json!({"podManagementPolicy": "Parallel"}),
        ),
    )
    .await
    .unwrap();
    // No pod is ready, yet all three exist.
    wait_for("3 pods", || async {
        names(&pods, "par").await == ["par-0", "par-1", "par-2"]
    })
    .await;

    let old = pods.get("par-1").await.unwrap().uid();
    pods.delete("par-1", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("par-1 recreated", || async {
        pods.get_opt("par-1")
            .await
            .unwrap()
            .is_some_and(|p| p.uid() != old && p.metadata.deletion_timestamp.is_none())
    })
    .await;

    let old = pods.get("par-2").await.unwrap().uid();
    pods.patch_status(
        "par-2",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"status": {"phase": "Failed"}})),
    )
    .await
    .unwrap();
    wait_for("failed par-2 recreated", || async {
        pods.get_opt("par-2")
            .await
            .unwrap()
            .is_some_and(|p| p.uid() != old)
    })
    .await;
    assert_eq!(names(&pods, "par").await.len(), 3);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_update_goes_highest_first_and_stops_at_the_partition() {
    let ns = "sts-rolling";
    let c = start(ns).await;
    let sets = Api::<StatefulSet>::namespaced(c.client.clone(), ns);
    let pods = Api::<Pod>::namespaced(c.client.clone(), ns);
    sets.create(
        &PostParams::default(),
        &sts("roll", 3, serde_json::json!({})),
    )
    .await
    .unwrap();
    for i in 0..3 {
        let name = format!("roll-{i}");
        wait_for(&name, || async {
            names(&pods, "roll").await.contains(&name)
        })
        .await;
        mark_ready(&pods, &name).await;
    }
    wait_for("ready", || {
        status_is(&sets, "roll", |s| s.ready_replicas == Some(3))
    })
    .await;
    let first = revision(&pods.get("roll-0").await.unwrap());

    patch_spec(
        &sets,
        "roll",
        serde_json::json!({
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 1}},
            "template": {"spec": {"containers": [{"name": "c", "image": "busybox:2"}]}}
        }),
    )
    .await;
    let new_rev = |name: &'static str| {
        let pods = pods.clone();
        let first = first.clone();
        async move {
            pods.get_opt(name)
                .await
                .unwrap()
                .is_some_and(|p| revision(&p) != first && p.metadata.deletion_timestamp.is_none())
        }
    };
    wait_for("roll-2 updated", || new_rev("roll-2")).await;
    // roll-1 waits until roll-2 is ready.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(revision(&pods.get("roll-1").await.unwrap()), first);
    let p2 = pods.get("roll-2").await.unwrap();
    assert_eq!(
        p2.spec.as_ref().unwrap().containers[0].image.as_deref(),
        Some("busybox:2")
    );
    mark_ready(&pods, "roll-2").await;
    wait_for("roll-1 updated", || new_rev("roll-1")).await;
    mark_ready(&pods, "roll-1").await;
    wait_for("partitioned status", || {
        status_is(&sets, "roll", |s| {
            s.updated_replicas == Some(2)
                && s.current_replicas == Some(1)
                && s.current_revision.as_deref() == Some(first.as_str())
                && s.update_revision.as_deref() != Some(first.as_str())
        })
    })
    .await;
    // Below the partition nothing changes, even when the pod is recreated.
    pods.delete("roll-0", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("roll-0 back", || async {
        pods.get_opt("roll-0").await.unwrap().is_some()
    })
    .await;
    assert_eq!(revision(&pods.get("roll-0").await.unwrap()), first);
    mark_ready(&pods, "roll-0").await;

    patch_spec(
        &sets,
        "roll",
        serde_json::json!({"updateStrategy": {"rollingUpdate": {"partition": 0}}}),
    )
    .await;
    wait_for("roll-0 updated", || new_rev("roll-0")).await;
    mark_ready(&pods, "roll-0").await;
    wait_for("rollout complete", || {
        status_is(&sets, "roll", |s| {
            s.updated_replicas == Some(3)
                && s.current_replicas == Some(3)
                && s.ready_replicas == Some(3)
                && s.current_revision == s.update_revision
        })
    })
    .await;
    let revs = Api::<ControllerRevision>::namespaced(c.client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    let mut numbers: Vec<i64> = revs.iter().map(|r| r.revision).collect();
    numbers.sort();
    assert_eq!(numbers, [1, 2]);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_delete_updates_only_deleted_pods_and_claims_follow_the_retention_policy() {
    let ns = "sts-ondelete";
    let c = start(ns).await;
    let sets = Api::<StatefulSet>::namespaced(c.client.clone(), ns);
    let pods = Api::<Pod>::namespaced(c.client.clone(), ns);
    let pvcs = Api::<PersistentVolumeClaim>::namespaced(c.client.clone(), ns);
    let extra = serde_json::json!({
        "podManagementPolicy": "Parallel",
        "updateStrategy": {"type": "OnDelete"},
        "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete", "whenScaled": "Delete"},
        "volumeClaimTemplates": [{"metadata": {"name": "v"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]
    });
    sets.create(&PostParams::default(), &sts("od", 2, extra))
        .await
        .unwrap();
    wait_for("2 pods", || async { names(&pods, "od").await.len() == 2 }).await;
    for n in ["od-0", "od-1"] {
        mark_ready(&pods, n).await;
    }
    let set_uid = sets.get("od").await.unwrap().uid().unwrap();
    let claim = pvcs.get("v-od-1").await.unwrap();
    assert!(
        claim
            .owner_references()
            .iter()
            .any(|o| o.uid == set_uid && o.kind == "StatefulSet" && o.controller == Some(false)),
        "whenDeleted: Delete makes the set own its claims"
    );
    let first = revision(&pods.get("od-0").await.unwrap());
    patch_spec(
        &sets,
        "od",
        serde_json::json!({"template": {"metadata": {"labels": {"app": "od", "v": "2"}}}}),
    )
    .await;
    wait_for("update revision", || {
        status_is(&sets, "od", |s| {
            s.update_revision.as_deref() != Some(first.as_str())
        })
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for n in ["od-0", "od-1"] {
        assert_eq!(
            revision(&pods.get(n).await.unwrap()),
            first,
            "OnDelete leaves {n}"
        );
    }
    pods.delete("od-0", &DeleteParams::default()).await.unwrap();
    wait_for("od-0 at the new revision", || async {
        pods.get_opt("od-0")
            .await
            .unwrap()
            .is_some_and(|p| revision(&p) != first && p.labels().get("v").is_some())
    })
    .await;

    // Scaling down hands the condemned pod's claim to the pod (the garbage collector then
    // deletes it with the pod).
    let pod1 = pods.get("od-1").await.unwrap().uid().unwrap();
    patch_spec(&sets, "od", serde_json::json!({"replicas": 1})).await;
    wait_for("od-1 gone", || async {
        names(&pods, "od").await == ["od-0"]
    })
    .await;
    wait_for("claim of od-1 owned by the pod or collected", || async {
        match pvcs.get_opt("v-od-1").await.unwrap() {
            None => true,
            Some(c) => c
                .owner_references()
                .iter()
                .any(|o| o.uid == pod1 && o.kind == "Pod"),
        }
    })
    .await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_set_removes_pods_and_only_claims_it_owns() {
    let ns = "sts-gc";
    let c = start(ns).await;
    let sets = Api::<StatefulSet>::namespaced(c.client.clone(), ns);
    let pods = Api::<Pod>::namespaced(c.client.clone(), ns);
    let pvcs = Api::<PersistentVolumeClaim>::namespaced(c.client.clone(), ns);
    for (name, policy) in [("gone", "Delete"), ("kept", "Retain")] {
        let extra = serde_json::json!({
            "podManagementPolicy": "Parallel",
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": policy},
            "volumeClaimTemplates": [{"metadata": {"name": "v"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]
        });
        sets.create(&PostParams::default(), &sts(name, 2, extra))
            .await
            .unwrap();
        wait_for("2 pods", || async { names(&pods, name).await.len() == 2 }).await;
        sets.delete(name, &DeleteParams::default()).await.unwrap();
        wait_for("pods collected", || async {
            names(&pods, name).await.is_empty()
        })
        .await;
    }
    wait_for("owned claims collected", || async {
        pvcs.get_opt("v-gone-0").await.unwrap().is_none()
            && pvcs.get_opt("v-gone-1").await.unwrap().is_none()
    })
    .await;
    for n in ["v-kept-0", "v-kept-1"] {
        pvcs.get(n).await.unwrap();
    }
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matching_orphans_are_adopted_instead_of_duplicated() {
    let ns = "sts-adopt";
    let c = start(ns).await;
    let sets = Api::<StatefulSet>::namespaced(c.client.clone(), ns);
    let pods = Api::<Pod>::namespaced(c.client.clone(), ns);
    let orphan: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "ad-0", "labels": {"app": "ad"}},
        "spec": {"containers": [{"name": "c", "image": "busybox:1"}]}
    }))
    .unwrap();
    let orphan_uid = pods
        .create(&PostParams::default(), &orphan)
        .await
        .unwrap()
        .uid();
    sets.create(
        &PostParams::default(),
        &sts(
            "ad",
            2,
            serde_json::json!({"podManagementPolicy": "Parallel"}),
        ),
    )
    .await
    .unwrap();
    let set_uid = sets.get("ad").await.unwrap().uid().unwrap();
    wait_for("ad-0 adopted and ad-1 created", || async {
        let p = pods.get("ad-0").await.unwrap();
        p.owner_references().iter().any(|o| o.uid == set_uid)
            && names(&pods, "ad").await == ["ad-0", "ad-1"]
    })
    .await;
    assert_eq!(pods.get("ad-0").await.unwrap().uid(), orphan_uid);
    c.stop().await;
}
