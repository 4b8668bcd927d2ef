//! The printer (columns and row renderer) of each served kind; kinds without one get
//! NAME and AGE.

use serde_json::Value;

use super::format::{
    age, array_at, format_labels, int_at, len_at, list_with_more, name, or_none, since, str_at,
};
use super::workloads as w;
use super::{AGE, Column, NAME, Row, col, wide};
use crate::ResourceInfo;

pub(crate) type Render = fn(&Value, jiff::Timestamp) -> Row;

/// The columns and row renderer of a resource.
pub(crate) fn printer(info: &ResourceInfo) -> (&'static [Column], Render) {
    match (info.group, info.kind) {
        ("", "Pod") => (w::POD_COLUMNS, w::pod),
        ("apps", "Deployment") => (w::DEPLOYMENT_COLUMNS, w::deployment),
        ("apps", "ReplicaSet") => (w::REPLICA_SET_COLUMNS, w::replica_set),
        ("apps", "StatefulSet") => (w::STATEFUL_SET_COLUMNS, w::stateful_set),
        ("apps", "DaemonSet") => (w::DAEMON_SET_COLUMNS, w::daemon_set),
        ("batch", "Job") => (w::JOB_COLUMNS, w::job),
        ("batch", "CronJob") => (w::CRON_JOB_COLUMNS, w::cron_job),
        ("", "Service") => (SERVICE_COLUMNS, service),
        ("", "ConfigMap") => (CONFIG_MAP_COLUMNS, config_map),
        ("", "Secret") => (SECRET_COLUMNS, secret),
        ("", "Namespace") => (NAMESPACE_COLUMNS, namespace),
        ("", "Node") => (NODE_COLUMNS, node),
        ("", "Endpoints") => (ENDPOINTS_COLUMNS, endpoints),
        ("", "ServiceAccount") => (SERVICE_ACCOUNT_COLUMNS, service_account),
        ("", "Event") | ("events.k8s.io", "Event") => (EVENT_COLUMNS, event),
        ("", "PersistentVolumeClaim") => (PVC_COLUMNS, pvc),
        ("", "PersistentVolume") => (PV_COLUMNS, pv),
        ("coordination.k8s.io", "Lease") => (LEASE_COLUMNS, lease),
        ("discovery.k8s.io", "EndpointSlice") => (ENDPOINT_SLICE_COLUMNS, endpoint_slice),
        ("networking.k8s.io", "Ingress") => (INGRESS_COLUMNS, ingress),
        ("rbac.authorization.k8s.io", "Role" | "ClusterRole") | ("", "LimitRange") => {
            (CREATED_AT_COLUMNS, created_at)
        }
        _ => (DEFAULT_COLUMNS, default_row),
    }
}

const DEFAULT_COLUMNS: &[Column] = &[NAME, AGE];

fn default_row(obj: &Value, now: jiff::Timestamp) -> Row {
    vec![name(obj), age(obj, now)].into()
}

const CREATED_AT_COLUMNS: &[Column] = &[
    NAME,
    col(
        "Created At",
        "date",
        "CreationTimestamp is a timestamp representing the server time when this object was created.",
    ),
];

fn created_at(obj: &Value, _now: jiff::Timestamp) -> Row {
    vec![name(obj), str_at(obj, "/metadata/creationTimestamp").into()].into()
}

const SERVICE_COLUMNS: &[Column] = &[
    NAME,
    col(
        "Type",
        "string",
        "type determines how the Service is exposed.",
    ),
    col(
        "Cluster-IP",
        "string",
        "clusterIP is the IP address of the service and is usually assigned randomly.",
    ),
    col(
        "External-IP",
        "string",
        "externalIPs is a list of IP addresses for which nodes in the cluster will also accept traffic for this service.",
    ),
    col(
        "Port(s)",
        "string",
        "The list of ports that are exposed by this service.",
    ),
    AGE,
    wide(
        "Selector",
        "string",
        "Route service traffic to pods with label keys and values matching this selector.",
    ),
];

