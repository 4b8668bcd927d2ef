//! Container environment: service links, envFrom, env with valueFrom (configMapKeyRef,
//! secretKeyRef, fieldRef, resourceFieldRef) and `$(VAR)` expansion, with upstream's semantics.

use crate::resources::parse_quantity;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod, Service};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::source::{ObjectSource, SourceError};

/// What a container's environment is computed from.
pub struct EnvContext<'a> {
    pub pod: &'a Pod,
    pub node_name: &'a str,
    pub host_ip: &'a str,
    pub pod_ips: &'a [String],
    /// From [`service_env`]; may be empty.
    pub service_env: &'a [(String, String)],
    /// Limits default to these when a container sets none (as upstream's downward API).
    pub node_allocatable: &'a BTreeMap<String, Quantity>,
}

/// Why a container's environment cannot be built (reason CreateContainerConfigError).
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("configmap \"{0}\" not found")]
    ConfigMapNotFound(String),
    #[error("secret \"{0}\" not found")]
    SecretNotFound(String),
    #[error("couldn't find key {key} in ConfigMap {namespace}/{name}")]
    ConfigMapKeyNotFound {
        key: String,
        namespace: String,
        name: String,
    },
    #[error("couldn't find key {key} in Secret {namespace}/{name}")]
    SecretKeyNotFound {
        key: String,
        namespace: String,
        name: String,
    },
    #[error("unsupported fieldPath: {0}")]
    UnsupportedField(String),
    #[error("unsupported container resource : {0}")]
    UnsupportedResource(String),
    #[error("container {0} not found in the pod")]
    NoSuchContainer(String),
    #[error(transparent)]
    Source(#[from] SourceError),
}

/// An env list with map semantics: setting an existing name replaces its value in place.
#[derive(Default)]
struct EnvList {
    items: Vec<(String, String)>,
    index: BTreeMap<String, usize>,
}

impl EnvList {
    fn set(&mut self, name: String, value: String) {
        match self.index.get(&name) {
            Some(&i) => self.items[i].1 = value,
            None => {
                self.index.insert(name.clone(), self.items.len());
                self.items.push((name, value));
            }
        }
    }
}

/// The container's final environment in order (service env first, then envFrom, then env,
/// later names overriding earlier ones), `$(VAR)` expanded in literal values.
pub async fn container_env(
    ctx: &EnvContext<'_>,
    container: &Container,
    source: &dyn ObjectSource,
) -> Result<Vec<(String, String)>, EnvError> {
    let namespace = ctx.pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut env = EnvList::default();
    for (k, v) in ctx.service_env {
        env.set(k.clone(), v.clone());
    }
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.as_deref().unwrap_or("");
        let data: Vec<(String, String)> = if let Some(r) = &from.config_map_ref {
            match source.config_map(namespace, &r.name).await? {
                Some(cm) => cm.data.unwrap_or_default().into_iter().collect(),
                None if r.optional == Some(true) => continue,
                None => return Err(EnvError::ConfigMapNotFound(r.name.clone())),
            }
        } else if let Some(r) = &from.secret_ref {
            match source.secret(namespace, &r.name).await? {
                Some(s) => s
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                    .collect(),
                None if r.optional == Some(true) => continue,
                None => return Err(EnvError::SecretNotFound(r.name.clone())),
            }
        } else {
            continue;
        };
        for (key, value) in data {
            let name = format!("{prefix}{key}");
            if is_env_var_name(&name) {
                env.set(name, value);
            } else {
                // Upstream skips these and reports them in an event; the container still starts.
                tracing::info!(container = %container.name, %name, "skipping invalid environment variable name from envFrom");
            }
        }
    }
    for var in container.env.iter().flatten() {
        let value = match &var.value_from {
            None => {
                let literal = var.value.as_deref().unwrap_or("");
                expand(literal, &env.items)
            }
            Some(from) => {
                if let Some(r) = &from.config_map_key_ref {
                    let optional = r.optional == Some(true);
                    let Some(cm) = source.config_map(namespace, &r.name).await? else {
                        if optional {
                            continue;
                        }
                        return Err(EnvError::ConfigMapNotFound(r.name.clone()));
                    };
                    match cm.data.as_ref().and_then(|d| d.get(&r.key)) {
                        Some(v) => v.clone(),
                        None if optional => continue,
                        None => {
                            return Err(EnvError::ConfigMapKeyNotFound {
                                key: r.key.clone(),
                                namespace: namespace.into(),
                                name: r.name.clone(),
                            });
                        }
                    }
                } else if let Some(r) = &from.secret_key_ref {
                    let optional = r.optional == Some(true);
                    let Some(secret) = source.secret(namespace, &r.name).await? else {
                        if optional {
                            continue;
                        }
                        return Err(EnvError::SecretNotFound(r.name.clone()));
                    };
                    match secret.data.as_ref().and_then(|d| d.get(&r.key)) {
                        Some(v) => String::from_utf8_lossy(&v.0).into_owned(),
                        None if optional => continue,
                        None => {
                            return Err(EnvError::SecretKeyNotFound {
                                key: r.key.clone(),
                                namespace: namespace.into(),
                                name: r.name.clone(),
                            });
                        }
                    }
                } else if let Some(f) = &from.field_ref {
                    pod_field(ctx, &f.field_path)?
                } else if let Some(r) = &from.resource_field_ref {
                    let name = r.container_name.as_deref().filter(|n| !n.is_empty());
                    resource_field(
                        ctx.pod,
                        name.unwrap_or(&container.name),
                        &r.resource,
                        r.divisor.as_ref(),
                        ctx.node_allocatable,
                    )?
                } else {
                    String::new()
                }
            }
        };
        env.set(var.name.clone(), value);
    }
    Ok(env.items)
}

