//! The conformance suite every [`Store`] backend must pass, unchanged.
//!
//! Each case is a public async fn taking a fresh, empty store; revisions are only compared
//! relative to each other, so backends may start at any revision. Backends run the whole
//! suite with [`store_conformance_tests!`](crate::store_conformance_tests), one named
//! `#[tokio::test]` per case:
//!
//! ```text
//! capstan_store::store_conformance_tests!(async { (MemoryStore::new(), ()) });
//! ```
//!
//! The factory expression is evaluated once per test and yields `(store, guard)`; the
//! guard (e.g. a temporary directory) lives until the test ends.

use crate::{KeyValue, Store, StoreError, WatchEvent, WatchReceiver};
use std::sync::Arc;
use std::time::Duration;

/// Expands to one `#[tokio::test]` per conformance case (the calling crate needs tokio).
#[macro_export]
macro_rules! store_conformance_tests {
    ($factory:expr) => {
        $crate::store_conformance_tests!(@cases $factory;
            create_then_get,
            create_existing_is_already_exists,
            update_with_stale_revision_is_conflict_and_changes_nothing,
            update_or_delete_of_missing_key_is_not_found,
            delete_with_expected_revision,
            revisions_strictly_increase_across_keys,
            list_by_prefix_is_lexical_and_excludes_sibling_prefixes,
            list_paging_with_limit_start_after_and_more,
            list_at_older_revision_sees_old_state,
            list_at_future_revision_is_error,
            list_at_compacted_revision_is_compacted,
            list_after_compaction_sees_state_as_of_each_revision,
            watch_replays_history_then_live_events_in_order,
            watches_started_during_writes_see_every_later_event_once,
            watch_of_deleted_key_gets_delete_with_prev,
            watch_from_compacted_revision_is_compacted,
            watch_from_compaction_point_replays_later_events_with_prev,
            compaction_keeps_current_values_and_revisions_continue,
            count_counts_keys_under_prefix,
            concurrent_creates_of_same_key_exactly_one_wins,
            concurrent_cas_updates_lose_no_update,
            watcher_that_never_reads_does_not_block_writers,
        );
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (store, _guard) = $factory.await;
                $crate::conformance::$case(store).await;
            }
        )*
    };
}

const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// The next event of a watch, failing the test on an error, a close or a timeout.
pub async fn next_event(rx: &mut WatchReceiver) -> WatchEvent {
    match tokio::time::timeout(EVENT_TIMEOUT, rx.recv()).await {
        Ok(Some(Ok(event))) => event,
        Ok(Some(Err(err))) => panic!("watch failed: {err}"),
        Ok(None) => panic!("watch closed"),
        Err(_) => panic!("no watch event within {EVENT_TIMEOUT:?}"),
    }
}

fn kv(key: &str, value: &str, create_revision: i64, mod_revision: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: value.into(),
        create_revision,
        mod_revision,
    }
}

fn put(kv: KeyValue, prev: Option<KeyValue>) -> WatchEvent {
    WatchEvent::Put { kv, prev }
}

async fn keys_at<S: Store>(
    store: &S,
    prefix: &str,
    revision: Option<i64>,
) -> Vec<(String, Vec<u8>)> {
    let list = store.list(prefix, None, 0, revision).await.expect("list");
    list.items
        .into_iter()
        .map(|kv| (kv.key, kv.value))
        .collect()
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    items
        .iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect()
}

pub async fn create_then_get<S: Store>(store: S) {
    let before = store.current_revision().await.expect("revision");
    assert_eq!(store.get("/k").await.expect("get"), None);
    let rev = store.create("/k", b"v1".to_vec()).await.expect("create");
    assert!(rev > before, "revision {rev} must exceed {before}");
    assert_eq!(
        store.get("/k").await.expect("get"),
        Some(kv("/k", "v1", rev, rev))
    );
    assert_eq!(store.current_revision().await.expect("revision"), rev);
}

pub async fn create_existing_is_already_exists<S: Store>(store: S) {
    let rev = store.create("/k", b"v1".to_vec()).await.expect("create");
    let err = store
        .create("/k", b"v2".to_vec())
        .await
        .expect_err("second create");
    assert!(
        matches!(&err, StoreError::AlreadyExists(k) if k == "/k"),
        "{err:?}"
    );
    assert_eq!(
        store.get("/k").await.expect("get"),
        Some(kv("/k", "v1", rev, rev))
    );
    assert_eq!(store.current_revision().await.expect("revision"), rev);
}

