//! `capstan server`: open the store, start the API server, run until SIGINT/SIGTERM.

use crate::datastore::endpoint::{Endpoint, open_sqlite};
use crate::datastore::lock::DbLock;
use crate::datastore::{DatastoreFlags, SnapshotScheduleFlags};
use anyhow::Context;
use capstan_apiserver::ServerConfig;
use capstan_store::Store;
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
    /// Do not run the scheduler in this server.
    #[arg(long)]
    pub disable_scheduler: bool,
    /// CIDR from which node IPAM gives each node its pod CIDR (a /24 each).
    #[arg(long, default_value = "10.42.0.0/16")]
    pub cluster_cidr: String,
    /// CIDR from which Services get ClusterIPs.
    #[arg(long, default_value = "10.43.0.0/16")]
    pub service_cidr: String,
    /// NodePort range, `LOW-HIGH`.
    #[arg(long, default_value = "30000-32767")]
    pub service_node_port_range: String,
    /// Do not run ServiceLB (the built-in LoadBalancer: node addresses as ingress).
    #[arg(long)]
    pub disable_servicelb: bool,
    /// Do not run the cluster DNS server (nor keep the kube-dns Service).
    #[arg(long)]
    pub disable_dns: bool,
    /// Port the cluster DNS server listens on (UDP and TCP, on the node address and
    /// loopback); the kube-dns Service's targetPort.
    #[arg(long, default_value_t = 53)]
    pub cluster_dns_port: u16,
    /// Extra names or addresses for the serving certificate (repeatable).
    #[arg(long)]
    pub tls_san: Vec<String>,
    /// Static bearer tokens (CSV: token,user,uid,"group1,group2"), as upstream's flag.
    #[arg(long)]
    pub token_auth_file: Option<PathBuf>,
    /// Write an audit log of every request here (JSON lines, one event per request).
    #[arg(long)]
    pub audit_log_path: Option<PathBuf>,
    #[command(flatten)]
    pub datastore: DatastoreFlags,
    #[command(flatten)]
    pub snapshots: SnapshotScheduleFlags,
    #[command(flatten)]
    pub node: crate::agent::NodeFlags,
    #[command(flatten)]
    pub lifecycle: LifecycleFlags,
    #[command(flatten)]
    pub encryption: crate::secrets::EncryptionFlags,
}

/// Node lifecycle and pod GC flags (kube-controller-manager's names and defaults).
#[derive(Args, Debug)]
pub struct LifecycleFlags {
    /// Heartbeat age after which a node is marked unreachable (e.g. 40s, 1m30s).
    #[arg(long, default_value = "40s", value_parser = parse_go_duration)]
    pub node_monitor_grace_period: std::time::Duration,
    /// How often node heartbeats are checked.
    #[arg(long, default_value = "5s", value_parser = parse_go_duration)]
    pub node_monitor_period: std::time::Duration,
    /// tolerationSeconds of the not-ready:NoExecute toleration pods get by default.
    #[arg(long, default_value_t = 300)]
    pub default_not_ready_toleration_seconds: i64,
    /// tolerationSeconds of the unreachable:NoExecute toleration pods get by default.
    #[arg(long, default_value_t = 300)]
    pub default_unreachable_toleration_seconds: i64,
    /// Terminated pods kept before the pod garbage collector deletes the oldest (0: never).
    #[arg(long, default_value_t = 12500)]
    pub terminated_pod_gc_threshold: usize,
}

impl LifecycleFlags {
    fn apply(&self, o: &mut capstan_controllers::ControllerOptions) {
        let n = &mut o.node_lifecycle;
        n.grace_period = self.node_monitor_grace_period;
        n.monitor_period = self.node_monitor_period;
        n.default_not_ready_toleration_seconds = self.default_not_ready_toleration_seconds;
        n.default_unreachable_toleration_seconds = self.default_unreachable_toleration_seconds;
        o.pod_gc.terminated_pod_gc_threshold = self.terminated_pod_gc_threshold;
    }
}

/// A Go-style duration: `40s`, `1m30s`, `500ms`, `2h` (a bare number is seconds).
fn parse_go_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    if let Ok(n) = s.parse::<u64>() {
        return Ok(std::time::Duration::from_secs(n));
    }
    let mut total = std::time::Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("{s:?}: missing unit"))?;
        let n: f64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{s:?}: bad number"))?;
        let tail = &rest[digits..];
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let scale = match &tail[..unit_len] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            u => return Err(format!("{s:?}: unknown unit {u:?}")),
        };
        total +=
            std::time::Duration::try_from_secs_f64(n * scale).map_err(|e| format!("{s:?}: {e}"))?;
        rest = &tail[unit_len..];
    }
    Ok(total)
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

