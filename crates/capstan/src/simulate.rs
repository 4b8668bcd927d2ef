//! `capstan simulate-nodes`: registers simulated nodes (the kwok role) and keeps them alive
//! until SIGINT/SIGTERM.

use crate::explain::ClusterArgs;
use anyhow::Context;
use capstan_kubelet::simulate::{SimulateOptions, parse_taint, run_simulated_nodes};
use clap::Args;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Args, Debug)]
pub struct SimulateArgs {
    /// How many nodes.
    #[arg(long)]
    count: usize,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Allocatable CPU of each node.
    #[arg(long, default_value = "32")]
    cpu: String,
    /// Allocatable memory of each node.
    #[arg(long, default_value = "256Gi")]
    memory: String,
    /// Pod capacity of each node.
    #[arg(long, default_value = "110")]
    pods: String,
    /// Node label `key=value` (repeatable).
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Node taint `key=value:Effect` (repeatable).
    #[arg(long = "taint")]
    taints: Vec<String>,
    /// Nodes are named PREFIX0, PREFIX1, ...
    #[arg(long, default_value = "sim-node-")]
    name_prefix: String,
    /// Seconds between Lease renewals.
    #[arg(long, default_value_t = 10)]
    lease_interval: u64,
    /// API requests in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
}

pub fn run(args: SimulateArgs) -> anyhow::Result<()> {
    let mut options = SimulateOptions {
        count: args.count,
        name_prefix: args.name_prefix,
        cpu: args.cpu,
        memory: args.memory,
        pods: args.pods,
        lease_interval: Duration::from_secs(args.lease_interval.max(1)),
        concurrency: args.concurrency,
        ..Default::default()
    };
    for l in &args.labels {
        let (k, v) = l
            .split_once('=')
            .with_context(|| format!("--label {l:?}: want key=value"))?;
        options.labels.insert(k.to_string(), v.to_string());
    }
    for t in &args.taints {
        options.taints.push(parse_taint(t)?);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let client = args.cluster.client().await?;
        let stop = CancellationToken::new();
        let signal_stop = stop.clone();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing SIGTERM handler")?;
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            signal_stop.cancel();
        });
        let count = options.count;
        run_simulated_nodes(client, options, stop, move || {
            // A line on stdout tells scripts and tests that every node is registered.
            println!("simulated nodes ready: {count}");
        })
        .await
        .context("simulated nodes")?;
        Ok(())
    })
}
