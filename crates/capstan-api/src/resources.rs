//! The table of resources the API server serves: identity (group, version, kind, plural),
//! scope, short names, categories, verbs and subresources, as upstream discovery shows them.

/// A subresource served under `/<plural>/<name>/<sub>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Subresource {
    /// `/status`: writes change only `.status`; main-resource writes ignore `.status`.
    Status,
    /// `/scale`: autoscaling/v1 Scale view of `.spec.replicas`.
    Scale,
    /// `pods/binding`: assigns a pod to a node.
    Binding,
    /// `namespaces/finalize`: replaces `spec.finalizers` (the namespace controller's exit).
    Finalize,
    /// `pods/log`: the container's log, proxied to the node's kubelet.
    Log,
    /// `pods/exec`: a command in a container (upgraded stream, proxied to the kubelet).
    Exec,
    /// `pods/attach`: the container's stdio (upgraded stream, proxied to the kubelet).
    Attach,
    /// `pods/portforward`: TCP to the pod's ports (upgraded stream, proxied to the kubelet).
    PortForward,
    /// `serviceaccounts/token`: a TokenRequest issues a signed, bound service account token.
    Token,
}

impl Subresource {
    pub fn name(self) -> &'static str {
        match self {
            Subresource::Status => "status",
            Subresource::Scale => "scale",
            Subresource::Binding => "binding",
            Subresource::Finalize => "finalize",
            Subresource::Log => "log",
            Subresource::Exec => "exec",
            Subresource::Attach => "attach",
            Subresource::PortForward => "portforward",
            Subresource::Token => "token",
        }
    }
}

/// Static description of one served resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceInfo {
    /// API group; "" for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    /// Lower-case plural, the URL segment.
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    pub verbs: &'static [&'static str],
    pub subresources: &'static [Subresource],
}

impl ResourceInfo {
    /// A review kind (TokenReview, SubjectAccessReview, ...): a create is answered, not stored.
    pub fn is_review(&self) -> bool {
        self.verbs == CREATE
    }

    /// `apps/v1`, or `v1` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
    /// `deployments.apps`, or `pods` for the core group: the name used in error messages.
    pub fn group_resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }
    pub fn has_subresource(&self, sub: Subresource) -> bool {
        self.subresources.contains(&sub)
    }
    /// Prefix of this resource's keys in the store: `/registry/<group-qualified plural>/`.
    pub fn store_prefix(&self) -> String {
        format!("/registry/{}/", self.storage_name())
    }
    /// Store key of one object; `namespace` is ignored for cluster-scoped resources.
    pub fn store_key(&self, namespace: Option<&str>, name: &str) -> String {
        match (self.namespaced, namespace) {
            (true, Some(ns)) => format!("/registry/{}/{}/{}", self.storage_name(), ns, name),
            _ => format!("/registry/{}/{}", self.storage_name(), name),
        }
    }
    /// Prefix of one namespace's keys (or all keys for cluster-scoped resources).
    pub fn store_namespace_prefix(&self, namespace: Option<&str>) -> String {
        match (self.namespaced, namespace) {
            (true, Some(ns)) => format!("/registry/{}/{}/", self.storage_name(), ns),
            _ => self.store_prefix(),
        }
    }
    /// Plural qualified with the group when two groups share a plural (events).
    fn storage_name(&self) -> String {
        if self.group.is_empty() || self.group == "apps" || self.group == "batch" {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.group, self.plural)
        }
    }
}

const RW: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];
const NO_DC: &[&str] = &[
    "create", "delete", "get", "list", "patch", "update", "watch",
];
const ST: &[Subresource] = &[Subresource::Status];
const ST_SCALE: &[Subresource] = &[Subresource::Status, Subresource::Scale];
const NONE: &[Subresource] = &[];
/// Upstream's pod subresources, in discovery order (attach, binding, exec, log, portforward, status).
const POD_SUBS: &[Subresource] = &[
    Subresource::Attach,
    Subresource::Binding,
    Subresource::Exec,
    Subresource::Log,
    Subresource::PortForward,
    Subresource::Status,
];
const ALL: &[&str] = &["all"];
/// Review kinds: created and answered, never stored.
const CREATE: &[&str] = &["create"];

