//! The file payloads of API-data volumes: configMap, secret, downwardAPI and projected.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ConfigMap, DownwardAPIVolumeFile, KeyToPath, Pod, Secret, ServiceAccountTokenProjection,
};

use super::VolumeError;
use super::atomic_writer::{FileProjection, Payload};
use crate::env::{EnvContext, pod_field, resource_field};
use crate::source::ObjectSource;

/// Upstream's default file mode for API-data volumes.
pub const DEFAULT_MODE: i32 = 0o644;

/// Keys of a ConfigMap (data and binaryData) as bytes.
fn config_map_data(cm: &ConfigMap) -> BTreeMap<String, Vec<u8>> {
    let mut out: BTreeMap<String, Vec<u8>> = cm
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
        .collect();
    for (k, v) in cm.binary_data.iter().flatten() {
        out.insert(k.clone(), v.0.clone());
    }
    out
}

fn secret_data(s: &Secret) -> BTreeMap<String, Vec<u8>> {
    s.data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect()
}

/// Files of a key/value object: every key, or the listed items (a missing key is an error
/// unless optional).
fn key_files(
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
    default_mode: i32,
    optional: bool,
    missing_key: impl Fn(&str) -> VolumeError,
    payload: &mut Payload,
) -> Result<(), VolumeError> {
    let mode = |m: Option<i32>| (m.unwrap_or(default_mode) & 0o7777) as u32;
    match items.filter(|i| !i.is_empty()) {
        None => {
            for (k, v) in data {
                payload.insert(
                    k.clone(),
                    FileProjection {
                        data: v.clone(),
                        mode: mode(None),
                    },
                );
            }
        }
        Some(items) => {
            for item in items {
                match data.get(&item.key) {
                    Some(v) => {
                        payload.insert(
                            item.path.clone(),
                            FileProjection {
                                data: v.clone(),
                                mode: mode(item.mode),
                            },
                        );
                    }
                    None if optional => {}
                    None => return Err(missing_key(&item.key)),
                }
            }
        }
    }
    Ok(())
}

/// A configMap volume (or projection).
pub async fn config_map(
    pod: &Pod,
    name: &str,
    items: Option<&Vec<KeyToPath>>,
    default_mode: i32,
    optional: bool,
    source: &dyn ObjectSource,
    payload: &mut Payload,
) -> Result<(), VolumeError> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let Some(cm) = source.config_map(ns, name).await? else {
        if optional {
            return Ok(());
        }
        return Err(VolumeError::NotFound {
            kind: "configmap",
            name: name.into(),
        });
    };
    key_files(
        &config_map_data(&cm),
        items,
        default_mode,
        optional,
        |key| {
            VolumeError::MissingKey(format!(
                "configmap references non-existent config key: {key}"
            ))
        },
        payload,
    )
}

/// A secret volume (or projection).
pub async fn secret(
    pod: &Pod,
    name: &str,
    items: Option<&Vec<KeyToPath>>,
    default_mode: i32,
    optional: bool,
    source: &dyn ObjectSource,
    payload: &mut Payload,
) -> Result<(), VolumeError> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let Some(s) = source.secret(ns, name).await? else {
        if optional {
            return Ok(());
        }
        return Err(VolumeError::NotFound {
            kind: "secret",
            name: name.into(),
        });
    };
    key_files(
        &secret_data(&s),
        items,
        default_mode,
        optional,
        |key| VolumeError::MissingKey(format!("references non-existent secret key: {key}")),
        payload,
    )
}

/// downwardAPI items: pod metadata fields and container resources.
pub fn downward_api(
    pod: &Pod,
    items: &[DownwardAPIVolumeFile],
    default_mode: i32,
    node_allocatable: &BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    payload: &mut Payload,
) -> Result<(), VolumeError> {
    let ctx = EnvContext {
        pod,
        node_name: "",
        host_ip: "",
        pod_ips: &[],
        service_env: &[],
        node_allocatable,
    };
    for item in items {
        let value = if let Some(f) = &item.field_ref {
            if !f.field_path.starts_with("metadata.") {
                return Err(VolumeError::Field(format!(
                    "unsupported fieldPath: {}",
                    f.field_path
                )));
            }
            pod_field(&ctx, &f.field_path).map_err(|e| VolumeError::Field(e.to_string()))?
        } else if let Some(r) = &item.resource_field_ref {
            let container = r.container_name.as_deref().unwrap_or("");
            resource_field(
                pod,
                container,
                &r.resource,
                r.divisor.as_ref(),
                node_allocatable,
            )
            .map_err(|e| VolumeError::Field(e.to_string()))?
        } else {
            continue;
        };
        payload.insert(
            item.path.clone(),
            FileProjection {
                data: value.into_bytes(),
                mode: (item.mode.unwrap_or(default_mode) & 0o7777) as u32,
            },
        );
    }
    Ok(())
}

/// Default token lifetime for a projection without expirationSeconds (upstream: 1h).
pub const DEFAULT_TOKEN_SECONDS: i64 = 3600;

/// The service account a projected token is for.
pub fn service_account_name(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".into())
}

/// Token lifetime of a projection.
pub fn token_seconds(t: &ServiceAccountTokenProjection) -> i64 {
    t.expiration_seconds.unwrap_or(DEFAULT_TOKEN_SECONDS)
}
