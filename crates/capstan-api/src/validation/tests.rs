use super::*;
use crate::resources::find;
use serde_json::json;

fn info(group: &str, plural: &str) -> &'static ResourceInfo {
    find(group, "v1", plural).unwrap()
}

fn rendered(group: &str, plural: &str, obj: &Value, old: Option<&Value>) -> Vec<String> {
    causes(info(group, plural), obj, old)
        .iter()
        .map(Cause::render)
        .collect()
}

fn pod(spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default"}, "spec": spec})
}

#[test]
fn check_decodes_reports_type_errors() {
    let d = info("apps", "deployments");
    let ok = json!({"metadata": {"name": "a"}, "spec": {"replicas": 2, "selector": {"matchLabels": {"a": "b"}},
        "template": {"spec": {"containers": [{"name": "c", "image": "i", "resources": {"limits": {"cpu": 1}}}]}}}});
    check_decodes(d, &ok).unwrap();
    let bad = json!({"metadata": {"name": "a"}, "spec": {"replicas": "3"}});
    let e = check_decodes(d, &bad).unwrap_err();
    assert_eq!(e.code, 400);
    assert_eq!(
        e.message,
        "Deployment in version \"v1\" cannot be handled as a Deployment: json: cannot unmarshal string into Go struct field Deployment.spec.replicas of type int32"
    );
    // a missing required field is zero-filled by Go, so it is not a decode error
    check_decodes(info("", "pods"), &pod(json!({}))).unwrap();
    check_decodes(
        info("", "pods"),
        &json!({"metadata": null, "spec": {"containers": [{"name": "c", "image": null}]}}),
    )
    .unwrap();
}

#[test]
fn secret_base64_errors() {
    let s = info("", "secrets");
    check_decodes(
        s,
        &json!({"metadata": {"name": "s"}, "data": {"a": "aGVsbG8="}}),
    )
    .unwrap();
    let e = check_decodes(
        s,
        &json!({"metadata": {"name": "s"}, "data": {"a": "hello"}}),
    )
    .unwrap_err();
    assert_eq!(
        e.message,
        "Secret in version \"v1\" cannot be handled as a Secret: illegal base64 data at input byte 4"
    );
}

#[test]
fn unknown_fields_found_by_round_trip() {
    let d = info("apps", "deployments");
    let obj = json!({"metadata": {"name": "a", "labels": {"x": "y"}, "bogus": 1},
        "spec": {"foo": 1, "replicas": null, "selector": {"matchLabels": {"a": "b"}},
            "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i", "foo": true, "env": [{"name": "A", "value": "1", "x": 2}]}]}}}});
    assert_eq!(
        unknown_fields(d, &obj),
        vec![
            "metadata.bogus",
            "spec.foo",
            "spec.template.spec.containers[0].foo",
            "spec.template.spec.containers[0].env[0].x"
        ]
    );
    assert_eq!(
        unknown_field_messages(d, &json!({"spec": {"foo": 1}})),
        vec!["unknown field \"spec.foo\""]
    );
    let cm =
        json!({"metadata": {"name": "c"}, "data": {"anything": "x"}, "binaryData": {"b": "aGk="}});
    assert!(unknown_fields(info("", "configmaps"), &cm).is_empty());
}

