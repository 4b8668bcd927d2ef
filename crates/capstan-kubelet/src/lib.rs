//! `capstan-kubelet` is the node agent's Kubernetes half: it registers the Node and renews its
//! Lease, runs a worker per pod bound to this node (sandbox with a CNI-assigned IP, volumes,
//! env, init containers, containers, probes, restarts with back-off, graceful stop), reports pod
//! status through the API, and serves the kubelet HTTPS API (logs, exec, attach, port-forward,
//! stats). Containers themselves are the runtime's business (`capstan-runtime`, through its CRI
//! traits); pod networking is `capstan-net`'s. It meets the control plane only at the API.

pub mod agent;
pub mod backoff;
pub mod dns;
pub mod env;
pub mod events;
pub mod labels;
pub mod node;
pub mod pod_worker;
pub mod pods;
pub mod probe;
pub mod resources;
pub mod server;
pub mod simulate;
pub mod source;
pub mod status;
pub mod volumes;

pub use agent::{AgentConfig, run_agent};

/// Errors of the node agent.
#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    #[error("API request")]
    Api(#[from] kube::Error),
    #[error("{path}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Setup(String),
}

impl KubeletError {
    pub fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        KubeletError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
