//! Must show 1: the everyday kubectl workflow against `capstan server`, with several kubectl
//! versions (the /usr/bin dispatcher, the oldest and the newest supported release).

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use crate::harness::{Kubectl, Server, Streaming, fixture_path};
use crate::util::{base64, find_row, squash};

#[test]
fn kubectl_workflow_dispatcher() {
    workflow(Kubectl::Dispatcher);
}

#[test]
fn kubectl_workflow_1_27() {
    workflow(Kubectl::Minor(27));
}

#[test]
fn kubectl_workflow_1_33() {
    workflow(Kubectl::Minor(33));
}

/// Every installed kubectl minor (1.27 to 1.33) can write and read, and sees the server as 1.33.
#[test]
fn every_kubectl_minor_reads_and_writes() {
    let server = Server::start();
    for minor in 27..=33 {
        let k = Kubectl::Minor(minor);
        let name = format!("from-1-{minor}");
        let literal = format!("--from-literal=minor={minor}");
        server
            .kubectl(k, &["create", "configmap", &name, &literal], None)
            .ok();
        let out = server
            .kubectl(
                k,
                &["get", "configmap", &name, "-o", "jsonpath={.data.minor}"],
                None,
            )
            .ok();
        assert_eq!(out.stdout, minor.to_string());
        let version = server
            .kubectl(k, &["version", "-o", "json"], None)
            .ok()
            .json();
        assert_eq!(version["serverVersion"]["major"], "1", "{version}");
        assert_eq!(version["serverVersion"]["minor"], "33", "{version}");
    }
}

fn workflow(k: Kubectl) {
    let server = Server::start();
    let kc = |args: &[&str]| server.kubectl(k, args, None);
    apply_twice(&server, k);
    get_formats(&server, k);
    watch_sees_merge_patch(&server, k);
    describe(&server, k);
    label_and_annotate(&server, k);
    patch_strategic_and_json(&server, k);
    edit_with_kube_editor(&server, k);
    diff_shows_change(&server, k);
    server_side_apply(&server, k);
    discovery_and_explain(&server, k);
    get_all_namespaces(&server, k);
    seed_example_round_trip(&server, k);
    kc(&["delete", "service", "web", "-n", "shop"])
        .ok()
        .stdout_has("service \"web\" deleted");
    kc(&["get", "service", "web", "-n", "shop"])
        .code_is(1)
        .stderr_has("Error from server (NotFound): services \"web\" not found");
}

fn apply_twice(server: &Server, k: Kubectl) {
    let file = fixture_path("app.yaml");
    let file = file.to_str().expect("utf-8 path");
    let first = server.kubectl(k, &["apply", "-f", file], None).ok();
    assert_eq!(
        first.lines(),
        [
            "namespace/shop created",
            "configmap/web-config created",
            "secret/web-secret created",
            "deployment.apps/web created",
            "service/web created",
        ],
        "{first}"
    );
    let secret_rv = resource_version(server, k, "secret", "web-secret");
    let second = server.kubectl(k, &["apply", "-f", file], None).ok();
    // Upstream too reports the Secret "configured": stringData never appears in the stored object,
    // so kubectl's three-way patch always re-sends it. The server must treat it as a no-op.
    assert_eq!(
        second.lines(),
        [
            "namespace/shop unchanged",
            "configmap/web-config unchanged",
            "secret/web-secret configured",
            "deployment.apps/web unchanged",
            "service/web unchanged",
        ],
        "{second}"
    );
    assert_eq!(
        resource_version(server, k, "secret", "web-secret"),
        secret_rv,
        "no-op patch bumped RV"
    );
}

fn resource_version(server: &Server, k: Kubectl, kind: &str, name: &str) -> String {
    let out = server.kubectl(
        k,
        &[
            "get",
            kind,
            name,
            "-n",
            "shop",
            "-o",
            "jsonpath={.metadata.resourceVersion}",
        ],
        None,
    );
    let rv = out.ok().stdout;
    assert!(
        rv.parse::<u64>().is_ok(),
        "resourceVersion {rv:?} is not a number"
    );
    rv
}

