//! Unit tests with a fake plugin runner.

use std::sync::Mutex;

use super::*;

/// One recorded invocation.
#[derive(Clone, Debug)]
struct Call {
    plugin: String,
    env: Vec<(String, String)>,
    stdin: Value,
}

impl Call {
    fn env(&self, key: &str) -> &str {
        self.env
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    }
}

/// Answers ADD of `bridge` with a fixed result, echoes prevResult for others, fails `fail` plugins.
#[derive(Default)]
struct FakeExec {
    calls: Mutex<Vec<Call>>,
    fail: Vec<String>,
}

impl FakeExec {
    fn calls(&self) -> Vec<Call> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

#[async_trait::async_trait]
impl PluginExec for FakeExec {
    async fn exec(
        &self,
        plugin: &Path,
        env: Vec<(String, String)>,
        stdin: Vec<u8>,
    ) -> Result<Vec<u8>, CniError> {
        let name = plugin
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let stdin: Value = serde_json::from_slice(&stdin).expect("stdin is JSON");
        let command = env
            .iter()
            .find(|(k, _)| k == "CNI_COMMAND")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        self.calls.lock().expect("lock").push(Call {
            plugin: name.clone(),
            env,
            stdin: stdin.clone(),
        });
        if self.fail.contains(&name) {
            return Err(CniError::Plugin {
                plugin: name,
                code: 7,
                msg: "failed to set bridge addr".into(),
                details: "could not add IP address".into(),
            });
        }
        if command == "DEL" {
            return Ok(Vec::new());
        }
        let out = match name.as_str() {
            "bridge" => json!({
                "cniVersion": "1.0.0",
                "interfaces": [{"name": "cni0"}, {"name": "eth0", "sandbox": "/var/run/netns/x"}],
                "ips": [{"address": "10.42.0.5/24", "gateway": "10.42.0.1", "interface": 1}],
            }),
            "loopback" => json!({"cniVersion": "1.0.0", "interfaces": [{"name": "lo"}]}),
            _ => stdin.get("prevResult").cloned().unwrap_or(Value::Null),
        };
        Ok(serde_json::to_vec(&out).expect("json"))
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    config: CniConfig,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).expect("bin");
    for p in ["bridge", "portmap", "loopback", "host-local"] {
        std::fs::write(bin.join(p), b"").expect("plugin");
    }
    let config = CniConfig {
        conf_dir: dir.path().join("net.d"),
        bin_dirs: vec![dir.path().join("missing"), bin],
        cache_dir: dir.path().join("cache"),
    };
    let net = NodeNetwork {
        network_name: "capstan".into(),
        bridge: "cni0".into(),
        pod_cidr: "10.42.0.0/24".into(),
        ipam_data_dir: dir.path().join("ipam"),
        mtu: Some(1450),
    };
    write_default_conflist(&config.conf_dir, &net).expect("conflist");
    Fixture { _dir: dir, config }
}

fn request() -> AttachRequest {
    AttachRequest {
        container_id: "sandbox1".into(),
        netns: "/var/run/netns/x".into(),
        ifname: "eth0".into(),
        pod_name: "web".into(),
        pod_namespace: "default".into(),
        pod_uid: "uid-1".into(),
        port_mappings: vec![PortMapping {
            host_port: 8080,
            container_port: 80,
            protocol: "TCP".into(),
            host_ip: String::new(),
        }],
    }
}

#[test]
fn default_conflist_has_bridge_ipam_and_portmap() {
    let f = fixture();
    let (path, list) = load_first(&f.config.conf_dir).expect("load");
    assert!(path.ends_with("10-capstan.conflist"));
    assert_eq!(list.name, "capstan");
    assert_eq!(list.cni_version, "1.0.0");
    let bridge = &list.plugins[0];
    assert_eq!(bridge["type"], "bridge");
    assert_eq!(bridge["bridge"], "cni0");
    assert_eq!(bridge["isGateway"], true);
    assert_eq!(bridge["ipMasq"], true);
    assert_eq!(bridge["hairpinMode"], true);
    assert_eq!(bridge["mtu"], 1450);
    assert_eq!(bridge["ipam"]["type"], "host-local");
    assert_eq!(bridge["ipam"]["ranges"][0][0]["subnet"], "10.42.0.0/24");
    assert!(
        bridge["ipam"]["dataDir"]
            .as_str()
            .expect("dataDir")
            .ends_with("ipam")
    );
    assert_eq!(list.plugins[1]["type"], "portmap");
    assert_eq!(list.plugins[1]["capabilities"]["portMappings"], true);
}

#[test]
fn writing_the_same_conflist_again_leaves_the_file_alone() {
    let f = fixture();
    let path = f.config.conf_dir.join("10-capstan.conflist");
    let before = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .expect("mtime");
    let net = NodeNetwork {
        network_name: "capstan".into(),
        bridge: "cni0".into(),
        pod_cidr: "10.42.0.0/24".into(),
        ipam_data_dir: f._dir.path().join("ipam"),
        mtu: Some(1450),
    };
    std::thread::sleep(std::time::Duration::from_millis(20));
    write_default_conflist(&f.config.conf_dir, &net).expect("again");
    let after = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .expect("mtime");
    assert_eq!(before, after);
    let changed = NodeNetwork {
        pod_cidr: "10.42.1.0/24".into(),
        ..net
    };
    write_default_conflist(&f.config.conf_dir, &changed).expect("changed");
    let (_, list) = load_first(&f.config.conf_dir).expect("load");
    assert_eq!(
        list.plugins[0]["ipam"]["ranges"][0][0]["subnet"],
        "10.42.1.0/24"
    );
}

#[test]
fn the_first_config_in_lexical_order_wins_and_a_conf_is_a_list_of_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("99-other.conflist"),
        br#"{"name":"z","plugins":[{"type":"ptp"}]}"#,
    )
    .expect("write");
    std::fs::write(dir.path().join("README"), b"not a config").expect("write");
    std::fs::write(
        dir.path().join("05-single.conf"),
        br#"{"cniVersion":"0.4.0","name":"single","type":"bridge","bridge":"br9"}"#,
    )
    .expect("write");
    let (path, list) = load_first(dir.path()).expect("load");
    assert!(path.ends_with("05-single.conf"));
    assert_eq!(list.name, "single");
    assert_eq!(list.cni_version, "0.4.0");
    assert_eq!(list.plugins.len(), 1);
    assert_eq!(list.plugins[0]["bridge"], "br9");

    let empty = tempfile::tempdir().expect("tempdir");
    let err = load_first(empty.path()).expect_err("no config");
    assert!(matches!(err, CniError::NoConfig { .. }), "{err}");
    std::fs::write(
        empty.path().join("1.conflist"),
        br#"{"name":"x","plugins":[{}]}"#,
    )
    .expect("write");
    let err = load_first(empty.path()).expect_err("invalid");
    assert!(err.to_string().contains("a plugin without a type"), "{err}");
}

