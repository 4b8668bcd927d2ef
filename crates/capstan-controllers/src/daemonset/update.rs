//! DaemonSet RollingUpdate (upstream's `rollingUpdate`): without surge, old pods are deleted
//! (unavailable ones at once, available ones within maxUnavailable) and `manage` creates their
//! replacements; with maxSurge, a new pod starts beside the old one, which goes once the new one
//! is available.

use super::{DaemonSetError, DaemonSync, NodeState, hash_of};
use crate::deployment::util::scaled_value;
use crate::replicaset::is_available;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::sync::Arc;

pub(super) fn rolling(ds: &DaemonSet) -> bool {
    ds.spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|u| u.type_.as_deref())
        .is_none_or(|t| t == "RollingUpdate")
}

fn params(ds: &DaemonSet) -> (Option<IntOrString>, Option<IntOrString>) {
    let ru = ds
        .spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|u| u.rolling_update.as_ref());
    (
        ru.and_then(|r| r.max_surge.clone()),
        ru.and_then(|r| r.max_unavailable.clone()),
    )
}

fn desired(states: &[NodeState]) -> i32 {
    states.iter().filter(|s| s.placement.run).count() as i32
}

pub(super) fn max_surge(ds: &DaemonSet, states: &[NodeState]) -> i32 {
    if !rolling(ds) {
        return 0;
    }
    scaled_value(params(ds).0.as_ref(), desired(states), true).max(0)
}

/// maxUnavailable scaled to the desired pods; 1 when both it and maxSurge are zero.
fn max_unavailable(ds: &DaemonSet, states: &[NodeState]) -> i32 {
    let n = scaled_value(params(ds).1.as_ref(), desired(states), true).max(0);
    if n == 0 && max_surge(ds, states) == 0 {
        1
    } else {
        n
    }
}

impl DaemonSync<'_> {
    pub(super) async fn rolling_update(&self, states: &[NodeState]) -> Result<(), DaemonSetError> {
        let min_ready = self
            .ds
            .spec
            .as_ref()
            .and_then(|s| s.min_ready_seconds)
            .unwrap_or(0);
        let now = jiff::Timestamp::now();
        let available = |p: &Pod| is_available(p, min_ready, now);
        let surge = max_surge(self.ds, states);
        let max_unavailable = max_unavailable(self.ds, states);
        let is_new = |p: &Arc<Pod>| hash_of(p) == Some(self.hash.as_str());

        if surge == 0 {
            let mut unavailable = 0;
            let mut candidates: Vec<&Arc<Pod>> = Vec::new();
            for st in states.iter().filter(|s| s.placement.run) {
                let Some(p) = st.live.first() else {
                    unavailable += 1;
                    continue;
                };
                if is_new(p) {
                    if !available(p) {
                        unavailable += 1;
                    }
                } else if !available(p) {
                    // Already unavailable: replacing it costs nothing.
                    unavailable += 1;
                    self.delete(p).await?;
                } else {
                    candidates.push(p);
                }
            }
            let budget = (max_unavailable - unavailable).max(0) as usize;
            for p in candidates.into_iter().take(budget) {
                self.delete(p).await?;
            }
            return Ok(());
        }

        let mut surging = 0;
        let mut wanting = Vec::new();
        for st in states.iter().filter(|s| s.placement.run) {
            let new = st.live.iter().find(|p| is_new(p));
            let olds: Vec<&Arc<Pod>> = st.live.iter().filter(|p| !is_new(p)).collect();
            if olds.is_empty() {
                continue;
            }
            match new {
                Some(n) if available(n) => {
                    for o in olds {
                        self.delete(o).await?;
                    }
                }
                Some(_) => surging += 1,
                // An unavailable old pod is replaced without waiting for surge room.
                None if olds.iter().all(|o| !available(o)) => self.create(&st.name).await?,
                None => wanting.push(st.name.as_str()),
            }
        }
        let room = (surge - surging).max(0) as usize;
        for node in wanting.into_iter().take(room) {
            self.create(node).await?;
        }
        Ok(())
    }
}
