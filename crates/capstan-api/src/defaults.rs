//! Upstream defaulting (`SetDefaults_*` of each API group) for the fields users see, applied to
//! objects as JSON before validation. Allocation (cluster IPs, node ports, names) and admission
//! defaults (service account) are the API server's job, not this module's.

use crate::resources::ResourceInfo;
use base64::Engine;
use serde_json::{Map, Value, json};

/// Fills in upstream's defaults for `info`'s kind in place.
pub fn apply_defaults(info: &ResourceInfo, obj: &mut Value) {
    let Some(m) = obj.as_object_mut() else { return };
    match (info.group, info.kind) {
        ("", "Pod") => {
            pod_spec(spec(m));
            status(m).entry("phase").or_insert_with(|| json!("Pending"));
        }
        ("", "PodTemplate") => template(m),
        ("", "Service") => service(spec(m)),
        ("", "Secret") => secret(m),
        ("", "Namespace") => {
            spec(m)
                .entry("finalizers")
                .or_insert_with(|| json!(["kubernetes"]));
            status(m).entry("phase").or_insert_with(|| json!("Active"));
        }
        ("", "PersistentVolumeClaim") => {
            spec(m)
                .entry("volumeMode")
                .or_insert_with(|| json!("Filesystem"));
            status(m).entry("phase").or_insert_with(|| json!("Pending"));
        }
        ("", "PersistentVolume") => {
            let s = spec(m);
            s.entry("persistentVolumeReclaimPolicy")
                .or_insert_with(|| json!("Retain"));
            s.entry("volumeMode").or_insert_with(|| json!("Filesystem"));
            status(m).entry("phase").or_insert_with(|| json!("Pending"));
        }
        ("", "Node") => {}
        ("", "ServiceAccount") | ("", "ConfigMap") => {}
        ("apps", "Deployment") => deployment(m),
        ("apps", "ReplicaSet") => {
            spec(m).entry("replicas").or_insert_with(|| json!(1));
            template(spec(m));
        }
        ("apps", "StatefulSet") => stateful_set(m),
        ("apps", "DaemonSet") => daemon_set(m),
        ("batch", "Job") => job(m),
        ("batch", "CronJob") => cron_job(m),
        _ => {}
    }
}

fn child<'a>(m: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let slot = m.entry(key).or_insert_with(|| Value::Object(Map::new()));
    if !slot.is_object() {
        *slot = Value::Object(Map::new());
    }
    slot.as_object_mut().expect("just made an object")
}

fn spec(m: &mut Map<String, Value>) -> &mut Map<String, Value> {
    child(m, "spec")
}

fn status(m: &mut Map<String, Value>) -> &mut Map<String, Value> {
    child(m, "status")
}

/// Applies pod defaults to `spec.template.spec` of a workload spec map.
fn template(workload_spec: &mut Map<String, Value>) {
    pod_spec(spec(child(workload_spec, "template")));
}

fn set(m: &mut Map<String, Value>, key: &str, v: Value) {
    m.entry(key).or_insert(v);
}

/// `SetDefaults_PodSpec`, `_Container`, `_Volume`, probes and ports.
pub fn pod_spec(s: &mut Map<String, Value>) {
    set(s, "restartPolicy", json!("Always"));
    set(s, "dnsPolicy", json!("ClusterFirst"));
    set(s, "schedulerName", json!("default-scheduler"));
    set(s, "terminationGracePeriodSeconds", json!(30));
    set(s, "securityContext", json!({}));
    set(s, "enableServiceLinks", json!(true));
    // spec.priority is the Priority admission plugin's to set (from the class).
    set(s, "preemptionPolicy", json!("PreemptLowerPriority"));
    let host_network = s.get("hostNetwork").and_then(Value::as_bool) == Some(true);
    for key in ["containers", "initContainers"] {
        for c in s
            .get_mut(key)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            if let Some(c) = c.as_object_mut() {
                container(c, host_network);
            }
        }
    }
    for v in s
        .get_mut("volumes")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        if let Some(v) = v.as_object_mut() {
            volume(v);
        }
    }
}