pub async fn update_with_stale_revision_is_conflict_and_changes_nothing<S: Store>(store: S) {
    let r1 = store.create("/k", b"v1".to_vec()).await.expect("create");
    let r2 = store
        .update("/k", b"v2".to_vec(), r1)
        .await
        .expect("update");
    assert!(r2 > r1);
    let err = store
        .update("/k", b"v3".to_vec(), r1)
        .await
        .expect_err("stale update");
    match err {
        StoreError::Conflict {
            key,
            expected,
            actual,
        } => {
            assert_eq!((key.as_str(), expected, actual), ("/k", r1, r2));
        }
        other => panic!("want Conflict, got {other:?}"),
    }
    // The create revision survives updates; the failed update left no trace.
    assert_eq!(
        store.get("/k").await.expect("get"),
        Some(kv("/k", "v2", r1, r2))
    );
    assert_eq!(store.current_revision().await.expect("revision"), r2);
}

pub async fn update_or_delete_of_missing_key_is_not_found<S: Store>(store: S) {
    let err = store
        .update("/missing", b"v".to_vec(), 1)
        .await
        .expect_err("update");
    assert!(
        matches!(&err, StoreError::NotFound(k) if k == "/missing"),
        "{err:?}"
    );
    let err = store.delete("/missing", None).await.expect_err("delete");
    assert!(
        matches!(&err, StoreError::NotFound(k) if k == "/missing"),
        "{err:?}"
    );
    let rev = store.create("/gone", b"v".to_vec()).await.expect("create");
    store.delete("/gone", None).await.expect("delete");
    let err = store
        .update("/gone", b"v".to_vec(), rev)
        .await
        .expect_err("update deleted");
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    let err = store
        .delete("/gone", Some(rev))
        .await
        .expect_err("delete deleted");
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
}

pub async fn delete_with_expected_revision<S: Store>(store: S) {
    let r1 = store.create("/k", b"v1".to_vec()).await.expect("create");
    let r2 = store
        .update("/k", b"v2".to_vec(), r1)
        .await
        .expect("update");
    let err = store
        .delete("/k", Some(r1))
        .await
        .expect_err("stale delete");
    assert!(
        matches!(err, StoreError::Conflict { expected, actual, .. } if expected == r1 && actual == r2)
    );
    assert_eq!(
        store.get("/k").await.expect("get"),
        Some(kv("/k", "v2", r1, r2))
    );
    let (r3, prev) = store.delete("/k", Some(r2)).await.expect("delete");
    assert!(r3 > r2);
    assert_eq!(prev, kv("/k", "v2", r1, r2));
    assert_eq!(store.get("/k").await.expect("get"), None);
    assert_eq!(store.current_revision().await.expect("revision"), r3);
    // Unconditional delete.
    let r4 = store.create("/j", b"x".to_vec()).await.expect("create");
    let (r5, prev) = store.delete("/j", None).await.expect("delete");
    assert!(r5 > r4);
    assert_eq!(prev, kv("/j", "x", r4, r4));
}

pub async fn revisions_strictly_increase_across_keys<S: Store>(store: S) {
    let mut last = store.current_revision().await.expect("revision");
    for i in 0..5 {
        let key = format!("/r/{i}");
        let created = store.create(&key, b"a".to_vec()).await.expect("create");
        let updated = store
            .update(&key, b"b".to_vec(), created)
            .await
            .expect("update");
        for rev in [created, updated] {
            assert!(rev > last, "revision {rev} after {last}");
            last = rev;
        }
    }
    let (deleted, _) = store.delete("/r/0", None).await.expect("delete");
    assert!(deleted > last);
    assert_eq!(store.current_revision().await.expect("revision"), deleted);
}

pub async fn list_by_prefix_is_lexical_and_excludes_sibling_prefixes<S: Store>(store: S) {
    for key in ["/a/b/2", "/a/b/10", "/a/bc", "/a/b/1", "/a/b", "/a/c/1"] {
        store
            .create(key, key.as_bytes().to_vec())
            .await
            .expect("create");
    }
    let list = store.list("/a/b/", None, 0, None).await.expect("list");
    let keys: Vec<&str> = list.items.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["/a/b/1", "/a/b/10", "/a/b/2"]);
    assert!(!list.more);
    assert_eq!(
        list.revision,
        store.current_revision().await.expect("revision")
    );
    let all = store.list("/a/", None, 0, None).await.expect("list");
    let keys: Vec<&str> = all.items.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(
        keys,
        ["/a/b", "/a/b/1", "/a/b/10", "/a/b/2", "/a/bc", "/a/c/1"]
    );
    assert!(
        store
            .list("/z/", None, 0, None)
            .await
            .expect("list")
            .items
            .is_empty()
    );
}

