//! Issue #8, parts 3–5: an L2 network across three hosts, with endpoints registered in the
//! store, ARP answered locally, an endpoint migrating between hosts, duplicates and flapping.
//!
//! One lab, agents running throughout: `weft net create l2net --mode l2`; endpoints e1, e2, e3
//! (namespaces with a veth on h1's, h2's, h3's bridge) registered with `weft endpoint add`.
//! (a) every endpoint pings every other; (b) a capture on h1's underlay link while the
//! endpoints ARP afresh shows ICMP inside VXLAN and no ARP at all; (c) e2 moves from h2 to h3
//! while e1 pings it every 10 ms: the echoes lost after e2 is up on h3 are counted (the issue's
//! target is 50 ms; this asserts a bound a loaded 2-core machine keeps, docs/benchmarks.md has
//! the measured figure); (d) a second MAC claiming e1's IP, a same-Seq claim of e3's MAC from
//! another host and a flapping MAC are flagged in `/status`, metrics and logs, the flapping one
//! frozen at its last host. Needs root; about 20 s.

mod common;

use common::kernel::{sh, wait_for};
use common::l2::{metrics, ping};
use common::{create_l2_network, have_root, lab_name, weft_bin};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};
use weft::agent::status::Status;
use weft::endpoint::{endpoint_key, Endpoint};
use weft::lab::endpoints::LabEndpoint;
use weft::lab::{Lab, LabOptions, Pinger};
use weft::mac::Mac;

const NET: &str = "l2net";
const VNI: u32 = 300;
const BRIDGE: &str = "weftbr.300";

fn weft(lab: &Lab, args: &[&str]) -> std::process::Output {
    let mut cmd = std::process::Command::new(weft_bin());
    cmd.args(args).args(["--store", lab.store_url()]);
    cmd.output().expect("running weft")
}