/// Upstream's env var name rule for envFrom keys: `[-._a-zA-Z][-._a-zA-Z0-9]*`.
fn is_env_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || matches!(c, '-' | '.' | '_'))
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

/// A pod field for fieldRef (env) and downwardAPI volumes.
pub(crate) fn pod_field(ctx: &EnvContext<'_>, path: &str) -> Result<String, EnvError> {
    let meta = &ctx.pod.metadata;
    let spec = ctx.pod.spec.as_ref();
    if let Some(key) = subscript(path, "metadata.labels") {
        return Ok(lookup(&meta.labels, key));
    }
    if let Some(key) = subscript(path, "metadata.annotations") {
        return Ok(lookup(&meta.annotations, key));
    }
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "metadata.labels" => format_map(&meta.labels),
        "metadata.annotations" => format_map(&meta.annotations),
        "spec.nodeName" => ctx.node_name.to_string(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into()),
        "status.hostIP" => ctx.host_ip.to_string(),
        "status.hostIPs" => ctx.host_ip.to_string(),
        "status.podIP" => ctx.pod_ips.first().cloned().unwrap_or_default(),
        "status.podIPs" => ctx.pod_ips.join(","),
        other => return Err(EnvError::UnsupportedField(other.into())),
    })
}

/// `prefix['key']` -> `key`.
fn subscript<'p>(path: &'p str, prefix: &str) -> Option<&'p str> {
    path.strip_prefix(prefix)?
        .strip_prefix("['")?
        .strip_suffix("']")
}

fn lookup(map: &Option<BTreeMap<String, String>>, key: &str) -> String {
    map.as_ref()
        .and_then(|m| m.get(key))
        .cloned()
        .unwrap_or_default()
}

/// Labels/annotations as the downward API writes them: `key="value"` lines, sorted by key.
fn format_map(map: &Option<BTreeMap<String, String>>) -> String {
    map.iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A container resource for resourceFieldRef, rounded up in units of `divisor`; unset limits
/// default to the node's allocatable.
pub(crate) fn resource_field(
    pod: &Pod,
    container_name: &str,
    resource: &str,
    divisor: Option<&Quantity>,
    node_allocatable: &BTreeMap<String, Quantity>,
) -> Result<String, EnvError> {
    let spec = pod.spec.as_ref();
    let container = spec
        .into_iter()
        .flat_map(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
        })
        .find(|c| c.name == container_name)
        .ok_or_else(|| EnvError::NoSuchContainer(container_name.into()))?;
    let (kind, name) = resource
        .split_once('.')
        .filter(|(k, n)| matches!(*k, "limits" | "requests") && !n.is_empty())
        .ok_or_else(|| EnvError::UnsupportedResource(resource.into()))?;
    if !matches!(name, "cpu" | "memory" | "ephemeral-storage") && !name.starts_with("hugepages-") {
        return Err(EnvError::UnsupportedResource(resource.into()));
    }
    let resources = container.resources.as_ref();
    let map = if kind == "limits" {
        resources.and_then(|r| r.limits.as_ref())
    } else {
        resources.and_then(|r| r.requests.as_ref())
    };
    let mut value = map
        .and_then(|m| m.get(name))
        .and_then(|q| parse_quantity(&q.0));
    if value.is_none() && kind == "limits" {
        value = node_allocatable
            .get(name)
            .and_then(|q| parse_quantity(&q.0));
    }
    let value = value.unwrap_or(0.0);
    let divisor = divisor
        .and_then(|q| parse_quantity(&q.0))
        .filter(|d| *d > 0.0)
        .unwrap_or(1.0);
    let units = if name == "cpu" {
        // Upstream divides milli-values: ceil(milli(cpu) / milli(divisor)).
        (value * 1000.0).ceil() / (divisor * 1000.0).ceil()
    } else {
        value.ceil() / divisor.ceil()
    };
    Ok(format!("{}", units.ceil() as i64))
}

