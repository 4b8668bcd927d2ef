//! `capstan explain pod NAME -n NS`: every node, every plugin's verdict and score for one
//! pod, from the scheduler's own plugins run against the live cluster.

use anyhow::Context;
use clap::{Args, Subcommand};
use std::path::PathBuf;

/// The admin kubeconfig `capstan server` writes with default flags.
pub const DEFAULT_ADMIN_KUBECONFIG: &str = "/var/lib/capstan/admin.kubeconfig";

#[derive(Args, Debug)]
pub struct ExplainArgs {
    #[command(subcommand)]
    what: ExplainWhat,
}

#[derive(Subcommand, Debug)]
enum ExplainWhat {
    /// Why a pod is pending, or why it runs where it does.
    Pod(PodArgs),
}

#[derive(Args, Debug)]
struct PodArgs {
    name: String,
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Scoring strategy of NodeResourcesFit to explain with (as the scheduler's flag).
    #[arg(long, default_value = "LeastAllocated", value_parser = ["LeastAllocated", "MostAllocated"])]
    scoring_strategy: String,
}

/// How to find the cluster, as kubectl does.
#[derive(Args, Debug, Clone)]
pub struct ClusterArgs {
    /// Path of the kubeconfig; else $KUBECONFIG, else the default admin kubeconfig, else
    /// ~/.kube/config.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
}

impl ClusterArgs {
    /// Which kubeconfig file to use.
    pub fn resolve(&self) -> anyhow::Result<PathBuf> {
        if let Some(p) = &self.kubeconfig {
            return Ok(p.clone());
        }
        if let Some(first) = std::env::var_os("KUBECONFIG")
            .and_then(|v| std::env::split_paths(&v).find(|p| !p.as_os_str().is_empty()))
        {
            return Ok(first);
        }
        let admin = PathBuf::from(DEFAULT_ADMIN_KUBECONFIG);
        if admin.exists() {
            return Ok(admin);
        }
        let home = std::env::var_os("HOME")
            .context("no --kubeconfig, KUBECONFIG, admin kubeconfig or HOME")?;
        Ok(PathBuf::from(home).join(".kube/config"))
    }

    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        client_from(&self.resolve()?).await
    }
}

/// A client from a kubeconfig file (its current context).
pub async fn client_from(path: &std::path::Path) -> anyhow::Result<kube::Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(path)
        .with_context(|| format!("reading {}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .with_context(|| format!("client configuration from {}", path.display()))?;
    kube::Client::try_from(config).context("building the API client")
}

pub fn strategy(name: &str) -> capstan_scheduler::ScoringStrategy {
    match name {
        "MostAllocated" => capstan_scheduler::ScoringStrategy::MostAllocated,
        _ => capstan_scheduler::ScoringStrategy::LeastAllocated,
    }
}

pub fn run(args: ExplainArgs) -> anyhow::Result<()> {
    let ExplainWhat::Pod(a) = args.what;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let client = a.cluster.client().await?;
        let options = capstan_scheduler::SchedulerOptions {
            scoring_strategy: strategy(&a.scoring_strategy),
            ..Default::default()
        };
        let e = capstan_scheduler::explain_pod(client, &a.namespace, &a.name, &options)
            .await
            .with_context(|| format!("explaining pod {}/{}", a.namespace, a.name))?;
        print!("{e}");
        Ok(())
    })
}
