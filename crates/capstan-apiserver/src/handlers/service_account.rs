//! ServiceAccount admission for new pods, as upstream's plugin: the `default` service account
//! when none is named, and unless automount is off (on the pod, else on the service account) a
//! projected `kube-api-access-*` volume (bound token, cluster CA, namespace) mounted read-only
//! at /var/run/secrets/kubernetes.io/serviceaccount in every container.

use crate::server::ApiServer;
use capstan_api::{ApiError, resources};
use serde_json::{Value, json};

pub const MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The ConfigMap with the cluster CA that every namespace gets (root CA publisher).
pub const ROOT_CA_CONFIGMAP: &str = "kube-root-ca.crt";
/// Upstream's lifetime for the projected token (the kubelet refreshes it well before).
const TOKEN_EXPIRATION: i64 = 3607;

pub(crate) async fn admit(server: &ApiServer, pod: &mut Value) -> Result<(), ApiError> {
    // Mirror pods of static manifests never get service account tokens.
    if pod["metadata"]["annotations"]["kubernetes.io/config.mirror"].is_string() {
        return Ok(());
    }
    let ns = pod["metadata"]["namespace"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return Ok(());
    };
    let sa_name = spec
        .get("serviceAccountName")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or("default")
        .to_string();
    spec.insert("serviceAccountName".into(), json!(sa_name));
    spec.insert("serviceAccount".into(), json!(sa_name));
    let automount = match spec
        .get("automountServiceAccountToken")
        .and_then(Value::as_bool)
    {
        Some(on) => on,
        None => service_account_automount(server, &ns, &sa_name).await?,
    };
    if !automount {
        return Ok(());
    }
    let volume = format!("kube-api-access-{}", crate::object::random_suffix(5));
    let mut mounted = false;
    for field in ["initContainers", "containers"] {
        let Some(containers) = spec.get_mut(field).and_then(Value::as_array_mut) else {
            continue;
        };
        for c in containers {
            let Some(c) = c.as_object_mut() else { continue };
            let mounts = c.entry("volumeMounts").or_insert_with(|| json!([]));
            if let Some(mounts) = mounts.as_array_mut()
                && !mounts.iter().any(|m| m["mountPath"] == MOUNT_PATH)
            {
                mounts.push(json!({"name": volume, "readOnly": true, "mountPath": MOUNT_PATH}));
                mounted = true;
            }
        }
    }
    // Containers that mount their own volume there keep it; the token volume exists only
    // when some container uses it.
    if mounted
        && let Some(volumes) = spec
            .entry("volumes")
            .or_insert_with(|| json!([]))
            .as_array_mut()
    {
        volumes.push(json!({
            "name": volume,
            "projected": {
                "defaultMode": 420,
                "sources": [
                    {"serviceAccountToken": {"expirationSeconds": TOKEN_EXPIRATION, "path": "token"}},
                    {"configMap": {"name": ROOT_CA_CONFIGMAP, "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
                ],
            },
        }));
    }
    Ok(())
}

/// The service account's automountServiceAccountToken; true when unset or the account is
/// missing (it may be created right after the namespace; the kubelet retries the token).
async fn service_account_automount(
    server: &ApiServer,
    ns: &str,
    name: &str,
) -> Result<bool, ApiError> {
    let info = resources::find("", "v1", "serviceaccounts").expect("serviceaccounts are served");
    let kv = server
        .store
        .get(&info.store_key(Some(ns), name))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(kv
        .and_then(|kv| serde_json::from_slice::<Value>(&kv.value).ok())
        .and_then(|sa| sa["automountServiceAccountToken"].as_bool())
        .unwrap_or(true))
}
