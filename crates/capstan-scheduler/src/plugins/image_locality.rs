//! ImageLocality: prefers nodes that already hold the pod's images, weighted by how widely
//! each image is spread (so one node does not attract everything).

use crate::cache::Snapshot;
use crate::framework::{CycleState, MAX_NODE_SCORE, ScorePlugin};
use crate::nodeinfo::{NodeInfo, normalize_image};
use crate::podinfo::PodInfo;

pub const NAME: &str = "ImageLocality";
const MB: i64 = 1024 * 1024;
const MIN_THRESHOLD: i64 = 23 * MB;
const MAX_CONTAINER_THRESHOLD: i64 = 1000 * MB;

pub struct ImageLocality;

impl ScorePlugin for ImageLocality {
    fn name(&self) -> &'static str {
        NAME
    }

    fn score(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo, snap: &Snapshot) -> i64 {
        if node.images.is_empty() || pod.images.is_empty() {
            return 0;
        }
        let total = snap.node_count().max(1) as f64;
        let sum: f64 = pod
            .images
            .iter()
            .map(|i| normalize_image(i))
            .filter_map(|i| {
                let size = *node.images.get(&i)?;
                let spread = snap.image_nodes.get(&i).copied().unwrap_or(0) as f64 / total;
                Some(size as f64 * spread)
            })
            .sum();
        let max = MAX_CONTAINER_THRESHOLD * pod.images.len() as i64;
        let sum = (sum as i64).clamp(MIN_THRESHOLD, max);
        MAX_NODE_SCORE * (sum - MIN_THRESHOLD) / (max - MIN_THRESHOLD)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::test_support::*;
    use crate::testutil::{node, pod_json};
    use serde_json::json;

    #[test]
    fn nodes_with_the_image_score_higher() {
        let mut with = node("with", "1", "1Gi", 10);
        with.status.as_mut().unwrap().images = Some(vec![
            serde_json::from_value(
                json!({"names": ["docker.io/library/big:1"], "sizeBytes": 500 * MB}),
            )
            .unwrap(),
        ]);
        let s = snap(vec![with, node("without", "1", "1Gi", 10)], vec![]);
        let p = info(pod_json(
            "p",
            json!({}),
            json!({"containers": [{"name": "c", "image": "big:1"}]}),
        ));
        let score = |n: &str| ImageLocality.score(&state(), &p, s.get(n).unwrap(), &s);
        // 500MB spread over half the nodes = 250MB, scaled between 23MB and 1000MB.
        assert_eq!(score("with"), 23);
        assert_eq!(score("without"), 0);
    }
}
