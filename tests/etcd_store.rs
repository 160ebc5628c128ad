//! The etcd store against a real etcd (Debian's etcd-server 3.4) on 127.0.0.1: flannel's exact
//! keys and JSON, the store contract, one etcd lease per agent however often it renews or
//! restarts, 50 agents racing for subnets, compaction, and clear errors for an unreachable etcd.
//! No root needed.

mod common;

use common::etcd::Etcd;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use weft::agent::lease::{self, LeaseRequest};
use weft::config::NetworkConfig;
use weft::network::NetworkKeys;
use weft::store::etcd::EtcdConfig;
use weft::store::{self, Store, StoreConfig, StoreError, WatchEvent};

const CONFIG: &str = r#"{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan"}}"#;

fn open(etcd: &Etcd) -> Arc<dyn Store> {
    store::open(&StoreConfig::Etcd(EtcdConfig::from_endpoints(&etcd.endpoint))).unwrap()
}

async fn acquire(s: &dyn Store, ip: &str, mac: &str, ttl: Duration, preferred: Option<&str>) -> lease::OwnLease {
    let keys = NetworkKeys::new(weft::network::DEFAULT_PREFIX);
    let config = NetworkConfig::parse(CONFIG).unwrap();
    let req = LeaseRequest {
        keys: &keys,
        config: &config,
        public_ip: ip.parse().unwrap(),
        vtep_mac: mac.parse().unwrap(),
        ttl,
        preferred: preferred.map(|p| p.parse().unwrap()),
        avoid: &[],
    };
    lease::acquire(s, &req).await.unwrap()
}

