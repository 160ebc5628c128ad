//! Issue #7, part 5: a watch event storm. Lease changes (creates and deletes of synthetic peers
//! with 198.19.0.0/24 public IPs): its /healthz keeps answering quickly (the agent runs on one
//! thread, so a blocked loop would show here), its resident memory stays bounded, the storm is
//! absorbed in a few batched reconciles rather than one per event, and afterwards the kernel
//! holds exactly the final set.
//! Needs root (network namespaces).

mod common;

use common::kernel::*;
use common::{have_root, lab_name, weft_bin};
use nix::sched::{setns, CloneFlags};
use nix::sys::signal::Signal;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weft::lab::{Lab, LabOptions};
use weft::lease::vxlan_lease_value;
use weft::mac::Mac;
use weft::network::NetworkKeys;
use weft::store::Store;

const CHANGES: usize = 10_000;
/// Changes written while the agent runs.
const LIVE: usize = 3_000;
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

/// Writes `n` changes: alternately creates and deletes each of the `KEYS` keys, every create
/// with a new VTEP MAC. `present` is the model of what the store holds afterwards.
async fn churn(
    store: &dyn Store,
    key: &dyn Fn(usize) -> String,
    n: usize,
    first: usize,
    present: &mut BTreeMap<usize, String>,
) {
    for i in first..first + n {
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
}

/// What the agent did meanwhile.
struct Watched {
    healthz: std::thread::JoinHandle<(u32, Duration, u32)>,
    sampler: std::thread::JoinHandle<u64>,
    stop: Arc<AtomicBool>,
}

impl Watched {
    fn start(lab: &Lab, host: &str) -> Watched {
        let pid = lab.agent_pid(host).expect("agent");
        let stop = Arc::new(AtomicBool::new(false));
        let healthz = poll_healthz(lab.namespace(host).unwrap().to_string(), stop.clone());
        let sampler = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut max = 0;
                while !stop.load(Ordering::Relaxed) {
                    max = max.max(rss_kb(pid));
                    std::thread::sleep(Duration::from_millis(20));
                }
                max
            })
        };
        Watched { healthz, sampler, stop }
    }

    /// (healthz answers, slowest, failed, max VmRSS kB)
    fn stop(self) -> (u32, Duration, u32, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let (n, worst, failed) = self.healthz.join().unwrap();
        (n, worst, failed, self.sampler.join().unwrap())
    }
}

fn metric_sum(lab: &Lab, host: &str, name: &str) -> u64 {
    let m = sh(
        lab,
        host,
        &["curl", "-sf", "--max-time", "3", "http://127.0.0.1:9102/metrics"],
    );
    m.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Two storms. Live: changes at the store's full write rate while the agent runs. Burst: the
/// agents are stopped (SIGSTOP) while 10,000 changes are written, then continued, so the whole
/// storm reaches them at once (over the store's 10,000-event history: they may list again).
/// About 15 s on a 2-core machine (the SQLite store takes ~700–2000 writes/s here):
/// `sudo cargo test --test watch_storm -- --nocapture`.
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
    let store = lab.store().unwrap();
    let mut present: BTreeMap<usize, String> = BTreeMap::new();
    let converged = |present: &BTreeMap<usize, String>| {
        let mut want: BTreeSet<String> = present.keys().map(|&k| format!("10.0.{}.0/24", free[k])).collect();
        want.insert(leases["h2"].subnet.to_string());
        let got = || -> BTreeSet<String> {
            routes(&lab, "h1")
                .iter()
                .filter_map(|r| r.split_whitespace().next().map(String::from))
                .collect()
        };
        let all = || got() == want && neighs(&lab, "h1").len() == want.len() && fdbs(&lab, "h1").len() == want.len();
        let ok = wait_for(Duration::from_secs(30), all);
        assert!(
            ok,
            "h1 routes {:?} != {:?}\nneighbours {:#?}\nfdb {:#?}",
            got(),
            want,
            neighs(&lab, "h1"),
            fdbs(&lab, "h1")
        );
    };
    let rss_before = rss_kb(pid);

    // Live churn.
    let steps0 = metric_sum(&lab, "h1", "weft_reconciles_total");
    let watched = Watched::start(&lab, "h1");
    let t0 = Instant::now();
    churn(store.as_ref(), &key, LIVE, 0, &mut present).await;
    let wrote = t0.elapsed();
    converged(&present);
    let settled = t0.elapsed();
    let (answers, worst, failed, rss_max) = watched.stop();
    let steps = metric_sum(&lab, "h1", "weft_reconciles_total") - steps0;
    eprintln!(
        "live: {LIVE} changes in {wrote:?} ({:.0}/s); converged {settled:?} after the first; \
         {steps} reconciles; /healthz {answers} answers, slowest {worst:?}, {failed} failed; \
         VmRSS {rss_before} kB before, {rss_max} kB max",
        LIVE as f64 / wrote.as_secs_f64()
    );
    assert_eq!(failed, 0, "/healthz failed during the storm");
    assert!(worst < HEALTHZ_BOUND, "/healthz took {worst:?}");
    assert!(rss_max < RSS_BOUND_KB, "VmRSS reached {rss_max} kB");
    assert!(
        steps < (LIVE / 10) as u64,
        "{steps} reconciles for {LIVE} changes: not batched"
    );

    // Burst: everything at once.
    let steps0 = metric_sum(&lab, "h1", "weft_reconciles_total");
    let restarts0 = metric_sum(&lab, "h1", "weft_store_watch_restarts_total");
    for h in ["h1", "h2"] {
        lab.signal_agent(h, Signal::SIGSTOP).unwrap();
    }
    let t0 = Instant::now();
    churn(store.as_ref(), &key, CHANGES, LIVE, &mut present).await;
    let wrote = t0.elapsed();
    let watched = Watched::start(&lab, "h1");
    let t1 = Instant::now();
    for h in ["h1", "h2"] {
        lab.signal_agent(h, Signal::SIGCONT).unwrap();
    }
    converged(&present);
    let settled = t1.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let (answers, worst, failed, rss_max) = watched.stop();
    let steps = metric_sum(&lab, "h1", "weft_reconciles_total") - steps0;
    let restarts = metric_sum(&lab, "h1", "weft_store_watch_restarts_total") - restarts0;
    let rss_after = rss_kb(pid);
    eprintln!(
        "burst: {CHANGES} changes written in {wrote:?} while the agents were stopped; converged \
         {settled:?} after SIGCONT; {steps} reconciles, {restarts} watch restarts (re-lists); \
         /healthz {answers} answers, slowest {worst:?}, {failed} failed; VmRSS {rss_max} kB max, \
         {rss_after} kB after",
    );
    assert_eq!(failed, 0, "/healthz failed after the burst");
    assert!(worst < HEALTHZ_BOUND, "/healthz took {worst:?}");
    assert!(rss_max < RSS_BOUND_KB, "VmRSS reached {rss_max} kB");
    assert!(steps < 20, "{steps} reconciles for one burst: not batched");
    assert!(lab.check().await.unwrap().ok());
    lab.down().unwrap();
}
