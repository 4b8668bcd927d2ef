//! One sync of a Deployment's ReplicaSets: finding or creating the new ReplicaSet with its
//! revision, the RollingUpdate and Recreate scaling steps, pause, and history cleanup.

use super::util::{self, *};
use super::{Context, DeploymentError, owner_reference};
use crate::replicaset::active;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use std::collections::BTreeMap;
use std::time::Duration;

/// How soon Recreate looks again while old pods are still going away.
const OLD_PODS_POLL: Duration = Duration::from_secs(1);

pub(super) struct Rollout<'a> {
    pub(super) ctx: &'a Context,
    pub(super) d: &'a Deployment,
    api: Api<ReplicaSet>,
    /// Every ReplicaSet of the Deployment, oldest first, updated in place as this sync writes.
    pub(super) rss: Vec<ReplicaSet>,
    pub(super) new: Option<usize>,
    pub(super) new_created: bool,
}

impl<'a> Rollout<'a> {
    pub(super) fn new(
        ctx: &'a Context,
        d: &'a Deployment,
        api: Api<ReplicaSet>,
        rss: Vec<ReplicaSet>,
    ) -> Self {
        let template = d
            .spec
            .as_ref()
            .map(|s| s.template.clone())
            .unwrap_or_default();
        let new = rss.iter().position(|rs| {
            rs.spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .is_some_and(|t| equal_ignore_hash(t, &template))
        });
        Rollout {
            ctx,
            d,
            api,
            rss,
            new,
            new_created: false,
        }
    }

    pub(super) fn new_rs(&self) -> Option<&ReplicaSet> {
        self.new.map(|i| &self.rss[i])
    }

