//! Resource bounds of the etcd store against a real etcd (Debian's etcd-server 3.4) on
//! 127.0.0.1: a listing is read in pages, so values of ~1 MB (etcd accepts up to 1.5 MiB; anyone
//! who can write one key can plant them) or tens of thousands of keys never make one response
//! larger than the client accepts (tonic's 4 MiB), and the pages are one snapshot; a watch asks
//! etcd to fragment large responses, and its events carry huge values cut. No root needed.

mod common;

use common::etcd::Etcd;
use futures::stream::{self, StreamExt};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use weft::store::etcd::EtcdConfig;
use weft::store::{self, Listing, Revision, Store, StoreConfig, WatchEvent};

const SUBNETS: &str = "/coreos.com/network/subnets/";
/// Just under etcd's default request limit (1.5 MiB) with room for the key and framing.
const HUGE: usize = 1_000_000;

fn open(etcd: &Etcd) -> Arc<dyn Store> {
    store::open(&StoreConfig::Etcd(EtcdConfig::from_endpoints(&etcd.endpoint))).unwrap()
}

/// key -> value, as a listing must show it.
type Keys = BTreeMap<String, String>;

fn small_key(i: usize) -> String {
    format!("{SUBNETS}10.{}.{}.0-24", i / 256, i % 256)
}

/// Puts `keys` (32 at a time); returns the highest revision written.
async fn put_all(s: &Arc<dyn Store>, keys: &Keys) -> Revision {
    stream::iter(keys.iter().map(|(k, v)| {
        let s = Arc::clone(s);
        async move { s.put(k, v).await.unwrap() }
    }))
    .buffer_unordered(32)
    .fold(0, |a, r| async move { a.max(r) })
    .await
}

/// `huge` values of ~1 MB, each a different hostile "lease", among `small` honest-looking ones.
fn planted(huge: usize, small: usize) -> Keys {
    let mut keys = Keys::new();
    for i in 0..small {
        let v = format!(
            r#"{{"PublicIP":"198.18.{}.{}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"02:00:00:00:{:02x}:{:02x}"}}}}"#,
            i / 256,
            i % 256,
            i / 256,
            i % 256
        );
        keys.insert(small_key(i), v);
    }
    for i in 0..huge {
        // Next to each other early in key order, so that they all fall in the first page (6 MB):
        // the page is refused as too large and read in smaller pages.
        let k = format!("{SUBNETS}10.0.{}.128-25", 100 + i);
        let v = format!(
            "{{\"PublicIP\":\"{}\"}}",
            char::from(b'a' + i as u8).to_string().repeat(HUGE)
        );
        keys.insert(k, v);
    }
    keys
}

fn as_keys(l: &Listing) -> Keys {
    l.entries.iter().map(|e| (e.key.clone(), e.value.clone())).collect()
}

/// Six values of ~1 MB (6 MB in all, more than tonic's 4 MiB) plus 3,000 small keys: the listing
/// is complete, and at the revision of the last write. Before paging, every listing of the prefix
/// failed ("decoded message length too large"), so an agent could never list its leases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_with_huge_values_is_complete() {
    let etcd = Etcd::start();
    let s = open(&etcd);
    let want = planted(6, 3000);
    let head = put_all(&s, &want).await;
    // A key just outside the prefix (same leading bytes) is not listed.
    s.put("/coreos.com/network/subnetsX", "outside").await.unwrap();
    let head_after = s.put("/coreos.com/network/config", "{}").await.unwrap();
    let started = std::time::Instant::now();
    let listing = match s.list(SUBNETS).await {
        Ok(l) => l,
        Err(e) => panic!("listing {} keys with 6 values of ~1 MB failed: {e}", want.len()),
    };
    eprintln!(
        "listed {} keys ({} bytes) in {:?}",
        listing.entries.len(),
        want.values().map(String::len).sum::<usize>(),
        started.elapsed()
    );
    assert_eq!(
        listing.revision, head_after,
        "the listing's revision is the store's at that time"
    );
    assert!(head_after > head);
    assert_eq!(listing.entries.len(), want.len());
    assert!(as_keys(&listing) == want, "every key with its value");
    let keys: Vec<&str> = listing.entries.iter().map(|e| e.key.as_str()).collect();
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "sorted by key, each once");
    for e in &listing.entries {
        assert!(e.mod_revision <= listing.revision && e.create_revision <= e.mod_revision);
    }
    // The whole store lists too (config, the key outside the prefix, and all of the above).
    let all = s.list("").await.unwrap();
    assert_eq!(all.entries.len(), want.len() + 2);
    assert_eq!(all.revision, head_after);
}

