//! `capstan ps`: the node's containers and pod sandboxes (crictl's `ps` / `pods`), read from the
//! runtime's state directory, so it works whether or not an agent runs. The hidden
//! `capstan run-pod` starts one sandbox with one container and stays up as its manager until
//! stdin closes (for debugging and for tests that kill the managing process).

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use capstan_runtime::container::{ContainerRuntime, ImageSource, RuntimeConfig};
use capstan_runtime::cri::RuntimeService;
use capstan_runtime::cri::runtime_service::{
    ContainerConfig, ContainerFilter, ContainerMetadata, ContainerState, KeyValue,
    LinuxContainerConfig, LinuxContainerResources, PodSandboxConfig, PodSandboxFilter,
    PodSandboxMetadata,
};
use capstan_runtime::image::ImageStore;
use clap::Args;

/// Where the runtime's state is; shared by `ps` and `run-pod`.
#[derive(Args, Debug)]
pub struct RuntimeFlags {
    /// Directory for all state (the runtime's is under `<data-dir>/runtime`).
    #[arg(long, default_value = "/var/lib/capstan")]
    pub data_dir: PathBuf,
    /// Volatile runtime state: netns bind mounts, OCI runtime roots.
    #[arg(long, default_value = "/run/capstan")]
    pub run_dir: PathBuf,
    /// Cgroup under which pod cgroups are made.
    #[arg(long, default_value = "/capstan")]
    pub cgroup_parent: String,
}

impl RuntimeFlags {
    fn runtime(&self) -> anyhow::Result<ContainerRuntime> {
        let exe = std::env::current_exe().context("locating the capstan binary")?;
        let mut config =
            RuntimeConfig::new(self.data_dir.join("runtime"), self.run_dir.clone(), exe);
        config.cgroup_parent = self.cgroup_parent.clone();
        let images: Arc<dyn ImageSource> = Arc::new(
            ImageStore::open(&self.data_dir.join("images")).context("opening the image store")?,
        );
        ContainerRuntime::new(config, images).context("opening the container runtime")
    }
}

#[derive(Args, Debug)]
pub struct PsArgs {
    /// Show all containers, not only running ones.
    #[arg(short = 'a', long)]
    pub all: bool,
    /// List pod sandboxes instead of containers.
    #[arg(long)]
    pub pods: bool,
    /// Print full ids only.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    #[command(flatten)]
    pub flags: RuntimeFlags,
}

fn age(t: jiff::Timestamp) -> String {
    let secs = jiff::Timestamp::now().as_second() - t.as_second();
    match secs {
        s if s < 60 => format!("{s} seconds ago"),
        s if s < 3600 => format!("{} minutes ago", s / 60),
        s if s < 86400 => format!("{} hours ago", s / 3600),
        s => format!("{} days ago", s / 86400),
    }
}

fn short(id: &str) -> &str {
    &id[..id.len().min(13)]
}

pub fn run(args: PsArgs) -> anyhow::Result<()> {
    let runtime = args.flags.runtime()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        if args.pods {
            let pods = runtime
                .list_pod_sandboxes(&PodSandboxFilter::default())
                .await?;
            if !args.quiet {
                println!(
                    "{:<13}  {:<16}  {:<8}  {:<24}  {:<16}  {:<7}  RUNTIME",
                    "POD ID", "CREATED", "STATE", "NAME", "NAMESPACE", "ATTEMPT"
                );
            }
            for p in pods {
                if args.quiet {
                    println!("{}", p.id);
                    continue;
                }
                let handler = if p.runtime_handler.is_empty() {
                    "(default)"
                } else {
                    &p.runtime_handler
                };
                println!(
                    "{:<13}  {:<16}  {:<8}  {:<24}  {:<16}  {:<7}  {handler}",
                    short(&p.id),
                    age(p.created_at),
                    format!("{:?}", p.state),
                    p.metadata.name,
                    p.metadata.namespace,
                    p.metadata.attempt,
                );
            }
            return Ok(());
        }
        let filter = ContainerFilter {
            state: (!args.all).then_some(ContainerState::Running),
            ..Default::default()
        };
        let containers = runtime.list_containers(&filter).await?;
        if !args.quiet {
            println!(
                "{:<13}  {:<24}  {:<16}  {:<8}  {:<24}  {:<7}  POD ID",
                "CONTAINER", "IMAGE", "CREATED", "STATE", "NAME", "ATTEMPT"
            );
        }
        for c in containers {
            if args.quiet {
                println!("{}", c.id);
                continue;
            }
            println!(
                "{:<13}  {:<24}  {:<16}  {:<8}  {:<24}  {:<7}  {}",
                short(&c.id),
                c.image,
                age(c.created_at),
                c.state.as_str(),
                c.metadata.name,
                c.metadata.attempt,
                short(&c.pod_sandbox_id),
            );
        }
        anyhow::Ok(())
    })
}

#[derive(Args, Debug)]
pub struct RunPodArgs {
    /// Image reference in the node's image store.
    #[arg(long)]
    pub image: String,
    /// Pod (and container) name.
    #[arg(long, default_value = "debug")]
    pub name: String,
    /// Pod log directory (`/var/log/pods/<ns>_<name>_<uid>`).
    #[arg(long)]
    pub log_dir: PathBuf,
    /// Environment variables, KEY=VALUE (repeatable).
    #[arg(long)]
    pub env: Vec<String>,
    /// Memory limit in bytes (0: none).
    #[arg(long, default_value_t = 0)]
    pub memory: i64,
    /// OCI runtime handler (runc, crun).
    #[arg(long, default_value = "")]
    pub runtime_handler: String,
    #[command(flatten)]
    pub flags: RuntimeFlags,
    /// The container's command (replaces the image's ENTRYPOINT and CMD).
    #[arg(last = true)]
    pub command: Vec<String>,
}

pub fn run_pod(args: RunPodArgs) -> anyhow::Result<()> {
    let runtime = args.flags.runtime()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let sandbox = PodSandboxConfig {
            metadata: PodSandboxMetadata {
                name: args.name.clone(),
                uid: "debug".into(),
                namespace: "default".into(),
                attempt: 0,
            },
            hostname: args.name.clone(),
            log_directory: args.log_dir.clone(),
            ..Default::default()
        };
        let sandbox_id = runtime
            .run_pod_sandbox(&sandbox, &args.runtime_handler)
            .await?;
        println!("sandbox {sandbox_id}");
        let envs = args
            .env
            .iter()
            .map(|e| {
                let (key, value) = e.split_once('=').unwrap_or((e.as_str(), ""));
                KeyValue {
                    key: key.into(),
                    value: value.into(),
                }
            })
            .collect();
        let config = ContainerConfig {
            metadata: ContainerMetadata {
                name: args.name.clone(),
                attempt: 0,
            },
            image: args.image.clone(),
            command: args.command.clone(),
            envs,
            linux: LinuxContainerConfig {
                resources: LinuxContainerResources {
                    memory_limit_in_bytes: args.memory,
                    ..Default::default()
                },
                ..Default::default()
            },
            ..Default::default()
        };
        let id = runtime
            .create_container(&sandbox_id, &config, &sandbox)
            .await?;
        runtime.start_container(&id).await?;
        println!("container {id}");
        anyhow::Ok(())
    })?;
    // Stay up as the manager until stdin closes; the containers outlive us either way.
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    Ok(())
}
