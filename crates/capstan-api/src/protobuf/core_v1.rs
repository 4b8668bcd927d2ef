//! k8s.io/api core/v1 messages (generated.proto field numbers), limited to what kubectl's
//! generators and common manifests set; anything else is refused by number.

use super::meta::OBJECT_META;
use super::schema::{BYTES_MAP, Kind::*, Message, QUANTITY_MAP, STR_MAP, p, r, v};

pub static NAMESPACE: Message = Message {
    name: "Namespace",
    fields: &[
        v(1, "metadata", Msg(&OBJECT_META)),
        v(2, "spec", Msg(&NAMESPACE_SPEC)),
        v(3, "status", Msg(&NAMESPACE_STATUS)),
    ],
};
static NAMESPACE_SPEC: Message = Message {
    name: "NamespaceSpec",
    fields: &[r(1, "finalizers", Str)],
};
static NAMESPACE_STATUS: Message = Message {
    name: "NamespaceStatus",
    fields: &[v(1, "phase", Str)],
};

pub static CONFIG_MAP: Message = Message {
    name: "ConfigMap",
    fields: &[
        v(1, "metadata", Msg(&OBJECT_META)),
        p(4, "immutable", Bool),
        v(2, "data", STR_MAP),
        v(3, "binaryData", BYTES_MAP),
    ],
};

pub static SECRET: Message = Message {
    name: "Secret",
    fields: &[
        v(1, "metadata", Msg(&OBJECT_META)),
        p(5, "immutable", Bool),
        v(2, "data", BYTES_MAP),
        v(4, "stringData", STR_MAP),
        v(3, "type", Str),
    ],
};

pub static SERVICE_ACCOUNT: Message = Message {
    name: "ServiceAccount",
    fields: &[
        v(1, "metadata", Msg(&OBJECT_META)),
        r(2, "secrets", Msg(&OBJECT_REFERENCE)),
        r(3, "imagePullSecrets", Msg(&LOCAL_OBJECT_REFERENCE)),
        p(4, "automountServiceAccountToken", Bool),
    ],
};

pub static OBJECT_REFERENCE: Message = Message {
    name: "ObjectReference",
    fields: &[
        v(1, "kind", Str),
        v(2, "namespace", Str),
        v(3, "name", Str),
        v(4, "uid", Str),
        v(5, "apiVersion", Str),
        v(6, "resourceVersion", Str),
        v(7, "fieldPath", Str),
    ],
};

pub static LOCAL_OBJECT_REFERENCE: Message = Message {
    name: "LocalObjectReference",
    fields: &[v(1, "name", Str)],
};

pub static SERVICE: Message = Message {
    name: "Service",
    fields: &[
        v(1, "metadata", Msg(&OBJECT_META)),
        v(2, "spec", Msg(&SERVICE_SPEC)),
        v(3, "status", Msg(&SERVICE_STATUS)),
    ],
};

static SERVICE_SPEC: Message = Message {
    name: "ServiceSpec",
    fields: &[
        r(1, "ports", Msg(&SERVICE_PORT)),
        v(2, "selector", STR_MAP),
        v(3, "clusterIP", Str),
        r(18, "clusterIPs", Str),
        v(4, "type", Str),
        r(5, "externalIPs", Str),
        v(7, "sessionAffinity", Str),
        v(8, "loadBalancerIP", Str),
        r(9, "loadBalancerSourceRanges", Str),
        v(10, "externalName", Str),
        v(11, "externalTrafficPolicy", Str),
        v(12, "healthCheckNodePort", Int32),
        v(13, "publishNotReadyAddresses", Bool),
        p(14, "sessionAffinityConfig", Msg(&SESSION_AFFINITY_CONFIG)),
        r(19, "ipFamilies", Str),
        p(17, "ipFamilyPolicy", Str),
        p(20, "allocateLoadBalancerNodePorts", Bool),
        p(21, "loadBalancerClass", Str),
        p(22, "internalTrafficPolicy", Str),
        p(23, "trafficDistribution", Str),
    ],
};

static SERVICE_PORT: Message = Message {
    name: "ServicePort",
    fields: &[
        v(1, "name", Str),
        v(2, "protocol", Str),
        p(6, "appProtocol", Str),
        v(3, "port", Int32),
        v(4, "targetPort", IntOrString),
        v(5, "nodePort", Int32),
    ],
};

static SESSION_AFFINITY_CONFIG: Message = Message {
    name: "SessionAffinityConfig",
    fields: &[p(1, "clientIP", Msg(&CLIENT_IP_CONFIG))],
};
static CLIENT_IP_CONFIG: Message = Message {
    name: "ClientIPConfig",
    fields: &[p(1, "timeoutSeconds", Int32)],
};

