//! Issue #7, part 2, in a real 3-host lab: every hostile or malformed lease planted in the store
//! is refused; no host's kernel state changes, the hosts keep reaching each other, each refusal is
//! logged once with its reason (across resyncs) and counted by reason in /metrics. A hostile
//! network config keeps the data plane and is logged once. Needs root (network namespaces).

mod common;
#[path = "common/hostile_cases.rs"]
mod hostile_cases;

use common::kernel::*;
use common::{have_root, lab_name, weft_bin};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use weft::lab::{Lab, LabGuard, LabOptions};
use weft::network::NetworkKeys;

/// Agents resync every second here, so waiting a few seconds covers several resyncs.
const RESYNC: &str = "1s";

async fn lab() -> LabGuard {
    let opts = LabOptions::new(&lab_name(), 3)
        .weft_bin(weft_bin())
        .agent_arg("--resync-interval")
        .agent_arg(RESYNC);
    Lab::up(opts).await.expect("lab up")
}

/// `/metrics` of the host's agent, fetched inside its namespace.
fn metrics(lab: &Lab, host: &str) -> String {
    sh(
        lab,
        host,
        &["curl", "-sf", "--max-time", "3", "http://127.0.0.1:9102/metrics"],
    )
}

/// `weft_leases_rejected_total` by reason.
fn rejected(lab: &Lab, host: &str) -> BTreeMap<String, u64> {
    metrics(lab, host)
        .lines()
        .filter_map(|l| l.strip_prefix("weft_leases_rejected_total{reason=\""))
        .filter_map(|l| {
            let (reason, rest) = l.split_once("\"}")?;
            Some((reason.to_string(), rest.trim().parse().ok()?))
        })
        .collect()
}