#[test]
fn plugin_env_carries_the_cni_variables_and_k8s_args() {
    let env = plugin_env("ADD", &request(), "eth0", &["/a".into(), "/b".into()]);
    let get = |k: &str| {
        env.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(get("CNI_COMMAND"), Some("ADD"));
    assert_eq!(get("CNI_CONTAINERID"), Some("sandbox1"));
    assert_eq!(get("CNI_NETNS"), Some("/var/run/netns/x"));
    assert_eq!(get("CNI_IFNAME"), Some("eth0"));
    assert_eq!(get("CNI_PATH"), Some("/a:/b"));
    assert_eq!(
        get("CNI_ARGS"),
        Some(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=sandbox1;K8S_POD_UID=uid-1"
        )
    );
}

#[test]
fn result_ips_reads_every_result_version() {
    let v1 =
        json!({"cniVersion":"1.0.0","ips":[{"address":"10.1.0.2/24"},{"address":"fd00::2/64"}]});
    assert_eq!(
        result_ips(&v1),
        vec![
            "10.1.0.2".parse::<IpAddr>().expect("ip"),
            "fd00::2".parse().expect("ip")
        ]
    );
    let v02 = json!({"cniVersion":"0.2.0","ip4":{"ip":"10.1.0.3/16"}});
    assert_eq!(
        result_ips(&v02),
        vec!["10.1.0.3".parse::<IpAddr>().expect("ip")]
    );
    assert!(result_ips(&json!({})).is_empty());
}

#[test]
fn error_json_is_parsed_and_shown() {
    let e = parse_error(br#"{"cniVersion":"1.0.0","code":11,"msg":"no IP addresses available","details":"range full"}"#)
        .expect("error json");
    assert_eq!(e.code, 11);
    assert_eq!(e.msg, "no IP addresses available");
    assert!(parse_error(b"garbage").is_none());
    let err = CniError::Plugin {
        plugin: "host-local".into(),
        code: e.code,
        msg: e.msg,
        details: e.details,
    };
    assert_eq!(
        err.to_string(),
        "plugin host-local failed (code 11): no IP addresses available: range full"
    );
}

#[tokio::test]
async fn add_chains_results_and_passes_port_mappings_to_portmap_only() {
    let f = fixture();
    let exec = Arc::new(FakeExec::default());
    let cni = Cni::with_exec(f.config.clone(), exec.clone());
    let result = cni.add(&request()).await.expect("add");
    assert_eq!(result.ips, vec!["10.42.0.5".parse::<IpAddr>().expect("ip")]);
    let calls = exec.calls();
    let order: Vec<_> = calls
        .iter()
        .map(|c| (c.plugin.as_str(), c.env("CNI_IFNAME")))
        .collect();
    assert_eq!(
        order,
        vec![("loopback", "lo"), ("bridge", "eth0"), ("portmap", "eth0")]
    );
    let bridge = &calls[1].stdin;
    assert_eq!(bridge["name"], "capstan");
    assert_eq!(bridge["cniVersion"], "1.0.0");
    assert!(bridge.get("prevResult").is_none());
    assert!(bridge.get("runtimeConfig").is_none());
    let portmap = &calls[2].stdin;
    assert_eq!(portmap["prevResult"]["ips"][0]["address"], "10.42.0.5/24");
    assert_eq!(
        portmap["runtimeConfig"]["portMappings"],
        json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}])
    );
    let cache = f.config.cache_dir.join("results").join("sandbox1-eth0");
    assert!(cache.is_file(), "result cached at {}", cache.display());
}

