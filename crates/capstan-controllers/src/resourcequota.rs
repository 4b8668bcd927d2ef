//! The ResourceQuota controller (upstream's `pkg/controller/resourcequota`): keeps each
//! quota's `status.hard` equal to its spec and `status.used` to what the namespace holds for
//! every tracked resource: object counts (`pods`, `services`, `count/deployments.apps`, …) and
//! the compute requests and limits of pods that are not terminal. Enforcement is admission's.

use crate::quantity_sum::{QuantitySum, pod_compute};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, Pod, ReplicationController, ResourceQuota,
    ResourceQuotaStatus, Secret, Service,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::core::{DynamicObject, GroupVersionKind};
use kube::discovery::ApiResource;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Full recalculation period, as upstream's quota resync.
const RESYNC: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    #[error("listing {what} in {namespace}")]
    List {
        what: String,
        namespace: String,
        #[source]
        source: kube::Error,
    },
    #[error("updating the status of ResourceQuota {0}")]
    Status(String, #[source] kube::Error),
}

/// Run the controller until `stop`.
pub async fn run(client: Client, stop: CancellationToken) {
    let quotas = Api::<ResourceQuota>::all(client.clone());
    let controller = Controller::new(quotas, watcher::Config::default());
    let store = controller.store();
    controller
        .watches(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default(),
            in_namespace(&store),
        )
        .watches(
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
            in_namespace(&store),
        )
        .watches(
            Api::<PersistentVolumeClaim>::all(client.clone()),
            watcher::Config::default(),
            in_namespace(&store),
        )
        .graceful_shutdown_on(async move { stop.cancelled().await })
        .run(reconcile, error_policy, Arc::new(client))
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "resourcequota reconcile");
            }
        })
        .await;
}

/// Maps a changed object to every quota of its namespace.
fn in_namespace<K: Resource>(
    store: &Store<ResourceQuota>,
) -> impl Fn(K) -> Vec<ObjectRef<ResourceQuota>> + Send + Sync + 'static {
    let store = store.clone();
    move |obj: K| {
        let ns = obj.meta().namespace.clone();
        store
            .state()
            .iter()
            .filter(|q| q.metadata.namespace == ns)
            .map(|q| ObjectRef::from_obj(q.as_ref()))
            .collect()
    }
}

fn error_policy(q: Arc<ResourceQuota>, err: &QuotaError, _: Arc<Client>) -> Action {
    tracing::warn!(quota = %q.name_any(), error = %err, "resourcequota sync failed");
    Action::requeue(Duration::from_secs(2))
}

async fn reconcile(quota: Arc<ResourceQuota>, client: Arc<Client>) -> Result<Action, QuotaError> {
    let ns = quota.namespace().unwrap_or_default();
    let hard = quota
        .spec
        .as_ref()
        .and_then(|s| s.hard.clone())
        .unwrap_or_default();
    let used = usage(&client, &ns, &hard).await?;
    let status = ResourceQuotaStatus {
        hard: Some(hard),
        used: Some(used),
    };
    if quota.status.as_ref() != Some(&status) {
        let api = Api::<ResourceQuota>::namespaced((*client).clone(), &ns);
        api.patch_status(
            &quota.name_any(),
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"status": status})),
        )
        .await
        .map_err(|e| QuotaError::Status(format!("{ns}/{}", quota.name_any()), e))?;
    }
    Ok(Action::requeue(RESYNC))
}