fn get_formats(server: &Server, k: Kubectl) {
    let kc = |args: &[&str]| server.kubectl(k, args, None);
    let secret = kc(&["get", "secret", "web-secret", "-n", "shop", "-o", "json"])
        .ok()
        .json();
    assert_eq!(secret["data"]["username"], base64("admin"), "{secret}");
    assert_eq!(
        secret["data"]["password"],
        base64("s3cr3t"),
        "stringData merged into data: {secret}"
    );
    assert!(
        secret.get("stringData").is_none(),
        "stringData must not be stored: {secret}"
    );
    assert_eq!(secret["type"], "Opaque");

    let yaml = kc(&["get", "configmap", "web-config", "-n", "shop", "-o", "yaml"]).ok();
    let cm: serde_json::Value = serde_saphyr::from_str(&yaml.stdout).expect("-o yaml parses");
    assert_eq!(cm["kind"], "ConfigMap");
    assert_eq!(cm["data"]["color"], "blue");
    assert_eq!(cm["data"]["index.html"], "<h1>hello from capstan</h1>\n");
    assert!(
        cm["metadata"]["uid"]
            .as_str()
            .is_some_and(|u| u.len() == 36),
        "{cm}"
    );

    let wide = kc(&["get", "deployment", "web", "-n", "shop", "-o", "wide"]).ok();
    let lines = wide.lines();
    assert_eq!(
        squash(lines[0]),
        "NAME READY UP-TO-DATE AVAILABLE AGE CONTAINERS IMAGES SELECTOR",
        "{wide}"
    );
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        (row[0], row[1], row[5], row[6], row[7]),
        ("web", "0/2", "web", "nginx:1.25", "app=web")
    );

    let svc = kc(&["get", "service", "web", "-n", "shop", "-o", "wide"]).ok();
    let row: Vec<&str> = svc.lines()[1].split_whitespace().collect();
    assert_eq!(
        (row[0], row[1], row[3], row[4], row[6]),
        ("web", "ClusterIP", "<none>", "80/TCP", "app=web")
    );
    assert!(
        row[2].starts_with("10.43."),
        "ClusterIP from the service CIDR: {svc}"
    );

    let names = kc(&[
        "get",
        "deployments,services,configmaps",
        "-n",
        "shop",
        "-o",
        "name",
    ])
    .ok();
    assert_eq!(
        names.lines(),
        [
            "deployment.apps/web",
            "service/web",
            // Every namespace gets the cluster CA, as upstream's root CA publisher does.
            "configmap/kube-root-ca.crt",
            "configmap/web-config"
        ]
    );
}

fn watch_sees_merge_patch(server: &Server, k: Kubectl) {
    let cmd = server.kubectl_cmd(
        k,
        &[
            "get",
            "configmap",
            "web-config",
            "-n",
            "shop",
            "-w",
            "-o",
            "jsonpath={.data.color}{\"\\n\"}",
        ],
    );
    let mut watch = Streaming::spawn(cmd);
    assert_eq!(watch.next_line(Duration::from_secs(20)), "blue");
    let patch = r#"{"data":{"color":"green"}}"#;
    server
        .kubectl(
            k,
            &[
                "patch",
                "configmap",
                "web-config",
                "-n",
                "shop",
                "--type",
                "merge",
                "-p",
                patch,
            ],
            None,
        )
        .ok()
        .stdout_has("configmap/web-config patched");
    assert_eq!(watch.next_line(Duration::from_secs(20)), "green");
    drop(watch);
    // The same merge patch again changes nothing: no new resourceVersion, kubectl says so.
    server
        .kubectl(
            k,
            &[
                "patch",
                "configmap",
                "web-config",
                "-n",
                "shop",
                "--type",
                "merge",
                "-p",
                patch,
            ],
            None,
        )
        .ok()
        .stdout_has("configmap/web-config patched (no change)");
    // A null in a merge patch deletes the key.
    let remove = r#"{"data":{"index.html":null}}"#;
    server
        .kubectl(
            k,
            &[
                "patch",
                "configmap",
                "web-config",
                "-n",
                "shop",
                "--type",
                "merge",
                "-p",
                remove,
            ],
            None,
        )
        .ok();
    let data = server
        .kubectl(
            k,
            &[
                "get",
                "configmap",
                "web-config",
                "-n",
                "shop",
                "-o",
                "jsonpath={.data}",
            ],
            None,
        )
        .ok()
        .json();
    assert_eq!(data, serde_json::json!({"color": "green"}));
}

