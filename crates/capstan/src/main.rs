//! The `capstan` binary: command-line parsing and wiring of the component crates; no logic of
//! its own beyond that.

mod agent;
mod config;
mod datastore;
mod dns;
mod explain;
mod images;
mod pause;
mod ps;
mod scheduler;
mod secrets;
mod server;
mod shim;
mod simulate;
mod token;

use clap::{Parser, Subcommand};

// The API server allocates many small JSON values per request; glibc malloc spent a quarter of
// the write path's CPU and kept freed arenas resident (see docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "capstan",
    version,
    about = "A Kubernetes-compatible orchestrator in one binary"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the control plane (API server on the embedded store) and a local agent.
    Server(Box<server::ServerArgs>),
    /// Run the node agent (kubelet) against an existing server.
    Agent(agent::AgentArgs),
    /// Print the node join token of a server's data dir (for `capstan agent --token`).
    Token(token::TokenArgs),
    /// Run a scheduler on its own against an existing cluster (another schedulerName, benchmarks).
    Scheduler(scheduler::SchedulerArgs),
    /// Register simulated nodes that run pods without containers (the kwok role).
    SimulateNodes(simulate::SimulateArgs),
    /// Explain scheduling decisions: `explain pod NAME -n NS`.
    Explain(explain::ExplainArgs),
    /// Datastore maintenance: snapshots (save, restore, ls).
    Datastore(datastore::DatastoreArgs),
    /// Secrets encryption at rest: key status and rotation.
    SecretsEncrypt(secrets::SecretsEncryptArgs),
    /// The node's image store: import, pull, ls, inspect, rm.
    Images(images::ImagesArgs),
    /// The node's containers and pod sandboxes (like crictl ps / pods).
    Ps(ps::PsArgs),
    /// Internal: the per-container shim process.
    #[command(hide = true)]
    Shim(shim::ShimArgs),
    /// Internal: the process holding a pod sandbox's namespaces.
    #[command(hide = true)]
    Pause(pause::PauseArgs),
    /// Debugging: run one pod with one container and manage it until stdin closes.
    #[command(hide = true)]
    RunPod(ps::RunPodArgs),
}

fn main() -> anyhow::Result<()> {
    let raw: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // Internal subcommands take no config file, and their argv (a container's command after
    // `--`) must reach them untouched.
    let internal = raw
        .get(1)
        .is_some_and(|c| ["shim", "pause", "run-pod"].iter().any(|i| c == *i));
    let args = if internal {
        raw
    } else {
        config::args_with_config_file(raw)?
    };
    let cli = Cli::parse_from(args);
    let mut filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // hickory-server logs every DNS query at info; keep that out unless asked for by name.
    if !std::env::var("RUST_LOG").is_ok_and(|v| v.contains("hickory"))
        && let Ok(quiet) = "hickory_server=warn".parse()
    {
        filter = filter.add_directive(quiet);
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    rustls::crypto::aws_lc_rs::default_provider()
        .install_default()
        .map_err(|_| anyhow::anyhow!("installing the TLS crypto provider"))?;
    match cli.command {
        Command::Server(a) => server::run(*a),
        Command::Agent(a) => agent::run(a),
        Command::Token(a) => token::run(a),
        Command::Scheduler(a) => scheduler::run(a),
        Command::SimulateNodes(a) => simulate::run(a),
        Command::Explain(a) => explain::run(a),
        Command::Datastore(a) => datastore::run(a),
        Command::Images(a) => images::run(a),
        Command::SecretsEncrypt(a) => secrets::run(a),
        Command::Ps(a) => ps::run(a),
        Command::Shim(a) => shim::run(a),
        Command::Pause(a) => pause::run(a),
        Command::RunPod(a) => ps::run_pod(a),
    }
}