/// Ingress points of a load balancer status: IPs or hostnames, comma-separated.
fn load_balancer_ingress(status: Option<&Value>) -> String {
    let Some(status) = status else {
        return String::new();
    };
    let points: Vec<&str> = array_at(status, "/ingress")
        .iter()
        .map(|i| {
            if str_at(i, "/ip").is_empty() {
                str_at(i, "/hostname")
            } else {
                str_at(i, "/ip")
            }
        })
        .filter(|s| !s.is_empty())
        .collect();
    points.join(",")
}

fn service_external_ip(svc: &Value) -> String {
    let external: Vec<&str> = array_at(svc, "/spec/externalIPs")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    match str_at(svc, "/spec/type") {
        "" | "ClusterIP" | "NodePort" => or_none(&external.join(",")),
        "LoadBalancer" => {
            let lb = load_balancer_ingress(svc.pointer("/status/loadBalancer"));
            let mut all: Vec<&str> = lb.split(',').filter(|s| !s.is_empty()).collect();
            all.extend(external);
            if all.is_empty() {
                "<pending>".to_string()
            } else {
                all.join(",")
            }
        }
        "ExternalName" => str_at(svc, "/spec/externalName").to_string(),
        _ => "<unknown>".to_string(),
    }
}

fn service_ports(svc: &Value) -> String {
    let ports: Vec<String> = array_at(svc, "/spec/ports")
        .iter()
        .map(|p| {
            let node_port = match int_at(p, "/nodePort") {
                0 => String::new(),
                n => format!(":{n}"),
            };
            let protocol = match str_at(p, "/protocol") {
                "" => "TCP",
                proto => proto,
            };
            format!("{}{node_port}/{protocol}", int_at(p, "/port"))
        })
        .collect();
    or_none(&ports.join(","))
}

fn service(svc: &Value, now: jiff::Timestamp) -> Row {
    let cluster_ip = array_at(svc, "/spec/clusterIPs")
        .first()
        .and_then(Value::as_str)
        .unwrap_or(str_at(svc, "/spec/clusterIP"));
    let ty = match str_at(svc, "/spec/type") {
        "" => "ClusterIP",
        t => t,
    };
    vec![
        name(svc),
        ty.into(),
        or_none(cluster_ip).into(),
        service_external_ip(svc).into(),
        service_ports(svc).into(),
        age(svc, now),
        format_labels(svc.pointer("/spec/selector")).into(),
    ]
    .into()
}

const CONFIG_MAP_COLUMNS: &[Column] = &[
    NAME,
    col("Data", "string", "Data contains the configuration data."),
    AGE,
];

fn config_map(obj: &Value, now: jiff::Timestamp) -> Row {
    let data = len_at(obj, "/data") + len_at(obj, "/binaryData");
    vec![name(obj), data.into(), age(obj, now)].into()
}

const SECRET_COLUMNS: &[Column] = &[
    NAME,
    col(
        "Type",
        "string",
        "Used to facilitate programmatic handling of secret data.",
    ),
    col("Data", "string", "Data contains the secret data."),
    AGE,
];

fn secret(obj: &Value, now: jiff::Timestamp) -> Row {
    vec![
        name(obj),
        str_at(obj, "/type").into(),
        len_at(obj, "/data").into(),
        age(obj, now),
    ]
    .into()
}

const NAMESPACE_COLUMNS: &[Column] = &[
    NAME,
    col("Status", "string", "The status of the namespace"),
    AGE,
];

fn namespace(obj: &Value, now: jiff::Timestamp) -> Row {
    vec![
        name(obj),
        str_at(obj, "/status/phase").into(),
        age(obj, now),
    ]
    .into()
}

const SERVICE_ACCOUNT_COLUMNS: &[Column] = &[
    NAME,
    col(
        "Secrets",
        "string",
        "Secrets is a list of the secrets in the same namespace that pods running using this ServiceAccount are allowed to use.",
    ),
    AGE,
];

