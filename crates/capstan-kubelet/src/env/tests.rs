//! Table-driven tests of env building against a map-backed [`ObjectSource`].

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret, Service};
use serde_json::json;

use super::*;

/// An [`ObjectSource`] over maps, keyed by `namespace/name`.
#[derive(Default)]
pub(crate) struct FakeSource {
    pub config_maps: std::sync::Mutex<BTreeMap<String, ConfigMap>>,
    pub secrets: std::sync::Mutex<BTreeMap<String, Secret>>,
}

impl FakeSource {
    pub fn with(objects: serde_json::Value) -> FakeSource {
        let source = FakeSource::default();
        for obj in objects.as_array().into_iter().flatten() {
            source.put(obj.clone());
        }
        source
    }

    /// Adds or replaces a ConfigMap or Secret given as JSON.
    pub fn put(&self, obj: serde_json::Value) {
        let ns = obj["metadata"]["namespace"].as_str().unwrap_or("default");
        let key = format!("{ns}/{}", obj["metadata"]["name"].as_str().unwrap_or(""));
        if obj["kind"] == "Secret" {
            let s: Secret = serde_json::from_value(obj).expect("secret");
            self.secrets.lock().expect("lock").insert(key, s);
        } else {
            let c: ConfigMap = serde_json::from_value(obj).expect("configmap");
            self.config_maps.lock().expect("lock").insert(key, c);
        }
    }
}

#[async_trait::async_trait]
impl ObjectSource for FakeSource {
    async fn config_map(&self, ns: &str, name: &str) -> Result<Option<ConfigMap>, SourceError> {
        Ok(self
            .config_maps
            .lock()
            .expect("lock")
            .get(&format!("{ns}/{name}"))
            .cloned())
    }
    async fn secret(&self, ns: &str, name: &str) -> Result<Option<Secret>, SourceError> {
        Ok(self
            .secrets
            .lock()
            .expect("lock")
            .get(&format!("{ns}/{name}"))
            .cloned())
    }
    async fn service_account_token(
        &self,
        pod: &Pod,
        sa: &str,
        audience: Option<&str>,
        expiration_seconds: i64,
    ) -> Result<String, SourceError> {
        Ok(format!(
            "token:{}:{sa}:{}:{expiration_seconds}",
            pod.metadata.name.as_deref().unwrap_or(""),
            audience.unwrap_or("")
        ))
    }
}

fn objects() -> serde_json::Value {
    json!([
        {"kind": "ConfigMap", "metadata": {"name": "app-config", "namespace": "default"},
         "data": {"LOG_LEVEL": "debug", "mode": "fast", "bad key": "x", "1abc": "y"}},
        {"kind": "Secret", "metadata": {"name": "mysql-secret", "namespace": "default"},
         "data": {"db-password": "czNjcjN0"}},
    ])
}

fn pod() -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "default", "uid": "u-1",
                     "labels": {"app": "web"}, "annotations": {"note": "hi"}},
        "spec": {"serviceAccountName": "builder", "containers": [
            {"name": "main", "resources": {"limits": {"memory": "64Mi"}, "requests": {"cpu": "250m"}}},
            {"name": "side"}
        ]}
    }))
    .expect("pod")
}

async fn build(container: serde_json::Value) -> Result<Vec<(String, String)>, EnvError> {
    let mut c = json!({"name": "main"});
    for (k, v) in container.as_object().expect("object") {
        c[k] = v.clone();
    }
    let container: Container = serde_json::from_value(c).expect("container");
    let pod = pod();
    let allocatable: BTreeMap<String, Quantity> = [
        ("cpu".to_string(), Quantity("2".into())),
        ("memory".to_string(), Quantity("4Gi".into())),
    ]
    .into();
    let service_env = vec![
        (
            "KUBERNETES_SERVICE_HOST".to_string(),
            "10.43.0.1".to_string(),
        ),
        ("MODE".to_string(), "from-service".to_string()),
    ];
    let ips = vec!["10.42.0.7".to_string(), "fd00::7".to_string()];
    let ctx = EnvContext {
        pod: &pod,
        node_name: "node-a",
        host_ip: "192.0.2.2",
        pod_ips: &ips,
        service_env: &service_env,
        node_allocatable: &allocatable,
    };
    container_env(&ctx, &container, &FakeSource::with(objects())).await
}