fn container(c: &mut Map<String, Value>, host_network: bool) {
    set(c, "terminationMessagePath", json!("/dev/termination-log"));
    set(c, "terminationMessagePolicy", json!("File"));
    let image = c.get("image").and_then(Value::as_str).unwrap_or("");
    set(c, "imagePullPolicy", json!(default_pull_policy(image)));
    set(c, "resources", json!({}));
    if let Some(res) = c.get_mut("resources").and_then(Value::as_object_mut) {
        resources(res);
    }
    for p in c
        .get_mut("ports")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        if let Some(p) = p.as_object_mut() {
            set(p, "protocol", json!("TCP"));
            // with host networking the host port is the container port
            if host_network
                && !p.contains_key("hostPort")
                && let Some(cp) = p.get("containerPort").cloned()
            {
                p.insert("hostPort".into(), cp);
            }
        }
    }
    for key in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(probe) = c.get_mut(key).and_then(Value::as_object_mut) {
            self::probe(probe);
        }
    }
    for e in c
        .get_mut("env")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        if let Some(fr) = e
            .pointer_mut("/valueFrom/fieldRef")
            .and_then(Value::as_object_mut)
        {
            set(fr, "apiVersion", json!("v1"));
        }
    }
}

/// `Always` for `:latest` or untagged images (digests excepted), else `IfNotPresent`.
fn default_pull_policy(image: &str) -> &'static str {
    if image.contains('@') {
        return "IfNotPresent";
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

/// Limits default the missing requests; numeric quantities become strings as upstream prints them.
fn resources(res: &mut Map<String, Value>) {
    for key in ["limits", "requests"] {
        for q in res
            .get_mut(key)
            .and_then(Value::as_object_mut)
            .into_iter()
            .flat_map(|m| m.values_mut())
        {
            if let Value::Number(n) = q {
                *q = Value::String(n.to_string());
            }
        }
    }
    let Some(limits) = res.get("limits").and_then(Value::as_object).cloned() else {
        return;
    };
    let requests = child(res, "requests");
    for (k, v) in limits {
        requests.entry(k).or_insert(v);
    }
}

fn probe(p: &mut Map<String, Value>) {
    set(p, "timeoutSeconds", json!(1));
    set(p, "periodSeconds", json!(10));
    set(p, "successThreshold", json!(1));
    set(p, "failureThreshold", json!(3));
    if let Some(h) = p.get_mut("httpGet").and_then(Value::as_object_mut) {
        set(h, "path", json!("/"));
        set(h, "scheme", json!("HTTP"));
    }
}

fn volume(v: &mut Map<String, Value>) {
    const SOURCES: &[&str] = &[
        "hostPath",
        "emptyDir",
        "secret",
        "configMap",
        "persistentVolumeClaim",
        "projected",
        "downwardAPI",
        "csi",
        "ephemeral",
        "nfs",
        "iscsi",
        "rbd",
        "cephfs",
        "fc",
        "image",
        "gitRepo",
        "glusterfs",
        "awsElasticBlockStore",
        "gcePersistentDisk",
        "azureDisk",
        "azureFile",
        "cinder",
        "flexVolume",
        "flocker",
        "vsphereVolume",
        "quobyte",
        "photonPersistentDisk",
        "portworxVolume",
        "scaleIO",
        "storageos",
    ];
    if !SOURCES.iter().any(|s| v.contains_key(*s)) {
        v.insert("emptyDir".into(), json!({}));
    }
    for key in ["secret", "configMap", "downwardAPI", "projected"] {
        if let Some(src) = v.get_mut(key).and_then(Value::as_object_mut) {
            set(src, "defaultMode", json!(420));
        }
    }
    if let Some(hp) = v.get_mut("hostPath").and_then(Value::as_object_mut) {
        set(hp, "type", json!(""));
    }
}

fn service(s: &mut Map<String, Value>) {
    set(s, "type", json!("ClusterIP"));
    set(s, "sessionAffinity", json!("None"));
    let ty = s
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if ty != "ExternalName" {
        set(s, "internalTrafficPolicy", json!("Cluster"));
        set(s, "ipFamilyPolicy", json!("SingleStack"));
        set(s, "ipFamilies", json!(["IPv4"]));
    }
    if ty == "NodePort" || ty == "LoadBalancer" {
        set(s, "externalTrafficPolicy", json!("Cluster"));
    }
    if ty == "LoadBalancer" {
        set(s, "allocateLoadBalancerNodePorts", json!(true));
    }
    for p in s
        .get_mut("ports")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        if let Some(p) = p.as_object_mut() {
            set(p, "protocol", json!("TCP"));
            if let Some(port) = p.get("port").cloned() {
                set(p, "targetPort", port);
            }
        }
    }
}

