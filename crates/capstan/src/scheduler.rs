//! The scheduler in `capstan server`, and `capstan scheduler` to run one on its own (another
//! scheduler name, benchmarks), both through the API with a kubeconfig.

use crate::explain::{ClusterArgs, strategy};
use anyhow::Context;
use capstan_scheduler::{
    DEFAULT_LEASE_NAME, DEFAULT_SCHEDULER_NAME, SchedulerOptions, run_scheduler,
};
use clap::Args;
use tokio_util::sync::CancellationToken;

/// Start the scheduler in-process with the admin kubeconfig `capstan server` wrote; it
/// schedules only while holding `kube-system/kube-scheduler`.
pub async fn start_scheduler(
    data_dir: &std::path::Path,
    stop: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let client = crate::explain::client_from(&data_dir.join("admin.kubeconfig"))
        .await
        .context("scheduler client")?;
    let identity = capstan_election::default_identity();
    tracing::info!(%identity, "starting the scheduler");
    Ok(tokio::spawn(async move {
        if let Err(e) = run_scheduler(client, identity, SchedulerOptions::default(), stop).await {
            tracing::error!(error = %e, "scheduler failed");
        }
    }))
}

#[derive(Args, Debug)]
pub struct SchedulerArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Schedule pods whose spec.schedulerName is this.
    #[arg(long, default_value = DEFAULT_SCHEDULER_NAME)]
    scheduler_name: String,
    /// Lease (in kube-system) for leader election; defaults to kube-scheduler for the default
    /// name and to the scheduler name otherwise.
    #[arg(long)]
    lease_name: Option<String>,
    /// Percentage of nodes to find feasible before scoring; 0 = adaptive (upstream).
    #[arg(long, default_value_t = 0)]
    percentage_of_nodes_to_score: u32,
    /// Bindings in flight at once.
    #[arg(long, default_value_t = 64)]
    bind_concurrency: usize,
    /// NodeResourcesFit scoring.
    #[arg(long, default_value = "LeastAllocated", value_parser = ["LeastAllocated", "MostAllocated"])]
    scoring_strategy: String,
}

pub fn run(args: SchedulerArgs) -> anyhow::Result<()> {
    let lease_name = args.lease_name.clone().unwrap_or_else(|| {
        if args.scheduler_name == DEFAULT_SCHEDULER_NAME {
            DEFAULT_LEASE_NAME.to_string()
        } else {
            args.scheduler_name.clone()
        }
    });
    let options = SchedulerOptions {
        scheduler_name: args.scheduler_name,
        percentage_of_nodes_to_score: args.percentage_of_nodes_to_score,
        bind_concurrency: args.bind_concurrency,
        scoring_strategy: strategy(&args.scoring_strategy),
        lease_name,
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let client = args.cluster.client().await?;
        let stop = CancellationToken::new();
        let s = stop.clone();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing SIGTERM handler")?;
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            s.cancel();
        });
        run_scheduler(client, capstan_election::default_identity(), options, stop)
            .await
            .context("scheduler")
    })
}
