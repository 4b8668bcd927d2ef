//! Volume tests on a tempdir with a fake source and mounter; one root test with a real tmpfs.

use std::os::unix::fs::PermissionsExt;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::json;

use super::*;
use crate::env::tests::FakeSource;

/// Records tmpfs mounts instead of making them.
#[derive(Default)]
struct FakeMounter {
    mounts: Mutex<BTreeMap<PathBuf, Option<u64>>>,
}

impl Mounter for FakeMounter {
    fn mount_tmpfs(&self, target: &Path, size: Option<u64>) -> Result<(), VolumeError> {
        self.mounts
            .lock()
            .expect("lock")
            .insert(target.to_path_buf(), size);
        Ok(())
    }
    fn unmount(&self, target: &Path) -> Result<(), VolumeError> {
        self.mounts.lock().expect("lock").remove(target);
        Ok(())
    }
    fn mount_points_under(&self, dir: &Path) -> Result<Vec<PathBuf>, VolumeError> {
        Ok(self
            .mounts
            .lock()
            .expect("lock")
            .keys()
            .filter(|p| p.starts_with(dir))
            .cloned()
            .collect())
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    mounter: Arc<FakeMounter>,
    vm: VolumeManager,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let mounter = Arc::new(FakeMounter::default());
    let vm = VolumeManager::with_mounter(dir.path().join("pods"), mounter.clone());
    Fixture { dir, mounter, vm }
}

fn source() -> FakeSource {
    FakeSource::with(json!([
        {"kind": "ConfigMap", "metadata": {"name": "app-config", "namespace": "default"},
         "data": {"app.properties": "a=1\n", "mode": "fast"}, "binaryData": {"blob": "AAEC"}},
        {"kind": "Secret", "metadata": {"name": "creds", "namespace": "default"},
         "data": {"password": "czNjcjN0", "user": "YWRtaW4="}},
    ]))
}

fn pod(volumes: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "default", "uid": "uid-1",
                     "labels": {"app": "web", "tier": "front"}, "annotations": {"a": "b"}},
        "spec": {"serviceAccountName": "builder", "containers": [
            {"name": "main", "resources": {"limits": {"memory": "64Mi"}}}
        ], "volumes": volumes}
    }))
    .expect("pod")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("meta").permissions().mode() & 0o7777
}

#[tokio::test]
async fn empty_dir_on_disk_and_in_memory() {
    let f = fixture();
    let p = pod(json!([
        {"name": "cache", "emptyDir": {}},
        {"name": "mem", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}}
    ]));
    let vols = f.vm.setup(&p, &source()).await.expect("setup");
    let cache = f
        .dir
        .path()
        .join("pods/uid-1/volumes/kubernetes.io~empty-dir/cache");
    assert_eq!(vols.paths["cache"], cache);
    assert!(cache.is_dir());
    assert_eq!(mode(&cache), 0o777);
    let mem = f
        .dir
        .path()
        .join("pods/uid-1/volumes/kubernetes.io~empty-dir/mem");
    assert_eq!(
        f.mounter.mounts.lock().expect("lock").get(&mem),
        Some(&Some(64 * 1024 * 1024))
    );
    // Idempotent: a second setup does not mount again, and keeps the data.
    std::fs::write(cache.join("f"), b"x").expect("write");
    f.vm.setup(&p, &source()).await.expect("setup again");
    assert_eq!(read(&cache.join("f")), "x");
    assert_eq!(f.mounter.mounts.lock().expect("lock").len(), 1);
    f.vm.teardown("uid-1").await.expect("teardown");
    assert!(f.mounter.mounts.lock().expect("lock").is_empty());
    assert!(!f.dir.path().join("pods/uid-1").exists());
    f.vm.teardown("uid-1").await.expect("teardown again");
}