#[tokio::test]
async fn del_runs_in_reverse_with_the_cached_result_and_config_and_is_idempotent() {
    let f = fixture();
    let exec = Arc::new(FakeExec::default());
    let cni = Cni::with_exec(f.config.clone(), exec.clone());
    cni.add(&request()).await.expect("add");
    // The config changes (or vanishes) after ADD: DEL still uses what ADD used.
    std::fs::remove_file(f.config.conf_dir.join("10-capstan.conflist")).expect("rm");
    let mut req = request();
    req.port_mappings.clear();
    cni.del(&req).await.expect("del");
    let calls: Vec<_> = exec.calls().into_iter().skip(3).collect();
    let order: Vec<_> = calls
        .iter()
        .map(|c| (c.plugin.as_str(), c.env("CNI_COMMAND")))
        .collect();
    assert_eq!(
        order,
        vec![("portmap", "DEL"), ("bridge", "DEL"), ("loopback", "DEL")]
    );
    assert_eq!(
        calls[0].stdin["prevResult"]["ips"][0]["address"],
        "10.42.0.5/24"
    );
    assert_eq!(
        calls[1].stdin["prevResult"]["ips"][0]["address"],
        "10.42.0.5/24"
    );
    assert_eq!(
        calls[0].stdin["runtimeConfig"]["portMappings"][0]["hostPort"],
        8080
    );
    assert!(
        !f.config
            .cache_dir
            .join("results")
            .join("sandbox1-eth0")
            .exists()
    );
    // Nothing cached and no config: DEL is still fine.
    cni.del(&req).await.expect("second del");
}

#[tokio::test]
async fn a_failing_plugin_surfaces_its_error_and_releases_what_was_taken() {
    let f = fixture();
    let exec = Arc::new(FakeExec {
        fail: vec!["portmap".into()],
        ..Default::default()
    });
    let cni = Cni::with_exec(f.config.clone(), exec.clone());
    let err = cni.add(&request()).await.expect_err("portmap fails");
    let text = err.to_string();
    assert!(
        text.contains("network capstan: ADD on eth0 failed"),
        "{text}"
    );
    assert!(
        text.contains("failed to set bridge addr: could not add IP address"),
        "{text}"
    );
    let order: Vec<_> = exec
        .calls()
        .iter()
        .map(|c| format!("{} {}", c.plugin, c.env("CNI_COMMAND")))
        .collect();
    assert_eq!(
        order,
        vec![
            "loopback ADD",
            "bridge ADD",
            "portmap ADD",
            "portmap DEL",
            "bridge DEL"
        ]
    );
    assert!(
        !f.config
            .cache_dir
            .join("results")
            .join("sandbox1-eth0")
            .exists()
    );
}

#[tokio::test]
async fn a_missing_plugin_binary_is_an_error() {
    let f = fixture();
    std::fs::write(
        f.config.conf_dir.join("00-first.conflist"),
        br#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"nosuch"}]}"#,
    )
    .expect("write");
    let cni = Cni::with_exec(f.config.clone(), Arc::new(FakeExec::default()));
    let err = cni.add(&request()).await.expect_err("missing");
    assert!(
        err.to_string().contains("failed to find plugin \"nosuch\""),
        "{err}"
    );
}

#[test]
fn leftover_masquerade_rules_are_found_by_comment() {
    let save = r#"*nat
:POSTROUTING ACCEPT [0:0]
:CNI-6dfb3bb5c072e72b77b361a1 - [0:0]
-A POSTROUTING -m comment --comment "CNI portfwd requiring masquerade" -j CNI-HOSTPORT-MASQ
-A POSTROUTING -s 10.42.0.5/32 -m comment --comment "name: \"capstan\" id: \"abc123\"" -j CNI-6dfb3bb5c072e72b77b361a1
-A POSTROUTING -s 10.42.0.6/32 -m comment --comment "name: \"capstan\" id: \"other\"" -j CNI-77
-A CNI-6dfb3bb5c072e72b77b361a1 -d 10.42.0.0/24 -m comment --comment "name: \"capstan\" id: \"abc123\"" -j ACCEPT
COMMIT
"#;
    let rules = leftover_rules(save, "capstan", "abc123");
    assert_eq!(
        rules,
        vec![vec![
            "-A",
            "POSTROUTING",
            "-s",
            "10.42.0.5/32",
            "-m",
            "comment",
            "--comment",
            "name: \"capstan\" id: \"abc123\"",
            "-j",
            "CNI-6dfb3bb5c072e72b77b361a1",
        ]]
    );
    assert!(leftover_rules(save, "other-net", "abc123").is_empty());
    assert_eq!(
        split_args(r#"a "b c" "d\\e" """#),
        vec!["a", "b c", "d\\e", ""]
    );
}
