//! The DaemonSet controller against a real in-process API server with Node objects but no
//! kubelet or scheduler (tests mark pods Ready through pods/status): one pod per eligible node,
//! reacting to nodes added, relabelled and removed, RollingUpdate with maxUnavailable and with
//! maxSurge, and OnDelete.

mod support;

use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use std::collections::BTreeMap;
use std::time::Duration;
use support::{live_pods, mark_ready, pod_ready, start, wait_for};

fn ds(name: &str, extra: serde_json::Value) -> DaemonSet {
    let mut v = serde_json::json!({
        "metadata": {"name": name},
        "spec": {
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

async fn add_node(
    nodes: &Api<Node>,
    name: &str,
    labels: serde_json::Value,
    taints: serde_json::Value,
) {
    let node: Node = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"taints": taints}
    }))
    .unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();
}

/// The node a DaemonSet pod is pinned to (its required matchFields term).
fn pinned_node(p: &Pod) -> String {
    let v = serde_json::to_value(p).unwrap();
    let term = &v["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"][0]["matchFields"][0];
    assert_eq!(term["key"], "metadata.name");
    assert_eq!(term["operator"], "In");
    term["values"][0].as_str().unwrap().to_string()
}

/// Live pods per pinned node.
async fn placement(pods: &Api<Pod>, app: &str) -> BTreeMap<String, Vec<Pod>> {
    let mut m: BTreeMap<String, Vec<Pod>> = BTreeMap::new();
    for p in live_pods(pods, app).await {
        m.entry(pinned_node(&p)).or_default().push(p);
    }
    m
}

async fn nodes_with_pods(pods: &Api<Pod>, app: &str) -> Vec<String> {
    placement(pods, app).await.into_keys().collect()
}

async fn status_is(dss: &Api<DaemonSet>, name: &str, f: impl Fn(&DaemonSetStatus) -> bool) -> bool {
    let d = dss.get(name).await.unwrap();
    d.status
        .as_ref()
        .is_some_and(|s| s.observed_generation == d.metadata.generation && f(s))
}