#[tokio::test]
async fn host_path_types() {
    let f = fixture();
    let base = f.dir.path().join("host");
    std::fs::create_dir_all(base.join("dir")).expect("dir");
    std::fs::write(base.join("file"), b"x").expect("file");
    let sock = base.join("sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).expect("socket");
    let p =
        |path: &Path, ty: &str| pod(json!([{"name": "h", "hostPath": {"path": path, "type": ty}}]));
    let ok = |path: PathBuf, ty: &'static str| (path, ty, None::<String>);
    let bad = |path: PathBuf, ty: &'static str, what: &str| {
        let msg = format!(
            "MountVolume.SetUp failed for volume \"h\" : hostPath type check failed: {} is not {what}",
            path.display()
        );
        (path, ty, Some(msg))
    };
    let cases = vec![
        ok(base.join("dir"), "Directory"),
        bad(base.join("missing"), "Directory", "a directory"),
        bad(base.join("file"), "Directory", "a directory"),
        ok(base.join("new/dir"), "DirectoryOrCreate"),
        bad(base.join("file"), "DirectoryOrCreate", "a directory"),
        ok(base.join("file"), "File"),
        bad(base.join("dir"), "File", "a file"),
        bad(base.join("missing"), "File", "a file"),
        ok(base.join("newfile"), "FileOrCreate"),
        bad(base.join("dir"), "FileOrCreate", "a file"),
        ok(sock.clone(), "Socket"),
        bad(base.join("file"), "Socket", "a socket file"),
        ok(PathBuf::from("/dev/null"), "CharDevice"),
        bad(base.join("file"), "CharDevice", "a character device"),
        bad(PathBuf::from("/dev/null"), "BlockDevice", "a block device"),
        ok(base.join("whatever"), ""),
    ];
    for (path, ty, want) in cases {
        let got = f.vm.setup(&p(&path, ty), &source()).await;
        match (got, want) {
            (Ok(v), None) => assert_eq!(v.paths["h"], path, "{ty}"),
            (Err(e), Some(msg)) => assert_eq!(e.to_string(), msg, "{ty}"),
            (got, want) => panic!("{ty} {}: got {got:?}, want {want:?}", path.display()),
        }
    }
    assert!(base.join("new/dir").is_dir());
    assert_eq!(mode(&base.join("new/dir")), 0o755);
    assert!(base.join("newfile").is_file());
    assert_eq!(mode(&base.join("newfile")), 0o644);
    let err =
        f.vm.setup(&p(&base.join("nodir/newfile"), "FileOrCreate"), &source())
            .await
            .expect_err("parent missing");
    assert!(err.to_string().contains("nodir/newfile"), "{err}");
    let err =
        f.vm.setup(&p(&base, "Weird"), &source())
            .await
            .expect_err("invalid type");
    assert!(
        err.to_string().ends_with("Weird is an invalid volume type"),
        "{err}"
    );
}

#[tokio::test]
async fn config_map_atomic_writer_layout_and_refresh() {
    let f = fixture();
    let src = source();
    let p = pod(json!([{"name": "config", "configMap": {"name": "app-config"}}]));
    let vols = f.vm.setup(&p, &src).await.expect("setup");
    let dir = f
        .dir
        .path()
        .join("pods/uid-1/volumes/kubernetes.io~configmap/config");
    assert_eq!(vols.paths["config"], dir);
    assert!(vols.read_only.contains("config"));
    let data = std::fs::read_link(dir.join("..data")).expect("..data is a symlink");
    let ts = data.to_string_lossy().into_owned();
    assert!(ts.starts_with("..20") && ts.len() > 22, "{ts}");
    assert_eq!(
        std::fs::read_link(dir.join("mode")).expect("user-visible symlink"),
        Path::new("..data/mode")
    );
    assert_eq!(read(&dir.join("mode")), "fast");
    assert_eq!(read(&dir.join("app.properties")), "a=1\n");
    assert_eq!(
        std::fs::read(dir.join("blob")).expect("blob"),
        vec![0u8, 1, 2]
    );
    assert_eq!(mode(&dir.join(&ts).join("mode")), 0o644);

    // Unchanged: nothing rewritten.
    f.vm.refresh(&p, &src).await.expect("refresh");
    assert_eq!(std::fs::read_link(dir.join("..data")).expect("link"), data);

    // Changed: a new timestamped dir, the old one gone, removed keys' links gone.
    src.put(
        json!({"kind": "ConfigMap", "metadata": {"name": "app-config", "namespace": "default"},
                   "data": {"mode": "slow", "new": "n"}}),
    );
    f.vm.refresh(&p, &src).await.expect("refresh");
    let data2 = std::fs::read_link(dir.join("..data")).expect("link");
    assert_ne!(data2, data);
    assert!(!dir.join(&ts).exists(), "old timestamped dir removed");
    assert_eq!(read(&dir.join("mode")), "slow");
    assert_eq!(read(&dir.join("new")), "n");
    assert!(std::fs::symlink_metadata(dir.join("app.properties")).is_err());
    assert!(!dir.join("..data_tmp").exists());
}

