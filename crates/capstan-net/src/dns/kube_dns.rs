//! Keeps Service kube-system/kube-dns (the cluster DNS address pods get in resolv.conf) with
//! its Endpoints and EndpointSlice pointing at the node address and port the server listens on;
//! the service proxy then carries `<cluster-dns>:53` there like any selector-less Service.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio_util::sync::CancellationToken;

pub const NAMESPACE: &str = "kube-system";
pub const NAME: &str = "kube-dns";
/// Also the name of the EndpointSlice.
const MANAGED_BY: &str = "capstan";
/// Recheck interval: someone may delete or edit the objects.
const RESYNC: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum KubeDnsError {
    #[error("{0} kube-system/kube-dns: {1}")]
    Api(&'static str, #[source] kube::Error),
    #[error("building {0}: {1}")]
    Build(&'static str, #[source] serde_json::Error),
}

/// Where cluster DNS is published.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KubeDnsService {
    /// The Service's ClusterIP (`--cluster-dns`).
    pub cluster_ip: IpAddr,
    /// The node address pods reach the DNS server at.
    pub endpoint_ip: IpAddr,
    /// The DNS server's port on that address (the Service's targetPort).
    pub port: u16,
}

fn labels() -> serde_json::Value {
    json!({
        "k8s-app": "kube-dns",
        "kubernetes.io/cluster-service": "true",
        "kubernetes.io/name": "CoreDNS",
    })
}

fn desired_service(s: &KubeDnsService) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": NAME, "namespace": NAMESPACE, "labels": labels()},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": s.cluster_ip.to_string(),
            "clusterIPs": [s.cluster_ip.to_string()],
            "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": s.port},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": s.port},
            ],
        }
    })
}

fn desired_endpoints(s: &KubeDnsService) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": NAME, "namespace": NAMESPACE, "labels": labels()},
        "subsets": [{
            "addresses": [{"ip": s.endpoint_ip.to_string()}],
            "ports": [
                {"name": "dns", "port": s.port, "protocol": "UDP"},
                {"name": "dns-tcp", "port": s.port, "protocol": "TCP"},
            ],
        }]
    })
}

fn desired_slice(s: &KubeDnsService) -> serde_json::Value {
    let mut labels = labels();
    labels["kubernetes.io/service-name"] = json!(NAME);
    labels["endpointslice.kubernetes.io/managed-by"] = json!(MANAGED_BY);
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": NAME, "namespace": NAMESPACE, "labels": labels},
        "addressType": if s.endpoint_ip.is_ipv4() { "IPv4" } else { "IPv6" },
        "endpoints": [{
            "addresses": [s.endpoint_ip.to_string()],
            "conditions": {"ready": true, "serving": true, "terminating": false},
        }],
        "ports": [
            {"name": "dns", "port": s.port, "protocol": "UDP"},
            {"name": "dns-tcp", "port": s.port, "protocol": "TCP"},
        ]
    })
}

/// Keeps the three objects as desired until `stop`; API errors are logged and retried.
pub async fn keep_kube_dns_service(client: Client, spec: KubeDnsService, stop: CancellationToken) {
    loop {
        if let Err(e) = ensure(&client, &spec).await {
            tracing::warn!(error = %e, "keeping the kube-dns Service");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(RESYNC) => {}
        }
    }
}

/// One pass: create what is missing and put back what drifted.
pub async fn ensure(client: &Client, spec: &KubeDnsService) -> Result<(), KubeDnsError> {
    let services: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    let want = desired_service(spec);
    match services
        .get_opt(NAME)
        .await
        .map_err(|e| KubeDnsError::Api("reading", e))?
    {
        None => create(&services, &want, "Service").await?,
        Some(cur) => {
            let spec_now = cur.spec.clone().unwrap_or_default();
            if spec_now.cluster_ip.as_deref() != Some(spec.cluster_ip.to_string().as_str()) {
                // The ClusterIP is immutable: recreate the Service on its new address.
                services
                    .delete(NAME, &DeleteParams::default())
                    .await
                    .map_err(|e| KubeDnsError::Api("deleting", e))?;
                create(&services, &want, "Service").await?;
            } else if service_drifted(&cur, spec) {
                let mut next =
                    serde_json::to_value(&cur).map_err(|e| KubeDnsError::Build("Service", e))?;
                next["spec"]["ports"] = want["spec"]["ports"].clone();
                next["spec"]["type"] = json!("ClusterIP");
                if let Some(sel) = next["spec"].as_object_mut() {
                    sel.remove("selector");
                }
                merge_labels(&mut next);
                replace_if_changed(&services, &cur, next, "Service").await?;
            }
        }
    }
    upsert(
        &Api::<Endpoints>::namespaced(client.clone(), NAMESPACE),
        desired_endpoints(spec),
        &["subsets"],
        "Endpoints",
    )
    .await?;
    upsert(
        &Api::<EndpointSlice>::namespaced(client.clone(), NAMESPACE),
        desired_slice(spec),
        &["addressType", "endpoints", "ports"],
        "EndpointSlice",
    )
    .await
}

