//! The Node authorizer: what a kubelet (user `system:node:<name>`, group `system:nodes`) may
//! do, from the graph of pods bound to its node and the objects they use.

use super::{Attributes, Decision};
use crate::server::ApiServer;

/// The Node authorizer's verdict; `NoOpinion` for users who are not nodes.
pub async fn authorize(_server: &ApiServer, _attrs: &Attributes) -> Decision {
    Decision::NoOpinion
}
