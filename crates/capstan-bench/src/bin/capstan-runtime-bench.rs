//! Container start-to-exit benchmark (issue 4): a container running `true`, measured from the
//! create call to its recorded exit, for Capstan's runtime (shim + runc) beside bare `runc run`
//! and `crun run` of the very same bundle and `podman run --network none` of the same image.
//! Prints a markdown table and rewrites the runtime block of docs/benchmarks.md.

#[path = "../block.rs"]
mod block;
#[path = "../podman.rs"]
mod podman;
#[allow(dead_code)]
#[path = "../stats.rs"]
mod stats;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use capstan_runtime::container::{ContainerRuntime, ImageSource, RuntimeConfig};
use capstan_runtime::cri::RuntimeService;
use capstan_runtime::cri::runtime_service::{
    ContainerConfig, ContainerMetadata, PodSandboxConfig, PodSandboxMetadata,
};
use capstan_runtime::image::ImageStore;
use clap::Parser;
use podman::Podman;
use stats::{ms, percentile};

const IMAGE: &str = "bench.local/busybox:latest";
const START: &str = "<!-- runtime-bench:start -->";
const END: &str = "<!-- runtime-bench:end -->";

#[derive(Parser, Debug)]
struct Args {
    /// The capstan binary (re-executed as the shim and the pause process).
    #[arg(long)]
    capstan: PathBuf,
    /// Runs per contender.
    #[arg(long, default_value_t = 50)]
    runs: usize,
    /// Unmeasured runs first.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// The markdown file whose runtime block is rewritten.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Skip podman (it needs its own storage set-up, ~10 s).
    #[arg(long)]
    no_podman: bool,
    #[arg(long, default_value = "unknown")]
    revision: String,
}

