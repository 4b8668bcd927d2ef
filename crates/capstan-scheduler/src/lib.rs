//! `capstan-scheduler` places pods on nodes, as upstream's kube-scheduler does: informers
//! feed a cache of nodes and pods (with assumed pods, so the next decision does not wait for
//! the watch) and a scheduling queue (active by priority, backoff, unschedulable); a
//! framework runs plugins per extension point (PreFilter, Filter, PostFilter = preemption,
//! PreScore, Score, Reserve, Bind); binding goes through `pods/NAME/binding`. Events and the
//! PodScheduled condition tell users why. `explain` runs the same plugins for one pod.
//!
//! It talks only to the Kubernetes API and runs under leader election (Lease
//! `kube-system/kube-scheduler`). It does not start pods (the kubelet does) nor create them.

pub mod algorithm;
pub mod binder;
pub mod cache;
pub mod events;
pub mod explain;
pub mod framework;
pub mod nodeinfo;
pub mod plugins;
pub mod podinfo;
pub mod queue;
pub mod resources;
mod scheduler;
pub mod selectors;
pub mod status;
#[cfg(test)]
mod testutil;

pub use algorithm::histogram_message;
pub use explain::{Explanation, explain_pod};
pub use plugins::ScoringStrategy;
pub use scheduler::run_unelected;

use capstan_election::{ElectionError, LeaderElector, LeaseTimings, Outcome};
use kube::Client;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The scheduler name pods get when they name none.
pub const DEFAULT_SCHEDULER_NAME: &str = "default-scheduler";
pub const LEASE_NAMESPACE: &str = "kube-system";
/// Upstream's Lease name for the default scheduler.
pub const DEFAULT_LEASE_NAME: &str = "kube-scheduler";
const RECAMPAIGN_PAUSE: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("leader election")]
    Election(#[from] ElectionError),
    #[error("API request failed")]
    Api(#[source] kube::Error),
}

/// How a scheduler instance behaves.
#[derive(Clone, Debug)]
pub struct SchedulerOptions {
    /// Pods whose spec.schedulerName equals this are ours.
    pub scheduler_name: String,
    /// percentageOfNodesToScore; 0 = upstream's adaptive default.
    pub percentage_of_nodes_to_score: u32,
    /// Bindings (and failure updates) in flight at once.
    pub bind_concurrency: usize,
    pub scoring_strategy: ScoringStrategy,
    /// Lease in kube-system held while scheduling.
    pub lease_name: String,
    pub lease_timings: LeaseTimings,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        SchedulerOptions {
            scheduler_name: DEFAULT_SCHEDULER_NAME.into(),
            percentage_of_nodes_to_score: 0,
            bind_concurrency: 64,
            scoring_strategy: ScoringStrategy::LeastAllocated,
            lease_name: DEFAULT_LEASE_NAME.into(),
            lease_timings: LeaseTimings::default(),
        }
    }
}

/// Runs the scheduler until `shutdown`, only while holding its Lease; campaigns again when
/// leadership is lost.
pub async fn run_scheduler(
    client: Client,
    identity: String,
    options: SchedulerOptions,
    shutdown: CancellationToken,
) -> Result<(), SchedulerError> {
    loop {
        let elector = LeaderElector::new(
            client.clone(),
            LEASE_NAMESPACE,
            &options.lease_name,
            identity.clone(),
            options.lease_timings,
        )?;
        let (work_client, opts) = (client.clone(), options.clone());
        let outcome = elector
            .run(shutdown.clone(), move |token| {
                run_unelected(work_client, opts, token)
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
