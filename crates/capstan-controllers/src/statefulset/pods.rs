//! StatefulSet pod identity (upstream's `stateful_set_utils`): `<set>-<ordinal>` names, the
//! identity labels, hostname/subdomain, and the per-ordinal PersistentVolumeClaims from
//! `volumeClaimTemplates` with their retention ownerReferences.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodTemplateSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Resource, ResourceExt};

use super::history::REVISION_HASH_LABEL;

pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

/// The ordinal of a pod named `<set>-<n>`, if it is one of the set's names.
pub fn ordinal_of(set: &str, pod: &str) -> Option<i32> {
    let n = pod.strip_prefix(set)?.strip_prefix('-')?;
    if n.is_empty() || (n.len() > 1 && n.starts_with('0')) {
        return None;
    }
    n.parse().ok().filter(|n: &i32| *n >= 0)
}

pub fn pod_name(set: &str, ordinal: i32) -> String {
    format!("{set}-{ordinal}")
}

/// The revision (name) a pod was created from.
pub fn revision_of(pod: &Pod) -> Option<&str> {
    pod.labels().get(REVISION_HASH_LABEL).map(String::as_str)
}

/// The claim name of a template for an ordinal: `<template>-<set>-<ordinal>`.
pub fn claim_name(template: &str, set: &str, ordinal: i32) -> String {
    format!("{template}-{}", pod_name(set, ordinal))
}

