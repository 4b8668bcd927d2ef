//! `capstan images import/ls/inspect/rm/pull` end to end: the built binary against its own
//! data dir and a real docker-registry on loopback.

use std::path::Path;
use std::process::Command;

use capstan_runtime::image::RegistryAuth;
use capstan_runtime::testimage::{
    TestImageOptions, TestRegistry, busybox_docker_archive, busybox_oci_archive_with,
    busybox_oci_layout, push_to_registry,
};

use crate::harness::Out;

fn capstan(data_dir: &Path, args: &[&str]) -> Out {
    let output = Command::new(env!("CARGO_BIN_EXE_capstan"))
        .arg("images")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "warn")
        .output()
        .expect("running capstan");
    Out {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        command: format!("capstan images {}", args.join(" ")),
    }
}

fn count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn images_import_ls_inspect_rm() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let oci = tmp.path().join("busybox.tar");
    let opts = TestImageOptions {
        entrypoint: Some(vec!["/bin/echo".into()]),
        cmd: Some(vec!["hello".into()]),
        ..Default::default()
    };
    let built = busybox_oci_archive_with(&oci, "busybox:e2e", &opts).unwrap();
    let docker = tmp.path().join("docker.tar");
    let built_docker = busybox_docker_archive(&docker, "example.com/app:v1").unwrap();

    capstan(&data, &["import", oci.to_str().unwrap()])
        .ok()
        .stdout_has("docker.io/library/busybox:e2e")
        .stdout_has(&built.config_digest);
    capstan(&data, &["import", docker.to_str().unwrap()])
        .ok()
        .stdout_has("example.com/app:v1");
    capstan(&data, &["ls"])
        .ok()
        .stdout_has("docker.io/library/busybox:e2e")
        .stdout_has("example.com/app:v1")
        .stdout_has(&built.config_digest[7..19]);
    let ids = capstan(&data, &["ls", "-q"]).ok();
    assert_eq!(
        ids.lines(),
        vec![
            built.config_digest.as_str(),
            built_docker.config_digest.as_str()
        ]
    );

    let inspect = capstan(&data, &["inspect", "busybox:e2e"]).ok().json();
    assert_eq!(inspect["id"], built.config_digest.as_str());
    assert_eq!(inspect["manifestDigest"], built.manifest_digest.as_str());
    assert_eq!(
        inspect["config"]["config"]["Entrypoint"],
        serde_json::json!(["/bin/echo"])
    );
    assert_eq!(
        inspect["config"]["config"]["Cmd"],
        serde_json::json!(["hello"])
    );

    // A corrupt archive fails clearly and changes nothing.
    let blobs = data.join("images/blobs/sha256");
    let before = count(&blobs);
    let bytes = std::fs::read(&oci).unwrap();
    let broken = tmp.path().join("broken.tar");
    std::fs::write(&broken, &bytes[..bytes.len() / 3]).unwrap();
    capstan(&data, &["import", broken.to_str().unwrap()])
        .code_is(1)
        .stderr_has("invalid archive");
    assert_eq!(count(&blobs), before);
    assert_eq!(count(&data.join("images/tmp")), 0);
    assert_eq!(capstan(&data, &["ls", "-q"]).ok().lines().len(), 2);

    capstan(&data, &["rm", "busybox:e2e"])
        .ok()
        .stdout_has("deleted");
    capstan(&data, &["inspect", "busybox:e2e"])
        .code_is(1)
        .stderr_has("not found");
    capstan(&data, &["rm", "busybox:e2e"])
        .code_is(1)
        .stderr_has("not found");
    capstan(&data, &["rm", &built_docker.config_digest]).ok();
    assert_eq!(capstan(&data, &["ls", "-q"]).ok().lines().len(), 0);
    assert_eq!(count(&blobs), 0);
}

#[test]
fn images_pull_with_credentials() {
    let registry = TestRegistry::start_with(Some(("bob", "pw"))).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let layout = tmp.path().join("layout");
    let built = busybox_oci_layout(&layout, "x", &TestImageOptions::default()).unwrap();
    let target = format!("{}/e2e/busybox:1", registry.host());
    let auth = RegistryAuth::Basic {
        username: "bob".into(),
        password: "pw".into(),
    };
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(push_to_registry(&layout, &target, Some(auth)))
        .unwrap();

    capstan(&data, &["pull", &target])
        .code_is(1)
        .stderr_has("401");
    capstan(&data, &["pull", &target, "--creds", "bob:wrong"])
        .code_is(1)
        .stderr_has("401");
    let missing = format!("{}/e2e/busybox:missing", registry.host());
    capstan(&data, &["pull", &missing, "--creds", "bob:pw"])
        .code_is(1)
        .stderr_has("not found");
    assert_eq!(count(&data.join("images/blobs/sha256")), 0);

    let started = std::time::Instant::now();
    let out = capstan(&data, &["pull", &target, "--creds", "bob:pw"]).ok();
    eprintln!(
        "capstan images pull (process, loopback registry): {} ms",
        started.elapsed().as_millis()
    );
    assert_eq!(out.lines(), vec![built.config_digest.as_str()]);
    assert!(out.stderr.contains("pulled"), "{out}");

    // The same with a pull secret's dockerconfigjson.
    capstan(&data, &["rm", &target]).ok();
    let secret = tmp.path().join("config.json");
    std::fs::write(
        &secret,
        format!(
            r#"{{"auths":{{"http://{}":{{"username":"bob","password":"pw"}}}}}}"#,
            registry.host()
        ),
    )
    .unwrap();
    capstan(
        &data,
        &["pull", &target, "--docker-config", secret.to_str().unwrap()],
    )
    .ok();
    capstan(&data, &["ls"]).ok().stdout_has(&target);
}
