//! Proportional scaling (upstream's `scale` in `deployment/sync.go`): when the replica count
//! changes while several ReplicaSets are active, each gets a share of the change in proportion
//! to its size, judged by the max-replicas annotation it was last sized for.

use super::DeploymentError;
use super::rollout::Rollout;
use super::util::*;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use kube::ResourceExt;

fn annotation(rs: &ReplicaSet, key: &str) -> Option<i32> {
    rs.annotations().get(key).and_then(|v| v.parse().ok())
}

/// How many replicas `rs` should gain (or lose) for the Deployment's new size.
fn fraction(rs: &ReplicaSet, d: &Deployment) -> i32 {
    let spec = spec_replicas(rs);
    if replicas(d) == 0 {
        return -spec;
    }
    let max_now = replicas(d) + max_surge(d);
    let Some(max_before) = annotation(rs, MAX_REPLICAS).filter(|m| *m > 0) else {
        return 0;
    };
    let scaled = f64::from(spec) * f64::from(max_now) / f64::from(max_before);
    scaled.round() as i32 - spec
}

impl Rollout<'_> {
    /// Resizes every active ReplicaSet when their desired-replicas annotation says the
    /// Deployment's size changed; true if this was such a scaling event.
    pub(super) async fn scale_proportionally(&mut self) -> Result<bool, DeploymentError> {
        let want = replicas(self.d);
        let mut active: Vec<usize> = (0..self.rss.len())
            .filter(|i| spec_replicas(&self.rss[*i]) > 0)
            .collect();
        if active.len() < 2
            || active
                .iter()
                .all(|i| annotation(&self.rss[*i], DESIRED_REPLICAS) == Some(want))
        {
            return Ok(false);
        }
        let allowed = want + max_surge(self.d);
        let total: i32 = active.iter().map(|i| spec_replicas(&self.rss[*i])).sum();
        let diff = allowed - total;
        // Largest first; among equals the newer first when growing, the older when shrinking.
        active.sort_by(|a, b| {
            let (ra, rb) = (&self.rss[*a], &self.rss[*b]);
            spec_replicas(rb).cmp(&spec_replicas(ra)).then_with(|| {
                let (ta, tb) = (
                    ra.metadata.creation_timestamp.as_ref().map(|t| t.0),
                    rb.metadata.creation_timestamp.as_ref().map(|t| t.0),
                );
                if diff > 0 { tb.cmp(&ta) } else { ta.cmp(&tb) }
            })
        });
        let mut sizes: Vec<(usize, i32)> = Vec::new();
        let mut distributed = 0;
        for &i in &active {
            let rs = &self.rss[i];
            let share = if diff == 0 {
                0
            } else if diff > 0 {
                fraction(rs, self.d).min(diff - distributed).max(0)
            } else {
                fraction(rs, self.d).max(diff - distributed).min(0)
            };
            distributed += share;
            sizes.push((i, spec_replicas(rs) + share));
        }
        // Rounding leftovers go to the largest ReplicaSet.
        if let Some(first) = sizes.first_mut() {
            first.1 = (first.1 + diff - distributed).max(0);
        }
        for (i, n) in sizes {
            self.scale(i, n).await?;
        }
        tracing::info!(deployment = %self.d.name_any(), replicas = want, "scaled proportionally");
        Ok(true)
    }
}
