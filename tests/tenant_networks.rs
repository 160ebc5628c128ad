//! Issue #8, parts 1 and 2: named networks and their isolation, on a three-host lab whose agents
//! keep running throughout.
//!
//! Two tenants, `tenant-a` (VNI 100) and `tenant-b` (VNI 200), both `10.50.0.0/16`, are created
//! with `weft net create` while the agents run. Every host gets `weft.100` and `weft.200` with an
//! address from each; pings inside each tenant cross hosts, pings from one tenant to the other's
//! addresses do not (both ways, by device and by source address), and the other tenant's
//! devices receive nothing meanwhile. A capture on a host's underlay link shows each tenant's
//! traffic under its own VNI. A second network with a VNI in use is refused by `weft net
//! create`, and one written by hand is refused by the agents. `weft net delete tenant-a` then
//! takes tenant A off every host (device, rules, table, nft table, subnet file, leases) while a
//! pinger in tenant B loses nothing; tenant B, deleted while one host's agent is down, is gone
//! from that host once its agent is back. Needs root (network namespaces); about 15 s.

mod common;

use common::kernel::{sh, wait_for};
use common::{have_root, lab_name, weft_bin};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use weft::lab::{Lab, LabOptions};
use weft::lease::Lease;

const CIDR: &str = "10.50.0.0/16";

struct Tenant {
    name: &'static str,
    vni: u32,
}

const A: Tenant = Tenant {
    name: "tenant-a",
    vni: 100,
};
const B: Tenant = Tenant {
    name: "tenant-b",
    vni: 200,
};

impl Tenant {
    fn device(&self) -> String {
        format!("weft.{}", self.vni)
    }
    fn table(&self) -> String {
        (100_000_000 + self.vni).to_string()
    }
}

/// `weft ARGS --store <the lab's>`, run from the test's own namespace (the store is a file).
fn weft(lab: &Lab, args: &[&str]) -> std::process::Output {
    let mut cmd = std::process::Command::new(weft_bin());
    cmd.args(args).args(["--store", lab.store_url()]);
    cmd.output().expect("running weft")
}

/// Each host's address in `t` (its lease's network address), from the store.
async fn addresses(lab: &Lab, t: &Tenant) -> BTreeMap<String, Ipv4Addr> {
    let prefix = format!("{}/networks/{}/subnets/", lab.prefix(), t.name);
    let listing = lab.store().unwrap().list(&prefix).await.unwrap();
    let mut out = BTreeMap::new();
    for e in &listing.entries {
        let Ok(l) = Lease::from_entry(e) else { continue };
        for h in lab.host_names() {
            if lab.underlay_ip(&h).unwrap() == l.public_ip {
                out.insert(h, l.subnet.network());
            }
        }
    }
    out
}

/// One echo from `host`, bound to a device or a source address; true if answered.
fn ping(lab: &Lab, host: &str, bind: &str, to: Ipv4Addr) -> bool {
    let to = to.to_string();
    let out = lab
        .exec(host, &["ping", "-n", "-q", "-c", "1", "-W", "1", "-I", bind, &to])
        .unwrap();
    out.status.success()
}

