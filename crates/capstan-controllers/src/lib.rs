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
//! ServiceAccount per namespace), `job` (pods to completion, with the job-tracking finalizer) and
//! `cronjob` (Jobs on a cron schedule). `garbage_collector` (ownerReferences: background,
//! foreground and orphan propagation), `podgc` (terminated and orphaned pods) and
//! `node_lifecycle` (unreachable/not-ready conditions and taints, NoExecute evictions).
//! `statefulset` (ordinal pods, claims, ControllerRevisions) and `daemonset` (a pod per node).

pub mod clusterrole_aggregation;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpoints;
pub mod endpointslice;
pub mod expectations;
pub mod garbage_collector;
pub mod informer;
pub mod job;
pub mod namespace;
pub mod node_ipam;
pub mod node_lifecycle;
pub mod podgc;
pub mod quantity_sum;
pub mod replicaset;
pub mod resourcequota;
pub mod serviceaccount;
pub mod servicelb;
pub mod statefulset;

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
    /// Node heartbeat monitoring, NoExecute taints and evictions.
    pub node_lifecycle: node_lifecycle::NodeLifecycleOptions,
    /// Deletion of terminated and orphaned pods.
    pub pod_gc: podgc::PodGcOptions,
    /// The ownerReference garbage collector.
    pub garbage_collector: garbage_collector::GcOptions,
    /// Run ServiceLB (status.loadBalancer.ingress from node addresses); off: --disable-servicelb.
    pub servicelb: bool,
    /// The cluster CA (PEM) published as `kube-root-ca.crt` in every namespace.
    pub root_ca_pem: Option<String>,
}

impl Default for ControllerOptions {
    fn default() -> Self {
        ControllerOptions {
            cluster_cidr: "10.42.0.0/16".into(),
            node_cidr_mask_size: 24,
            node_lifecycle: Default::default(),
            pod_gc: Default::default(),
            garbage_collector: Default::default(),
            servicelb: true,
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
                // Boxed: the controllers' future is large, and moved by value it overflows a
                // worker's stack in debug builds.
                Box::pin(run_controllers_with(work_client, work_options, token))
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
    let set_controllers = run_set_controllers(&client, &mut pods, stop.clone());
    let batch_controllers = run_batch_controllers(&client, &mut pods, stop.clone());
    let lifecycle_controllers =
        run_lifecycle_controllers(&client, &mut pods, &options, stop.clone());
    let servicelb = servicelb::run_if(options.servicelb, client.clone(), stop.clone());
    tokio::join!(
        servicelb,
        batch_controllers,
        lifecycle_controllers,
        set_controllers,
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
        Box::pin(clusterrole_aggregation::run(client.clone(), stop.clone())),
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

/// The StatefulSet and DaemonSet controllers with their informers, on the shared pod informer.
fn run_set_controllers(
    client: &Client,
    pods: &mut informer::Informer<Pod>,
    stop: CancellationToken,
) -> impl std::future::Future<Output = ()> + use<> {
    use k8s_openapi::api::apps::v1::{DaemonSet, StatefulSet};
    use k8s_openapi::api::core::v1::Node;
    let mut sets = informer::Informer::new(kube::Api::<StatefulSet>::all(client.clone()));
    let mut daemons = informer::Informer::new(kube::Api::<DaemonSet>::all(client.clone()));
    let mut nodes = informer::Informer::new(kube::Api::<Node>::all(client.clone()));
    let sts_triggers = statefulset::Triggers {
        sets: Box::pin(sets.subscribe()),
        pods: Box::pin(pods.subscribe()),
    };
    let ds_triggers = daemonset::Triggers {
        daemonsets: Box::pin(daemons.subscribe()),
        pods: Box::pin(pods.subscribe()),
        nodes: Box::pin(nodes.subscribe()),
    };
    let (pod_store, set_store) = (pods.store(), sets.store());
    let (ds_store, node_store) = (daemons.store(), nodes.store());
    let client = client.clone();
    async move {
        tokio::join!(
            sets.run(stop.clone()),
            daemons.run(stop.clone()),
            nodes.run(stop.clone()),
            statefulset::run(
                client.clone(),
                pod_store.clone(),
                set_store,
                sts_triggers,
                stop.clone()
            ),
            daemonset::run(client, pod_store, ds_store, node_store, ds_triggers, stop),
        );
    }
}

/// The Job and CronJob controllers with their informers, on the shared pod informer.
fn run_batch_controllers(
    client: &Client,
    pods: &mut informer::Informer<Pod>,
    stop: CancellationToken,
) -> impl std::future::Future<Output = ()> + use<> {
    use k8s_openapi::api::batch::v1::{CronJob, Job};
    let mut jobs = informer::Informer::new(kube::Api::<Job>::all(client.clone()));
    let job_triggers = job::Triggers {
        jobs: Box::pin(jobs.subscribe()),
        pods: Box::pin(pods.subscribe()),
        orphan_pods: Box::pin(pods.subscribe()),
    };
    let mut cronjobs = informer::Informer::new(kube::Api::<CronJob>::all(client.clone()));
    let cj_triggers = cronjob::Triggers {
        cronjobs: Box::pin(cronjobs.subscribe()),
        jobs: Box::pin(jobs.subscribe()),
    };
    let (pod_store, job_store, cj_store) = (pods.store(), jobs.store(), cronjobs.store());
    let client = client.clone();
    async move {
        tokio::join!(
            jobs.run(stop.clone()),
            cronjobs.run(stop.clone()),
            job::run(
                client.clone(),
                pod_store,
                job_store.clone(),
                job_triggers,
                stop.clone()
            ),
            cronjob::run(client, job_store, cj_store, cj_triggers, stop),
        );
    }
}

/// The garbage collector, pod GC and node lifecycle controllers, on the shared pod informer.
/// Boxed: their state would otherwise make the controller future large enough to overflow a
/// worker's stack in debug builds.
fn run_lifecycle_controllers(
    client: &Client,
    pods: &mut informer::Informer<Pod>,
    options: &ControllerOptions,
    stop: CancellationToken,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    let pod_changes: node_lifecycle::Changes<Pod> = Box::pin(pods.subscribe());
    let pod_store = pods.store();
    let (client, options) = (client.clone(), options.clone());
    Box::pin(async move {
        tokio::join!(
            Box::pin(garbage_collector::run(
                client.clone(),
                options.garbage_collector,
                stop.clone()
            )),
            Box::pin(podgc::run(
                client.clone(),
                pod_store.clone(),
                options.pod_gc,
                stop.clone()
            )),
            Box::pin(node_lifecycle::run(
                client,
                pod_store,
                pod_changes,
                options.node_lifecycle,
                stop
            )),
        );
    })
}
