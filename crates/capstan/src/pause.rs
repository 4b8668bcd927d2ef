//! `capstan pause --hostname H`: the process holding a pod sandbox's namespaces.

use clap::Args;

#[derive(Args, Debug)]
pub struct PauseArgs {
    /// Hostname of the sandbox's UTS namespace.
    #[arg(long, default_value = "")]
    pub hostname: String,
}

pub fn run(args: PauseArgs) -> anyhow::Result<()> {
    capstan_runtime::container::pause::run(&args.hostname)
        .map_err(|e| anyhow::anyhow!(capstan_runtime::container::shim::error_chain(&e)))
}