macro_rules! res {
    ($g:expr, $v:expr, $kind:expr, $plural:expr, $singular:expr, $ns:expr, $short:expr, $cat:expr, $verbs:expr, $sub:expr) => {
        ResourceInfo {
            group: $g,
            version: $v,
            kind: $kind,
            plural: $plural,
            singular: $singular,
            namespaced: $ns,
            short_names: $short,
            categories: $cat,
            verbs: $verbs,
            subresources: $sub,
        }
    };
}

/// Every resource served, in discovery order.
#[rustfmt::skip]
pub static RESOURCES: &[ResourceInfo] = &[
    res!("", "v1", "Namespace", "namespaces", "namespace", false, &["ns"], &[], NO_DC, &[Subresource::Finalize, Subresource::Status]),
    res!("", "v1", "Pod", "pods", "pod", true, &["po"], ALL, RW, POD_SUBS),
    res!("", "v1", "Node", "nodes", "node", false, &["no"], &[], RW, ST),
    res!("", "v1", "Service", "services", "service", true, &["svc"], ALL, RW, ST),
    res!("", "v1", "Endpoints", "endpoints", "endpoints", true, &["ep"], &[], RW, NONE),
    res!("", "v1", "ConfigMap", "configmaps", "configmap", true, &["cm"], &[], RW, NONE),
    res!("", "v1", "Secret", "secrets", "secret", true, &[], &[], RW, NONE),
    res!("", "v1", "ServiceAccount", "serviceaccounts", "serviceaccount", true, &["sa"], &[], RW, &[Subresource::Token]),
    res!("", "v1", "Event", "events", "event", true, &["ev"], &[], RW, NONE),
    res!("", "v1", "PersistentVolume", "persistentvolumes", "persistentvolume", false, &["pv"], &[], RW, ST),
    res!("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", "persistentvolumeclaim", true, &["pvc"], &[], RW, ST),
    res!("", "v1", "ResourceQuota", "resourcequotas", "resourcequota", true, &["quota"], &[], RW, ST),
    res!("", "v1", "LimitRange", "limitranges", "limitrange", true, &["limits"], &[], RW, NONE),
    res!("apps", "v1", "Deployment", "deployments", "deployment", true, &["deploy"], ALL, RW, ST_SCALE),
    res!("apps", "v1", "ReplicaSet", "replicasets", "replicaset", true, &["rs"], ALL, RW, ST_SCALE),
    res!("apps", "v1", "StatefulSet", "statefulsets", "statefulset", true, &["sts"], ALL, RW, ST_SCALE),
    res!("apps", "v1", "DaemonSet", "daemonsets", "daemonset", true, &["ds"], ALL, RW, ST),
    res!("apps", "v1", "ControllerRevision", "controllerrevisions", "controllerrevision", true, &[], &[], RW, NONE),
    res!("batch", "v1", "Job", "jobs", "job", true, &[], ALL, RW, ST),
    res!("batch", "v1", "CronJob", "cronjobs", "cronjob", true, &["cj"], ALL, RW, ST),
    res!("coordination.k8s.io", "v1", "Lease", "leases", "lease", true, &[], &[], RW, NONE),
    res!("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices", "endpointslice", true, &[], &[], RW, NONE),
    res!("events.k8s.io", "v1", "Event", "events", "event", true, &["ev"], &[], RW, NONE),
    res!("networking.k8s.io", "v1", "Ingress", "ingresses", "ingress", true, &["ing"], &[], RW, ST),
    res!("networking.k8s.io", "v1", "IngressClass", "ingressclasses", "ingressclass", false, &[], &[], RW, NONE),
    res!("networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies", "networkpolicy", true, &["netpol"], &[], RW, NONE),
    res!("rbac.authorization.k8s.io", "v1", "Role", "roles", "role", true, &[], &[], RW, NONE),
    res!("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings", "rolebinding", true, &[], &[], RW, NONE),
    res!("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", "clusterrole", false, &[], &[], RW, NONE),
    res!("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", "clusterrolebindings", "clusterrolebinding", false, &[], &[], RW, NONE),
    res!("storage.k8s.io", "v1", "StorageClass", "storageclasses", "storageclass", false, &["sc"], &[], RW, NONE),
    res!("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets", "poddisruptionbudget", true, &["pdb"], &[], RW, ST),
    res!("autoscaling", "v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers", "horizontalpodautoscaler", true, &["hpa"], ALL, RW, ST),
    res!("scheduling.k8s.io", "v1", "PriorityClass", "priorityclasses", "priorityclass", false, &["pc"], &[], RW, NONE),
    res!("node.k8s.io", "v1", "RuntimeClass", "runtimeclasses", "runtimeclass", false, &[], &[], RW, NONE),
    res!("authentication.k8s.io", "v1", "TokenReview", "tokenreviews", "tokenreview", false, &[], &[], CREATE, NONE),
    res!("authentication.k8s.io", "v1", "SelfSubjectReview", "selfsubjectreviews", "selfsubjectreview", false, &[], &[], CREATE, NONE),
    res!("authorization.k8s.io", "v1", "LocalSubjectAccessReview", "localsubjectaccessreviews", "localsubjectaccessreview", true, &[], &[], CREATE, NONE),
    res!("authorization.k8s.io", "v1", "SelfSubjectAccessReview", "selfsubjectaccessreviews", "selfsubjectaccessreview", false, &[], &[], CREATE, NONE),
    res!("authorization.k8s.io", "v1", "SelfSubjectRulesReview", "selfsubjectrulesreviews", "selfsubjectrulesreview", false, &[], &[], CREATE, NONE),
    res!("authorization.k8s.io", "v1", "SubjectAccessReview", "subjectaccessreviews", "subjectaccessreview", false, &[], &[], CREATE, NONE),
    res!("apiextensions.k8s.io", "v1", "CustomResourceDefinition", "customresourcedefinitions", "customresourcedefinition", false, &["crd", "crds"], &["api-extensions"], RW, ST),
];