/// What `etcdctl get --prefix /` shows is, byte for byte, the reference flannel v0.20.2 capture
/// (/work/shared/reference/flannel-v0.20.2-captures.txt), for the same inputs.
#[tokio::test]
async fn keys_and_json_are_flannels_byte_for_byte() {
    let etcd = Etcd::start();
    let s = open(&etcd);
    s.put("/coreos.com/network/config", CONFIG).await.unwrap();
    let day = Duration::from_secs(86400);
    for (ip, mac, subnet) in [
        ("192.0.2.10", "c6:a0:2e:40:c0:2c", "10.0.37.0/24"),
        ("198.51.100.10", "fe:e9:06:d0:8b:ae", "10.0.48.0/24"),
        ("203.0.113.10", "da:5a:c0:04:31:8a", "10.0.51.0/24"),
    ] {
        let own = acquire(s.as_ref(), ip, mac, day, Some(subnet)).await;
        assert_eq!(own.subnet.to_string(), subnet);
    }
    let got = etcd.ctl_ok(&["get", "--prefix", "/"]);
    let want = "/coreos.com/network/config
{\"Network\":\"10.0.0.0/16\",\"Backend\":{\"Type\":\"vxlan\"}}
/coreos.com/network/subnets/10.0.37.0-24
{\"PublicIP\":\"192.0.2.10\",\"PublicIPv6\":null,\"BackendType\":\"vxlan\",\"BackendData\":{\"VNI\":1,\"VtepMAC\":\"c6:a0:2e:40:c0:2c\"}}
/coreos.com/network/subnets/10.0.48.0-24
{\"PublicIP\":\"198.51.100.10\",\"PublicIPv6\":null,\"BackendType\":\"vxlan\",\"BackendData\":{\"VNI\":1,\"VtepMAC\":\"fe:e9:06:d0:8b:ae\"}}
/coreos.com/network/subnets/10.0.51.0-24
{\"PublicIP\":\"203.0.113.10\",\"PublicIPv6\":null,\"BackendType\":\"vxlan\",\"BackendData\":{\"VNI\":1,\"VtepMAC\":\"da:5a:c0:04:31:8a\"}}
";
    assert_eq!(got, want);
    // As in the capture: one 24 h lease per subnet key, each holding exactly its key.
    let leases = etcd.ctl_ok(&["lease", "list"]);
    assert!(leases.starts_with("found 3 leases"), "{leases}");
    for id in leases.lines().skip(1) {
        let ttl = etcd.ctl_ok(&["lease", "timetolive", id, "--keys"]);
        assert!(ttl.contains("granted with TTL(86400s)"), "{ttl}");
        assert_eq!(ttl.matches("/coreos.com/network/subnets/").count(), 1, "{ttl}");
    }
    // The config never expires.
    let cfg = s.get("/coreos.com/network/config").await.unwrap().unwrap();
    assert_eq!(cfg.expires_at, None);
}

#[tokio::test]
async fn store_contract() {
    let etcd = Etcd::start();
    let s = open(&etcd);
    let ttl = Duration::from_secs(30);
    let a = s.create("/p/a", "1", ttl).await.unwrap().expect("created");
    assert!(s.create("/p/a", "2", ttl).await.unwrap().is_none(), "only if absent");
    assert_eq!(etcd.lease_count(), 1, "the losing create revoked its lease");
    let left = store::remaining(&a, std::time::SystemTime::now()).unwrap();
    assert!(left > Duration::from_secs(28) && left <= ttl, "{left:?}");

    // Same value: lease kept alive, no write.
    let b = s
        .refresh("/p/a", "1", ttl, a.mod_revision)
        .await
        .unwrap()
        .expect("refreshed");
    assert_eq!(b.mod_revision, a.mod_revision);
    // New value: written at a new revision, same lease.
    let c = s
        .refresh("/p/a", "3", ttl, b.mod_revision)
        .await
        .unwrap()
        .expect("rewritten");
    assert!(c.mod_revision > b.mod_revision);
    assert_eq!(c.create_revision, a.create_revision);
    assert!(
        s.refresh("/p/a", "4", ttl, a.mod_revision).await.unwrap().is_none(),
        "stale revision"
    );
    assert!(s.refresh("/p/none", "4", ttl, 1).await.unwrap().is_none());
    assert_eq!(etcd.lease_count(), 1);

    let listing = s.list("/p/").await.unwrap();
    assert_eq!(listing.entries.len(), 1);
    assert_eq!(listing.entries[0].value, "3");
    assert!(listing.entries[0].expires_at.is_some());

    // Watch from the listing: sees what follows, in order, and expiry as a delete.
    let mut w = s.watch("/p/", listing.revision).await.unwrap();
    let r = s.put("/p/b", "x").await.unwrap();
    assert!(s.delete("/p/a").await.unwrap());
    assert!(!s.delete("/p/a").await.unwrap());
    assert_eq!(etcd.lease_count(), 0, "deleting a key revokes its lease");
    let short = s
        .create("/p/short", "s", Duration::from_secs(2))
        .await
        .unwrap()
        .unwrap();
    let put = next(&mut w).await;
    assert!(
        matches!(&put, WatchEvent::Put(e) if e.key == "/p/b" && e.mod_revision == r),
        "{put:?}"
    );
    assert!(matches!(next(&mut w).await, WatchEvent::Delete { key, .. } if key == "/p/a"));
    assert!(matches!(next(&mut w).await, WatchEvent::Put(e) if e.key == "/p/short" && e.expires_at.is_some()));
    match next(&mut w).await {
        WatchEvent::Delete { key, revision } => {
            assert_eq!(key, "/p/short");
            assert!(revision > short.mod_revision);
        }
        other => panic!("expected the expiry, got {other:?}"),
    }
}

async fn next(w: &mut tokio::sync::mpsc::Receiver<WatchEvent>) -> WatchEvent {
    tokio::time::timeout(Duration::from_secs(10), w.recv())
        .await
        .expect("a watch event within 10 s")
        .expect("watch open")
}

/// Renewing many times, and restarting (a new client finding its key by its IP), leaves exactly
/// one etcd lease per agent — flannel leaves one per renewal. A lease flannel wrote for the same
/// host is adopted rather than duplicated.
#[tokio::test]
async fn one_lease_per_agent_after_renewals_and_restarts() {
    let etcd = Etcd::start();
    let s = open(&etcd);
    s.put("/coreos.com/network/config", CONFIG).await.unwrap();
    let ttl = Duration::from_secs(3);
    let mut own = acquire(s.as_ref(), "192.0.2.10", "c6:a0:2e:40:c0:2c", ttl, None).await;
    let value = own.value.clone();
    for _ in 0..30 {
        own = lease::renew(s.as_ref(), &own, &value, ttl)
            .await
            .unwrap()
            .expect("renewed");
    }
    assert_eq!(etcd.lease_count(), 1);
    // Restarts: fresh clients, as a new agent process would be.
    for _ in 0..5 {
        let s2 = open(&etcd);
        let again = acquire(s2.as_ref(), "192.0.2.10", "c6:a0:2e:40:c0:2c", ttl, None).await;
        assert_eq!(again.subnet, own.subnet, "same subnet back");
        for _ in 0..5 {
            lease::renew(s2.as_ref(), &again, &value, ttl)
                .await
                .unwrap()
                .expect("renewed");
        }
    }
    // A new VTEP MAC rewrites the value on the same lease.
    let s3 = open(&etcd);
    let moved = acquire(s3.as_ref(), "192.0.2.10", "c6:a0:2e:40:c0:2d", ttl, None).await;
    assert_eq!(moved.subnet, own.subnet);
    assert_eq!(etcd.lease_count(), 1);
    // Past the TTL the lease is still alive: renewals were real keep-alives.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        s3.get(&moved.key).await.unwrap().is_none(),
        "no keep-alive for 4 s: expired"
    );
    assert_eq!(etcd.lease_count(), 0);

    // flannel's way: a 24 h lease granted by hand, the key put with it. weft (24 h TTL) adopts it.
    let id = etcd.ctl_ok(&["lease", "grant", "86400"]);
    let id = id.split_whitespace().nth(1).unwrap().to_string();
    let key = "/coreos.com/network/subnets/10.0.48.0-24";
    let flannel_json = r#"{"PublicIP":"198.51.100.10","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"fe:e9:06:d0:8b:ae"}}"#;
    etcd.ctl_ok(&["put", "--lease", &id, key, flannel_json]);
    let adopted = acquire(
        s.as_ref(),
        "198.51.100.10",
        "fe:e9:06:d0:8b:ae",
        Duration::from_secs(86400),
        None,
    )
    .await;
    assert_eq!(adopted.key, key);
    assert_eq!(etcd.lease_count(), 1);
    assert!(etcd.ctl_ok(&["lease", "list"]).contains(&id), "flannel's lease kept");
    // An agent with a 3 s TTL moves the key to a lease of its own and revokes flannel's.
    let short = acquire(s.as_ref(), "198.51.100.10", "fe:e9:06:d0:8b:ae", ttl, None).await;
    assert_eq!(short.key, key);
    assert_eq!(etcd.lease_count(), 1);
    assert!(
        !etcd.ctl_ok(&["lease", "list"]).contains(&id),
        "flannel's lease revoked"
    );
}

/// 50 agents, each with its own client, start leasing at the same instant: 50 distinct subnets,
/// 50 leases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_agents_racing_get_distinct_subnets() {
    let etcd = Etcd::start();
    let s = open(&etcd);
    // A small network makes collisions likely: 64 subnets for 50 agents.
    let config = r#"{"Network":"10.0.0.0/18","SubnetLen":24,"Backend":{"Type":"vxlan"}}"#;
    s.put("/coreos.com/network/config", config).await.unwrap();
    let barrier = Arc::new(tokio::sync::Barrier::new(50));
    let mut tasks = Vec::new();
    for i in 0..50u32 {
        let store = open(&etcd);
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let keys = NetworkKeys::new(weft::network::DEFAULT_PREFIX);
            let config = NetworkConfig::parse(config).unwrap();
            let ip = format!("198.18.{}.10", i);
            let mac = format!("02:00:00:00:00:{:02x}", i);
            let req = LeaseRequest {
                keys: &keys,
                config: &config,
                public_ip: ip.parse().unwrap(),
                vtep_mac: mac.parse().unwrap(),
                ttl: Duration::from_secs(60),
                preferred: None,
                avoid: &[],
            };
            // Connect before the start line, so the race is in the leasing.
            store.get("/warmup").await.unwrap();
            barrier.wait().await;
            lease::acquire(store.as_ref(), &req).await.map(|l| l.subnet)
        }));
    }
    let mut subnets = HashSet::new();
    for t in tasks {
        let subnet = t.await.unwrap().expect("every agent gets a subnet");
        assert!(subnets.insert(subnet), "{subnet} handed out twice");
    }
    assert_eq!(subnets.len(), 50);
    assert_eq!(s.list("/coreos.com/network/subnets/").await.unwrap().entries.len(), 50);
    assert_eq!(etcd.lease_count(), 50, "lost races left no lease behind");
}