pub async fn list_paging_with_limit_start_after_and_more<S: Store>(store: S) {
    for i in 0..5 {
        store
            .create(&format!("/p/{i}"), vec![b'0' + i])
            .await
            .expect("create");
    }
    let page = |start: Option<&'static str>, limit, revision| {
        let store = &store;
        async move {
            let list = store
                .list("/p/", start, limit, revision)
                .await
                .expect("list");
            let keys: Vec<String> = list.items.into_iter().map(|kv| kv.key).collect();
            (keys, list.more, list.revision)
        }
    };
    let (keys, more, at) = page(None, 2, None).await;
    assert_eq!(
        (keys, more),
        (vec!["/p/0".to_string(), "/p/1".into()], true)
    );
    // A write between pages must not show up in later pages read at the first page's revision.
    store
        .create("/p/15", b"new".to_vec())
        .await
        .expect("create");
    let (keys, more, _) = page(Some("/p/1"), 2, Some(at)).await;
    assert_eq!(
        (keys, more),
        (vec!["/p/2".to_string(), "/p/3".into()], true)
    );
    let (keys, more, _) = page(Some("/p/3"), 2, Some(at)).await;
    assert_eq!((keys, more), (vec!["/p/4".to_string()], false));
    let (keys, more, _) = page(Some("/p/2"), 2, Some(at)).await;
    assert_eq!(
        (keys, more),
        (vec!["/p/3".to_string(), "/p/4".into()], false)
    );
    let (keys, more, now) = page(Some("/p/1"), 1, None).await;
    assert_eq!((keys, more), (vec!["/p/15".to_string()], true));
    assert!(now > at);
    // start_after before the prefix starts at the prefix.
    let (keys, _, _) = page(Some("/a"), 1, None).await;
    assert_eq!(keys, ["/p/0"]);
}

pub async fn list_at_older_revision_sees_old_state<S: Store>(store: S) {
    let r1 = store.create("/o/a", b"a1".to_vec()).await.expect("create");
    let r2 = store.create("/o/b", b"b1".to_vec()).await.expect("create");
    let r3 = store
        .update("/o/a", b"a2".to_vec(), r1)
        .await
        .expect("update");
    let (r4, _) = store.delete("/o/b", None).await.expect("delete");
    let r5 = store.create("/o/c", b"c1".to_vec()).await.expect("create");
    let cases = [
        (r1, pairs(&[("/o/a", "a1")])),
        (r2, pairs(&[("/o/a", "a1"), ("/o/b", "b1")])),
        (r3, pairs(&[("/o/a", "a2"), ("/o/b", "b1")])),
        (r4, pairs(&[("/o/a", "a2")])),
        (r5, pairs(&[("/o/a", "a2"), ("/o/c", "c1")])),
    ];
    for (rev, want) in cases {
        assert_eq!(
            keys_at(&store, "/o/", Some(rev)).await,
            want,
            "at revision {rev}"
        );
    }
    let old = store.list("/o/", None, 0, Some(r2)).await.expect("list");
    assert_eq!(old.revision, r2);
    assert_eq!(old.items[0], kv("/o/a", "a1", r1, r1));
    let limited = store.list("/o/", None, 1, Some(r3)).await.expect("list");
    assert_eq!((limited.items.len(), limited.more), (1, true));
}

pub async fn list_at_future_revision_is_error<S: Store>(store: S) {
    store.create("/f", b"v".to_vec()).await.expect("create");
    let current = store.current_revision().await.expect("revision");
    let err = store
        .list("/", None, 0, Some(current + 1))
        .await
        .expect_err("future list");
    assert!(
        matches!(err, StoreError::FutureRevision { requested, current: c } if requested == current + 1 && c == current),
        "{err:?}"
    );
}