/// What the namespace uses of each resource named in `hard`.
async fn usage(
    client: &Client,
    ns: &str,
    hard: &BTreeMap<String, Quantity>,
) -> Result<BTreeMap<String, Quantity>, QuotaError> {
    let mut pods: Option<Vec<Pod>> = None;
    let mut used = BTreeMap::new();
    for key in hard.keys() {
        let value = match key.as_str() {
            "pods" | "count/pods" => {
                let live = live_pods(client, ns, &mut pods).await?;
                QuantitySum::count(live.len())
            }
            "requests.cpu"
            | "cpu"
            | "requests.memory"
            | "memory"
            | "limits.cpu"
            | "limits.memory"
            | "requests.ephemeral-storage"
            | "ephemeral-storage"
            | "limits.ephemeral-storage" => {
                let (section, resource) = match key.split_once('.') {
                    Some((s, r)) => (s, r),
                    None => ("requests", key.as_str()),
                };
                let mut sum = QuantitySum::new(resource);
                for pod in live_pods(client, ns, &mut pods).await? {
                    sum.add(pod_compute(pod, section, resource));
                }
                sum
            }
            "services" | "count/services" => {
                QuantitySum::count(count::<Service>(client, ns).await?)
            }
            "services.nodeports" | "services.loadbalancers" => {
                let services = list::<Service>(client, ns).await?;
                let mut n = 0;
                for s in &services {
                    let spec = s.spec.clone().unwrap_or_default();
                    let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
                    n += match (key.as_str(), kind) {
                        ("services.loadbalancers", "LoadBalancer") => 1,
                        ("services.nodeports", "NodePort" | "LoadBalancer") => spec
                            .ports
                            .iter()
                            .flatten()
                            .filter(|p| p.node_port.is_some())
                            .count(),
                        _ => 0,
                    };
                }
                QuantitySum::count(n)
            }
            "configmaps" | "count/configmaps" => {
                QuantitySum::count(count::<ConfigMap>(client, ns).await?)
            }
            "secrets" | "count/secrets" => QuantitySum::count(count::<Secret>(client, ns).await?),
            "persistentvolumeclaims" | "count/persistentvolumeclaims" => {
                QuantitySum::count(count::<PersistentVolumeClaim>(client, ns).await?)
            }
            "replicationcontrollers" | "count/replicationcontrollers" => {
                QuantitySum::count(count::<ReplicationController>(client, ns).await?)
            }
            "resourcequotas" | "count/resourcequotas" => {
                QuantitySum::count(count::<ResourceQuota>(client, ns).await?)
            }
            other => match other.strip_prefix("count/") {
                Some(resource) => QuantitySum::count(count_generic(client, ns, resource).await?),
                // Extended resources and storage classes are not tracked yet.
                None => continue,
            },
        };
        used.insert(key.clone(), value.quantity());
    }
    Ok(used)
}

/// Pods that count against the quota: not Succeeded/Failed and not being deleted.
async fn live_pods<'a>(
    client: &Client,
    ns: &str,
    cache: &'a mut Option<Vec<Pod>>,
) -> Result<&'a [Pod], QuotaError> {
    if cache.is_none() {
        let pods = list::<Pod>(client, ns).await?;
        *cache = Some(
            pods.into_iter()
                .filter(|p| {
                    let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
                    !matches!(phase, Some("Succeeded" | "Failed"))
                        && p.metadata.deletion_timestamp.is_none()
                })
                .collect(),
        );
    }
    Ok(cache.as_deref().unwrap_or_default())
}

async fn list<K>(client: &Client, ns: &str) -> Result<Vec<K>, QuotaError>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    Api::<K>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .map_err(|source| QuotaError::List {
            what: K::plural(&Default::default()).to_string(),
            namespace: ns.to_string(),
            source,
        })
}

async fn count<K>(client: &Client, ns: &str) -> Result<usize, QuotaError>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    Ok(list::<K>(client, ns).await?.len())
}

/// `count/<resource>.<group>` for any served resource (core when there is no group).
async fn count_generic(client: &Client, ns: &str, resource: &str) -> Result<usize, QuotaError> {
    let (plural, group) = resource.split_once('.').unwrap_or((resource, ""));
    let discovery_err = |source| QuotaError::List {
        what: resource.to_string(),
        namespace: ns.to_string(),
        source,
    };
    let version = if group.is_empty() {
        "v1".to_string()
    } else {
        let groups = client.list_api_groups().await.map_err(discovery_err)?;
        match groups.groups.iter().find(|g| g.name == group) {
            Some(g) => g
                .preferred_version
                .as_ref()
                .map(|v| v.version.clone())
                .unwrap_or_else(|| "v1".into()),
            None => return Ok(0),
        }
    };
    let gvk = GroupVersionKind::gvk(group, &version, "");
    let ar = ApiResource::from_gvk_with_plural(&gvk, plural);
    let api = Api::<DynamicObject>::namespaced_with(client.clone(), ns, &ar);
    match api.list_metadata(&ListParams::default()).await {
        Ok(list) => Ok(list.items.len()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(0),
        Err(e) => Err(discovery_err(e)),
    }
}
