//! Events about pods, as the kubelet records them (source component `kubelet`, the node as
//! host); a repeat of the same event within ten minutes bumps its count instead of adding one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::{Patch, PatchParams, PostParams};

/// Upper bound for one event write; events are best effort.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Repeats within this window are aggregated into one Event.
const AGGREGATE_WINDOW: Duration = Duration::from_secs(600);

/// Normal or Warning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

#[derive(Clone, Debug)]
struct Seen {
    name: String,
    count: i32,
    first: jiff::Timestamp,
    last: jiff::Timestamp,
}

/// Records pod events through the API.
#[derive(Clone)]
pub struct EventRecorder {
    client: kube::Client,
    node_name: String,
    seen: Arc<Mutex<HashMap<String, Seen>>>,
}

fn time(t: jiff::Timestamp) -> Time {
    Time(t)
}

impl EventRecorder {
    pub fn new(client: kube::Client, node_name: String) -> Self {
        EventRecorder {
            client,
            node_name,
            seen: Arc::default(),
        }
    }

    /// Records an event about `pod` (optionally about one container, `spec.containers{name}`).
    pub async fn pod(
        &self,
        pod: &Pod,
        kind: EventType,
        reason: &str,
        message: &str,
        container: Option<&str>,
    ) {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        let field_path = container.map(|c| {
            let init = pod
                .spec
                .as_ref()
                .and_then(|s| s.init_containers.as_ref())
                .is_some_and(|ics| ics.iter().any(|i| i.name == c));
            if init {
                format!("spec.initContainers{{{c}}}")
            } else {
                format!("spec.containers{{{c}}}")
            }
        });
        let key = format!(
            "{}/{}/{}/{reason}/{message}",
            pod.metadata.uid.as_deref().unwrap_or_default(),
            field_path.as_deref().unwrap_or_default(),
            kind as u8
        );
        let now = jiff::Timestamp::now();
        let api: kube::Api<Event> = kube::Api::namespaced(self.client.clone(), &namespace);
        let previous = {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            seen.retain(|_, s| {
                (now.as_second() - s.last.as_second()) < AGGREGATE_WINDOW.as_secs() as i64
            });
            seen.get(&key).cloned()
        };
        if let Some(mut s) = previous {
            s.count += 1;
            s.last = now;
            let patch = serde_json::json!({"count": s.count, "lastTimestamp": time(now)});
            let result = tokio::time::timeout(
                WRITE_TIMEOUT,
                api.patch(&s.name, &PatchParams::default(), &Patch::Merge(&patch)),
            )
            .await;
            if matches!(result, Ok(Ok(_))) {
                self.remember(key, s);
                return;
            }
        }
        let name = format!(
            "{pod_name}.{:x}",
            now.as_nanosecond() as u64 ^ rand::random::<u32>() as u64
        );
        let event = Event {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(pod_name),
                namespace: Some(namespace),
                uid: pod.metadata.uid.clone(),
                resource_version: pod.metadata.resource_version.clone(),
                field_path,
            },
            reason: Some(reason.to_string()),
            message: Some(message.to_string()),
            source: Some(EventSource {
                component: Some("kubelet".into()),
                host: Some(self.node_name.clone()),
            }),
            first_timestamp: Some(time(now)),
            last_timestamp: Some(time(now)),
            event_time: None::<MicroTime>,
            count: Some(1),
            type_: Some(
                match kind {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .into(),
            ),
            reporting_component: Some("kubelet".into()),
            reporting_instance: Some(self.node_name.clone()),
            action: None,
            related: None,
            series: None,
        };
        match tokio::time::timeout(WRITE_TIMEOUT, api.create(&PostParams::default(), &event)).await
        {
            Ok(Ok(_)) => self.remember(
                key,
                Seen {
                    name,
                    count: 1,
                    first: now,
                    last: now,
                },
            ),
            Ok(Err(e)) => tracing::debug!(error = %e, reason, "recording an event"),
            Err(_) => tracing::debug!(reason, "recording an event timed out"),
        }
    }

    fn remember(&self, key: String, seen: Seen) {
        let _ = seen.first;
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, seen);
    }
}
