//! Events about workload objects (core/v1 Event), as upstream controllers record them: best
//! effort, one write per event, never failing a sync.

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, PostParams};
use kube::{Client, Resource, ResourceExt};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Keeps event names unique within one nanosecond.
static SEQ: AtomicU64 = AtomicU64::new(0);

/// Upper bound for one event write.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Normal or Warning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

/// Writes events with a fixed source component (`job-controller`, `cronjob-controller`).
#[derive(Clone)]
pub struct Recorder {
    client: Client,
    component: &'static str,
}

impl Recorder {
    pub fn new(client: Client, component: &'static str) -> Self {
        Recorder { client, component }
    }

    /// Records an event about `obj`; failures are logged, not returned.
    pub async fn record<K>(&self, obj: &K, kind: EventType, reason: &str, message: &str)
    where
        K: Resource<DynamicType = ()>,
    {
        let ns = obj.namespace().unwrap_or_else(|| "default".into());
        let name = obj.name_any();
        let now = jiff::Timestamp::now();
        let event = Event {
            metadata: ObjectMeta {
                name: Some(format!(
                    "{name}.{:x}{:x}",
                    now.as_nanosecond() as u64,
                    SEQ.fetch_add(1, Ordering::Relaxed)
                )),
                namespace: Some(ns.clone()),
                ..ObjectMeta::default()
            },
            involved_object: ObjectReference {
                api_version: Some(K::api_version(&()).into_owned()),
                kind: Some(K::kind(&()).into_owned()),
                name: Some(name),
                namespace: obj.namespace(),
                uid: obj.uid(),
                resource_version: obj.resource_version(),
                ..ObjectReference::default()
            },
            reason: Some(reason.into()),
            message: Some(message.into()),
            type_: Some(
                match kind {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .into(),
            ),
            source: Some(EventSource {
                component: Some(self.component.into()),
                host: None,
            }),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            count: Some(1),
            reporting_component: Some(self.component.into()),
            ..Event::default()
        };
        let api = Api::<Event>::namespaced(self.client.clone(), &ns);
        match tokio::time::timeout(WRITE_TIMEOUT, api.create(&PostParams::default(), &event)).await
        {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, reason, "recording event"),
            Err(_) => tracing::debug!(reason, "recording event timed out"),
        }
    }
}