    fn old(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.rss.len()).filter(move |i| Some(*i) != self.new)
    }

    /// Sum of spec.replicas over every ReplicaSet.
    fn total_spec(&self) -> i32 {
        self.rss.iter().map(spec_replicas).sum()
    }

    fn replica_annotations(&self) -> BTreeMap<String, String> {
        let want = replicas(self.d);
        BTreeMap::from([
            (DESIRED_REPLICAS.to_string(), want.to_string()),
            (
                MAX_REPLICAS.to_string(),
                (want + max_surge(self.d)).to_string(),
            ),
        ])
    }

    /// Finds the new ReplicaSet (creating it when `create`), gives it the next revision, and
    /// mirrors that revision on the Deployment.
    async fn sync_new(&mut self, create: bool) -> Result<(), DeploymentError> {
        let max_old = self
            .old()
            .map(|i| rs_revision(&self.rss[i]))
            .max()
            .unwrap_or(0);
        let next = max_old + 1;
        if let Some(i) = self.new {
            let rs = &self.rss[i];
            let current = rs_revision(rs);
            let mut want = copied_annotations(self.d);
            if current < next {
                want.insert(REVISION.into(), next.to_string());
                if current > 0 {
                    // A rollback (or re-applied template) reuses an old ReplicaSet: keep its history.
                    let mut history: Vec<String> = rs
                        .annotations()
                        .get(REVISION_HISTORY)
                        .map(|h| h.split(',').map(str::to_string).collect())
                        .unwrap_or_default();
                    history.push(current.to_string());
                    want.insert(REVISION_HISTORY.into(), history.join(","));
                }
            }
            let min_ready = self.d.spec.as_ref().and_then(|s| s.min_ready_seconds);
            let rs_min_ready = rs.spec.as_ref().and_then(|s| s.min_ready_seconds);
            if want.iter().any(|(k, v)| rs.annotations().get(k) != Some(v))
                || min_ready.unwrap_or(0) != rs_min_ready.unwrap_or(0)
            {
                let body = serde_json::json!({
                    "metadata": {"annotations": want},
                    "spec": {"minReadySeconds": min_ready.unwrap_or(0)}
                });
                let name = rs.name_any();
                self.rss[i] = self
                    .api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(body))
                    .await
                    .map_err(|e| DeploymentError::UpdateReplicaSet(name, e))?;
            }
        } else if create {
            self.create_new(next).await?;
        }
        if let Some(rs) = self.new_rs() {
            let rev = rs_revision(rs).to_string();
            if self.d.annotations().get(REVISION) != Some(&rev) {
                let body = serde_json::json!({"metadata": {"annotations": {REVISION: rev}}});
                Api::<Deployment>::namespaced(
                    self.ctx.client.clone(),
                    &self.d.namespace().unwrap_or_default(),
                )
                .patch(
                    &self.d.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(body),
                )
                .await
                .map_err(DeploymentError::UpdateDeployment)?;
            }
        }
        Ok(())
    }

    async fn create_new(&mut self, revision: i64) -> Result<(), DeploymentError> {
        let spec = self.d.spec.as_ref().ok_or(DeploymentError::NoTemplate)?;
        let collisions = self.d.status.as_ref().and_then(|s| s.collision_count);
        let hash = template_hash(&spec.template, collisions);
        let name = format!("{}-{}", self.d.name_any(), hash);
        let mut template = spec.template.clone();
        let meta = template.metadata.get_or_insert_with(Default::default);
        meta.labels
            .get_or_insert_with(Default::default)
            .insert(POD_TEMPLATE_HASH.into(), hash.clone());
        let labels = meta.labels.clone();
        let mut selector = spec.selector.clone();
        selector
            .match_labels
            .get_or_insert_with(Default::default)
            .insert(POD_TEMPLATE_HASH.into(), hash.clone());
        let mut annotations = copied_annotations(self.d);
        annotations.extend(self.replica_annotations());
        annotations.insert(REVISION.into(), revision.to_string());
        let rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels,
                annotations: Some(annotations),
                owner_references: Some(vec![owner_reference(self.d)]),
                ..ObjectMeta::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(0),
                min_ready_seconds: spec.min_ready_seconds,
                selector,
                template: Some(template),
            }),
            status: None,
        };
        let created = match self.api.create(&PostParams::default(), &rs).await {
            Ok(rs) => rs,
            Err(kube::Error::Api(s)) if s.reason == "AlreadyExists" || s.code == 409 => {
                let existing = self
                    .api
                    .get(&name)
                    .await
                    .map_err(|e| DeploymentError::CreateReplicaSet(name.clone(), e))?;
                let ours = crate::replicaset::controller_of(&existing.metadata)
                    .is_some_and(|o| Some(&o.uid) == self.d.metadata.uid.as_ref());
                let same = existing
                    .spec
                    .as_ref()
                    .and_then(|s| s.template.as_ref())
                    .is_some_and(|t| equal_ignore_hash(t, &spec.template));
                if !(ours && same) {
                    self.raise_collision_count(collisions).await?;
                    return Err(DeploymentError::HashCollision(name));
                }
                // The cache lagged behind our own earlier create.
                existing
            }
            Err(e) => return Err(DeploymentError::CreateReplicaSet(name, e)),
        };
        tracing::info!(deployment = %self.d.name_any(), replicaset = %name, "created new ReplicaSet");
        self.rss.push(created);
        self.new = Some(self.rss.len() - 1);
        self.new_created = true;
        Ok(())
    }

    async fn raise_collision_count(&self, current: Option<i32>) -> Result<(), DeploymentError> {
        let body = serde_json::json!({"status": {"collisionCount": current.unwrap_or(0) + 1}});
        Api::<Deployment>::namespaced(
            self.ctx.client.clone(),
            &self.d.namespace().unwrap_or_default(),
        )
        .patch_status(
            &self.d.name_any(),
            &PatchParams::default(),
            &Patch::Merge(body),
        )
        .await
        .map(|_| ())
        .map_err(DeploymentError::Status)
    }

    /// Sets spec.replicas (and the replica annotations) of ReplicaSet `i`; true if it changed.
    pub(super) async fn scale(&mut self, i: usize, n: i32) -> Result<bool, DeploymentError> {
        let want = self.replica_annotations();
        let rs = &self.rss[i];
        let annotations_ok = want.iter().all(|(k, v)| rs.annotations().get(k) == Some(v));
        if spec_replicas(rs) == n && annotations_ok {
            return Ok(false);
        }
        let name = rs.name_any();
        let changed = spec_replicas(rs) != n;
        let body = serde_json::json!({
            "metadata": {"annotations": want},
            "spec": {"replicas": n}
        });
        self.rss[i] = self
            .api
            .patch(&name, &PatchParams::default(), &Patch::Merge(body))
            .await
            .map_err(|e| DeploymentError::UpdateReplicaSet(name.clone(), e))?;
        if changed {
            tracing::info!(deployment = %self.d.name_any(), replicaset = %name, replicas = n, "scaled");
        }
        Ok(changed)
    }

    /// RollingUpdate: surge the new ReplicaSet, then scale old ones down within maxUnavailable.
    pub(super) async fn rolling(&mut self) -> Result<Option<Duration>, DeploymentError> {
        self.sync_new(true).await?;
        // A replica change in mid-rollout resizes every active ReplicaSet first, as upstream.
        if self.scale_proportionally().await? {
            return Ok(None);
        }
        if !self.reconcile_new().await? {
            self.reconcile_old().await?;
        }
        self.cleanup().await?;
        Ok(None)
    }

    async fn reconcile_new(&mut self) -> Result<bool, DeploymentError> {
        let Some(i) = self.new else { return Ok(false) };
        let want = replicas(self.d);
        let current = spec_replicas(&self.rss[i]);
        if current >= want {
            return self.scale(i, want).await;
        }
        let (surge, _) = fenceposts(self.d);
        let max_total = want + surge;
        let total = self.total_spec();
        if total >= max_total {
            return self.scale(i, current).await.map(|_| false);
        }
        let up = (max_total - total).min(want - current);
        self.scale(i, current + up).await
    }

    async fn reconcile_old(&mut self) -> Result<bool, DeploymentError> {
        let old: Vec<usize> = self.old().collect();
        if old
            .iter()
            .map(|i| spec_replicas(&self.rss[*i]))
            .sum::<i32>()
            == 0
        {
            return Ok(false);
        }
        let (_, max_unavailable) = fenceposts(self.d);
        let min_available = replicas(self.d) - max_unavailable;
        let new_unavailable = self
            .new_rs()
            .map_or(0, |rs| (spec_replicas(rs) - available(rs)).max(0));
        let max_scaled_down = self.total_spec() - min_available - new_unavailable;
        if max_scaled_down <= 0 {
            return Ok(false);
        }
        // First the old pods that are not available anyway.
        let mut scaled = 0;
        for &i in &old {
            if scaled >= max_scaled_down {
                break;
            }
            let (spec, avail) = (spec_replicas(&self.rss[i]), available(&self.rss[i]));
            if spec == 0 || spec <= avail {
                continue;
            }
            let down = (max_scaled_down - scaled).min(spec - avail);
            self.scale(i, spec - down).await?;
            scaled += down;
        }
        // Then available ones, keeping minAvailable across all ReplicaSets.
        let available_total: i32 = self.rss.iter().map(available).sum();
        let budget = available_total - min_available;
        let mut down_total = 0;
        for &i in &old {
            if down_total >= budget {
                break;
            }
            let spec = spec_replicas(&self.rss[i]);
            if spec == 0 {
                continue;
            }
            let down = spec.min(budget - down_total);
            self.scale(i, spec - down).await?;
            down_total += down;
        }
        Ok(scaled + down_total.max(0) > 0)
    }

    /// Recreate: every old ReplicaSet to zero, wait for their pods to go, then the new one up.
    pub(super) async fn recreate(&mut self) -> Result<Option<Duration>, DeploymentError> {
        self.sync_new(false).await?;
        let mut scaled = false;
        for i in self.old().collect::<Vec<_>>() {
            scaled |= self.scale(i, 0).await?;
        }
        if scaled || self.old_pods_running() {
            return Ok(Some(OLD_PODS_POLL));
        }
        self.sync_new(true).await?;
        if let Some(i) = self.new {
            self.scale(i, replicas(self.d)).await?;
        }
        self.cleanup().await?;
        Ok(None)
    }

    fn old_pods_running(&self) -> bool {
        let old: Vec<&ReplicaSet> = self.old().map(|i| &self.rss[i]).collect();
        if old
            .iter()
            .any(|rs| rs.status.as_ref().is_some_and(|s| s.replicas > 0))
        {
            return true;
        }
        let uids: Vec<String> = old.iter().filter_map(|rs| rs.uid()).collect();
        let ns = self.d.namespace();
        self.ctx.pods.state().iter().any(|p| {
            p.namespace() == ns
                && active(p)
                && crate::replicaset::controller_of(&p.metadata)
                    .is_some_and(|o| uids.contains(&o.uid))
        })
    }

    /// Paused: no new ReplicaSet and no rollout, but replica changes still apply to the
    /// active ReplicaSets (upstream's scale while paused).
    pub(super) async fn sync_paused(&mut self) -> Result<Option<Duration>, DeploymentError> {
        self.sync_new(false).await?;
        let active: Vec<usize> = (0..self.rss.len())
            .filter(|i| spec_replicas(&self.rss[*i]) > 0)
            .collect();
        let target = match active.as_slice() {
            [] => self.new,
            [only] => Some(*only),
            _ => None,
        };
        match target {
            Some(i) => {
                self.scale(i, replicas(self.d)).await?;
            }
            None => {
                self.scale_proportionally().await?;
            }
        }
        Ok(None)
    }

    /// Deletes the oldest zero-sized old ReplicaSets beyond revisionHistoryLimit.
    async fn cleanup(&mut self) -> Result<(), DeploymentError> {
        let limit = self
            .d
            .spec
            .as_ref()
            .and_then(|s| s.revision_history_limit)
            .unwrap_or(10)
            .max(0) as usize;
        let alive: Vec<usize> = self
            .old()
            .filter(|i| self.rss[*i].metadata.deletion_timestamp.is_none())
            .collect();
        let Some(excess) = alive.len().checked_sub(limit).filter(|n| *n > 0) else {
            return Ok(());
        };
        let mut cleanable: Vec<&ReplicaSet> = alive
            .iter()
            .map(|i| &self.rss[*i])
            .filter(|rs| {
                let status = rs.status.as_ref();
                spec_replicas(rs) == 0
                    && status.is_none_or(|s| s.replicas == 0)
                    && status.and_then(|s| s.observed_generation) >= rs.metadata.generation
            })
            .collect();
        cleanable.sort_by_key(|rs| util::rs_revision(rs));
        let names: Vec<String> = cleanable
            .iter()
            .take(excess)
            .map(|rs| rs.name_any())
            .collect();
        for name in names {
            match self.api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => {
                    tracing::info!(deployment = %self.d.name_any(), replicaset = %name, "deleted old ReplicaSet")
                }
                Err(kube::Error::Api(s)) if s.is_not_found() => {}
                Err(e) => return Err(DeploymentError::DeleteReplicaSet(name, e)),
            }
            self.rss
                .retain(|rs| rs.metadata.name.as_deref() != Some(name.as_str()));
            self.new = None;
        }
        // Indices moved: find the new ReplicaSet again.
        if self.new.is_none() {
            let created = self.new_created;
            *self = Rollout::new(
                self.ctx,
                self.d,
                self.api.clone(),
                std::mem::take(&mut self.rss),
            );
            self.new_created = created;
        }
        Ok(())
    }
}
