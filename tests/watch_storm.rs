//! Issue #7, part 5: a watch event storm. 10,000 lease changes (creates and deletes of synthetic
//! peers with 198.19.0.0/24 public IPs) written as fast as the store takes them while an agent
//! runs: its /healthz keeps answering quickly (the agent runs on one thread, so a blocked loop
//! would show here), its resident memory stays bounded, the storm is absorbed in a few batched
//! reconciles rather than one per event, and afterwards the kernel holds exactly the final set.
//! Needs root (network namespaces).

mod common;

use common::kernel::*;
use common::{have_root, lab_name, weft_bin};
use nix::sched::{setns, CloneFlags};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weft::lab::{Lab, LabOptions};
use weft::lease::vxlan_lease_value;
use weft::mac::Mac;
use weft::network::NetworkKeys;

const CHANGES: usize = 10_000;
/// Synthetic peers' subnets cycle over this many keys.
const KEYS: usize = 150;
const HEALTHZ_BOUND: Duration = Duration::from_secs(1);
const RSS_BOUND_KB: u64 = 40 * 1024;

fn rss_kb(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Polls `/healthz` inside `ns` every 50 ms until `stop`; returns (answers, slowest answer,
/// failures).
fn poll_healthz(ns: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(u32, Duration, u32)> {
    std::thread::spawn(move || {
        let f = std::fs::File::open(format!("/run/netns/{ns}")).expect("netns handle");
        setns(&f, CloneFlags::CLONE_NEWNET).expect("setns");
        let (mut n, mut worst, mut failed) = (0, Duration::ZERO, 0);
        let deadline = Instant::now() + Duration::from_secs(120);
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            let t = Instant::now();
            let ok = (|| -> std::io::Result<bool> {
                let addr = "127.0.0.1:9102".parse().unwrap();
                let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                s.write_all(b"GET /healthz HTTP/1.0\r\nHost: weft\r\n\r\n")?;
                let mut body = String::new();
                s.read_to_string(&mut body)?;
                Ok(body.starts_with("HTTP/1."))
            })()
            .unwrap_or(false);
            worst = worst.max(t.elapsed());
            n += 1;
            failed += u32::from(!ok);
            std::thread::sleep(Duration::from_millis(50));
        }
        (n, worst, failed)
    })
}

/// `weft_reconciles_total`, all results.
fn reconciles(lab: &Lab, host: &str) -> u64 {
    let m = sh(
        lab,
        host,
        &["curl", "-sf", "--max-time", "3", "http://127.0.0.1:9102/metrics"],
    );
    m.lines()
        .filter(|l| l.starts_with("weft_reconciles_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_ten_thousand_changes_is_absorbed() {
    if !have_root("a_storm_of_ten_thousand_changes_is_absorbed") {
        return;
    }
    let lab = Lab::up(LabOptions::new(&lab_name(), 2).weft_bin(weft_bin()))
        .await
        .expect("lab up");
    let pid = lab.agent_pid("h1").expect("h1 agent");
    let leases = lab.leases().await.unwrap();
    let taken: BTreeSet<u8> = leases.values().map(|l| l.subnet.addr().octets()[2]).collect();
    let free: Vec<u8> = (1..=255).filter(|t| !taken.contains(t)).take(KEYS).collect();
    assert_eq!(free.len(), KEYS);
    let subnets = NetworkKeys::new(lab.prefix()).subnets();
    let key = |k: usize| format!("{subnets}10.0.{}.0-24", free[k]);

    let rss_before = rss_kb(pid);
    let steps_before = reconciles(&lab, "h1");
    let stop = Arc::new(AtomicBool::new(false));
    let healthz = poll_healthz(lab.namespace("h1").unwrap().to_string(), stop.clone());
    let rss_max = Arc::new(std::sync::atomic::AtomicU64::new(rss_before));
    let sampler = {
        let (stop, rss_max) = (stop.clone(), rss_max.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                rss_max.fetch_max(rss_kb(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    // The storm: alternately create and delete each key, every create with a new VTEP MAC.
    let store = lab.store().unwrap();
    let mut present: BTreeMap<usize, String> = BTreeMap::new();
    let t0 = Instant::now();
    for i in 0..CHANGES {
        let k = i % KEYS;
        if present.remove(&k).is_some() {
            store.delete(&key(k)).await.unwrap();
        } else {
            let mac = Mac([0x0a, 0x58, k as u8, (i >> 8) as u8, i as u8, 1]);
            let ip = std::net::Ipv4Addr::new(198, 19, 0, k as u8 + 1);
            let v = vxlan_lease_value(ip, 1, mac);
            store.put(&key(k), &v).await.unwrap();
            present.insert(k, v);
        }
    }
    let storm = t0.elapsed();

    // Converged: h1's routes are exactly h2's and the final synthetic leases'.
    let mut want: BTreeSet<String> = present.keys().map(|&k| format!("10.0.{}.0/24", free[k])).collect();
    want.insert(leases["h2"].subnet.to_string());
    let got = || -> BTreeSet<String> {
        routes(&lab, "h1")
            .iter()
            .filter_map(|r| r.split_whitespace().next().map(String::from))
            .collect()
    };
    let ok = wait_for(Duration::from_secs(30), || got() == want);
    let converged = t0.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (answers, worst, failed) = healthz.join().unwrap();
    sampler.join().unwrap();
    assert!(ok, "h1 routes {:?} != {:?}", got(), want);
    assert_eq!(neighs(&lab, "h1").len(), want.len(), "neighbours");
    assert_eq!(fdbs(&lab, "h1").len(), want.len(), "fdb entries");
    let steps = reconciles(&lab, "h1") - steps_before;
    let (rss_after, rss_max) = (rss_kb(pid), rss_max.load(Ordering::Relaxed));
    eprintln!(
        "storm: {CHANGES} changes in {storm:?} ({:.0}/s); converged after {converged:?}; \
         {steps} reconciles; /healthz {answers} answers, slowest {worst:?}, {failed} failed; \
         VmRSS {rss_before} kB before, {rss_max} kB max, {rss_after} kB after",
        CHANGES as f64 / storm.as_secs_f64()
    );
    assert_eq!(failed, 0, "/healthz failed during the storm");
    assert!(worst < HEALTHZ_BOUND, "/healthz took {worst:?}");
    assert!(rss_max < RSS_BOUND_KB, "VmRSS reached {rss_max} kB");
    assert!(
        steps < (CHANGES / 10) as u64,
        "{steps} reconciles for {CHANGES} changes: not batched"
    );
    assert!(lab.check().await.unwrap().ok());
    lab.down().unwrap();
}