fn service_account(obj: &Value, now: jiff::Timestamp) -> Row {
    vec![name(obj), len_at(obj, "/secrets").into(), age(obj, now)].into()
}

const NODE_COLUMNS: &[Column] = &[
    NAME,
    col("Status", "string", "The status of the node"),
    col("Roles", "string", "The roles of the node"),
    AGE,
    col("Version", "string", "Kubelet Version reported by the node."),
    wide(
        "Internal-IP",
        "string",
        "List of addresses reachable to the node.",
    ),
    wide(
        "External-IP",
        "string",
        "List of addresses reachable to the node.",
    ),
    wide(
        "OS-Image",
        "string",
        "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy)).",
    ),
    wide(
        "Kernel-Version",
        "string",
        "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64).",
    ),
    wide(
        "Container-Runtime",
        "string",
        "ContainerRuntime Version reported by the node through runtime remote API (e.g. containerd://1.4.2).",
    ),
];

fn node_roles(node: &Value) -> String {
    let mut roles = std::collections::BTreeSet::new();
    if let Some(Value::Object(labels)) = node.pointer("/metadata/labels") {
        for (key, value) in labels {
            if let Some(role) = key
                .strip_prefix("node-role.kubernetes.io/")
                .filter(|r| !r.is_empty())
            {
                roles.insert(role.to_string());
            } else if key == "kubernetes.io/role" && value.as_str().is_some_and(|v| !v.is_empty()) {
                roles.insert(value.as_str().unwrap_or_default().to_string());
            }
        }
    }
    or_none(&roles.into_iter().collect::<Vec<_>>().join(","))
}

fn node_address(node: &Value, ty: &str) -> String {
    let address = array_at(node, "/status/addresses")
        .iter()
        .find(|a| str_at(a, "/type") == ty);
    or_none(address.map(|a| str_at(a, "/address")).unwrap_or(""))
}

fn node(node: &Value, now: jiff::Timestamp) -> Row {
    let ready = array_at(node, "/status/conditions")
        .iter()
        .find(|c| str_at(c, "/type") == "Ready");
    let mut status = vec![match ready {
        Some(c) if str_at(c, "/status") == "True" => "Ready",
        Some(_) => "NotReady",
        None => "Unknown",
    }];
    if node.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        status.push("SchedulingDisabled");
    }
    let info = |field: &str| match str_at(node, &format!("/status/nodeInfo/{field}")) {
        "" => "<unknown>".to_string(),
        v => v.to_string(),
    };
    vec![
        name(node),
        status.join(",").into(),
        node_roles(node).into(),
        age(node, now),
        str_at(node, "/status/nodeInfo/kubeletVersion").into(),
        node_address(node, "InternalIP").into(),
        node_address(node, "ExternalIP").into(),
        info("osImage").into(),
        info("kernelVersion").into(),
        info("containerRuntimeVersion").into(),
    ]
    .into()
}

const ENDPOINTS_COLUMNS: &[Column] = &[
    NAME,
    col(
        "Endpoints",
        "string",
        "The set of all endpoints is the union of all subsets.",
    ),
    AGE,
];

/// Upstream's `formatEndpoints`: up to three `ip:port` pairs, then `+ N more...`.
fn format_endpoints(obj: &Value) -> String {
    let subsets = array_at(obj, "/subsets");
    if subsets.is_empty() {
        return "<none>".to_string();
    }
    let mut all = Vec::new();
    for subset in subsets {
        let ips: Vec<&str> = array_at(subset, "/addresses")
            .iter()
            .map(|a| str_at(a, "/ip"))
            .collect();
        let ports = array_at(subset, "/ports");
        if ports.is_empty() {
            all.extend(ips.iter().map(|ip| ip.to_string()));
            continue;
        }
        for port in ports {
            let port = int_at(port, "/port");
            all.extend(ips.iter().map(|ip| join_host_port(ip, port)));
        }
    }
    list_with_more(&all, 3, "")
}

