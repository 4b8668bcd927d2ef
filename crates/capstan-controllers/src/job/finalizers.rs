//! The `batch.kubernetes.io/job-tracking` finalizer: removed from a pod once the Job counted
//! it, and from pods whose Job is gone (or that lost their controller), so none stays forever.

use super::pods::{TRACKING_FINALIZER, has_finalizer};
use super::{JobError, Trigger};
use crate::replicaset::controller_of;
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use tokio_util::sync::CancellationToken;

/// Removes the tracking finalizer from `pod` (a merge patch pinned to the pod's
/// resourceVersion, retried on a fresh read). Ok(()) also when the pod or finalizer is gone.
pub async fn remove(api: &Api<Pod>, pod: &Pod) -> Result<(), JobError> {
    let name = pod.name_any();
    let mut current = pod.clone();
    let mut last_err = None;
    for _ in 0..3 {
        if !has_finalizer(&current) {
            return Ok(());
        }
        let rest: Vec<&String> = current
            .finalizers()
            .iter()
            .filter(|f| *f != TRACKING_FINALIZER)
            .collect();
        // null, not [], when none is left: the field goes away as upstream's patch leaves it.
        let rest = (!rest.is_empty()).then_some(rest);
        let body = serde_json::json!({"metadata": {
            "finalizers": rest,
            "resourceVersion": current.resource_version(),
        }});
        match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(body))
            .await
        {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(s)) if s.is_not_found() => return Ok(()),
            Err(e) => last_err = Some(e),
        }
        // The pod moved under us: read it again.
        match api.get(&name).await {
            Ok(p) if p.uid() == pod.uid() => current = p,
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(s)) if s.is_not_found() => return Ok(()),
            Err(e) => return Err(JobError::Finalizer(name, e)),
        }
    }
    match last_err {
        Some(e) => Err(JobError::Finalizer(name, e)),
        None => Ok(()),
    }
}

/// Releases pods carrying the finalizer whose controlling Job no longer exists (or that have
/// no controller any more), as upstream's orphan pod handling does.
pub async fn run_orphan_cleaner(
    client: Client,
    jobs: Store<Job>,
    mut pods: Trigger<Pod>,
    stop: CancellationToken,
) {
    loop {
        let pod = tokio::select! {
            _ = stop.cancelled() => return,
            p = pods.next() => match p {
                Some(Ok(p)) => p,
                Some(Err(_)) => continue,
                None => return,
            },
        };
        if !has_finalizer(&pod) {
            continue;
        }
        let ns = pod.namespace().unwrap_or_default();
        let owner = controller_of(&pod.metadata)
            .filter(|o| o.kind == "Job")
            .cloned();
        let cached = owner
            .as_ref()
            .and_then(|o| jobs.get(&ObjectRef::new(&o.name).within(&ns)))
            .is_some_and(|j| {
                owner
                    .as_ref()
                    .is_some_and(|o| j.uid().as_deref() == Some(&o.uid))
            });
        if cached {
            continue;
        }
        // Confirm with a live read: the Job cache may lag behind the pod cache.
        if let Some(o) = &owner {
            match Api::<Job>::namespaced(client.clone(), &ns)
                .get(&o.name)
                .await
            {
                Ok(j) if j.uid().as_deref() == Some(&o.uid) => continue,
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.is_not_found() => {}
                Err(_) => continue,
            }
        }
        let api = Api::<Pod>::namespaced(client.clone(), &ns);
        if let Err(e) = remove(&api, &pod).await {
            tracing::debug!(pod = %pod.name_any(), error = %e, "releasing orphan job pod");
        }
    }
}