#[tokio::test]
async fn config_map_items_modes_optional_and_errors() {
    let f = fixture();
    let src = source();
    let p = pod(
        json!([{"name": "config", "configMap": {"name": "app-config", "defaultMode": 0o600,
        "items": [{"key": "mode", "path": "sub/m.txt", "mode": 0o400}, {"key": "app.properties", "path": "app"}]}}]),
    );
    f.vm.setup(&p, &src).await.expect("setup");
    let dir = f
        .dir
        .path()
        .join("pods/uid-1/volumes/kubernetes.io~configmap/config");
    assert_eq!(read(&dir.join("sub/m.txt")), "fast");
    assert_eq!(mode(&dir.join("..data/sub/m.txt")), 0o400);
    assert_eq!(mode(&dir.join("..data/app")), 0o600);
    assert_eq!(
        std::fs::read_link(dir.join("sub")).expect("link"),
        Path::new("..data/sub")
    );
    assert!(std::fs::symlink_metadata(dir.join("mode")).is_err());

    let missing = pod(json!([{"name": "config", "configMap": {"name": "nope"}}]));
    let err = f.vm.setup(&missing, &src).await.expect_err("missing");
    assert_eq!(
        err.to_string(),
        "MountVolume.SetUp failed for volume \"config\" : configmap \"nope\" not found"
    );
    let optional = pod(json!([{"name": "opt", "configMap": {"name": "nope", "optional": true}}]));
    let vols = f.vm.setup(&optional, &src).await.expect("optional");
    assert!(vols.paths["opt"].join("..data").is_dir());
    let bad_key = pod(
        json!([{"name": "config", "configMap": {"name": "app-config", "items": [{"key": "x", "path": "x"}]}}]),
    );
    let err = f.vm.setup(&bad_key, &src).await.expect_err("missing key");
    assert_eq!(
        err.to_string(),
        "MountVolume.SetUp failed for volume \"config\" : configmap references non-existent config key: x"
    );
    let escape = pod(
        json!([{"name": "config", "configMap": {"name": "app-config", "items": [{"key": "mode", "path": "../x"}]}}]),
    );
    let err = f.vm.setup(&escape, &src).await.expect_err("escape");
    assert!(err.to_string().contains("must not contain '..'"), "{err}");
}

#[tokio::test]
async fn secret_volume_is_on_tmpfs_with_decoded_content() {
    let f = fixture();
    let p = pod(
        json!([{"name": "creds", "secret": {"secretName": "creds", "defaultMode": 0o400}},
                       {"name": "gone", "secret": {"secretName": "gone"}}]),
    );
    let err = f.vm.setup(&p, &source()).await.expect_err("gone");
    assert_eq!(
        err.to_string(),
        "MountVolume.SetUp failed for volume \"gone\" : secret \"gone\" not found"
    );
    let p = pod(
        json!([{"name": "creds", "secret": {"secretName": "creds", "defaultMode": 0o400,
                        "items": [{"key": "password", "path": "pw"}]}}]),
    );
    let vols = f.vm.setup(&p, &source()).await.expect("setup");
    let dir = &vols.paths["creds"];
    assert!(dir.ends_with("volumes/kubernetes.io~secret/creds"));
    assert!(f.mounter.mounts.lock().expect("lock").contains_key(dir));
    assert_eq!(read(&dir.join("pw")), "s3cr3t");
    assert_eq!(mode(&dir.join("..data/pw")), 0o400);
    let bad = pod(
        json!([{"name": "creds", "secret": {"secretName": "creds", "items": [{"key": "k", "path": "k"}]}}]),
    );
    let err = f.vm.setup(&bad, &source()).await.expect_err("key");
    assert!(
        err.to_string()
            .ends_with(": references non-existent secret key: k"),
        "{err}"
    );
}