/// Whether the Service's ports, type, selector or labels differ from what kube-dns needs (fields
/// the API server defaults are left alone, so an unchanged Service is never rewritten).
fn service_drifted(cur: &Service, spec: &KubeDnsService) -> bool {
    let s = cur.spec.clone().unwrap_or_default();
    let ports: Vec<(String, i32, String, String)> = s
        .ports
        .iter()
        .flatten()
        .map(|p| {
            let target = match &p.target_port {
                Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(i)) => {
                    i.to_string()
                }
                Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s)) => {
                    s.clone()
                }
                None => String::new(),
            };
            (
                p.name.clone().unwrap_or_default(),
                p.port,
                p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                target,
            )
        })
        .collect();
    let want = vec![
        (
            "dns".to_string(),
            53,
            "UDP".to_string(),
            spec.port.to_string(),
        ),
        (
            "dns-tcp".to_string(),
            53,
            "TCP".to_string(),
            spec.port.to_string(),
        ),
    ];
    let labels = cur.metadata.labels.clone().unwrap_or_default();
    let labels_ok = object_labels()
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v));
    ports != want
        || s.type_.as_deref().unwrap_or("ClusterIP") != "ClusterIP"
        || s.selector.as_ref().is_some_and(|m| !m.is_empty())
        || !labels_ok
}

fn merge_labels(obj: &mut serde_json::Value) {
    let want = labels();
    let meta = &mut obj["metadata"];
    if !meta["labels"].is_object() {
        meta["labels"] = json!({});
    }
    if let (Some(have), Some(want)) = (meta["labels"].as_object_mut(), want.as_object()) {
        for (k, v) in want {
            have.insert(k.clone(), v.clone());
        }
    }
}

async fn create<K>(
    api: &Api<K>,
    want: &serde_json::Value,
    kind: &'static str,
) -> Result<(), KubeDnsError>
where
    K: Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(want.clone()).map_err(|e| KubeDnsError::Build(kind, e))?;
    tracing::info!(kind, "creating kube-system/kube-dns");
    api.create(&PostParams::default(), &obj)
        .await
        .map_err(|e| KubeDnsError::Api("creating", e))?;
    Ok(())
}

/// Create `want`, or copy its `fields` (and labels) onto the existing object.
async fn upsert<K>(
    api: &Api<K>,
    want: serde_json::Value,
    fields: &[&str],
    kind: &'static str,
) -> Result<(), KubeDnsError>
where
    K: Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let Some(cur) = api
        .get_opt(NAME)
        .await
        .map_err(|e| KubeDnsError::Api("reading", e))?
    else {
        return create(api, &want, kind).await;
    };
    let mut next = serde_json::to_value(&cur).map_err(|e| KubeDnsError::Build(kind, e))?;
    for f in fields {
        next[*f] = want[*f].clone();
    }
    merge_labels(&mut next);
    if let (Some(have), Some(w)) = (
        next["metadata"]["labels"].as_object_mut(),
        want["metadata"]["labels"].as_object(),
    ) {
        for (k, v) in w {
            have.insert(k.clone(), v.clone());
        }
    }
    replace_if_changed(api, &cur, next, kind).await
}

async fn replace_if_changed<K>(
    api: &Api<K>,
    cur: &K,
    next: serde_json::Value,
    kind: &'static str,
) -> Result<(), KubeDnsError>
where
    K: Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let next: K = serde_json::from_value(next).map_err(|e| KubeDnsError::Build(kind, e))?;
    let same = serde_json::to_value(cur).ok() == serde_json::to_value(&next).ok();
    if same {
        return Ok(());
    }
    tracing::info!(kind, "updating kube-system/kube-dns");
    api.replace(NAME, &PostParams::default(), &next)
        .await
        .map_err(|e| KubeDnsError::Api("updating", e))?;
    Ok(())
}

/// The labels the kube-dns objects carry (for tests and callers that list them).
pub fn object_labels() -> BTreeMap<String, String> {
    labels()
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}
