use serde_json::{Value, json};

use super::*;
use crate::resources::find;

fn now() -> jiff::Timestamp {
    "2024-05-01T12:00:00Z".parse().expect("timestamp")
}

fn cells(group: &str, plural: &str, obj: Value) -> Vec<Value> {
    let info = find(group, "v1", plural).expect("resource");
    let table = to_table(info, &[obj], IncludeObject::None, now());
    table["rows"][0]["cells"].as_array().expect("cells").clone()
}

#[test]
fn human_duration_matches_upstream() {
    let cases: &[(i64, &str)] = &[
        (-2, "<invalid>"),
        (-1, "0s"),
        (0, "0s"),
        (5, "5s"),
        (119, "119s"),
        (120, "2m"),
        (200, "3m20s"),
        (600, "10m"),
        (179 * 60, "179m"),
        (3 * 3600, "3h"),
        (3 * 3600 + 600, "3h10m"),
        (8 * 3600 + 59 * 60, "8h"),
        (47 * 3600, "47h"),
        (48 * 3600, "2d"),
        (51 * 3600, "2d3h"),
        (8 * 86400, "8d"),
        (729 * 86400, "729d"),
        (730 * 86400, "2y"),
        (760 * 86400, "2y30d"),
        (8 * 365 * 86400, "8y"),
    ];
    for (secs, want) in cases {
        assert_eq!(
            human_duration(jiff::SignedDuration::from_secs(*secs)),
            *want,
            "{secs}s"
        );
    }
}

#[test]
fn include_object_parses_upstream_values() {
    assert_eq!("None".parse(), Ok(IncludeObject::None));
    assert_eq!("Metadata".parse(), Ok(IncludeObject::Metadata));
    assert_eq!("Object".parse(), Ok(IncludeObject::Object));
    assert_eq!("".parse(), Ok(IncludeObject::Metadata));
    assert!("object".parse::<IncludeObject>().is_err());
}