/// The controller ownerReference the set puts on its pods and revisions.
pub fn owner_reference(set: &StatefulSet) -> OwnerReference {
    OwnerReference {
        api_version: "apps/v1".into(),
        kind: "StatefulSet".into(),
        name: set.name_any(),
        uid: set.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The pod for `ordinal` from `template` at revision `revision`.
pub fn new_pod(set: &StatefulSet, template: &PodTemplateSpec, revision: &str, ordinal: i32) -> Pod {
    let name = set.name_any();
    let pod_name = pod_name(&name, ordinal);
    let meta = template.metadata.clone().unwrap_or_default();
    let mut pod = Pod {
        spec: template.spec.clone(),
        ..Pod::default()
    };
    pod.metadata.name = Some(pod_name.clone());
    pod.metadata.namespace = set.namespace();
    let mut labels = meta.labels.unwrap_or_default();
    labels.insert(POD_NAME_LABEL.into(), pod_name.clone());
    labels.insert(POD_INDEX_LABEL.into(), ordinal.to_string());
    labels.insert(REVISION_HASH_LABEL.into(), revision.to_string());
    pod.metadata.labels = Some(labels);
    pod.metadata.annotations = meta.annotations;
    pod.metadata.finalizers = meta.finalizers;
    pod.metadata.owner_references = Some(vec![owner_reference(set)]);
    let spec = pod.spec.get_or_insert_with(Default::default);
    spec.hostname = Some(pod_name);
    if let Some(svc) = set.spec.as_ref().and_then(|s| s.service_name.clone())
        && !svc.is_empty()
    {
        spec.subdomain = Some(svc);
    }
    // Each claim template replaces any template volume of the same name.
    let claims = claim_templates(set);
    if !claims.is_empty() {
        let volumes = spec.volumes.get_or_insert_with(Vec::new);
        for c in &claims {
            let tname = c.name_any();
            volumes.retain(|v| v.name != tname);
            volumes.push(Volume {
                name: tname.clone(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim_name(&tname, &name, ordinal),
                    read_only: None,
                }),
                ..Volume::default()
            });
        }
    }
    pod
}

pub fn claim_templates(set: &StatefulSet) -> Vec<PersistentVolumeClaim> {
    set.spec
        .as_ref()
        .and_then(|s| s.volume_claim_templates.clone())
        .unwrap_or_default()
}

/// `whenDeleted` and `whenScaled` of the retention policy ("Retain" unless "Delete").
pub fn retention(set: &StatefulSet) -> (bool, bool) {
    let p = set
        .spec
        .as_ref()
        .and_then(|s| s.persistent_volume_claim_retention_policy.as_ref());
    let delete = |v: Option<&String>| v.is_some_and(|v| v == "Delete");
    (
        delete(p.and_then(|p| p.when_deleted.as_ref())),
        delete(p.and_then(|p| p.when_scaled.as_ref())),
    )
}

/// The claim to create for `template` and `ordinal` (labels from the set's selector, as
/// upstream), owned by the set when `whenDeleted: Delete`.
pub fn new_claim(
    set: &StatefulSet,
    template: &PersistentVolumeClaim,
    ordinal: i32,
) -> PersistentVolumeClaim {
    let name = set.name_any();
    let mut pvc = PersistentVolumeClaim {
        spec: template.spec.clone(),
        ..PersistentVolumeClaim::default()
    };
    pvc.metadata.name = Some(claim_name(&template.name_any(), &name, ordinal));
    pvc.metadata.namespace = set.namespace();
    let mut labels = template.metadata.labels.clone().unwrap_or_default();
    if let Some(ml) = set
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.as_ref())
    {
        labels.extend(ml.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    pvc.metadata.labels = Some(labels);
    pvc.metadata.annotations = template.metadata.annotations.clone();
    if retention(set).0 {
        pvc.metadata.owner_references = Some(vec![set_owner(set)]);
    }
    pvc
}

/// A non-controller ownerReference to the set (PVCs deleted with it).
pub fn set_owner(set: &StatefulSet) -> OwnerReference {
    OwnerReference {
        controller: Some(false),
        block_owner_deletion: Some(true),
        ..owner_reference(set)
    }
}

/// A non-controller ownerReference to a pod (its PVCs deleted with it on scale down).
pub fn pod_owner(pod: &Pod) -> OwnerReference {
    OwnerReference {
        api_version: "v1".into(),
        kind: "Pod".into(),
        name: pod.name_any(),
        uid: pod.meta().uid.clone().unwrap_or_default(),
        controller: Some(false),
        block_owner_deletion: Some(true),
    }
}

/// Running with a true Ready condition, not terminating (upstream's `isRunningAndReady`).
pub fn running_and_ready(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        && crate::replicaset::is_ready(pod)
        && pod.metadata.deletion_timestamp.is_none()
}

pub fn failed(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Failed") | Some("Succeeded")
    )
}

pub fn terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinals_parse_only_exact_names() {
        assert_eq!(ordinal_of("web", "web-0"), Some(0));
        assert_eq!(ordinal_of("web", "web-12"), Some(12));
        assert_eq!(ordinal_of("web", "web-01"), None);
        assert_eq!(ordinal_of("web", "web-x"), None);
        assert_eq!(ordinal_of("web", "webx-1"), None);
        assert_eq!(ordinal_of("web", "web-1-2"), None);
    }

    #[test]
    fn pods_get_identity_and_claims() {
        let set: StatefulSet = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "ns", "uid": "u1"},
            "spec": {
                "serviceName": "nginx",
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                             "spec": {"containers": [{"name": "c", "image": "i"}],
                                      "volumes": [{"name": "www", "emptyDir": {}}]}},
                "volumeClaimTemplates": [{"metadata": {"name": "www"},
                    "spec": {"accessModes": ["ReadWriteOnce"],
                             "resources": {"requests": {"storage": "1Gi"}}}}]
            }
        }))
        .unwrap();
        let t = set.spec.as_ref().unwrap().template.clone();
        let pod = new_pod(&set, &t, "web-abc", 2);
        assert_eq!(pod.name_any(), "web-2");
        assert_eq!(pod.labels()[POD_NAME_LABEL], "web-2");
        assert_eq!(pod.labels()[POD_INDEX_LABEL], "2");
        assert_eq!(pod.labels()[REVISION_HASH_LABEL], "web-abc");
        let spec = pod.spec.unwrap();
        assert_eq!(spec.hostname.as_deref(), Some("web-2"));
        assert_eq!(spec.subdomain.as_deref(), Some("nginx"));
        let vols = spec.volumes.unwrap();
        assert_eq!(vols.len(), 1);
        assert_eq!(
            vols[0].persistent_volume_claim.as_ref().unwrap().claim_name,
            "www-web-2"
        );
        let pvc = new_claim(&set, &claim_templates(&set)[0], 2);
        assert_eq!(pvc.name_any(), "www-web-2");
        assert_eq!(pvc.labels()["app"], "web");
        assert!(pvc.metadata.owner_references.is_none());
    }
}