fn join_host_port(host: &str, port: i64) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn endpoints(obj: &Value, now: jiff::Timestamp) -> Row {
    vec![name(obj), format_endpoints(obj).into(), age(obj, now)].into()
}

const EVENT_COLUMNS: &[Column] = &[
    col(
        "Last Seen",
        "string",
        "The time at which the most recent occurrence of this event was recorded.",
    ),
    col(
        "Type",
        "string",
        "Type of this event (Normal, Warning), new types could be added in the future.",
    ),
    col(
        "Reason",
        "string",
        "This should be a short, machine understandable string that gives the reason for the transition into the object's current status.",
    ),
    col("Object", "string", "The object that this event is about."),
    wide(
        "Subobject",
        "string",
        "If referring to a piece of an object instead of an entire object, this string should contain a valid JSON/Go field access statement.",
    ),
    wide("Source", "string", "The component reporting this event."),
    col(
        "Message",
        "string",
        "A human-readable description of the status of this operation.",
    ),
    wide(
        "First Seen",
        "string",
        "The time at which the event was first recorded.",
    ),
    wide(
        "Count",
        "string",
        "The number of times this event has occurred.",
    ),
    wide("Name", "string", "Name must be unique within a namespace."),
];

/// Reads a core/v1 Event field, or its events.k8s.io/v1 counterpart.
fn event_field<'a>(obj: &'a Value, core: &str, events: &str) -> Option<&'a Value> {
    obj.pointer(core)
        .filter(|v| !v.is_null())
        .or_else(|| obj.pointer(events).filter(|v| !v.is_null()))
}

fn event(obj: &Value, now: jiff::Timestamp) -> Row {
    let event_time = obj.pointer("/eventTime").filter(|v| !v.is_null());
    let first = match event_field(obj, "/firstTimestamp", "/deprecatedFirstTimestamp") {
        Some(t) => since(Some(t), now),
        None => since(event_time, now),
    };
    let mut last = match event_field(obj, "/lastTimestamp", "/deprecatedLastTimestamp") {
        Some(t) => since(Some(t), now),
        None => first.clone(),
    };
    let mut count = event_field(obj, "/count", "/deprecatedCount")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    if let Some(series) = obj.pointer("/series").filter(|s| !s.is_null()) {
        last = since(series.get("lastObservedTime"), now);
        count = int_at(series, "/count");
    } else if count == 0 {
        count = 1;
    }
    let involved = event_field(obj, "/involvedObject", "/regarding")
        .cloned()
        .unwrap_or_default();
    let kind = str_at(&involved, "/kind").to_lowercase();
    let target = match str_at(&involved, "/name") {
        "" => kind,
        n => format!("{kind}/{n}"),
    };
    let component = first_non_empty(&[
        str_at(obj, "/source/component"),
        str_at(obj, "/deprecatedSource/component"),
        str_at(obj, "/reportingController"),
    ]);
    let host = first_non_empty(&[
        str_at(obj, "/source/host"),
        str_at(obj, "/deprecatedSource/host"),
        str_at(obj, "/reportingInstance"),
    ]);
    let source = match (component, host) {
        ("", _) => "<unknown>".to_string(),
        (c, "") => c.to_string(),
        (c, h) => format!("{c}, {h}"),
    };
    let message = event_field(obj, "/message", "/note")
        .and_then(Value::as_str)
        .unwrap_or("")
        .trim();
    vec![
        last.into(),
        str_at(obj, "/type").into(),
        str_at(obj, "/reason").into(),
        target.into(),
        str_at(&involved, "/fieldPath").into(),
        source.into(),
        message.into(),
        first.into(),
        count.into(),
        name(obj),
    ]
    .into()
}

fn first_non_empty<'a>(values: &[&'a str]) -> &'a str {
    values.iter().copied().find(|v| !v.is_empty()).unwrap_or("")
}

