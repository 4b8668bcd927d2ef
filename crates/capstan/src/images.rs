//! `capstan images`: the node's image store from the command line (crictl's / `k3s ctr
//! images` role): import archives, pull, list, inspect, remove.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use capstan_runtime::image::pull::{ProgressFn, PullProgress, Puller};
use capstan_runtime::image::{
    DockerConfigJson, ImageRecord, ImageStore, RegistriesConfig, RegistryAuth, parse_reference,
};
use clap::{Args, Subcommand};

/// `println!` that stops quietly when stdout is closed (`capstan images ls | head`).
macro_rules! out {
    ($($arg:tt)*) => {{
        let mut stdout = std::io::stdout().lock();
        if let Err(e) = writeln!(stdout, $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            return Err(e.into());
        }
    }};
}

#[derive(Args, Debug)]
pub struct ImagesArgs {
    /// Data directory of the node (the store is `<data-dir>/images`).
    #[arg(long, default_value = "/var/lib/capstan", global = true)]
    pub data_dir: PathBuf,
    #[command(subcommand)]
    pub command: ImagesCommand,
}

#[derive(Subcommand, Debug)]
pub enum ImagesCommand {
    /// Import OCI archives (tar of an OCI layout) or `docker save` archives, gzip'd or not.
    Import { files: Vec<PathBuf> },
    /// Pull an image from a registry.
    Pull(PullArgs),
    /// Build a small image from the host's busybox-static (`/bin/busybox`) and import it: a
    /// working image on a machine with no registry in reach (demos, tests).
    BuildBusybox {
        /// The name to give it; the default lets pods say `image: busybox`.
        #[arg(default_value = "docker.io/library/busybox:latest")]
        reference: String,
    },
    /// List images.
    #[command(alias = "list")]
    Ls {
        /// Print image IDs only.
        #[arg(short, long)]
        quiet: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show an image's record, manifest and config as JSON.
    Inspect { reference: String },
    /// Remove references (by name) or images (by ID) and data no other image needs.
    #[command(alias = "remove")]
    Rm { references: Vec<String> },
}

#[derive(Args, Debug)]
pub struct PullArgs {
    pub reference: String,
    /// Registry (HOST:PORT) to reach over plain HTTP; loopback registries always are.
    #[arg(long = "insecure-registry")]
    pub insecure_registry: Vec<String>,
    /// k3s-style registries.yaml (default `<data-dir>/registries.yaml` if present).
    #[arg(long)]
    pub registry_config: Option<PathBuf>,
    /// Credentials as USER:PASSWORD.
    #[arg(long)]
    pub creds: Option<String>,
    /// A docker config.json / `.dockerconfigjson` of a pull secret to take credentials from.
    #[arg(long)]
    pub docker_config: Option<PathBuf>,
}

pub fn run(args: ImagesArgs) -> anyhow::Result<()> {
    let root = args.data_dir.join("images");
    let store = ImageStore::open(&root)
        .with_context(|| format!("opening the image store at {}", root.display()))?;
    match args.command {
        ImagesCommand::Import { files } => import(&store, &files),
        ImagesCommand::Pull(p) => pull(store, &args.data_dir, p),
        ImagesCommand::BuildBusybox { reference } => build_busybox(&store, &reference),
        ImagesCommand::Ls { quiet, json } => list(&store, quiet, json),
        ImagesCommand::Inspect { reference } => inspect(&store, &reference),
        ImagesCommand::Rm { references } => remove(&store, &references),
    }
}

fn short_id(id: &str) -> &str {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    &hex[..hex.len().min(12)]
}

fn import(store: &ImageStore, files: &[PathBuf]) -> anyhow::Result<()> {
    if files.is_empty() {
        bail!("no archive given");
    }
    for f in files {
        let started = std::time::Instant::now();
        let images = store
            .import_archive(f)
            .with_context(|| format!("importing {}", f.display()))?;
        for img in images {
            let names = if img.references.is_empty() {
                "<none>".to_string()
            } else {
                img.references.join(", ")
            };
            out!(
                "imported {names} ({}) in {} ms",
                img.id,
                started.elapsed().as_millis()
            );
        }
    }
    Ok(())
}

fn build_busybox(store: &ImageStore, reference: &str) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let archive = dir.path().join("busybox.tar");
    capstan_runtime::testimage::busybox_oci_archive(&archive, reference)
        .context("building the busybox image (is busybox-static installed?)")?;
    import(store, &[archive])
}

