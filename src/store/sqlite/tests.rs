use super::*;
use std::collections::BTreeMap;
use std::time::Instant;
use tempfile::TempDir;

const LONG: Duration = Duration::from_secs(3600);

fn db_path(dir: &TempDir) -> String {
    // A sub-directory that does not exist yet: `open` must create it.
    dir.path().join("state").join("store.db").to_string_lossy().into_owned()
}

fn open(dir: &TempDir) -> SqliteStore {
    SqliteStore::open(&db_path(dir)).expect("open store")
}

/// The next event, failing the test if none arrives within `secs`.
async fn next(rx: &mut mpsc::Receiver<WatchEvent>, secs: u64) -> WatchEvent {
    match tokio::time::timeout(Duration::from_secs(secs), rx.recv()).await {
        Ok(Some(ev)) => ev,
        Ok(None) => panic!("watch channel closed"),
        Err(_) => panic!("no watch event within {secs}s"),
    }
}

fn revision_of(ev: &WatchEvent) -> Revision {
    match ev {
        WatchEvent::Put(e) => e.mod_revision,
        WatchEvent::Delete { revision, .. } => *revision,
        WatchEvent::Resync => panic!("unexpected resync"),
    }
}

#[tokio::test]
async fn describe_and_open_errors() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    assert_eq!(store.describe(), format!("sqlite:{}", db_path(&dir)));
    // A directory where the file should be cannot be opened as a database.
    let err = SqliteStore::open(&dir.path().to_string_lossy())
        .err()
        .expect("must fail");
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
}

#[tokio::test]
async fn create_only_if_absent() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    let before = SystemTime::now();
    let e = store.create("lease/a", "1", LONG).await.unwrap().expect("created");
    assert_eq!((e.key.as_str(), e.value.as_str()), ("lease/a", "1"));
    assert_eq!(e.create_revision, 1);
    assert_eq!(e.mod_revision, 1);
    let left = remaining(&e, before).expect("has expiry");
    assert!(left > LONG - Duration::from_secs(5) && left <= LONG + Duration::from_secs(1));

    assert_eq!(store.create("lease/a", "2", LONG).await.unwrap(), None);
    assert_eq!(store.get("lease/a").await.unwrap(), Some(e));
    // A failed create changes nothing, not even the revision.
    assert_eq!(store.list("").await.unwrap().revision, 1);
}

#[tokio::test]
async fn put_get_delete() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    assert_eq!(store.get("config").await.unwrap(), None);
    let r1 = store.put("config", "{}").await.unwrap();
    let r2 = store.put("config", "{\"a\":1}").await.unwrap();
    assert!(r2 > r1);
    let e = store.get("config").await.unwrap().expect("present");
    assert_eq!((e.create_revision, e.mod_revision, e.expires_at), (r1, r2, None));
    assert_eq!(e.value, "{\"a\":1}");
    assert!(store.delete("config").await.unwrap());
    assert!(!store.delete("config").await.unwrap());
    assert_eq!(store.get("config").await.unwrap(), None);
}

#[tokio::test]
async fn refresh_checks_expected_revision() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    let e = store
        .create("lease/a", "1", Duration::from_secs(10))
        .await
        .unwrap()
        .unwrap();
    // Wrong revision: refused, nothing changes.
    assert_eq!(
        store.refresh("lease/a", "x", LONG, e.mod_revision + 7).await.unwrap(),
        None
    );
    assert_eq!(store.get("lease/a").await.unwrap(), Some(e.clone()));
    // Right revision: new value, new revision, new expiry, same create revision.
    let r = store
        .refresh("lease/a", "2", LONG, e.mod_revision)
        .await
        .unwrap()
        .expect("refreshed");
    assert_eq!(r.value, "2");
    assert_eq!(r.create_revision, e.create_revision);
    assert!(r.mod_revision > e.mod_revision);
    assert!(r.expires_at > e.expires_at);
    assert_eq!(store.get("lease/a").await.unwrap(), Some(r.clone()));
    // The old revision is stale now.
    assert_eq!(store.refresh("lease/a", "3", LONG, e.mod_revision).await.unwrap(), None);
    // A missing key cannot be refreshed.
    assert_eq!(store.refresh("lease/none", "3", LONG, 0).await.unwrap(), None);
}

