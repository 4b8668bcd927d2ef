//! `capstan-controllers` is the controller manager: controllers that drive the cluster toward
//! the desired state, each talking only to the Kubernetes API (kube client and kube-runtime
//! informers), never to the store. It runs in one `capstan server` at a time, chosen by leader
//! election on the Lease `kube-system/kube-controller-manager` (as upstream). It does not own
//! scheduling (capstan-scheduler) or anything node-local (capstan-kubelet).
//!
//! Controllers today: `namespace` (deletes a terminating namespace's content, then finalizes it),
//! `node_ipam` (assigns each Node a pod CIDR from the cluster CIDR), `replicaset` (keeps N pods per
//! ReplicaSet, with `expectations`), `deployment` (rolling/recreate rollouts through ReplicaSets),
//! `endpoints` and `endpointslice` (Service backends from pods), `serviceaccount` (a `default`
//! ServiceAccount per namespace).

pub mod deployment;
pub mod disruption;
pub mod endpoints;
pub mod endpointslice;
pub mod expectations;
pub mod informer;
pub mod namespace;
pub mod node_ipam;
pub mod quantity_sum;
pub mod replicaset;
pub mod resourcequota;
pub mod serviceaccount;

use capstan_election::{ElectionError, LeaderElector, LeaseTimings, Outcome};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Pod, Service};
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

/// Options of the controllers (flags of `capstan server`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControllerOptions {
    /// The cluster's pod CIDR, carved into per-node subnets by node IPAM.
    pub cluster_cidr: String,
    /// Prefix length of each node's pod CIDR.
    pub node_cidr_mask_size: u8,
    /// The cluster CA (PEM) published as `kube-root-ca.crt` in every namespace.
    pub root_ca_pem: Option<String>,
}

impl Default for ControllerOptions {
    fn default() -> Self {
        ControllerOptions {
            cluster_cidr: "10.42.0.0/16".into(),
            node_cidr_mask_size: 24,
            root_ca_pem: None,
        }
    }
}

/// Run every controller until `shutdown`, only while holding the controller manager Lease;
/// campaigns again when leadership is lost.
pub async fn run_controller_manager(
    client: Client,
    identity: String,
    shutdown: CancellationToken,
) -> Result<(), ControllerManagerError> {
    run_controller_manager_with(client, identity, ControllerOptions::default(), shutdown).await
}

/// [`run_controller_manager`] with explicit controller options.
pub async fn run_controller_manager_with(
    client: Client,
    identity: String,
    options: ControllerOptions,
    shutdown: CancellationToken,
) -> Result<(), ControllerManagerError> {
    run_controller_manager_with_timings(
        client,
        identity,
        options,
        LeaseTimings::default(),
        shutdown,
    )
    .await
}

/// [`run_controller_manager_with`] with explicit election timings.
pub async fn run_controller_manager_with_timings(
    client: Client,
    identity: String,
    options: ControllerOptions,
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
        let work_options = options.clone();
        let outcome = elector
            .run(shutdown.clone(), move |token| {
                run_controllers_with(work_client, work_options, token)
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
    run_controllers_with(client, ControllerOptions::default(), stop).await
}

/// Every controller with explicit options, until `stop` is cancelled.
pub async fn run_controllers_with(
    client: Client,
    options: ControllerOptions,
    stop: CancellationToken,
) {
    tracing::info!("starting controllers");
    let mut pods = informer::Informer::new(kube::Api::<Pod>::all(client.clone()));
    let mut replicasets = informer::Informer::new(kube::Api::<ReplicaSet>::all(client.clone()));
    let rs_triggers = replicaset::Triggers {
        replicasets: Box::pin(replicasets.subscribe()),
        pods: Box::pin(pods.subscribe()),
    };
    let deployment_triggers = Box::pin(replicasets.subscribe());
    let mut services = informer::Informer::new(kube::Api::<Service>::all(client.clone()));
    let endpoints_triggers = endpoints::ServiceTriggers {
        services: Box::pin(services.subscribe()),
        pods: Box::pin(pods.subscribe()),
    };
    let slice_triggers = endpoints::ServiceTriggers {
        services: Box::pin(services.subscribe()),
        pods: Box::pin(pods.subscribe()),
    };
    let svc_store = services.store();
    let (pod_store, rs_store) = (pods.store(), replicasets.store());
    tokio::join!(
        pods.run(stop.clone()),
        replicasets.run(stop.clone()),
        replicaset::run(
            client.clone(),
            pod_store.clone(),
            rs_store.clone(),
            rs_triggers,
            stop.clone()
        ),
        deployment::run(
            client.clone(),
            pod_store.clone(),
            rs_store,
            deployment_triggers,
            stop.clone()
        ),
        services.run(stop.clone()),
        endpoints::run(
            client.clone(),
            pod_store.clone(),
            svc_store.clone(),
            endpoints_triggers,
            stop.clone()
        ),
        endpointslice::run(
            client.clone(),
            pod_store,
            svc_store,
            slice_triggers,
            stop.clone()
        ),
        serviceaccount::run_with_root_ca(client.clone(), options.root_ca_pem.clone(), stop.clone()),
        namespace::run(client.clone(), stop.clone()),
        resourcequota::run(client.clone(), stop.clone()),
        disruption::run(client.clone(), stop.clone()),
        node_ipam::run(
            client,
            &options.cluster_cidr,
            options.node_cidr_mask_size,
            stop
        ),
    );
    tracing::info!("controllers stopped");
}
