//! Scheduler benchmark (issue 6): `capstan server --disable-agent` on SQLite with its built-in
//! scheduler, N simulated nodes (`capstan simulate-nodes`), then pods created directly through
//! the API; measures pods/s from the first create to the last binding seen on a watch, and each
//! pod's create → bound latency, beside upstream scheduler_perf's published floor at 5,000
//! nodes. Prints a markdown table.

#[allow(dead_code)]
#[path = "../client.rs"]
mod client;
#[allow(dead_code)]
#[path = "../procs.rs"]
mod procs;
#[allow(dead_code)]
#[path = "../stats.rs"]
mod stats;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};

use client::{Kubeconfig, collection, create_namespace, expect};
use procs::{Proc, start_capstan, temp_dir, wait_ready};
use stats::{ms, percentile};

/// Upstream scheduler_perf's SchedulingBasic floors at 5,000 nodes (pods/s), the range the
/// issue quotes.
const UPSTREAM_FLOOR: (f64, f64) = (680.0, 810.0);

#[derive(Parser, Debug)]
#[command(about = "Benchmark the scheduler end to end and print a markdown table")]
struct Args {
    /// The `capstan` binary (a release build for figures worth recording).
    #[arg(long)]
    capstan: PathBuf,
    /// Simulated nodes.
    #[arg(long, default_value_t = 5000)]
    nodes: usize,
    /// Pod counts, one row each, run one after the other on the same cluster.
    #[arg(long, value_delimiter = ',', default_value = "10000,30000")]
    pods: Vec<usize>,
    /// Concurrent create requests.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Bound on each row, in seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
}

/// Per pod: when its create was sent, and when the watch first showed it bound.
#[derive(Default)]
struct Times {
    sent: HashMap<String, Instant>,
    bound: HashMap<String, Instant>,
}

struct Row {
    workload: String,
    pods: usize,
    result: Result<(f64, Duration, Duration), String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let (mut server, _port) = start_capstan(&args.capstan, "capstan-server", None)?;
    let kubeconfig_path = server.dir().join("data/admin.kubeconfig");
    let kc = {
        let path = kubeconfig_path.clone();
        let mut kc = None;
        wait_ready(&mut server, "capstan server", || {
            let path = path.clone();
            let found = Kubeconfig::load(&path).ok();
            let ready = found.is_some();
            if let Some(k) = found {
                kc = Some(k);
            }
            async move {
                if ready {
                    Ok(())
                } else {
                    bail!("no kubeconfig yet")
                }
            }
        })
        .await?;
        kc.context("kubeconfig")?
    };
    let http = kc.client()?;
    wait_ready(&mut server, "API", || {
        let req = http.get(format!("{}/readyz", kc.server));
        async move { expect(req, StatusCode::OK).await }
    })
    .await?;