/// The opened store, and for SQLite the lock that keeps offline restores away from it.
struct OpenStore {
    store: Arc<dyn Store>,
    _lock: Option<DbLock>,
}

async fn open_store(args: &ServerArgs) -> anyhow::Result<OpenStore> {
    match args.datastore.endpoint(&args.data_dir)? {
        Endpoint::Sqlite(path) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            let lock = DbLock::acquire(&path, "serve")?;
            let store = open_sqlite(&path, true)?;
            tracing::info!(
                path = %path.display(),
                lock = %lock.path().display(),
                "datastore: SQLite"
            );
            Ok(OpenStore {
                store: Arc::new(store),
                _lock: Some(lock),
            })
        }
        Endpoint::Etcd(endpoints) => {
            let store = args.datastore.connect_etcd(&endpoints).await?;
            tracing::info!(endpoints = %endpoints.join(","), "datastore: etcd");
            Ok(OpenStore {
                store: Arc::new(store),
                _lock: None,
            })
        }
    }
}

pub fn run(mut args: ServerArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating data dir {}", args.data_dir.display()))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let snapshot_policy = args.snapshots.policy(&args.data_dir)?;
        let opened = open_store(&args).await?;
        // Secrets are encrypted at rest: the API server only ever sees the wrapped store.
        let encryption = args.encryption.wrap(&args.data_dir, opened.store.clone())?;
        let store = encryption.store();
        capstan_apiserver::admission::tolerations::set_default_seconds(
            args.lifecycle.default_not_ready_toleration_seconds,
            args.lifecycle.default_unreachable_toleration_seconds,
        );
        let config = ServerConfig {
            data_dir: args.data_dir.clone(),
            bind_address: args.bind_address,
            https_port: args.https_port,
            service_cidr: args.service_cidr.clone(),
            node_port_range: port_range(&args.service_node_port_range)?,
            tls_sans: args.tls_san.clone(),
            token_auth_file: args.token_auth_file.clone(),
            audit_log_path: args.audit_log_path.clone(),
        };
        let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
        let running = capstan_apiserver::start(config, store.clone(), shutdown_rx.clone())
            .await
            .context("starting the API server")?;
        let mut tasks = running.tasks;
        tasks.extend(encryption.spawn_reloader(shutdown_rx.clone()));
        if let Some(policy) = snapshot_policy {
            tracing::info!(
                schedule = %args.snapshots.snapshot_schedule,
                retention = policy.retention,
                dir = %policy.dir.display(),
                "scheduled snapshots on"
            );
            tasks.push(policy.spawn(store, shutdown_rx));
        }
        let dns_stop = tokio_util::sync::CancellationToken::new();
        let dns = if args.disable_dns {
            None
        } else {
            Some(crate::dns::start(&mut args, dns_stop.clone()).await?)
        };
        let agent_stop = tokio_util::sync::CancellationToken::new();
        let agent = if args.disable_agent {
            None
        } else {
            Some(start_agent(&args, agent_stop.clone()).await?)
        };
        let controllers_stop = tokio_util::sync::CancellationToken::new();
        let controllers = start_controller_manager(&args, controllers_stop.clone()).await?;
        let scheduler_stop = tokio_util::sync::CancellationToken::new();
        let scheduler = if args.disable_scheduler {
            None
        } else {
            Some(crate::scheduler::start_scheduler(&args.data_dir, scheduler_stop.clone()).await?)
        };
        tracing::info!(addr = %running.addr, "capstan server ready");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing SIGTERM handler")?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        // The agent first: its containers keep running, its API calls still get answers.
        agent_stop.cancel();
        if let Some(agent) = agent {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), agent).await;
        }
        // The scheduler too releases its Lease while the API still serves.
        scheduler_stop.cancel();
        if let Some(scheduler) = scheduler {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), scheduler).await;
        }
        // Controllers first, while the API still serves, so their Lease is released.
        controllers_stop.cancel();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), controllers).await;
        dns_stop.cancel();
        for t in dns.into_iter().flatten() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), t).await;
        }
        let _ = shutdown_tx.send(true);
        for t in tasks {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), t).await;
        }
        drop(opened);
        Ok(())
    })
}

/// A client with the admin credentials the API server wrote into `data_dir`.
pub(crate) async fn admin_client(data_dir: &std::path::Path) -> anyhow::Result<kube::Client> {
    crate::explain::client_from(&data_dir.join("admin.kubeconfig")).await
}

