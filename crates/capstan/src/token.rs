//! `capstan token`: print the node join token a server keeps in its data dir, for
//! `capstan agent --token`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

#[derive(Args, Debug)]
pub struct TokenArgs {
    /// The server's data directory.
    #[arg(long, default_value = "/var/lib/capstan")]
    pub data_dir: PathBuf,
}

pub fn run(args: TokenArgs) -> anyhow::Result<()> {
    let path = args.data_dir.join("token");
    let token = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {} (is this a server's data dir, and has the server started once?)",
            path.display()
        )
    })?;
    let token = token.trim();
    anyhow::ensure!(
        capstan_apiserver::auth::join::JoinToken::parse(token).is_some(),
        "{} holds no valid join token",
        path.display()
    );
    println!("{token}");
    Ok(())
}