/// The resource served at `group`/`version` under `plural`.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static ResourceInfo> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The resource for an object's `apiVersion` and `kind`.
pub fn find_kind(api_version: &str, kind: &str) -> Option<&'static ResourceInfo> {
    let (group, version) = split_api_version(api_version);
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.kind == kind)
}

/// `apps/v1` → ("apps", "v1"); `v1` → ("", "v1").
pub fn split_api_version(api_version: &str) -> (&str, &str) {
    match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    }
}

/// Distinct (group, version) pairs in discovery order, core first.
pub fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for r in RESOURCES {
        if !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_of_two_groups_do_not_share_store_keys() {
        let core = find("", "v1", "events").unwrap();
        let ev = find("events.k8s.io", "v1", "events").unwrap();
        assert_ne!(core.store_prefix(), ev.store_prefix());
    }

    #[test]
    fn store_keys_follow_design_layout() {
        let cm = find("", "v1", "configmaps").unwrap();
        assert_eq!(
            cm.store_key(Some("default"), "a"),
            "/registry/configmaps/default/a"
        );
        let ns = find("", "v1", "namespaces").unwrap();
        assert_eq!(
            ns.store_key(Some("ignored"), "kube-system"),
            "/registry/namespaces/kube-system"
        );
        let d = find_kind("apps/v1", "Deployment").unwrap();
        assert_eq!(d.group_resource(), "deployments.apps");
    }
}