fn pull(store: ImageStore, data_dir: &Path, p: PullArgs) -> anyhow::Result<()> {
    let config_path = p
        .registry_config
        .clone()
        .unwrap_or_else(|| data_dir.join("registries.yaml"));
    if p.registry_config.is_some() && !config_path.exists() {
        bail!("registry config {} does not exist", config_path.display());
    }
    let mut registries = RegistriesConfig::load(&config_path)?;
    registries
        .insecure
        .extend(p.insecure_registry.iter().cloned());
    let auth = credentials(&p)?;
    let puller = Puller::new(store, registries);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let started = std::time::Instant::now();
    let img = rt
        .block_on(puller.pull_with_progress(&p.reference, auth, Some(progress_printer())))
        .with_context(|| format!("pulling {}", p.reference))?;
    eprintln!(
        "pulled {} in {} ms",
        p.reference,
        started.elapsed().as_millis()
    );
    out!("{}", img.id);
    Ok(())
}

fn credentials(p: &PullArgs) -> anyhow::Result<Option<RegistryAuth>> {
    if let Some(c) = &p.creds {
        let (username, password) = c.split_once(':').context("--creds must be USER:PASSWORD")?;
        return Ok(Some(RegistryAuth::Basic {
            username: username.into(),
            password: password.into(),
        }));
    }
    if let Some(path) = &p.docker_config {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let cfg = DockerConfigJson::parse(&bytes)?;
        let r = parse_reference(&p.reference)?;
        return Ok(cfg.auth_for(r.registry()));
    }
    Ok(None)
}

/// Per-layer progress on stderr: an updating line on a terminal, one line per layer otherwise.
fn progress_printer() -> ProgressFn {
    let tty = std::io::stderr().is_terminal();
    let clear = if tty { "\r\x1b[K" } else { "" };
    Arc::new(move |ev: PullProgress| {
        let mut err = std::io::stderr().lock();
        let _ = match ev {
            PullProgress::Resolved {
                manifest_digest,
                layers,
            } => {
                writeln!(err, "resolved {manifest_digest} ({layers} layers)")
            }
            PullProgress::LayerExists { digest, size } => {
                writeln!(err, "{}: already present ({size} bytes)", short_id(&digest))
            }
            PullProgress::LayerBytes {
                digest,
                done,
                total,
            } if tty => {
                write!(err, "{clear}{}: {done}/{total} bytes", short_id(&digest))
            }
            PullProgress::LayerBytes { .. } => Ok(()),
            PullProgress::LayerDone { digest, size } => {
                writeln!(err, "{clear}{}: pulled {size} bytes", short_id(&digest))
            }
        };
    })
}

fn list(store: &ImageStore, quiet: bool, json: bool) -> anyhow::Result<()> {
    let images = store.list()?;
    if json {
        out!("{}", serde_json::to_string_pretty(&images)?);
        return Ok(());
    }
    if quiet {
        for i in &images {
            out!("{}", i.id);
        }
        return Ok(());
    }
    out!(
        "{:<60} {:<14} {:>10}  CREATED",
        "REFERENCE",
        "IMAGE ID",
        "SIZE"
    );
    for i in &images {
        let created = i.created.map(|c| c.to_string()).unwrap_or_default();
        let names: Vec<&str> = if i.references.is_empty() {
            vec!["<none>"]
        } else {
            i.references.iter().map(String::as_str).collect()
        };
        for n in names {
            out!(
                "{n:<60} {:<14} {:>10}  {created}",
                short_id(&i.id),
                human(i.size)
            );
        }
    }
    Ok(())
}

fn human(n: u64) -> String {
    let units = ["B", "kB", "MB", "GB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < units.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n}B")
    } else {
        format!("{v:.1}{}", units[u])
    }
}

fn found(store: &ImageStore, reference: &str) -> anyhow::Result<ImageRecord> {
    store
        .resolve(reference)?
        .with_context(|| format!("image {reference:?} not found"))
}

fn inspect(store: &ImageStore, reference: &str) -> anyhow::Result<()> {
    let img = found(store, reference)?;
    let config = store.config(&img)?;
    let out = serde_json::json!({
        "id": img.id,
        "references": img.references,
        "manifestDigest": img.manifest_digest,
        "size": img.size,
        "created": img.created,
        "config": config,
    });
    out!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

fn remove(store: &ImageStore, references: &[String]) -> anyhow::Result<()> {
    if references.is_empty() {
        bail!("no image given");
    }
    for r in references {
        let img = store.remove(r).with_context(|| format!("removing {r}"))?;
        match store.resolve(&img.id)? {
            Some(_) => out!("untagged {r}"),
            None => out!("deleted {}", img.id),
        }
    }
    Ok(())
}