/// One writer task: overwrites keys all over the range and adds new ones, sequentially, logging
/// (revision, key, value) of each write, until `stop`.
fn spawn_writer(
    s: Arc<dyn Store>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Vec<(Revision, String, String)>> {
    tokio::spawn(async move {
        let mut log = Vec::new();
        let mut n = 0usize;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let key = if n % 3 == 2 {
                format!("{SUBNETS}10.200.{}.{}-32", n / 256, n % 256)
            } else {
                small_key((n * 7919) % 3000)
            };
            let value = format!("write {n}");
            let r = s.put(&key, &value).await.unwrap();
            log.push((r, key, value));
            n += 1;
        }
        log
    })
}

/// The keys under the prefix at `rev`, from what was planted (at or before `base`) and the
/// writer's log.
fn state_at(planted: &Keys, log: &[(Revision, String, String)], rev: Revision) -> Keys {
    let mut keys = planted.clone();
    for (r, k, v) in log {
        if *r <= rev {
            keys.insert(k.clone(), v.clone());
        }
    }
    keys
}

/// Listings taken while a writer changes keys all over the range (so between pages too) are each
/// exactly the store at their revision: no write after it shows, none before it is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_racing_with_writes_is_one_snapshot() {
    let etcd = Etcd::start();
    let s = open(&etcd);
    let want = planted(6, 3000);
    let base = put_all(&s, &want).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = spawn_writer(Arc::clone(&s), Arc::clone(&stop));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut listings = Vec::new();
    for _ in 0..5 {
        listings.push(s.list(SUBNETS).await.unwrap());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let log = writer.await.unwrap();
    let mut raced = 0;
    for l in &listings {
        assert!(l.revision > base);
        let at = state_at(&want, &log, l.revision);
        assert_eq!(l.entries.len(), at.len(), "keys at revision {}", l.revision);
        assert!(
            as_keys(l) == at,
            "listing at revision {} is the store at that revision",
            l.revision
        );
        assert!(l.entries.iter().all(|e| e.mod_revision <= l.revision));
        // Writes landed while this listing was read (after its revision, before the next one).
        raced += usize::from(log.iter().any(|(r, _, _)| *r > l.revision));
    }
    eprintln!("{} writes during 5 listings", log.len());
    assert!(log.len() > 20, "the writer wrote during the listings");
    assert!(raced >= 4, "writes after the revision of {raced} listings only");
}

/// Compacting to the newest revision 20 ms into each listing of 3,000 keys (7 pages, ~100-200 ms
/// in a debug build) while a writer writes: the page after the compaction finds its pinned
/// revision gone, the listing starts over, and still returns one snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_survives_compaction_under_it() {
    let etcd = Etcd::start();
    let s = open(&etcd);
    let want = planted(0, 3000);
    put_all(&s, &want).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = spawn_writer(Arc::clone(&s), Arc::clone(&stop));
    let client = etcd_client::Client::connect([etcd.endpoint.as_str()], None)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut listings = Vec::new();
    let mut after_compaction = 0;
    for _ in 0..10 {
        let mut c = client.clone();
        let compactor = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let head = c.get("x", None).await.unwrap().header().unwrap().revision();
            c.compact(head, None).await.unwrap();
            head
        });
        let t = std::time::Instant::now();
        let l = s.list(SUBNETS).await.unwrap();
        let took = t.elapsed();
        let compacted = compactor.await.unwrap();
        eprintln!("listing at {} in {took:?}; compacted at {compacted}", l.revision);
        after_compaction += usize::from(l.revision >= compacted);
        listings.push(l);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let log = writer.await.unwrap();
    for l in &listings {
        assert!(
            as_keys(l) == state_at(&want, &log, l.revision),
            "listing at {}",
            l.revision
        );
    }
    // A listing whose snapshot is at or after a compaction made 20 ms into it was (re)started
    // after that compaction: its first pinned revision was compacted under it.
    eprintln!("{after_compaction} of 10 listings are snapshots taken after their compaction");
    assert!(after_compaction >= 1);
}

