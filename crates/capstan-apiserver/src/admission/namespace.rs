//! NamespaceLifecycle: nothing is created in a namespace that is missing or terminating, and
//! the namespaces a cluster starts with cannot be deleted.

use super::{Operation, Request};
use crate::server::ApiServer;
use capstan_api::{ApiError, resources};
use serde_json::Value;

/// Namespaces that exist for the life of the cluster.
pub const IMMORTAL: [&str; 4] = ["default", "kube-system", "kube-public", "kube-node-lease"];

pub(crate) async fn admit(server: &ApiServer, req: &Request<'_>) -> Result<(), ApiError> {
    if req.operation == Operation::Delete {
        if req.is_core("Namespace") && IMMORTAL.contains(&req.name) {
            return Err(req.forbidden("this namespace may not be deleted"));
        }
        return Ok(());
    }
    if req.operation != Operation::Create || !req.info.namespaced || req.subresource.is_some() {
        return Ok(());
    }
    let ns = req.namespace.unwrap_or_default();
    let ns_info = resources::find("", "v1", "namespaces").expect("namespaces are served");
    let Some((v, _)) = super::get(server, "", "namespaces", None, ns).await? else {
        return Err(ApiError::not_found(ns_info, ns));
    };
    if is_terminating(&v) {
        let mut e = ApiError::forbidden(format!(
            "unable to create new content in namespace {ns} because it is being terminated"
        ));
        e.causes = vec![capstan_api::status::Cause::new(
            "NamespaceTerminating",
            "metadata.namespace",
            format!("namespace {ns} is being terminated"),
        )];
        return Err(e);
    }
    Ok(())
}

fn is_terminating(ns: &Value) -> bool {
    crate::object::meta_str(ns, "deletionTimestamp").is_some()
        || ns["status"]["phase"] == "Terminating"
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn terminating_by_timestamp_or_phase() {
        assert!(!is_terminating(&json!({"metadata": {"name": "a"}})));
        assert!(is_terminating(
            &json!({"metadata": {"name": "a", "deletionTimestamp": "2026-01-01T00:00:00Z"}})
        ));
        assert!(is_terminating(
            &json!({"metadata": {"name": "a"}, "status": {"phase": "Terminating"}})
        ));
    }
}
