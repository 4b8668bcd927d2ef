//! Pod start benchmark (issue 5): pods created through the API, measured from the create call
//! to the watch event that shows them Running, with a bounded number in flight, on a
//! `capstan server --disable-agent` plus a separate `capstan agent` (so the agent's memory is
//! its own). Beside it in the same run: `podman kube play` of the same pod spec at the same
//! concurrency, and bare `runc run --detach` of the same image's bundle. Prints a markdown
//! table and rewrites the pods block of docs/benchmarks.md.

#[path = "../block.rs"]
mod block;
#[path = "../client.rs"]
#[allow(dead_code)]
mod client;
#[path = "../podman.rs"]
mod podman;
#[allow(dead_code)]
#[path = "../procs.rs"]
mod procs;
#[allow(dead_code)]
#[path = "../stats.rs"]
mod stats;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use capstan_runtime::container::{ContainerRuntime, ImageSource, RuntimeConfig};
use capstan_runtime::cri::RuntimeService;
use capstan_runtime::cri::runtime_service::{
    ContainerConfig, ContainerMetadata, PodSandboxConfig, PodSandboxMetadata,
};
use capstan_runtime::image::ImageStore;
use clap::Parser;
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use stats::{ms, percentile};
use tokio::sync::Semaphore;

use client::{Kubeconfig, collection, create_namespace, expect, list_resource_version};
use podman::Podman;
use procs::{Proc, free_port, start_capstan, temp_dir, wait_ready};

const IMAGE: &str = "bench.local/busybox:latest";
const NAMESPACE: &str = "pods-bench";
const NODE: &str = "bench-node";
const START: &str = "<!-- pods-bench:start -->";
const END: &str = "<!-- pods-bench:end -->";
/// Upper bound for the whole measured run; a stuck pod fails the benchmark instead of hanging it.
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Parser, Debug)]
struct Args {
    /// The capstan binary (server, agent, shim, pause).
    #[arg(long)]
    capstan: PathBuf,
    /// Pods per contender.
    #[arg(long, default_value_t = 50)]
    pods: usize,
    /// Pods in flight (created, not yet Running) at most.
    #[arg(long, default_value_t = 10)]
    in_flight: usize,
    /// Set spec.nodeName at create (skips the scheduler; the kubelet path alone).
    #[arg(long)]
    bind_directly: bool,
    /// Seconds the agent sits idle before its memory is read.
    #[arg(long, default_value_t = 10)]
    idle_seconds: u64,
    /// The markdown file whose pods block is rewritten.
    #[arg(long)]
    output: Option<PathBuf>,
    #[arg(long)]
    no_podman: bool,
    #[arg(long, default_value = "unknown")]
    revision: String,
}

