//! CNI plugin invocation per the CNI spec (1.0 / 0.4): the node's network config, ADD/DEL through
//! every plugin of the list with prevResult chaining, the loopback plugin for `lo`, and a result
//! cache so DEL runs with what ADD used even after the config changed.

mod config;
mod exec;
mod masq;
mod result;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Value, json};

pub use config::{NetworkList, default_conflist, load_first, plugin_stdin, port_mappings_json};
pub use exec::{RealExec, find_plugin, plugin_env};
pub use masq::{leftover_rules, split_args};
pub use result::{PluginError, parse_error, result_ips};

/// Where CNI configuration, plugin binaries and the result cache live.
#[derive(Clone, Debug)]
pub struct CniConfig {
    pub conf_dir: PathBuf,
    pub bin_dirs: Vec<PathBuf>,
    pub cache_dir: PathBuf,
}

/// The node's pod network, written as the default conflist.
#[derive(Clone, Debug)]
pub struct NodeNetwork {
    /// The network name ("capstan").
    pub network_name: String,
    /// The Linux bridge ("cni0"; tests use unique names).
    pub bridge: String,
    /// The node's podCIDR, e.g. 10.42.0.0/24.
    pub pod_cidr: String,
    /// host-local's dataDir.
    pub ipam_data_dir: PathBuf,
    pub mtu: Option<u32>,
}

/// One hostPort mapping (`runtimeConfig.portMappings`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    /// "tcp", "udp" or "sctp".
    pub protocol: String,
    /// Empty = all addresses.
    pub host_ip: String,
}

/// One sandbox to attach to (or detach from) the pod network.
#[derive(Clone, Debug)]
pub struct AttachRequest {
    /// The sandbox id.
    pub container_id: String,
    pub netns: PathBuf,
    /// "eth0".
    pub ifname: String,
    pub pod_name: String,
    pub pod_namespace: String,
    pub pod_uid: String,
    pub port_mappings: Vec<PortMapping>,
}

/// What ADD gave the sandbox.
#[derive(Clone, Debug)]
pub struct AttachResult {
    pub ips: Vec<IpAddr>,
    /// The last plugin's result JSON.
    pub result: Value,
}

/// Errors from CNI configuration or plugins.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no network config found in {}", dir.display())]
    NoConfig { dir: PathBuf },
    #[error("invalid network config {}: {message}", path.display())]
    InvalidConfig { path: PathBuf, message: String },
    #[error("failed to find plugin {plugin:?} in path {dirs:?}")]
    PluginNotFound { plugin: String, dirs: Vec<PathBuf> },
    /// The plugin answered with the spec's error JSON.
    #[error("plugin {plugin} failed (code {code}): {msg}{}", if details.is_empty() { String::new() } else { format!(": {details}") })]
    Plugin {
        plugin: String,
        code: u64,
        msg: String,
        details: String,
    },
    /// The plugin failed without the spec's error JSON.
    #[error("plugin {plugin} failed ({status}): {output}")]
    Failed {
        plugin: String,
        status: String,
        output: String,
    },
    #[error("plugin {plugin} timed out")]
    Timeout { plugin: String },
    #[error("plugin {plugin} returned an invalid result: {message}")]
    InvalidResult { plugin: String, message: String },
    #[error("network {network}: {operation} on {ifname} failed: {source}")]
    Network {
        network: String,
        operation: &'static str,
        ifname: String,
        #[source]
        source: Box<CniError>,
    },
}

/// Runs one plugin binary: the seam unit tests replace.
#[async_trait::async_trait]
pub trait PluginExec: Send + Sync {
    async fn exec(
        &self,
        plugin: &Path,
        env: Vec<(String, String)>,
        stdin: Vec<u8>,
    ) -> Result<Vec<u8>, CniError>;
}

/// Writes `<conf_dir>/10-capstan.conflist` (bridge + host-local over the pod CIDR, then portmap)
/// unless it already has that content.
pub fn write_default_conflist(conf_dir: &Path, net: &NodeNetwork) -> Result<PathBuf, CniError> {
    config::write_default_conflist(conf_dir, net)
}

