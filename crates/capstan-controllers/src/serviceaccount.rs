//! The ServiceAccount controller (upstream's `pkg/controller/serviceaccount`): a `default`
//! ServiceAccount in every active namespace, re-created when deleted; none is created in a
//! namespace that is terminating.

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The ServiceAccount every namespace gets.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";
const RESYNC: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum ServiceAccountError {
    #[error("reading ServiceAccount {0}/default")]
    Get(String, #[source] kube::Error),
    #[error("creating ServiceAccount {0}/default")]
    Create(String, #[source] kube::Error),
}

/// Run the controller until `stop`.
pub async fn run(client: Client, stop: CancellationToken) {
    let accounts = Api::<ServiceAccount>::all(client.clone());
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
    .graceful_shutdown_on(async move { stop.cancelled().await })
    .run(reconcile, error_policy, Arc::new(client))
    .for_each(|r| async move {
        if let Err(e) = r {
            tracing::debug!(error = %e, "serviceaccount reconcile");
        }
    })
    .await;
}

fn error_policy(ns: Arc<Namespace>, err: &ServiceAccountError, _: Arc<Client>) -> Action {
    tracing::warn!(namespace = %ns.name_any(), error = %err, "serviceaccount sync failed");
    Action::requeue(Duration::from_secs(1))
}

fn terminating(ns: &Namespace) -> bool {
    ns.metadata.deletion_timestamp.is_some()
        || ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating")
}

async fn reconcile(ns: Arc<Namespace>, client: Arc<Client>) -> Result<Action, ServiceAccountError> {
    if terminating(&ns) {
        return Ok(Action::await_change());
    }
    let name = ns.name_any();
    let api = Api::<ServiceAccount>::namespaced((*client).clone(), &name);
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
