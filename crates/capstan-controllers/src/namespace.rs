//! The namespace controller (upstream's NamespaceController): for a namespace being deleted
//! that still carries the `kubernetes` finalizer, delete every namespaced resource in it
//! (found through discovery), record progress in the namespace's status conditions, and once
//! nothing is left remove the finalizer through `namespaces/NAME/finalize`, which lets the API
//! server delete the namespace. Level-triggered: kube-runtime queues namespace keys, every
//! reconcile re-reads the namespace, and unfinished work is requeued with back-off.

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, NamespaceCondition, NamespaceStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::discovery::{ApiCapabilities, ApiResource, Discovery, Scope, verbs};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The finalizer this controller owns (`spec.finalizers`).
pub const FINALIZER: &str = "kubernetes";
const BACKOFF_BASE: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error("reading namespace")]
    Read(#[source] kube::Error),
    #[error("discovering namespaced resources")]
    Discovery(#[source] kube::Error),
    #[error("failed to delete all resource types: {0}")]
    ContentDeletion(String),
    #[error("{0} objects remain in the namespace")]
    ContentRemaining(usize),
    #[error("finalizing namespace")]
    Finalize(#[source] kube::Error),
}

struct Context {
    client: Client,
    /// Consecutive failures per namespace, for the back-off.
    failures: Mutex<HashMap<String, u32>>,
}

/// Run the controller until `stop` is cancelled.
pub async fn run(client: Client, stop: CancellationToken) {
    let api = Api::<Namespace>::all(client.clone());
    let ctx = Arc::new(Context {
        client,
        failures: Mutex::new(HashMap::new()),
    });
    Controller::new(api, watcher::Config::default())
        .graceful_shutdown_on(async move { stop.cancelled().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "namespace reconcile");
            }
        })
        .await;
}

fn error_policy(ns: Arc<Namespace>, err: &NamespaceError, ctx: Arc<Context>) -> Action {
    let name = ns.name_any();
    let n = {
        let mut f = ctx.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = f.entry(name.clone()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    let delay = BACKOFF_BASE
        .saturating_mul(1u32 << n.min(10).saturating_sub(1))
        .min(BACKOFF_MAX);
    match err {
        NamespaceError::ContentRemaining(_) => {
            tracing::debug!(namespace = %name, error = %err, ?delay, "namespace not empty yet")
        }
        _ => tracing::warn!(namespace = %name, error = %err, ?delay, "namespace deletion"),
    }
    Action::requeue(delay)
}

fn terminating_with_finalizer(ns: &Namespace) -> bool {
    ns.metadata.deletion_timestamp.is_some()
        && ns
            .spec
            .as_ref()
            .and_then(|s| s.finalizers.as_ref())
            .is_some_and(|f| f.iter().any(|x| x == FINALIZER))
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Context>) -> Result<Action, NamespaceError> {
    if !terminating_with_finalizer(&ns) {
        return Ok(Action::await_change());
    }
    let name = ns.name_any();
    let api = Api::<Namespace>::all(ctx.client.clone());
    let Some(fresh) = api.get_opt(&name).await.map_err(NamespaceError::Read)? else {
        return Ok(Action::await_change());
    };
    if !terminating_with_finalizer(&fresh) {
        return Ok(Action::await_change());
    }
    let report = delete_content(&ctx.client, &name).await;
    let fresh = update_conditions(&api, fresh, &report).await;
    report.into_result()?;
    let mut body = fresh;
    if let Some(spec) = body.spec.as_mut() {
        spec.finalizers = Some(
            spec.finalizers
                .take()
                .unwrap_or_default()
                .into_iter()
                .filter(|f| f != FINALIZER)
                .collect(),
        );
    }
    match api
        .replace_subresource("finalize", &name, &PostParams::default(), &body)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.is_not_found() => {}
        Err(e) => return Err(NamespaceError::Finalize(e)),
    }
    tracing::info!(namespace = %name, "namespace content deleted, finalized");
    ctx.failures
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&name);
    Ok(Action::await_change())
}

/// What one deletion pass found.
#[derive(Debug, Default)]
struct ContentReport {
    discovery: Option<kube::Error>,
    deletion_errors: Vec<String>,
    /// Remaining objects per `resource.group`.
    remaining: BTreeMap<String, usize>,
    /// Remaining objects per finalizer they carry.
    finalizers: BTreeMap<String, usize>,
}

impl ContentReport {
    fn into_result(self) -> Result<(), NamespaceError> {
        if let Some(e) = self.discovery {
            return Err(NamespaceError::Discovery(e));
        }
        if !self.deletion_errors.is_empty() {
            return Err(NamespaceError::ContentDeletion(
                self.deletion_errors.join("; "),
            ));
        }
        let left: usize = self.remaining.values().sum();
        if left > 0 {
            return Err(NamespaceError::ContentRemaining(left));
        }
        Ok(())
    }
}

/// Namespaced resources that can be listed, by discovery.
async fn namespaced_resources(
    client: &Client,
) -> Result<Vec<(ApiResource, ApiCapabilities)>, kube::Error> {
    let discovery = Discovery::new(client.clone()).run().await?;
    Ok(discovery
        .groups()
        .flat_map(|g| g.recommended_resources())
        .filter(|(_, caps)| caps.scope == Scope::Namespaced && caps.supports_operation(verbs::LIST))
        .collect())
}

fn ignorable(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.is_not_found() || s.code == 405)
}