/// Type Opaque; `stringData` is merged into `data` (base64) and dropped, as upstream's
/// conversion does.
fn secret(m: &mut Map<String, Value>) {
    set(m, "type", json!("Opaque"));
    let Some(Value::Object(string_data)) = m.remove("stringData") else {
        return;
    };
    let data = child(m, "data");
    for (k, v) in string_data {
        let text = v.as_str().unwrap_or("");
        data.insert(
            k,
            json!(base64::engine::general_purpose::STANDARD.encode(text)),
        );
    }
}

fn deployment(m: &mut Map<String, Value>) {
    let s = spec(m);
    set(s, "replicas", json!(1));
    set(s, "revisionHistoryLimit", json!(10));
    set(s, "progressDeadlineSeconds", json!(600));
    let strategy = child(s, "strategy");
    set(strategy, "type", json!("RollingUpdate"));
    if strategy.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
        let ru = child(strategy, "rollingUpdate");
        set(ru, "maxUnavailable", json!("25%"));
        set(ru, "maxSurge", json!("25%"));
    }
    template(s);
}

fn stateful_set(m: &mut Map<String, Value>) {
    let s = spec(m);
    set(s, "replicas", json!(1));
    set(s, "podManagementPolicy", json!("OrderedReady"));
    set(s, "revisionHistoryLimit", json!(10));
    let us = child(s, "updateStrategy");
    set(us, "type", json!("RollingUpdate"));
    if us.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
        set(child(us, "rollingUpdate"), "partition", json!(0));
    }
    let retention = child(s, "persistentVolumeClaimRetentionPolicy");
    set(retention, "whenDeleted", json!("Retain"));
    set(retention, "whenScaled", json!("Retain"));
    for pvc in s
        .get_mut("volumeClaimTemplates")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        if let Some(p) = pvc.as_object_mut() {
            set(spec(p), "volumeMode", json!("Filesystem"));
            set(status(p), "phase", json!("Pending"));
        }
    }
    template(s);
}

fn daemon_set(m: &mut Map<String, Value>) {
    let s = spec(m);
    set(s, "revisionHistoryLimit", json!(10));
    let us = child(s, "updateStrategy");
    set(us, "type", json!("RollingUpdate"));
    if us.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
        let ru = child(us, "rollingUpdate");
        set(ru, "maxUnavailable", json!(1));
        set(ru, "maxSurge", json!(0));
    }
    template(s);
}

/// Job defaults, and the generated selector/labels (`controller-uid`) when the uid is known.
fn job(m: &mut Map<String, Value>) {
    let uid = m
        .get("metadata")
        .and_then(|md| md.get("uid"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let s = spec(m);
    job_spec(s);
    let manual = s.get("manualSelector").and_then(Value::as_bool) == Some(true);
    if let (Some(uid), false) = (uid, manual) {
        if !s.contains_key("selector") {
            s.insert(
                "selector".into(),
                json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}),
            );
        }
        let labels = child(child(child(s, "template"), "metadata"), "labels");
        for key in ["batch.kubernetes.io/controller-uid", "controller-uid"] {
            set(labels, key, json!(uid));
        }
        let name_label = m.get("metadata").and_then(|md| md.get("name")).cloned();
        if let Some(name) = name_label {
            let labels = child(child(child(spec(m), "template"), "metadata"), "labels");
            set(labels, "batch.kubernetes.io/job-name", name.clone());
            set(labels, "job-name", name);
        }
    }
}

