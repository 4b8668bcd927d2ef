//! Per-kind rules applied around writes, in upstream's "REST strategy" role: what a create
//! resets, what an update of the main resource or of `/status` may change, and generation.

use crate::allocator::AllocationError;
use crate::object::{self, meta_mut, spec_part};
use crate::server::ApiServer;
use capstan_api::{ApiError, ResourceInfo, Subresource};
use serde_json::{Value, json};

/// Kinds whose metadata.generation tracks spec changes.
fn has_generation(info: &ResourceInfo) -> bool {
    matches!(
        info.kind,
        "Deployment"
            | "ReplicaSet"
            | "StatefulSet"
            | "DaemonSet"
            | "Job"
            | "CronJob"
            | "Ingress"
            | "NetworkPolicy"
            | "PodDisruptionBudget"
            | "HorizontalPodAutoscaler"
            | "Pod"
            | "PersistentVolumeClaim"
            | "ResourceQuota"
    )
}

/// Kinds with a status subresource whose status a create resets (clients cannot set it).
fn resets_status_on_create(info: &ResourceInfo) -> bool {
    info.has_subresource(Subresource::Status)
        && !matches!(
            info.kind,
            "Node" | "Pod" | "Namespace" | "PersistentVolume" | "Service"
        )
}

/// Quality of service class from container requests and limits (upstream's GetPodQOS, simplified
/// to cpu and memory).
fn qos_class(pod: &Value) -> &'static str {
    let containers: Vec<&Value> = ["containers", "initContainers"]
        .iter()
        .filter_map(|k| pod["spec"][k].as_array())
        .flatten()
        .collect();
    let mut any = false;
    let mut guaranteed = true;
    for c in &containers {
        let req = &c["resources"]["requests"];
        let lim = &c["resources"]["limits"];
        for r in ["cpu", "memory"] {
            let (q, l) = (req.get(r), lim.get(r));
            if q.is_some() || l.is_some() {
                any = true;
            }
            match (q, l) {
                (_, None) => guaranteed = false,
                (Some(q), Some(l)) if q != l => guaranteed = false,
                _ => {}
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

pub(crate) fn prepare_for_create(info: &ResourceInfo, obj: &mut Value) {
    if resets_status_on_create(info)
        && let Some(m) = obj.as_object_mut()
    {
        m.remove("status");
    }
    if has_generation(info) {
        meta_mut(obj).insert("generation".into(), json!(1));
    }
    match info.kind {
        "Pod" => {
            let qos = qos_class(obj);
            obj["status"] = json!({"phase": "Pending", "qosClass": qos});
        }
        "Namespace" => {
            obj["status"] = json!({"phase": "Active"});
            if obj["spec"]["finalizers"].as_array().is_none() {
                obj["spec"] = json!({"finalizers": ["kubernetes"]});
            }
        }
        "Service" if obj.get("status").is_none() => {
            obj["status"] = json!({"loadBalancer": {}});
        }
        _ => {}
    }
}

/// Merge an incoming update with the stored object: keep server-owned metadata, keep status on
/// main-resource writes and everything but status on `/status` writes, bump generation.
pub(crate) fn prepare_for_update(
    info: &ResourceInfo,
    old: &Value,
    mut new: Value,
    sub: Option<Subresource>,
) -> Value {
    if sub == Some(Subresource::Status) {
        let mut merged = old.clone();
        match new.get("status") {
            Some(s) => merged["status"] = s.clone(),
            None => {
                if let Some(m) = merged.as_object_mut() {
                    m.remove("status");
                }
            }
        }
        if let Some(mf) = new.get("metadata").and_then(|m| m.get("managedFields")) {
            meta_mut(&mut merged).insert("managedFields".into(), mf.clone());
        }
        return merged;
    }
    if info.has_subresource(Subresource::Status) {
        match old.get("status") {
            Some(s) => new["status"] = s.clone(),
            None => {
                if let Some(m) = new.as_object_mut() {
                    m.remove("status");
                }
            }
        }
    }
    let old_meta = object::meta(old).cloned().unwrap_or_default();
    let m = meta_mut(&mut new);
    for k in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
    ] {
        match old_meta.get(k) {
            Some(v) => m.insert(k.into(), v.clone()),
            None => m.remove(k),
        };
    }
    if has_generation(info) && spec_part(old) != spec_part(&new) {
        let g = old_meta
            .get("generation")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            + 1;
        meta_mut(&mut new).insert("generation".into(), json!(g));
    }
    new
}

/// Allocate ClusterIPs and NodePorts for a new Service (or the additions of an updated one).
/// Returns what was newly allocated so a failed write can release it.
pub(crate) async fn allocate_service(
    server: &ApiServer,
    svc: &mut Value,
    old: Option<&Value>,
) -> Result<Allocated, ApiError> {
    let mut done = Allocated {
        owner: crate::allocator::owner_of(svc),
        ..Allocated::default()
    };
    match allocate_into(server, svc, old, &mut done).await {
        Ok(()) => Ok(done),
        Err(e) => {
            done.release(server).await;
            let name = object::name(svc).unwrap_or_default().to_string();
            let info =
                capstan_api::resources::find("", "v1", "services").expect("services are served");
            Err(match e {
                AllocationError::Invalid(c) => ApiError::invalid(info, &name, vec![c]),
                AllocationError::Store(e) => {
                    ApiError::internal(format!("allocating service addresses: {e}"))
                }
            })
        }
    }
}

async fn allocate_into(
    server: &ApiServer,
    svc: &mut Value,
    old: Option<&Value>,
    done: &mut Allocated,
) -> Result<(), AllocationError> {
    let owner = done.owner.clone();
    let ty = svc["spec"]["type"]
        .as_str()
        .unwrap_or("ClusterIP")
        .to_string();
    if ty != "ExternalName" {
        let requested = svc["spec"]["clusterIP"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(String::from);
        let old_ip = old
            .and_then(|o| o["spec"]["clusterIP"].as_str())
            .filter(|s| !s.is_empty())
            .map(String::from);
        match (requested.as_deref(), old_ip.as_deref()) {
            (Some("None"), _) => {
                svc["spec"]["clusterIPs"] = json!(["None"]);
            }
            (Some(r), Some(o)) if r == o => {}
            (None, Some(o)) => {
                svc["spec"]["clusterIP"] = json!(o);
                svc["spec"]["clusterIPs"] = json!([o]);
            }
            (req, _) => {
                let ip = server.allocator.allocate_ip(req, &owner).await?;
                done.ips.push(ip.to_string());
                svc["spec"]["clusterIP"] = json!(ip.to_string());
                svc["spec"]["clusterIPs"] = json!([ip.to_string()]);
            }
        }
        if svc["spec"]["ipFamilies"].as_array().is_none() {
            svc["spec"]["ipFamilies"] = json!(["IPv4"]);
        }
        if svc["spec"]["ipFamilyPolicy"].as_str().is_none() {
            svc["spec"]["ipFamilyPolicy"] = json!("SingleStack");
        }
    }
    let wants_node_ports = ty == "NodePort" || ty == "LoadBalancer";
    let old_ports = old.map(crate::allocator::node_ports).unwrap_or_default();
    if let Some(ports) = svc["spec"]["ports"].as_array_mut() {
        for (i, p) in ports.iter_mut().enumerate() {
            let field = format!("spec.ports[{i}].nodePort");
            let req = p["nodePort"]
                .as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .filter(|n| *n > 0);
            if !wants_node_ports {
                if let Some(m) = p.as_object_mut() {
                    m.remove("nodePort");
                }
                continue;
            }
            match req {
                Some(n) if old_ports.contains(&n) => {}
                _ => {
                    let n = server.allocator.allocate_port(req, &field, &owner).await?;
                    done.ports.push(n);
                    p["nodePort"] = json!(n);
                }
            }
        }
    }
    Ok(())
}

#[derive(Default)]
pub(crate) struct Allocated {
    owner: String,
    ips: Vec<String>,
    ports: Vec<u16>,
}

impl Allocated {
    pub async fn release(&self, server: &ApiServer) {
        for ip in &self.ips {
            server.allocator.release_ip(ip, &self.owner).await;
        }
        for p in &self.ports {
            server.allocator.release_port(*p, &self.owner).await;
        }
    }
}

/// After an update of a Service, release what the old one held and the new one does not.
pub(crate) async fn release_service_diff(server: &ApiServer, old: &Value, new: &Value) {
    let owner = crate::allocator::owner_of(old);
    let new_ips = crate::allocator::cluster_ips(new);
    for ip in crate::allocator::cluster_ips(old) {
        if !new_ips.contains(&ip) {
            server.allocator.release_ip(&ip.to_string(), &owner).await;
        }
    }
    let new_ports = crate::allocator::node_ports(new);
    for p in crate::allocator::node_ports(old) {
        if !new_ports.contains(&p) {
            server.allocator.release_port(p, &owner).await;
        }
    }
}
