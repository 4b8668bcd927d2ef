//! `capstan shim <container dir>` and `capstan pause`: internal processes the container runtime
//! re-executes this binary as (see capstan_runtime::container::{shim, pause}).

use std::path::PathBuf;

use clap::Args;

#[derive(Args, Debug)]
pub struct ShimArgs {
    /// The container's state directory (holding shim.json).
    pub container_dir: PathBuf,
}

pub fn run(args: ShimArgs) -> anyhow::Result<()> {
    capstan_runtime::container::shim::run(&args.container_dir)
        .map_err(|e| anyhow::anyhow!(capstan_runtime::container::shim::error_chain(&e)))
}