    eprintln!("registering {} simulated nodes", args.nodes);
    let started = Instant::now();
    let mut sim = simulate(&args, &kubeconfig_path)?;
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    loop {
        sim.check_alive()?;
        server.check_alive()?;
        let log = std::fs::read_to_string(sim.dir().join("simulate-nodes.log")).unwrap_or_default();
        if log.contains("simulated nodes ready") {
            break;
        }
        if Instant::now() > deadline {
            bail!("simulated nodes not ready; log tail:\n{}", sim.log_tail());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "{} nodes registered in {:.1} s",
        args.nodes,
        started.elapsed().as_secs_f64()
    );

    let mut rows = vec![];
    for (i, &n) in args.pods.iter().enumerate() {
        let ns = format!("bench-deploy-{i}");
        create_namespace(&http, &kc.server, &ns).await?;
        eprintln!("creating a Deployment of {n} replicas in {ns}");
        let timeout = Duration::from_secs(args.timeout);
        let result = run_deployment_row(&kc, &ns, n, timeout).await;
        server.check_alive()?;
        rows.push(Row {
            workload: "Deployment".into(),
            pods: n,
            result: result.map_err(|e| format!("failed: {e:#}")),
        });
        let ns = format!("bench-{i}");
        create_namespace(&http, &kc.server, &ns).await?;
        eprintln!("creating {n} pods in {ns}");
        let result = run_row(&kc, &ns, n, args.clients, Duration::from_secs(args.timeout)).await;
        server.check_alive()?;
        rows.push(Row {
            workload: "direct creates".into(),
            pods: n,
            result: result.map_err(|e| format!("failed: {e:#}")),
        });
    }
    println!("{}", render(&args, &rows));
    Ok(())
}

fn simulate(args: &Args, kubeconfig: &std::path::Path) -> anyhow::Result<Proc> {
    let dir = temp_dir("capstan-bench-sim-")?;
    let mut cmd = Command::new(&args.capstan);
    cmd.arg("simulate-nodes")
        .args([
            "--count",
            &args.nodes.to_string(),
            "--cpu",
            "32",
            "--memory",
            "256Gi",
            "--pods",
            "110",
        ])
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .env("RUST_LOG", "warn");
    Proc::spawn("simulate-nodes", cmd, dir)
}

async fn run_row(
    kc: &Kubeconfig,
    ns: &str,
    n: usize,
    clients: usize,
    timeout: Duration,
) -> anyhow::Result<(f64, Duration, Duration)> {
    let times = Arc::new(Mutex::new(Times::default()));
    let (open_tx, open_rx) = tokio::sync::oneshot::channel();
    let watch = tokio::spawn(watch_bound(
        kc.client()?,
        kc.server.clone(),
        ns.to_string(),
        times.clone(),
        n,
        open_tx,
    ));
    // The watch must be open before the first create.
    if open_rx.await.is_err() {
        return match watch.await {
            Ok(Err(e)) => Err(e),
            _ => Err(anyhow::anyhow!("watch ended before it opened")),
        };
    }
    let url = collection(&kc.server, ns, "pods");
    let conns: Vec<reqwest::Client> = (0..clients.div_ceil(8).max(1))
        .map(|_| kc.client())
        .collect::<anyhow::Result<_>>()?;
    let first = Instant::now();
    let creates = futures::stream::iter(0..n)
        .map(|i| {
            let http = conns[i % conns.len()].clone();
            let (url, times) = (url.clone(), times.clone());
            async move {
                let name = format!("p-{i}");
                let body = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                    "spec": {"containers": [{"name": "c", "image": "busybox",
                        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}});
                if let Ok(mut t) = times.lock() {
                    t.sent.insert(name, Instant::now());
                }
                expect(http.post(&url).json(&body), StatusCode::CREATED)
                    .await
                    .map(|_| ())
            }
        })
        .buffer_unordered(clients)
        .collect::<Vec<_>>()
        .await;
    if let Some(Err(e)) = creates.into_iter().find(|r| r.is_err()) {
        watch.abort();
        return Err(e.context("creating pods"));
    }
    eprintln!(
        "  {n} creates sent in {:.1} s",
        first.elapsed().as_secs_f64()
    );
    await_bound(watch, &times, n, first, timeout).await
}

/// One Deployment of `n` replicas; a pod's latency runs from the watch first showing it (the
/// ReplicaSet controller created it) to the watch showing it bound.
async fn run_deployment_row(
    kc: &Kubeconfig,
    ns: &str,
    n: usize,
    timeout: Duration,
) -> anyhow::Result<(f64, Duration, Duration)> {
    let times = Arc::new(Mutex::new(Times::default()));
    let (open_tx, open_rx) = tokio::sync::oneshot::channel();
    let watch = tokio::spawn(watch_bound(
        kc.client()?,
        kc.server.clone(),
        ns.to_string(),
        times.clone(),
        n,
        open_tx,
    ));
    if open_rx.await.is_err() {
        bail!("watch ended before it opened");
    }
    let labels = json!({"app": "bench"});
    let body = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "bench"},
        "spec": {"replicas": n, "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels},
                "spec": {"containers": [{"name": "c", "image": "busybox",
                    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}}}});
    let first = Instant::now();
    let url = format!("{}/apis/apps/v1/namespaces/{ns}/deployments", kc.server);
    expect(kc.client()?.post(&url).json(&body), StatusCode::CREATED).await?;
    await_bound(watch, &times, n, first, timeout).await
}

