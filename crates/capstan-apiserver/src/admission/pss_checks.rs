//! The Pod Security Standards checks (baseline and restricted, latest version), each giving a
//! forbidden reason and detail in upstream's wording when a pod spec fails it.

use serde_json::Value;
use std::collections::BTreeSet;

/// A failed check: (reason, detail).
pub type Violation = (String, String);

/// Capabilities the baseline level lets containers add (the container runtime's defaults).
const BASELINE_CAPS: [&str; 13] = [
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];
const SAFE_SYSCTLS: [&str; 12] = [
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
];
const SELINUX_TYPES: [&str; 5] = [
    "",
    "container_t",
    "container_init_t",
    "container_kvm_t",
    "container_engine_t",
];
const RESTRICTED_VOLUMES_OK: [&str; 8] = [
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

fn plural<'a>(one: &'a str, many: &'a str, n: usize) -> &'a str {
    if n == 1 { one } else { many }
}

fn join_quote<S: AsRef<str>>(items: &[S]) -> String {
    items
        .iter()
        .map(|s| format!("{:?}", s.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `container "a"` or `containers "a", "b"`.
fn containers_phrase(names: &[String]) -> String {
    format!(
        "{} {}",
        plural("container", "containers", names.len()),
        join_quote(names)
    )
}

fn all_containers(spec: &Value) -> Vec<&Value> {
    super::containers(spec).collect()
}

fn name(c: &Value) -> String {
    c["name"].as_str().unwrap_or_default().to_string()
}

/// Names of containers for which `bad` holds.
fn bad_containers(spec: &Value, bad: impl Fn(&Value) -> bool) -> Vec<String> {
    all_containers(spec)
        .into_iter()
        .filter(|c| bad(c))
        .map(name)
        .collect()
}

/// Baseline checks, in upstream's order; `restricted` replaces the checks that restricted
/// overrides (capabilities, seccomp, hostPath volumes) with their stricter forms.
pub fn check(meta: &Value, spec: &Value, restricted: bool) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut push = |v: Option<Violation>| out.extend(v);
    if restricted {
        push(allow_privilege_escalation(spec));
    }
    push(app_armor(meta, spec));
    if restricted {
        push(capabilities_restricted(spec));
    } else {
        push(capabilities_baseline(spec));
    }
    push(host_namespaces(spec));
    if !restricted {
        push(host_path_volumes(spec));
    }
    push(host_ports(spec));
    push(privileged(spec));
    push(proc_mount(spec));
    if restricted {
        push(restricted_volumes(spec));
        push(run_as_non_root(spec));
        push(run_as_user(spec));
    }
    push(se_linux_options(spec));
    if restricted {
        push(seccomp_restricted(spec));
    } else {
        push(seccomp_baseline(spec));
    }
    push(sysctls(spec));
    push(windows_host_process(spec));
    out
}

fn allow_privilege_escalation(spec: &Value) -> Option<Violation> {
    let bad = bad_containers(spec, |c| {
        c["securityContext"]["allowPrivilegeEscalation"].as_bool() != Some(false)
    });
    (!bad.is_empty()).then(|| {
        (
            "allowPrivilegeEscalation != false".into(),
            format!(
                "{} must set securityContext.allowPrivilegeEscalation=false",
                containers_phrase(&bad)
            ),
        )
    })
}

fn app_armor(meta: &Value, spec: &Value) -> Option<Violation> {
    let ok_type = |t: &str| t.is_empty() || t == "RuntimeDefault" || t == "Localhost";
    let mut bad = Vec::new();
    for (k, v) in meta["annotations"].as_object().into_iter().flatten() {
        if k.starts_with("container.apparmor.security.beta.kubernetes.io/") {
            let v = v.as_str().unwrap_or_default();
            if !(v.is_empty() || v == "runtime/default" || v.starts_with("localhost/")) {
                bad.push(format!("{k}={v:?}"));
            }
        }
    }
    let t = spec["securityContext"]["appArmorProfile"]["type"]
        .as_str()
        .unwrap_or_default();
    if !ok_type(t) {
        bad.push(format!("pod {t:?}"));
    }
    for c in all_containers(spec) {
        let t = c["securityContext"]["appArmorProfile"]["type"]
            .as_str()
            .unwrap_or_default();
        if !ok_type(t) {
            bad.push(format!("container {:?} {t:?}", name(c)));
        }
    }
    (!bad.is_empty()).then(|| {
        (
            plural(
                "forbidden AppArmor profile",
                "forbidden AppArmor profiles",
                bad.len(),
            )
            .into(),
            bad.join(", "),
        )
    })
}

fn caps(c: &Value, field: &str) -> Vec<String> {
    c["securityContext"]["capabilities"][field]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(String::from)
        .collect()
}

fn capabilities_baseline(spec: &Value) -> Option<Violation> {
    let mut names = Vec::new();
    let mut added = BTreeSet::new();
    for c in all_containers(spec) {
        let bad: Vec<String> = caps(c, "add")
            .into_iter()
            .filter(|a| !BASELINE_CAPS.contains(&a.as_str()))
            .collect();
        if !bad.is_empty() {
            names.push(name(c));
            added.extend(bad);
        }
    }
    (!names.is_empty()).then(|| {
        let added: Vec<String> = added.into_iter().collect();
        (
            "non-default capabilities".into(),
            format!(
                "{} must not include {} in securityContext.capabilities.add",
                containers_phrase(&names),
                join_quote(&added)
            ),
        )
    })
}

fn capabilities_restricted(spec: &Value) -> Option<Violation> {
    let mut no_drop = Vec::new();
    let mut bad_add = Vec::new();
    let mut added = BTreeSet::new();
    for c in all_containers(spec) {
        if !caps(c, "drop").iter().any(|d| d == "ALL") {
            no_drop.push(name(c));
        }
        let bad: Vec<String> = caps(c, "add")
            .into_iter()
            .filter(|a| a != "NET_BIND_SERVICE")
            .collect();
        if !bad.is_empty() {
            bad_add.push(name(c));
            added.extend(bad);
        }
    }
    let mut details = Vec::new();
    if !no_drop.is_empty() {
        details.push(format!(
            "{} must set securityContext.capabilities.drop=[\"ALL\"]",
            containers_phrase(&no_drop)
        ));
    }
    if !bad_add.is_empty() {
        let added: Vec<String> = added.into_iter().collect();
        details.push(format!(
            "{} must not include {} in securityContext.capabilities.add",
            containers_phrase(&bad_add),
            join_quote(&added)
        ));
    }
    (!details.is_empty()).then(|| ("unrestricted capabilities".into(), details.join("; ")))
}

fn host_namespaces(spec: &Value) -> Option<Violation> {
    let set: Vec<String> = ["hostNetwork", "hostPID", "hostIPC"]
        .into_iter()
        .filter(|f| spec[*f] == true)
        .map(|f| format!("{f}=true"))
        .collect();
    (!set.is_empty()).then(|| ("host namespaces".into(), set.join(", ")))
}

fn volumes(spec: &Value) -> impl Iterator<Item = &Value> {
    spec["volumes"].as_array().into_iter().flatten()
}

fn host_path_volumes(spec: &Value) -> Option<Violation> {
    let names: Vec<String> = volumes(spec)
        .filter(|v| v.get("hostPath").is_some_and(|h| !h.is_null()))
        .map(name)
        .collect();
    (!names.is_empty()).then(|| {
        (
            "hostPath volumes".into(),
            format!(
                "{} {}",
                plural("volume", "volumes", names.len()),
                join_quote(&names)
            ),
        )
    })
}

fn host_ports(spec: &Value) -> Option<Violation> {
    let mut names = Vec::new();
    let mut ports = BTreeSet::new();
    for c in all_containers(spec) {
        let mut bad = false;
        for p in c["ports"].as_array().into_iter().flatten() {
            if let Some(hp) = p["hostPort"].as_i64().filter(|p| *p != 0) {
                bad = true;
                ports.insert(hp.to_string());
            }
        }
        if bad {
            names.push(name(c));
        }
    }
    (!names.is_empty()).then(|| {
        // Upstream sorts the port numbers as strings.
        let ports: Vec<String> = ports.into_iter().collect();
        (
            "hostPort".into(),
            format!(
                "{} {} {} {}",
                containers_phrase(&names),
                plural("uses", "use", names.len()),
                plural("hostPort", "hostPorts", ports.len()),
                ports.join(", ")
            ),
        )
    })
}

fn privileged(spec: &Value) -> Option<Violation> {
    let bad = bad_containers(spec, |c| c["securityContext"]["privileged"] == true);
    (!bad.is_empty()).then(|| {
        (
            "privileged".into(),
            format!(
                "{} must not set securityContext.privileged=true",
                containers_phrase(&bad)
            ),
        )
    })
}

fn proc_mount(spec: &Value) -> Option<Violation> {
    let mut names = Vec::new();
    let mut values = BTreeSet::new();
    for c in all_containers(spec) {
        if let Some(p) = c["securityContext"]["procMount"].as_str()
            && p != "Default"
        {
            names.push(name(c));
            values.insert(p.to_string());
        }
    }
    (!names.is_empty()).then(|| {
        let values: Vec<String> = values.into_iter().collect();
        (
            "procMount".into(),
            format!(
                "{} must not set securityContext.procMount to {}",
                containers_phrase(&names),
                join_quote(&values)
            ),
        )
    })
}

fn restricted_volumes(spec: &Value) -> Option<Violation> {
    let mut names = Vec::new();
    let mut types = BTreeSet::new();
    for v in volumes(spec) {
        let bad: Vec<&String> = v
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, val)| {
                k.as_str() != "name"
                    && !val.is_null()
                    && !RESTRICTED_VOLUMES_OK.contains(&k.as_str())
            })
            .map(|(k, _)| k)
            .collect();
        if !bad.is_empty() {
            names.push(name(v));
            types.extend(bad.into_iter().cloned());
        }
    }
    (!names.is_empty()).then(|| {
        let types: Vec<String> = types.into_iter().collect();
        (
            "restricted volume types".into(),
            format!(
                "{} {} {} {} {}",
                plural("volume", "volumes", names.len()),
                join_quote(&names),
                plural("uses", "use", names.len()),
                plural(
                    "restricted volume type",
                    "restricted volume types",
                    types.len()
                ),
                join_quote(&types)
            ),
        )
    })
}

fn run_as_non_root(spec: &Value) -> Option<Violation> {
    let pod = spec["securityContext"]["runAsNonRoot"].as_bool();
    let mut details = Vec::new();
    if pod == Some(false) {
        details.push("pod must not set securityContext.runAsNonRoot=false".to_string());
    }
    let explicit_false = bad_containers(spec, |c| c["securityContext"]["runAsNonRoot"] == false);
    if !explicit_false.is_empty() {
        details.push(format!(
            "{} must not set securityContext.runAsNonRoot=false",
            containers_phrase(&explicit_false)
        ));
    }
    if pod != Some(true) {
        let unset = bad_containers(spec, |c| c["securityContext"]["runAsNonRoot"].is_null());
        if !unset.is_empty() {
            details.push(format!(
                "pod or {} must set securityContext.runAsNonRoot=true",
                containers_phrase(&unset)
            ));
        }
    }
    (!details.is_empty()).then(|| ("runAsNonRoot != true".into(), details.join("; ")))
}

fn run_as_user(spec: &Value) -> Option<Violation> {
    let mut details = Vec::new();
    if spec["securityContext"]["runAsUser"] == 0 {
        details.push("pod must not set runAsUser=0".to_string());
    }
    let bad = bad_containers(spec, |c| c["securityContext"]["runAsUser"] == 0);
    if !bad.is_empty() {
        details.push(format!(
            "{} must not set runAsUser=0",
            containers_phrase(&bad)
        ));
    }
    (!details.is_empty()).then(|| ("runAsUser=0".into(), details.join("; ")))
}

fn se_linux_options(spec: &Value) -> Option<Violation> {
    let mut types = BTreeSet::new();
    let (mut user, mut role) = (false, false);
    let mut check = |o: &Value| {
        if !o.is_object() {
            return true;
        }
        let t = o["type"].as_str().unwrap_or_default();
        let mut ok = true;
        if !SELINUX_TYPES.contains(&t) {
            types.insert(t.to_string());
            ok = false;
        }
        if o["user"].as_str().is_some_and(|s| !s.is_empty()) {
            user = true;
            ok = false;
        }
        if o["role"].as_str().is_some_and(|s| !s.is_empty()) {
            role = true;
            ok = false;
        }
        ok
    };
    let mut setters = Vec::new();
    if !check(&spec["securityContext"]["seLinuxOptions"]) {
        setters.push("pod".to_string());
    }
    let bad: Vec<String> = all_containers(spec)
        .into_iter()
        .filter(|c| !check(&c["securityContext"]["seLinuxOptions"]))
        .map(name)
        .collect();
    if !bad.is_empty() {
        setters.push(containers_phrase(&bad));
    }
    if setters.is_empty() {
        return None;
    }
    let mut data = Vec::new();
    if !types.is_empty() {
        let types: Vec<String> = types.into_iter().collect();
        data.push(format!(
            "{} {}",
            plural("type", "types", types.len()),
            join_quote(&types)
        ));
    }
    if user {
        data.push("user may not be set".into());
    }
    if role {
        data.push("role may not be set".into());
    }
    Some((
        "seLinuxOptions".into(),
        format!(
            "{} set forbidden securityContext.seLinuxOptions: {}",
            setters.join(" and "),
            data.join("; ")
        ),
    ))
}

fn seccomp_type(sc: &Value) -> Option<&str> {
    sc["seccompProfile"]["type"].as_str()
}

fn seccomp_baseline(spec: &Value) -> Option<Violation> {
    let mut details = Vec::new();
    if seccomp_type(&spec["securityContext"]) == Some("Unconfined") {
        details.push(
            "pod must not set securityContext.seccompProfile.type to \"Unconfined\"".to_string(),
        );
    }
    let bad = bad_containers(spec, |c| {
        seccomp_type(&c["securityContext"]) == Some("Unconfined")
    });
    if !bad.is_empty() {
        details.push(format!(
            "{} must not set securityContext.seccompProfile.type to \"Unconfined\"",
            containers_phrase(&bad)
        ));
    }
    (!details.is_empty()).then(|| ("seccompProfile".into(), details.join("; ")))
}

fn seccomp_restricted(spec: &Value) -> Option<Violation> {
    let ok = |t: &str| t == "RuntimeDefault" || t == "Localhost";
    let pod = seccomp_type(&spec["securityContext"]);
    let mut details = Vec::new();
    let mut bad_values = BTreeSet::new();
    if let Some(t) = pod.filter(|t| !ok(t)) {
        details.push(format!(
            "pod must not set securityContext.seccompProfile.type to {t:?}"
        ));
    }
    let mut explicit = Vec::new();
    let mut unset = Vec::new();
    for c in all_containers(spec) {
        match seccomp_type(&c["securityContext"]) {
            Some(t) if !ok(t) => {
                explicit.push(name(c));
                bad_values.insert(t.to_string());
            }
            None if !pod.is_some_and(ok) => unset.push(name(c)),
            _ => {}
        }
    }
    if !explicit.is_empty() {
        let values: Vec<String> = bad_values.into_iter().collect();
        details.push(format!(
            "{} must not set securityContext.seccompProfile.type to {}",
            containers_phrase(&explicit),
            join_quote(&values)
        ));
    }
    if !unset.is_empty() {
        details.push(format!(
            "pod or {} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\"",
            containers_phrase(&unset)
        ));
    }
    (!details.is_empty()).then(|| ("seccompProfile".into(), details.join("; ")))
}

fn sysctls(spec: &Value) -> Option<Violation> {
    let bad: Vec<String> = spec["securityContext"]["sysctls"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["name"].as_str())
        .filter(|n| !SAFE_SYSCTLS.contains(n))
        .map(String::from)
        .collect();
    (!bad.is_empty()).then(|| ("forbidden sysctls".into(), bad.join(", ")))
}

fn windows_host_process(spec: &Value) -> Option<Violation> {
    let hp = |sc: &Value| sc["windowsOptions"]["hostProcess"] == true;
    let pod = hp(&spec["securityContext"]);
    let bad = bad_containers(spec, |c| hp(&c["securityContext"]));
    let who = match (pod, bad.is_empty()) {
        (false, true) => return None,
        (true, true) => "pod".to_string(),
        (false, false) => containers_phrase(&bad),
        (true, false) => format!("pod and {}", containers_phrase(&bad)),
    };
    Some((
        "hostProcess".into(),
        format!("{who} must not set securityContext.windowsOptions.hostProcess=true"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn baseline_accepts_a_plain_pod_and_names_each_violation() {
        let plain = json!({"containers": [{"name": "c", "image": "x"}]});
        assert!(check(&json!({}), &plain, false).is_empty());
        let bad = json!({
            "hostNetwork": true, "hostPID": true,
            "containers": [
                {"name": "a", "securityContext": {"privileged": true, "capabilities": {"add": ["NET_ADMIN", "CHOWN"]}},
                 "ports": [{"containerPort": 80, "hostPort": 8080}]},
                {"name": "b", "securityContext": {"privileged": true, "procMount": "Unmasked", "seccompProfile": {"type": "Unconfined"}}},
            ],
            "volumes": [{"name": "data", "hostPath": {"path": "/tmp"}}],
            "securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "1"}], "seLinuxOptions": {"type": "spc_t"}},
        });
        let got = check(&json!({}), &bad, false);
        let want: Vec<Violation> = [
            ("non-default capabilities", "container \"a\" must not include \"NET_ADMIN\" in securityContext.capabilities.add"),
            ("host namespaces", "hostNetwork=true, hostPID=true"),
            ("hostPath volumes", "volume \"data\""),
            ("hostPort", "container \"a\" uses hostPort 8080"),
            ("privileged", "containers \"a\", \"b\" must not set securityContext.privileged=true"),
            ("procMount", "container \"b\" must not set securityContext.procMount to \"Unmasked\""),
            ("seLinuxOptions", "pod set forbidden securityContext.seLinuxOptions: type \"spc_t\""),
            ("seccompProfile", "container \"b\" must not set securityContext.seccompProfile.type to \"Unconfined\""),
            ("forbidden sysctls", "kernel.msgmax"),
        ]
        .iter()
        .map(|(r, d)| (r.to_string(), d.to_string()))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn restricted_requires_hardening() {
        let plain = json!({"containers": [{"name": "c", "image": "x"}], "volumes": [{"name": "v", "emptyDir": {}}]});
        let got: Vec<String> = check(&json!({}), &plain, true)
            .into_iter()
            .map(|(r, d)| format!("{r} ({d})"))
            .collect();
        assert_eq!(
            got.join(", "),
            "allowPrivilegeEscalation != false (container \"c\" must set securityContext.allowPrivilegeEscalation=false), \
             unrestricted capabilities (container \"c\" must set securityContext.capabilities.drop=[\"ALL\"]), \
             runAsNonRoot != true (pod or container \"c\" must set securityContext.runAsNonRoot=true), \
             seccompProfile (pod or container \"c\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")"
        );
        let hardened = json!({
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "c", "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}}],
            "volumes": [{"name": "v", "configMap": {"name": "x"}}],
        });
        assert!(check(&json!({}), &hardened, true).is_empty());
        let hp = json!({"containers": [], "volumes": [{"name": "h", "hostPath": {"path": "/"}}]});
        assert_eq!(
            restricted_volumes(&hp),
            Some((
                "restricted volume types".into(),
                "volume \"h\" uses restricted volume type \"hostPath\"".into()
            ))
        );
    }
}
