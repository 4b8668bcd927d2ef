//! The labels the kubelet puts on sandboxes and containers, upstream's names, so anything that
//! finds a pod's containers through the runtime (the kubelet API, `capstan ps`, orphan clean-up)
//! agrees with the pod workers.

/// Sandbox and container label: the pod's name.
pub const POD_NAME: &str = "io.kubernetes.pod.name";
/// Sandbox and container label: the pod's namespace.
pub const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
/// Sandbox and container label: the pod's UID.
pub const POD_UID: &str = "io.kubernetes.pod.uid";
/// Container label: the container's name in the pod spec.
pub const CONTAINER_NAME: &str = "io.kubernetes.container.name";
/// Container annotation: the restart count of this container instance.
pub const CONTAINER_RESTART_COUNT: &str = "io.kubernetes.container.restartCount";