fn hash(p: &Pod) -> String {
    p.labels()["controller-revision-hash"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_pod_per_eligible_node_following_node_changes() {
    let ns = "ds-nodes";
    let c = start(ns).await;
    let nodes = Api::<Node>::all(c.client.clone());
    let dss = Api::<DaemonSet>::namespaced(c.client.clone(), ns);
    let pods = Api::<Pod>::namespaced(c.client.clone(), ns);
    let yes = serde_json::json!({"ds-nodes": "yes"});
    for n in ["dsn-a", "dsn-b", "dsn-c"] {
        add_node(&nodes, n, yes.clone(), serde_json::json!([])).await;
    }
    add_node(
        &nodes,
        "dsn-tainted",
        yes.clone(),
        serde_json::json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]),
    )
    .await;
    add_node(
        &nodes,
        "dsn-other",
        serde_json::json!({}),
        serde_json::json!([]),
    )
    .await;
    // Node condition taints are tolerated by default.
    add_node(
        &nodes,
        "dsn-cordoned",
        yes.clone(),
        serde_json::json!([{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]),
    )
    .await;
    dss.create(
        &PostParams::default(),
        &ds(
            "agent",
            serde_json::json!({"template": {"metadata": {"labels": {"app": "agent"}},
            "spec": {"nodeSelector": {"ds-nodes": "yes"},
                     "containers": [{"name": "c", "image": "busybox:1"}]}}}),
        ),
    )
    .await
    .unwrap();
    let want = ["dsn-a", "dsn-b", "dsn-c", "dsn-cordoned"];
    wait_for("a pod on each eligible node", || async {
        nodes_with_pods(&pods, "agent").await == want
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let placed = placement(&pods, "agent").await;
    assert!(
        placed.values().all(|v| v.len() == 1),
        "exactly one per node"
    );
    let p = &placed["dsn-a"][0];
    assert!(p.metadata.generate_name.as_deref() == Some("agent-"));
    let tolerations: Vec<(String, String)> = p
        .spec
        .as_ref()
        .unwrap()
        .tolerations
        .iter()
        .flatten()
        .map(|t| {
            (
                t.key.clone().unwrap_or_default(),
                t.effect.clone().unwrap_or_default(),
            )
        })
        .collect();
    for (k, e) in [
        ("node.kubernetes.io/not-ready", "NoExecute"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
        ("node.kubernetes.io/disk-pressure", "NoSchedule"),
        ("node.kubernetes.io/memory-pressure", "NoSchedule"),
        ("node.kubernetes.io/pid-pressure", "NoSchedule"),
        ("node.kubernetes.io/unschedulable", "NoSchedule"),
    ] {
        assert!(
            tolerations.contains(&(k.to_string(), e.to_string())),
            "{k}:{e} in {tolerations:?}"
        );
    }
    assert!(
        !tolerations
            .iter()
            .any(|(k, _)| k == "node.kubernetes.io/network-unavailable")
    );
    let rev = Api::<ControllerRevision>::namespaced(c.client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    assert_eq!(rev.len(), 1);
    assert_eq!(rev[0].labels()["controller-revision-hash"], hash(p));
    assert_eq!(rev[0].name_any(), format!("agent-{}", hash(p)));

    for v in placed.values() {
        mark_ready(&pods, &v[0].name_any()).await;
    }
    wait_for("status", || {
        status_is(&dss, "agent", |s| {
            s.desired_number_scheduled == 4
                && s.current_number_scheduled == 4
                && s.number_ready == 4
                && s.number_available == Some(4)
                && s.updated_number_scheduled == Some(4)
                && s.number_misscheduled == 0
        })
    })
    .await;

    // A node added later gets a pod; one relabelled away or deleted loses it.
    add_node(&nodes, "dsn-d", yes.clone(), serde_json::json!([])).await;
    wait_for("pod on dsn-d", || async {
        nodes_with_pods(&pods, "agent")
            .await
            .contains(&"dsn-d".to_string())
    })
    .await;
    nodes
        .patch(
            "dsn-b",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"labels": {"ds-nodes": "no"}}})),
        )
        .await
        .unwrap();
    nodes
        .delete("dsn-c", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("pods follow the nodes", || async {
        nodes_with_pods(&pods, "agent").await == ["dsn-a", "dsn-cordoned", "dsn-d"]
    })
    .await;
    // A NoExecute taint evicts; a NoSchedule taint added later does not.
    nodes
        .patch(
            "dsn-a",
            &PatchParams::default(),
            &Patch::Merge(
                serde_json::json!({"spec": {"taints": [{"key": "k", "effect": "NoSchedule"}]}}),
            ),
        )
        .await
        .unwrap();
    nodes
        .patch(
            "dsn-d",
            &PatchParams::default(),
            &Patch::Merge(
                serde_json::json!({"spec": {"taints": [{"key": "k", "effect": "NoExecute"}]}}),
            ),
        )
        .await
        .unwrap();
    wait_for("evicted from dsn-d", || async {
        nodes_with_pods(&pods, "agent").await == ["dsn-a", "dsn-cordoned"]
    })
    .await;
    wait_for("misscheduled counted", || {
        status_is(&dss, "agent", |s| {
            s.desired_number_scheduled == 1 && s.number_misscheduled == 1
        })
    })
    .await;
    c.stop().await;
}

/// Three ready pods of `name` on three fresh nodes.
async fn three_ready(
    c: &support::Cluster,
    ns: &str,
    name: &str,
    extra: serde_json::Value,
) -> Api<Pod> {
    let nodes = Api::<Node>::all(c.client.clone());
    for i in 0..3 {
        add_node(
            &nodes,
            &format!("{name}-n{i}"),
            serde_json::json!({}),
            serde_json::json!([]),
        )
        .await;
    }
    let dss = Api::<DaemonSet>::namespaced(c.client.clone(), ns);
    // Only this test's nodes.
    let mut d = ds(name, extra);
    let aff = serde_json::json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "DoesNotExist"}],
            "matchFields": [{"key": "metadata.name", "operator": "In",
                "values": [format!("{name}-n0"), format!("{name}-n1"), format!("{name}-n2")]}]}]}}});
    d.spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .affinity = Some(serde_json::from_value(aff).unwrap());
    dss.create(&PostParams::default(), &d).await.unwrap();
    let pods = Api::<Pod>::namespaced(c.client.clone(), ns);
    wait_for("3 pods", || async {
        placement(&pods, name).await.len() == 3
    })
    .await;
    for p in live_pods(&pods, name).await {
        mark_ready(&pods, &p.name_any()).await;
    }
    wait_for("3 available", || {
        status_is(&dss, name, |s| s.number_available == Some(3))
    })
    .await;
    pods
}