#[test]
fn rows_carry_partial_metadata_full_object_or_nothing() {
    let info = find("", "v1", "configmaps").expect("configmaps");
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "creationTimestamp": "2024-05-01T11:59:55Z"}, "data": {"x": "1", "y": "2"}});
    let table = to_table(
        info,
        std::slice::from_ref(&cm),
        IncludeObject::Metadata,
        now(),
    );
    assert_eq!(table["kind"], "Table");
    assert_eq!(table["apiVersion"], "meta.k8s.io/v1");
    let names: Vec<&str> = table["columnDefinitions"]
        .as_array()
        .expect("columns")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, ["Name", "Data", "Age"]);
    assert_eq!(table["columnDefinitions"][0]["format"], "name");
    assert_eq!(table["rows"][0]["cells"], json!(["a", 2, "5s"]));
    assert_eq!(table["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    assert_eq!(table["rows"][0]["object"]["metadata"]["name"], "a");
    assert!(table["rows"][0]["object"].get("data").is_none());
    let full = to_table(
        info,
        std::slice::from_ref(&cm),
        IncludeObject::Object,
        now(),
    );
    assert_eq!(full["rows"][0]["object"], cm);
    let none = to_table(info, &[cm], IncludeObject::None, now());
    assert!(none["rows"][0].get("object").is_none());
}

fn pod(status: Value, spec_extra: Value) -> Value {
    let mut spec =
        json!({"containers": [{"name": "a", "image": "nginx"}, {"name": "b", "image": "busybox"}]});
    if let (Some(s), Some(extra)) = (spec.as_object_mut(), spec_extra.as_object()) {
        s.extend(extra.clone());
    }
    json!({"metadata": {"name": "p", "creationTimestamp": "2024-05-01T11:56:40Z"}, "spec": spec, "status": status})
}

#[test]
fn pod_status_follows_upstream_rules() {
    let running = json!({"state": {"running": {}}, "ready": true, "restartCount": 0});
    let waiting =
        |r: &str| json!({"state": {"waiting": {"reason": r}}, "ready": false, "restartCount": 3});
    let cases: Vec<(&str, Value, Value, &str, &str)> = vec![
        (
            "pending",
            json!({"phase": "Pending"}),
            json!({}),
            "0/2",
            "Pending",
        ),
        (
            "running",
            json!({"phase": "Running", "containerStatuses": [running.clone(), running.clone()]}),
            json!({}),
            "2/2",
            "Running",
        ),
        (
            "crashloop",
            json!({"phase": "Running", "containerStatuses": [running.clone(), waiting("CrashLoopBackOff")]}),
            json!({}),
            "1/2",
            "CrashLoopBackOff",
        ),
        (
            "evicted",
            json!({"phase": "Failed", "reason": "Evicted"}),
            json!({}),
            "0/2",
            "Evicted",
        ),
        (
            "init waiting",
            json!({"phase": "Pending", "initContainerStatuses": [{"name": "i", "state": {"waiting": {"reason": "PodInitializing"}}}]}),
            json!({"initContainers": [{"name": "i"}, {"name": "j"}]}),
            "0/2",
            "Init:0/2",
        ),
        (
            "init crash",
            json!({"phase": "Pending", "initContainerStatuses": [{"name": "i", "state": {"terminated": {"exitCode": 1}}}]}),
            json!({"initContainers": [{"name": "i"}]}),
            "0/2",
            "Init:ExitCode:1",
        ),
        (
            "exit code",
            json!({"phase": "Running", "containerStatuses": [{"state": {"terminated": {"exitCode": 0, "signal": 9}}}]}),
            json!({}),
            "0/2",
            "Signal:9",
        ),
        (
            "gated",
            json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "SchedulingGated"}]}),
            json!({}),
            "0/2",
            "SchedulingGated",
        ),
        (
            "sidecar",
            json!({"phase": "Running", "initContainerStatuses": [{"name": "s", "started": true, "ready": true, "state": {"running": {}}}], "containerStatuses": [running.clone(), running.clone()]}),
            json!({"initContainers": [{"name": "s", "restartPolicy": "Always"}]}),
            "3/3",
            "Running",
        ),
    ];
    for (what, status, spec, ready, reason) in cases {
        let row = cells("", "pods", pod(status, spec));
        assert_eq!(row[1], ready, "{what}");
        assert_eq!(row[2], reason, "{what}");
        assert_eq!(row[4], "3m20s", "{what}");
    }
    let mut terminating = pod(json!({"phase": "Running"}), json!({}));
    terminating["metadata"]["deletionTimestamp"] = "2024-05-01T11:59:00Z".into();
    assert_eq!(cells("", "pods", terminating)[2], "Terminating");
}

#[test]
fn pod_restarts_and_wide_cells() {
    let status = json!({
        "phase": "Running",
        "podIPs": [{"ip": "10.42.0.5"}],
        "containerStatuses": [{"state": {"running": {}}, "ready": true, "restartCount": 4,
            "lastState": {"terminated": {"exitCode": 1, "finishedAt": "2024-05-01T11:58:00Z"}}}],
    });
    let row = cells(
        "",
        "pods",
        pod(
            status,
            json!({"nodeName": "n1", "readinessGates": [{"conditionType": "x"}]}),
        ),
    );
    assert_eq!(row[3], "4 (2m ago)");
    assert_eq!(
        row[5..],
        [
            json!("10.42.0.5"),
            json!("n1"),
            json!("<none>"),
            json!("0/1")
        ]
    );
    let row = cells("", "pods", pod(json!({"phase": "Pending"}), json!({})));
    assert_eq!(row[3], 0);
    assert_eq!(
        row[5..],
        [
            json!("<none>"),
            json!("<none>"),
            json!("<none>"),
            json!("<none>")
        ]
    );
}

