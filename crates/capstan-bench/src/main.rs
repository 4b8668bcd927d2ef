//! `capstan-bench`: the API benchmark of issues 2 and 3. Starts its own `capstan server
//! --disable-agent` on SQLite, a raw etcd as the peer, and (unless `--skip-backends`) a second
//! `capstan server` on its own etcd; drives them one at a time with the same objects and client
//! counts, and prints markdown tables (also written into docs/benchmarks.md).
//!
//! It owns the load generator and the report; it does not link any Capstan crate, so it measures
//! the server exactly as a remote client sees it.

mod backends;
mod client;
mod matrix;
mod ops;
mod payload;
mod phases;
mod procs;
mod report;
mod runner;
mod stats;
mod watch;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;

use crate::backends::EtcdBackedRun;
use crate::client::{Etcd, Kubeconfig, etcd_client};
use crate::ops::{Kube, Kv};
use crate::phases::{Api, CONCURRENCY, Rates, Targets, clients};
use crate::procs::{EtcdBacked, Proc, wait_ready};
use crate::report::{Memory, Report};
use crate::runner::Limits;

/// Hard bound on the whole run; a hang fails instead of stalling CI or a terminal.
const RUN_TIMEOUT: Duration = Duration::from_secs(600);
/// Time the servers get after start before their idle memory is read.
const SETTLE: Duration = Duration::from_secs(2);

