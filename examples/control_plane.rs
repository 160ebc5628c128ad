//! The 10,000-host control plane, simulated (issue 6): one real agent in a lab namespace, facing
//! a store holding N leases of synthetic peers (they need not exist). Measures the initial sync
//! (3 N kernel entries), the latency of one lease added and one removed, resident memory and
//! idle CPU. Latencies are read from the agent's own log timestamps (same clock as ours).
//!
//! `cargo build --release --example control_plane --bin weft --bin weft-agent && sudo ./target/release/examples/control_plane [PEERS]` (default 10000; the agent is `weft-agent`)

use anyhow::{bail, Context, Result};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant, SystemTime};
use weft::lab::{rss_kb, Lab, LabOptions};
use weft::lease::{lease_key, vxlan_lease_value};
use weft::mac::Mac;

const NAME: &str = "wcp";

fn peer(i: u32) -> (ipnet::Ipv4Net, Ipv4Addr, Mac) {
    // Subnets 10.0.1.0/24 … inside 10.0.0.0/8; public IPs in 198.18.0.0/15; MACs 02:..:i.
    let subnet = ipnet::Ipv4Net::new(Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 1, 0)) + (i << 8)), 24).unwrap();
    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 1)) + i);
    let b = i.to_be_bytes();
    (subnet, ip, Mac([0x02, 0xee, b[0], b[1], b[2], b[3]]))
}

/// Timestamp of the first agent log line after `from` that contains every needle.
fn logged_at(log: &str, needles: &[&str]) -> Option<SystemTime> {
    log.lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|ts| humantime::parse_rfc3339(ts).ok())
        .next()
}

fn wait_log(lab: &Lab, needles: &[&str], timeout: Duration) -> Result<SystemTime> {
    let deadline = Instant::now() + timeout;
    loop {
        let log = std::fs::read_to_string(lab.agent_log("h1")).unwrap_or_default();
        if let Some(t) = logged_at(&log, needles) {
            return Ok(t);
        }
        if Instant::now() > deadline {
            bail!("agent never logged {needles:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn ms(a: SystemTime, b: SystemTime) -> f64 {
    b.duration_since(a).unwrap_or_default().as_secs_f64() * 1000.0
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let n: u32 = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(10_000);
    let _ = weft::lab::down(NAME);
    let bin = std::env::current_exe()?
        .parent()
        .and_then(|p| p.parent())
        .context("exe dir")?
        .join("weft");
    let opts = LabOptions::topology_only(NAME, 1)
        .weft_bin(&bin)
        .network_config(r#"{"Network":"10.0.0.0/8","SubnetLen":24,"Backend":{"Type":"vxlan"}}"#);
    let mut lab = Lab::up(opts).await?;
    lab.write_network_config().await?;
    let store = lab.store()?;
    let ttl = Duration::from_secs(24 * 3600);
    let t = Instant::now();
    for i in 0..n {
        let (subnet, ip, mac) = peer(i);
        store
            .create(&lease_key(lab.prefix(), subnet), &vxlan_lease_value(ip, 1, mac), ttl)
            .await?;
    }
    println!("wrote {n} synthetic leases in {:.1} s", t.elapsed().as_secs_f64());

    let spawned = SystemTime::now();
    let pid = lab.start_agent("h1").await?;
    let (last_subnet, _, _) = peer(n - 1);
    let synced = wait_log(&lab, &["reconciled", &format!("peers={n}")], Duration::from_secs(120))?;
    let leased = wait_log(&lab, &["leased a new subnet"], Duration::from_secs(1))?;
    println!(
        "initial sync: {:.0} ms from agent start ({:.0} ms after its lease), {} kernel entries",
        ms(spawned, synced),
        ms(leased, synced),
        3 * n
    );
    let _ = last_subnet;
    std::thread::sleep(Duration::from_secs(2));
    let rss_synced = rss_kb(pid);

    let mut adds = Vec::new();
    let mut dels = Vec::new();
    for k in 0..5u32 {
        let (subnet, ip, mac) = peer(n + k);
        let key = lease_key(lab.prefix(), subnet);
        let before = SystemTime::now();
        store.create(&key, &vxlan_lease_value(ip, 1, mac), ttl).await?;
        let at = wait_log(
            &lab,
            &["ensure route", &format!("route {subnet} ")],
            Duration::from_secs(10),
        )?;
        adds.push(ms(before, at));
        std::thread::sleep(Duration::from_millis(300));
        let before = SystemTime::now();
        store.delete(&key).await?;
        let at = wait_log(
            &lab,
            &["remove route", &format!("route {subnet} ")],
            Duration::from_secs(10),
        )?;
        dels.push(ms(before, at));
        // Past the removal's deferred peers-set update (agent::nft_batcher::LATER, 300 ms), so
        // the next addition is measured alone, not queued behind that `nft` run.
        std::thread::sleep(Duration::from_millis(600));
    }
    adds.sort_by(f64::total_cmp);
    dels.sort_by(f64::total_cmp);
    println!(
        "one lease added → route in the kernel: median {:.1} ms ({adds:.1?})",
        adds[2]
    );
    println!("one lease removed → route gone: median {:.1} ms ({dels:.1?})", dels[2]);

    let hz = 100.0; // USER_HZ
    let c0 = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(10));
    let idle = (cpu_ticks(pid) - c0) as f64 / hz / 10.0 * 100.0;
    println!(
        "resident memory: {} KB after sync, {} KB now; idle CPU over 10 s: {idle:.2} %",
        rss_synced,
        rss_kb(pid)
    );
    lab.down()?;
    Ok(())
}