#[tokio::test]
async fn expiry_hides_then_deletes_with_event() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    store.put("lease/keep", "k").await.unwrap();
    let e = store
        .create("lease/a", "1", Duration::from_millis(200))
        .await
        .unwrap()
        .unwrap();
    let mut rx = store.watch("lease/", e.mod_revision).await.unwrap();
    assert!(store.get("lease/a").await.unwrap().is_some());

    tokio::time::sleep(Duration::from_millis(250)).await;
    // Invisible at once, whether or not it has been purged yet.
    assert_eq!(store.get("lease/a").await.unwrap(), None);
    let keys: Vec<_> = store
        .list("lease/")
        .await
        .unwrap()
        .entries
        .into_iter()
        .map(|e| e.key)
        .collect();
    assert_eq!(keys, ["lease/keep"]);
    // Expired leases cannot be refreshed.
    assert_eq!(store.refresh("lease/a", "1", LONG, e.mod_revision).await.unwrap(), None);

    // ...and actually deleted, with a revision of its own.
    let ev = next(&mut rx, 3).await;
    assert_eq!(
        ev,
        WatchEvent::Delete {
            key: "lease/a".into(),
            revision: e.mod_revision + 1
        }
    );
}

#[tokio::test]
async fn an_expired_key_can_be_created_again() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    let old = store
        .create("lease/a", "old", Duration::from_millis(100))
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let new = store
        .create("lease/a", "new", LONG)
        .await
        .unwrap()
        .expect("expired key is absent");
    // Revision old+1 is the expiry's Delete, old+2 the new key.
    assert_eq!(new.create_revision, old.mod_revision + 2);
    let mut rx = store.watch("lease/", old.mod_revision).await.unwrap();
    assert!(matches!(next(&mut rx, 3).await, WatchEvent::Delete { .. }));
    assert_eq!(next(&mut rx, 3).await, WatchEvent::Put(new));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_watchers_do_not_wake_each_other() {
    let dir = TempDir::new().unwrap();
    let (a, b) = (open(&dir), open(&dir));
    let _wa = a.watch("", 0).await.unwrap();
    let _wb = b.watch("", 0).await.unwrap();
    a.put("x", "1").await.unwrap();
    let (ta, tb) = (a.inner.subscribe().unwrap(), b.inner.subscribe().unwrap());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (ga, gb) = (*ta.borrow(), *tb.borrow());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (da, db) = (ta.borrow().wrapping_sub(ga), tb.borrow().wrapping_sub(gb));
    eprintln!("notifier wake-ups in 2.5 s idle: {da} and {db}");
    // Only the 1 s fallback poll: reads (which write -shm) must not wake anyone.
    assert!(da <= 4 && db <= 4, "{da} {db}");
}

#[tokio::test]
async fn expiry_is_purged_by_a_watcher_without_any_write() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    let e = store
        .create("lease/a", "1", Duration::from_millis(200))
        .await
        .unwrap()
        .unwrap();
    let mut rx = store.watch("lease/", e.mod_revision).await.unwrap();
    let start = Instant::now();
    assert!(matches!(next(&mut rx, 3).await, WatchEvent::Delete { .. }));
    // The notifier wakes up at the expiry, not at the next 1 s poll.
    eprintln!("expiry noticed {:?} after create (ttl 200ms)", start.elapsed());
}

#[tokio::test]
async fn list_is_a_consistent_snapshot() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    store.put("subnets/10.1.2.0-24", "a").await.unwrap();
    store.put("config", "c").await.unwrap();
    let last = store.put("subnets/10.1.1.0-24", "b").await.unwrap();
    let listing = store.list("subnets/").await.unwrap();
    assert_eq!(listing.revision, last);
    let keys: Vec<_> = listing.entries.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["subnets/10.1.1.0-24", "subnets/10.1.2.0-24"]);

    // A watch from the listing revision sees exactly what came after.
    let mut rx = store.watch("subnets/", listing.revision).await.unwrap();
    let r = store.put("subnets/10.1.3.0-24", "d").await.unwrap();
    assert_eq!(revision_of(&next(&mut rx, 3).await), r);
    // Prefix is literal: '_' and '%' are not wildcards.
    store.put("a_b", "1").await.unwrap();
    store.put("axb", "1").await.unwrap();
    assert_eq!(store.list("a_").await.unwrap().entries.len(), 1);
}