fn describe(server: &Server, k: Kubectl) {
    let out = server
        .kubectl(k, &["describe", "deployment", "web", "-n", "shop"], None)
        .ok();
    let text = squash(&out.stdout);
    for expected in [
        "Name: web",
        "Namespace: shop",
        "Labels: app=web",
        "Selector: app=web",
        // The Deployment controller is creating its pods meanwhile (the server has no node,
        // so none becomes available); the updated/total counts depend on how far it got.
        "Replicas: 2 desired |",
        "| 0 available |",
        "StrategyType: RollingUpdate",
        "RollingUpdateStrategy: 0 max unavailable, 1 max surge",
        "Image: nginx:1.25",
    ] {
        assert!(
            text.contains(expected),
            "describe lacks {expected:?}: {out}"
        );
    }
    let out = server
        .kubectl(k, &["describe", "service", "web", "-n", "shop"], None)
        .ok();
    let text = squash(&out.stdout);
    for expected in [
        "Name: web",
        "Selector: app=web",
        "Type: ClusterIP",
        "Port: http 80/TCP",
        "TargetPort: 80/TCP",
    ] {
        assert!(
            text.contains(expected),
            "describe lacks {expected:?}: {out}"
        );
    }
}

fn label_and_annotate(server: &Server, k: Kubectl) {
    let kc = |args: &[&str]| server.kubectl(k, args, None);
    kc(&[
        "label",
        "configmap",
        "web-config",
        "-n",
        "shop",
        "tier=frontend",
    ])
    .ok()
    .stdout_has("configmap/web-config labeled");
    let selected = kc(&[
        "get",
        "configmaps",
        "-n",
        "shop",
        "-l",
        "tier=frontend",
        "-o",
        "name",
    ])
    .ok();
    assert_eq!(selected.lines(), ["configmap/web-config"]);
    let other = kc(&[
        "get",
        "configmaps",
        "-n",
        "shop",
        "-l",
        "tier notin (frontend)",
        "-o",
        "name",
    ]);
    // notin also matches objects without the label: only the published cluster CA.
    assert_eq!(other.ok().lines(), ["configmap/kube-root-ca.crt"]);
    kc(&[
        "label",
        "configmap",
        "web-config",
        "-n",
        "shop",
        "tier=backend",
    ])
    .code_is(1)
    .stderr_has("'tier' already has a value (frontend), and --overwrite is false");
    kc(&[
        "annotate",
        "configmap",
        "web-config",
        "-n",
        "shop",
        "owner=team-a",
    ])
    .ok()
    // kubectl 1.27 itself prints "annotate" here; later minors print "annotated".
    .stdout_has("configmap/web-config annotate");
    let owner = kc(&[
        "get",
        "configmap",
        "web-config",
        "-n",
        "shop",
        "-o",
        "jsonpath={.metadata.annotations.owner}",
    ]);
    assert_eq!(owner.ok().stdout, "team-a");
}

