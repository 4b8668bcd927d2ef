//! RBAC end to end: Roles and bindings for a ServiceAccount, kubectl auth can-i (--list).

use crate::harness::{Kubectl, Out, Server, run};
use std::time::{Duration, Instant};

const K: Kubectl = Kubectl::Minor(32);
const A: &str = "rbac-e2e-a";
const B: &str = "rbac-e2e-b";

/// Runs kubectl until `done` accepts its result, at most `secs` seconds; returns that result.
fn poll(secs: u64, mut attempt: impl FnMut() -> Out, done: impl Fn(&Out) -> bool) -> Out {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let out = attempt();
        if done(&out) {
            return out;
        }
        assert!(Instant::now() < deadline, "condition not reached: {out}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn service_account_role_can_i_and_aggregated_roles() {
    let server = Server::start();
    for args in [
        vec!["create", "namespace", A],
        vec!["create", "namespace", B],
        vec!["create", "serviceaccount", "sa", "-n", A],
        vec![
            "create",
            "role",
            "pod-reader",
            "--verb=get,list",
            "--resource=pods",
            "-n",
            A,
        ],
        vec![
            "create",
            "rolebinding",
            "sa-reads-pods",
            "--role=pod-reader",
            "--serviceaccount",
            &format!("{A}:sa"),
            "-n",
            A,
        ],
    ] {
        server.kubectl(K, &args, None).ok();
    }
    let token = server
        .kubectl(K, &["create", "token", "sa", "-n", A], None)
        .ok()
        .stdout
        .trim()
        .to_string();
    let sa = server.token_kubeconfig("sa.kubeconfig", &token);
    let as_sa = |args: &[&str]| run(server.kubectl_cmd_with(K, &sa, args), None);

    // Allowed where the Role is bound; the index follows the binding within moments.
    poll(
        10,
        || as_sa(&["get", "pods", "-n", A]),
        |o| o.status.success(),
    );
    as_sa(&["get", "pod", "nope", "-n", A])
        .code_is(1)
        .stderr_has("pods \"nope\" not found");
    as_sa(&["get", "pods", "-n", B]).code_is(1).stderr_has(&format!(
        "Error from server (Forbidden): pods is forbidden: User \"system:serviceaccount:{A}:sa\" cannot list resource \"pods\" in API group \"\" in the namespace \"{B}\""
    ));
    as_sa(&["get", "secrets", "-n", A])
        .code_is(1)
        .stderr_has("secrets is forbidden");
    as_sa(&["delete", "pod", "x", "-n", A])
        .code_is(1)
        .stderr_has("Forbidden");

    // kubectl auth can-i as the service account, and as the admin impersonating it.
    as_sa(&["auth", "can-i", "get", "pods", "-n", A])
        .ok()
        .stdout_has("yes");
    as_sa(&["auth", "can-i", "get", "pods", "-n", B])
        .code_is(1)
        .stdout_has("no");
    as_sa(&["auth", "can-i", "create", "deployments", "-n", A])
        .code_is(1)
        .stdout_has("no");
    let list = as_sa(&["auth", "can-i", "--list", "-n", A]).ok();
    let pods = list
        .lines()
        .into_iter()
        .find(|l| l.starts_with("pods "))
        .unwrap_or_else(|| panic!("no pods row: {list}"))
        .to_string();
    assert!(pods.ends_with("[get list]"), "{list}");
    let list = list.stdout_has("selfsubjectaccessreviews.authorization.k8s.io");
    assert!(!list.stdout.contains("secrets"), "{list}");
    let sa_user = format!("system:serviceaccount:{A}:sa");
    server
        .kubectl(
            K,
            &["auth", "can-i", "list", "pods", "-n", A, "--as", &sa_user],
            None,
        )
        .ok()
        .stdout_has("yes");
    server
        .kubectl(
            K,
            &["auth", "can-i", "list", "pods", "-n", B, "--as", &sa_user],
            None,
        )
        .code_is(1)
        .stdout_has("no");

    // The admin (system:masters) keeps full access.
    server.kubectl(K, &["get", "pods", "-A"], None).ok();
    server
        .kubectl(K, &["auth", "can-i", "*", "*"], None)
        .ok()
        .stdout_has("yes");

    // The aggregation controller fills admin/edit/view from the aggregate-to-* roles.
    let rules_of = |role: &str| {
        let out = server
            .kubectl(K, &["get", "clusterrole", role, "-o", "json"], None)
            .ok();
        out.json()["rules"].to_string()
    };
    poll(
        30,
        || server.kubectl(K, &["get", "clusterrole", "admin", "-o", "json"], None),
        |o| {
            o.status.success() && o.stdout.contains("rolebindings") && o.stdout.contains("pods/log")
        },
    );
    let view = rules_of("view");
    assert!(
        view.contains("\"pods\"") && !view.contains("secrets"),
        "{view}"
    );
    let edit = rules_of("edit");
    assert!(
        edit.contains("secrets") && edit.contains("pods/log"),
        "{edit}"
    );
}