/// Run the node agent in-process for this server's own node (with the default --cluster-cidr,
/// pod CIDR 10.42.0.0/24 unless --pod-cidr, the subnet node IPAM gives the first node; else
/// whatever node IPAM assigns); a failing agent is logged and leaves the control plane running.
async fn start_agent(
    args: &ServerArgs,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut config = args.node.agent_config(
        args.data_dir.clone(),
        (args.cluster_cidr == "10.42.0.0/16").then_some("10.42.0.0/24"),
    )?;
    config
        .node_labels
        .entry("node-role.kubernetes.io/control-plane".into())
        .or_insert_with(|| "true".into());
    crate::agent::issue_local_credentials(&args.data_dir, &config)?;
    let client = admin_client(&args.data_dir).await?;
    tracing::info!(node = %config.node_name, "starting the node agent");
    Ok(tokio::spawn(async move {
        if let Err(e) = capstan_kubelet::run_agent(config, client, stop).await {
            tracing::error!(error = %e, "node agent failed");
        }
    }))
}

/// Run the controller manager in-process against this server's API with the admin
/// credentials it wrote; it leads only while holding `kube-system/kube-controller-manager`.
async fn start_controller_manager(
    args: &ServerArgs,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let client = admin_client(&args.data_dir).await?;
    let identity = capstan_election::default_identity();
    let mut options = capstan_controllers::ControllerOptions {
        cluster_cidr: args.cluster_cidr.clone(),
        servicelb: !args.disable_servicelb,
        root_ca_pem: Some(
            std::fs::read_to_string(args.data_dir.join("tls").join("ca.crt"))
                .context("reading the cluster CA for kube-root-ca.crt")?,
        ),
        ..Default::default()
    };
    args.lifecycle.apply(&mut options);
    tracing::info!(%identity, cluster_cidr = %options.cluster_cidr, "starting the controller manager");
    Ok(tokio::spawn(async move {
        if let Err(e) =
            capstan_controllers::run_controller_manager_with(client, identity, options, stop).await
        {
            tracing::error!(error = %e, "controller manager failed");
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        server: ServerArgs,
    }

    #[test]
    fn datastore_and_snapshot_flags_come_from_the_config_file_too() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.yaml");
        std::fs::write(
            &file,
            "datastore-endpoint: etcd://10.0.0.1:2379,10.0.0.2:2379\n\
             datastore-cafile: /etc/etcd/ca.pem\n\
             datastore-certfile: /etc/etcd/client.pem\n\
             datastore-keyfile: /etc/etcd/client-key.pem\n\
             etcd-snapshot-schedule-cron: \"0 */6 * * *\"\n\
             snapshot-retention: 9\n\
             disable-snapshots: true\n",
        )
        .unwrap();
        let args = ["capstan", "server", "--config", file.to_str().unwrap()]
            .map(std::ffi::OsString::from)
            .to_vec();
        let mut args = crate::config::args_with_config_file(args).unwrap();
        args.remove(1);
        let a = Cmd::try_parse_from(args).unwrap().server;
        let endpoint = a.datastore.endpoint(&a.data_dir).unwrap();
        assert_eq!(
            endpoint,
            Endpoint::Etcd(vec![
                "https://10.0.0.1:2379".into(),
                "https://10.0.0.2:2379".into()
            ])
        );
        assert_eq!(
            a.datastore.datastore_keyfile.as_deref(),
            Some(std::path::Path::new("/etc/etcd/client-key.pem"))
        );
        assert_eq!(a.snapshots.snapshot_schedule, "0 */6 * * *");
        assert_eq!(a.snapshots.snapshot_retention, 9);
        assert!(a.snapshots.policy(&a.data_dir).unwrap().is_none());
    }

    #[test]
    fn snapshot_defaults_follow_k3s() {
        let a = Cmd::try_parse_from(["capstan", "--data-dir", "/d"])
            .unwrap()
            .server;
        let policy = a
            .snapshots
            .policy(&a.data_dir)
            .unwrap()
            .expect("on by default");
        assert_eq!(a.snapshots.snapshot_schedule, "0 */12 * * *");
        assert_eq!(policy.retention, 5);
        assert_eq!(policy.dir, PathBuf::from("/d/db/snapshots"));
        assert_eq!(
            a.datastore.endpoint(&a.data_dir).unwrap(),
            Endpoint::Sqlite(PathBuf::from("/d/db/state.db"))
        );
    }

    #[test]
    fn go_durations_parse_like_kube_controller_manager_flags() {
        let secs = std::time::Duration::from_secs;
        assert_eq!(parse_go_duration("40s"), Ok(secs(40)));
        assert_eq!(parse_go_duration("1m30s"), Ok(secs(90)));
        assert_eq!(parse_go_duration("2h"), Ok(secs(7200)));
        assert_eq!(parse_go_duration("300"), Ok(secs(300)));
        assert_eq!(
            parse_go_duration("1.5s500ms"),
            Ok(std::time::Duration::from_millis(2000))
        );
        assert!(parse_go_duration("5x").is_err());
        assert!(parse_go_duration("s").is_err());
        assert!(parse_go_duration("10").is_ok());
    }
}