fn patch_strategic_and_json(server: &Server, k: Kubectl) {
    let kc = |args: &[&str]| server.kubectl(k, args, None);
    let jsonpath = |path: &str| {
        kc(&[
            "get",
            "deployment",
            "web",
            "-n",
            "shop",
            "-o",
            &format!("jsonpath={path}"),
        ])
        .ok()
        .stdout
    };
    assert_eq!(jsonpath("{.metadata.generation}"), "1");
    // Containers merge by name: the sidecar is added, the web container is kept.
    let sidecar = r#"{"spec":{"template":{"spec":{"containers":[{"name":"sidecar","image":"busybox:1.36"}]}}}}"#;
    kc(&[
        "patch",
        "deployment",
        "web",
        "-n",
        "shop",
        "--type",
        "strategic",
        "-p",
        sidecar,
    ])
    .ok()
    .stdout_has("deployment.apps/web patched");
    // Upstream puts the patch's new items first, then the server-only ones (SMP order rules).
    assert_eq!(
        jsonpath("{.spec.template.spec.containers[*].name}"),
        "sidecar web"
    );
    assert_eq!(
        jsonpath("{.spec.template.spec.containers[?(@.name==\"web\")].image}"),
        "nginx:1.25"
    );
    assert_eq!(
        jsonpath("{.metadata.generation}"),
        "2",
        "spec change bumps generation"
    );
    let replicas = r#"[{"op":"replace","path":"/spec/replicas","value":3}]"#;
    kc(&[
        "patch",
        "deployment",
        "web",
        "-n",
        "shop",
        "--type",
        "json",
        "-p",
        replicas,
    ])
    .ok()
    .stdout_has("deployment.apps/web patched");
    assert_eq!(jsonpath("{.spec.replicas}"), "3");
    assert_eq!(jsonpath("{.metadata.generation}"), "3");
    // A label is metadata: generation stays.
    kc(&["label", "deployment", "web", "-n", "shop", "release=stable"]).ok();
    assert_eq!(
        jsonpath("{.metadata.generation}"),
        "3",
        "metadata change must not bump generation"
    );
}

fn edit_with_kube_editor(server: &Server, k: Kubectl) {
    let editor = server.write_file(
        "editor.sh",
        "#!/bin/sh\nset -e\nsed -i 's/^  color: green$/  color: red/' \"$1\"\n",
    );
    std::fs::set_permissions(&editor, std::fs::Permissions::from_mode(0o755))
        .expect("chmod editor");
    let mut cmd = server.kubectl_cmd(k, &["edit", "configmap", "web-config", "-n", "shop"]);
    cmd.env("KUBE_EDITOR", &editor);
    let out = crate::harness::run(cmd, None);
    assert!(out.stdout.contains("configmap/web-config edited"), "{out}");
    let color = server
        .kubectl(
            k,
            &[
                "get",
                "configmap",
                "web-config",
                "-n",
                "shop",
                "-o",
                "jsonpath={.data.color}",
            ],
            None,
        )
        .ok();
    assert_eq!(color.stdout, "red");
}

fn diff_shows_change(server: &Server, k: Kubectl) {
    let desired = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web-config\n  namespace: shop\n\
                   data:\n  color: purple\n";
    let file = server.write_file("diff.yaml", desired);
    let out = server.kubectl(k, &["diff", "-f", file.to_str().expect("utf-8 path")], None);
    // kubectl diff exits 1 when there are differences.
    let out = out.code_is(1);
    assert!(out.stdout.lines().any(|l| l == "-  color: red"), "{out}");
    assert!(out.stdout.lines().any(|l| l == "+  color: purple"), "{out}");
    let color = server
        .kubectl(
            k,
            &[
                "get",
                "configmap",
                "web-config",
                "-n",
                "shop",
                "-o",
                "jsonpath={.data.color}",
            ],
            None,
        )
        .ok();
    assert_eq!(
        color.stdout, "red",
        "diff is a dry run and must not store anything"
    );
}