fn field_refs() -> serde_json::Value {
    let paths = [
        "metadata.name",
        "metadata.namespace",
        "metadata.uid",
        "metadata.labels['app']",
        "metadata.annotations['note']",
        "metadata.labels['none']",
        "spec.nodeName",
        "spec.serviceAccountName",
        "status.hostIP",
        "status.podIP",
        "status.podIPs",
    ];
    paths
        .iter()
        .enumerate()
        .map(|(i, p)| json!({"name": format!("F{i}"), "valueFrom": {"fieldRef": {"fieldPath": p}}}))
        .collect()
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

const SVC: [(&str, &str); 2] = [
    ("KUBERNETES_SERVICE_HOST", "10.43.0.1"),
    ("MODE", "from-service"),
];

/// Name, container fields, expected env (on top of the service env) or error.
type Case = (
    &'static str,
    serde_json::Value,
    Result<Vec<(&'static str, &'static str)>, &'static str>,
);

#[tokio::test]
async fn container_env_cases() {
    let cases: Vec<Case> = vec![
        (
            "literal values and expansion of earlier vars, $$ escape, unknown refs kept",
            json!({"env": [{"name": "A", "value": "x"}, {"name": "B", "value": "$(A)-$(NOPE)-$$(A)-$(KUBERNETES_SERVICE_HOST)"}, {"name": "E"}]}),
            Ok(vec![
                ("A", "x"),
                ("B", "x-$(NOPE)-$(A)-10.43.0.1"),
                ("E", ""),
            ]),
        ),
        (
            "a var refers only to earlier ones",
            json!({"env": [{"name": "B", "value": "$(A)"}, {"name": "A", "value": "x"}]}),
            Ok(vec![("B", "$(A)"), ("A", "x")]),
        ),
        (
            "envFrom with prefix, invalid keys skipped, env overrides",
            json!({"envFrom": [{"configMapRef": {"name": "app-config"}, "prefix": "CFG_"}, {"configMapRef": {"name": "app-config"}}],
                "env": [{"name": "mode", "value": "slow"}]}),
            Ok(vec![
                ("CFG_1abc", "y"),
                ("CFG_LOG_LEVEL", "debug"),
                ("CFG_mode", "fast"),
                ("LOG_LEVEL", "debug"),
                ("mode", "slow"),
            ]),
        ),
        (
            "envFrom secret",
            json!({"envFrom": [{"secretRef": {"name": "mysql-secret"}}]}),
            Ok(vec![("db-password", "s3cr3t")]),
        ),
        (
            "missing optional envFrom is skipped",
            json!({"envFrom": [{"configMapRef": {"name": "nope", "optional": true}}, {"secretRef": {"name": "nope", "optional": true}}]}),
            Ok(vec![]),
        ),
        (
            "missing envFrom configmap",
            json!({"envFrom": [{"configMapRef": {"name": "nope"}}]}),
            Err("configmap \"nope\" not found"),
        ),
        (
            "missing envFrom secret",
            json!({"envFrom": [{"secretRef": {"name": "nope"}}]}),
            Err("secret \"nope\" not found"),
        ),
        (
            "key refs",
            json!({"env": [{"name": "LVL", "valueFrom": {"configMapKeyRef": {"name": "app-config", "key": "LOG_LEVEL"}}},
                        {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "mysql-secret", "key": "db-password"}}},
                        {"name": "NOT_EXPANDED", "valueFrom": {"configMapKeyRef": {"name": "app-config", "key": "mode"}}}]}),
            Ok(vec![
                ("LVL", "debug"),
                ("PW", "s3cr3t"),
                ("NOT_EXPANDED", "fast"),
            ]),
        ),
        (
            "optional key refs missing",
            json!({"env": [{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "app-config", "key": "nope", "optional": true}}},
                        {"name": "B", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k", "optional": true}}}]}),
            Ok(vec![]),
        ),
        (
            "missing secret key",
            json!({"env": [{"name": "PW", "valueFrom": {"secretKeyRef": {"name": "mysql-secret", "key": "password"}}}]}),
            Err("couldn't find key password in Secret default/mysql-secret"),
        ),
        (
            "missing configmap key",
            json!({"env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "app-config", "key": "x"}}}]}),
            Err("couldn't find key x in ConfigMap default/app-config"),
        ),
        (
            "missing configmap for key ref",
            json!({"env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "gone", "key": "x"}}}]}),
            Err("configmap \"gone\" not found"),
        ),
        (
            "field refs",
            json!({"env": field_refs()}),
            Ok(vec![
                ("F0", "web"),
                ("F1", "default"),
                ("F2", "u-1"),
                ("F3", "web"),
                ("F4", "hi"),
                ("F5", ""),
                ("F6", "node-a"),
                ("F7", "builder"),
                ("F8", "192.0.2.2"),
                ("F9", "10.42.0.7"),
                ("F10", "10.42.0.7,fd00::7"),
            ]),
        ),
        (
            "unsupported field",
            json!({"env": [{"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "spec.hostname"}}}]}),
            Err("unsupported fieldPath: spec.hostname"),
        ),
        (
            "resource refs with divisors and allocatable defaults",
            json!({"env": [
             {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory"}}},
             {"name": "MEM_MI", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
             {"name": "CPU_LIM", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
             {"name": "CPU_REQ", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu"}}},
             {"name": "CPU_REQ_M", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu", "divisor": "1m"}}},
             {"name": "SIDE_MEM", "valueFrom": {"resourceFieldRef": {"containerName": "side", "resource": "limits.memory", "divisor": "1Gi"}}}]}),
            Ok(vec![
                ("MEM", "67108864"),
                ("MEM_MI", "64"),
                ("CPU_LIM", "2"),
                ("CPU_REQ", "1"),
                ("CPU_REQ_M", "250"),
                ("SIDE_MEM", "4"),
            ]),
        ),
        (
            "unsupported resource",
            json!({"env": [{"name": "X", "valueFrom": {"resourceFieldRef": {"resource": "limits.gpu"}}}]}),
            Err("unsupported container resource : limits.gpu"),
        ),
    ];
    for (name, container, expected) in cases {
        let got = build(container).await;
        match (got, expected) {
            (Ok(env), Ok(want)) => {
                let mut full = pairs(&SVC);
                for (k, v) in pairs(&want) {
                    match full.iter_mut().find(|(fk, _)| *fk == k) {
                        Some(slot) => slot.1 = v,
                        None => full.push((k, v)),
                    }
                }
                assert_eq!(env, full, "case {name}");
            }
            (Err(e), Err(want)) => assert_eq!(e.to_string(), want, "case {name}"),
            (got, want) => panic!("case {name}: got {got:?}, want {want:?}"),
        }
    }
}

#[tokio::test]
async fn env_overrides_service_env_in_place() {
    let env = build(json!({"env": [{"name": "MODE", "value": "mine"}]}))
        .await
        .expect("env");
    assert_eq!(
        env,
        pairs(&[("KUBERNETES_SERVICE_HOST", "10.43.0.1"), ("MODE", "mine")])
    );
}

#[test]
fn expand_cases() {
    let env = pairs(&[("A", "1"), ("B", "two"), ("A", "3")]);
    for (input, want) in [
        ("", ""),
        ("plain", "plain"),
        ("$(A)", "3"),
        ("$(B)$(B)", "twotwo"),
        ("$$(A)", "$(A)"),
        ("$$$(A)", "$3"),
        ("$(C)", "$(C)"),
        ("$()", "$()"),
        ("$(A", "$(A"),
        ("a$", "a$"),
        ("$x$(B)", "$xtwo"),
        ("ü$(B)é", "ütwoé"),
        ("$(B))", "two)"),
    ] {
        assert_eq!(expand(input, &env), want, "input {input:?}");
    }
}

fn service(ns: &str, name: &str, ip: &str, ports: serde_json::Value) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns},
        "spec": {"clusterIP": ip, "ports": ports}
    }))
    .expect("service")
}

#[test]
fn service_env_cases() {
    let services = vec![
        service(
            "default",
            "kubernetes",
            "10.43.0.1",
            json!([{"name": "https", "port": 443, "protocol": "TCP"}]),
        ),
        service(
            "web",
            "redis-primary",
            "10.43.0.9",
            json!([{"port": 6379}, {"name": "metrics", "port": 9121, "protocol": "UDP"}]),
        ),
        service("web", "headless", "None", json!([{"port": 80}])),
        service("other", "db", "10.43.0.3", json!([{"port": 5432}])),
    ];
    let env = service_env(&services, "web", true);
    let want = pairs(&[
        ("KUBERNETES_SERVICE_HOST", "10.43.0.1"),
        ("KUBERNETES_SERVICE_PORT", "443"),
        ("KUBERNETES_SERVICE_PORT_HTTPS", "443"),
        ("KUBERNETES_PORT", "tcp://10.43.0.1:443"),
        ("KUBERNETES_PORT_443_TCP", "tcp://10.43.0.1:443"),
        ("KUBERNETES_PORT_443_TCP_PROTO", "tcp"),
        ("KUBERNETES_PORT_443_TCP_PORT", "443"),
        ("KUBERNETES_PORT_443_TCP_ADDR", "10.43.0.1"),
        ("REDIS_PRIMARY_SERVICE_HOST", "10.43.0.9"),
        ("REDIS_PRIMARY_SERVICE_PORT", "6379"),
        ("REDIS_PRIMARY_SERVICE_PORT_METRICS", "9121"),
        ("REDIS_PRIMARY_PORT", "tcp://10.43.0.9:6379"),
        ("REDIS_PRIMARY_PORT_6379_TCP", "tcp://10.43.0.9:6379"),
        ("REDIS_PRIMARY_PORT_6379_TCP_PROTO", "tcp"),
        ("REDIS_PRIMARY_PORT_6379_TCP_PORT", "6379"),
        ("REDIS_PRIMARY_PORT_6379_TCP_ADDR", "10.43.0.9"),
        ("REDIS_PRIMARY_PORT_9121_UDP", "udp://10.43.0.9:9121"),
        ("REDIS_PRIMARY_PORT_9121_UDP_PROTO", "udp"),
        ("REDIS_PRIMARY_PORT_9121_UDP_PORT", "9121"),
        ("REDIS_PRIMARY_PORT_9121_UDP_ADDR", "10.43.0.9"),
    ]);
    assert_eq!(env, want);
    // Without service links only the kubernetes service remains.
    let env = service_env(&services, "web", false);
    assert_eq!(env.len(), 8);
    assert!(env.iter().all(|(k, _)| k.starts_with("KUBERNETES_")));
}
