//! `capstan-bench`: the API benchmark of issue 2. Starts its own `capstan server
//! --disable-agent` and a raw etcd as the peer, drives both with the same objects and client
//! counts, and prints a markdown table (also written into docs/benchmarks.md).
//!
//! It owns the load generator and the report; it does not link any Capstan crate, so it measures
//! the server exactly as a remote client sees it.

mod client;
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
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use crate::client::{Etcd, Kubeconfig, etcd_client};
use crate::ops::{Kube, Kv};
use crate::phases::{CONCURRENCY, Targets, clients};
use crate::procs::{Proc, wait_ready};
use crate::report::{Memory, Report};
use crate::runner::Limits;

/// Hard bound on the whole run; a hang fails instead of stalling CI or a terminal.
const RUN_TIMEOUT: Duration = Duration::from_secs(600);
/// Time the servers get after start before their idle memory is read.
const SETTLE: Duration = Duration::from_secs(2);

#[derive(Parser, Debug)]
#[command(about = "Benchmark Capstan's API beside etcd and print a markdown table")]
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
    let machine = report::machine_facts(args.revision.as_deref());
    eprintln!("starting capstan and etcd");
    let (mut capstan, _port) = procs::start_capstan(&args.capstan)?;
    let (mut etcd, etcd_url) = procs::start_etcd(&args.etcd)?;
    let kubeconfig = wait_kubeconfig(&mut capstan).await?;
    let max = *CONCURRENCY.iter().max().unwrap_or(&64);
    let targets = Targets {
        kube: Kube {
            server: kubeconfig.server.clone(),
            clients: clients(max, || kubeconfig.client())?,
        },
        kv: Kv {
            etcd: Etcd { url: etcd_url },
            clients: clients(max, etcd_client)?,
        },
        spare: kubeconfig.client()?,
    };
    let spare = targets.spare.clone();
    let readyz = format!("{}/readyz", kubeconfig.server);
    wait_ready(&mut capstan, "capstan", || {
        client::expect(spare.get(&readyz), reqwest::StatusCode::OK)
    })
    .await?;
    let etcd_gw = targets.kv.clone();
    wait_ready(&mut etcd, "etcd", || async {
        etcd_gw.etcd.health(&etcd_gw.clients[0]).await
    })
    .await?;
    tokio::time::sleep(SETTLE).await;
    let idle = (capstan.rss_kib()?, etcd.rss_kib()?);

    let mut report = measure(args, &targets, &mut capstan, &mut etcd, idle).await?;
    report.machine = machine;
    let text = report::render(&report);
    println!("{text}");
    if let Some(path) = &args.output {
        report::write_doc(path, &text)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
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

async fn measure(
    args: &Args,
    targets: &Targets,
    capstan: &mut Proc,
    etcd: &mut Proc,
    idle: (procs::Rss, procs::Rss),
) -> anyhow::Result<Report> {
    let mut notes = Vec::new();
    phases::create_namespaces(targets).await?;
    eprintln!("phase: {} pods", phases::BIG_LIST);
    let big = phases::big_list(targets, capstan, etcd, &mut notes).await?;
    let after_big = (big.capstan_rss, big.etcd_rss);
    let (after_json, after_table) = (big.rss_after_json, big.rss_after_table);
    eprintln!("phase: matrix");
    phases::seed_list_sets(targets).await?;
    let cell = Limits {
        max_ops: args.cell_ops,
        max_time: Duration::from_secs_f64(args.cell_seconds),
    };
    let mut watch_details = Vec::new();
    let rows = phases::matrix(targets, cell, &mut notes, &mut watch_details).await?;
    eprintln!("phase: rate-limited creates");
    let rate = phases::rate_limited(targets, &mut notes).await?;
    capstan.check_alive()?;
    etcd.check_alive()?;
    let end = (capstan.rss_kib()?, etcd.rss_kib()?);
    Ok(Report {
        machine: String::new(),
        rows,
        big,
        rate,
        memory: Memory {
            idle,
            after_big,
            after_json,
            after_table,
            end,
        },
        notes,
        watch_details,
        cell: format!(
            "at most {} ops or {} s, whichever comes first",
            args.cell_ops, args.cell_seconds
        ),
    })
}
