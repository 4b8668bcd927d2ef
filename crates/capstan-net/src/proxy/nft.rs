//! Applying a script with the `nft` binary: one `nft -f -` run is one netlink transaction, so a
//! script either replaces the whole table or changes nothing.

use std::path::PathBuf;
use std::process::Stdio;

use tokio::io::AsyncWriteExt;

use super::ProxyError;

/// Applies nft scripts atomically (a trait so the sync loop is tested without root).
#[async_trait::async_trait]
pub trait NftApply: Send + Sync {
    async fn apply(&self, script: &str) -> Result<(), ProxyError>;
}

/// The real `nft` binary.
#[derive(Clone, Debug)]
pub struct NftBinary {
    pub path: PathBuf,
}

impl Default for NftBinary {
    fn default() -> Self {
        NftBinary { path: find_nft() }
    }
}

/// /usr/sbin/nft (where distributions put it), else whatever `nft` PATH finds.
pub fn find_nft() -> PathBuf {
    ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("nft"))
}

#[async_trait::async_trait]
impl NftApply for NftBinary {
    async fn apply(&self, script: &str) -> Result<(), ProxyError> {
        let mut child = tokio::process::Command::new(&self.path)
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| ProxyError::Spawn {
                path: self.path.clone(),
                source: e,
            })?;
        let mut stdin = child.stdin.take().ok_or_else(|| ProxyError::Nft {
            message: "no stdin pipe".into(),
        })?;
        let input = script.to_owned();
        // Write while nft reads and reports: a failed write shows up as nft's error below.
        let writer = tokio::spawn(async move {
            let _ = stdin.write_all(input.as_bytes()).await;
        });
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| ProxyError::Spawn {
                path: self.path.clone(),
                source: e,
            })?;
        let _ = writer.await;
        if out.status.success() {
            Ok(())
        } else {
            let stderr = String::from_utf8_lossy(&out.stderr);
            Err(ProxyError::Nft {
                message: stderr.lines().take(20).collect::<Vec<_>>().join("\n"),
            })
        }
    }
}

/// Deletes `table` (family inet) if it exists; for node clean-up and tests, never the running proxy.
pub fn delete_table_blocking(table: &str) -> Result<(), ProxyError> {
    use std::io::Write;
    let path = find_nft();
    let mut child = std::process::Command::new(&path)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| ProxyError::Spawn {
            path: path.clone(),
            source: e,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(super::render::delete_script(table).as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| ProxyError::Spawn { path, source: e })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ProxyError::Nft {
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}