/// Waits for the watch to see all `n` pods bound; pods/s since `first`, p50 and p99 latency.
async fn await_bound(
    watch: tokio::task::JoinHandle<anyhow::Result<Instant>>,
    times: &Mutex<Times>,
    n: usize,
    first: Instant,
    timeout: Duration,
) -> anyhow::Result<(f64, Duration, Duration)> {
    let last = match tokio::time::timeout(timeout, watch).await {
        Ok(Ok(Ok(last))) => last,
        Ok(Ok(Err(e))) => return Err(e),
        Ok(Err(e)) => bail!("watch task: {e}"),
        Err(_) => {
            let bound = times.lock().map(|t| t.bound.len()).unwrap_or(0);
            bail!("only {bound}/{n} pods bound within {timeout:?}")
        }
    };
    let t = times.lock().map_err(|_| anyhow::anyhow!("times lock"))?;
    let mut lat: Vec<Duration> = t
        .bound
        .iter()
        .filter_map(|(k, b)| t.sent.get(k).map(|s| b.saturating_duration_since(*s)))
        .collect();
    lat.sort();
    let rate = n as f64 / last.duration_since(first).as_secs_f64();
    Ok((rate, percentile(&lat, 50.0), percentile(&lat, 99.0)))
}

/// Watches the namespace's pods; returns when `n` distinct pods were seen bound. A pod first
/// seen by the watch counts as sent then unless its create was timed already.
async fn watch_bound(
    http: reqwest::Client,
    server: String,
    ns: String,
    times: Arc<Mutex<Times>>,
    n: usize,
    opened: tokio::sync::oneshot::Sender<()>,
) -> anyhow::Result<Instant> {
    let url = format!(
        "{}?watch=1&allowWatchBookmarks=false&timeoutSeconds=3600",
        collection(&server, &ns, "pods")
    );
    let resp = http
        .get(&url)
        .timeout(Duration::from_secs(3600))
        .send()
        .await
        .context("watch")?;
    if !resp.status().is_success() {
        bail!("watch: {}", resp.status());
    }
    let _ = opened.send(());
    let mut body = resp.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    let mut seen = 0;
    while let Some(chunk) = body.next().await {
        buf.extend_from_slice(&chunk.context("watch body")?);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let Ok(ev) = serde_json::from_slice::<Value>(&line) else {
                continue;
            };
            let obj = &ev["object"];
            let name = obj["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let now = Instant::now();
            let mut t = times.lock().map_err(|_| anyhow::anyhow!("times lock"))?;
            if obj["spec"]["nodeName"].as_str().is_none_or(str::is_empty) {
                t.sent.entry(name).or_insert(now);
                continue;
            }
            if let std::collections::hash_map::Entry::Vacant(e) = t.bound.entry(name) {
                e.insert(now);
                seen += 1;
                if seen == n {
                    return Ok(now);
                }
            }
        }
    }
    bail!("watch ended after {seen}/{n} pods bound")
}

fn render(args: &Args, rows: &[Row]) -> String {
    let mut out = format!(
        "Scheduler: `capstan server` on SQLite (built-in scheduler), {} simulated nodes \
         (`capstan simulate-nodes`, 32 CPU / 256Gi / 110 pods each, Leases every 10 s, pods marked \
         Running), pods created with {} concurrent requests; pods/s = pods / (first create sent → \
         last binding seen on a watch); latency = create sent → bound seen on the watch. Upstream \
         floor: scheduler_perf at 5,000 nodes, {}–{} pods/s.\n\n",
        args.nodes, args.clients, UPSTREAM_FLOOR.0, UPSTREAM_FLOOR.1
    );
    out.push_str("| workload | nodes | pods | pods/s | p50 create→bound ms | p99 create→bound ms | upstream pods/s | ratio |\n");
    out.push_str("| --- | --- | --- | --- | --- | --- | --- | --- |\n");
    for r in rows {
        match &r.result {
            Ok((rate, p50, p99)) => out.push_str(&format!(
                "| {} | {} | {} | {:.0} | {} | {} | {:.0}–{:.0} | {:.1}×–{:.1}× |\n",
                r.workload,
                args.nodes,
                r.pods,
                rate,
                ms(*p50),
                ms(*p99),
                UPSTREAM_FLOOR.0,
                UPSTREAM_FLOOR.1,
                rate / UPSTREAM_FLOOR.1,
                rate / UPSTREAM_FLOOR.0
            )),
            Err(e) => out.push_str(&format!(
                "| {} | {} | {} | {e} | | | {:.0}–{:.0} | |\n",
                r.workload, args.nodes, r.pods, UPSTREAM_FLOOR.0, UPSTREAM_FLOOR.1
            )),
        }
    }
    out
}