static SERVICE_STATUS: Message = Message {
    name: "ServiceStatus",
    fields: &[v(1, "loadBalancer", Msg(&LOAD_BALANCER_STATUS))],
};
// Ingress entries (1) are status written by controllers, never by a creating client.
static LOAD_BALANCER_STATUS: Message = Message {
    name: "LoadBalancerStatus",
    fields: &[],
};

pub static POD: Message = Message {
    name: "Pod",
    fields: &[
        v(1, "metadata", Msg(&OBJECT_META)),
        v(2, "spec", Msg(&POD_SPEC)),
        v(3, "status", Msg(&POD_STATUS)),
    ],
};

pub static POD_TEMPLATE_SPEC: Message = Message {
    name: "PodTemplateSpec",
    fields: &[
        v(1, "metadata", Msg(&OBJECT_META)),
        v(2, "spec", Msg(&POD_SPEC)),
    ],
};

static POD_SPEC: Message = Message {
    name: "PodSpec",
    fields: &[
        r(20, "initContainers", Msg(&CONTAINER)),
        r(2, "containers", Msg(&CONTAINER)),
        v(3, "restartPolicy", Str),
        p(4, "terminationGracePeriodSeconds", Int64),
        p(5, "activeDeadlineSeconds", Int64),
        v(6, "dnsPolicy", Str),
        v(7, "nodeSelector", STR_MAP),
        v(8, "serviceAccountName", Str),
        v(9, "serviceAccount", Str),
        p(21, "automountServiceAccountToken", Bool),
        v(10, "nodeName", Str),
        v(11, "hostNetwork", Bool),
        v(12, "hostPID", Bool),
        v(13, "hostIPC", Bool),
        p(27, "shareProcessNamespace", Bool),
        p(14, "securityContext", Msg(&POD_SECURITY_CONTEXT)),
        r(15, "imagePullSecrets", Msg(&LOCAL_OBJECT_REFERENCE)),
        v(16, "hostname", Str),
        v(17, "subdomain", Str),
        v(19, "schedulerName", Str),
        v(24, "priorityClassName", Str),
        p(25, "priority", Int32),
        p(29, "runtimeClassName", Str),
        p(30, "enableServiceLinks", Bool),
        p(31, "preemptionPolicy", Str),
        v(32, "overhead", QUANTITY_MAP),
        p(35, "setHostnameAsFQDN", Bool),
        p(37, "hostUsers", Bool),
        p(40, "resources", Msg(&RESOURCE_REQUIREMENTS)),
        p(41, "hostnameOverride", Str),
    ],
};

static POD_SECURITY_CONTEXT: Message = Message {
    name: "PodSecurityContext",
    fields: &[
        p(2, "runAsUser", Int64),
        p(6, "runAsGroup", Int64),
        p(3, "runAsNonRoot", Bool),
        r(4, "supplementalGroups", Int64),
        p(12, "supplementalGroupsPolicy", Str),
        p(5, "fsGroup", Int64),
        p(9, "fsGroupChangePolicy", Str),
        p(13, "seLinuxChangePolicy", Str),
    ],
};

static POD_STATUS: Message = Message {
    name: "PodStatus",
    fields: &[
        v(17, "observedGeneration", Int64),
        v(1, "phase", Str),
        v(3, "message", Str),
        v(4, "reason", Str),
        v(11, "nominatedNodeName", Str),
        v(5, "hostIP", Str),
        v(6, "podIP", Str),
        p(7, "startTime", Time),
        v(9, "qosClass", Str),
    ],
};

static CONTAINER: Message = Message {
    name: "Container",
    fields: &[
        v(1, "name", Str),
        v(2, "image", Str),
        r(3, "command", Str),
        r(4, "args", Str),
        v(5, "workingDir", Str),
        r(6, "ports", Msg(&CONTAINER_PORT)),
        r(19, "envFrom", Msg(&ENV_FROM_SOURCE)),
        r(7, "env", Msg(&ENV_VAR)),
        v(8, "resources", Msg(&RESOURCE_REQUIREMENTS)),
        p(24, "restartPolicy", Str),
        v(13, "terminationMessagePath", Str),
        v(20, "terminationMessagePolicy", Str),
        v(14, "imagePullPolicy", Str),
        p(15, "securityContext", Msg(&SECURITY_CONTEXT)),
        v(16, "stdin", Bool),
        v(17, "stdinOnce", Bool),
        v(18, "tty", Bool),
    ],
};

static CONTAINER_PORT: Message = Message {
    name: "ContainerPort",
    fields: &[
        v(1, "name", Str),
        v(2, "hostPort", Int32),
        v(3, "containerPort", Int32),
        v(4, "protocol", Str),
        v(5, "hostIP", Str),
    ],
};

static ENV_VAR: Message = Message {
    name: "EnvVar",
    fields: &[
        v(1, "name", Str),
        v(2, "value", Str),
        p(3, "valueFrom", Msg(&ENV_VAR_SOURCE)),
    ],
};

