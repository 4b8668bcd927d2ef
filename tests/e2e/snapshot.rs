//! Issue 3: datastore snapshots. `capstan datastore snapshot save` while the server runs,
//! writes after the snapshot, an offline restore (SQLite: into the data dir; etcd: into a new
//! etcd data dir that a fresh etcd starts from), a restart, and then exactly the snapshot's
//! objects at their resourceVersions. Also scheduled snapshots with retention, and bad input.
//!
//! The scheduled-snapshot test uses a 6-field cron (`*/2 * * * * *`, seconds first), which
//! `--snapshot-schedule` accepts besides k3s's 5 fields, to see several snapshots in seconds.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use capstan_store::etcd::testing::EtcdCluster;

use crate::harness::{Kubectl, Out, Server, ServerOptions, etcd_endpoint, run};

const K: Kubectl = Kubectl::Minor(33);
const LABEL: &str = "e2e-snapshot";

/// Runs the `capstan` binary to completion (with the harness's deadline).
fn capstan(args: &[&str]) -> Out {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_capstan"));
    cmd.args(args).env("RUST_LOG", "warn");
    run(cmd, None)
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn manifest(ns: &str) -> String {
    let meta = |name: &str| {
        format!("metadata:\n  name: {name}\n  namespace: {ns}\n  labels:\n    {LABEL}: \"yes\"\n")
    };
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  labels:\n    {LABEL}: \"yes\"\n---\n\
         apiVersion: v1\nkind: ConfigMap\n{}data:\n  k: before\n---\n\
         apiVersion: v1\nkind: ConfigMap\n{}data:\n  k: b\n---\n\
         apiVersion: v1\nkind: Secret\n{}type: Opaque\ndata:\n  password: {}\n---\n\
         apiVersion: apps/v1\nkind: Deployment\n{}spec:\n  replicas: 1\n  selector:\n    \
         matchLabels:\n      app: web\n  template:\n    metadata:\n      labels:\n        app: web\n    \
         spec:\n      containers:\n      - name: web\n        image: busybox\n",
        meta("cm-a"),
        meta("cm-b"),
        meta("creds"),
        crate::util::base64("s3cret"),
        meta("web"),
    )
}

/// `kind/name` → resourceVersion of the labelled objects, now or (`at`) exactly at a revision.
fn state(server: &Server, ns: &str, at: Option<i64>) -> BTreeMap<String, i64> {
    let lists = [
        ("namespace", "/api/v1/namespaces".to_string()),
        ("configmap", format!("/api/v1/namespaces/{ns}/configmaps")),
        ("secret", format!("/api/v1/namespaces/{ns}/secrets")),
        (
            "deployment",
            format!("/apis/apps/v1/namespaces/{ns}/deployments"),
        ),
    ];
    let mut out = BTreeMap::new();
    for (kind, path) in lists {
        let mut url = format!("{path}?labelSelector={LABEL}%3Dyes");
        if let Some(rev) = at {
            url.push_str(&format!(
                "&resourceVersion={rev}&resourceVersionMatch=Exact"
            ));
        }
        let list = server.kubectl(K, &["get", "--raw", &url], None).ok().json();
        let items = list["items"].as_array().cloned().unwrap_or_default();
        for item in items {
            let name = item["metadata"]["name"].as_str().unwrap_or_default();
            let rv = item["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or_default();
            let rv: i64 = rv
                .parse()
                .unwrap_or_else(|_| panic!("bad resourceVersion {rv:?} of {kind}/{name}"));
            out.insert(format!("{kind}/{name}"), rv);
        }
    }
    out
}

/// The objects of [`manifest`], as keys of [`state`].
fn snapshot_keys(ns: &str) -> BTreeSet<String> {
    [
        format!("namespace/{ns}"),
        "configmap/cm-a".into(),
        "configmap/cm-b".into(),
        "secret/creds".into(),
        "deployment/web".into(),
    ]
    .into_iter()
    .collect()
}

/// `revision: N` from `capstan datastore snapshot save`.
fn saved_revision(out: &Out) -> i64 {
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix("revision: "))
        .and_then(|r| r.trim().parse().ok())
        .unwrap_or_else(|| panic!("no revision in the save output: {out}"))
}

fn cm_value(server: &Server, ns: &str, name: &str) -> String {
    server
        .kubectl(
            K,
            &[
                "get",
                "configmap",
                name,
                "-n",
                ns,
                "-o",
                "jsonpath={.data.k}",
            ],
            None,
        )
        .ok()
        .stdout
}

