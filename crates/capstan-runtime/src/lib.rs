//! `capstan-runtime` is the node's container runtime (containerd's role, shaped after CRI):
//! a content-addressed OCI image store with pull and import, overlayfs root filesystems over
//! unpacked layers, OCI runtime bundles run by runc (default) or crun, pod sandboxes that hold
//! the shared namespaces, and one shim process per container that owns its stdio, writes CRI
//! logs and records the exit status. It knows nothing of the Kubernetes API: the kubelet turns
//! pods into the calls of [`cri`].

pub mod container;
pub mod cri;
pub mod image;
pub mod testimage;
