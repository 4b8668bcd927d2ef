//! Admission end to end: Pod Security, LimitRange, ResourceQuota, DefaultTolerationSeconds, Priority.
//! `capstan server --disable-agent` driven by kubectl 1.32: the pods are only admitted, never run.

use crate::harness::{Kubectl, Server};

const K: Kubectl = Kubectl::Minor(32);

fn pod_yaml(ns: &str, name: &str, privileged: bool) -> String {
    let sc = if privileged {
        "    securityContext:\n      privileged: true\n"
    } else {
        ""
    };
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  containers:\n  - name: c\n    image: busybox\n{sc}"
    )
}

#[test]
fn admission_pod_security_quota_and_limit_range_with_kubectl() {
    let server = Server::start();
    let kc = |args: &[&str], stdin: Option<&str>| server.kubectl(K, args, stdin);

    // Pod Security: baseline is enforced where no label says otherwise.
    kc(&["apply", "-f", "-"], Some(&pod_yaml("default", "priv", true)))
        .code_is(1)
        .stderr_has(
            "pods \"priv\" is forbidden: violates PodSecurity \"baseline:latest\": privileged (container \"c\" must not set securityContext.privileged=true)",
        );
    kc(&["create", "namespace", "adm-priv"], None).ok();
    kc(
        &[
            "label",
            "namespace",
            "adm-priv",
            "pod-security.kubernetes.io/enforce=privileged",
        ],
        None,
    )
    .ok();
    kc(
        &["apply", "-f", "-"],
        Some(&pod_yaml("adm-priv", "priv", true)),
    )
    .ok()
    .stdout_has("pod/priv created");
    // A workload with a privileged template is admitted with a warning kubectl prints.
    let deploy = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: privd\n  namespace: default\nspec:\n  selector:\n    matchLabels: {app: privd}\n  template:\n    metadata:\n      labels: {app: privd}\n    spec:\n      containers:\n      - name: c\n        image: busybox\n        securityContext:\n          privileged: true\n";
    kc(&["apply", "-f", "-"], Some(deploy))
        .ok()
        .stdout_has("deployment.apps/privd created")
        .stderr_has("Warning: would violate PodSecurity \"baseline:latest\": privileged (container \"c\" must not set securityContext.privileged=true)");

    // ResourceQuota: the second pod over pods=1 is refused with upstream's message.
    kc(&["create", "namespace", "adm-quota"], None).ok();
    kc(
        &["create", "quota", "q", "--hard=pods=1", "-n", "adm-quota"],
        None,
    )
    .ok();
    kc(&["run", "p1", "--image=busybox", "-n", "adm-quota"], None)
        .ok()
        .stdout_has("pod/p1 created");
    kc(&["run", "p2", "--image=busybox", "-n", "adm-quota"], None)
        .code_is(1)
        .stderr_has(
            "Error from server (Forbidden): pods \"p2\" is forbidden: exceeded quota: q, requested: pods=1, used: pods=1, limited: pods=1",
        );

    // LimitRange defaults show in the created pod, with the default tolerations and priority.
    kc(&["create", "namespace", "adm-lr"], None).ok();
    let lr = "apiVersion: v1\nkind: LimitRange\nmetadata:\n  name: lr\n  namespace: adm-lr\nspec:\n  limits:\n  - type: Container\n    default: {cpu: 500m, memory: 128Mi}\n    defaultRequest: {cpu: 100m, memory: 64Mi}\n";
    kc(&["apply", "-f", "-"], Some(lr)).ok();
    kc(&["apply", "-f", "-"], Some(&pod_yaml("adm-lr", "d", false))).ok();
    let pod = kc(&["get", "pod", "d", "-n", "adm-lr", "-o", "json"], None)
        .ok()
        .json();
    let res = &pod["spec"]["containers"][0]["resources"];
    assert_eq!(res["limits"]["cpu"], "500m", "{pod}");
    assert_eq!(res["limits"]["memory"], "128Mi", "{pod}");
    assert_eq!(res["requests"]["cpu"], "100m", "{pod}");
    assert_eq!(res["requests"]["memory"], "64Mi", "{pod}");
    assert_eq!(pod["spec"]["priority"], 0, "{pod}");
    let tolerations = pod["spec"]["tolerations"].to_string();
    assert!(
        tolerations.contains("node.kubernetes.io/unreachable")
            && tolerations.contains("\"tolerationSeconds\":300"),
        "{pod}"
    );
}