#[test]
fn deployment_row_and_wide_cells() {
    let d = json!({
        "metadata": {"name": "web", "creationTimestamp": "2024-04-29T09:00:00Z"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"spec": {"containers": [{"name": "nginx", "image": "nginx:1.25"}, {"name": "side", "image": "busybox"}]}}},
        "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2},
    });
    let info = find("apps", "v1", "deployments").expect("deployments");
    let table = to_table(info, &[d], IncludeObject::None, now());
    let names: Vec<&str> = table["columnDefinitions"]
        .as_array()
        .expect("columns")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "Name",
            "Ready",
            "Up-to-date",
            "Available",
            "Age",
            "Containers",
            "Images",
            "Selector"
        ]
    );
    assert_eq!(table["columnDefinitions"][5]["priority"], 1);
    assert_eq!(
        table["rows"][0]["cells"],
        json!([
            "web",
            "2/3",
            3,
            2,
            "2d3h",
            "nginx,side",
            "nginx:1.25,busybox",
            "app=web"
        ])
    );
}

#[test]
fn service_cells_follow_upstream() {
    let svc = |spec: Value, status: Value| json!({"metadata": {"name": "s", "creationTimestamp": "2024-05-01T11:00:00Z"}, "spec": spec, "status": status});
    let cases = [
        (
            svc(
                json!({"type": "ClusterIP", "clusterIPs": ["10.43.0.10"], "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}], "selector": {"k8s-app": "dns"}}),
                json!({}),
            ),
            json!([
                "s",
                "ClusterIP",
                "10.43.0.10",
                "<none>",
                "53/UDP,53/TCP",
                "60m",
                "k8s-app=dns"
            ]),
        ),
        (
            svc(
                json!({"type": "NodePort", "clusterIP": "10.43.1.1", "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}]}),
                json!({}),
            ),
            json!([
                "s",
                "NodePort",
                "10.43.1.1",
                "<none>",
                "80:30080/TCP",
                "60m",
                "<none>"
            ]),
        ),
        (
            svc(
                json!({"type": "LoadBalancer", "clusterIPs": ["10.43.1.2"], "ports": [{"port": 443, "protocol": "TCP"}]}),
                json!({}),
            ),
            json!([
                "s",
                "LoadBalancer",
                "10.43.1.2",
                "<pending>",
                "443/TCP",
                "60m",
                "<none>"
            ]),
        ),
        (
            svc(
                json!({"type": "LoadBalancer", "clusterIPs": ["10.43.1.2"], "externalIPs": ["1.2.3.4"]}),
                json!({"loadBalancer": {"ingress": [{"ip": "5.6.7.8"}]}}),
            ),
            json!([
                "s",
                "LoadBalancer",
                "10.43.1.2",
                "5.6.7.8,1.2.3.4",
                "<none>",
                "60m",
                "<none>"
            ]),
        ),
        (
            svc(
                json!({"type": "ExternalName", "externalName": "example.com"}),
                json!({}),
            ),
            json!([
                "s",
                "ExternalName",
                "<none>",
                "example.com",
                "<none>",
                "60m",
                "<none>"
            ]),
        ),
    ];
    for (obj, want) in cases {
        assert_eq!(Value::Array(cells("", "services", obj)), want);
    }
}

#[test]
fn other_kinds_render_upstream_cells() {
    let meta = json!({"name": "x", "creationTimestamp": "2024-05-01T11:59:00Z"});
    let with = |extra: Value| {
        let mut obj = json!({"metadata": meta.clone()});
        if let (Some(o), Some(e)) = (obj.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        obj
    };
    let cases: Vec<(&str, &str, Value, Value)> = vec![
        (
            "",
            "secrets",
            with(json!({"type": "Opaque", "data": {"a": "YQ=="}})),
            json!(["x", "Opaque", 1, "60s"]),
        ),
        (
            "",
            "namespaces",
            with(json!({"status": {"phase": "Active"}})),
            json!(["x", "Active", "60s"]),
        ),
        (
            "",
            "serviceaccounts",
            with(json!({})),
            json!(["x", 0, "60s"]),
        ),
        (
            "",
            "endpoints",
            with(
                json!({"subsets": [{"addresses": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}], "ports": [{"port": 80}, {"port": 443}]}]}),
            ),
            json!([
                "x",
                "10.0.0.1:80,10.0.0.2:80,10.0.0.1:443 + 1 more...",
                "60s"
            ]),
        ),
        (
            "",
            "endpoints",
            with(json!({})),
            json!(["x", "<none>", "60s"]),
        ),
        (
            "",
            "nodes",
            with(
                json!({"metadata": {"name": "x", "creationTimestamp": "2024-05-01T11:59:00Z", "labels": {"node-role.kubernetes.io/control-plane": "", "node-role.kubernetes.io/master": ""}},
            "spec": {"unschedulable": true},
            "status": {"conditions": [{"type": "Ready", "status": "True"}], "addresses": [{"type": "InternalIP", "address": "192.168.1.2"}], "nodeInfo": {"kubeletVersion": "v1.33.0", "osImage": "Debian", "kernelVersion": "6.1", "containerRuntimeVersion": "capstan://0.1"}}}),
            ),
            json!([
                "x",
                "Ready,SchedulingDisabled",
                "control-plane,master",
                "60s",
                "v1.33.0",
                "192.168.1.2",
                "<none>",
                "Debian",
                "6.1",
                "capstan://0.1"
            ]),
        ),
        (
            "coordination.k8s.io",
            "leases",
            with(json!({"spec": {"holderIdentity": "node1"}})),
            json!(["x", "node1", "60s"]),
        ),
        (
            "discovery.k8s.io",
            "endpointslices",
            with(
                json!({"addressType": "IPv4", "ports": [{"port": 80}], "endpoints": [{"addresses": ["10.0.0.1"]}]}),
            ),
            json!(["x", "IPv4", "80", "10.0.0.1", "60s"]),
        ),
        (
            "networking.k8s.io",
            "ingresses",
            with(json!({"spec": {"rules": [{"host": "a.com"}], "tls": [{}]}})),
            json!(["x", "<none>", "a.com", "", "80, 443", "60s"]),
        ),
        (
            "batch",
            "jobs",
            with(
                json!({"spec": {"completions": 3, "template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}, "status": {"succeeded": 1, "startTime": "2024-05-01T11:59:30Z"}}),
            ),
            json!(["x", "Running", "1/3", "30s", "60s", "c", "i", ""]),
        ),
        (
            "batch",
            "cronjobs",
            with(
                json!({"spec": {"schedule": "*/5 * * * *", "suspend": false, "jobTemplate": {"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}}}}),
            ),
            json!([
                "x",
                "*/5 * * * *",
                "<none>",
                "False",
                0,
                "<none>",
                "60s",
                "c",
                "i",
                "<none>"
            ]),
        ),
        (
            "",
            "persistentvolumeclaims",
            with(
                json!({"spec": {"volumeName": "pv1", "storageClassName": "local"}, "status": {"phase": "Bound", "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"]}}),
            ),
            json!([
                "x", "Bound", "pv1", "1Gi", "RWO", "local", "<unset>", "60s", "<unset>"
            ]),
        ),
        (
            "",
            "events",
            with(
                json!({"involvedObject": {"kind": "Pod", "name": "p"}, "type": "Normal", "reason": "Scheduled", "message": "ok ", "source": {"component": "default-scheduler"}, "firstTimestamp": "2024-05-01T11:58:00Z", "lastTimestamp": "2024-05-01T11:59:00Z", "count": 2}),
            ),
            json!([
                "60s",
                "Normal",
                "Scheduled",
                "pod/p",
                "",
                "default-scheduler",
                "ok",
                "2m",
                2,
                "x"
            ]),
        ),
        ("", "resourcequotas", with(json!({})), json!(["x", "60s"])),
    ];
    for (group, plural, obj, want) in cases {
        assert_eq!(Value::Array(cells(group, plural, obj)), want, "{plural}");
    }
}
