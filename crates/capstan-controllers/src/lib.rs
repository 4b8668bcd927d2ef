//! `capstan-controllers` is the controller manager: controllers that drive the cluster toward
//! the desired state, each talking only to the Kubernetes API (kube client and kube-runtime
//! informers), never to the store. It runs in one `capstan server` at a time, chosen by leader
//! election on the Lease `kube-system/kube-controller-manager` (as upstream). It does not own
//! scheduling (capstan-scheduler) or anything node-local (capstan-kubelet).
//!
//! Controllers today: `namespace` (deletes a terminating namespace's content, then finalizes it).

pub mod namespace;

use capstan_election::{ElectionError, LeaderElector, LeaseTimings, Outcome};
use kube::Client;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Namespace and name of the controller manager's Lease (upstream's).
pub const LEASE_NAMESPACE: &str = "kube-system";
pub const LEASE_NAME: &str = "kube-controller-manager";
/// Pause before campaigning again after leadership was lost.
const RECAMPAIGN_PAUSE: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ControllerManagerError {
    #[error("leader election")]
    Election(#[from] ElectionError),
}

/// Run every controller until `shutdown`, only while holding the controller manager Lease;
/// campaigns again when leadership is lost.
pub async fn run_controller_manager(
    client: Client,
    identity: String,
    shutdown: CancellationToken,
) -> Result<(), ControllerManagerError> {
    run_controller_manager_with(client, identity, LeaseTimings::default(), shutdown).await
}

/// [`run_controller_manager`] with explicit election timings.
pub async fn run_controller_manager_with(
    client: Client,
    identity: String,
    timings: LeaseTimings,
    shutdown: CancellationToken,
) -> Result<(), ControllerManagerError> {
    loop {
        let elector = LeaderElector::new(
            client.clone(),
            LEASE_NAMESPACE,
            LEASE_NAME,
            identity.clone(),
            timings,
        )?;
        let work_client = client.clone();
        let outcome = elector
            .run(shutdown.clone(), move |token| {
                run_controllers(work_client, token)
            })
            .await;
        if outcome != Outcome::Lost || shutdown.is_cancelled() {
            return Ok(());
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(RECAMPAIGN_PAUSE) => {}
        }
    }
}

/// Every controller, until `stop` is cancelled.
pub async fn run_controllers(client: Client, stop: CancellationToken) {
    tracing::info!("starting controllers");
    namespace::run(client, stop).await;
    tracing::info!("controllers stopped");
}