pub async fn list_at_compacted_revision_is_compacted<S: Store>(store: S) {
    let r1 = store.create("/c/a", b"1".to_vec()).await.expect("create");
    let r2 = store
        .update("/c/a", b"2".to_vec(), r1)
        .await
        .expect("update");
    let r3 = store
        .update("/c/a", b"3".to_vec(), r2)
        .await
        .expect("update");
    store.compact(r2).await.expect("compact");
    assert_eq!(store.compacted_revision().await.expect("compacted"), r2);
    let err = store
        .list("/c/", None, 0, Some(r1))
        .await
        .expect_err("compacted list");
    assert!(
        matches!(err, StoreError::Compacted { requested, .. } if requested == r1),
        "{err:?}"
    );
    assert_eq!(
        keys_at(&store, "/c/", Some(r2)).await,
        pairs(&[("/c/a", "2")])
    );
    assert_eq!(
        keys_at(&store, "/c/", Some(r3)).await,
        pairs(&[("/c/a", "3")])
    );
}

pub async fn list_after_compaction_sees_state_as_of_each_revision<S: Store>(store: S) {
    let r1 = store.create("/s/a", b"a1".to_vec()).await.expect("create");
    let r2 = store
        .update("/s/a", b"a2".to_vec(), r1)
        .await
        .expect("update");
    let r3 = store.create("/s/b", b"b1".to_vec()).await.expect("create");
    let r4 = store
        .update("/s/a", b"a3".to_vec(), r2)
        .await
        .expect("update");
    let (r5, _) = store.delete("/s/b", Some(r3)).await.expect("delete");
    store
        .create("/s/gone", b"g".to_vec())
        .await
        .expect("create");
    store.delete("/s/gone", None).await.expect("delete");
    store.compact(r3).await.expect("compact");
    let cases = [
        (r3, pairs(&[("/s/a", "a2"), ("/s/b", "b1")])),
        (r4, pairs(&[("/s/a", "a3"), ("/s/b", "b1")])),
        (r5, pairs(&[("/s/a", "a3")])),
    ];
    for (rev, want) in cases {
        assert_eq!(
            keys_at(&store, "/s/", Some(rev)).await,
            want,
            "at revision {rev}"
        );
    }
    let at_r3 = store.list("/s/", None, 0, Some(r3)).await.expect("list");
    assert_eq!(at_r3.items[0], kv("/s/a", "a2", r1, r2));
}

pub async fn watch_replays_history_then_live_events_in_order<S: Store>(store: S) {
    let r1 = store.create("/w/a", b"a1".to_vec()).await.expect("create");
    let r2 = store
        .update("/w/a", b"a2".to_vec(), r1)
        .await
        .expect("update");
    store
        .create("/wx", b"sibling".to_vec())
        .await
        .expect("create");
    let mut rx = store.watch("/w/", r1 - 1).await.expect("watch");
    assert_eq!(
        next_event(&mut rx).await,
        put(kv("/w/a", "a1", r1, r1), None)
    );
    assert_eq!(
        next_event(&mut rx).await,
        put(kv("/w/a", "a2", r1, r2), Some(kv("/w/a", "a1", r1, r1)))
    );
    let r4 = store.create("/w/b", b"b1".to_vec()).await.expect("create");
    store
        .create("/x/ignored", b"x".to_vec())
        .await
        .expect("create");
    let r6 = store
        .update("/w/a", b"a3".to_vec(), r2)
        .await
        .expect("update");
    let (r7, _) = store.delete("/w/b", None).await.expect("delete");
    assert_eq!(
        next_event(&mut rx).await,
        put(kv("/w/b", "b1", r4, r4), None)
    );
    assert_eq!(
        next_event(&mut rx).await,
        put(kv("/w/a", "a3", r1, r6), Some(kv("/w/a", "a2", r1, r2)))
    );
    assert_eq!(
        next_event(&mut rx).await,
        WatchEvent::Delete {
            prev: kv("/w/b", "b1", r4, r4),
            revision: r7
        }
    );
    // A watch from the middle of history starts right after the given revision.
    let mut from_r2 = store.watch("/w/", r2).await.expect("watch");
    let revisions = [r4, r6, r7];
    for want in revisions {
        assert_eq!(next_event(&mut from_r2).await.revision(), want);
    }
    // No duplicates or stragglers: the next event on both watches is the next write.
    let r8 = store.create("/w/c", b"c1".to_vec()).await.expect("create");
    assert_eq!(next_event(&mut rx).await.revision(), r8);
    assert_eq!(next_event(&mut from_r2).await.revision(), r8);
}

