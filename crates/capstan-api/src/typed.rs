//! Dispatch from a served resource to its k8s-openapi type: decoding checks and the typed
//! round trip that normalises an object (unknown fields dropped, upstream field order).

use crate::ResourceInfo;
use k8s_openapi::api::{apps, autoscaling, batch, coordination, core, discovery, events, networking, node, policy, rbac, scheduling, storage};
use serde_json::Value;

macro_rules! dispatch {
    ($info:expr, $f:ident, $($arg:expr),*) => {
        match ($info.group, $info.kind) {
            ("", "Namespace") => $f::<core::v1::Namespace>($($arg),*),
            ("", "Pod") => $f::<core::v1::Pod>($($arg),*),
            ("", "Node") => $f::<core::v1::Node>($($arg),*),
            ("", "Service") => $f::<core::v1::Service>($($arg),*),
            ("", "Endpoints") => $f::<core::v1::Endpoints>($($arg),*),
            ("", "ConfigMap") => $f::<core::v1::ConfigMap>($($arg),*),
            ("", "Secret") => $f::<core::v1::Secret>($($arg),*),
            ("", "ServiceAccount") => $f::<core::v1::ServiceAccount>($($arg),*),
            ("", "Event") => $f::<core::v1::Event>($($arg),*),
            ("", "PersistentVolume") => $f::<core::v1::PersistentVolume>($($arg),*),
            ("", "PersistentVolumeClaim") => $f::<core::v1::PersistentVolumeClaim>($($arg),*),
            ("", "ResourceQuota") => $f::<core::v1::ResourceQuota>($($arg),*),
            ("", "LimitRange") => $f::<core::v1::LimitRange>($($arg),*),
            ("apps", "Deployment") => $f::<apps::v1::Deployment>($($arg),*),
            ("apps", "ReplicaSet") => $f::<apps::v1::ReplicaSet>($($arg),*),
            ("apps", "StatefulSet") => $f::<apps::v1::StatefulSet>($($arg),*),
            ("apps", "DaemonSet") => $f::<apps::v1::DaemonSet>($($arg),*),
            ("apps", "ControllerRevision") => $f::<apps::v1::ControllerRevision>($($arg),*),
            ("batch", "Job") => $f::<batch::v1::Job>($($arg),*),
            ("batch", "CronJob") => $f::<batch::v1::CronJob>($($arg),*),
            ("coordination.k8s.io", "Lease") => $f::<coordination::v1::Lease>($($arg),*),
            ("discovery.k8s.io", "EndpointSlice") => $f::<discovery::v1::EndpointSlice>($($arg),*),
            ("events.k8s.io", "Event") => $f::<events::v1::Event>($($arg),*),
            ("networking.k8s.io", "Ingress") => $f::<networking::v1::Ingress>($($arg),*),
            ("networking.k8s.io", "IngressClass") => $f::<networking::v1::IngressClass>($($arg),*),
            ("networking.k8s.io", "NetworkPolicy") => $f::<networking::v1::NetworkPolicy>($($arg),*),
            ("rbac.authorization.k8s.io", "Role") => $f::<rbac::v1::Role>($($arg),*),
            ("rbac.authorization.k8s.io", "RoleBinding") => $f::<rbac::v1::RoleBinding>($($arg),*),
            ("rbac.authorization.k8s.io", "ClusterRole") => $f::<rbac::v1::ClusterRole>($($arg),*),
            ("rbac.authorization.k8s.io", "ClusterRoleBinding") => $f::<rbac::v1::ClusterRoleBinding>($($arg),*),
            ("storage.k8s.io", "StorageClass") => $f::<storage::v1::StorageClass>($($arg),*),
            ("policy", "PodDisruptionBudget") => $f::<policy::v1::PodDisruptionBudget>($($arg),*),
            ("autoscaling", "HorizontalPodAutoscaler") => $f::<autoscaling::v2::HorizontalPodAutoscaler>($($arg),*),
            ("scheduling.k8s.io", "PriorityClass") => $f::<scheduling::v1::PriorityClass>($($arg),*),
            ("node.k8s.io", "RuntimeClass") => $f::<node::v1::RuntimeClass>($($arg),*),
            _ => Err(format!("no type registered for {}/{}", $info.group, $info.kind)),
        }
    };
}

fn roundtrip_as<T: serde::de::DeserializeOwned + serde::Serialize>(v: &Value) -> Result<Value, String> {
    let t: T = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
    serde_json::to_value(&t).map_err(|e| e.to_string())
}

/// Decode `obj` as its kind's type and encode it again: unknown fields are dropped and the
/// field order becomes upstream's. Err carries the decode error text.
pub fn roundtrip(info: &ResourceInfo, obj: &Value) -> Result<Value, String> {
    dispatch!(info, roundtrip_as, obj)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::RESOURCES;

    #[test]
    fn every_resource_has_a_type() {
        for r in RESOURCES {
            let obj = serde_json::json!({"apiVersion": r.api_version(), "kind": r.kind, "metadata": {"name": "x"}});
            let out = roundtrip(r, &obj);
            // Kinds with required fields (e.g. Binding-like) may fail to decode an empty object,
            // but never for want of a registered type.
            if let Err(e) = &out {
                assert!(!e.starts_with("no type registered"), "{}: {e}", r.kind);
            }
        }
    }

    #[test]
    fn unknown_fields_are_dropped() {
        let info = crate::resources::find("", "v1", "configmaps").unwrap();
        let obj = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": "b"}, "bogus": 1});
        let out = roundtrip(info, &obj).unwrap();
        assert!(out.get("bogus").is_none());
        assert_eq!(out["data"]["a"], "b");
    }
}
