//! Finding a pod's sandbox and containers in the runtime by the kubelet's labels, and the
//! small query-string parser the handlers share.

use std::collections::{BTreeMap, HashMap};

use capstan_runtime::cri::RuntimeService;
use capstan_runtime::cri::runtime_service::{
    ContainerFilter, ContainerStatus, PodSandboxFilter, PodSandboxState, PodSandboxStatus,
};

use crate::labels::{CONTAINER_NAME, CONTAINER_RESTART_COUNT, POD_NAME, POD_NAMESPACE, POD_UID};

/// A handler error: HTTP status and a plain-text message (what kubectl prints).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError(pub u16, pub String);

impl HttpError {
    pub fn not_found(msg: impl Into<String>) -> Self {
        HttpError(404, msg.into())
    }
    pub fn bad_request(msg: impl Into<String>) -> Self {
        HttpError(400, msg.into())
    }
    pub fn internal(msg: impl Into<String>) -> Self {
        HttpError(500, msg.into())
    }
}

impl axum::response::IntoResponse for HttpError {
    fn into_response(self) -> axum::response::Response {
        let code =
            http::StatusCode::from_u16(self.0).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
        (code, self.1).into_response()
    }
}

/// The instances of one container of a pod (the pod's newest UID), oldest restart first.
pub async fn container_instances(
    runtime: &dyn RuntimeService,
    namespace: &str,
    pod: &str,
    container: &str,
) -> Result<Vec<ContainerStatus>, HttpError> {
    let selector: BTreeMap<String, String> = [
        (POD_NAMESPACE, namespace),
        (POD_NAME, pod),
        (CONTAINER_NAME, container),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let list = runtime
        .list_containers(&ContainerFilter {
            label_selector: selector,
            ..Default::default()
        })
        .await
        .map_err(|e| HttpError::internal(format!("listing containers: {e}")))?;
    let mut statuses = Vec::with_capacity(list.len());
    for c in list {
        if let Ok(s) = runtime.container_status(&c.id).await {
            statuses.push(s);
        }
    }
    // A pod deleted and re-created under the same name: only the newest UID counts.
    let newest_uid = statuses
        .iter()
        .max_by_key(|s| s.created_at)
        .and_then(|s| s.labels.get(POD_UID).cloned());
    statuses.retain(|s| s.labels.get(POD_UID) == newest_uid.as_ref());
    statuses.sort_by_key(|s| (restart_count(s), s.created_at));
    Ok(statuses)
}

fn restart_count(s: &ContainerStatus) -> u64 {
    s.annotations
        .get(CONTAINER_RESTART_COUNT)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The current instance (or with `previous` the one before it) of a container.
pub async fn find_container(
    runtime: &dyn RuntimeService,
    namespace: &str,
    pod: &str,
    container: &str,
    previous: bool,
) -> Result<ContainerStatus, HttpError> {
    let mut all = container_instances(runtime, namespace, pod, container).await?;
    let current = all.pop().ok_or_else(|| {
        HttpError::not_found(format!(
            "container {container:?} in pod {pod:?} is waiting to start: ContainerCreating"
        ))
    })?;
    if !previous {
        return Ok(current);
    }
    let below = restart_count(&current);
    all.into_iter()
        .rev()
        .find(|s| restart_count(s) < below || below == 0)
        .ok_or_else(|| {
            HttpError::bad_request(format!(
                "previous terminated container {container:?} in pod {pod:?} not found"
            ))
        })
}

/// The pod's newest ready sandbox.
pub async fn find_sandbox(
    runtime: &dyn RuntimeService,
    namespace: &str,
    pod: &str,
) -> Result<PodSandboxStatus, HttpError> {
    let selector: BTreeMap<String, String> = [(POD_NAMESPACE, namespace), (POD_NAME, pod)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let list = runtime
        .list_pod_sandboxes(&PodSandboxFilter {
            state: Some(PodSandboxState::Ready),
            label_selector: selector,
            ..Default::default()
        })
        .await
        .map_err(|e| HttpError::internal(format!("listing sandboxes: {e}")))?;
    let newest = list
        .into_iter()
        .max_by_key(|s| s.created_at)
        .ok_or_else(|| {
            HttpError::not_found(format!("pod {namespace}/{pod} has no running sandbox"))
        })?;
    runtime
        .pod_sandbox_status(&newest.id)
        .await
        .map_err(|e| HttpError::internal(format!("sandbox status: {e}")))
}

/// Decodes a query string into pairs (repeated keys kept, in order).
pub fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// The last value of each key.
pub fn query_map(query: Option<&str>) -> HashMap<String, String> {
    query_pairs(query).into_iter().collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_keeps_repeated_commands() {
        let q = query_pairs(Some(
            "command=sh&command=-c&command=echo+a%20b%3B&stdout=true&x",
        ));
        let cmds: Vec<_> = q
            .iter()
            .filter(|(k, _)| k == "command")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(cmds, ["sh", "-c", "echo a b;"]);
        assert_eq!(
            query_map(Some("a=1&a=2")).get("a").map(String::as_str),
            Some("2")
        );
        assert_eq!(decode("%zz%4"), "%zz%4");
    }
}
