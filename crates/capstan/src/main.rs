//! The `capstan` binary: command-line parsing and wiring of the component crates; no logic of
//! its own beyond that.

mod config;
mod server;

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
    /// Run the control plane (API server on the embedded store) and, later, a local agent.
    Server(server::ServerArgs),
}

fn main() -> anyhow::Result<()> {
    let args = config::args_with_config_file(std::env::args_os().collect())?;
    let cli = Cli::parse_from(args);
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    rustls::crypto::aws_lc_rs::default_provider()
        .install_default()
        .map_err(|_| anyhow::anyhow!("installing the TLS crypto provider"))?;
    match cli.command {
        Command::Server(a) => server::run(a),
    }
}
