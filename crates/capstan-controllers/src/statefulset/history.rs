//! ControllerRevisions (upstream's `controller/history`), shared by the StatefulSet and DaemonSet
//! controllers: a revision snapshots the pod template as a strategic-merge patch, is named
//! `<parent>-<hash>`, and is numbered so the newest template has the highest `revision`.

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use std::collections::{BTreeMap, HashSet};

/// Label on pods (and DaemonSet revisions) naming the revision they come from.
pub const REVISION_HASH_LABEL: &str = "controller-revision-hash";

/// Upstream's alphabet for generated names: no vowels, no confusable digits.
const SAFE_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("listing controller revisions")]
    List(#[source] kube::Error),
    #[error("creating controller revision {0}")]
    Create(String, #[source] kube::Error),
    #[error("updating controller revision {0}")]
    Update(String, #[source] kube::Error),
    #[error("controller revision {0} exists with other data (hash collision)")]
    Collision(String),
}

/// FNV-1a (32 bit) over `bytes`, continuing from `h`.
fn fnv1a32(bytes: &[u8], mut h: u32) -> u32 {
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// The hash of a revision's data and the parent's collision count, in the safe alphabet.
pub fn revision_hash(data: &serde_json::Value, collision_count: Option<i32>) -> String {
    let bytes = serde_json::to_vec(data).unwrap_or_default();
    let mut h = fnv1a32(&bytes, 0x811c_9dc5);
    if let Some(c) = collision_count {
        h = fnv1a32(&(c as u32).to_le_bytes(), h);
    }
    h.to_string()
        .bytes()
        .map(|b| SAFE_ALPHABET[usize::from(b) % SAFE_ALPHABET.len()] as char)
        .collect()
}

/// The data a revision stores: `{"spec":{"template":{..., "$patch":"replace"}}}` (upstream's).
pub fn template_patch(template: &PodTemplateSpec) -> serde_json::Value {
    let mut t = serde_json::to_value(template).unwrap_or_default();
    if let Some(m) = t.as_object_mut() {
        m.insert("$patch".into(), "replace".into());
    }
    serde_json::json!({ "spec": { "template": t } })
}

/// The pod template a revision stores.
pub fn template_of(rev: &ControllerRevision) -> Option<PodTemplateSpec> {
    let mut t = rev.data.as_ref()?.0.get("spec")?.get("template")?.clone();
    if let Some(m) = t.as_object_mut() {
        m.remove("$patch");
    }
    serde_json::from_value(t).ok()
}

fn data_of(rev: &ControllerRevision) -> Option<&serde_json::Value> {
    rev.data.as_ref().map(|d| &d.0)
}

/// The revisions in `ns` controlled by the parent with `uid`, oldest first.
pub async fn list_owned(
    client: &Client,
    ns: &str,
    uid: &str,
) -> Result<Vec<ControllerRevision>, HistoryError> {
    let mut revs: Vec<ControllerRevision> =
        Api::<ControllerRevision>::namespaced(client.clone(), ns)
            .list(&ListParams::default())
            .await
            .map_err(HistoryError::List)?
            .items
            .into_iter()
            .filter(|r| {
                crate::replicaset::controller_of(&r.metadata).is_some_and(|o| o.uid == uid)
                    && r.metadata.deletion_timestamp.is_none()
            })
            .collect();
    revs.sort_by(|a, b| {
        a.revision
            .cmp(&b.revision)
            .then_with(|| a.name_any().cmp(&b.name_any()))
    });
    Ok(revs)
}

/// What a parent needs to snapshot its template.
pub struct Snapshot<'a> {
    pub parent_name: &'a str,
    pub owner: OwnerReference,
    pub labels: BTreeMap<String, String>,
    pub data: serde_json::Value,
    pub collision_count: Option<i32>,
    /// Whether the hash goes on the revision as [`REVISION_HASH_LABEL`] (DaemonSets).
    pub hash_label: bool,
}

/// Finds the revision holding `snap.data` (renumbering it as the newest when an older one is
/// reused, as upstream's rollback does) or creates it. `revs` is updated in place; a name taken
/// by other data is a [`HistoryError::Collision`] (the caller bumps its collisionCount).
pub async fn ensure_revision(
    client: &Client,
    ns: &str,
    revs: &mut Vec<ControllerRevision>,
    snap: Snapshot<'_>,
) -> Result<ControllerRevision, HistoryError> {
    let api = Api::<ControllerRevision>::namespaced(client.clone(), ns);
    let max = revs.iter().map(|r| r.revision).max().unwrap_or(0);
    if let Some(i) = revs.iter().rposition(|r| data_of(r) == Some(&snap.data)) {
        if revs[i].revision == max {
            return Ok(revs[i].clone());
        }
        let name = revs[i].name_any();
        let updated = api
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({ "revision": max + 1 })),
            )
            .await
            .map_err(|e| HistoryError::Update(name, e))?;
        revs[i] = updated.clone();
        return Ok(updated);
    }
    let hash = revision_hash(&snap.data, snap.collision_count);
    let name = format!("{}-{}", snap.parent_name, hash);
    let mut labels = snap.labels;
    if snap.hash_label {
        labels.insert(REVISION_HASH_LABEL.into(), hash);
    }
    let mut rev = ControllerRevision {
        data: Some(RawExtension(snap.data.clone())),
        revision: max + 1,
        ..ControllerRevision::default()
    };
    rev.metadata.name = Some(name.clone());
    rev.metadata.namespace = Some(ns.to_string());
    rev.metadata.labels = Some(labels);
    rev.metadata.owner_references = Some(vec![snap.owner.clone()]);
    match api.create(&PostParams::default(), &rev).await {
        Ok(created) => {
            revs.push(created.clone());
            Ok(created)
        }
        Err(kube::Error::Api(s)) if s.is_already_exists() => {
            let existing = api
                .get(&name)
                .await
                .map_err(|e| HistoryError::Create(name.clone(), e))?;
            let ours = crate::replicaset::controller_of(&existing.metadata)
                .is_some_and(|o| o.uid == snap.owner.uid);
            if ours && data_of(&existing) == Some(&snap.data) {
                revs.push(existing.clone());
                return Ok(existing);
            }
            Err(HistoryError::Collision(name))
        }
        Err(e) => Err(HistoryError::Create(name, e)),
    }
}