fn server_side_apply(server: &Server, k: Kubectl) {
    let cm = |value: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa-demo\n  namespace: shop\ndata:\n  a: \"{value}\"\n"
        )
    };
    let apply = |extra: &[&str], value: &str| {
        let mut args = vec!["apply", "--server-side", "-f", "-"];
        args.extend_from_slice(extra);
        server.kubectl(k, &args, Some(&cm(value)))
    };
    apply(&[], "1")
        .ok()
        .stdout_has("configmap/ssa-demo serverside-applied");
    let obj = server
        .kubectl(
            k,
            &[
                "get",
                "configmap",
                "ssa-demo",
                "-n",
                "shop",
                "-o",
                "json",
                "--show-managed-fields",
            ],
            None,
        )
        .ok()
        .json();
    let managed = &obj["metadata"]["managedFields"][0];
    assert_eq!(managed["manager"], "kubectl", "{obj}");
    assert_eq!(managed["operation"], "Apply", "{obj}");
    assert_eq!(managed["fieldsType"], "FieldsV1", "{obj}");
    assert!(managed["fieldsV1"]["f:data"].get("f:a").is_some(), "{obj}");

    apply(&["--field-manager=intruder"], "2")
        .code_is(1)
        .stderr_has("Apply failed with 1 conflict: conflict with \"kubectl\": .data.a");
    let value = |srv: &Server| {
        srv.kubectl(
            k,
            &[
                "get",
                "configmap",
                "ssa-demo",
                "-n",
                "shop",
                "-o",
                "jsonpath={.data.a}",
            ],
            None,
        )
        .ok()
        .stdout
    };
    assert_eq!(
        value(server),
        "1",
        "a conflicting apply must not change anything"
    );
    apply(&["--field-manager=intruder", "--force-conflicts"], "2")
        .ok()
        .stdout_has("configmap/ssa-demo serverside-applied");
    assert_eq!(value(server), "2");
}

fn discovery_and_explain(server: &Server, k: Kubectl) {
    let out = server.kubectl(k, &["api-resources"], None).ok();
    assert_eq!(
        squash(out.lines()[0]),
        "NAME SHORTNAMES APIVERSION NAMESPACED KIND",
        "{out}"
    );
    for row in [
        &["configmaps", "cm", "v1", "true", "ConfigMap"][..],
        &["namespaces", "ns", "v1", "false", "Namespace"],
        &["services", "svc", "v1", "true", "Service"],
        &["deployments", "deploy", "apps/v1", "true", "Deployment"],
        &["leases", "coordination.k8s.io/v1", "true", "Lease"],
        &[
            "clusterroles",
            "rbac.authorization.k8s.io/v1",
            "false",
            "ClusterRole",
        ],
        &[
            "horizontalpodautoscalers",
            "hpa",
            "autoscaling/v2",
            "true",
            "HorizontalPodAutoscaler",
        ],
    ] {
        find_row(&out.stdout, row).unwrap_or_else(|| panic!("api-resources lacks {row:?}: {out}"));
    }
    let apps = server
        .kubectl(
            k,
            &["api-resources", "--api-group=apps", "-o", "name"],
            None,
        )
        .ok();
    for name in [
        "controllerrevisions.apps",
        "daemonsets.apps",
        "deployments.apps",
        "replicasets.apps",
        "statefulsets.apps",
    ] {
        assert!(apps.lines().contains(&name), "{name} missing: {apps}");
    }

    let out = server
        .kubectl(k, &["explain", "deployment.spec.strategy"], None)
        .ok();
    let text = squash(&out.stdout);
    for expected in [
        "KIND: Deployment",
        "The deployment strategy to use to replace existing pods with new ones.",
        "rollingUpdate",
        "type",
    ] {
        assert!(text.contains(expected), "explain lacks {expected:?}: {out}");
    }
    // The OpenAPI v3 renderer prints GROUP and VERSION apart; the v2 one prints apps/v1.
    let v3 = text.contains("GROUP: apps KIND: Deployment VERSION: v1");
    if !v3 {
        assert!(
            text.contains("VERSION: apps/v1"),
            "explain lacks the group/version: {out}"
        );
    }
}

