//! The ServiceAccount controller against a real in-process API server: every namespace gets a
//! `default` ServiceAccount, which comes back after it is deleted.

mod support;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams};
use support::{start, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_service_account_is_created_and_recreated() {
    let c = start("sa-first").await;
    let ns_name = "sa-second";
    Api::<Namespace>::all(c.client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": ns_name}})).unwrap(),
        )
        .await
        .unwrap();
    for ns in ["sa-first", ns_name, "default", "kube-system"] {
        let sas = Api::<ServiceAccount>::namespaced(c.client.clone(), ns);
        wait_for(&format!("default SA in {ns}"), || async {
            sas.get_opt("default").await.unwrap().is_some()
        })
        .await;
    }
    let sas = Api::<ServiceAccount>::namespaced(c.client.clone(), ns_name);
    let first = sas.get("default").await.unwrap().uid();
    sas.delete("default", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("default SA recreated", || async {
        sas.get_opt("default")
            .await
            .unwrap()
            .is_some_and(|sa| sa.uid() != first)
    })
    .await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_default_service_account_in_a_terminating_namespace() {
    let c = start("sa-term-first").await;
    let ns_name = "sa-term";
    let namespaces = Api::<Namespace>::all(c.client.clone());
    // A finalizer of our own keeps the namespace Terminating after its content is gone.
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({
                "metadata": {"name": ns_name, "finalizers": ["capstan.test/hold"]}
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let sas = Api::<ServiceAccount>::namespaced(c.client.clone(), ns_name);
    wait_for("default SA", || async {
        sas.get_opt("default").await.unwrap().is_some()
    })
    .await;
    namespaces
        .delete(ns_name, &DeleteParams::default())
        .await
        .unwrap();
    wait_for("content removed", || async {
        sas.get_opt("default").await.unwrap().is_none()
            && namespaces
                .get(ns_name)
                .await
                .unwrap()
                .spec
                .and_then(|s| s.finalizers)
                .is_none_or(|f| f.is_empty())
    })
    .await;
    // Poke the namespace so the controller looks at it again, then watch it stay empty.
    namespaces
        .patch(
            ns_name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                serde_json::json!({"metadata": {"annotations": {"poke": "1"}}}),
            ),
        )
        .await
        .unwrap();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while std::time::Instant::now() < until {
        assert!(
            sas.get_opt("default").await.unwrap().is_none(),
            "default SA re-created in a terminating namespace"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    namespaces
        .patch(
            ns_name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    wait_for("namespace gone", || async {
        namespaces.get_opt(ns_name).await.unwrap().is_none()
    })
    .await;
    c.stop().await;
}