pub async fn watches_started_during_writes_see_every_later_event_once<S: Store>(store: S) {
    const WRITES: i64 = 300;
    const WATCHES: usize = 12;
    let store = Arc::new(store);
    let first = store
        .create("/race/k", b"0".to_vec())
        .await
        .expect("create");
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut rev = first;
            for i in 0..WRITES {
                rev = store
                    .update("/race/k", i.to_string().into_bytes(), rev)
                    .await
                    .expect("update");
                if i % 25 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            rev
        })
    };
    // Start watches at whatever the current revision is while the writer runs; each must
    // see exactly the revisions after its start, with no gap between replay and live.
    let mut watches = Vec::new();
    for _ in 0..WATCHES {
        let after = store.current_revision().await.expect("revision");
        watches.push((after, store.watch("/race/", after).await.expect("watch")));
        tokio::task::yield_now().await;
    }
    let last = writer.await.expect("writer");
    for (after, mut rx) in watches {
        for want in after + 1..=last {
            let got = next_event(&mut rx).await.revision();
            assert_eq!(got, want, "watch after {after}");
        }
    }
}

pub async fn watch_of_deleted_key_gets_delete_with_prev<S: Store>(store: S) {
    let r1 = store
        .create("/d/k", b"last".to_vec())
        .await
        .expect("create");
    let mut rx = store.watch("/d/k", r1).await.expect("watch");
    let (r2, _) = store.delete("/d/k", Some(r1)).await.expect("delete");
    let event = next_event(&mut rx).await;
    assert_eq!(
        event,
        WatchEvent::Delete {
            prev: kv("/d/k", "last", r1, r1),
            revision: r2
        }
    );
    assert_eq!((event.revision(), event.key()), (r2, "/d/k"));
}

pub async fn watch_from_compacted_revision_is_compacted<S: Store>(store: S) {
    let r1 = store.create("/c/a", b"1".to_vec()).await.expect("create");
    let r2 = store
        .update("/c/a", b"2".to_vec(), r1)
        .await
        .expect("update");
    store
        .update("/c/a", b"3".to_vec(), r2)
        .await
        .expect("update");
    store.compact(r2).await.expect("compact");
    match store.watch("/c/", r1).await {
        Err(StoreError::Compacted {
            requested,
            compacted,
        }) => assert_eq!((requested, compacted), (r1, r2)),
        Err(other) => panic!("want Compacted, got {other:?}"),
        Ok(_) => panic!("watch from a compacted revision must fail"),
    }
}

pub async fn watch_from_compaction_point_replays_later_events_with_prev<S: Store>(store: S) {
    let r1 = store.create("/c/a", b"a1".to_vec()).await.expect("create");
    let r2 = store.create("/c/b", b"b1".to_vec()).await.expect("create");
    let r3 = store
        .update("/c/a", b"a2".to_vec(), r1)
        .await
        .expect("update");
    let (r4, _) = store.delete("/c/b", None).await.expect("delete");
    store.compact(r3).await.expect("compact");
    let mut rx = store.watch("/c/", r3).await.expect("watch");
    assert_eq!(
        next_event(&mut rx).await,
        WatchEvent::Delete {
            prev: kv("/c/b", "b1", r2, r2),
            revision: r4
        }
    );
    let r5 = store
        .update("/c/a", b"a3".to_vec(), r3)
        .await
        .expect("update");
    assert_eq!(
        next_event(&mut rx).await,
        put(kv("/c/a", "a3", r1, r5), Some(kv("/c/a", "a2", r1, r3)))
    );
}

pub async fn compaction_keeps_current_values_and_revisions_continue<S: Store>(store: S) {
    let mut rev = store.create("/k/a", b"0".to_vec()).await.expect("create");
    for i in 1..10 {
        rev = store
            .update("/k/a", format!("{i}").into_bytes(), rev)
            .await
            .expect("update");
    }
    let c = store.create("/k/c", b"c".to_vec()).await.expect("create");
    store.create("/k/b", b"b".to_vec()).await.expect("create");
    // The newest write is a delete, so its revision exists only as a tombstone.
    let (last, _) = store.delete("/k/b", None).await.expect("delete");
    store.compact(last).await.expect("compact");
    assert_eq!(store.current_revision().await.expect("revision"), last);
    assert_eq!(
        keys_at(&store, "/k/", None).await,
        pairs(&[("/k/a", "9"), ("/k/c", "c")])
    );
    assert_eq!(
        store
            .get("/k/a")
            .await
            .expect("get")
            .map(|kv| kv.mod_revision),
        Some(rev)
    );
    assert_eq!(
        store.get("/k/c").await.expect("get"),
        Some(kv("/k/c", "c", c, c))
    );
    let next = store.create("/k/d", b"d".to_vec()).await.expect("create");
    assert!(
        next > last,
        "revision {next} reused after compaction at {last}"
    );
    // Compacting again at or below the compaction point changes nothing.
    store.compact(last).await.expect("compact again");
    assert_eq!(store.compacted_revision().await.expect("compacted"), last);
    let err = store
        .compact(next + 1)
        .await
        .expect_err("future compaction");
    assert!(matches!(err, StoreError::FutureRevision { .. }), "{err:?}");
}