#[test]
fn object_meta_rules() {
    let cases: &[(&str, &str, Value, &[&str])] = &[
        (
            "",
            "configmaps",
            json!({"metadata": {"namespace": "d"}}),
            &["metadata.name: Required value: name or generateName is required"],
        ),
        (
            "",
            "configmaps",
            json!({"metadata": {"name": "Bad_Name", "namespace": "d"}}),
            &[
                "metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
            ],
        ),
        (
            "",
            "configmaps",
            json!({"metadata": {"name": "a"}}),
            &["metadata.namespace: Required value"],
        ),
        (
            "",
            "namespaces",
            json!({"metadata": {"name": "a.b"}}),
            &["metadata.name: Invalid value: \"a.b\": must not contain dots"],
        ),
        (
            "",
            "namespaces",
            json!({"metadata": {"name": "a", "namespace": "x"}}),
            &["metadata.namespace: Forbidden: not allowed on this type"],
        ),
        (
            "",
            "services",
            json!({"metadata": {"name": "1abc", "namespace": "d"}, "spec": {"ports": [{"port": 80, "protocol": "TCP"}]}}),
            &[
                "metadata.name: Invalid value: \"1abc\": a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')",
            ],
        ),
        (
            "rbac.authorization.k8s.io",
            "clusterroles",
            json!({"metadata": {"name": "system:admin"}}),
            &[],
        ),
        (
            "rbac.authorization.k8s.io",
            "clusterroles",
            json!({"metadata": {"name": "a/b"}}),
            &["metadata.name: Invalid value: \"a/b\": may not contain '/'"],
        ),
        (
            "",
            "configmaps",
            json!({"metadata": {"generateName": "web-", "name": "web-x1", "namespace": "d"}}),
            &[],
        ),
        (
            "",
            "configmaps",
            json!({"metadata": {"name": "a", "namespace": "d", "labels": {"a b": "c"}}}),
            &[
                "metadata.labels: Invalid value: \"a b\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')",
            ],
        ),
        (
            "",
            "configmaps",
            json!({"metadata": {"name": "a", "namespace": "d", "labels": {"a": "-x"}}}),
            &[
                "metadata.labels: Invalid value: \"-x\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')",
            ],
        ),
        (
            "",
            "configmaps",
            json!({"metadata": {"name": "a", "namespace": "d", "annotations": {"big": "x".repeat(256 * 1024)}}}),
            &["metadata.annotations: Too long: must have at most 262144 bytes"],
        ),
    ];
    for (g, plural, obj, want) in cases {
        assert_eq!(rendered(g, plural, obj, None), *want, "{plural} {obj:.80}");
    }
}

#[test]
fn invalid_error_is_422_with_kind_and_name() {
    let cm = info("", "configmaps");
    let e = validate(
        cm,
        &json!({"metadata": {"name": "a", "namespace": "d"}, "data": {"a b": "x"}}),
        None,
    )
    .unwrap_err();
    assert_eq!(e.code, 422);
    assert!(e.message.starts_with("ConfigMap \"a\" is invalid: data[a b]: Invalid value: \"a b\": a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"), "{}", e.message);
    validate(
        cm,
        &json!({"metadata": {"name": "a", "namespace": "d"}, "data": {"a": "x"}}),
        None,
    )
    .unwrap();
}

#[test]
fn config_map_and_secret_rules() {
    let big = "x".repeat(1024 * 1024 + 1);
    assert_eq!(
        rendered(
            "",
            "configmaps",
            &json!({"metadata": {"name": "a", "namespace": "d"}, "data": {"k": big}}),
            None
        ),
        vec!["[]: Too long: must have at most 1048576 bytes"]
    );
    let old =
        json!({"metadata": {"name": "a", "namespace": "d"}, "immutable": true, "data": {"k": "1"}});
    let new =
        json!({"metadata": {"name": "a", "namespace": "d"}, "immutable": true, "data": {"k": "2"}});
    assert_eq!(
        rendered("", "configmaps", &new, Some(&old)),
        vec!["data: Forbidden: field is immutable when `immutable` is set"]
    );
    let unset = json!({"metadata": {"name": "a", "namespace": "d"}, "data": {"k": "1"}});
    assert_eq!(
        rendered("", "configmaps", &unset, Some(&old)),
        vec!["immutable: Forbidden: field is immutable when `immutable` is set"]
    );
    let tls = json!({"metadata": {"name": "a", "namespace": "d"}, "type": "kubernetes.io/tls", "data": {"tls.crt": "aGk="}});
    assert_eq!(
        rendered("", "secrets", &tls, None),
        vec!["data[tls.key]: Required value"]
    );
    let dcj = json!({"metadata": {"name": "a", "namespace": "d"}, "type": "kubernetes.io/dockerconfigjson", "data": {}});
    assert_eq!(
        rendered("", "secrets", &dcj, None),
        vec!["data[.dockerconfigjson]: Required value"]
    );
    let opaque = json!({"metadata": {"name": "a", "namespace": "d"}, "type": "Opaque", "data": {}});
    assert_eq!(
        rendered("", "secrets", &opaque, Some(&tls)),
        vec!["type: Invalid value: \"Opaque\": field is immutable"]
    );
    let sa = json!({"metadata": {"name": "a", "namespace": "d"}, "type": "kubernetes.io/service-account-token"});
    assert_eq!(
        rendered("", "secrets", &sa, None),
        vec!["metadata.annotations[kubernetes.io/service-account.name]: Required value"]
    );
}