/// Creates the snapshot's objects, saves a snapshot with `save_args`, then changes things
/// (a create, an update, a delete, a new namespace). Returns the snapshot revision and the
/// objects at it.
fn populate_and_save(
    server: &Server,
    ns: &str,
    file: &Path,
    save_args: &[&str],
) -> (i64, BTreeMap<String, i64>) {
    server
        .kubectl(K, &["create", "-f", "-"], Some(&manifest(ns)))
        .ok();
    let created = state(server, ns, None);
    assert_eq!(
        created.keys().cloned().collect::<BTreeSet<_>>(),
        snapshot_keys(ns)
    );

    let mut args = vec!["datastore", "snapshot", "save", path_str(file)];
    args.extend_from_slice(save_args);
    let out = capstan(&args).ok().stdout_has("Snapshot saved to");
    let revision = saved_revision(&out);
    assert!(file.is_file(), "no snapshot file: {out}");
    let max_created = created.values().copied().max().unwrap_or_default();
    assert!(
        revision >= max_created,
        "snapshot revision {revision} < {max_created}"
    );

    // After the snapshot: a new object, an update, a delete, a new namespace.
    let after = crate::util::configmap_yaml(ns, "cm-after", "k", "after");
    server.kubectl(K, &["create", "-f", "-"], Some(&after)).ok();
    server
        .kubectl(
            K,
            &[
                "label",
                "configmap",
                "cm-after",
                "-n",
                ns,
                &format!("{LABEL}=yes"),
            ],
            None,
        )
        .ok();
    server
        .kubectl(
            K,
            &[
                "patch",
                "configmap",
                "cm-a",
                "-n",
                ns,
                "-p",
                r#"{"data":{"k":"after"}}"#,
            ],
            None,
        )
        .ok();
    server
        .kubectl(K, &["delete", "secret", "creds", "-n", ns], None)
        .ok();
    server
        .kubectl(K, &["create", "namespace", &format!("{ns}-after")], None)
        .ok();
    server
        .kubectl(
            K,
            &[
                "label",
                "namespace",
                &format!("{ns}-after"),
                &format!("{LABEL}=yes"),
            ],
            None,
        )
        .ok();
    assert_eq!(cm_value(server, ns, "cm-a"), "after");

    let at_snapshot = state(server, ns, Some(revision));
    assert_eq!(
        at_snapshot.keys().cloned().collect::<BTreeSet<_>>(),
        snapshot_keys(ns),
        "the store's state at the snapshot revision"
    );
    (revision, at_snapshot)
}

/// After the restore and restart: exactly the snapshot's objects, at their resourceVersions,
/// and new writes numbered after them.
fn check_restored(server: &Server, ns: &str, revision: i64, at_snapshot: &BTreeMap<String, i64>) {
    let now = state(server, ns, None);
    assert_eq!(
        now.keys().cloned().collect::<BTreeSet<_>>(),
        snapshot_keys(ns),
        "objects after the restore (post-snapshot ones must be gone)"
    );
    for (key, rv) in &now {
        let expected = at_snapshot[key];
        // A controller may rewrite a Deployment's status after the restart (a new revision
        // past the snapshot); everything else must be byte-for-byte the snapshot's version.
        let rewritten = key.starts_with("deployment/") && *rv > revision;
        assert!(
            *rv == expected || rewritten,
            "{key}: resourceVersion {rv} after restore, {expected} in the snapshot"
        );
    }
    assert_eq!(
        &state(server, ns, Some(revision)),
        at_snapshot,
        "the store's state at the snapshot revision after restore"
    );
    assert_eq!(cm_value(server, ns, "cm-a"), "before");
    let password = server
        .kubectl(
            K,
            &[
                "get",
                "secret",
                "creds",
                "-n",
                ns,
                "-o",
                "jsonpath={.data.password}",
            ],
            None,
        )
        .ok()
        .stdout;
    assert_eq!(password, crate::util::base64("s3cret"));

    let fresh = crate::util::configmap_yaml(ns, "cm-fresh", "k", "new");
    let created = server
        .kubectl(K, &["create", "-f", "-", "-o", "json"], Some(&fresh))
        .ok()
        .json();
    let rv: i64 = created["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no resourceVersion in {created}"));
    let max_restored = now.values().copied().max().unwrap_or_default();
    assert!(
        rv > max_restored && rv > revision,
        "new write got resourceVersion {rv}; restored ones go up to {max_restored}, snapshot {revision}"
    );
}

