//! The objects both servers receive: the same ConfigMap and Pod JSON for Capstan and etcd.

use serde_json::{Value, json};

/// Label every benchmark object carries, so lists can select them.
pub const LABEL_KEY: &str = "bench.capstan.dev/set";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    ConfigMap,
    Pod,
}

impl Kind {
    pub const ALL: [Kind; 2] = [Kind::ConfigMap, Kind::Pod];

    pub fn plural(self) -> &'static str {
        match self {
            Kind::ConfigMap => "configmaps",
            Kind::Pod => "pods",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::ConfigMap => "ConfigMap",
            Kind::Pod => "Pod",
        }
    }

    /// The object's JSON, labelled `LABEL_KEY=set`.
    pub fn object(self, ns: &str, name: &str, set: &str) -> Value {
        match self {
            Kind::ConfigMap => config_map(ns, name, set),
            Kind::Pod => pod(ns, name, set),
        }
    }

    /// The key kube-apiserver would use in etcd (DESIGN.md, "Store keys").
    pub fn etcd_key(self, ns: &str, name: &str) -> String {
        format!("{}{name}", self.etcd_prefix(ns))
    }

    pub fn etcd_prefix(self, ns: &str) -> String {
        format!("/registry/{}/{ns}/", self.plural())
    }
}

fn metadata(ns: &str, name: &str, set: &str) -> Value {
    json!({"name": name, "namespace": ns, "labels": {LABEL_KEY: set, "app": "bench"}})
}

/// A small application config, about 0.5 KiB of JSON.
fn config_map(ns: &str, name: &str, set: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(ns, name, set),
        "data": {
            "app.properties": "server.port=8080\nlog.level=info\nfeature.flags=a,b,c\n",
            "LOG_FORMAT": "json",
            "CACHE_SIZE": "256",
            "nginx.conf": "server {\n  listen 80;\n  location / { proxy_pass http://127.0.0.1:8080; }\n}\n"
        }
    })
}

/// A typical single-container Deployment pod, about 1 KiB of JSON before defaulting.
fn pod(ns: &str, name: &str, set: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata(ns, name, set),
        "spec": {
            "containers": [{
                "name": "web",
                "image": "registry.example/web:1.2.3",
                "args": ["--port=8080", "--log-level=info"],
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                "env": [
                    {"name": "MODE", "value": "production"},
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
                ],
                "resources": {
                    "requests": {"cpu": "100m", "memory": "64Mi"},
                    "limits": {"cpu": "500m", "memory": "256Mi"}
                },
                "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 5}
            }],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_carry_name_namespace_and_set_label() {
        for kind in Kind::ALL {
            let obj = kind.object("ns1", "obj-1", "list");
            assert_eq!(obj["kind"], kind.name());
            assert_eq!(obj["metadata"]["name"], "obj-1");
            assert_eq!(obj["metadata"]["namespace"], "ns1");
            assert_eq!(obj["metadata"]["labels"][LABEL_KEY], "list");
        }
        assert_eq!(Kind::Pod.etcd_key("x", "p"), "/registry/pods/x/p");
    }
}