struct Row {
    name: String,
    what: &'static str,
    samples: Vec<Duration>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let work = temp_dir("capstan-pods-bench-")?;
    let archive = work.path().join("busybox.tar");
    capstan_runtime::testimage::busybox_oci_archive(&archive, IMAGE)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut rows = Vec::new();
    let (ours, agent_rss) = rt.block_on(capstan_pods(&args, &archive))?;
    rows.push(ours);
    if !args.no_podman {
        rows.push(podman_kube_play(&args, work.path(), &archive)?);
    }
    rows.push(rt.block_on(runc_run(&args, work.path(), &archive))?);
    let table = render(&rows, agent_rss, &args);
    println!("{table}");
    if let Some(path) = &args.output {
        block::write_block(path, START, END, &table)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// Names unique to this run for everything the agent makes on the host.
struct HostNames {
    tag: String,
    bridge: String,
    cidr: String,
}

impl HostNames {
    fn new() -> HostNames {
        let n = std::process::id() % 200;
        HostNames {
            tag: format!("capstan-podbench-{}", std::process::id()),
            bridge: format!("cpb{n}"),
            cidr: format!("10.{}.{}.0/24", 200 + n / 100, n % 100),
        }
    }
}

async fn capstan_pods(args: &Args, archive: &Path) -> anyhow::Result<(Row, procs::Rss)> {
    let (mut server, port) = start_capstan(&args.capstan, "capstan-server", None)?;
    let kubeconfig_path = server.dir().join("data/admin.kubeconfig");
    wait_ready(&mut server, "capstan server", || async {
        let kc = Kubeconfig::load(&kubeconfig_path)?;
        expect(
            kc.client()?.get(format!("{}/readyz", kc.server)),
            StatusCode::OK,
        )
        .await
    })
    .await?;
    let kc = Kubeconfig::load(&kubeconfig_path)?;
    let http = kc.client()?;
    let names = HostNames::new();
    let agent_dir = temp_dir("capstan-pods-bench-agent-")?;
    let data = agent_dir.path().join("data");
    let status = Command::new(&args.capstan)
        .args(["images", "import", "--data-dir"])
        .arg(&data)
        .arg(archive)
        .stdout(Stdio::null())
        .status()
        .context("capstan images import")?;
    ensure!(status.success(), "capstan images import failed");
    let token = std::fs::read_to_string(server.dir().join("data/token"))
        .context("reading the server's join token")?;
    let mut cmd = Command::new(&args.capstan);
    cmd.arg("agent")
        .args(["--server", &format!("https://127.0.0.1:{port}")])
        .args(["--token", token.trim()])
        .arg("--data-dir")
        .arg(&data)
        .args(["--node-name", NODE, "--node-ip", "127.0.0.1"])
        .args(["--kubelet-port", &free_port()?.to_string()])
        .args(["--pod-cidr", &names.cidr, "--cni-bridge", &names.bridge])
        .arg("--run-dir")
        .arg(PathBuf::from("/run").join(&names.tag))
        .args(["--cgroup-parent", &format!("/{}", names.tag)])
        .arg("--pod-log-dir")
        .arg(agent_dir.path().join("logs"))
        .env("RUST_LOG", "warn");
    let mut agent = Proc::spawn("capstan-agent", cmd, agent_dir)?;
    let node_url = format!("{}/api/v1/nodes/{NODE}", kc.server);
    wait_ready(&mut agent, "the agent's node", || async {
        let body = expect(http.get(&node_url), StatusCode::OK).await?;
        let node: Value = serde_json::from_slice(&body)?;
        let ready = node
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            });
        ensure!(ready, "node not Ready yet");
        Ok(())
    })
    .await?;
    // A settling interval for the measurement, not a wait for a condition.
    tokio::time::sleep(Duration::from_secs(args.idle_seconds)).await;
    let rss = agent.rss_kib()?;
    create_namespace(&http, &kc.server, NAMESPACE).await?;
    let result = tokio::time::timeout(RUN_TIMEOUT, measure_pods(args, &kc)).await;
    let cleanup = delete_pods(&kc).await;
    agent.check_alive()?;
    let samples = result.context("pods did not all reach Running in time")??;
    cleanup?;
    drop(agent);
    drop(server);
    remove_host_leftovers(&names);
    Ok((
        Row {
            name: format!("Capstan ({} in flight)", args.in_flight),
            what: if args.bind_directly {
                "create (nodeName set) → watch shows Running"
            } else {
                "create → scheduled → watch shows Running"
            },
            samples,
        },
        rss,
    ))
}

fn pod_json(i: usize, bind_directly: bool) -> Value {
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("bench-{i}"), "namespace": NAMESPACE},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": IMAGE, "imagePullPolicy": "Never",
                            "command": ["sleep", "3600"]}]
        }
    });
    if bind_directly {
        pod["spec"]["nodeName"] = json!(NODE);
    }
    pod
}

/// Creates the pods with at most `in_flight` not yet Running; returns create→Running times.
async fn measure_pods(args: &Args, kc: &Kubeconfig) -> anyhow::Result<Vec<Duration>> {
    let http = kc.client()?;
    let url = collection(&kc.server, NAMESPACE, "pods");
    let rv = list_resource_version(&http, &url).await?;
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let slots = Arc::new(Semaphore::new(args.in_flight));
    let watcher = tokio::spawn(watch_running(
        kc.client()?,
        url.clone(),
        rv,
        args.pods,
        sent.clone(),
        slots.clone(),
    ));
    for i in 0..args.pods {
        let permit = slots.clone().acquire_owned().await?;
        // The watch hands the slot back when this pod runs.
        permit.forget();
        sent.lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .insert(format!("bench-{i}"), Instant::now());
        expect(
            http.post(&url).json(&pod_json(i, args.bind_directly)),
            StatusCode::CREATED,
        )
        .await
        .with_context(|| format!("create pod bench-{i}"))?;
    }
    watcher.await?
}

