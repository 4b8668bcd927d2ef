//! The ServiceAccount controller (upstream's `pkg/controller/serviceaccount`): a `default`
//! ServiceAccount in every active namespace, re-created when deleted; none is created in a
//! namespace that is terminating. Given the cluster CA it is also upstream's root CA
//! publisher: the `kube-root-ca.crt` ConfigMap (the CA pods' service account volumes mount)
//! in every active namespace, restored when deleted or changed.

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The ServiceAccount every namespace gets.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";
const RESYNC: Duration = Duration::from_secs(300);
/// The ConfigMap holding the cluster CA in every namespace, and its one key.
pub const ROOT_CA_CONFIGMAP: &str = "kube-root-ca.crt";
const ROOT_CA_KEY: &str = "ca.crt";
const ROOT_CA_DESCRIPTION: &str = "The cluster CA, for verifying the API server at kubernetes.default.svc from inside pods; published by Capstan's controller manager.";

struct Ctx {
    client: Client,
    /// The cluster CA (PEM) to publish; None publishes nothing.
    root_ca: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceAccountError {
    #[error("reading ServiceAccount {0}/default")]
    Get(String, #[source] kube::Error),
    #[error("creating ServiceAccount {0}/default")]
    Create(String, #[source] kube::Error),
    #[error("publishing ConfigMap {0}/kube-root-ca.crt")]
    RootCa(String, #[source] kube::Error),
}

/// Run the controller until `stop`.
pub async fn run(client: Client, stop: CancellationToken) {
    run_with_root_ca(client, None, stop).await
}

/// Run the controller until `stop`, publishing `root_ca` (PEM) in every namespace.
pub async fn run_with_root_ca(client: Client, root_ca: Option<String>, stop: CancellationToken) {
    let accounts = Api::<ServiceAccount>::all(client.clone());
    let configmaps = Api::<ConfigMap>::all(client.clone());
    Controller::new(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
    )
    .watches(
        accounts,
        watcher::Config::default(),
        |sa: ServiceAccount| {
            (sa.name_any() == DEFAULT_SERVICE_ACCOUNT)
                .then(|| sa.namespace().map(|ns| ObjectRef::<Namespace>::new(&ns)))
                .flatten()
        },
    )
    .watches(
        configmaps,
        watcher::Config::default().fields(&format!("metadata.name={ROOT_CA_CONFIGMAP}")),
        |cm: ConfigMap| cm.namespace().map(|ns| ObjectRef::<Namespace>::new(&ns)),
    )
    .graceful_shutdown_on(async move { stop.cancelled().await })
    .run(reconcile, error_policy, Arc::new(Ctx { client, root_ca }))
    .for_each(|r| async move {
        if let Err(e) = r {
            tracing::debug!(error = %e, "serviceaccount reconcile");
        }
    })
    .await;
}

fn error_policy(ns: Arc<Namespace>, err: &ServiceAccountError, _: Arc<Ctx>) -> Action {
    tracing::warn!(namespace = %ns.name_any(), error = %err, "serviceaccount sync failed");
    Action::requeue(Duration::from_secs(1))
}

fn terminating(ns: &Namespace) -> bool {
    ns.metadata.deletion_timestamp.is_some()
        || ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating")
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Ctx>) -> Result<Action, ServiceAccountError> {
    if terminating(&ns) {
        return Ok(Action::await_change());
    }
    let name = ns.name_any();
    if let Some(pem) = &ctx.root_ca {
        publish_root_ca(&ctx.client, &name, pem).await?;
    }
    let api = Api::<ServiceAccount>::namespaced(ctx.client.clone(), &name);
    let existing = api
        .get_opt(DEFAULT_SERVICE_ACCOUNT)
        .await
        .map_err(|e| ServiceAccountError::Get(name.clone(), e))?;
    if existing.is_none() {
        let mut sa = ServiceAccount::default();
        sa.metadata.name = Some(DEFAULT_SERVICE_ACCOUNT.into());
        match api.create(&PostParams::default(), &sa).await {
            Ok(_) => tracing::debug!(namespace = %name, "created default ServiceAccount"),
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            // The namespace started terminating after our read: nothing to do.
            Err(kube::Error::Api(s)) if s.code == 403 || s.is_not_found() => {}
            Err(e) => return Err(ServiceAccountError::Create(name, e)),
        }
    }
    Ok(Action::requeue(RESYNC))
}

/// Creates or restores the namespace's `kube-root-ca.crt`.
async fn publish_root_ca(client: &Client, ns: &str, pem: &str) -> Result<(), ServiceAccountError> {
    let api = Api::<ConfigMap>::namespaced(client.clone(), ns);
    let err = |e| ServiceAccountError::RootCa(ns.to_string(), e);
    let existing = api.get_opt(ROOT_CA_CONFIGMAP).await.map_err(err)?;
    let want = BTreeMap::from([(ROOT_CA_KEY.to_string(), pem.to_string())]);
    let mut cm = match existing {
        Some(cm) if cm.data.as_ref() == Some(&want) => return Ok(()),
        Some(cm) => cm,
        None => ConfigMap::default(),
    };
    cm.metadata.name = Some(ROOT_CA_CONFIGMAP.into());
    cm.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(
            "kubernetes.io/description".into(),
            ROOT_CA_DESCRIPTION.into(),
        );
    cm.data = Some(want);
    cm.binary_data = None;
    let result = if cm.metadata.resource_version.is_some() {
        api.replace(ROOT_CA_CONFIGMAP, &PostParams::default(), &cm)
            .await
    } else {
        api.create(&PostParams::default(), &cm).await
    };
    match result {
        Ok(_) => Ok(()),
        // Raced with another write or the namespace started terminating: the watch retries.
        Err(kube::Error::Api(s)) if matches!(s.code, 403 | 404 | 409) => Ok(()),
        Err(e) => Err(err(e)),
    }
}