fn ok(out: std::process::Output) -> String {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ep(n: u32) -> LabEndpoint {
    common::l2::endpoint(n, [10, 70])
}

fn l2_status(lab: &Lab, host: &str) -> Option<Status> {
    common::l2::network_status(lab, host, NET)
}

/// Inner ethertypes of the VXLAN frames with VNI `vni` in a pcap file.
fn inner_ethertypes(path: &std::path::Path, vni: u32) -> Vec<u16> {
    let data = std::fs::read(path).unwrap();
    assert!(data.len() >= 24, "pcap file too short");
    let le = matches!(data[0..4], [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1]);
    let u32_at = |b: &[u8]| {
        let a = [b[0], b[1], b[2], b[3]];
        if le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    };
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= data.len() {
        let len = u32_at(&data[at + 8..]) as usize;
        let frame = &data[at + 16..(at + 16 + len).min(data.len())];
        at += 16 + len;
        if frame.len() < 14 + 20 || frame[12..14] != [0x08, 0x00] || frame[23] != 17 {
            continue;
        }
        let udp = 14 + usize::from(frame[14] & 0x0f) * 4;
        if frame.len() < udp + 8 + 8 + 14 || u16::from_be_bytes([frame[udp + 2], frame[udp + 3]]) != 8472 {
            continue;
        }
        let vx = udp + 8;
        if u32::from_be_bytes([0, frame[vx + 4], frame[vx + 5], frame[vx + 6]]) != vni {
            continue;
        }
        let inner = vx + 8;
        out.push(u16::from_be_bytes([frame[inner + 12], frame[inner + 13]]));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l2_endpoints_ping_arp_locally_migrate_and_are_policed() {
    if !have_root("l2_endpoints_ping_arp_locally_migrate_and_are_policed") {
        return;
    }
    let t0 = Instant::now();
    let opts = LabOptions::new(&lab_name(), 3)
        .weft_bin(weft_bin())
        .wait(Some(Duration::from_secs(30)));
    let lab = Lab::up(opts).await.expect("lab up");
    let hosts = lab.host_names();
    let host_ip = |h: &str| lab.underlay_ip(h).unwrap();

    create_l2_network(&lab, NET, VNI, "10.70.0.0/16");
    for h in &hosts {
        let up = wait_for(Duration::from_secs(15), || {
            let out = lab.exec(h, &["ip", "-d", "link", "show", "weft.300"]).unwrap();
            String::from_utf8_lossy(&out.stdout).contains(&format!("master {BRIDGE}"))
        });
        assert!(up, "{h}: weft.300 is not a port of {BRIDGE}");
        let port = sh(&lab, h, &["ip", "-d", "link", "show", "weft.300"]);
        assert!(
            port.contains("neigh_suppress on") && port.contains("learning off"),
            "{h}: {port}"
        );
        assert!(port.contains("nolearning"), "{h}: {port}");
        // The host has no IPv6 presence in the tenant's network: no link-local address on
        // the bridge or the tunnel, so no MLD or router solicitations flooded to the tenant.
        for dev in [BRIDGE, "weft.300"] {
            let v6 = sh(
                &lab,
                h,
                &["cat", &format!("/proc/sys/net/ipv6/conf/{dev}/disable_ipv6")],
            );
            assert_eq!(v6.trim(), "1", "{h}: IPv6 still on for {dev}");
            let addrs = sh(&lab, h, &["ip", "-6", "addr", "show", "dev", dev]);
            assert!(!addrs.contains("inet6"), "{h}: {dev} has {addrs}");
        }
    }

    // (a) Three endpoints, one per host; all ping each other.
    let eps: Vec<LabEndpoint> = (1..=3).map(ep).collect();
    for (e, h) in eps.iter().zip(&hosts) {
        e.attach(&lab, h, BRIDGE).unwrap();
        let hip = host_ip(h).to_string();
        let (mac, ip) = (e.mac.to_string(), e.ip.to_string());
        ok(weft(
            &lab,
            &["endpoint", "add", NET, "--host", &hip, "--mac", &mac, "--ip", &ip],
        ));
    }
    let listed = ok(weft(&lab, &["endpoint", "list", NET]));
    assert_eq!(listed.lines().filter(|l| l.ends_with("ok")).count(), 3, "{listed}");
    let all_pairs = || {
        std::thread::scope(|s| {
            let hs: Vec<_> = eps
                .iter()
                .flat_map(|a| eps.iter().filter(move |b| *b != a).map(move |b| (a, b)))
                .map(|(a, b)| s.spawn(|| ping(&lab, a, b.ip)))
                .collect();
            hs.into_iter().all(|h| h.join().unwrap())
        })
    };
    assert!(
        wait_for(Duration::from_secs(20), all_pairs),
        "L2 pings across three hosts fail"
    );
    for h in &hosts {
        let neigh = sh(&lab, h, &["ip", "neigh", "show", "dev", BRIDGE, "nud", "permanent"]);
        assert_eq!(
            neigh.lines().count(),
            2,
            "{h}: neighbours for the two remote endpoints: {neigh}"
        );
        let flood = sh(&lab, h, &["bridge", "fdb", "show", "dev", "weft.300"]);
        let floods = flood.lines().filter(|l| l.starts_with("00:00:00:00:00:00")).count();
        assert_eq!(floods, 2, "{h}: flood list: {flood}");
    }
    eprintln!("L2 pings across three hosts after {:?}", t0.elapsed());

    // (b) ARP for known endpoints never crosses the underlay: every endpoint forgets its
    // neighbours, then e1 pings e2 while h1's underlay link is captured.
    for e in &eps {
        e.exec(&lab, &["ip", "neigh", "flush", "dev", "eth0"]).unwrap();
    }
    let pcap = lab.dir().join("l2-arp.pcap");
    let pcap_arg = pcap.display().to_string();
    let ns1 = lab.namespace("h1").unwrap().to_string();
    let mut capture = std::process::Command::new("ip")
        .args([
            "netns", "exec", &ns1, "timeout", "3", "tcpdump", "-i", "eth0", "-nn", "-U",
        ])
        .args(["-w", &pcap_arg, "udp", "port", "8472"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("tcpdump (scripts/deps.sh installs it)");
    assert!(
        wait_for(Duration::from_secs(5), || pcap.exists()),
        "tcpdump did not start"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = eps[0]
        .exec(
            &lab,
            &["ping", "-n", "-c", "3", "-i", "0.2", "-W", "1", &eps[1].ip.to_string()],
        )
        .unwrap();
    assert!(out.status.success(), "e1 -> e2 after the neighbour flush");
    let _ = capture.wait();
    let types = inner_ethertypes(&pcap, VNI);
    let icmp = types.iter().filter(|t| **t == 0x0800).count();
    let arp = types.iter().filter(|t| **t == 0x0806).count();
    assert!(icmp >= 6, "the capture missed the pings: {types:x?}");
    assert_eq!(arp, 0, "ARP crossed the underlay: {types:x?}");
    let n1 = eps[0]
        .exec(&lab, &["ip", "neigh", "show", &eps[1].ip.to_string()])
        .unwrap();
    let n1 = String::from_utf8_lossy(&n1.stdout).to_string();
    assert!(n1.contains(&eps[1].mac.to_string()), "e1 resolved e2: {n1}");
    eprintln!("ARP suppression: {icmp} ICMP frames in VXLAN, 0 ARP");

    // (c) Migration: e2 leaves h2 and appears on h3, e1 (on h1) pinging it every 10 ms.
    let interval = Duration::from_millis(10);
    let pinger = Pinger::start(
        &eps[0].namespace(&lab),
        eps[1].ip,
        interval,
        300,
        Duration::from_secs(5),
    )
    .unwrap();
    let started = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    eps[1].detach(&lab, "h2").unwrap();
    eps[1].attach(&lab, "h3", BRIDGE).unwrap();
    let up_on_b = Instant::now();
    // The registration a hypervisor hook would write once the endpoint runs on h3.
    let store = lab.store().unwrap();
    let key = endpoint_key(&format!("{}/networks/{NET}", lab.prefix()), eps[1].mac);
    let have: Endpoint = serde_json::from_str(&store.get(&key).await.unwrap().unwrap().value).unwrap();
    let moved = Endpoint {
        host: host_ip("h3"),
        seq: have.seq + 1,
        ..have
    };
    store.put(&key, &moved.to_json()).await.unwrap();
    let stats = pinger.wait().unwrap();
    let first_after = ((up_on_b - started).as_millis() / interval.as_millis()) as u16;
    let lost_after = stats.lost_seqs.iter().filter(|s| **s >= first_after).count() as u64;
    let downtime = Duration::from_millis(lost_after * interval.as_millis() as u64);
    eprintln!(
        "migration: {} of {} echoes lost, {lost_after} after e2 was up on h3: {downtime:?} of lost traffic \
         (target 50 ms); the move itself took {:?}",
        stats.lost,
        stats.sent,
        up_on_b.duration_since(started) - Duration::from_millis(500)
    );
    assert!(stats.received > 200, "{stats:?}");
    assert!(
        downtime <= Duration::from_millis(500),
        "migration downtime {downtime:?}: {stats:?}"
    );
    // Every agent repointed: h1 sends e2's MAC to h3; h3 has no remote entries for it; h2 has
    // no endpoint left and is out of everybody's flood list.
    let fdb = |h: &str| sh(&lab, h, &["bridge", "fdb", "show", "dev", "weft.300"]);
    let m2 = eps[1].mac.to_string();
    let h3ip = host_ip("h3").to_string();
    assert!(
        wait_for(Duration::from_secs(5), || fdb("h1")
            .contains(&format!("{m2} dst {h3ip}"))),
        "{}",
        fdb("h1")
    );
    assert!(
        !fdb("h3").contains(&m2),
        "h3 still forwards its own endpoint to the tunnel: {}",
        fdb("h3")
    );
    let h2ip = host_ip("h2").to_string();
    assert!(!fdb("h1").contains(&format!("dst {h2ip}")), "{}", fdb("h1"));
    assert!(all_pairs(), "pings after the migration");
    let log3 = std::fs::read_to_string(lab.agent_log("h3")).unwrap();
    assert!(log3.contains("gratuitous ARP sent"), "h3 announced nothing");

    // (d1) Duplicate IP: another MAC claims e1's IP from h3. Both are flagged; e1 keeps it.
    let dup_mac = "02:00:0a:46:00:99";
    let h3 = host_ip("h3").to_string();
    ok(weft(
        &lab,
        &[
            "endpoint",
            "add",
            NET,
            "--host",
            &h3,
            "--mac",
            dup_mac,
            "--ip",
            &eps[0].ip.to_string(),
        ],
    ));
    for h in &hosts {
        let flagged = wait_for(Duration::from_secs(5), || {
            l2_status(&lab, h)
                .and_then(|s| s.l2)
                .is_some_and(|l2| l2.problems.iter().filter(|p| p.kind == "duplicate_ip").count() == 2)
        });
        assert!(
            flagged,
            "{h}: duplicate IP not flagged: {:?}",
            l2_status(&lab, h).and_then(|s| s.l2)
        );
        let m = metrics(&lab, h);
        assert!(
            m.contains(&format!(
                "weft_endpoint_problems{{network=\"{NET}\",kind=\"duplicate_ip\"}} 2"
            )),
            "{m}"
        );
        let log = std::fs::read_to_string(lab.agent_log(h)).unwrap();
        assert!(
            log.contains("endpoint flagged") && log.contains("kind=duplicate_ip"),
            "{h}"
        );
    }
    assert!(ping(&lab, &eps[2], eps[0].ip), "e1 lost its IP to a later claim");
    ok(weft(&lab, &["endpoint", "delete", NET, "--mac", dup_mac]));

    // (d2) Duplicate MAC: e3's MAC claimed from h1 without a higher Seq: kept on h3.
    let key3 = endpoint_key(&format!("{}/networks/{NET}", lab.prefix()), eps[2].mac);
    let have3: Endpoint = serde_json::from_str(&store.get(&key3).await.unwrap().unwrap().value).unwrap();
    let claim = Endpoint {
        host: host_ip("h1"),
        ..have3.clone()
    };
    store.put(&key3, &claim.to_json()).await.unwrap();
    for h in &hosts {
        let flagged = wait_for(Duration::from_secs(5), || {
            l2_status(&lab, h)
                .and_then(|s| s.l2)
                .is_some_and(|l2| l2.problems.iter().any(|p| p.kind == "duplicate_mac"))
        });
        assert!(flagged, "{h}: duplicate MAC not flagged");
    }
    assert!(ping(&lab, &eps[0], eps[2].ip), "e3 is no longer reachable from e1");
    let fixed = Endpoint {
        seq: have3.seq + 1,
        ..have3
    };
    store.put(&key3, &fixed.to_json()).await.unwrap();

    // (d3) Flapping: a MAC moved between h1 and h2 seven times in a row is frozen after the
    // fifth move, at h1 (where that move left it), and reported.
    let flap = Mac([0x02, 0, 0x0a, 0x46, 0, 0x77]);
    let keyf = endpoint_key(&format!("{}/networks/{NET}", lab.prefix()), flap);
    for seq in 0..=7u64 {
        let h = if seq % 2 == 0 { "h2" } else { "h1" };
        let e = Endpoint {
            mac: flap,
            ip: Ipv4Addr::new(10, 70, 0, 77),
            host: host_ip(h),
            seq,
        };
        store.put(&keyf, &e.to_json()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let h1ip = host_ip("h1").to_string();
    let frozen = wait_for(Duration::from_secs(5), || {
        l2_status(&lab, "h3").and_then(|s| s.l2).is_some_and(|l2| {
            l2.problems
                .iter()
                .any(|p| p.kind == "frozen" && p.hosts.first().map(|h| h.to_string()) == Some(h1ip.clone()))
        })
    });
    assert!(frozen, "not frozen: {:?}", l2_status(&lab, "h3").and_then(|s| s.l2));
    assert!(fdb("h3").contains(&format!("{flap} dst {h1ip}")), "{}", fdb("h3"));
    let m = metrics(&lab, "h3");
    assert!(
        m.contains(&format!(
            "weft_endpoint_problems{{network=\"{NET}\",kind=\"frozen\"}} 1"
        )),
        "{m}"
    );
    assert!(
        m.contains(&format!(
            "weft_endpoint_events_total{{network=\"{NET}\",event=\"frozen\"}}"
        )),
        "{m}"
    );
    let log = std::fs::read_to_string(lab.agent_log("h3")).unwrap();
    assert!(log.contains("endpoint flapping: frozen at its last host"), "h3 log");
    let bin = weft_bin().display().to_string();
    let shown = sh(&lab, "h3", &[&bin, "status"]);
    assert!(
        shown.contains(&format!("FLAGGED    frozen {flap}")) && shown.contains("l2         bridge weftbr.300"),
        "{shown}"
    );

    // Deleting the network takes the bridges away.
    ok(weft(&lab, &["net", "delete", NET, "--yes"]));
    for h in &hosts {
        let gone = wait_for(Duration::from_secs(10), || {
            !lab.exec(h, &["ip", "link", "show", BRIDGE]).unwrap().status.success()
        });
        assert!(gone, "{h}: {BRIDGE} left behind");
    }
    lab.down().unwrap();
    eprintln!("l2_networks: {:?} in all", t0.elapsed());
}