fn db_files(data_dir: &Path) -> Vec<PathBuf> {
    let dir = data_dir.join("db");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn sqlite_snapshot_save_while_running_then_restore_brings_back_exactly_the_snapshot() {
    let mut server = Server::start_with(ServerOptions {
        datastore_endpoint: Some("sqlite://".into()),
        ..Default::default()
    });
    let data_dir = server.data_dir().to_path_buf();
    let file = server.scratch().join("sqlite.snapshot");
    let ns = "snap-sqlite";
    let (revision, at_snapshot) =
        populate_and_save(&server, ns, &file, &["--data-dir", path_str(&data_dir)]);

    // A running server's database is never swapped under it.
    capstan(&[
        "datastore",
        "snapshot",
        "restore",
        path_str(&file),
        "--data-dir",
        path_str(&data_dir),
    ])
    .code_is(1)
    .stderr_has("in use by a running capstan server");
    assert_eq!(
        cm_value(&server, ns, "cm-a"),
        "after",
        "refused restore changed nothing"
    );

    server.kill9();
    // Restoring something that is not a snapshot is refused and changes nothing.
    let junk = server.write_file("junk.snapshot", "this is not a database\n");
    let db = data_dir.join("db").join("state.db");
    let files_before = db_files(&data_dir);
    let db_bytes = std::fs::read(&db).expect("read state.db");
    capstan(&[
        "datastore",
        "snapshot",
        "restore",
        path_str(&junk),
        "--data-dir",
        path_str(&data_dir),
    ])
    .code_is(1)
    .stderr_has("neither an SQLite database nor an etcd snapshot");
    assert_eq!(db_files(&data_dir), files_before);
    assert_eq!(std::fs::read(&db).expect("read state.db"), db_bytes);

    // Wipe the database, restore, restart on the same data dir and port.
    for f in &files_before {
        if f.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("state.db"))
        {
            std::fs::remove_file(f).expect("wipe the database");
        }
    }
    capstan(&[
        "datastore",
        "snapshot",
        "restore",
        path_str(&file),
        "--data-dir",
        path_str(&data_dir),
    ])
    .ok()
    .stdout_has("Restored SQLite snapshot");
    server.restart();
    check_restored(&server, ns, revision, &at_snapshot);

    // A restore over an existing database keeps it aside.
    server.kill9();
    capstan(&[
        "datastore",
        "snapshot",
        "restore",
        path_str(&file),
        "--data-dir",
        path_str(&data_dir),
    ])
    .ok()
    .stdout_has("previous database is kept as");
    let kept: Vec<PathBuf> = db_files(&data_dir)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("state.db.before-restore-"))
        .collect();
    assert!(
        !kept.is_empty(),
        "no state.db.before-restore-* in {:?}",
        db_files(&data_dir)
    );
}

#[test]
fn etcd_snapshot_save_then_restore_into_a_new_etcd_brings_back_exactly_the_snapshot() {
    let etcd = EtcdCluster::start(1).expect("start a one-member etcd");
    let endpoint = etcd_endpoint(&etcd);
    let mut server = Server::start_with(ServerOptions {
        datastore_endpoint: Some(endpoint.clone()),
        ..Default::default()
    });
    let file = server.scratch().join("etcd.snapshot");
    let ns = "snap-etcd";
    let (revision, at_snapshot) =
        populate_and_save(&server, ns, &file, &["--datastore-endpoint", &endpoint]);

    // Lose everything: capstan and etcd stop, etcd's data dir goes with it.
    server.kill9();
    drop(etcd);

    let restored_dir = server.scratch().join("etcd-restored");
    let opts = EtcdCluster::restore_options(restored_dir.clone()).expect("etcd restore options");
    let out = capstan(&[
        "datastore",
        "snapshot",
        "restore",
        path_str(&file),
        "--etcd-data-dir",
        path_str(&restored_dir),
        "--etcd-name",
        &opts.name,
        "--etcd-initial-cluster",
        &opts.initial_cluster,
        "--etcd-initial-advertise-peer-urls",
        &opts.initial_advertise_peer_urls,
    ])
    .ok()
    .stdout_has("Restored etcd snapshot")
    .stdout_has("etcd --name");
    assert!(
        restored_dir.join("member").is_dir(),
        "no etcd member dir: {out}"
    );

    let etcd =
        EtcdCluster::start_from_data_dir(&opts).expect("start etcd on the restored data dir");
    server.add_args(&["--datastore-endpoint", &etcd_endpoint(&etcd)]);
    server.restart();
    check_restored(&server, ns, revision, &at_snapshot);
    drop(server);
    drop(etcd);
}