#[test]
fn pod_rules() {
    let cases: &[(Value, &[&str])] = &[
        (
            json!({"containers": [{"name": "c", "image": "nginx"}]}),
            &[],
        ),
        (json!({}), &["spec.containers: Required value"]),
        (
            json!({"containers": [{"name": "c"}]}),
            &["spec.containers[0].image: Required value"],
        ),
        (
            json!({"containers": [{"name": "c", "image": "i"}, {"name": "c", "image": "i"}]}),
            &["spec.containers[1].name: Duplicate value: \"c\""],
        ),
        (
            json!({"initContainers": [{"name": "c", "image": "i"}], "containers": [{"name": "c", "image": "i"}]}),
            &["spec.containers[0].name: Duplicate value: \"c\""],
        ),
        (
            json!({"containers": [{"name": "C", "image": "i"}]}),
            &[
                "spec.containers[0].name: Invalid value: \"C\": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')",
            ],
        ),
        (
            json!({"restartPolicy": "Sometimes", "containers": [{"name": "c", "image": "i"}]}),
            &[
                "spec.restartPolicy: Unsupported value: \"Sometimes\": supported values: \"Always\", \"OnFailure\", \"Never\"",
            ],
        ),
        (
            json!({"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 70000, "protocol": "XYZ"}]}]}),
            &[
                "spec.containers[0].ports[0].containerPort: Invalid value: 70000: must be between 1 and 65535, inclusive",
                "spec.containers[0].ports[0].protocol: Unsupported value: \"XYZ\": supported values: \"SCTP\", \"TCP\", \"UDP\"",
            ],
        ),
        (
            json!({"containers": [{"name": "c", "image": "i", "volumeMounts": [{"name": "v", "mountPath": "/d"}]}]}),
            &["spec.containers[0].volumeMounts[0].name: Not found: \"v\""],
        ),
        (
            json!({"volumes": [{"name": "v", "emptyDir": {}}, {"name": "v", "emptyDir": {}}], "containers": [{"name": "c", "image": "i"}]}),
            &["spec.volumes[1].name: Duplicate value: \"v\""],
        ),
        (
            json!({"containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}}]}),
            &[
                "spec.containers[0].resources.requests: Invalid value: \"2\": must be less than or equal to cpu limit of 1",
            ],
        ),
        (
            json!({"containers": [{"name": "c", "image": "i", "resources": {"requests": {"memory": "512Mi"}, "limits": {"memory": "1Gi"}}}]}),
            &[],
        ),
    ];
    for (spec, want) in cases {
        assert_eq!(
            rendered("", "pods", &pod(spec.clone()), None),
            *want,
            "{spec}"
        );
    }
}

#[test]
fn pod_update_allows_only_image_changes() {
    let old = pod(json!({"containers": [{"name": "c", "image": "a"}], "restartPolicy": "Always"}));
    let new_image =
        pod(json!({"containers": [{"name": "c", "image": "b"}], "restartPolicy": "Always"}));
    assert!(rendered("", "pods", &new_image, Some(&old)).is_empty());
    let new_policy =
        pod(json!({"containers": [{"name": "c", "image": "a"}], "restartPolicy": "Never"}));
    let errs = rendered("", "pods", &new_policy, Some(&old));
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0].starts_with("spec: Forbidden: pod updates may not change fields other than `spec.containers[*].image`"),
        "{}",
        errs[0]
    );
}

fn deployment(selector: Value, labels: Value) -> Value {
    json!({"metadata": {"name": "web", "namespace": "d"}, "spec": {"replicas": 1, "selector": selector,
        "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}})
}

#[test]
fn deployment_rules() {
    let good = deployment(
        json!({"matchLabels": {"app": "web"}}),
        json!({"app": "web", "x": "y"}),
    );
    assert!(rendered("apps", "deployments", &good, None).is_empty());
    let mismatch = deployment(
        json!({"matchLabels": {"app": "web"}}),
        json!({"app": "api"}),
    );
    assert_eq!(
        rendered("apps", "deployments", &mismatch, None),
        vec![
            "spec.template.metadata.labels: Invalid value: map[string]string{\"app\":\"api\"}: `selector` does not match template `labels`"
        ]
    );
    let mut no_sel = good.clone();
    no_sel["spec"].as_object_mut().unwrap().remove("selector");
    assert_eq!(
        rendered("apps", "deployments", &no_sel, None),
        vec!["spec.selector: Required value"]
    );
    let changed = deployment(
        json!({"matchLabels": {"app": "web", "x": "y"}}),
        json!({"app": "web", "x": "y"}),
    );
    let errs = rendered("apps", "deployments", &changed, Some(&good));
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0].starts_with("spec.selector: Invalid value: ")
            && errs[0].ends_with("field is immutable"),
        "{}",
        errs[0]
    );
    let mut neg = good.clone();
    neg["spec"]["replicas"] = json!(-1);
    neg["spec"]["strategy"] =
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": "0%"}});
    assert_eq!(
        rendered("apps", "deployments", &neg, None),
        vec![
            "spec.replicas: Invalid value: -1: must be greater than or equal to 0",
            "spec.strategy.rollingUpdate.maxUnavailable: Invalid value: \"0%\": may not be 0 when `maxSurge` is 0",
        ]
    );
    let mut pol = good.clone();
    pol["spec"]["template"]["spec"]["restartPolicy"] = json!("Never");
    assert_eq!(
        rendered("apps", "deployments", &pol, None),
        vec![
            "spec.template.spec.restartPolicy: Unsupported value: \"Never\": supported values: \"Always\""
        ]
    );
}

#[test]
fn job_and_cronjob_rules() {
    let job = json!({"metadata": {"name": "j", "namespace": "d"}, "spec": {"template": {"spec": {"restartPolicy": "Always", "containers": [{"name": "c", "image": "i"}]}}}});
    assert_eq!(
        rendered("batch", "jobs", &job, None),
        vec![
            "spec.template.spec.restartPolicy: Unsupported value: \"Always\": supported values: \"OnFailure\", \"Never\""
        ]
    );
    let cj = json!({"metadata": {"name": "c", "namespace": "d"}, "spec": {"schedule": "", "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "OnFailure", "containers": [{"name": "c", "image": "i"}]}}}}}});
    assert_eq!(
        rendered("batch", "cronjobs", &cj, None),
        vec!["spec.schedule: Required value"]
    );
    let mut ok = cj.clone();
    ok["spec"]["schedule"] = json!("*/5 * * * *");
    assert!(rendered("batch", "cronjobs", &ok, None).is_empty());
}

#[test]
fn service_rules() {
    let svc = |spec: Value| json!({"metadata": {"name": "s", "namespace": "d"}, "spec": spec});
    let cases: &[(Value, &[&str])] = &[
        (json!({"ports": [{"port": 80, "protocol": "TCP"}]}), &[]),
        (json!({}), &["spec.ports: Required value"]),
        (json!({"clusterIP": "None"}), &[]),
        (
            json!({"type": "ExternalName", "externalName": "example.com"}),
            &[],
        ),
        (
            json!({"type": "Bogus", "ports": [{"port": 80, "protocol": "TCP"}]}),
            &[
                "spec.type: Unsupported value: \"Bogus\": supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\"",
            ],
        ),
        (
            json!({"ports": [{"port": 80, "protocol": "TCP"}, {"port": 81, "protocol": "TCP"}]}),
            &[
                "spec.ports[0].name: Required value",
                "spec.ports[1].name: Required value",
            ],
        ),
        (
            json!({"ports": [{"name": "a", "port": 0, "protocol": "TCP"}]}),
            &["spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive"],
        ),
        (
            json!({"ports": [{"port": 80, "protocol": "TCP", "nodePort": 30080}]}),
            &["spec.ports[0].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'"],
        ),
    ];
    for (spec, want) in cases {
        assert_eq!(
            rendered("", "services", &svc(spec.clone()), None),
            *want,
            "{spec}"
        );
    }
    let old = svc(json!({"clusterIP": "10.43.0.5", "ports": [{"port": 80, "protocol": "TCP"}]}));
    let new = svc(json!({"clusterIP": "10.43.0.6", "ports": [{"port": 80, "protocol": "TCP"}]}));
    assert_eq!(
        rendered("", "services", &new, Some(&old)),
        vec!["spec.clusterIPs[0]: Invalid value: []string{\"10.43.0.6\"}: may not change once set"]
    );
}

#[test]
fn metadata_name_is_immutable_on_update() {
    let old = json!({"metadata": {"name": "a", "namespace": "d", "uid": "1"}});
    let new = json!({"metadata": {"name": "a", "namespace": "d", "uid": "2"}});
    assert_eq!(
        rendered("", "configmaps", &new, Some(&old)),
        vec!["metadata.uid: Invalid value: \"2\": field is immutable"]
    );
}