/// An etcd that accepts values over the client's 4 MiB (`--max-request-bytes` raised): a key the
/// client can never receive makes the listing fail with an error naming it, not hang or loop.
#[tokio::test]
async fn a_key_larger_than_the_client_accepts_is_named() {
    let etcd = Etcd::start_with("http", vec!["--max-request-bytes".into(), "10485760".into()], None);
    let s = open(&etcd);
    for i in 0..20 {
        s.put(&small_key(i), "small").await.unwrap();
    }
    let big = format!("{SUBNETS}10.0.15.128-25");
    s.put(&big, &"x".repeat(5 << 20)).await.unwrap();
    let err = s.list(SUBNETS).await.unwrap_err().to_string();
    eprintln!("{err}");
    assert!(
        err.contains(&format!("key {big:?} is larger than the client accepts")),
        "{err}"
    );
    // Deleting it works (the delete reads the key's lease, not its value).
    assert!(s.delete(&big).await.unwrap());
    assert!(!s.delete(&big).await.unwrap());
    assert_eq!(s.list(SUBNETS).await.unwrap().entries.len(), 20);
}

/// Watch events carry values cut to just over `MAX_WATCH_VALUE_BYTES` (still refused on length by
/// every reader), so the 256-event channel never buffers etcd's ~1 MB values.
#[tokio::test]
async fn watch_events_carry_huge_values_cut() {
    let etcd = Etcd::start();
    let s = open(&etcd);
    let listing = s.list(SUBNETS).await.unwrap();
    let mut w = s.watch(SUBNETS, listing.revision).await.unwrap();
    let key = format!("{SUBNETS}10.0.1.0-24");
    let huge = "é".repeat(HUGE / 2);
    let r = s.put(&key, &huge).await.unwrap();
    let small = s.put(&small_key(2), "small").await.unwrap();
    match next(&mut w).await {
        WatchEvent::Put(e) => {
            assert_eq!((e.key.as_str(), e.mod_revision), (key.as_str(), r));
            assert_eq!(
                e.value.len(),
                store::MAX_WATCH_VALUE_BYTES + 2,
                "cut on a character boundary"
            );
            assert!(huge.starts_with(&e.value));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(next(&mut w).await, WatchEvent::Put(e) if e.mod_revision == small && e.value == "small"));
}

async fn next(w: &mut tokio::sync::mpsc::Receiver<WatchEvent>) -> WatchEvent {
    let ev = tokio::time::timeout(Duration::from_secs(5), w.recv()).await;
    ev.expect("an event within 5 s").expect("watch open")
}

/// A watch starting before several ~1 MB changes: etcd sends the catch-up as one response per
/// batch of revisions, 6 MB here, which the client would refuse (the watch then closed at once,
/// and the agent re-listed, again and again while someone kept writing such values). The watch
/// asks etcd to fragment large responses, so every event arrives, in order.
#[tokio::test]
async fn a_watch_catching_up_on_huge_values_gets_every_event() {
    let etcd = Etcd::start();
    let s = open(&etcd);
    let listing = s.list(SUBNETS).await.unwrap();
    let mut want = Vec::new();
    for i in 0..6 {
        want.push(s.put(&small_key(i), &"x".repeat(HUGE)).await.unwrap());
        want.push(s.put(&small_key(100 + i), "small").await.unwrap());
    }
    let mut w = s.watch(SUBNETS, listing.revision).await.unwrap();
    for rev in want {
        match next(&mut w).await {
            WatchEvent::Put(e) => {
                assert_eq!(e.mod_revision, rev);
                assert!(e.value == "small" || e.value.len() == store::MAX_WATCH_VALUE_BYTES + 1);
            }
            other => panic!("{other:?}"),
        }
    }
}