#[test]
fn scheduled_snapshots_keep_only_the_newest_retention_count() {
    let snapshot_dir = tempfile::Builder::new()
        .prefix("capstan-e2e-snapshots-")
        .tempdir()
        .expect("snapshot dir");
    let dir = snapshot_dir.path();
    let retention = 2;
    let server = Server::start_with(ServerOptions {
        datastore_endpoint: Some("sqlite://".into()),
        extra_args: vec![
            "--snapshot-schedule".into(),
            "*/2 * * * * *".into(),
            "--snapshot-retention".into(),
            retention.to_string(),
            "--snapshot-dir".into(),
            path_str(dir).into(),
        ],
        ..Default::default()
    });
    server
        .kubectl(K, &["create", "namespace", "scheduled"], None)
        .ok();

    let complete = || -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .expect("read snapshot dir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("capstan-snapshot-"))
            .collect()
    };
    let mut seen = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(40);
    while seen.len() < retention + 3 {
        let now = complete();
        assert!(
            now.len() <= retention,
            "more than {retention} snapshots: {now:?}"
        );
        seen.extend(now);
        assert!(
            Instant::now() < deadline,
            "only {} scheduled snapshots within 40 s: {seen:?}; log:\n{}",
            seen.len(),
            server.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let left = complete();
    assert_eq!(left.len(), retention, "{left:?}");
    // The kept ones are the newest (names end in the unix time).
    let unix = |n: &String| {
        n.rsplit('-')
            .next()
            .and_then(|t| t.parse::<i64>().ok())
            .unwrap_or(0)
    };
    let newest: BTreeSet<String> = {
        let mut all: Vec<String> = seen.iter().cloned().collect();
        all.sort_by_key(unix);
        all.into_iter().rev().take(retention + 1).collect()
    };
    assert!(
        left.is_subset(&newest),
        "kept {left:?}, newest seen {newest:?}"
    );

    let ls = capstan(&[
        "datastore",
        "snapshot",
        "ls",
        "--snapshot-dir",
        path_str(dir),
    ])
    .ok();
    assert!(ls.stdout.starts_with("NAME"), "{ls}");
    assert!(ls.lines().len() >= 2, "{ls}");

    // A scheduled snapshot is a real, restorable snapshot.
    let name = left.iter().next().expect("a snapshot");
    let target = server.scratch().join("from-scheduled").join("state.db");
    capstan(&[
        "datastore",
        "snapshot",
        "restore",
        path_str(&dir.join(name)),
        "--datastore-endpoint",
        &format!("sqlite://{}", path_str(&target)),
    ])
    .ok();
    assert!(target.is_file());
}

#[test]
fn save_to_an_unwritable_path_fails_clearly() {
    let server = Server::start_with(ServerOptions {
        datastore_endpoint: Some("sqlite://".into()),
        ..Default::default()
    });
    let data_dir = path_str(server.data_dir()).to_string();
    capstan(&[
        "datastore",
        "snapshot",
        "save",
        "/nonexistent-dir/x.snapshot",
        "--data-dir",
        &data_dir,
    ])
    .code_is(1)
    .stderr_has("directory /nonexistent-dir does not exist");
    // /proc refuses new files: the store's own error surfaces, naming the path.
    capstan(&[
        "datastore",
        "snapshot",
        "save",
        "/proc/x.snapshot",
        "--data-dir",
        &data_dir,
    ])
    .code_is(1)
    .stderr_has("saving a snapshot to /proc/x.snapshot");
    assert!(!Path::new("/proc/x.snapshot").exists());
    // No database at all is an error, not an empty snapshot.
    let empty = server.scratch().join("no-such-data-dir");
    capstan(&[
        "datastore",
        "snapshot",
        "save",
        path_str(&server.scratch().join("s")),
        "--data-dir",
        path_str(&empty),
    ])
    .code_is(1)
    .stderr_has("no SQLite database at");
}

#[test]
fn bad_datastore_endpoints_fail_fast_with_clear_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = path_str(dir.path());
    let port = crate::harness::free_port().to_string();
    let out = capstan(&[
        "server",
        "--data-dir",
        data_dir,
        "--https-port",
        &port,
        "--disable-agent",
        "--datastore-endpoint",
        "mysql://root@tcp(127.0.0.1:3306)/capstan",
    ])
    .code_is(1)
    .stderr_has("sqlite://PATH");
    assert!(out.stderr.contains("etcd://HOST:PORT"), "{out}");

    // Nothing listens on this port: the server gives up after the connect timeout.
    let dead = format!("etcd://127.0.0.1:{}", crate::harness::free_port());
    let started = Instant::now();
    capstan(&[
        "server",
        "--data-dir",
        data_dir,
        "--https-port",
        &port,
        "--disable-agent",
        "--datastore-endpoint",
        &dead,
        "--datastore-connect-timeout",
        "3",
    ])
    .code_is(1)
    .stderr_has("unreachable");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(15), "gave up after {took:?}");
}
