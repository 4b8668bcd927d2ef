//! A node-backed e2e server (the all-in-one server with its local agent and the busybox test
//! image imported) and the kubectl/pod helpers the node-level tests share.

use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use capstan_runtime::container::{ContainerRuntime, ImageSource, RuntimeConfig};
use capstan_runtime::cri::RuntimeService;
use capstan_runtime::image::ImageStore;
use serde_json::Value;
use tempfile::TempDir;

use crate::harness::{Kubectl, Server, ServerOptions};

pub const K: Kubectl = Kubectl::Minor(32);
/// The busybox test image every pod here runs (imported, never pulled).
pub const IMAGE: &str = "capstan.test/e2e/busybox:1";
/// Upper bound for a pod to reach a state.
pub const POD_TIMEOUT: Duration = Duration::from_secs(90);
pub const POLL: Duration = Duration::from_millis(250);

/// A server with its local agent and the busybox image imported.
pub struct Node {
    pub server: Server,
    _images: TempDir,
}

impl Node {
    pub fn start() -> Node {
        Node::start_with(ServerOptions::default(), &[])
    }

    /// A node-backed server with `options` (agent and images forced on) and, besides
    /// [`IMAGE`], the busybox image imported under each of `more_images` too.
    pub fn start_with(options: ServerOptions, more_images: &[&str]) -> Node {
        let images = tempfile::Builder::new()
            .prefix("capstan-e2e-img-")
            .tempdir()
            .expect("tempdir");
        let mut archives = Vec::new();
        for (i, reference) in std::iter::once(&IMAGE).chain(more_images).enumerate() {
            let archive = images.path().join(format!("busybox-{i}.tar"));
            capstan_runtime::testimage::busybox_oci_archive(&archive, reference)
                .expect("build the busybox test image");
            archives.push(archive);
        }
        let server = Server::start_with(ServerOptions {
            agent: true,
            import_images: archives,
            ..options
        });
        let node = Node {
            server,
            _images: images,
        };
        node.wait_node_ready();
        node
    }

    pub fn wait_node_ready(&self) {
        let name = self.server.node().name.clone();
        self.wait("node Ready", || {
            let out = self
                .server
                .kubectl(K, &["get", "node", &name, "-o", "json"], None);
            out.status.success()
                && out.json()["status"]["conditions"]
                    .as_array()
                    .is_some_and(|c| {
                        c.iter()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    })
        });
    }

    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> crate::harness::Out {
        self.server.kubectl(K, args, stdin)
    }

    pub fn apply(&self, yaml: &str) {
        self.kubectl(&["apply", "-f", "-"], Some(yaml)).ok();
    }

    pub fn pod(&self, ns: &str, name: &str) -> Value {
        let out = self.kubectl(&["get", "pod", "-n", ns, name, "-o", "json"], None);
        if out.status.success() {
            out.json()
        } else {
            Value::Null
        }
    }

    /// Polls until `cond` holds, panicking with the server log after [`POD_TIMEOUT`].
    pub fn wait(&self, what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + POD_TIMEOUT;
        while !cond() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; log:\n{}",
                self.server.log_tail(60)
            );
            thread::sleep(POLL);
        }
    }

    /// Waits until the pod's JSON satisfies `cond`; returns it.
    pub fn wait_pod(
        &self,
        ns: &str,
        name: &str,
        what: &str,
        cond: impl Fn(&Value) -> bool,
    ) -> Value {
        let mut last = Value::Null;
        let deadline = Instant::now() + POD_TIMEOUT;
        loop {
            last = match self.pod(ns, name) {
                Value::Null => last,
                p => p,
            };
            if cond(&last) {
                return last;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for pod {ns}/{name} to be {what}; last status:\n{}\nlogs:\n{}\nserver log:\n{}",
                serde_json::to_string_pretty(&last["status"]).unwrap_or_default(),
                self.logs(ns, name),
                self.server.log_tail(60)
            );
            thread::sleep(POLL);
        }
    }

    pub fn wait_phase(&self, ns: &str, name: &str, phase: &str) -> Value {
        self.wait_pod(ns, name, phase, |p| p["status"]["phase"] == phase)
    }

    pub fn wait_gone(&self, ns: &str, name: &str) {
        self.wait(&format!("pod {ns}/{name} gone"), || {
            let out = self.kubectl(
                &[
                    "get",
                    "pod",
                    "-n",
                    ns,
                    name,
                    "--ignore-not-found",
                    "-o",
                    "name",
                ],
                None,
            );
            out.status.success() && out.stdout.trim().is_empty()
        });
    }

    /// Every container log of the pod, read from the node's pod log dir (CRI format).
    pub fn logs(&self, ns: &str, name: &str) -> String {
        let mut out = String::new();
        let dir = &self.server.node().pod_log_dir;
        let prefix = format!("{ns}_{name}_");
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if !entry.file_name().to_string_lossy().starts_with(&prefix) {
                continue;
            }
            for c in std::fs::read_dir(entry.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                for f in std::fs::read_dir(c.path()).into_iter().flatten().flatten() {
                    out.push_str(&format!("== {}\n", f.path().display()));
                    out.push_str(&std::fs::read_to_string(f.path()).unwrap_or_default());
                }
            }
        }
        out
    }

    /// A runtime handle on the node's state, for looking at containers like an operator would.
    pub fn runtime(&self) -> ContainerRuntime {
        let node = self.server.node();
        let mut config = RuntimeConfig::new(
            self.server.data_dir().join("runtime"),
            node.run_dir.clone(),
            PathBuf::from(env!("CARGO_BIN_EXE_capstan")),
        );
        config.cgroup_parent = node.cgroup_parent.clone();
        let images: Arc<dyn ImageSource> = Arc::new(
            ImageStore::open(&self.server.data_dir().join("images")).expect("image store"),
        );
        ContainerRuntime::new(config, images).expect("runtime")
    }

    /// SIGKILL to the main process of the pod's container `container`.
    pub fn kill_container_process(&self, pod: &Value, container: &str) {
        let id = container_status(pod, container)["containerID"]
            .as_str()
            .and_then(|s| s.strip_prefix("capstan://"))
            .expect("containerID")
            .to_string();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio");
        let status = rt
            .block_on(self.runtime().container_status(&id))
            .expect("container status");
        let pid = status.pid.expect("running container has a pid");
        let ok = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .expect("kill");
        assert!(ok.success());
    }
}

pub fn container_status<'a>(pod: &'a Value, name: &str) -> &'a Value {
    pod["status"]["containerStatuses"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .unwrap_or(&Value::Null)
}

pub fn condition(pod: &Value, kind: &str) -> String {
    pod["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == kind))
        .and_then(|c| c["status"].as_str())
        .unwrap_or("")
        .to_string()
}

pub fn pod_yaml(ns: &str, name: &str, restart: &str, containers: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  restartPolicy: {restart}\n\
         {extra_spec}  containers:\n{containers}"
    )
}

pub fn sh_container(name: &str, script: &str, extra: &str) -> String {
    let script = script.replace('\'', "''");
    format!(
        "  - name: {name}\n    image: {IMAGE}\n    imagePullPolicy: IfNotPresent\n    command: [\"sh\", \"-c\", '{script}']\n{extra}"
    )
}

pub fn namespace(node: &Node, ns: &str) {
    node.kubectl(&["create", "namespace", ns], None).ok();
}