/// The CNI client of the kubelet.
#[derive(Clone)]
pub struct Cni {
    config: CniConfig,
    exec: Arc<dyn PluginExec>,
    /// Whether DEL without a netns removes the bridge plugin's leftover ipMasq chain (real
    /// plugins only; a fake exec made no chains).
    cleans_iptables: bool,
}

/// What the cache keeps per attachment, for DEL.
struct Cached {
    list: NetworkList,
    result: Option<Value>,
    port_mappings: Vec<PortMapping>,
}

const LOOPBACK_IFNAME: &str = "lo";

impl Cni {
    /// A client that executes the real plugin binaries.
    pub fn new(config: CniConfig) -> Cni {
        Cni {
            cleans_iptables: true,
            ..Cni::with_exec(config, Arc::new(RealExec))
        }
    }

    /// A client with a custom plugin runner (unit tests).
    pub fn with_exec(config: CniConfig, exec: Arc<dyn PluginExec>) -> Cni {
        Cni {
            config,
            exec,
            cleans_iptables: false,
        }
    }

    /// Loopback up in the netns, then ADD through every plugin of the network config with
    /// prevResult chaining and runtimeConfig.portMappings; caches the result for DEL.
    pub async fn add(&self, req: &AttachRequest) -> Result<AttachResult, CniError> {
        let loopback = loopback_list();
        self.run_list("ADD", &loopback, req, LOOPBACK_IFNAME, None, &[])
            .await?;
        let (_, list) = load_first(&self.config.conf_dir)?;
        let result = match self
            .run_list("ADD", &list, req, &req.ifname, None, &req.port_mappings)
            .await
        {
            Ok(result) => result,
            Err(e) => {
                // Release whatever the plugins that succeeded took (IPs, chains) before failing.
                if let Err(del) = self
                    .run_list("DEL", &list, req, &req.ifname, None, &req.port_mappings)
                    .await
                {
                    tracing::warn!(container = %req.container_id, error = %del, "CNI DEL after a failed ADD");
                }
                return Err(e);
            }
        };
        let result = result.unwrap_or_else(|| json!({ "cniVersion": list.cni_version }));
        self.write_cache(req, &list, &result)?;
        Ok(AttachResult {
            ips: result_ips(&result),
            result,
        })
    }