static ENV_VAR_SOURCE: Message = Message {
    name: "EnvVarSource",
    fields: &[
        p(1, "fieldRef", Msg(&OBJECT_FIELD_SELECTOR)),
        p(2, "resourceFieldRef", Msg(&RESOURCE_FIELD_SELECTOR)),
        p(3, "configMapKeyRef", Msg(&CONFIG_MAP_KEY_SELECTOR)),
        p(4, "secretKeyRef", Msg(&SECRET_KEY_SELECTOR)),
    ],
};

static OBJECT_FIELD_SELECTOR: Message = Message {
    name: "ObjectFieldSelector",
    fields: &[v(1, "apiVersion", Str), v(2, "fieldPath", Str)],
};

static RESOURCE_FIELD_SELECTOR: Message = Message {
    name: "ResourceFieldSelector",
    fields: &[
        v(1, "containerName", Str),
        v(2, "resource", Str),
        v(3, "divisor", Quantity),
    ],
};

static CONFIG_MAP_KEY_SELECTOR: Message = Message {
    name: "ConfigMapKeySelector",
    fields: &[
        v(1, "localObjectReference", Inline(&LOCAL_OBJECT_REFERENCE)),
        v(2, "key", Str),
        p(3, "optional", Bool),
    ],
};

static SECRET_KEY_SELECTOR: Message = Message {
    name: "SecretKeySelector",
    fields: &[
        v(1, "localObjectReference", Inline(&LOCAL_OBJECT_REFERENCE)),
        v(2, "key", Str),
        p(3, "optional", Bool),
    ],
};

static ENV_FROM_SOURCE: Message = Message {
    name: "EnvFromSource",
    fields: &[
        v(1, "prefix", Str),
        p(2, "configMapRef", Msg(&CONFIG_MAP_ENV_SOURCE)),
        p(3, "secretRef", Msg(&SECRET_ENV_SOURCE)),
    ],
};

static CONFIG_MAP_ENV_SOURCE: Message = Message {
    name: "ConfigMapEnvSource",
    fields: &[
        v(1, "localObjectReference", Inline(&LOCAL_OBJECT_REFERENCE)),
        p(2, "optional", Bool),
    ],
};

static SECRET_ENV_SOURCE: Message = Message {
    name: "SecretEnvSource",
    fields: &[
        v(1, "localObjectReference", Inline(&LOCAL_OBJECT_REFERENCE)),
        p(2, "optional", Bool),
    ],
};

static RESOURCE_REQUIREMENTS: Message = Message {
    name: "ResourceRequirements",
    fields: &[
        v(1, "limits", QUANTITY_MAP),
        v(2, "requests", QUANTITY_MAP),
        r(3, "claims", Msg(&RESOURCE_CLAIM)),
    ],
};

static RESOURCE_CLAIM: Message = Message {
    name: "ResourceClaim",
    fields: &[v(1, "name", Str), v(2, "request", Str)],
};

static SECURITY_CONTEXT: Message = Message {
    name: "SecurityContext",
    fields: &[
        p(2, "privileged", Bool),
        p(4, "runAsUser", Int64),
        p(8, "runAsGroup", Int64),
        p(5, "runAsNonRoot", Bool),
        p(6, "readOnlyRootFilesystem", Bool),
        p(7, "allowPrivilegeEscalation", Bool),
        p(9, "procMount", Str),
    ],
};

pub static RESOURCE_QUOTA: Message = Message {
    name: "ResourceQuota",
    fields: &[
        v(1, "metadata", Msg(&OBJECT_META)),
        v(2, "spec", Msg(&RESOURCE_QUOTA_SPEC)),
        v(3, "status", Msg(&RESOURCE_QUOTA_STATUS)),
    ],
};

static RESOURCE_QUOTA_SPEC: Message = Message {
    name: "ResourceQuotaSpec",
    fields: &[
        v(1, "hard", QUANTITY_MAP),
        r(2, "scopes", Str),
        p(3, "scopeSelector", Msg(&SCOPE_SELECTOR)),
    ],
};

static SCOPE_SELECTOR: Message = Message {
    name: "ScopeSelector",
    fields: &[r(
        1,
        "matchExpressions",
        Msg(&SCOPED_RESOURCE_SELECTOR_REQUIREMENT),
    )],
};

static SCOPED_RESOURCE_SELECTOR_REQUIREMENT: Message = Message {
    name: "ScopedResourceSelectorRequirement",
    fields: &[
        v(1, "scopeName", Str),
        v(2, "operator", Str),
        r(3, "values", Str),
    ],
};

static RESOURCE_QUOTA_STATUS: Message = Message {
    name: "ResourceQuotaStatus",
    fields: &[v(1, "hard", QUANTITY_MAP), v(2, "used", QUANTITY_MAP)],
};