fn job_spec(s: &mut Map<String, Value>) {
    let completions_unset = !s.contains_key("completions");
    let parallelism_unset = !s.contains_key("parallelism");
    // both unset: a single-pod job; only parallelism set: a work queue with no completions
    if completions_unset && parallelism_unset {
        s.insert("completions".into(), json!(1));
    }
    set(s, "parallelism", json!(1));
    set(s, "backoffLimit", json!(6));
    set(s, "completionMode", json!("NonIndexed"));
    set(s, "suspend", json!(false));
    set(s, "manualSelector", json!(false));
    if s.get("podFailurePolicy").is_none() {
        set(s, "podReplacementPolicy", json!("TerminatingOrFailed"));
    } else {
        set(s, "podReplacementPolicy", json!("Failed"));
    }
    pod_spec(spec(child(s, "template")));
}

fn cron_job(m: &mut Map<String, Value>) {
    let s = spec(m);
    set(s, "concurrencyPolicy", json!("Allow"));
    set(s, "suspend", json!(false));
    set(s, "successfulJobsHistoryLimit", json!(3));
    set(s, "failedJobsHistoryLimit", json!(1));
    let job_tmpl = spec(child(s, "jobTemplate"));
    // upstream defaults the job template's pod spec but not its job fields
    pod_spec(spec(child(job_tmpl, "template")));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::find;

    fn defaulted(group: &str, plural: &str, mut obj: Value) -> Value {
        apply_defaults(find(group, "v1", plural).unwrap(), &mut obj);
        obj
    }

    #[test]
    fn pod_defaults() {
        let p = defaulted(
            "",
            "pods",
            json!({"spec": {"containers": [
            {"name": "a", "image": "nginx", "ports": [{"containerPort": 80}], "livenessProbe": {"httpGet": {"port": 80}}},
            {"name": "b", "image": "nginx:1.25"},
            {"name": "c", "image": "reg:5000/app:latest", "resources": {"limits": {"cpu": 1}}},
            {"name": "d", "image": "reg:5000/app"}],
            "volumes": [{"name": "v"}, {"name": "s", "secret": {"secretName": "x"}}]}}),
        );
        let s = &p["spec"];
        assert_eq!(
            (
                s["restartPolicy"].as_str(),
                s["dnsPolicy"].as_str(),
                s["schedulerName"].as_str()
            ),
            (
                Some("Always"),
                Some("ClusterFirst"),
                Some("default-scheduler")
            )
        );
        assert_eq!(s["terminationGracePeriodSeconds"], 30);
        assert_eq!(s["securityContext"], json!({}));
        assert_eq!(s["enableServiceLinks"], true);
        assert!(s.get("priority").is_none());
        let pulls: Vec<&str> = (0..4)
            .map(|i| s["containers"][i]["imagePullPolicy"].as_str().unwrap())
            .collect();
        assert_eq!(pulls, ["Always", "IfNotPresent", "Always", "Always"]);
        assert_eq!(s["containers"][0]["ports"][0]["protocol"], "TCP");
        assert_eq!(
            s["containers"][0]["terminationMessagePath"],
            "/dev/termination-log"
        );
        assert_eq!(
            s["containers"][0]["livenessProbe"]["httpGet"]["scheme"],
            "HTTP"
        );
        assert_eq!(s["containers"][0]["livenessProbe"]["periodSeconds"], 10);
        assert_eq!(
            s["containers"][2]["resources"],
            json!({"limits": {"cpu": "1"}, "requests": {"cpu": "1"}})
        );
        assert_eq!(s["volumes"][0]["emptyDir"], json!({}));
        assert_eq!(s["volumes"][1]["secret"]["defaultMode"], 420);
        assert_eq!(p["status"]["phase"], "Pending");
    }

    #[test]
    fn deployment_defaults_keep_user_values() {
        let d = defaulted(
            "apps",
            "deployments",
            json!({"spec": {"replicas": 3, "strategy": {"type": "Recreate"},
            "template": {"spec": {"containers": [{"name": "a", "image": "x:1"}]}}}}),
        );
        assert_eq!(d["spec"]["replicas"], 3);
        assert_eq!(d["spec"]["strategy"], json!({"type": "Recreate"}));
        assert_eq!(d["spec"]["revisionHistoryLimit"], 10);
        assert_eq!(d["spec"]["progressDeadlineSeconds"], 600);
        assert_eq!(d["spec"]["template"]["spec"]["restartPolicy"], "Always");
        let d = defaulted("apps", "deployments", json!({"spec": {}}));
        assert_eq!(
            d["spec"]["strategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}})
        );
        assert_eq!(d["spec"]["replicas"], 1);
    }

    #[test]
    fn service_secret_and_namespace_defaults() {
        let s = defaulted(
            "",
            "services",
            json!({"spec": {"ports": [{"port": 80}, {"port": 53, "protocol": "UDP", "targetPort": "dns"}]}}),
        );
        assert_eq!(s["spec"]["type"], "ClusterIP");
        assert_eq!(s["spec"]["sessionAffinity"], "None");
        assert_eq!(
            s["spec"]["ports"][0],
            json!({"port": 80, "protocol": "TCP", "targetPort": 80})
        );
        assert_eq!(s["spec"]["ports"][1]["targetPort"], "dns");
        assert_eq!(s["spec"]["ipFamilyPolicy"], "SingleStack");
        let sec = defaulted(
            "",
            "secrets",
            json!({"data": {"a": "eA=="}, "stringData": {"b": "hello", "a": "y"}}),
        );
        assert_eq!(sec["type"], "Opaque");
        assert_eq!(sec["data"], json!({"a": "eQ==", "b": "aGVsbG8="}));
        assert!(sec.get("stringData").is_none());
        let ns = defaulted("", "namespaces", json!({"metadata": {"name": "x"}}));
        assert_eq!(ns["spec"]["finalizers"], json!(["kubernetes"]));
        assert_eq!(ns["status"]["phase"], "Active");
    }

    #[test]
    fn job_and_workload_defaults() {
        let j = defaulted(
            "batch",
            "jobs",
            json!({"metadata": {"name": "pi", "uid": "u1"}, "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": []}}}}),
        );
        assert_eq!(
            (
                j["spec"]["completions"].as_i64(),
                j["spec"]["parallelism"].as_i64(),
                j["spec"]["backoffLimit"].as_i64()
            ),
            (Some(1), Some(1), Some(6))
        );
        assert_eq!(j["spec"]["completionMode"], "NonIndexed");
        assert_eq!(
            j["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"],
            "u1"
        );
        assert_eq!(
            j["spec"]["template"]["metadata"]["labels"]["job-name"],
            "pi"
        );
        assert_eq!(j["spec"]["template"]["spec"]["restartPolicy"], "Never");
        let wq = defaulted("batch", "jobs", json!({"spec": {"parallelism": 3}}));
        assert!(wq["spec"].get("completions").is_none());
        let cj = defaulted(
            "batch",
            "cronjobs",
            json!({"spec": {"schedule": "* * * * *"}}),
        );
        assert_eq!(
            (
                cj["spec"]["concurrencyPolicy"].as_str(),
                cj["spec"]["successfulJobsHistoryLimit"].as_i64()
            ),
            (Some("Allow"), Some(3))
        );
        let sts = defaulted("apps", "statefulsets", json!({"spec": {}}));
        assert_eq!(
            sts["spec"]["updateStrategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}})
        );
        assert_eq!(sts["spec"]["podManagementPolicy"], "OrderedReady");
        let ds = defaulted("apps", "daemonsets", json!({"spec": {}}));
        assert_eq!(
            ds["spec"]["updateStrategy"]["rollingUpdate"],
            json!({"maxUnavailable": 1, "maxSurge": 0})
        );
    }
}