/// Runs the pings concurrently (a lost echo costs a second each); returns the answered ones.
fn pings(lab: &Lab, probes: &[(String, String, Ipv4Addr)]) -> Vec<bool> {
    std::thread::scope(|s| {
        let handles: Vec<_> = probes
            .iter()
            .map(|(h, bind, to)| s.spawn(move || ping(lab, h, bind, *to)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Every host pinging every other host's address in `t`, over `t`'s device.
fn matrix(t: &Tenant, addrs: &BTreeMap<String, Ipv4Addr>) -> Vec<(String, String, Ipv4Addr)> {
    let mut out = Vec::new();
    for from in addrs.keys() {
        for (to, ip) in addrs {
            if from != to {
                out.push((from.clone(), t.device(), *ip));
            }
        }
    }
    out
}

fn rx_packets(lab: &Lab, host: &str, dev: &str) -> u64 {
    sh(
        lab,
        host,
        &["cat", &format!("/sys/class/net/{dev}/statistics/rx_packets")],
    )
    .trim()
    .parse()
    .unwrap()
}

fn env_file(lab: &Lab, host: &str, t: &Tenant) -> PathBuf {
    lab.subnet_file(host)
        .parent()
        .unwrap()
        .join(format!("networks/{}.env", t.name))
}

/// What `t` leaves on `host`: its device, rules, routing table, nft table, subnet file.
fn traces(lab: &Lab, host: &str, t: &Tenant) -> Vec<String> {
    let mut out = Vec::new();
    if lab
        .exec(host, &["ip", "link", "show", &t.device()])
        .unwrap()
        .status
        .success()
    {
        out.push(format!("device {}", t.device()));
    }
    for l in sh(lab, host, &["ip", "rule"]).lines() {
        if l.contains(&format!("lookup {}", t.table())) {
            out.push(format!("rule {l}"));
        }
    }
    for l in sh(lab, host, &["ip", "route", "show", "table", &t.table()]).lines() {
        out.push(format!("route {l}"));
    }
    if sh(lab, host, &["nft", "list", "tables"]).contains(&format!("weft-{}", t.name)) {
        out.push(format!("nft table weft-{}", t.name));
    }
    if env_file(lab, host, t).exists() {
        out.push(format!("file {}", env_file(lab, host, t).display()));
    }
    out
}

/// `(vni, inner source, inner destination)` of every VXLAN datagram in a pcap file (Ethernet).
fn vxlan_in_pcap(path: &std::path::Path) -> Vec<(u32, Ipv4Addr, Ipv4Addr)> {
    let data = std::fs::read(path).unwrap();
    assert!(data.len() >= 24, "pcap file too short");
    let le = match data[0..4] {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        _ => panic!("not a pcap file"),
    };
    let u32_at = |b: &[u8]| {
        let a = [b[0], b[1], b[2], b[3]];
        if le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    };
    let ip = |b: &[u8]| Ipv4Addr::new(b[0], b[1], b[2], b[3]);
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= data.len() {
        let len = u32_at(&data[at + 8..]) as usize;
        let frame = &data[at + 16..(at + 16 + len).min(data.len())];
        at += 16 + len;
        // Ethernet, IPv4, UDP to 8472, VXLAN, inner Ethernet, inner IPv4.
        if frame.len() < 14 + 20 || frame[12..14] != [0x08, 0x00] {
            continue;
        }
        let ihl = usize::from(frame[14] & 0x0f) * 4;
        let udp = 14 + ihl;
        if frame[14 + 9] != 17 || frame.len() < udp + 8 + 8 + 14 + 20 {
            continue;
        }
        if u16::from_be_bytes([frame[udp + 2], frame[udp + 3]]) != 8472 {
            continue;
        }
        let vx = udp + 8;
        let vni = u32::from_be_bytes([0, frame[vx + 4], frame[vx + 5], frame[vx + 6]]);
        let inner = vx + 8 + 14;
        out.push((vni, ip(&frame[inner + 12..]), ip(&frame[inner + 16..])));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tenants_with_one_cidr_stay_apart_and_come_and_go_live() {
    if !have_root("two_tenants_with_one_cidr_stay_apart_and_come_and_go_live") {
        return;
    }
    let t0 = Instant::now();
    let name = lab_name();
    let opts = LabOptions::new(&name, 3)
        .weft_bin(weft_bin())
        .agent_arg("--subnet-lease-ttl")
        .agent_arg("60s")
        .wait(Some(Duration::from_secs(30)));
    let mut lab = Lab::up(opts).await.expect("lab up");
    let hosts = lab.host_names();

    // (a) Both tenants, one CIDR, created while the agents run.
    for t in [&A, &B] {
        let vni = t.vni.to_string();
        let out = weft(&lab, &["net", "create", t.name, "--vni", &vni, "--cidr", CIDR]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let created = Instant::now();
    let mut addrs = BTreeMap::new();
    for t in [&A, &B] {
        let mut got = BTreeMap::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while got.len() < hosts.len() && Instant::now() < deadline {
            got = addresses(&lab, t).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(got.len(), hosts.len(), "{}: leases {got:?}", t.name);
        addrs.insert(t.name, got);
    }
    // A host's subnets in the two tenants never overlap, though the tenants' CIDRs do.
    for h in &hosts {
        assert_ne!(addrs["tenant-a"][h], addrs["tenant-b"][h], "{h}");
    }
    for t in [&A, &B] {
        let probes = matrix(t, &addrs[t.name]);
        let ok = wait_for(Duration::from_secs(20), || {
            pings(&lab, &probes).into_iter().all(|ok| ok)
        });
        assert!(ok, "{}: pings inside the tenant fail: {probes:?}", t.name);
        for h in &hosts {
            let shown = sh(&lab, h, &["ip", "-4", "-o", "addr", "show", "dev", &t.device()]);
            let want = format!("{}/32", addrs[t.name][h]);
            assert!(shown.contains(&want), "{h}: {} has no {want}: {shown}", t.device());
            let env = std::fs::read_to_string(env_file(&lab, h, t)).unwrap();
            assert!(env.contains(&format!("FLANNEL_NETWORK={CIDR}")), "{env}");
        }
    }
    eprintln!(
        "both tenants reachable on every host {:?} after `net create`",
        created.elapsed()
    );
    // The default network's nft table leaves the tenants' VNIs to their own tables.
    let default_filter = |h: &str| sh(&lab, h, &["nft", "list", "chain", "ip", "weft", "input"]);
    for h in &hosts {
        let ok = wait_for(Duration::from_secs(5), || {
            default_filter(h).contains("@th,96,24 != { 0x64, 0xc8 } ip saddr != @peers")
        });
        assert!(ok, "{h}: {}", default_filter(h));
    }

    // (b) Nothing crosses: A's device and addresses cannot reach B's addresses and vice versa,
    // and the target tenant's devices receive nothing while the other tenant tries.
    for (from, to) in [(&A, &B), (&B, &A)] {
        let before: Vec<u64> = hosts.iter().map(|h| rx_packets(&lab, h, &to.device())).collect();
        let mut probes = Vec::new();
        for src in &hosts {
            for dst in hosts.iter().filter(|d| *d != src) {
                let target = addrs[to.name][dst];
                // An address the source tenant itself uses on some host is not a crossing.
                if addrs[from.name].values().any(|a| *a == target) {
                    continue;
                }
                probes.push((src.clone(), from.device(), target));
                probes.push((src.clone(), addrs[from.name][src].to_string(), target));
            }
        }
        assert!(probes.len() >= 8, "{probes:?}");
        let answered = pings(&lab, &probes);
        let crossed: Vec<_> = probes.iter().zip(&answered).filter(|(_, ok)| **ok).collect();
        assert!(crossed.is_empty(), "{} reached {}: {crossed:?}", from.name, to.name);
        let after: Vec<u64> = hosts.iter().map(|h| rx_packets(&lab, h, &to.device())).collect();
        assert_eq!(
            before, after,
            "{}'s devices received packets while {} pinged",
            to.name, from.name
        );
    }

    // (c) On the wire, each tenant's traffic carries its own VNI.
    let pcap = lab.dir().join("tenants.pcap");
    let ns = lab.namespace("h1").unwrap().to_string();
    let pcap_arg = pcap.display().to_string();
    let mut capture = std::process::Command::new("ip")
        .args([
            "netns", "exec", &ns, "timeout", "10", "tcpdump", "-i", "eth0", "-nn", "-U", "-c", "8",
        ])
        .args(["-w", &pcap_arg, "udp", "port", "8472"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("tcpdump (scripts/deps.sh installs it)");
    // tcpdump is listening once it has created its file.
    assert!(
        wait_for(Duration::from_secs(5), || pcap.exists()),
        "tcpdump did not start"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    for t in [&A, &B] {
        let to = addrs[t.name]["h2"].to_string();
        let out = lab
            .exec(
                "h1",
                &["ping", "-c", "2", "-i", "0.2", "-W", "1", "-I", &t.device(), &to],
            )
            .unwrap();
        assert!(out.status.success(), "{}: h1 -> h2", t.name);
    }
    assert!(
        capture.wait().unwrap().success(),
        "tcpdump saw fewer than 8 VXLAN packets"
    );
    let seen = vxlan_in_pcap(&pcap);
    for t in [&A, &B] {
        let (a1, a2) = (addrs[t.name]["h1"], addrs[t.name]["h2"]);
        let mine: Vec<_> = seen.iter().filter(|(vni, _, _)| *vni == t.vni).collect();
        assert_eq!(mine.len(), 4, "{}: {seen:?}", t.name);
        assert!(
            mine.iter()
                .all(|(_, s, d)| (*s, *d) == (a1, a2) || (*s, *d) == (a2, a1)),
            "{}: {mine:?}",
            t.name
        );
    }

    // (e) A VNI in use is refused: by `weft net create` ...
    for vni in ["100", "1"] {
        let out = weft(
            &lab,
            &["net", "create", "tenant-c", "--vni", vni, "--cidr", "10.60.0.0/16"],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(&format!("VNI {vni} is already used by")),
            "{err}"
        );
    }
    // ... and, written by hand into the store, by every agent (the older network keeps it).
    let dup = format!("{}/networks/dup/config", lab.prefix());
    let store = lab.store().unwrap();
    store
        .put(
            &dup,
            r#"{"Network":"10.60.0.0/16","Backend":{"Type":"vxlan","VNI":200}}"#,
        )
        .await
        .unwrap();
    let addr = "127.0.0.1:9102".parse().unwrap();
    for h in &hosts {
        let ns = lab.namespace(h).unwrap().to_string();
        let refused = wait_for(Duration::from_secs(10), || {
            let Ok(Some((200, body))) = weft::lab::probe::http_get(&ns, addr, "/status", Duration::from_secs(2)) else {
                return false;
            };
            let st: weft::agent::status::Status = serde_json::from_str(&body).unwrap();
            st.refused_networks
                .iter()
                .any(|r| r.name == "dup" && r.reason.contains("already used by network \"tenant-b\""))
                && st.networks.len() == 2
                && st.health(std::time::SystemTime::now()).is_empty()
        });
        assert!(refused, "{h}: the hand-written duplicate is not refused in /status");
        let log = std::fs::read_to_string(lab.agent_log(h)).unwrap();
        assert_eq!(
            log.matches("network not served network=dup").count(),
            1,
            "{h}: refusal not logged exactly once"
        );
        let metrics = weft::lab::probe::http_get(&ns, addr, "/metrics", Duration::from_secs(2))
            .unwrap()
            .unwrap()
            .1;
        assert!(
            metrics.contains("weft_peers_programmed{network=\"tenant-b\"} 2"),
            "{metrics}"
        );
    }
    store.delete(&dup).await.unwrap();

    // (d) Deleting tenant A while B pings on: A is gone from every host, B loses nothing.
    let b_to = addrs["tenant-b"]["h2"].to_string();
    let pinger = std::process::Command::new("ip")
        .args([
            "netns", "exec", &ns, "ping", "-n", "-q", "-i", "0.05", "-c", "60", "-W", "1",
        ])
        .args(["-I", &B.device(), &b_to])
        .output();
    let pinger = tokio::task::spawn_blocking(move || pinger);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let out = weft(&lab, &["net", "delete", "tenant-a", "--yes"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let deleted = Instant::now();
    let gone = wait_for(Duration::from_secs(15), || {
        hosts.iter().all(|h| traces(&lab, h, &A).is_empty())
    });
    let left: Vec<_> = hosts.iter().map(|h| (h, traces(&lab, h, &A))).collect();
    assert!(gone, "tenant-a left behind: {left:?}");
    eprintln!(
        "tenant-a gone from every host {:?} after `net delete`",
        deleted.elapsed()
    );
    let store_left = store
        .list(&format!("{}/networks/tenant-a/", lab.prefix()))
        .await
        .unwrap();
    assert!(store_left.entries.is_empty(), "{:?}", store_left.entries);
    assert!(store
        .get(&format!("{}/vnis/100", lab.prefix()))
        .await
        .unwrap()
        .is_none());
    let out = pinger.await.unwrap().unwrap();
    let summary = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success() && summary.contains("60 packets transmitted, 60 received"),
        "tenant-b pinger during the delete: {summary}"
    );
    let probes = matrix(&B, &addrs[B.name]);
    assert!(
        pings(&lab, &probes).into_iter().all(|ok| ok),
        "tenant-b after the delete"
    );
    for h in &hosts {
        let ok = wait_for(Duration::from_secs(5), || {
            default_filter(h).contains("udp dport 8472 @th,96,24 != 0xc8 ip saddr != @peers")
        });
        assert!(ok, "{h}: {}", default_filter(h));
    }
    // The default network never noticed.
    let report = lab.check().await.unwrap();
    assert!(report.ok(), "{report}");

    // (f) A network deleted while a host's agent is down is cleaned up when it starts again.
    lab.kill_agent("h3", nix::sys::signal::Signal::SIGKILL).unwrap();
    let out = weft(&lab, &["net", "delete", "tenant-b", "--yes"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let gone = wait_for(Duration::from_secs(15), || {
        ["h1", "h2"].iter().all(|h| traces(&lab, h, &B).is_empty())
    });
    assert!(gone, "tenant-b left behind on h1/h2");
    assert!(
        !traces(&lab, "h3", &B).is_empty(),
        "h3's agent is down: nothing should have changed"
    );
    lab.start_agent("h3").await.unwrap();
    let gone = wait_for(Duration::from_secs(15), || traces(&lab, "h3", &B).is_empty());
    assert!(gone, "h3 kept {:?} after its agent restarted", traces(&lab, "h3", &B));

    lab.down().unwrap();
    eprintln!("tenant_networks: {:?} in all", t0.elapsed());
}
