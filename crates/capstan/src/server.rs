//! `capstan server`: open the store, start the API server, run until SIGINT/SIGTERM.

use anyhow::Context;
use capstan_apiserver::ServerConfig;
use capstan_store::Store;
use capstan_store::sqlite::SqliteStore;
use clap::Args;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Args, Debug)]
#[command(args_override_self = true)]
pub struct ServerArgs {
    /// Directory for all state: the store, certificates, the admin kubeconfig.
    #[arg(long, default_value = "/var/lib/capstan")]
    pub data_dir: PathBuf,
    /// Port of the HTTPS API.
    #[arg(long, default_value_t = 6443)]
    pub https_port: u16,
    /// Address the API listens on.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind_address: IpAddr,
    /// Run the control plane only, without a local agent.
    #[arg(long)]
    pub disable_agent: bool,
    /// CIDR from which Services get ClusterIPs.
    #[arg(long, default_value = "10.43.0.0/16")]
    pub service_cidr: String,
    /// NodePort range, `LOW-HIGH`.
    #[arg(long, default_value = "30000-32767")]
    pub service_node_port_range: String,
    /// Extra names or addresses for the serving certificate (repeatable).
    #[arg(long)]
    pub tls_san: Vec<String>,
    /// Where state is stored: `sqlite://PATH` (default: `<data-dir>/db/state.db`).
    #[arg(long)]
    pub datastore_endpoint: Option<String>,
}

fn port_range(s: &str) -> anyhow::Result<(u16, u16)> {
    let (a, b) = s
        .split_once('-')
        .context("--service-node-port-range must be LOW-HIGH")?;
    Ok((
        a.trim().parse().context("port range low")?,
        b.trim().parse().context("port range high")?,
    ))
}

fn open_store(args: &ServerArgs) -> anyhow::Result<Arc<dyn Store>> {
    let path = match args.datastore_endpoint.as_deref() {
        None => args.data_dir.join("db").join("state.db"),
        Some(e) => match e.strip_prefix("sqlite://") {
            Some(p) => PathBuf::from(p),
            None => anyhow::bail!(
                "unsupported --datastore-endpoint {e:?}: only sqlite://PATH is available in this build"
            ),
        },
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let store = SqliteStore::open(&path)
        .with_context(|| format!("opening SQLite store {}", path.display()))?;
    Ok(Arc::new(store))
}

pub fn run(args: ServerArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating data dir {}", args.data_dir.display()))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let store = open_store(&args)?;
        let config = ServerConfig {
            data_dir: args.data_dir.clone(),
            bind_address: args.bind_address,
            https_port: args.https_port,
            service_cidr: args.service_cidr.clone(),
            node_port_range: port_range(&args.service_node_port_range)?,
            tls_sans: args.tls_san.clone(),
        };
        let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
        let running = capstan_apiserver::start(config, store, shutdown_rx).await.context("starting the API server")?;
        if !args.disable_agent {
            tracing::warn!("the node agent is not part of this build yet; running the control plane only (as with --disable-agent)");
        }
        tracing::info!(addr = %running.addr, "capstan server ready");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("installing SIGTERM handler")?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        let _ = shutdown_tx.send(true);
        for t in running.tasks {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), t).await;
        }
        Ok(())
    })
}