const PVC_COLUMNS: &[Column] = &[
    NAME,
    col(
        "Status",
        "string",
        "phase represents the current phase of PersistentVolumeClaim.",
    ),
    col(
        "Volume",
        "string",
        "volumeName is the binding reference to the PersistentVolume backing this claim.",
    ),
    col(
        "Capacity",
        "string",
        "capacity represents the actual resources of the underlying volume.",
    ),
    col(
        "Access Modes",
        "string",
        "accessModes contains the actual access modes the volume backing the PVC has.",
    ),
    col("StorageClass", "string", "StorageClass of the pvc"),
    col(
        "VolumeAttributesClass",
        "string",
        "VolumeAttributesClass of the pvc",
    ),
    AGE,
    wide(
        "VolumeMode",
        "string",
        "volumeMode defines what type of volume is required by the claim.",
    ),
];

/// Upstream's `GetAccessModesAsString`: RWO, ROX, RWX, RWOP in that order, once each.
fn access_modes(modes: &[Value]) -> String {
    let known = [
        ("ReadWriteOnce", "RWO"),
        ("ReadOnlyMany", "ROX"),
        ("ReadWriteMany", "RWX"),
        ("ReadWriteOncePod", "RWOP"),
    ];
    let present: Vec<&str> = known
        .iter()
        .filter(|(mode, _)| modes.iter().any(|m| m == *mode))
        .map(|(_, short)| *short)
        .collect();
    present.join(",")
}

fn storage_class(obj: &Value) -> &str {
    match str_at(
        obj,
        "/metadata/annotations/volume.beta.kubernetes.io~1storage-class",
    ) {
        "" => str_at(obj, "/spec/storageClassName"),
        class => class,
    }
}

fn phase_or_terminating(obj: &Value) -> &str {
    if obj
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|t| !t.is_null())
    {
        "Terminating"
    } else {
        str_at(obj, "/status/phase")
    }
}

fn unset_if_empty(s: &str) -> String {
    if s.is_empty() {
        "<unset>".to_string()
    } else {
        s.to_string()
    }
}

fn pvc(obj: &Value, now: jiff::Timestamp) -> Row {
    let volume = str_at(obj, "/spec/volumeName");
    let (capacity, modes) = if volume.is_empty() {
        (String::new(), String::new())
    } else {
        (
            str_at(obj, "/status/capacity/storage").to_string(),
            access_modes(array_at(obj, "/status/accessModes")),
        )
    };
    vec![
        name(obj),
        phase_or_terminating(obj).into(),
        volume.into(),
        capacity.into(),
        modes.into(),
        storage_class(obj).into(),
        unset_if_empty(str_at(obj, "/spec/volumeAttributesClassName")).into(),
        age(obj, now),
        unset_if_empty(str_at(obj, "/spec/volumeMode")).into(),
    ]
    .into()
}

const PV_COLUMNS: &[Column] = &[
    NAME,
    col(
        "Capacity",
        "string",
        "capacity is the description of the persistent volume's resources and capacity.",
    ),
    col(
        "Access Modes",
        "string",
        "accessModes contains all ways the volume can be mounted.",
    ),
    col(
        "Reclaim Policy",
        "string",
        "persistentVolumeReclaimPolicy defines what happens to a persistent volume when released from its claim.",
    ),
    col(
        "Status",
        "string",
        "phase indicates if a volume is available, bound to a claim, or released by a claim.",
    ),
    col(
        "Claim",
        "string",
        "claimRef is part of a bi-directional binding between PersistentVolume and PersistentVolumeClaim.",
    ),
    col("StorageClass", "string", "StorageClass of the pv"),
    col(
        "VolumeAttributesClass",
        "string",
        "VolumeAttributesClass of the pv",
    ),
    col(
        "Reason",
        "string",
        "reason is a brief CamelCase string that describes any failure and is meant for machine parsing and tidy display in the CLI.",
    ),
    AGE,
    wide(
        "VolumeMode",
        "string",
        "volumeMode defines if a volume is intended to be used with a formatted filesystem or to remain in raw block state.",
    ),
];