/// Deletes the oldest revisions beyond `limit` that are neither `live` (in use) nor the newest.
pub async fn truncate(
    client: &Client,
    ns: &str,
    revs: &[ControllerRevision],
    live: &HashSet<String>,
    limit: i32,
) {
    let api = Api::<ControllerRevision>::namespaced(client.clone(), ns);
    let idle: Vec<&ControllerRevision> = revs
        .iter()
        .filter(|r| !live.contains(&r.name_any()))
        .collect();
    let excess = idle.len().saturating_sub(limit.max(0) as usize);
    for r in idle.into_iter().take(excess) {
        if let Err(e) = api.delete(&r.name_any(), &DeleteParams::default()).await {
            tracing::debug!(revision = %r.name_any(), error = %e, "deleting old revision");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_round_trips_through_revision_data() {
        let t: PodTemplateSpec = serde_json::from_value(serde_json::json!({
            "metadata": {"labels": {"app": "x"}},
            "spec": {"containers": [{"name": "c", "image": "i:1"}]}
        }))
        .unwrap();
        let data = template_patch(&t);
        assert_eq!(data["spec"]["template"]["$patch"], "replace");
        let rev = ControllerRevision {
            data: Some(RawExtension(data.clone())),
            ..Default::default()
        };
        assert_eq!(template_of(&rev), Some(t));
        assert_ne!(revision_hash(&data, None), revision_hash(&data, Some(1)));
        assert!(
            revision_hash(&data, None)
                .bytes()
                .all(|b| SAFE_ALPHABET.contains(&b))
        );
    }
}
