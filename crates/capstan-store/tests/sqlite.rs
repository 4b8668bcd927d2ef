//! SQLite-specific guarantees: persistence across reopen, durability under kill -9,
//! backups, and list speed.

use capstan_store::{SqliteStore, Store, StoreError, WatchEvent};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHILD_DB_ENV: &str = "CAPSTAN_STORE_DURABILITY_DB";

fn open(path: &Path) -> SqliteStore {
    SqliteStore::open(path).expect("open")
}

#[tokio::test]
async fn reopen_keeps_keys_and_revisions_and_never_reuses_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.db");
    let store = open(&path);
    let a = store.create("/r/a", b"a1".to_vec()).await.expect("create");
    let a2 = store
        .update("/r/a", b"a2".to_vec(), a)
        .await
        .expect("update");
    let b = store.create("/r/b", b"b".to_vec()).await.expect("create");
    store.compact(a2).await.expect("compact");
    let (last, _) = store.delete("/r/b", Some(b)).await.expect("delete");
    drop(store);

    let store = open(&path);
    assert_eq!(store.current_revision().await.expect("revision"), last);
    assert_eq!(store.compacted_revision().await.expect("compacted"), a2);
    let got = store.get("/r/a").await.expect("get").expect("present");
    assert_eq!(
        (got.value, got.create_revision, got.mod_revision),
        (b"a2".to_vec(), a, a2)
    );
    assert_eq!(store.get("/r/b").await.expect("get"), None);
    // History survives too: a watch resumes from before the reopen.
    let mut rx = store.watch("/r/", a2).await.expect("watch");
    let next = store.create("/r/c", b"c".to_vec()).await.expect("create");
    assert_eq!(
        next,
        last + 1,
        "the next revision continues after the last one"
    );
    let revisions = [b, last, next];
    for want in revisions {
        let event = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        let event = event.expect("event in time").expect("open").expect("ok");
        assert_eq!(event.revision(), want);
    }
}

/// Not a test on its own: the child of `acknowledged_writes_survive_kill_9`, which re-runs
/// this binary with the database path in the environment. Writes keys until killed and
/// prints `ACK <key> <revision>` after each acknowledged create.
#[test]
fn durability_child_writer() {
    let Ok(path) = std::env::var(CHILD_DB_ENV) else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let store = open(Path::new(&path));
        for i in 0..1_000_000 {
            let key = format!("/durable/{i:07}");
            let rev = store
                .create(&key, key.as_bytes().to_vec())
                .await
                .expect("create");
            println!("ACK {key} {rev}");
        }
    });
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.db");
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "durability_child_writer",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DB_ENV, &path)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("child stdout");
    let mut acked = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read child output");
        let Some(ack) = line.strip_prefix("ACK ") else {
            continue;
        };
        let (key, rev) = ack.split_once(' ').expect("ACK key rev");
        acked.push((key.to_string(), rev.parse::<i64>().expect("revision")));
        if acked.len() == 500 {
            // SIGKILL while the child is still writing.
            child.kill().expect("kill -9");
            break;
        }
    }
    child.wait().expect("reap child");
    assert_eq!(acked.len(), 500, "child stopped early");

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let store = open(&path);
        for (key, rev) in &acked {
            let kv = store.get(key).await.expect("get");
            let kv = kv.unwrap_or_else(|| panic!("acknowledged key {key} lost"));
            assert_eq!(kv.mod_revision, *rev, "{key}");
        }
        let current = store.current_revision().await.expect("revision");
        assert!(current >= acked.len() as i64);
        let next = store
            .create("/after-crash", Vec::new())
            .await
            .expect("create");
        assert_eq!(next, current + 1);
    });
}

#[tokio::test]
async fn backup_is_a_consistent_copy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir.path().join("store.db"));
    let r1 = store.create("/b/a", b"a".to_vec()).await.expect("create");
    store
        .update("/b/a", b"a2".to_vec(), r1)
        .await
        .expect("update");
    let backup_path = dir.path().join("backup.db");
    store.backup_to(&backup_path).await.expect("backup");
    store
        .create("/b/after", b"x".to_vec())
        .await
        .expect("create");

    let copy = open(&backup_path);
    assert_eq!(copy.current_revision().await.expect("revision"), r1 + 1);
    let list = copy.list("/b/", None, 0, None).await.expect("list");
    let items: Vec<_> = list
        .items
        .iter()
        .map(|kv| (kv.key.as_str(), kv.value.as_slice()))
        .collect();
    assert_eq!(items, [("/b/a", b"a2".as_slice())]);
    assert_eq!(
        copy.list("/b/", None, 0, Some(r1))
            .await
            .expect("old list")
            .items[0]
            .value,
        b"a"
    );
}

#[tokio::test]
async fn dropping_the_store_closes_watches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir.path().join("store.db"));
    let mut rx = store.watch("/", 0).await.expect("watch");
    drop(store);
    let end = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("closed in time");
    assert!(end.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_watcher_gets_compacted_error_then_close() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir.path().join("store.db"));
    let mut rev = store.create("/lag", Vec::new()).await.expect("create");
    let mut rx = store.watch("/lag", rev).await.expect("watch");
    for _ in 0..6000 {
        rev = store.update("/lag", Vec::new(), rev).await.expect("update");
    }
    let mut last = None;
    let outcome = loop {
        match tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("no stall")
        {
            Some(Ok(WatchEvent::Put { kv, .. })) => last = Some(kv.mod_revision),
            Some(Ok(other)) => panic!("unexpected {other:?}"),
            Some(Err(err)) => break err,
            None => panic!("closed without an error"),
        }
    };
    let last = last.expect("some events before the error");
    assert!(
        matches!(outcome, StoreError::Compacted { requested, .. } if requested == last + 1),
        "{outcome:?} after {last}"
    );
    assert!(rx.recv().await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_of_10000_keys_is_fast() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir.path().join("store.db"));
    let value = vec![b'x'; 1024];
    let started = Instant::now();
    for i in 0..10_000 {
        store
            .create(&format!("/registry/pods/default/pod-{i:05}"), value.clone())
            .await
            .expect("create");
    }
    let per_write = started.elapsed() / 10_000;
    // Best of three, so a busy machine does not fail the test.
    let mut current = Duration::MAX;
    let mut historical = Duration::MAX;
    let (mut list, mut old) = (None, None);
    for _ in 0..3 {
        let started = Instant::now();
        let got = store
            .list("/registry/pods/", None, 0, None)
            .await
            .expect("list");
        current = current.min(started.elapsed());
        let started = Instant::now();
        let at = got.revision - 1;
        old = Some(
            store
                .list("/registry/pods/", None, 0, Some(at))
                .await
                .expect("list"),
        );
        historical = historical.min(started.elapsed());
        list = Some(got);
    }
    let (list, old) = (list.expect("listed"), old.expect("listed"));
    eprintln!(
        "sqlite: create {per_write:?}/key, list 10k current {current:?}, at an older revision {historical:?}"
    );
    assert_eq!((list.items.len(), old.items.len()), (10_000, 9_999));
    // Generous bounds for unoptimised test builds; the release target is well under 100 ms.
    assert!(
        current < Duration::from_millis(500),
        "list took {current:?}"
    );
    assert!(
        historical < Duration::from_millis(1500),
        "historical list took {historical:?}"
    );
}