fn get_all_namespaces(server: &Server, k: Kubectl) {
    let out = server.kubectl(k, &["get", "services", "-A"], None).ok();
    assert_eq!(
        squash(out.lines()[0]),
        "NAMESPACE NAME TYPE CLUSTER-IP EXTERNAL-IP PORT(S) AGE",
        "{out}"
    );
    find_row(
        &out.stdout,
        &[
            "default",
            "kubernetes",
            "ClusterIP",
            "10.43.0.1",
            "<none>",
            "443/TCP",
        ],
    )
    .unwrap_or_else(|| panic!("the kubernetes Service is missing: {out}"));
    let shop = out
        .lines()
        .into_iter()
        .find(|l| l.starts_with("shop "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(shop.split_whitespace().nth(1) == Some("web"), "{out}");

    let ns = server
        .kubectl(k, &["get", "namespaces", "-o", "name"], None)
        .ok();
    for name in [
        "namespace/default",
        "namespace/kube-node-lease",
        "namespace/kube-public",
        "namespace/kube-system",
        "namespace/shop",
    ] {
        assert!(ns.lines().contains(&name), "{name} missing: {ns}");
    }
    let cms = server
        .kubectl(
            k,
            &["get", "configmaps", "--all-namespaces", "--no-headers"],
            None,
        )
        .ok();
    find_row(&cms.stdout, &["shop", "web-config", "1"]).unwrap_or_else(|| panic!("{cms}"));
}

/// The primer's MySQL example (Secret, Pod, ConfigMap) goes in and out unchanged.
fn seed_example_round_trip(server: &Server, k: Kubectl) {
    let file = fixture_path("seed-mysql.yaml");
    let file = file.to_str().expect("utf-8 path");
    // The example's hostPath volume needs the privileged Pod Security level.
    server
        .kubectl(
            k,
            &[
                "label",
                "namespace",
                "default",
                "pod-security.kubernetes.io/enforce=privileged",
                "--overwrite",
            ],
            None,
        )
        .ok();
    let out = server.kubectl(k, &["apply", "-f", file], None).ok();
    assert_eq!(
        out.lines(),
        [
            "secret/mysql-password created",
            "pod/mysql-pod created",
            "configmap/mysql-config created"
        ]
    );
    let pod = server
        .kubectl(k, &["get", "pod", "mysql-pod", "-o", "json"], None)
        .ok()
        .json();
    let env = &pod["spec"]["containers"][0]["env"][0];
    assert_eq!(env["valueFrom"]["secretKeyRef"]["key"], "PASSWORD", "{pod}");
    assert_eq!(
        pod["spec"]["volumes"][1]["hostPath"]["type"], "DirectoryOrCreate",
        "{pod}"
    );
    assert_eq!(pod["status"]["phase"], "Pending", "{pod}");
    let password = server
        .kubectl(
            k,
            &[
                "get",
                "secret",
                "mysql-password",
                "-o",
                "jsonpath={.data.PASSWORD}",
            ],
            None,
        )
        .ok();
    assert_eq!(password.stdout, "MTIzNDU2Cg==");
    let cnf = server
        .kubectl(
            k,
            &[
                "get",
                "configmap",
                "mysql-config",
                "-o",
                "jsonpath={.data.mysql\\.cnf}",
            ],
            None,
        )
        .ok();
    assert!(
        cnf.stdout
            .starts_with("[mysqld]\ncharacter-set-server=utf8mb4\n"),
        "{cnf}"
    );
    let out = server.kubectl(k, &["delete", "-f", file], None).ok();
    let lines = out.lines();
    // Newer kubectl versions append " from default namespace".
    let expected = [
        "secret \"mysql-password\" deleted",
        "pod \"mysql-pod\" deleted",
        "configmap \"mysql-config\" deleted",
    ];
    assert_eq!(lines.len(), 3, "{out}");
    for (line, want) in lines.iter().zip(expected) {
        assert!(line.starts_with(want), "{want:?} expected: {out}");
    }
    server
        .kubectl(k, &["get", "pod", "mysql-pod"], None)
        .code_is(1)
        .stderr_has("(NotFound)");
}