struct Row {
    name: &'static str,
    what: &'static str,
    samples: Vec<Duration>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let work = tempfile::Builder::new()
        .prefix("capstan-runtime-bench-")
        .tempdir()?;
    let tag = work
        .path()
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("bench")
        .to_string();
    let run_dir = PathBuf::from("/run").join(&tag);
    let archive = work.path().join("busybox.tar");
    capstan_runtime::testimage::busybox_oci_archive(&archive, IMAGE)?;
    let store = ImageStore::open(&work.path().join("images"))?;
    store.import_archive(&archive)?;
    let mut config = RuntimeConfig::new(
        work.path().join("runtime"),
        run_dir.clone(),
        args.capstan.clone(),
    );
    config.cgroup_parent = format!("/{tag}");
    let images: Arc<dyn ImageSource> = Arc::new(store);
    let runtime = ContainerRuntime::new(config, images)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = rt.block_on(measure(&runtime, &args, work.path(), &archive));
    let cleanup = rt.block_on(async {
        for p in runtime.list_pod_sandboxes(&Default::default()).await? {
            runtime.remove_pod_sandbox(&p.id).await?;
        }
        anyhow::Ok(())
    });
    let _ = std::fs::remove_dir_all(run_dir.join("netns"));
    let _ = std::fs::remove_dir_all(&run_dir);
    let (rows, remove, phases) = result?;
    cleanup?;
    let table = render(&rows, &remove, &phases, &args);
    println!("{table}");
    if let Some(path) = &args.output {
        block::write_block(path, START, END, &table)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn container(name: &str) -> ContainerConfig {
    ContainerConfig {
        metadata: ContainerMetadata {
            name: name.into(),
            attempt: 0,
        },
        image: IMAGE.into(),
        command: vec!["true".into()],
        ..Default::default()
    }
}

async fn measure(
    runtime: &ContainerRuntime,
    args: &Args,
    work: &Path,
    archive: &Path,
) -> anyhow::Result<(Vec<Row>, Vec<Duration>, [Duration; 3])> {
    let sandbox = PodSandboxConfig {
        metadata: PodSandboxMetadata {
            name: "bench".into(),
            uid: "bench".into(),
            namespace: "default".into(),
            attempt: 0,
        },
        hostname: "bench".into(),
        log_directory: work.join("pods"),
        ..Default::default()
    };
    let sb = runtime.run_pod_sandbox(&sandbox, "").await?;
    let mut ours = Vec::new();
    let mut remove = Vec::new();
    let mut phases: [Vec<Duration>; 3] = Default::default();
    for i in 0..args.warmup + args.runs {
        let t = Instant::now();
        let id = runtime
            .create_container(&sb, &container(&format!("c{i}")), &sandbox)
            .await?;
        let created = t.elapsed();
        runtime.start_container(&id).await?;
        let started = t.elapsed();
        if !runtime.wait_container(&id, Duration::from_secs(30)).await? {
            bail!("container {id} did not exit");
        }
        let took = t.elapsed();
        let status = runtime.container_status(&id).await?;
        if status.exit_code != 0 {
            bail!("container exited {}: {}", status.exit_code, status.message);
        }
        let t = Instant::now();
        runtime.remove_container(&id).await?;
        if i >= args.warmup {
            ours.push(took);
            remove.push(t.elapsed());
            phases[0].push(created);
            phases[1].push(started - created);
            phases[2].push(took - started);
        }
    }
    // The same bundle for the bare runtimes: a created, never started container of ours.
    let bundle_owner = runtime
        .create_container(&sb, &container("bundle"), &sandbox)
        .await?;
    let bundle = runtime.container_dir(&bundle_owner).join("bundle");
    let mut rows = vec![Row {
        name: "Capstan (shim + runc)",
        what: "create → start → exit recorded",
        samples: ours,
    }];
    for (name, binary) in [("runc run", "runc"), ("crun run", "crun")] {
        let root = work.join(format!("{binary}-root"));
        let mut samples = Vec::new();
        for i in 0..args.warmup + args.runs {
            let t = Instant::now();
            let status = Command::new(binary)
                .arg("--root")
                .arg(&root)
                .args(["run", "--bundle"])
                .arg(&bundle)
                .arg(format!("bench-{i}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .output()
                .with_context(|| format!("running {binary}"))?;
            let took = t.elapsed();
            if !status.status.success() {
                bail!(
                    "{binary} run failed: {}",
                    String::from_utf8_lossy(&status.stderr)
                );
            }
            if i >= args.warmup {
                samples.push(took);
            }
        }
        rows.push(Row {
            name,
            what: "same bundle, foreground",
            samples,
        });
    }
    runtime.remove_container(&bundle_owner).await?;
    if !args.no_podman {
        rows.push(Row {
            name: "podman run --network none",
            what: "same image, cgroupfs",
            samples: podman(work, archive, args)?,
        });
    }
    let phases = phases.map(|mut p| {
        p.sort_unstable();
        percentile(&p, 50.0)
    });
    Ok((rows, remove, phases))
}

fn podman(work: &Path, archive: &Path, args: &Args) -> anyhow::Result<Vec<Duration>> {
    let podman = Podman::new(work)?;
    let image = podman.load(archive)?;
    let mut samples = Vec::new();
    let mut result = Ok(());
    for i in 0..args.warmup + args.runs {
        let t = Instant::now();
        let out = podman
            .cmd(&["run", "--network", "none", &image, "true"])
            .output()?;
        let took = t.elapsed();
        if !out.status.success() {
            result = Err(anyhow::anyhow!(
                "podman run failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
            break;
        }
        if i >= args.warmup {
            samples.push(took);
        }
    }
    podman.reset();
    result.map(|()| samples)
}

fn render(rows: &[Row], remove: &[Duration], phases: &[Duration; 3], args: &Args) -> String {
    let summary = |s: &[Duration]| {
        let mut s = s.to_vec();
        s.sort_unstable();
        (percentile(&s, 50.0), percentile(&s, 99.0))
    };
    let (runc50, runc99) = rows
        .iter()
        .find(|r| r.name == "runc run")
        .map_or((Duration::ZERO, Duration::ZERO), |r| summary(&r.samples));
    let ratio = |a: Duration, b: Duration| {
        if b.is_zero() {
            "—".to_string()
        } else {
            format!("{:.2}×", a.as_secs_f64() / b.as_secs_f64())
        }
    };
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    let mut t = String::new();
    t.push_str("## Container runtime: start to exit of `true`\n\n");
    t.push_str(&format!(
        "- date: {} UTC, nproc {nproc}, load average before the run {}\n- Capstan revision: {}; {} runs per contender after {} warm-up runs\n\n",
        jiff::Timestamp::now().strftime("%Y-%m-%d %H:%M"),
        load.join(" "),
        args.revision,
        args.runs,
        args.warmup
    ));
    t.push_str("| contender | measured | p50 ms | p99 ms | p50 vs runc | p99 vs runc |\n| --- | --- | ---: | ---: | ---: | ---: |\n");
    for r in rows {
        let (p50, p99) = summary(&r.samples);
        t.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            r.name,
            r.what,
            ms(p50),
            ms(p99),
            ratio(p50, runc50),
            ratio(p99, runc99)
        ));
    }
    let (r50, r99) = summary(remove);
    t.push_str(&format!(
        "\nCapstan's remove (runc delete, unmount, cgroup and state cleanup), not included above: p50 {} ms, p99 {} ms. Target: Capstan ≤ 1.3× bare runc.\n",
        ms(r50),
        ms(r99)
    ));
    t.push_str(&format!(
        "Capstan's time by phase (p50): create (image resolve, overlay mount, spec, state files) {} ms; start (shim exec, `runc run --detach`, start report) {} ms; start → exit recorded (container runs `true`, shim reaps, drains the log pipes, checks OOM, writes exit.json, exits) {} ms.\n",
        ms(phases[0]),
        ms(phases[1]),
        ms(phases[2])
    ));
    t
}