async fn watch_running(
    http: reqwest::Client,
    url: String,
    mut rv: String,
    want: usize,
    sent: Arc<Mutex<HashMap<String, Instant>>>,
    slots: Arc<Semaphore>,
) -> anyhow::Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(want);
    let mut done = std::collections::HashSet::new();
    while samples.len() < want {
        let resp = http
            .get(format!(
                "{url}?watch=1&resourceVersion={rv}&timeoutSeconds=20&allowWatchBookmarks=false"
            ))
            .send()
            .await?;
        ensure!(
            resp.status() == StatusCode::OK,
            "watch: HTTP {}",
            resp.status()
        );
        let mut stream = resp.bytes_stream();
        let mut buf = Vec::new();
        while let Some(chunk) = stream.next().await {
            buf.extend_from_slice(&chunk?);
            while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                let event: Value = serde_json::from_slice(&line).context("watch event JSON")?;
                let pod = &event["object"];
                if let Some(v) = pod
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                {
                    rv = v.to_string();
                }
                let name = pod["metadata"]["name"].as_str().unwrap_or_default();
                if pod["status"]["phase"] == "Running" && done.insert(name.to_string()) {
                    let started = sent
                        .lock()
                        .map_err(|_| anyhow::anyhow!("poisoned"))?
                        .get(name)
                        .copied()
                        .with_context(|| format!("Running event for unknown pod {name}"))?;
                    samples.push(started.elapsed());
                    slots.add_permits(1);
                }
            }
        }
    }
    Ok(samples)
}

/// Deletes the namespace's pods and waits until the agent has removed them.
async fn delete_pods(kc: &Kubeconfig) -> anyhow::Result<()> {
    let http = kc.client()?;
    let url = collection(&kc.server, NAMESPACE, "pods");
    expect(http.delete(&url), StatusCode::OK).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let body = expect(http.get(&url), StatusCode::OK).await?;
        let list: Value = serde_json::from_slice(&body)?;
        let left = list["items"].as_array().map_or(0, Vec::len);
        if left == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{left} pods still present 120 s after delete");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The bridge and the cgroup parent outlive the agent by design; remove this run's.
fn remove_host_leftovers(names: &HostNames) {
    let _ = Command::new("ip")
        .args(["link", "del", &names.bridge])
        .stderr(Stdio::null())
        .status();
    for controller in [
        "cpu", "memory", "pids", "cpuacct", "blkio", "devices", "freezer",
    ] {
        let _ = std::fs::remove_dir(format!("/sys/fs/cgroup/{controller}/{}", names.tag));
    }
    let _ = std::fs::remove_dir_all(PathBuf::from("/run").join(&names.tag));
}

/// `podman kube play` of the same pod spec, `in_flight` at a time.
fn podman_kube_play(args: &Args, work: &Path, archive: &Path) -> anyhow::Result<Row> {
    let podman = Podman::new(work)?;
    let result = (|| {
        let image = podman.load(archive)?;
        let dir = work.join("kube-play");
        std::fs::create_dir_all(&dir)?;
        let mut files = Vec::new();
        for i in 0..args.pods {
            let mut pod = pod_json(i, false);
            pod["spec"]["containers"][0]["image"] = json!(image);
            let path = dir.join(format!("pod-{i}.json"));
            std::fs::write(&path, serde_json::to_vec(&pod)?)?;
            files.push(path);
        }
        let samples = Mutex::new(Vec::new());
        let errors = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            let (samples, errors, podman) = (&samples, &errors, &podman);
            for chunk in files.chunks(args.pods.div_ceil(args.in_flight.max(1))) {
                s.spawn(move || {
                    for f in chunk {
                        // Files, not pipes: conmon inherits podman's stdio and outlives it.
                        let err_path = f.with_extension("err");
                        let t = Instant::now();
                        let status = std::fs::File::create(&err_path).and_then(|err| {
                            podman
                                .cmd(&["kube", "play"])
                                .arg(f)
                                .stdout(Stdio::null())
                                .stderr(err)
                                .status()
                        });
                        let took = t.elapsed();
                        match status {
                            Ok(s) if s.success() => {
                                samples.lock().map(|mut v| v.push(took)).ok();
                            }
                            Ok(_) => {
                                let msg = std::fs::read_to_string(&err_path).unwrap_or_default();
                                errors.lock().map(|mut v| v.push(msg)).ok();
                            }
                            Err(e) => {
                                errors.lock().map(|mut v| v.push(e.to_string())).ok();
                            }
                        }
                    }
                });
            }
        });
        let errors = errors.into_inner().unwrap_or_default();
        if let Some(first) = errors.first() {
            bail!("podman kube play failed {} times: {first}", errors.len());
        }
        Ok(samples.into_inner().unwrap_or_default())
    })();
    podman.reset();
    Ok(Row {
        name: format!("podman kube play ({} in flight)", args.in_flight),
        what: "same pod spec, default network, returns when started",
        samples: result?,
    })
}