/// Upstream's `$(VAR)` expansion: `$(NAME)` is replaced when NAME is in `env` (last wins),
/// left as is otherwise; `$$` is a literal `$`; anything else is kept.
pub fn expand(input: &str, env: &[(String, String)]) -> String {
    let bytes = input.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'$' || i + 1 >= bytes.len() {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        match bytes[i + 1] {
            b'$' => {
                out.push(b'$');
                i += 2;
            }
            b'(' => match bytes[i + 2..].iter().position(|&b| b == b')') {
                Some(len) => {
                    let name = &input[i + 2..i + 2 + len];
                    match env.iter().rev().find(|(k, _)| k == name) {
                        Some((_, v)) => out.extend_from_slice(v.as_bytes()),
                        None => out.extend_from_slice(&bytes[i..i + 3 + len]),
                    }
                    i += 3 + len;
                }
                None => {
                    out.extend_from_slice(b"$(");
                    i += 2;
                }
            },
            other => {
                out.push(b'$');
                out.push(other);
                i += 2;
            }
        }
    }
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Docker-link style service env vars (FOO_SERVICE_HOST, FOO_PORT_80_TCP_ADDR, ...) for the
/// services of the pod's namespace when `enable_service_links`, plus `kubernetes` in default
/// always. Services without a cluster IP are skipped.
pub fn service_env(
    services: &[Service],
    pod_namespace: &str,
    enable_service_links: bool,
) -> Vec<(String, String)> {
    let mut chosen: BTreeMap<String, &Service> = BTreeMap::new();
    for svc in services {
        let name = svc.metadata.name.clone().unwrap_or_default();
        let ns = svc.metadata.namespace.as_deref().unwrap_or("default");
        if ns == "default" && name == "kubernetes" {
            chosen.entry(name).or_insert(svc);
        } else if ns == pod_namespace && enable_service_links {
            chosen.insert(name, svc);
        }
    }
    let mut out = Vec::new();
    for (name, svc) in chosen {
        let Some(spec) = &svc.spec else { continue };
        let Some(ip) = spec
            .cluster_ip
            .as_deref()
            .filter(|ip| !ip.is_empty() && *ip != "None")
        else {
            continue;
        };
        let ports = spec.ports.as_deref().unwrap_or_default();
        let Some(first) = ports.first() else { continue };
        let prefix = env_name(&name);
        out.push((format!("{prefix}_SERVICE_HOST"), ip.to_string()));
        out.push((format!("{prefix}_SERVICE_PORT"), first.port.to_string()));
        for p in ports {
            if let Some(port_name) = p.name.as_deref().filter(|n| !n.is_empty()) {
                out.push((
                    format!("{prefix}_SERVICE_PORT_{}", env_name(port_name)),
                    p.port.to_string(),
                ));
            }
        }
        let host = |port: i32| {
            if ip.contains(':') {
                format!("[{ip}]:{port}")
            } else {
                format!("{ip}:{port}")
            }
        };
        for (i, p) in ports.iter().enumerate() {
            let protocol = p.protocol.as_deref().unwrap_or("TCP");
            let lower = protocol.to_ascii_lowercase();
            let url = format!("{lower}://{}", host(p.port));
            if i == 0 {
                out.push((format!("{prefix}_PORT"), url.clone()));
            }
            let pp = format!("{prefix}_PORT_{}_{}", p.port, protocol.to_ascii_uppercase());
            out.push((pp.clone(), url));
            out.push((format!("{pp}_PROTO"), lower));
            out.push((format!("{pp}_PORT"), p.port.to_string()));
            out.push((format!("{pp}_ADDR"), ip.to_string()));
        }
    }
    out
}

fn env_name(name: &str) -> String {
    name.to_ascii_uppercase().replace('-', "_")
}

#[cfg(test)]
pub(crate) mod tests;
