//! One sync of a StatefulSet (upstream's `defaultStatefulSetControl.updateStatefulSet`): replace
//! failed pods, create missing ordinals, remove condemned ones highest first, then roll pods to
//! the update revision from the highest ordinal down to the partition; and the status.

use super::StatefulSetError;
use super::history::template_of;
use super::pods::{
    self, claim_templates, failed, new_claim, new_pod, ordinal_of, pod_owner, retention,
    revision_of, running_and_ready, terminating,
};
use crate::expectations::Expectations;
use crate::replicaset::is_available;
use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use std::sync::Arc;
use std::time::Duration;

pub(super) struct SetSync<'a> {
    pub client: &'a Client,
    pub expectations: &'a Expectations,
    pub exp_key: &'a str,
    pub set: &'a StatefulSet,
    pub current: &'a ControllerRevision,
    pub update: &'a ControllerRevision,
}

fn replicas(set: &StatefulSet) -> i32 {
    set.spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1)
        .max(0)
}

fn start_ordinal(set: &StatefulSet) -> i32 {
    set.spec
        .as_ref()
        .and_then(|s| s.ordinals.as_ref())
        .and_then(|o| o.start)
        .unwrap_or(0)
        .max(0)
}

fn min_ready(set: &StatefulSet) -> i32 {
    set.spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .unwrap_or(0)
}

fn rolling(set: &StatefulSet) -> bool {
    set.spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|u| u.type_.as_deref())
        .is_none_or(|t| t == "RollingUpdate")
}

fn partition(set: &StatefulSet) -> i32 {
    set.spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|u| u.rolling_update.as_ref())
        .and_then(|r| r.partition)
        .unwrap_or(0)
        .max(0)
}

fn parallel(set: &StatefulSet) -> bool {
    set.spec
        .as_ref()
        .and_then(|s| s.pod_management_policy.as_deref())
        == Some("Parallel")
}

/// Running, Ready for minReadySeconds, and not terminating (upstream's `isHealthy` with
/// availability).
fn healthy(set: &StatefulSet, pod: &Pod) -> bool {
    running_and_ready(pod) && is_available(pod, min_ready(set), jiff::Timestamp::now())
}

/// When the next ready-but-not-yet-available pod becomes available.
pub(super) fn next_availability(pods: &[Arc<Pod>], min_ready_seconds: i32) -> Option<Duration> {
    if min_ready_seconds <= 0 {
        return None;
    }
    let now = jiff::Timestamp::now();
    pods.iter()
        .any(|p| running_and_ready(p) && !is_available(p, min_ready_seconds, now))
        .then_some(Duration::from_secs(1))
}