/// `runc run --detach` of the bundle Capstan's runtime builds for the same container, one at a
/// time (the bundle's cgroup path is fixed).
async fn runc_run(args: &Args, work: &Path, archive: &Path) -> anyhow::Result<Row> {
    let names = HostNames::new();
    let store = ImageStore::open(&work.join("runc-images"))?;
    store.import_archive(archive)?;
    let run_dir = PathBuf::from("/run").join(format!("{}-runc", names.tag));
    let mut config = RuntimeConfig::new(
        work.join("runc-runtime"),
        run_dir.clone(),
        args.capstan.clone(),
    );
    config.cgroup_parent = format!("/{}-runc", names.tag);
    let images: Arc<dyn ImageSource> = Arc::new(store);
    let runtime = ContainerRuntime::new(config, images)?;
    let sandbox = PodSandboxConfig {
        metadata: PodSandboxMetadata {
            name: "bench".into(),
            uid: "bench".into(),
            namespace: "default".into(),
            attempt: 0,
        },
        hostname: "bench".into(),
        log_directory: work.join("runc-logs"),
        ..Default::default()
    };
    let result = async {
        let sb = runtime.run_pod_sandbox(&sandbox, "").await?;
        let container = ContainerConfig {
            metadata: ContainerMetadata {
                name: "bundle".into(),
                attempt: 0,
            },
            image: IMAGE.into(),
            command: vec!["sleep".into(), "3600".into()],
            ..Default::default()
        };
        let owner = runtime.create_container(&sb, &container, &sandbox).await?;
        let bundle = runtime.container_dir(&owner).join("bundle");
        let root = work.join("runc-root");
        let mut samples = Vec::new();
        for i in 0..args.pods {
            let id = format!("podbench-{i}");
            let t = Instant::now();
            // A file, not a pipe: the detached container inherits runc's stdio, and a pipe
            // would never reach EOF while it runs.
            let errors = std::fs::File::create(work.join("runc-run.err"))?;
            let status = Command::new("runc")
                .arg("--root")
                .arg(&root)
                .args(["run", "--detach", "--bundle"])
                .arg(&bundle)
                .arg(&id)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(errors)
                .status()
                .context("running runc")?;
            let took = t.elapsed();
            let _ = Command::new("runc")
                .arg("--root")
                .arg(&root)
                .args(["delete", "--force", &id])
                .stderr(Stdio::null())
                .status();
            if !status.success() {
                let errors = std::fs::read_to_string(work.join("runc-run.err")).unwrap_or_default();
                bail!("runc run failed: {errors}");
            }
            samples.push(took);
        }
        runtime.remove_container(&owner).await?;
        anyhow::Ok(samples)
    }
    .await;
    for p in runtime.list_pod_sandboxes(&Default::default()).await? {
        runtime.remove_pod_sandbox(&p.id).await?;
    }
    let _ = std::fs::remove_dir_all(&run_dir);
    Ok(Row {
        name: "runc run --detach (one at a time)".into(),
        what: "same image's bundle, no network",
        samples: result?,
    })
}

fn render(rows: &[Row], agent: procs::Rss, args: &Args) -> String {
    let summary = |s: &[Duration]| {
        let mut s = s.to_vec();
        s.sort_unstable();
        (percentile(&s, 50.0), percentile(&s, 99.0))
    };
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let (ours50, ours99) = rows
        .first()
        .map_or(Default::default(), |r| summary(&r.samples));
    let ratio = |ours: Duration, peer: Duration| {
        if peer.is_zero() {
            "—".to_string()
        } else {
            format!("{:.2}×", ours.as_secs_f64() / peer.as_secs_f64())
        }
    };
    let mut t = String::new();
    t.push_str("## Pods: create → Running\n\n");
    t.push_str(&format!(
        "- date: {} UTC, nproc {nproc}; Capstan revision {}; {} pods per contender\n\n",
        jiff::Timestamp::now().strftime("%Y-%m-%d %H:%M"),
        args.revision,
        args.pods
    ));
    t.push_str("| contender | measured | p50 ms | p99 ms | Capstan p50 / this p50 |\n| --- | --- | ---: | ---: | ---: |\n");
    for r in rows {
        let (p50, p99) = summary(&r.samples);
        t.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            r.name,
            r.what,
            ms(p50),
            ms(p99),
            ratio(ours50, p50)
        ));
    }
    t.push_str(&format!(
        "\nCapstan p50 {} ms / p99 {} ms (targets ≤ 100 / ≤ 300 ms). `capstan agent` idle RSS {:.1} MiB (peak {:.1} MiB) after {} s idle with its node Ready (target ≤ 25 MB).\n",
        ms(ours50),
        ms(ours99),
        agent.rss as f64 / 1024.0,
        agent.hwm as f64 / 1024.0,
        args.idle_seconds
    ));
    t
}
