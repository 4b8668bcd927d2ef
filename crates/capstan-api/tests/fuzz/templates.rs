//! Valid objects of the common kinds, the seeds the structure-aware generators mutate.

use capstan_api::ResourceInfo;
use capstan_api::resources::find_kind;
use serde_json::{Value, json};
use std::sync::LazyLock;

fn pod_spec() -> Value {
    json!({
        "restartPolicy": "Always",
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoSchedule"}],
        "containers": [{
            "name": "web",
            "image": "nginx",
            "command": ["sh", "-c", "sleep 1"],
            "ports": [{"containerPort": 80, "protocol": "TCP", "name": "http"}],
            "env": [{"name": "A", "value": "b"}],
            "resources": {"limits": {"cpu": "100m", "memory": "64Mi"}, "requests": {"cpu": "50m"}},
            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
        }, {"name": "side", "image": "busybox:1.36"}],
        "volumes": [{"name": "data", "emptyDir": {}}],
    })
}

fn template() -> Value {
    json!({"metadata": {"labels": {"app": "web"}}, "spec": pod_spec()})
}

fn meta(name: &str) -> Value {
    json!({
        "name": name,
        "namespace": "default",
        "labels": {"app": "web", "tier": "front"},
        "annotations": {"note": "x"},
        "finalizers": ["example.com/f"],
    })
}

fn all() -> Vec<Value> {
    vec![
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta("p"), "spec": pod_spec(),
            "status": {"phase": "Running", "podIP": "10.0.0.5"}}),
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta("d"),
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 1}},
                "template": template()}}),
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": meta("s"),
            "spec": {"replicas": 1, "serviceName": "s", "selector": {"matchLabels": {"app": "web"}},
                "template": template(),
                "volumeClaimTemplates": [{"metadata": {"name": "data"},
                    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}}),
        json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": meta("ds"),
            "spec": {"selector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["web"]}]},
                "template": template()}}),
        json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": meta("rs"),
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}}, "template": template()}}),
        json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": meta("j"),
            "spec": {"completions": 2, "parallelism": 1, "backoffLimit": 3,
                "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}}}),
        json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": meta("cj"),
            "spec": {"schedule": "*/5 * * * *", "jobTemplate": {"spec": {"template": {"spec": {
                "restartPolicy": "OnFailure", "containers": [{"name": "c", "image": "busybox"}]}}}}}}),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": meta("svc"),
            "spec": {"type": "NodePort", "selector": {"app": "web"}, "clusterIP": "10.0.0.10",
                "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP", "nodePort": 30080},
                          {"name": "dns", "port": 53, "targetPort": 53, "protocol": "UDP"}]}}),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta("cm"),
            "data": {"a": "b", "c.txt": "hello"}, "binaryData": {"bin": "aGVsbG8="}}),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": meta("sec"), "type": "Opaque",
            "data": {"password": "aGVsbG8="}, "stringData": {"user": "admin"}}),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns", "labels": {"a": "b"}},
            "spec": {"finalizers": ["kubernetes"]}}),
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta("sa"),
            "secrets": [{"name": "tok"}], "automountServiceAccountToken": false}),
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta("pvc"),
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}),
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1", "labels": {"kubernetes.io/hostname": "n1"}},
            "spec": {"podCIDR": "10.42.0.0/24", "taints": [{"key": "k", "value": "v", "effect": "NoSchedule"}]},
            "status": {"capacity": {"cpu": "2", "memory": "4Gi", "pods": "110"},
                "conditions": [{"type": "Ready", "status": "True"}],
                "addresses": [{"type": "InternalIP", "address": "10.0.0.2"}]}}),
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta("l"),
            "spec": {"holderIdentity": "me", "leaseDurationSeconds": 15, "renewTime": "2024-01-02T03:04:05.000000Z"}}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta("r"),
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "crb"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
            "subjects": [{"kind": "ServiceAccount", "name": "sa", "namespace": "default"}]}),
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": meta("ing"),
            "spec": {"rules": [{"host": "a.example.com", "http": {"paths": [{"path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": "svc", "port": {"number": 80}}}}]}}]}}),
        json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": meta("svc"),
            "subsets": [{"addresses": [{"ip": "10.0.0.5"}], "ports": [{"port": 80, "protocol": "TCP"}]}]}),
        json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": meta("pdb"),
            "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "web"}}}}),
    ]
}

static ALL: LazyLock<Vec<Value>> = LazyLock::new(all);

pub fn count() -> usize {
    ALL.len()
}

/// Template `index` (modulo the count).
pub fn object(index: usize) -> Value {
    ALL[index % ALL.len()].clone()
}

/// The resource of template `index`.
pub fn info(index: usize) -> &'static ResourceInfo {
    let v = object(index);
    let api_version = v["apiVersion"].as_str().unwrap_or_default();
    let kind = v["kind"].as_str().unwrap_or_default();
    find_kind(api_version, kind).unwrap_or_else(|| panic!("no resource for {api_version} {kind}"))
}