async fn set_image(dss: &Api<DaemonSet>, name: &str, image: &str) {
    dss.patch(
        name,
        &PatchParams::default(),
        &Patch::<()>::Json(
            serde_json::from_value(serde_json::json!([
        {"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": image}]))
            .unwrap(),
        ),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_update_replaces_one_node_at_a_time() {
    let ns = "ds-rolling";
    let c = start(ns).await;
    let pods = three_ready(&c, ns, "roll", serde_json::json!({})).await;
    let dss = Api::<DaemonSet>::namespaced(c.client.clone(), ns);
    let old = hash(&live_pods(&pods, "roll").await[0]);
    set_image(&dss, "roll", "busybox:2").await;
    for updated in 1..=3 {
        wait_for("next new pod", || async {
            live_pods(&pods, "roll")
                .await
                .iter()
                .filter(|p| hash(p) != old)
                .count()
                == updated
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let live = live_pods(&pods, "roll").await;
        // maxUnavailable 1: the other nodes keep their ready pods.
        assert_eq!(live.len(), 3);
        assert_eq!(live.iter().filter(|p| hash(p) != old).count(), updated);
        let fresh: Vec<&Pod> = live.iter().filter(|p| !pod_ready(p)).collect();
        assert_eq!(fresh.len(), 1, "one node at a time");
        assert_eq!(
            fresh[0].spec.as_ref().unwrap().containers[0]
                .image
                .as_deref(),
            Some("busybox:2")
        );
        mark_ready(&pods, &fresh[0].name_any()).await;
    }
    wait_for("rollout complete", || {
        status_is(&dss, "roll", |s| {
            s.updated_number_scheduled == Some(3)
                && s.number_available == Some(3)
                && s.desired_number_scheduled == 3
        })
    })
    .await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_surge_starts_the_new_pod_before_removing_the_old() {
    let ns = "ds-surge";
    let c = start(ns).await;
    let extra = serde_json::json!({"updateStrategy": {"type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}});
    let pods = three_ready(&c, ns, "surge", extra).await;
    let dss = Api::<DaemonSet>::namespaced(c.client.clone(), ns);
    let old = hash(&live_pods(&pods, "surge").await[0]);
    set_image(&dss, "surge", "busybox:2").await;
    for done in 1..=3 {
        wait_for("a surge pod", || async {
            live_pods(&pods, "surge").await.len() == 4
        })
        .await;
        let live = live_pods(&pods, "surge").await;
        assert_eq!(
            live.iter().filter(|p| pod_ready(p)).count(),
            3,
            "no old pod gone yet"
        );
        let fresh = live
            .iter()
            .find(|p| hash(p) != old && !pod_ready(p))
            .unwrap();
        mark_ready(&pods, &fresh.name_any()).await;
        // The next node's surge pod may follow at once, so count old pods only.
        wait_for("old pod replaced", || async {
            let live = live_pods(&pods, "surge").await;
            live.iter().filter(|p| hash(p) == old).count() == 3 - done
        })
        .await;
        let live = live_pods(&pods, "surge").await;
        assert!(live.len() <= 4 && live.iter().filter(|p| pod_ready(p)).count() == 3);
    }
    wait_for("rollout complete", || {
        status_is(&dss, "surge", |s| {
            s.updated_number_scheduled == Some(3) && s.number_available == Some(3)
        })
    })
    .await;
    assert_eq!(live_pods(&pods, "surge").await.len(), 3);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_delete_replaces_only_deleted_pods() {
    let ns = "ds-ondelete";
    let c = start(ns).await;
    let pods = three_ready(
        &c,
        ns,
        "od",
        serde_json::json!({"updateStrategy": {"type": "OnDelete"}}),
    )
    .await;
    let dss = Api::<DaemonSet>::namespaced(c.client.clone(), ns);
    let old = hash(&live_pods(&pods, "od").await[0]);
    set_image(&dss, "od", "busybox:2").await;
    wait_for("observed", || {
        status_is(&dss, "od", |s| s.updated_number_scheduled == Some(0))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(live_pods(&pods, "od").await.iter().all(|p| hash(p) == old));
    let victim = live_pods(&pods, "od").await[0].clone();
    pods.delete(&victim.name_any(), &DeleteParams::default())
        .await
        .unwrap();
    wait_for("replacement at the new revision", || async {
        let live = live_pods(&pods, "od").await;
        live.len() == 3
            && live.iter().filter(|p| hash(p) != old).count() == 1
            && live
                .iter()
                .any(|p| hash(p) != old && pinned_node(p) == pinned_node(&victim))
    })
    .await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_matching_orphan_on_a_node_is_adopted_not_duplicated() {
    let ns = "ds-adopt";
    let c = start(ns).await;
    let nodes = Api::<Node>::all(c.client.clone());
    for n in ["ad-n0", "ad-n1"] {
        add_node(&nodes, n, serde_json::json!({}), serde_json::json!([])).await;
    }
    let pods = Api::<Pod>::namespaced(c.client.clone(), ns);
    let orphan: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "orphan", "labels": {"app": "ad"}},
        "spec": {"nodeName": "ad-n0", "containers": [{"name": "c", "image": "busybox:1"}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &orphan).await.unwrap();
    let dss = Api::<DaemonSet>::namespaced(c.client.clone(), ns);
    // OnDelete: a rolling update would replace the adopted pod (it has no revision hash).
    let on_delete = serde_json::json!({"updateStrategy": {"type": "OnDelete"}});
    dss.create(&PostParams::default(), &ds("ad", on_delete))
        .await
        .unwrap();
    let uid = dss.get("ad").await.unwrap().uid().unwrap();
    wait_for("orphan adopted and ad-n1 served", || async {
        let adopted = pods
            .get("orphan")
            .await
            .unwrap()
            .owner_references()
            .iter()
            .any(|o| o.uid == uid);
        adopted && live_pods(&pods, "ad").await.len() == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let live = live_pods(&pods, "ad").await;
    assert_eq!(live.len(), 2);
    assert!(live.iter().any(|p| p.name_any() == "orphan"));
    c.stop().await;
}
