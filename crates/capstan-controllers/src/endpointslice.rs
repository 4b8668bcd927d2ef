//! The EndpointSlice controller (upstream's `pkg/controller/endpointslice`): for every Service
//! with a selector, IPv4 EndpointSlices owned by the Service listing the matching pods with
//! ready/serving/terminating conditions, at most [`MAX_ENDPOINTS_PER_SLICE`] per slice and one
//! port set per slice. Existing slices are updated in place; extra ones are deleted.

use crate::endpoints::{
    ServiceTriggers, derived_labels, endpoint_hostname, is_apiserver_service, pod_finished, pod_ip,
    pod_ready, resolve_ports, run_service_loop, selected_pods, selector_of, target_ref,
};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Upstream's default `--max-endpoints-per-slice`.
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";

#[derive(Debug, thiserror::Error)]
pub enum EndpointSliceError {
    #[error("listing EndpointSlices of {0}")]
    List(String, #[source] kube::Error),
    #[error("writing an EndpointSlice of {0}")]
    Write(String, #[source] kube::Error),
    #[error("deleting EndpointSlice {0}")]
    Delete(String, #[source] kube::Error),
}

/// Run the EndpointSlice controller until `stop`.
pub async fn run(
    client: Client,
    pods: Store<Pod>,
    services: Store<Service>,
    triggers: ServiceTriggers,
    stop: CancellationToken,
) {
    let (p, s) = (pods.clone(), services.clone());
    run_service_loop(
        "endpointslice",
        services,
        triggers,
        stop,
        move |ns: String, name: String| {
            let (client, p, s) = (client.clone(), p.clone(), s.clone());
            async move { sync(&client, &p, &s, &ns, &name).await }
        },
    )
    .await
}

/// The ports and endpoints of each slice a Service should have (a placeholder with neither
/// when no pod qualifies, as upstream).
pub fn desired_slices(svc: &Service, pods: &[Arc<Pod>]) -> Vec<(Vec<EndpointPort>, Vec<Endpoint>)> {
    let publish_not_ready = svc
        .spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false);
    let has_ports = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .is_some_and(|p| !p.is_empty());
    let mut groups: BTreeMap<String, (Vec<EndpointPort>, Vec<Endpoint>)> = BTreeMap::new();
    for pod in pods {
        if pod_finished(pod) {
            continue;
        }
        let Some(ip) = pod_ip(pod) else { continue };
        let resolved = resolve_ports(svc, pod);
        if has_ports && resolved.is_empty() {
            continue;
        }
        let ports: Vec<EndpointPort> = resolved
            .into_iter()
            .map(|p| EndpointPort {
                name: Some(p.name.unwrap_or_default()),
                port: Some(p.port),
                protocol: p.protocol,
                app_protocol: p.app_protocol,
            })
            .collect();
        let terminating = pod.metadata.deletion_timestamp.is_some();
        // Serving is the pod's readiness; ready also excludes terminating pods, unless the
        // Service publishes not-ready addresses (then every endpoint is ready).
        let serving = pod_ready(pod);
        let endpoint = Endpoint {
            addresses: vec![ip],
            conditions: Some(EndpointConditions {
                ready: Some(publish_not_ready || (serving && !terminating)),
                serving: Some(serving),
                terminating: Some(terminating),
            }),
            hostname: endpoint_hostname(svc, pod),
            node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            target_ref: Some(target_ref(pod)),
            ..Endpoint::default()
        };
        let key = serde_json::to_string(&ports).unwrap_or_default();
        groups
            .entry(key)
            .or_insert_with(|| (ports, Vec::new()))
            .1
            .push(endpoint);
    }
    let mut out = Vec::new();
    for (ports, mut endpoints) in groups.into_values() {
        endpoints.sort_by(|a, b| a.addresses.cmp(&b.addresses));
        for chunk in endpoints.chunks(MAX_ENDPOINTS_PER_SLICE) {
            out.push((ports.clone(), chunk.to_vec()));
        }
    }
    if out.is_empty() {
        out.push((Vec::new(), Vec::new()));
    }
    out
}

fn owner_reference(svc: &Service) -> OwnerReference {
    OwnerReference {
        api_version: "v1".into(),
        kind: "Service".into(),
        name: svc.name_any(),
        uid: svc.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

async fn sync(
    client: &Client,
    pods: &Store<Pod>,
    services: &Store<Service>,
    ns: &str,
    name: &str,
) -> Result<(), EndpointSliceError> {
    if is_apiserver_service(ns, name) {
        return Ok(());
    }
    let key = format!("{ns}/{name}");
    let api = Api::<EndpointSlice>::namespaced(client.clone(), ns);
    // Listed from the API, not a cache: slices are created with generateName, so a stale
    // cache would create duplicates.
    let lp = ListParams::default().labels(&format!(
        "{SERVICE_NAME_LABEL}={name},{MANAGED_BY_LABEL}={MANAGED_BY}"
    ));
    let mut existing = api
        .list(&lp)
        .await
        .map_err(|e| EndpointSliceError::List(key.clone(), e))?
        .items;
    existing.sort_by_key(|s| s.name_any());
    let svc = services.get(&ObjectRef::new(name).within(ns));
    let desired = match svc
        .as_deref()
        .and_then(|s| selector_of(s).map(|sel| (s, sel)))
    {
        Some((svc, sel)) => desired_slices(svc, &selected_pods(pods, ns, sel)),
        // Gone (no garbage collector to follow the ownerReference yet) or no selector.
        None if svc.is_none() => Vec::new(),
        None => return Ok(()),
    };
    let Some(svc) = svc else {
        return delete_all(&api, existing).await;
    };
    let mut labels = derived_labels(&svc);
    labels.insert(SERVICE_NAME_LABEL.into(), name.to_string());
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    let owner = owner_reference(&svc);
    let mut unused: Vec<Option<EndpointSlice>> = existing.into_iter().map(Some).collect();
    let mut to_create = Vec::new();
    let mut to_update = Vec::new();
    // First give each desired slice an existing one with the same ports, then any left over.
    let mut pending = Vec::new();
    for (ports, endpoints) in desired {
        let same = unused
            .iter()
            .position(|s| s.as_ref().is_some_and(|s| slice_ports(s) == ports));
        match same.and_then(|i| unused[i].take()) {
            Some(s) => to_update.push((s, ports, endpoints)),
            None => pending.push((ports, endpoints)),
        }
    }
    for (ports, endpoints) in pending {
        match unused.iter_mut().find_map(Option::take) {
            Some(s) => to_update.push((s, ports, endpoints)),
            None => to_create.push((ports, endpoints)),
        }
    }
    for (mut slice, ports, endpoints) in to_update {
        let owned = slice
            .owner_references()
            .iter()
            .any(|o| o.uid == owner.uid && o.controller == Some(true));
        if slice_ports(&slice) == ports
            && slice.endpoints == endpoints
            && slice.labels() == &labels
            && owned
            && slice.address_type == "IPv4"
        {
            continue;
        }
        let slice_name = slice.name_any();
        slice.ports = Some(ports);
        slice.endpoints = endpoints;
        slice.address_type = "IPv4".into();
        slice.metadata.labels = Some(labels.clone());
        slice.metadata.owner_references = Some(vec![owner.clone()]);
        slice.metadata.managed_fields = None;
        api.replace(&slice_name, &PostParams::default(), &slice)
            .await
            .map_err(|e| EndpointSliceError::Write(key.clone(), e))?;
    }
    for (ports, endpoints) in to_create {
        let mut slice = EndpointSlice {
            address_type: "IPv4".into(),
            endpoints,
            ports: Some(ports),
            ..EndpointSlice::default()
        };
        slice.metadata.generate_name = Some(format!("{name}-"));
        slice.metadata.labels = Some(labels.clone());
        slice.metadata.owner_references = Some(vec![owner.clone()]);
        api.create(&PostParams::default(), &slice)
            .await
            .map_err(|e| EndpointSliceError::Write(key.clone(), e))?;
    }
    delete_all(&api, unused.into_iter().flatten().collect()).await
}

fn slice_ports(s: &EndpointSlice) -> Vec<EndpointPort> {
    s.ports.clone().unwrap_or_default()
}

async fn delete_all(
    api: &Api<EndpointSlice>,
    slices: Vec<EndpointSlice>,
) -> Result<(), EndpointSliceError> {
    for s in slices {
        match api.delete(&s.name_any(), &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.is_not_found() => {}
            Err(e) => return Err(EndpointSliceError::Delete(s.name_any(), e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(i: usize, ready: bool, terminating: bool) -> Arc<Pod> {
        let mut meta = serde_json::json!({"name": format!("p{i}"), "namespace": "ns"});
        if terminating {
            meta["deletionTimestamp"] = "2026-01-01T00:00:00Z".into();
        }
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": meta,
                "spec": {"containers": [{"name": "c", "image": "i"}], "nodeName": "n1"},
                "status": {"podIP": format!("10.1.{}.{}", i / 200, i % 200 + 1), "conditions": [
                    {"type": "Ready", "status": if ready { "True" } else { "False" }}]}
            }))
            .unwrap(),
        )
    }

    fn svc() -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "s", "namespace": "ns"},
            "spec": {"selector": {"app": "a"}, "ports": [{"port": 80, "targetPort": 8080}]}
        }))
        .unwrap()
    }

    #[test]
    fn conditions_and_split_at_max() {
        let pods: Vec<_> = (0..250).map(|i| pod(i, i % 2 == 0, i == 1)).collect();
        let slices = desired_slices(&svc(), &pods);
        assert_eq!(
            slices.iter().map(|s| s.1.len()).collect::<Vec<_>>(),
            [100, 100, 50]
        );
        let all: Vec<&Endpoint> = slices.iter().flat_map(|s| &s.1).collect();
        let term = all
            .iter()
            .find(|e| e.target_ref.as_ref().unwrap().name.as_deref() == Some("p1"))
            .unwrap();
        let c = term.conditions.as_ref().unwrap();
        assert_eq!(
            (c.ready, c.serving, c.terminating),
            (Some(false), Some(false), Some(true))
        );
        assert_eq!(slices[0].0[0].port, Some(8080));
        assert_eq!(desired_slices(&svc(), &[]), vec![(vec![], vec![])]);
    }
}