#[tokio::test]
async fn watch_from_revision_returns_later_changes_in_order() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    let mut revs = Vec::new();
    for i in 0..5 {
        revs.push(store.put(&format!("w/{i}"), &i.to_string()).await.unwrap());
        store.put("other/x", "noise").await.unwrap();
    }
    let mut rx = store.watch("w/", revs[1]).await.unwrap();
    for (i, rev) in revs.iter().enumerate().skip(2) {
        match next(&mut rx, 3).await {
            WatchEvent::Put(e) => {
                assert_eq!((e.key, e.mod_revision), (format!("w/{i}"), *rev));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // Live changes follow, in order.
    let d = store.delete("w/0").await.unwrap();
    assert!(d);
    let p = store.put("w/9", "9").await.unwrap();
    assert!(matches!(next(&mut rx, 3).await, WatchEvent::Delete { ref key, .. } if key == "w/0"));
    assert_eq!(revision_of(&next(&mut rx, 3).await), p);
    assert!(rx.try_recv().is_err(), "no other events");
}

#[tokio::test]
async fn falling_behind_history_yields_resync() {
    let dir = TempDir::new().unwrap();
    let store = SqliteStore::open_with_history(&db_path(&dir), 5).unwrap();
    for i in 0..20 {
        store.put("k", &i.to_string()).await.unwrap();
    }
    // Revisions 16..=20 are kept; watching after 15 is fine, after 14 is not.
    let mut ok = store.watch("", 15).await.unwrap();
    assert_eq!(revision_of(&next(&mut ok, 3).await), 16);
    let mut behind = store.watch("", 2).await.unwrap();
    assert_eq!(next(&mut behind, 3).await, WatchEvent::Resync);
    // The watch goes on from the current revision.
    let r = store.put("k", "new").await.unwrap();
    assert_eq!(revision_of(&next(&mut behind, 3).await), r);
}

#[tokio::test]
async fn watch_task_stops_when_receiver_is_dropped() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    let rx = store.watch("", 0).await.unwrap();
    assert!(Arc::strong_count(&store.inner) > 1);
    drop(rx);
    let deadline = Instant::now() + Duration::from_secs(3);
    while Arc::strong_count(&store.inner) > 1 {
        assert!(Instant::now() < deadline, "watch task still holds the store");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn watch_channel_closes_when_store_is_dropped() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    let mut rx = store.watch("", 0).await.unwrap();
    drop(store);
    let closed = tokio::time::timeout(Duration::from_secs(3), rx.recv()).await;
    assert_eq!(closed.expect("channel must close"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_see_each_others_writes_quickly() {
    let dir = TempDir::new().unwrap();
    let writer = open(&dir);
    let reader = open(&dir);
    let start = reader.list("lease/").await.unwrap().revision;
    let mut rx = reader.watch("lease/", start).await.unwrap();
    // Let the notifier settle into its sleep, so we measure a wake-up, not a start-up.
    tokio::time::sleep(Duration::from_millis(50)).await;

    let mut latencies = Vec::new();
    for i in 0..30 {
        let t0 = Instant::now();
        let rev = writer.put(&format!("lease/{i}"), "x").await.unwrap();
        let ev = next(&mut rx, 5).await;
        latencies.push(t0.elapsed());
        assert_eq!(revision_of(&ev), rev);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    latencies.sort();
    let median = latencies[latencies.len() / 2];
    eprintln!(
        "write->watch latency between two instances: min {:?} median {:?} max {:?}",
        latencies[0],
        median,
        latencies[latencies.len() - 1]
    );
    // Far below the 1 s fallback poll, i.e. inotify did the work (generous for loaded CI).
    assert!(median < Duration::from_millis(500), "median {median:?}");
}

#[test]
fn twenty_stores_race_create_on_the_same_keys() {
    let dir = TempDir::new().unwrap();
    let path = db_path(&dir);
    let keys: Vec<String> = (0..4).map(|i| format!("lease/{i}")).collect();
    let barrier = Arc::new(std::sync::Barrier::new(20));
    let threads: Vec<_> = (0..20)
        .map(|t| {
            let (path, keys, barrier) = (path.clone(), keys.clone(), Arc::clone(&barrier));
            std::thread::spawn(move || -> Vec<String> {
                barrier.wait(); // everyone opens (and creates the schema) at once
                let store = SqliteStore::open(&path).expect("open");
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    let mut won = Vec::new();
                    for round in 0..5 {
                        for k in &keys {
                            let v = format!("{t}/{round}");
                            match store.create(k, &v, LONG).await {
                                Ok(Some(e)) => won.push(e.key),
                                Ok(None) => {}
                                Err(e) => panic!("thread {t}: {e}"),
                            }
                        }
                    }
                    won
                })
            })
        })
        .collect();
    let mut won: Vec<String> = threads.into_iter().flat_map(|t| t.join().expect("thread ok")).collect();
    won.sort();
    assert_eq!(won, keys, "each key created exactly once");
}

// ---------------------------------------------------------------------------------------------
// A separate OS process: the test binary re-executes itself to run `child_process` below.

const CHILD_ENV: &str = "WEFT_STORE_TEST_CHILD_DB";

/// Does nothing in a normal run; in the child, writes a key and leaves a short lease behind
/// (a host that dies without cleaning up).
#[tokio::test]
async fn child_process() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let store = SqliteStore::open(&path).unwrap();
    store.put("proc/hello", "from child").await.unwrap();
    store
        .create("proc/lease", "dead host", Duration::from_millis(300))
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn another_process_writes_and_its_lease_expires() {
    let dir = TempDir::new().unwrap();
    let path = db_path(&dir);
    let store = SqliteStore::open(&path).unwrap();
    let mut rx = store.watch("proc/", 0).await.unwrap();
    let status = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "store::sqlite::tests::child_process", "--test-threads=1"])
        .env(CHILD_ENV, &path)
        .stdout(std::process::Stdio::null())
        .status()
        .await
        .unwrap();
    assert!(status.success());
    assert!(matches!(next(&mut rx, 3).await, WatchEvent::Put(e) if e.key == "proc/hello"));
    let lease = match next(&mut rx, 3).await {
        WatchEvent::Put(e) => e,
        other => panic!("unexpected {other:?}"),
    };
    // The child is gone; our process notices the expiry and deletes the lease.
    assert!(matches!(next(&mut rx, 3).await, WatchEvent::Delete { key, .. } if key == "proc/lease"));
    let late = SystemTime::now()
        .duration_since(lease.expires_at.unwrap())
        .unwrap_or_default();
    eprintln!("dead lease deleted {late:?} after its expiry");
    assert!(late < Duration::from_secs(2));
}

// ---------------------------------------------------------------------------------------------
// Randomised: the store against a map model, and watch replay against the final listing.

#[derive(Debug, Clone)]
enum Op {
    Put(u8, u8),
    Create(u8, u8),
    Delete(u8),
    /// Refresh with the current revision (true) or a stale one (false).
    Refresh(u8, u8, bool),
}

fn key(k: u8) -> String {
    ["a/1", "a/2", "b/1"][usize::from(k % 3)].to_string()
}

fn op_strategy() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    prop_oneof![
        (any::<u8>(), any::<u8>()).prop_map(|(k, v)| Op::Put(k, v)),
        (any::<u8>(), any::<u8>()).prop_map(|(k, v)| Op::Create(k, v)),
        any::<u8>().prop_map(Op::Delete),
        (any::<u8>(), any::<u8>(), any::<bool>()).prop_map(|(k, v, f)| Op::Refresh(k, v, f)),
    ]
}

/// key -> (value, create_rev, mod_rev)
type Model = BTreeMap<String, (String, Revision, Revision)>;

async fn apply(store: &SqliteStore, model: &mut Model, rev: &mut Revision, op: &Op) {
    match op {
        Op::Put(k, v) => {
            let r = store.put(&key(*k), &v.to_string()).await.unwrap();
            *rev += 1;
            assert_eq!(r, *rev);
            let create = model.get(&key(*k)).map_or(r, |m| m.1);
            model.insert(key(*k), (v.to_string(), create, r));
        }
        Op::Create(k, v) => {
            let got = store.create(&key(*k), &v.to_string(), LONG).await.unwrap();
            match model.entry(key(*k)) {
                std::collections::btree_map::Entry::Occupied(_) => assert_eq!(got, None),
                std::collections::btree_map::Entry::Vacant(slot) => {
                    *rev += 1;
                    assert_eq!(got.map(|e| e.mod_revision), Some(*rev));
                    slot.insert((v.to_string(), *rev, *rev));
                }
            }
        }
        Op::Delete(k) => {
            let existed = store.delete(&key(*k)).await.unwrap();
            assert_eq!(existed, model.remove(&key(*k)).is_some());
            if existed {
                *rev += 1;
            }
        }
        Op::Refresh(k, v, fresh) => {
            let current = model.get(&key(*k)).map_or(0, |m| m.2);
            let expected = if *fresh { current } else { current + 1 };
            let got = store.refresh(&key(*k), &v.to_string(), LONG, expected).await.unwrap();
            match model.get_mut(&key(*k)) {
                Some(m) if *fresh => {
                    *rev += 1;
                    assert_eq!(got.map(|e| (e.create_revision, e.mod_revision)), Some((m.1, *rev)));
                    *m = (v.to_string(), m.1, *rev);
                }
                _ => assert_eq!(got, None),
            }
        }
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
    #[test]
    fn random_ops_match_model_and_watch_replays_to_listing(
        ops in proptest::collection::vec(op_strategy(), 1..40)
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let dir = TempDir::new().unwrap();
            let store = open(&dir);
            let mut rx = store.watch("a/", 0).await.unwrap();
            let (mut model, mut rev) = (Model::new(), 0);
            for op in &ops {
                apply(&store, &mut model, &mut rev, op).await;
            }
            let listing = store.list("a/").await.unwrap();
            assert_eq!(listing.revision, rev);
            let listed: Model = listing.entries.into_iter()
                .map(|e| (e.key, (e.value, e.create_revision, e.mod_revision))).collect();
            let expected: Model = model.into_iter().filter(|(k, _)| k.starts_with("a/")).collect();
            assert_eq!(listed, expected);

            // Replaying the watch from 0 up to the listing revision rebuilds the listing.
            let mut replay = Model::new();
            let mut seen = 0;
            let last_a = store.list("a/").await.unwrap().revision;
            while seen < last_a {
                match tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {
                    Ok(Some(WatchEvent::Put(e))) => {
                        assert!(e.mod_revision > seen);
                        seen = e.mod_revision;
                        replay.insert(e.key, (e.value, e.create_revision, e.mod_revision));
                    }
                    Ok(Some(WatchEvent::Delete { key, revision })) => {
                        assert!(revision > seen);
                        seen = revision;
                        replay.remove(&key);
                    }
                    Ok(other) => panic!("unexpected {other:?}"),
                    Err(_) => break, // the remaining revisions were outside "a/"
                }
            }
            assert_eq!(replay, expected);
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Many agents on one file (each store has its own connection and inotify, as a process would).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_agents_converge() {
    // 25, not 50: all tests share the per-user limit of 128 inotify instances.
    const AGENTS: usize = 25;
    let dir = TempDir::new().unwrap();
    let stores: Vec<Arc<SqliteStore>> = (0..AGENTS).map(|_| Arc::new(open(&dir))).collect();
    let mut watches = Vec::new();
    for s in &stores {
        watches.push(s.watch("lease/", 0).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let start = Instant::now();
    let creates: Vec<_> = stores
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let s = Arc::clone(s);
            tokio::spawn(async move { s.create(&format!("lease/{i}"), "x", LONG).await })
        })
        .collect();
    for c in creates {
        assert!(c.await.unwrap().unwrap().is_some());
    }
    let writes_done = start.elapsed();
    let seen_all = watches.into_iter().map(|mut rx| {
        tokio::spawn(async move {
            for _ in 0..AGENTS {
                assert!(matches!(next(&mut rx, 5).await, WatchEvent::Put(_)));
            }
            start.elapsed()
        })
    });
    let mut worst = Duration::ZERO;
    for w in seen_all.collect::<Vec<_>>() {
        worst = worst.max(w.await.unwrap());
    }
    eprintln!("{AGENTS} agents: all creates done in {writes_done:?}, every watcher saw all in {worst:?}");
}

// ---------------------------------------------------------------------------------------------
// Resource bounds: the watch reads its history a bounded page at a time.

const MIB: usize = 1 << 20;

/// What a watcher must see: (revision, key, value length or None for a delete).
type Seen = Vec<(Revision, String, Option<usize>)>;

fn seen(ev: &WatchEvent) -> (Revision, String, Option<usize>) {
    match ev {
        WatchEvent::Put(e) => (e.mod_revision, e.key.clone(), Some(e.value.len())),
        WatchEvent::Delete { key, revision } => (*revision, key.clone(), None),
        WatchEvent::Resync => panic!("unexpected resync"),
    }
}

/// 30 values of 1 MiB mixed with small puts, deletes and writes outside the prefix; returns what
/// a watcher of "lease/" from revision 0 must see: every event, the huge values cut to just over
/// `MAX_WATCH_VALUE_BYTES` (two-byte characters: the cut ends on a character boundary).
async fn plant_huge_history(store: &SqliteStore) -> Seen {
    let huge = "é".repeat(MIB / 2);
    let cut_len = crate::store::cut(&huge, MAX_WATCH_VALUE_BYTES).len();
    assert_eq!(cut_len, MAX_WATCH_VALUE_BYTES + 2);
    let mut want = Seen::new();
    for i in 0..30 {
        let key = format!("lease/huge-{i}");
        let r = store.put(&key, &huge).await.unwrap();
        want.push((r, key, Some(cut_len)));
        for j in 0..3 {
            let key = format!("lease/small-{i}-{j}");
            let r = store.put(&key, "s").await.unwrap();
            want.push((r, key, Some(1)));
        }
        store.put("other/noise", &huge).await.unwrap();
        if i % 4 == 0 {
            let key = format!("lease/small-{i}-0");
            assert!(store.delete(&key).await.unwrap());
            let r = store.list("").await.unwrap().revision;
            want.push((r, key, None));
        }
    }
    want
}

/// Every page `changes_since` returns for `prefix` from `after` on, checking each against
/// `bound`: at most `rows` events, and under `bytes` before its last event.
fn read_pages(conn: &mut rusqlite::Connection, prefix: &str, after: Revision, bound: ops::PageBound) -> Vec<Seen> {
    let mut pages = Vec::new();
    let mut last = after;
    loop {
        let ops::Changes::Events { events, upto, cut } = ops::changes_since(conn, prefix, last, bound).unwrap() else {
            panic!("history lost after {last}");
        };
        assert!(events.len() <= bound.rows, "page of {} events", events.len());
        let sizes: Vec<usize> = events
            .iter()
            .map(|e| match e {
                WatchEvent::Put(e) => e.key.len() + e.value.len(),
                WatchEvent::Delete { key, .. } => key.len(),
                WatchEvent::Resync => 0,
            })
            .collect();
        let before_last: usize = sizes.iter().rev().skip(1).sum();
        assert!(
            before_last < bound.bytes,
            "page held {before_last} bytes before its last event"
        );
        if cut {
            assert!(!events.is_empty(), "a cut page holds at least one event");
            assert_eq!(
                upto,
                revision_of(events.last().unwrap()),
                "a cut page continues from its last event"
            );
        } else {
            // Nothing writes meanwhile: an uncut page reaches the head.
            assert_eq!(upto, ops::head(conn).unwrap());
        }
        assert!(upto >= last);
        last = upto;
        pages.push(events.iter().map(seen).collect());
        if !cut {
            return pages;
        }
    }
}

#[tokio::test]
async fn watch_pages_a_history_of_huge_values() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    // One watcher live from the start, one started afterwards (its first read would have been
    // the whole 60 MB history at once).
    let mut live = store.watch("lease/", 0).await.unwrap();
    let want = plant_huge_history(&store).await;
    let mut late = store.watch("lease/", 0).await.unwrap();
    for rx in [&mut live, &mut late] {
        let mut got = Seen::new();
        while got.len() < want.len() {
            got.push(seen(&next(rx, 10).await));
        }
        assert_eq!(got, want, "every event, in order, with its revision");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(rx.try_recv().is_err(), "each event exactly once");
    }

    // The reads themselves, at the watch's bound and at a few others.
    let mut conn = store.inner.lock_conn();
    // With the fewest pages each bound allows: 30 values cut to 64 KiB (~1.9 MiB) in pages of
    // ~1 MiB or 256 KiB, all events in pages of 4, one event a page.
    let n = want.len();
    for (bound, fewest) in [
        (ops::WATCH_PAGE, 2),
        (
            ops::PageBound {
                rows: 4,
                bytes: usize::MAX,
            },
            n.div_ceil(4),
        ),
        (
            ops::PageBound {
                rows: 1000,
                bytes: 256 << 10,
            },
            7,
        ),
        (ops::PageBound { rows: 1000, bytes: 1 }, n),
    ] {
        let pages = read_pages(&mut conn, "lease/", 0, bound);
        let all: Seen = pages.iter().flatten().cloned().collect();
        assert_eq!(all, want, "pages at {bound:?}");
        let most = pages.iter().map(Vec::len).max().unwrap_or(0);
        eprintln!("{bound:?}: {} pages, at most {most} events", pages.len());
        assert!(pages.len() >= fewest, "{bound:?}: only {} pages", pages.len());
    }
    // A watcher that is up to date reads nothing.
    let head = ops::head(&conn).unwrap();
    match ops::changes_since(&mut conn, "lease/", head, ops::WATCH_PAGE).unwrap() {
        ops::Changes::Events { events, upto, cut } => assert!(events.is_empty() && upto == head && !cut),
        ops::Changes::Lost { .. } => panic!("lost"),
    }
}

/// A cut page stops reading the database: a row after the cut that cannot be read (a value that
/// is not text) does not fail the read, and only fails the one page that reaches it.
#[tokio::test]
async fn a_cut_page_reads_no_further() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    let big = store.put("k/big", &"x".repeat(4096)).await.unwrap();
    {
        let conn = store.inner.lock_conn();
        let rev: Revision = conn
            .query_row(
                "UPDATE meta SET revision = revision + 1 WHERE id = 1 RETURNING revision",
                [],
                |r| r.get(0),
            )
            .unwrap();
        conn.execute(
            "INSERT INTO events (rev, key, value, create_rev) VALUES (?1, 'k/bad', X'FF00FF', ?1)",
            [rev],
        )
        .unwrap();
    }
    let mut conn = store.inner.lock_conn();
    let bound = ops::PageBound { rows: 100, bytes: 1024 };
    match ops::changes_since(&mut conn, "k/", 0, bound).unwrap() {
        ops::Changes::Events { events, upto, cut } => {
            assert_eq!(events.len(), 1);
            assert_eq!((upto, cut), (big, true));
        }
        ops::Changes::Lost { .. } => panic!("lost"),
    }
    // The next page reaches the bad row and fails (an eager read would have failed above).
    assert!(ops::changes_since(&mut conn, "k/", big, bound).is_err());
}

/// Puts `n` keys `key-0..n` under `prefix` in one transaction (fast: one commit).
async fn bulk_put(store: &SqliteStore, prefix: &str, n: usize) -> Revision {
    let p = prefix.to_string();
    store
        .inner
        .write("bulk put".into(), move |tx, _| {
            let mut last = 0;
            for i in 0..n {
                last = ops::put(tx, &format!("{p}key-{i}"), "v")?;
            }
            Ok(last)
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn compaction_between_pages_yields_resync() {
    let dir = TempDir::new().unwrap();
    let store = SqliteStore::open_with_history(&db_path(&dir), 1000).unwrap();
    bulk_put(&store, "a/", 1000).await;

    // The reads: a first page, then the history moves past it.
    {
        let bound = ops::PageBound {
            rows: 100,
            bytes: usize::MAX,
        };
        let upto = {
            let mut conn = store.inner.lock_conn();
            let ops::Changes::Events { events, upto, cut } = ops::changes_since(&mut conn, "a/", 0, bound).unwrap()
            else {
                panic!("lost at once");
            };
            assert_eq!((events.len(), upto, cut), (100, 100, true));
            upto
        };
        bulk_put(&store, "a/", 1000).await;
        let mut conn = store.inner.lock_conn();
        assert!(matches!(
            ops::changes_since(&mut conn, "a/", upto, bound).unwrap(),
            ops::Changes::Lost { head: 2000 }
        ));
    }

    // The watch: it reads a first page (cut at the row bound) and sends it until the channel is
    // full; the history is compacted meanwhile; once drained, its next read is a resync.
    let rows = ops::WATCH_PAGE.rows;
    let n = rows + 500;
    let dir = TempDir::new().unwrap();
    let store = SqliteStore::open_with_history(&db_path(&dir), n).unwrap();
    bulk_put(&store, "a/", n).await;
    let mut rx = store.watch("a/", 0).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while rx.len() < WATCH_BUFFER {
        assert!(Instant::now() < deadline, "the watch never filled its channel");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let head = bulk_put(&store, "a/", n).await;
    let mut revs = Vec::new();
    loop {
        match next(&mut rx, 5).await {
            WatchEvent::Resync => break,
            ev => revs.push(revision_of(&ev)),
        }
    }
    // The first page arrived, in order, then the resync; nothing of the compacted history.
    assert_eq!(revs, (1..=rows as Revision).collect::<Vec<_>>());
    let r = store.put("a/new", "x").await.unwrap();
    assert_eq!(r, head + 1);
    assert_eq!(revision_of(&next(&mut rx, 5).await), r);
}