pub async fn count_counts_keys_under_prefix<S: Store>(store: S) {
    for key in ["/n/a/1", "/n/a/2", "/n/a/3", "/n/ab", "/n/b/1"] {
        store.create(key, b"v".to_vec()).await.expect("create");
    }
    store.delete("/n/a/2", None).await.expect("delete");
    assert_eq!(store.count("/n/a/").await.expect("count"), 2);
    assert_eq!(store.count("/n/").await.expect("count"), 4);
    assert_eq!(store.count("/none/").await.expect("count"), 0);
}

pub async fn concurrent_creates_of_same_key_exactly_one_wins<S: Store>(store: S) {
    let store = Arc::new(store);
    let tasks: Vec<_> = (0..16u8)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { (i, store.create("/race", vec![i]).await) })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        match task.await.expect("task") {
            (i, Ok(rev)) => winners.push((i, rev)),
            (_, Err(StoreError::AlreadyExists(_))) => {}
            (_, Err(other)) => panic!("unexpected error {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    let (value, rev) = winners[0];
    assert_eq!(
        store.get("/race").await.expect("get"),
        Some(KeyValue {
            key: "/race".into(),
            value: vec![value],
            create_revision: rev,
            mod_revision: rev,
        })
    );
}

pub async fn concurrent_cas_updates_lose_no_update<S: Store>(store: S) {
    const TASKS: u64 = 8;
    const INCREMENTS: u64 = 50;
    let store = Arc::new(store);
    store
        .create("/counter", b"0".to_vec())
        .await
        .expect("create");
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                for _ in 0..INCREMENTS {
                    increment(&*store, "/counter").await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    let value = store
        .get("/counter")
        .await
        .expect("get")
        .expect("present")
        .value;
    assert_eq!(
        String::from_utf8_lossy(&value),
        (TASKS * INCREMENTS).to_string()
    );
}

/// Read-modify-write with retry on conflict.
async fn increment<S: Store>(store: &S, key: &str) {
    loop {
        let current = store.get(key).await.expect("get").expect("present");
        let n: u64 = String::from_utf8_lossy(&current.value)
            .parse()
            .expect("number");
        match store
            .update(key, (n + 1).to_string().into_bytes(), current.mod_revision)
            .await
        {
            Ok(_) => return,
            Err(StoreError::Conflict { .. }) => continue,
            Err(other) => panic!("unexpected error {other:?}"),
        }
    }
}

pub async fn watcher_that_never_reads_does_not_block_writers<S: Store>(store: S) {
    const WRITES: usize = 6000;
    let start = store.create("/slow", b"0".to_vec()).await.expect("create");
    let mut rx = store.watch("/slow", start).await.expect("watch");
    let writes = async {
        let mut rev = start;
        for i in 1..=WRITES {
            rev = store
                .update("/slow", i.to_string().into_bytes(), rev)
                .await
                .expect("update");
        }
        rev
    };
    let last = tokio::time::timeout(Duration::from_secs(120), writes)
        .await
        .expect("writers blocked");
    // The watcher then sees an in-order prefix of the writes, ending either with all of them
    // or with an error (it fell behind) after which the channel closes.
    let mut seen = start;
    loop {
        match tokio::time::timeout(EVENT_TIMEOUT, rx.recv())
            .await
            .expect("watch stalled")
        {
            Some(Ok(event)) => {
                assert!(
                    event.revision() > seen,
                    "revision {} after {seen}",
                    event.revision()
                );
                seen = event.revision();
                if seen == last {
                    break;
                }
            }
            Some(Err(_)) => {
                let end = tokio::time::timeout(EVENT_TIMEOUT, rx.recv())
                    .await
                    .expect("close");
                assert!(end.is_none(), "a lagged watch must close after its error");
                break;
            }
            None => panic!("watch closed without an error after revision {seen}"),
        }
    }
}