#[tokio::test]
async fn projected_and_downward_api_volumes() {
    let f = fixture();
    let p = pod(json!([
        {"name": "kube-api-access", "projected": {"defaultMode": 420, "sources": [
            {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607, "audience": "api"}},
            {"configMap": {"name": "app-config", "items": [{"key": "mode", "path": "ca.crt"}]}},
            {"secret": {"name": "creds", "items": [{"key": "user", "path": "user"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}}
        ]}},
        {"name": "podinfo", "downwardAPI": {"items": [
            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
            {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}},
            {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
            {"path": "uid", "fieldRef": {"fieldPath": "metadata.uid"}},
            {"path": "app", "fieldRef": {"fieldPath": "metadata.labels['app']"}},
            {"path": "mem", "resourceFieldRef": {"containerName": "main", "resource": "limits.memory", "divisor": "1Mi"}}
        ]}}
    ]));
    let vols = f.vm.setup(&p, &source()).await.expect("setup");
    let proj = &vols.paths["kube-api-access"];
    assert!(proj.ends_with("volumes/kubernetes.io~projected/kube-api-access"));
    assert!(f.mounter.mounts.lock().expect("lock").contains_key(proj));
    assert_eq!(read(&proj.join("token")), "token:web:builder:api:3607");
    assert_eq!(read(&proj.join("ca.crt")), "fast");
    assert_eq!(read(&proj.join("user")), "admin");
    assert_eq!(read(&proj.join("namespace")), "default");
    assert_eq!(mode(&proj.join("..data/token")), 0o644);
    let info = &vols.paths["podinfo"];
    assert!(info.ends_with("volumes/kubernetes.io~downward-api/podinfo"));
    assert_eq!(read(&info.join("labels")), "app=\"web\"\ntier=\"front\"");
    assert_eq!(read(&info.join("annotations")), "a=\"b\"");
    assert_eq!(read(&info.join("name")), "web");
    assert_eq!(read(&info.join("uid")), "uid-1");
    assert_eq!(read(&info.join("app")), "web");
    assert_eq!(read(&info.join("mem")), "64");
    // The token is cached, so a refresh does not rewrite the volume.
    let before = std::fs::read_link(proj.join("..data")).expect("link");
    f.vm.refresh(&p, &source()).await.expect("refresh");
    assert_eq!(
        std::fs::read_link(proj.join("..data")).expect("link"),
        before
    );
    let bad = pod(
        json!([{"name": "d", "downwardAPI": {"items": [{"path": "x", "fieldRef": {"fieldPath": "spec.nodeName"}}]}}]),
    );
    let err = f.vm.setup(&bad, &source()).await.expect_err("unsupported");
    assert_eq!(
        err.to_string(),
        "MountVolume.SetUp failed for volume \"d\" : unsupported fieldPath: spec.nodeName"
    );
}

#[tokio::test]
async fn container_mounts_sub_paths_read_only_and_propagation() {
    let f = fixture();
    let p = pod(
        json!([{"name": "data", "emptyDir": {}}, {"name": "config", "configMap": {"name": "app-config"}}]),
    );
    let vols = f.vm.setup(&p, &source()).await.expect("setup");
    let container: Container = serde_json::from_value(json!({"name": "main", "volumeMounts": [
        {"name": "data", "mountPath": "/data"},
        {"name": "data", "mountPath": "/logs", "subPathExpr": "logs/$(POD_NAME)", "readOnly": true},
        {"name": "data", "mountPath": "/cache", "subPath": "cache", "mountPropagation": "HostToContainer"},
        {"name": "config", "mountPath": "/etc/mode", "subPath": "mode"}
    ]})).expect("container");
    let env = vec![("POD_NAME".to_string(), "web".to_string())];
    let mounts =
        f.vm.container_mounts(&p, &container, &vols, &env)
            .expect("mounts");
    let data = &vols.paths["data"];
    let got: Vec<_> = mounts
        .iter()
        .map(|m| {
            (
                m.container_path.as_str(),
                m.host_path.clone(),
                m.readonly,
                m.propagation,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("/data", data.clone(), false, MountPropagation::Private),
            (
                "/logs",
                data.join("logs/web"),
                true,
                MountPropagation::Private
            ),
            (
                "/cache",
                data.join("cache"),
                false,
                MountPropagation::HostToContainer
            ),
            (
                "/etc/mode",
                vols.paths["config"].join("mode"),
                true,
                MountPropagation::Private
            ),
        ]
    );
    assert!(data.join("logs/web").is_dir(), "subPath dirs are created");

    let mount = |vm: serde_json::Value| -> Result<Vec<Mount>, VolumeError> {
        let c: Container =
            serde_json::from_value(json!({"name": "main", "volumeMounts": [vm]})).expect("c");
        f.vm.container_mounts(&p, &c, &vols, &env)
    };
    let err =
        mount(json!({"name": "data", "mountPath": "/x", "subPath": "../etc"})).expect_err("dotdot");
    assert!(err.to_string().contains("must not contain '..'"), "{err}");
    let err =
        mount(json!({"name": "data", "mountPath": "/x", "subPath": "/etc"})).expect_err("absolute");
    assert!(err.to_string().contains("must be a relative path"), "{err}");
    let err = mount(json!({"name": "data", "mountPath": "/x", "subPathExpr": "$(POD_NAME)/../.."}))
        .expect_err("expr");
    assert!(err.to_string().contains("must not contain '..'"), "{err}");
    std::os::unix::fs::symlink("/etc", data.join("evil")).expect("symlink");
    let err = mount(json!({"name": "data", "mountPath": "/x", "subPath": "evil"}))
        .expect_err("symlink escape");
    assert!(
        err.to_string().contains("resolves outside the volume"),
        "{err}"
    );
    let err = mount(json!({"name": "nope", "mountPath": "/x"})).expect_err("no volume");
    assert_eq!(
        err.to_string(),
        "cannot find volume \"nope\" to mount into container \"main\""
    );
    f.vm.teardown("uid-1").await.expect("teardown");
}

#[test]
fn mountinfo_parsing() {
    let info = "36 35 98:0 / /mnt/a\\040b rw - tmpfs tmpfs rw\n\
                37 35 98:0 / /mnt/a\\040b/c rw - tmpfs tmpfs rw\n\
                38 35 98:0 / /mnt/other rw - ext4 /dev/x rw\n";
    assert_eq!(
        mount_points_in(info, Path::new("/mnt/a b")),
        vec![PathBuf::from("/mnt/a b/c"), PathBuf::from("/mnt/a b")]
    );
}

/// Root: a real tmpfs emptyDir with a size limit, mounted and torn down.
#[tokio::test]
async fn real_tmpfs_empty_dir_is_mounted_and_torn_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vm = VolumeManager::new(dir.path().join("pods"));
    let p: Pod = serde_json::from_value(json!({
        "metadata": {"name": "m", "namespace": "default", "uid": format!("h1-tmpfs-{}", std::process::id())},
        "spec": {"containers": [{"name": "c"}], "volumes": [
            {"name": "mem", "emptyDir": {"medium": "Memory", "sizeLimit": "8Mi"}}]}
    }))
    .expect("pod");
    let uid = p.metadata.uid.clone().expect("uid");
    let vols = vm.setup(&p, &source()).await.expect("setup");
    let mem = vols.paths["mem"].clone();
    let line = std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(mem.to_str().expect("utf8")))
        .map(str::to_string);
    let teardown_guard = scopeguard(vm.clone(), uid.clone());
    let line = line.expect("tmpfs mounted");
    assert!(
        line.contains(" - tmpfs tmpfs ") && line.contains("size=8192k"),
        "{line}"
    );
    std::fs::write(mem.join("f"), b"x").expect("write into tmpfs");
    vm.setup(&p, &source()).await.expect("setup again");
    assert_eq!(
        RealMounter.mount_points_under(&mem).expect("points").len(),
        1,
        "mounted once"
    );
    drop(teardown_guard);
    vm.teardown(&uid).await.expect("teardown");
    assert!(
        RealMounter
            .mount_points_under(dir.path())
            .expect("points")
            .is_empty()
    );
    assert!(!dir.path().join("pods").join(&uid).exists());
}

/// Unmounts the pod's volumes if the test fails midway.
struct Guard(VolumeManager, String);
impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(points) = RealMounter.mount_points_under(&self.0.pod_dir(&self.1)) {
            for p in points {
                let _ = RealMounter.unmount(&p);
            }
        }
    }
}
fn scopeguard(vm: VolumeManager, uid: String) -> Guard {
    Guard(vm, uid)
}