fn pv(obj: &Value, now: jiff::Timestamp) -> Row {
    let claim = match obj.pointer("/spec/claimRef") {
        Some(c) if c.is_object() => format!("{}/{}", str_at(c, "/namespace"), str_at(c, "/name")),
        _ => String::new(),
    };
    let capacity = match str_at(obj, "/spec/capacity/storage") {
        "" => "0",
        c => c,
    };
    vec![
        name(obj),
        capacity.into(),
        access_modes(array_at(obj, "/spec/accessModes")).into(),
        str_at(obj, "/spec/persistentVolumeReclaimPolicy").into(),
        phase_or_terminating(obj).into(),
        claim.into(),
        storage_class(obj).into(),
        unset_if_empty(str_at(obj, "/spec/volumeAttributesClassName")).into(),
        str_at(obj, "/status/reason").into(),
        age(obj, now),
        unset_if_empty(str_at(obj, "/spec/volumeMode")).into(),
    ]
    .into()
}

const LEASE_COLUMNS: &[Column] = &[
    NAME,
    col("Holder", "string", "The holder of the lease."),
    AGE,
];

fn lease(obj: &Value, now: jiff::Timestamp) -> Row {
    let holder = match str_at(obj, "/spec/holderIdentity") {
        "" => "<unknown>",
        h => h,
    };
    vec![name(obj), holder.into(), age(obj, now)].into()
}

const ENDPOINT_SLICE_COLUMNS: &[Column] = &[
    NAME,
    col(
        "AddressType",
        "string",
        "The type of address carried by this EndpointSlice.",
    ),
    col("Ports", "string", "Ports advertised by this EndpointSlice."),
    col(
        "Endpoints",
        "string",
        "Endpoints represented by this EndpointSlice.",
    ),
    AGE,
];

fn endpoint_slice(obj: &Value, now: jiff::Timestamp) -> Row {
    let ports: Vec<String> = array_at(obj, "/ports")
        .iter()
        .map(|p| {
            match (
                p.get("port").and_then(Value::as_i64),
                p.get("name").and_then(Value::as_str),
            ) {
                (Some(n), _) => n.to_string(),
                (None, Some(name)) => name.to_string(),
                (None, None) => "<unset>".to_string(),
            }
        })
        .collect();
    let addresses: Vec<String> = array_at(obj, "/endpoints")
        .iter()
        .flat_map(|e| {
            array_at(e, "/addresses")
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
        })
        .collect();
    vec![
        name(obj),
        str_at(obj, "/addressType").into(),
        list_with_more(&ports, 3, "<unset>").into(),
        list_with_more(&addresses, 3, "<unset>").into(),
        age(obj, now),
    ]
    .into()
}

const INGRESS_COLUMNS: &[Column] = &[
    NAME,
    col("Class", "string", "The name of the IngressClass resource."),
    col(
        "Hosts",
        "string",
        "Hosts that incoming requests are matched against before the ingress rule",
    ),
    col(
        "Address",
        "string",
        "Address is a list containing ingress points for the load-balancer",
    ),
    col("Ports", "string", "Ports of TLS configurations that open"),
    AGE,
];

fn ingress(obj: &Value, now: jiff::Timestamp) -> Row {
    let hosts: Vec<String> = array_at(obj, "/spec/rules")
        .iter()
        .map(|r| str_at(r, "/host"))
        .filter(|h| !h.is_empty())
        .map(str::to_string)
        .collect();
    let ports = if array_at(obj, "/spec/tls").is_empty() {
        "80"
    } else {
        "80, 443"
    };
    vec![
        name(obj),
        or_none(str_at(obj, "/spec/ingressClassName")).into(),
        list_with_more(&hosts, 3, "*").into(),
        load_balancer_ingress(obj.pointer("/status/loadBalancer")).into(),
        ports.into(),
        age(obj, now),
    ]
    .into()
}
