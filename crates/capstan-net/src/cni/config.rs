//! Network configuration: loading the first conflist of a directory, the node's default conflist,
//! and the per-plugin stdin (name, cniVersion, prevResult, runtimeConfig).

use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use super::{CniError, NodeNetwork, PortMapping};

/// A loaded network configuration list.
#[derive(Clone, Debug, PartialEq)]
pub struct NetworkList {
    pub name: String,
    pub cni_version: String,
    pub plugins: Vec<Map<String, Value>>,
    /// The bytes it was loaded from (cached for DEL, as libcni does).
    pub bytes: Vec<u8>,
}

/// The first `*.conflist` / `*.conf` / `*.json` file of `dir` in lexical order, loaded.
pub fn load_first(dir: &Path) -> Result<(PathBuf, NetworkList), CniError> {
    let entries = std::fs::read_dir(dir).map_err(|source| CniError::Io {
        context: format!("reading CNI config dir {}", dir.display()),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("conflist" | "conf" | "json")
            )
        })
        .collect();
    files.sort();
    let path = files.into_iter().next().ok_or_else(|| CniError::NoConfig {
        dir: dir.to_path_buf(),
    })?;
    let bytes = std::fs::read(&path).map_err(|source| CniError::Io {
        context: format!("reading {}", path.display()),
        source,
    })?;
    let list = parse(&path, bytes)?;
    Ok((path, list))
}

/// Parses a conflist, or a single-plugin `.conf` (wrapped into a list of one).
pub fn parse(path: &Path, bytes: Vec<u8>) -> Result<NetworkList, CniError> {
    let invalid = |message: String| CniError::InvalidConfig {
        path: path.to_path_buf(),
        message,
    };
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
    let Value::Object(obj) = value else {
        return Err(invalid("not a JSON object".into()));
    };
    let name = obj
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("missing network name".into()))?
        .to_string();
    let cni_version = obj
        .get("cniVersion")
        .and_then(Value::as_str)
        .unwrap_or("0.1.0")
        .to_string();
    let plugins = match obj.get("plugins") {
        Some(Value::Array(items)) => {
            let mut plugins = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Value::Object(p) if p.get("type").and_then(Value::as_str).is_some() => {
                        plugins.push(p.clone())
                    }
                    _ => return Err(invalid("a plugin without a type".into())),
                }
            }
            if plugins.is_empty() {
                return Err(invalid("no plugins in the list".into()));
            }
            plugins
        }
        Some(_) => return Err(invalid("plugins is not a list".into())),
        None if obj.get("type").and_then(Value::as_str).is_some() => vec![obj.clone()],
        None => return Err(invalid("neither plugins nor type".into())),
    };
    Ok(NetworkList {
        name,
        cni_version,
        plugins,
        bytes,
    })
}

/// The node's default conflist: bridge + host-local IPAM, then portmap.
pub fn default_conflist(net: &NodeNetwork) -> Value {
    let mut bridge = json!({
        "type": "bridge",
        "bridge": net.bridge,
        "isGateway": true,
        "ipMasq": true,
        "hairpinMode": true,
        "ipam": {
            "type": "host-local",
            "dataDir": net.ipam_data_dir,
            "ranges": [[{ "subnet": net.pod_cidr }]],
            "routes": [{ "dst": "0.0.0.0/0" }]
        }
    });
    if let (Some(mtu), Value::Object(b)) = (net.mtu, &mut bridge) {
        b.insert("mtu".into(), json!(mtu));
    }
    json!({
        "cniVersion": "1.0.0",
        "name": net.network_name,
        "plugins": [
            bridge,
            { "type": "portmap", "capabilities": { "portMappings": true }, "snat": true }
        ]
    })
}

/// Writes `<conf_dir>/10-capstan.conflist` unless it already has that content.
pub fn write_default_conflist(conf_dir: &Path, net: &NodeNetwork) -> Result<PathBuf, CniError> {
    let io = |context: String| move |source| CniError::Io { context, source };
    std::fs::create_dir_all(conf_dir).map_err(io(format!("creating {}", conf_dir.display())))?;
    let path = conf_dir.join("10-capstan.conflist");
    let mut content =
        serde_json::to_vec_pretty(&default_conflist(net)).map_err(|e| CniError::InvalidConfig {
            path: path.clone(),
            message: e.to_string(),
        })?;
    content.push(b'\n');
    if std::fs::read(&path).ok().as_deref() == Some(content.as_slice()) {
        return Ok(path);
    }
    // Write then rename so a concurrent reader never sees half a file.
    let tmp = conf_dir.join(".10-capstan.conflist.tmp");
    std::fs::write(&tmp, &content).map_err(io(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, &path).map_err(io(format!("renaming to {}", path.display())))?;
    Ok(path)
}

/// The stdin of one plugin invocation: the plugin's own config plus name, cniVersion,
/// prevResult (when chained) and the runtimeConfig of the capabilities it declares.
pub fn plugin_stdin(
    list: &NetworkList,
    plugin: &Map<String, Value>,
    prev_result: Option<&Value>,
    port_mappings: &[PortMapping],
) -> Value {
    let mut conf = plugin.clone();
    conf.insert("name".into(), Value::String(list.name.clone()));
    conf.insert("cniVersion".into(), Value::String(list.cni_version.clone()));
    if let Some(prev) = prev_result {
        conf.insert("prevResult".into(), prev.clone());
    }
    let wants_ports = plugin
        .get("capabilities")
        .and_then(|c| c.get("portMappings"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if wants_ports && !port_mappings.is_empty() {
        let mut runtime = match conf.remove("runtimeConfig") {
            Some(Value::Object(m)) => m,
            _ => Map::new(),
        };
        runtime.insert("portMappings".into(), port_mappings_json(port_mappings));
        conf.insert("runtimeConfig".into(), Value::Object(runtime));
    }
    Value::Object(conf)
}

/// `runtimeConfig.portMappings` as the portmap plugin reads it.
pub fn port_mappings_json(port_mappings: &[PortMapping]) -> Value {
    Value::Array(
        port_mappings
            .iter()
            .map(|p| {
                let mut m = json!({
                    "hostPort": p.host_port,
                    "containerPort": p.container_port,
                    "protocol": p.protocol.to_ascii_lowercase(),
                });
                if !p.host_ip.is_empty()
                    && let Value::Object(o) = &mut m
                {
                    o.insert("hostIP".into(), Value::String(p.host_ip.clone()));
                }
                m
            })
            .collect(),
    )
}

/// Port mappings back from their cached JSON form.
pub fn port_mappings_from_json(value: &Value) -> Vec<PortMapping> {
    let Some(items) = value.as_array() else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|m| {
            let port = |k: &str| {
                m.get(k)
                    .and_then(Value::as_u64)
                    .and_then(|v| u16::try_from(v).ok())
            };
            Some(PortMapping {
                host_port: port("hostPort")?,
                container_port: port("containerPort")?,
                protocol: m
                    .get("protocol")
                    .and_then(Value::as_str)
                    .unwrap_or("tcp")
                    .into(),
                host_ip: m.get("hostIP").and_then(Value::as_str).unwrap_or("").into(),
            })
        })
        .collect()
}
