use super::*;
use crate::resources::find_kind;
use serde_json::json;

fn deploy_info() -> &'static ResourceInfo {
    find_kind("apps/v1", "Deployment").unwrap()
}

fn deploy(replicas: i64, containers: Value) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": containers}}}
    })
}

fn nginx(image: &str) -> Value {
    json!([{"name": "nginx", "image": image}])
}

fn apply(
    cur: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    now: &str,
) -> Result<Value, ApiError> {
    server_side_apply(deploy_info(), cur, applied, manager, force, now)
}

fn entry<'a>(obj: &'a Value, manager: &str) -> Option<&'a Value> {
    obj["metadata"]["managedFields"]
        .as_array()?
        .iter()
        .find(|e| e["manager"] == manager)
}

fn strip_managed(mut v: Value) -> Value {
    v["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("managedFields");
    v
}

#[test]
fn apply_creates_with_upstream_fields_v1() {
    let obj = apply(
        None,
        &deploy(2, nginx("nginx:1")),
        "kubectl",
        false,
        "2024-01-01T00:00:00Z",
    )
    .unwrap();
    let e = entry(&obj, "kubectl").unwrap();
    assert_eq!(e["operation"], "Apply");
    assert_eq!(e["apiVersion"], "apps/v1");
    assert_eq!(e["fieldsType"], "FieldsV1");
    assert_eq!(e["time"], "2024-01-01T00:00:00Z");
    let want = json!({
        "f:metadata": {"f:labels": {"f:app": {}}},
        "f:spec": {
            "f:replicas": {},
            "f:selector": {},
            "f:template": {
                "f:metadata": {"f:labels": {"f:app": {}}},
                "f:spec": {"f:containers": {"k:{\"name\":\"nginx\"}": {".": {}, "f:image": {}, "f:name": {}}}}
            }
        }
    });
    assert_eq!(e["fieldsV1"], want);
    assert_eq!(obj["spec"]["replicas"], 2);
}

#[test]
fn apply_twice_changes_nothing() {
    let cfg = deploy(2, nginx("nginx:1"));
    let once = apply(None, &cfg, "kubectl", false, "2024-01-01T00:00:00Z").unwrap();
    let twice = apply(Some(&once), &cfg, "kubectl", false, "2024-02-02T00:00:00Z").unwrap();
    assert_eq!(once, twice);
}

#[test]
fn conflicts_name_the_other_manager() {
    let first = apply(None, &deploy(2, nginx("nginx:1")), "alpha", false, "t1").unwrap();
    let err = apply(
        Some(&first),
        &deploy(3, nginx("nginx:1")),
        "beta",
        false,
        "t2",
    )
    .unwrap_err();
    assert_eq!(err.code, 409);
    assert_eq!(err.reason, "Conflict");
    assert_eq!(
        err.message,
        "Apply failed with 1 conflict: conflict with \"alpha\": .spec.replicas"
    );
    assert_eq!(
        err.causes,
        vec![Cause::new(
            "FieldManagerConflict",
            ".spec.replicas",
            "conflict with \"alpha\""
        )]
    );

    // An Update manager is shown with its apiVersion; several conflicts are listed.
    let mut created = deploy(2, nginx("nginx:1"));
    track_update(
        deploy_info(),
        None,
        &mut created,
        "kubectl-client-side-apply",
        None,
        "t1",
    );
    let err = apply(
        Some(&created),
        &deploy(3, nginx("nginx:1")),
        "kubectl",
        false,
        "t2",
    )
    .unwrap_err();
    assert_eq!(
        err.message,
        "Apply failed with 1 conflict: conflict with \"kubectl-client-side-apply\" using apps/v1: .spec.replicas"
    );
    let err = apply(
        Some(&created),
        &deploy(3, nginx("nginx:2")),
        "kubectl",
        false,
        "t2",
    )
    .unwrap_err();
    assert_eq!(
        err.message,
        "Apply failed with 2 conflicts: conflicts with \"kubectl-client-side-apply\" using apps/v1:\n- .spec.replicas\n- .spec.template.spec.containers[name=\"nginx\"].image"
    );
}

#[test]
fn same_value_is_shared_without_conflict() {
    let first = apply(None, &deploy(2, nginx("nginx:1")), "alpha", false, "t1").unwrap();
    let second = apply(
        Some(&first),
        &deploy(2, nginx("nginx:1")),
        "beta",
        false,
        "t2",
    )
    .unwrap();
    assert!(entry(&second, "alpha").is_some());
    assert!(entry(&second, "beta").is_some());
}

#[test]
fn force_takes_ownership() {
    let first = apply(None, &deploy(2, nginx("nginx:1")), "alpha", false, "t1").unwrap();
    let forced = apply(
        Some(&first),
        &deploy(5, nginx("nginx:1")),
        "beta",
        true,
        "t2",
    )
    .unwrap();
    assert_eq!(forced["spec"]["replicas"], 5);
    let alpha = &entry(&forced, "alpha").unwrap()["fieldsV1"];
    assert!(alpha["f:spec"].get("f:replicas").is_none());
    assert!(
        entry(&forced, "beta").unwrap()["fieldsV1"]["f:spec"]
            .get("f:replicas")
            .is_some()
    );
}

#[test]
fn dropping_a_field_from_the_config_removes_it_unless_owned_elsewhere() {
    let mut cfg = deploy(
        2,
        json!([{"name": "nginx", "image": "nginx:1"}, {"name": "side", "image": "busybox"}]),
    );
    cfg["metadata"]["labels"]["tier"] = json!("front");
    let first = apply(None, &cfg, "kubectl", false, "t1").unwrap();
    let mut smaller = deploy(2, nginx("nginx:1"));
    smaller["spec"].as_object_mut().unwrap().remove("replicas");
    let second = apply(Some(&first), &smaller, "kubectl", false, "t2").unwrap();
    assert!(second["spec"].get("replicas").is_none());
    assert!(second["metadata"]["labels"].get("tier").is_none());
    assert_eq!(
        second["spec"]["template"]["spec"]["containers"],
        nginx("nginx:1")
    );

    // A field another manager also owns stays.
    let shared = apply(
        Some(&first),
        &deploy(2, nginx("nginx:1")),
        "other",
        false,
        "t2",
    )
    .unwrap();
    let third = apply(Some(&shared), &smaller, "kubectl", false, "t3").unwrap();
    assert_eq!(third["spec"]["replicas"], 2);
}

#[test]
fn containers_merge_by_name_across_managers() {
    let a = apply(None, &deploy(1, nginx("nginx:1")), "a", false, "t1").unwrap();
    let mut cfg_b = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"template": {"spec": {"containers": [{"name": "log", "image": "fluentd"}]}}}});
    let b = apply(Some(&a), &cfg_b, "b", false, "t2").unwrap();
    let names: Vec<&str> = b["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["nginx", "log"]);
    let b_fields =
        &entry(&b, "b").unwrap()["fieldsV1"]["f:spec"]["f:template"]["f:spec"]["f:containers"];
    assert_eq!(
        b_fields,
        &json!({"k:{\"name\":\"log\"}": {".": {}, "f:image": {}, "f:name": {}}})
    );
    // b stops applying its container: only it goes.
    cfg_b["spec"]["template"]["spec"]["containers"] = json!([]);
    let c = apply(Some(&b), &cfg_b, "b", false, "t3").unwrap();
    assert_eq!(
        c["spec"]["template"]["spec"]["containers"],
        nginx("nginx:1")
    );
}

