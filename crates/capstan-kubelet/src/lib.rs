//! `capstan-kubelet` is the node agent's Kubernetes half: it registers the Node and renews its
//! Lease, runs a worker per pod bound to this node (sandbox with a CNI-assigned IP, volumes,
//! env, init containers, containers, probes, restarts with back-off, graceful stop), reports pod
//! status through the API, and serves the kubelet HTTPS API (logs, exec, attach, port-forward,
//! stats). Containers themselves are the runtime's business (`capstan-runtime`, through its CRI
//! traits); pod networking is `capstan-net`'s. It meets the control plane only at the API.

pub mod env;
pub mod labels;
pub mod server;
pub mod simulate;
pub mod source;
pub mod volumes;