#[derive(Parser, Debug)]
#[command(about = "Benchmark Capstan's API beside etcd and print a markdown table")]
// bench.sh passes `--output docs/benchmarks.md` before the user's flags: a later one wins.
#[command(args_override_self = true)]
struct Args {
    /// The `capstan` binary to start (a release build).
    #[arg(long)]
    capstan: PathBuf,
    /// The etcd binary started as the peer.
    #[arg(long, default_value = "/usr/bin/etcd")]
    etcd: PathBuf,
    /// Markdown file whose generated block is rewritten with the results.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Time bound of each matrix cell, in seconds.
    #[arg(long, default_value_t = 2.0)]
    cell_seconds: f64,
    /// Operation bound of each matrix cell.
    #[arg(long, default_value_t = 5_000)]
    cell_ops: u64,
    /// Revision shown with the machine facts (e.g. `git describe`).
    #[arg(long)]
    revision: Option<String>,
    /// Skip the second Capstan server on etcd: only the Capstan-vs-etcd comparison.
    #[arg(long)]
    skip_backends: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Dropping the run future (on a signal or timeout) drops the server guards, which kill them.
    let result = runtime.block_on(async {
        tokio::select! {
            r = tokio::time::timeout(RUN_TIMEOUT, run(&args)) => r.unwrap_or_else(|_| Err(anyhow::anyhow!("run exceeded {RUN_TIMEOUT:?}"))),
            r = interrupted() => r.and_then(|sig| Err(anyhow::anyhow!("interrupted by {sig}"))),
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn interrupted() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.map(|()| "SIGINT").context("SIGINT handler"),
        _ = term.recv() => Ok("SIGTERM"),
        _ = hup.recv() => Ok("SIGHUP"),
    }
}

async fn run(args: &Args) -> anyhow::Result<()> {
    // reqwest is built without a default crypto provider; the workspace uses aws-lc-rs.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let started = Instant::now();
    let machine = report::machine_facts(args.revision.as_deref());
    eprintln!("starting capstan (SQLite) and etcd");
    // Every Proc below is a local (or a field of one): any early return kills what has started.
    let (mut capstan, _port) = procs::start_capstan(&args.capstan, "capstan", None)?;
    let (mut etcd, etcd_url) = procs::start_etcd(&args.etcd, "etcd")?;
    let capstan_api = capstan_api(&mut capstan, "capstan").await?;
    let kv = Kv {
        etcd: Etcd { url: etcd_url },
        clients: clients(max_clients(), etcd_client)?,
    };
    let gw = kv.clone();
    wait_ready(&mut etcd, "etcd", || async {
        gw.etcd.health(&gw.clients[0]).await
    })
    .await?;
    let (mut backed, capstan_etcd) = if args.skip_backends {
        (None, None)
    } else {
        let (procs, api) = start_etcd_backed(args).await?;
        (Some(procs), Some(api))
    };
    let targets = Targets {
        capstan: capstan_api,
        kv,
        capstan_etcd,
    };
    tokio::time::sleep(SETTLE).await;
    let idle = (capstan.rss_kib()?, etcd.rss_kib()?);
    let backed_idle = backed.as_ref().map(EtcdBacked::rss_kib).transpose()?;

    let mut servers = Servers {
        capstan: &mut capstan,
        etcd: &mut etcd,
        backed: backed.as_mut(),
    };
    let mut report = measure(args, &targets, &mut servers, idle, backed_idle).await?;
    report.machine = machine;
    let text = report::render(&report);
    println!("{text}");
    if let Some(path) = &args.output {
        report::write_doc(path, &text)?;
        eprintln!("wrote {}", path.display());
    }
    eprintln!("run took {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn max_clients() -> usize {
    *CONCURRENCY.iter().max().unwrap_or(&64)
}

/// Starts the etcd that backs the second Capstan, waits for it, then that Capstan.
async fn start_etcd_backed(args: &Args) -> anyhow::Result<(EtcdBacked, Api)> {
    eprintln!("starting etcd and capstan on it");
    let (mut store, url) = procs::start_etcd(&args.etcd, "etcd-store")?;
    let probe = Etcd { url: url.clone() };
    let client = etcd_client()?;
    wait_ready(&mut store, "etcd (Capstan's store)", || {
        probe.health(&client)
    })
    .await?;
    let endpoint = procs::datastore_endpoint(&url);
    let (server, _port) = procs::start_capstan(&args.capstan, "capstan-etcd", Some(&endpoint))?;
    // Owned from here on, so a failure below kills both.
    let mut backed = EtcdBacked {
        capstan: server,
        etcd: store,
    };
    let api = capstan_api(&mut backed.capstan, "capstan on etcd").await?;
    backed.etcd.check_alive()?;
    Ok((backed, api))
}

/// Waits for a Capstan server's kubeconfig and /readyz; returns its clients.
async fn capstan_api(proc: &mut Proc, what: &str) -> anyhow::Result<Api> {
    let kubeconfig = wait_kubeconfig(proc).await?;
    let api = Api {
        kube: Kube {
            server: kubeconfig.server.clone(),
            clients: clients(max_clients(), || kubeconfig.client())?,
        },
        spare: kubeconfig.client()?,
    };
    let spare = api.spare.clone();
    let readyz = format!("{}/readyz", kubeconfig.server);
    wait_ready(proc, what, || {
        client::expect(spare.get(&readyz), reqwest::StatusCode::OK)
    })
    .await?;
    Ok(api)
}

/// The kubeconfig appears once the server has written its certificates.
async fn wait_kubeconfig(capstan: &mut Proc) -> anyhow::Result<Kubeconfig> {
    let path = capstan.dir().join("data/admin.kubeconfig");
    let mut loaded = None;
    wait_ready(capstan, "capstan kubeconfig", || {
        let attempt = Kubeconfig::load(&path);
        let ok = attempt.is_ok();
        if ok {
            loaded = attempt.ok();
        }
        async move {
            if ok {
                Ok(())
            } else {
                Err(anyhow::anyhow!("no kubeconfig yet"))
            }
        }
    })
    .await?;
    loaded.context("kubeconfig vanished")
}

/// The processes under test, borrowed for memory readings and liveness checks.
struct Servers<'a> {
    capstan: &'a mut Proc,
    etcd: &'a mut Proc,
    backed: Option<&'a mut EtcdBacked>,
}

async fn measure(
    args: &Args,
    targets: &Targets,
    servers: &mut Servers<'_>,
    idle: (procs::Rss, procs::Rss),
    backed_idle: Option<(procs::Rss, procs::Rss)>,
) -> anyhow::Result<Report> {
    let mut notes = Vec::new();
    phases::create_namespaces(targets).await?;
    eprintln!("phase: {} pods", phases::BIG_LIST);
    let big = phases::big_list(targets, servers.capstan, servers.etcd, &mut notes).await?;
    let backed_big = match (&targets.capstan_etcd, &servers.backed) {
        (Some(api), Some(procs)) => Some(phases::big_list_backend(api, procs, &mut notes).await?),
        _ => None,
    };
    let after_big = (big.capstan_rss, big.etcd_rss);
    let (after_json, after_table) = (big.rss_after_json, big.rss_after_table);
    eprintln!("phase: matrix");
    phases::seed_list_sets(targets).await?;
    let cell = Limits {
        max_ops: args.cell_ops,
        max_time: Duration::from_secs_f64(args.cell_seconds),
    };
    let matrix = matrix::run(targets, cell, &mut notes).await?;
    eprintln!("phase: rate-limited creates");
    let Rates {
        capstan: rate_capstan,
        etcd: rate_etcd,
        capstan_etcd: rate_backed,
    } = phases::rate_limited(targets, &mut notes).await?;
    servers.capstan.check_alive()?;
    servers.etcd.check_alive()?;
    let end = (servers.capstan.rss_kib()?, servers.etcd.rss_kib()?);
    let backend = match (
        servers.backed.as_deref_mut(),
        backed_idle,
        backed_big,
        rate_backed,
    ) {
        (Some(procs), Some(idle), Some(big), Some(rate)) => {
            procs.check_alive()?;
            Some(EtcdBackedRun {
                idle,
                end: procs.rss_kib()?,
                big,
                rate,
                watch_details: matrix.backend_watch_details,
            })
        }
        _ => None,
    };
    Ok(Report {
        machine: String::new(),
        rows: matrix.rows,
        big,
        rate: (rate_capstan, rate_etcd),
        memory: Memory {
            idle,
            after_big,
            after_json,
            after_table,
            end,
        },
        notes,
        watch_details: matrix.watch_details,
        cell: format!(
            "at most {} ops or {} s, whichever comes first",
            args.cell_ops, args.cell_seconds
        ),
        backend,
    })
}