impl SetSync<'_> {
    fn pods_api(&self) -> Api<Pod> {
        Api::namespaced(
            self.client.clone(),
            &self.set.namespace().unwrap_or_default(),
        )
    }

    fn claims_api(&self) -> Api<PersistentVolumeClaim> {
        Api::namespaced(
            self.client.clone(),
            &self.set.namespace().unwrap_or_default(),
        )
    }

    /// Drives the owned pods one step toward the spec; returns early wherever OrderedReady
    /// management has to wait for a pod.
    pub async fn sync(&mut self, owned: &[Arc<Pod>]) -> Result<(), StatefulSetError> {
        let name = self.set.name_any();
        let (n, start) = (replicas(self.set), start_ordinal(self.set));
        let mut slots: Vec<Option<&Arc<Pod>>> = vec![None; n as usize];
        let mut condemned: Vec<(i32, &Arc<Pod>)> = Vec::new();
        for p in owned {
            match ordinal_of(&name, &p.name_any()) {
                Some(o) if o >= start && o - start < n => slots[(o - start) as usize] = Some(p),
                // Pods with names outside the set's identities go first (ordinal -1).
                o => condemned.push((o.unwrap_or(-1), p)),
            }
        }
        condemned.sort_by(|a, b| {
            let key = |o: i32| if o < 0 { i32::MAX } else { o };
            key(b.0).cmp(&key(a.0))
        });
        let monotonic = !parallel(self.set);

        for (i, slot) in slots.iter().enumerate() {
            let ordinal = start + i as i32;
            match slot {
                None => {
                    self.create(ordinal).await?;
                    if monotonic {
                        return Ok(());
                    }
                }
                Some(p) if failed(p) && !terminating(p) => {
                    // Recreated under the same name once it is gone.
                    self.delete(p).await?;
                    if monotonic {
                        return Ok(());
                    }
                }
                Some(p) if monotonic && !healthy(self.set, p) => return Ok(()),
                Some(_) => {}
            }
        }

        let first_unhealthy = slots
            .iter()
            .flatten()
            .copied()
            .chain(condemned.iter().map(|(_, p)| *p))
            .find(|p| !healthy(self.set, p))
            .map(|p| p.name_any());
        for (_, p) in &condemned {
            if terminating(p) {
                if monotonic {
                    return Ok(());
                }
                continue;
            }
            if monotonic && first_unhealthy.as_ref().is_some_and(|u| *u != p.name_any()) {
                return Ok(());
            }
            if retention(self.set).1 {
                self.claims_owned_by(p).await?;
            }
            self.delete(p).await?;
            if monotonic {
                return Ok(());
            }
        }

        if !rolling(self.set) {
            return Ok(());
        }
        let update = self.update.name_any();
        let lowest = partition(self.set).min(n);
        for i in (lowest..n).rev() {
            let Some(p) = slots[i as usize] else {
                return Ok(());
            };
            if revision_of(p) != Some(update.as_str()) && !terminating(p) {
                tracing::info!(pod = %p.name_any(), revision = %update, "rolling pod to update revision");
                return self.delete(p).await;
            }
            if !healthy(self.set, p) {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Creates the pod for `ordinal` (below the partition of a rolling update from the current
    /// revision, else from the update revision) after its claims.
    async fn create(&self, ordinal: i32) -> Result<(), StatefulSetError> {
        let start = start_ordinal(self.set);
        let rev = if rolling(self.set) && ordinal - start < partition(self.set) {
            self.current
        } else {
            self.update
        };
        let template = template_of(rev).ok_or(StatefulSetError::NoTemplate)?;
        self.create_claims(ordinal).await?;
        let pod = new_pod(self.set, &template, &rev.name_any(), ordinal);
        let name = pod.name_any();
        match self.pods_api().create(&PostParams::default(), &pod).await {
            // No creation expectation: pod names are fixed, so a create from a stale cache is
            // AlreadyExists, and a pod deleted before the cache saw it must not stall the set.
            Ok(_) => {
                tracing::info!(pod = %name, revision = %rev.name_any(), "created statefulset pod");
                Ok(())
            }
            // The old pod of this identity is still terminating, or the cache is behind.
            Err(kube::Error::Api(s)) if s.is_already_exists() => Ok(()),
            Err(e) => Err(StatefulSetError::CreatePod(name, e)),
        }
    }

    async fn create_claims(&self, ordinal: i32) -> Result<(), StatefulSetError> {
        let api = self.claims_api();
        for t in claim_templates(self.set) {
            let claim = new_claim(self.set, &t, ordinal);
            let name = claim.name_any();
            match api.create(&PostParams::default(), &claim).await {
                Ok(_) => tracing::info!(claim = %name, "created statefulset claim"),
                Err(kube::Error::Api(s)) if s.is_already_exists() => {}
                Err(e) => return Err(StatefulSetError::CreateClaim(name, e)),
            }
        }
        Ok(())
    }

    /// Makes a condemned pod the owner of its claims, so they go with it (`whenScaled: Delete`).
    async fn claims_owned_by(&self, pod: &Pod) -> Result<(), StatefulSetError> {
        let Some(ordinal) = ordinal_of(&self.set.name_any(), &pod.name_any()) else {
            return Ok(());
        };
        let api = self.claims_api();
        let owner = pod_owner(pod);
        for t in claim_templates(self.set) {
            let name = pods::claim_name(&t.name_any(), &self.set.name_any(), ordinal);
            let claim = match api.get_opt(&name).await {
                Ok(Some(c)) => c,
                Ok(None) => continue,
                Err(e) => return Err(StatefulSetError::UpdateClaim(name, e)),
            };
            let mut refs = claim.metadata.owner_references.clone().unwrap_or_default();
            let set_uid = self.set.uid().unwrap_or_default();
            if refs.iter().any(|r| r.uid == owner.uid) && !refs.iter().any(|r| r.uid == set_uid) {
                continue;
            }
            // Only the pod owns it now: the garbage collector keeps objects with a live owner.
            refs.retain(|r| r.uid != set_uid && r.uid != owner.uid);
            refs.push(owner.clone());
            let body = serde_json::json!({"metadata": {"ownerReferences": refs}});
            api.patch(&name, &PatchParams::default(), &Patch::Merge(body))
                .await
                .map_err(|e| StatefulSetError::UpdateClaim(name.clone(), e))?;
        }
        Ok(())
    }

    async fn delete(&self, pod: &Pod) -> Result<(), StatefulSetError> {
        let name = pod.name_any();
        if let Some(uid) = pod.uid() {
            self.expectations.expect_deletions(self.exp_key, [uid]);
        }
        // The UID as a precondition: never delete a same-named replacement.
        let dp = DeleteParams {
            preconditions: Some(kube::api::Preconditions {
                uid: pod.uid(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match self.pods_api().delete(&name, &dp).await {
            Ok(_) => {
                tracing::info!(pod = %name, "deleted statefulset pod");
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.is_not_found() || s.code == 409 => Ok(()),
            Err(e) => {
                self.expectations.forget(self.exp_key);
                Err(StatefulSetError::DeletePod(name, e))
            }
        }
    }
}

/// The status after a sync, from the owned pods (upstream's `computeReplicaStatus` and
/// `completeRollingUpdate`).
pub(super) fn status(
    set: &StatefulSet,
    owned: &[Arc<Pod>],
    current: &ControllerRevision,
    update: &ControllerRevision,
) -> StatefulSetStatus {
    let now = jiff::Timestamp::now();
    let (cur, upd) = (current.name_any(), update.name_any());
    let mut s = StatefulSetStatus {
        observed_generation: set.metadata.generation,
        collision_count: set.status.as_ref().and_then(|s| s.collision_count),
        current_revision: Some(cur.clone()),
        update_revision: Some(upd.clone()),
        conditions: set.status.as_ref().and_then(|s| s.conditions.clone()),
        ..StatefulSetStatus::default()
    };
    let (mut ready, mut available, mut current_n, mut updated) = (0, 0, 0, 0);
    for p in owned {
        s.replicas += 1;
        if running_and_ready(p) {
            ready += 1;
            if is_available(p, min_ready(set), now) {
                available += 1;
            }
        }
        if !terminating(p) {
            let r = revision_of(p);
            if r == Some(cur.as_str()) {
                current_n += 1;
            }
            if r == Some(upd.as_str()) {
                updated += 1;
            }
        }
    }
    if rolling(set) && updated == s.replicas && ready == s.replicas {
        current_n = updated;
        s.current_revision = Some(upd);
    }
    s.ready_replicas = Some(ready);
    s.available_replicas = Some(available);
    s.current_replicas = Some(current_n);
    s.updated_replicas = Some(updated);
    s
}