/// The agent's log without colour codes.
fn plain_log(lab: &Lab, host: &str) -> String {
    let log = agent_log(lab, host);
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Refusal log lines by reason.
fn logged_refusals(lab: &Lab, host: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for line in plain_log(lab, host).lines().filter(|l| l.contains("refusing lease")) {
        let reason = line
            .split_once("reason=")
            .map(|(_, r)| r.trim_start_matches('"'))
            .and_then(|r| r.split(['"', ' ']).next())
            .unwrap_or("?");
        *out.entry(reason.to_string()).or_default() += 1;
    }
    out
}

/// What a host's data plane looks like: flannel.1's routes, neighbours, FDB and the peers set.
fn snapshot(lab: &Lab, host: &str) -> Vec<String> {
    let mut s = entries(lab, host);
    s.push(sh(lab, host, &["nft", "list", "set", "ip", "weft", "peers"]));
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_leases_change_nothing_and_are_refused_once_by_reason() {
    if !have_root("hostile_leases_change_nothing_and_are_refused_once_by_reason") {
        return;
    }
    let lab = lab().await;
    let hosts = lab.host_names();
    let leases = lab.leases().await.unwrap();
    assert_eq!(leases.len(), 3);
    let taken: BTreeSet<u8> = leases.values().map(|l| l.subnet.addr().octets()[2]).collect();
    let free: Vec<u8> = (1..=255).filter(|t| !taken.contains(t)).collect();
    let victim = &leases["h1"];
    let (victim_ip, victim_mac) = (victim.public_ip.to_string(), victim.vtep_mac.to_string());
    let cases = hostile_cases::cases(&hostile_cases::Target {
        free: &free,
        victim_third: victim.subnet.addr().octets()[2],
        victim_ip: &victim_ip,
        victim_mac: &victim_mac,
    });
    let before: BTreeMap<String, Vec<String>> = hosts.iter().map(|h| (h.clone(), snapshot(&lab, h))).collect();

    // Plant every case at once.
    let store = lab.store().unwrap();
    let subnets = NetworkKeys::new(lab.prefix()).subnets();
    for c in &cases {
        store
            .put(&format!("{subnets}{}", c.key), &c.value)
            .await
            .unwrap_or_else(|e| panic!("planting {:?}: {e}", c.name));
    }
    let want = |host: &str| -> BTreeMap<String, u64> {
        let mut m = BTreeMap::new();
        for c in &cases {
            let reason = match c.reason {
                "own_public_ip" if host != "h1" => "duplicate_public_ip",
                r => r,
            };
            *m.entry(reason.to_string()).or_default() += 1;
        }
        m
    };

    // Every host counts every refusal…
    for h in &hosts {
        let ok = wait_for(Duration::from_secs(20), || rejected(&lab, h) == want(h));
        assert!(ok, "{h}: counted {:?}, want {:?}", rejected(&lab, h), want(h));
    }
    // …and still does after several resyncs, with each refusal logged exactly once.
    std::thread::sleep(Duration::from_millis(3500));
    for h in &hosts {
        assert_eq!(rejected(&lab, h), want(h), "{h}: counts after resyncs");
        assert_eq!(logged_refusals(&lab, h), want(h), "{h}: log lines after resyncs");
        assert_eq!(snapshot(&lab, h), before[h], "{h}: data plane changed");
    }
    // One failed matrix was seen once, on a machine at load 30 (CI plus benchmarks), with every
    // host's entries unchanged; a second look tells a slow machine from a broken overlay.
    let mut report = lab.check().await.unwrap();
    if !report.ok() {
        eprintln!("first ping matrix incomplete, checking again:\n{report}");
        std::thread::sleep(Duration::from_millis(500));
        report = lab.check().await.unwrap();
    }
    if !report.ok() {
        for h in &hosts {
            eprintln!(
                "=== {h}\n{}\n{}\n{}",
                sh(&lab, h, &["nft", "list", "ruleset"]),
                sh(&lab, h, &["ip", "route"]),
                sh(&lab, h, &["ip", "neigh"])
            );
            eprintln!(
                "{}",
                std::fs::read_to_string(lab.agent_log(h))
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| l.contains("WARN") || l.contains("nft"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
    assert!(report.ok(), "{report}");

    // Taking the hostile entries away changes nothing either, and logs nothing new.
    for c in &cases {
        store.delete(&format!("{subnets}{}", c.key)).await.unwrap();
    }
    std::thread::sleep(Duration::from_millis(2500));
    for h in &hosts {
        assert_eq!(snapshot(&lab, h), before[h], "{h}: data plane changed after deletes");
        assert_eq!(logged_refusals(&lab, h), want(h), "{h}: log lines after deletes");
    }
    eprintln!(
        "{} hostile entries refused by each of {} hosts ({} refusals), reasons: {:?}",
        cases.len(),
        hosts.len(),
        cases.len() * hosts.len(),
        want("h2")
    );
    lab.down().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_configs_keep_the_data_plane_and_are_logged_once() {
    if !have_root("hostile_configs_keep_the_data_plane_and_are_logged_once") {
        return;
    }
    let mut lab = lab().await;
    let hosts = lab.host_names();
    let before: BTreeMap<String, Vec<String>> = hosts.iter().map(|h| (h.clone(), snapshot(&lab, h))).collect();
    let store = lab.store().unwrap();
    let key = NetworkKeys::new(lab.prefix()).config();
    let configs = [
        "not json".to_string(),
        r#"{"Network":"10.0.0.0/16","SubnetLen":99}"#.to_string(),
        r#"{"Network":"10.0.0.1/16"}"#.to_string(),
        r#"{"Network":"10.0.0.0/16","Backend":{"Type":"udp"}}"#.to_string(),
        r#"{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan","VNI":16777216}}"#.to_string(),
        format!(r#"{{"Network":"10.0.0.0/16","Pad":"{}"}}"#, "x".repeat(1 << 20)),
    ];
    for (i, config) in configs.iter().enumerate() {
        store.put(&key, config).await.unwrap();
        // Several resyncs with the same hostile config.
        std::thread::sleep(Duration::from_millis(3000));
        for h in &hosts {
            let n = plain_log(&lab, h).matches("invalid network config").count();
            assert_eq!(n, i + 1, "{h}: config {i} logged {n} times in all");
            assert_eq!(snapshot(&lab, h), before[h], "{h}: data plane changed by config {i}");
        }
        let report = lab.check().await.unwrap();
        assert!(report.ok(), "config {i}: {report}");
    }
    lab.write_network_config().await.unwrap();
    lab.down().unwrap();
}
