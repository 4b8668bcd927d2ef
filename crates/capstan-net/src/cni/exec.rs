//! Running plugin binaries: the CNI_* environment and the real process runner.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::result::parse_error;
use super::{AttachRequest, CniError, PluginExec};

/// Longest a single plugin may run; a hung plugin must not wedge the pod worker forever.
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(120);

/// The CNI_* variables of one invocation.
pub fn plugin_env(
    command: &str,
    req: &AttachRequest,
    ifname: &str,
    bin_dirs: &[PathBuf],
) -> Vec<(String, String)> {
    let args = format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
        req.pod_namespace, req.pod_name, req.container_id, req.pod_uid
    );
    let path = bin_dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    vec![
        ("CNI_COMMAND".into(), command.into()),
        ("CNI_CONTAINERID".into(), req.container_id.clone()),
        ("CNI_NETNS".into(), req.netns.display().to_string()),
        ("CNI_IFNAME".into(), ifname.into()),
        ("CNI_ARGS".into(), args),
        ("CNI_PATH".into(), path),
    ]
}

/// The first `bin_dirs/<type>` that exists.
pub fn find_plugin(bin_dirs: &[PathBuf], plugin_type: &str) -> Result<PathBuf, CniError> {
    if plugin_type.is_empty() || plugin_type.contains('/') {
        return Err(CniError::PluginNotFound {
            plugin: plugin_type.into(),
            dirs: bin_dirs.to_vec(),
        });
    }
    bin_dirs
        .iter()
        .map(|d| d.join(plugin_type))
        .find(|p| p.is_file())
        .ok_or_else(|| CniError::PluginNotFound {
            plugin: plugin_type.into(),
            dirs: bin_dirs.to_vec(),
        })
}

/// Runs plugin binaries as child processes (inheriting this process's environment, as libcni).
pub struct RealExec;

#[async_trait::async_trait]
impl PluginExec for RealExec {
    async fn exec(
        &self,
        plugin: &Path,
        env: Vec<(String, String)>,
        stdin: Vec<u8>,
    ) -> Result<Vec<u8>, CniError> {
        let name = plugin.display().to_string();
        let io = |context: &str| {
            let context = format!("{context} {name}");
            move |source| CniError::Io { context, source }
        };
        let mut child = tokio::process::Command::new(plugin)
            .envs(env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(io("spawning"))?;
        if let Some(mut input) = child.stdin.take() {
            input
                .write_all(&stdin)
                .await
                .map_err(io("writing stdin of"))?;
        }
        let output = tokio::time::timeout(PLUGIN_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| CniError::Timeout {
                plugin: name.clone(),
            })?
            .map_err(io("waiting for"))?;
        if output.status.success() {
            return Ok(output.stdout);
        }
        if let Some(e) = parse_error(&output.stdout) {
            return Err(CniError::Plugin {
                plugin: name,
                code: e.code,
                msg: e.msg,
                details: e.details,
            });
        }
        Err(CniError::Failed {
            plugin: name,
            status: output.status.to_string(),
            output: String::from_utf8_lossy(if output.stderr.is_empty() {
                &output.stdout
            } else {
                &output.stderr
            })
            .trim()
            .to_string(),
        })
    }
}