    /// DEL in reverse order with the cached config and result; idempotent (a missing netns or
    /// cache is fine).
    pub async fn del(&self, req: &AttachRequest) -> Result<(), CniError> {
        let cached = match self.read_cache(req) {
            Some(c) => Some(c),
            None => match load_first(&self.config.conf_dir) {
                Ok((_, list)) => Some(Cached {
                    list,
                    result: None,
                    port_mappings: Vec::new(),
                }),
                Err(CniError::NoConfig { .. }) | Err(CniError::Io { .. }) => None,
                Err(e) => return Err(e),
            },
        };
        if let Some(cached) = cached {
            let mappings = if req.port_mappings.is_empty() {
                cached.port_mappings
            } else {
                req.port_mappings.clone()
            };
            self.run_list(
                "DEL",
                &cached.list,
                req,
                &req.ifname,
                cached.result.as_ref(),
                &mappings,
            )
            .await?;
            let masquerades = cached.list.plugins.iter().any(|p| {
                p.get("type").and_then(Value::as_str) == Some("bridge")
                    && p.get("ipMasq").and_then(Value::as_bool) == Some(true)
            });
            if masquerades && !req.netns.exists() && self.cleans_iptables {
                masq::remove_leftover_chains(&cached.list.name, &req.container_id).await?;
            }
        }
        if let Err(e) = self
            .run_list("DEL", &loopback_list(), req, LOOPBACK_IFNAME, None, &[])
            .await
        {
            tracing::debug!(container = %req.container_id, error = %e, "loopback DEL");
        }
        let path = self.cache_path(req);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(CniError::Io {
                context: format!("removing {}", path.display()),
                source,
            }),
        }
    }

    /// Runs `command` through the plugins (reverse order for DEL); returns the last ADD result.
    /// For DEL every plugin gets `prev` (the cached result) as prevResult, as libcni does.
    async fn run_list(
        &self,
        command: &'static str,
        list: &NetworkList,
        req: &AttachRequest,
        ifname: &str,
        prev: Option<&Value>,
        port_mappings: &[PortMapping],
    ) -> Result<Option<Value>, CniError> {
        let wrap = |source: CniError| CniError::Network {
            network: list.name.clone(),
            operation: command,
            ifname: ifname.to_string(),
            source: Box::new(source),
        };
        let mut plugins: Vec<_> = list.plugins.iter().collect();
        if command == "DEL" {
            plugins.reverse();
        }
        let mut prev_result = prev.cloned();
        let mut first_error = None;
        for plugin in plugins {
            let plugin_type = plugin.get("type").and_then(Value::as_str).unwrap_or("");
            let binary = find_plugin(&self.config.bin_dirs, plugin_type).map_err(wrap)?;
            let stdin = plugin_stdin(list, plugin, prev_result.as_ref(), port_mappings);
            let stdin = serde_json::to_vec(&stdin).map_err(|e| {
                wrap(CniError::InvalidResult {
                    plugin: plugin_type.into(),
                    message: e.to_string(),
                })
            })?;
            let env = plugin_env(command, req, ifname, &self.config.bin_dirs);
            let out = match self.exec.exec(&binary, env, stdin).await {
                Ok(out) => out,
                // DEL goes on through the remaining plugins so one failure does not leak
                // what the others hold (IPs, chains); the first error is reported.
                Err(e) if command == "DEL" => {
                    first_error.get_or_insert(wrap(e));
                    continue;
                }
                Err(e) => return Err(wrap(e)),
            };
            if command == "ADD" && !out.iter().all(u8::is_ascii_whitespace) {
                let value: Value = serde_json::from_slice(&out).map_err(|e| {
                    wrap(CniError::InvalidResult {
                        plugin: plugin_type.into(),
                        message: e.to_string(),
                    })
                })?;
                prev_result = Some(value);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(prev_result),
        }
    }

    fn cache_path(&self, req: &AttachRequest) -> PathBuf {
        // One file per (container, interface); the network name is in the file, not the key,
        // so DEL finds it even when the config changed names.
        self.config.cache_dir.join("results").join(format!(
            "{}-{}",
            sanitize(&req.container_id),
            sanitize(&req.ifname)
        ))
    }

    fn write_cache(
        &self,
        req: &AttachRequest,
        list: &NetworkList,
        result: &Value,
    ) -> Result<(), CniError> {
        let path = self.cache_path(req);
        let io = |context: String| move |source| CniError::Io { context, source };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        }
        let config: Value = serde_json::from_slice(&list.bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&list.bytes).into()));
        let entry = json!({
            "kind": "cniCacheV1",
            "containerId": req.container_id,
            "ifName": req.ifname,
            "networkName": list.name,
            "config": config,
            "capabilityArgs": { "portMappings": port_mappings_json(&req.port_mappings) },
            "result": result,
        });
        let bytes = serde_json::to_vec(&entry).map_err(|e| CniError::InvalidResult {
            plugin: list.name.clone(),
            message: e.to_string(),
        })?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bytes).map_err(io(format!("writing {}", tmp.display())))?;
        std::fs::rename(&tmp, &path).map_err(io(format!("renaming to {}", path.display())))
    }

    fn read_cache(&self, req: &AttachRequest) -> Option<Cached> {
        let path = self.cache_path(req);
        let bytes = std::fs::read(&path).ok()?;
        let entry: Value = serde_json::from_slice(&bytes).ok()?;
        let config = serde_json::to_vec(entry.get("config")?).ok()?;
        let list = config::parse(&path, config).ok()?;
        let port_mappings = entry
            .get("capabilityArgs")
            .and_then(|c| c.get("portMappings"))
            .map(config::port_mappings_from_json)
            .unwrap_or_default();
        Some(Cached {
            list,
            result: entry.get("result").cloned(),
            port_mappings,
        })
    }
}

fn loopback_list() -> NetworkList {
    let conf = json!({ "cniVersion": "1.0.0", "name": "cni-loopback", "type": "loopback" });
    let mut plugin = serde_json::Map::new();
    plugin.insert("type".into(), Value::String("loopback".into()));
    NetworkList {
        name: "cni-loopback".into(),
        cni_version: "1.0.0".into(),
        plugins: vec![plugin],
        bytes: conf.to_string().into_bytes(),
    }
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests;