/// Delete everything in `ns` (deletecollection where served, else one by one) and count
/// what is still there.
async fn delete_content(client: &Client, ns: &str) -> ContentReport {
    let mut report = ContentReport::default();
    let resources = match namespaced_resources(client).await {
        Ok(r) => r,
        Err(e) => {
            report.discovery = Some(e);
            return report;
        }
    };
    let dp = DeleteParams::background();
    for (ar, caps) in resources {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
        let label = if ar.group.is_empty() {
            ar.plural.clone()
        } else {
            format!("{}.{}", ar.plural, ar.group)
        };
        if caps.supports_operation(verbs::DELETE_COLLECTION) {
            if let Err(e) = api.delete_collection(&dp, &ListParams::default()).await
                && !ignorable(&e)
            {
                report.deletion_errors.push(format!("{label}: {e}"));
            }
        } else if caps.supports_operation(verbs::DELETE) {
            match api.list(&ListParams::default()).await {
                Ok(list) => {
                    for o in list.items {
                        if let Err(e) = api.delete(&o.name_any(), &dp).await
                            && !ignorable(&e)
                        {
                            report.deletion_errors.push(format!("{label}: {e}"));
                        }
                    }
                }
                Err(e) if ignorable(&e) => {}
                Err(e) => report.deletion_errors.push(format!("{label}: {e}")),
            }
        }
        match api.list(&ListParams::default()).await {
            Ok(list) if !list.items.is_empty() => {
                report.remaining.insert(label, list.items.len());
                for o in &list.items {
                    for f in o.finalizers() {
                        *report.finalizers.entry(f.clone()).or_default() += 1;
                    }
                }
            }
            Ok(_) => {}
            Err(e) if ignorable(&e) => {}
            Err(e) => report.deletion_errors.push(format!("{label}: {e}")),
        }
    }
    report
}

fn condition(type_: &str, on: bool, reason: &str, message: String) -> NamespaceCondition {
    NamespaceCondition {
        type_: type_.to_string(),
        status: if on { "True" } else { "False" }.to_string(),
        reason: Some(reason.to_string()),
        message: Some(message),
        last_transition_time: None,
    }
}

/// Upstream's five deletion conditions for this pass.
fn conditions(report: &ContentReport) -> Vec<NamespaceCondition> {
    let remaining: Vec<String> = report
        .remaining
        .iter()
        .map(|(r, n)| format!("{r} has {n} resource instances"))
        .collect();
    let finalizers: Vec<String> = report
        .finalizers
        .iter()
        .map(|(f, n)| format!("{f} in {n} resource instances"))
        .collect();
    vec![
        match &report.discovery {
            Some(e) => condition(
                "NamespaceDeletionDiscoveryFailure",
                true,
                "DiscoveryFailed",
                format!("Discovery failed for some groups: {e}"),
            ),
            None => condition(
                "NamespaceDeletionDiscoveryFailure",
                false,
                "ResourcesDiscovered",
                "All resources successfully discovered".into(),
            ),
        },
        condition(
            "NamespaceDeletionGroupVersionParsingFailure",
            false,
            "ParsedGroupVersions",
            "All legacy kube types successfully parsed".into(),
        ),
        if report.deletion_errors.is_empty() {
            condition(
                "NamespaceDeletionContentFailure",
                false,
                "ContentDeleted",
                "All content successfully deleted, may be waiting on finalization".into(),
            )
        } else {
            condition(
                "NamespaceDeletionContentFailure",
                true,
                "ContentDeletionFailed",
                format!(
                    "Failed to delete all resource types, {} remaining: {}",
                    report.deletion_errors.len(),
                    report.deletion_errors.join(", ")
                ),
            )
        },
        if remaining.is_empty() {
            condition(
                "NamespaceContentRemaining",
                false,
                "ContentRemoved",
                "All content successfully removed".into(),
            )
        } else {
            condition(
                "NamespaceContentRemaining",
                true,
                "SomeResourcesRemain",
                format!("Some resources are remaining: {}", remaining.join(", ")),
            )
        },
        if finalizers.is_empty() {
            condition(
                "NamespaceFinalizersRemaining",
                false,
                "ContentHasNoFinalizers",
                "All content-preserving finalizers finished".into(),
            )
        } else {
            condition(
                "NamespaceFinalizersRemaining",
                true,
                "SomeFinalizersRemain",
                format!(
                    "Some content in the namespace has finalizers remaining: {}",
                    finalizers.join(", ")
                ),
            )
        },
    ]
}

/// Write the conditions when they changed (keeping transition times of unchanged statuses);
/// returns the namespace as it now stands. A failed write is left to the next pass.
async fn update_conditions(
    api: &Api<Namespace>,
    ns: Namespace,
    report: &ContentReport,
) -> Namespace {
    let old = ns
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let now = Time(jiff::Timestamp::now());
    let mut changed = false;
    let new: Vec<NamespaceCondition> = conditions(report)
        .into_iter()
        .map(|mut c| {
            let prev = old.iter().find(|o| o.type_ == c.type_);
            let same_status = prev.is_some_and(|p| p.status == c.status);
            c.last_transition_time = if same_status {
                prev.and_then(|p| p.last_transition_time.clone())
            } else {
                Some(now.clone())
            };
            if prev.is_none_or(|p| {
                p.status != c.status || p.reason != c.reason || p.message != c.message
            }) {
                changed = true;
            }
            c
        })
        .collect();
    if !changed {
        return ns;
    }
    let mut next = ns.clone();
    next.status = Some(NamespaceStatus {
        conditions: Some(new),
        ..ns.status.clone().unwrap_or_default()
    });
    match api
        .replace_status(&ns.name_any(), &PostParams::default(), &next)
        .await
    {
        Ok(updated) => updated,
        Err(e) => {
            tracing::debug!(namespace = %ns.name_any(), error = %e, "updating namespace conditions");
            ns
        }
    }
}