/// A watch from a compacted revision says `Resync`; watching from a fresh listing works again.
#[tokio::test]
async fn compaction_asks_for_a_resync() {
    let etcd = Etcd::start();
    let s = open(&etcd);
    let listing = s.list("/p/").await.unwrap();
    let mut last = 0;
    for i in 0..5 {
        last = s.put(&format!("/p/{i}"), "v").await.unwrap();
    }
    etcd.ctl_ok(&["compact", &last.to_string()]);
    let mut w = s.watch("/p/", listing.revision).await.unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), w.recv()).await.unwrap();
    assert_eq!(ev, Some(WatchEvent::Resync));
    let again = s.list("/p/").await.unwrap();
    assert_eq!(again.entries.len(), 5);
    let mut w = s.watch("/p/", again.revision).await.unwrap();
    s.put("/p/new", "v").await.unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), w.recv()).await.unwrap();
    assert!(matches!(ev, Some(WatchEvent::Put(e)) if e.key == "/p/new"));
}

/// No etcd there: one clear error naming the endpoint and the cause, quickly. A broken
/// connection closes an open watch (the agent then re-lists), and the store reconnects by itself
/// once etcd is back.
#[tokio::test]
async fn unreachable_etcd_is_reported_and_survived() {
    let mut etcd = Etcd::start();
    let s = open(&etcd);
    s.put("/p/a", "1").await.unwrap();
    let listing = s.list("/p/").await.unwrap();
    let mut w = s.watch("/p/", listing.revision).await.unwrap();
    etcd.stop();
    let closed = tokio::time::timeout(Duration::from_secs(15), w.recv()).await.unwrap();
    assert_eq!(closed, None, "watch closes when etcd goes away");
    let t = std::time::Instant::now();
    let err = s.list("/p/").await.unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{msg}");
    assert!(msg.contains(&format!("127.0.0.1:{}", etcd.client_port)), "{msg}");
    eprintln!("etcd down: {msg}");
    etcd.run();
    let mut ok = false;
    for _ in 0..50 {
        if s.list("/p/").await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(ok, "the same store works again once etcd is back");
}

/// `weft net config set|show` and `weft net leases` against etcd, selected by the environment
/// (`WEFT_ETCD_ENDPOINTS`) as by the flag.
#[tokio::test]
async fn net_commands_work_against_etcd() {
    let etcd = Etcd::start();
    let weft = |args: &[&str], stdin: Option<&str>| {
        use std::io::Write;
        let mut child = std::process::Command::new(common::weft_bin())
            .args(args)
            .env("WEFT_ETCD_ENDPOINTS", &etcd.endpoint)
            .env("RUST_BACKTRACE", "0")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(text) = stdin {
            child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        }
        drop(child.stdin.take());
        child.wait_with_output().unwrap()
    };
    let out = weft(&["net", "config", "set", "-"], Some(CONFIG));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        etcd.ctl_ok(&["get", "--print-value-only", "/coreos.com/network/config"])
            .trim(),
        CONFIG
    );
    let out = weft(&["net", "config", "show"], None);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), CONFIG);

    let s = open(&etcd);
    acquire(
        s.as_ref(),
        "192.0.2.10",
        "c6:a0:2e:40:c0:2c",
        Duration::from_secs(600),
        Some("10.0.37.0/24"),
    )
    .await;
    let out = weft(&["net", "leases"], None);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let row = text
        .lines()
        .find(|l| l.starts_with("10.0.37.0/24"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        row.contains("192.0.2.10") && row.contains("c6:a0:2e:40:c0:2c") && row.ends_with("yes"),
        "{row}"
    );
    assert!(row.contains("9m") || row.contains("10m"), "expiry shown: {row}");

    // A wrong password: one line naming the endpoint and the cause, never the password.
    let out = std::process::Command::new(common::weft_bin())
        .args([
            "net",
            "leases",
            "--etcd-endpoints",
            &etcd.endpoint,
            "--etcd-username",
            "root",
        ])
        .env("WEFT_ETCD_PASSWORD", "hunter2-secret")
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(!err.contains("hunter2-secret"), "{err}");
    eprintln!("auth against an etcd without auth: {err}");
}