#[test]
fn service_ports_key_on_port_and_defaulted_protocol() {
    let svc = find_kind("v1", "Service").unwrap();
    let cfg = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}]}});
    let obj = server_side_apply(svc, None, &cfg, "kubectl", false, "t").unwrap();
    let ports = &entry(&obj, "kubectl").unwrap()["fieldsV1"]["f:spec"]["f:ports"];
    assert_eq!(
        ports,
        &json!({"k:{\"port\":80,\"protocol\":\"TCP\"}": {".": {}, "f:port": {}}})
    );
}

#[test]
fn updates_move_ownership_of_changed_fields() {
    let info = deploy_info();
    let mut created = deploy(2, nginx("nginx:1"));
    track_update(info, None, &mut created, "kubectl-create", None, "t1");
    let e = entry(&created, "kubectl-create").unwrap();
    assert_eq!(e["operation"], "Update");
    assert_eq!(
        e["fieldsV1"]["f:metadata"]["f:labels"],
        json!({".": {}, "f:app": {}})
    );
    assert_eq!(e["fieldsV1"]["f:spec"]["f:replicas"], json!({}));

    let mut scaled = created.clone();
    scaled["spec"]["replicas"] = json!(4);
    track_update(
        info,
        Some(&created),
        &mut scaled,
        "kubectl-edit",
        None,
        "t2",
    );
    let create_fields = &entry(&scaled, "kubectl-create").unwrap()["fieldsV1"];
    assert!(create_fields["f:spec"].get("f:replicas").is_none());
    assert_eq!(
        entry(&scaled, "kubectl-edit").unwrap()["fieldsV1"],
        json!({"f:spec": {"f:replicas": {}}})
    );
    assert_eq!(entry(&scaled, "kubectl-create").unwrap()["time"], "t1");

    // A no-op update keeps entries and times as they were.
    let mut same = scaled.clone();
    track_update(info, Some(&scaled), &mut same, "kubectl-edit", None, "t3");
    assert_eq!(same, scaled);

    // Status writes through /status are tracked separately; main writes ignore status.
    let mut with_status = scaled.clone();
    with_status["status"] = json!({"replicas": 4});
    track_update(
        info,
        Some(&scaled),
        &mut with_status,
        "kube-controller-manager",
        Some("status"),
        "t4",
    );
    let e = entry(&with_status, "kube-controller-manager").unwrap();
    assert_eq!(e["subresource"], "status");
    assert_eq!(e["fieldsV1"], json!({"f:status": {"f:replicas": {}}}));
    assert_eq!(
        strip_managed(with_status.clone())["status"],
        json!({"replicas": 4})
    );
}

#[test]
fn clients_can_reset_managed_fields() {
    let info = deploy_info();
    let mut created = deploy(2, nginx("nginx:1"));
    track_update(info, None, &mut created, "kubectl-create", None, "t1");
    let mut reset = created.clone();
    reset["metadata"]["managedFields"] = json!([{}]);
    track_update(info, Some(&created), &mut reset, "kubectl-edit", None, "t2");
    assert!(reset["metadata"].get("managedFields").is_none());
}

#[test]
fn field_sets_round_trip_through_fields_v1() {
    let obj = apply(None, &deploy(2, nginx("nginx:1")), "kubectl", false, "t").unwrap();
    let v1 = &entry(&obj, "kubectl").unwrap()["fieldsV1"];
    let set = Set::from_fields_v1(v1);
    assert_eq!(&set.to_fields_v1(), v1);
    let paths: Vec<String> = set.paths().iter().map(|p| path_string(p)).collect();
    assert!(
        paths.contains(&".spec.template.spec.containers[name=\"nginx\"]".to_string()),
        "{paths:?}"
    );
}
