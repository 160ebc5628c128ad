//! The lab with pods: pod-to-pod across hosts, masquerade to the outside (and none without
//! `--ip-masq`), no masquerade inside the overlay, the nft table repaired after a hand edit,
//! DirectRouting without VXLAN between hosts of one rack, and `--cleanup`. Needs root.
//!
//! Every namespace is the lab's (`NAME-…`); `weft-cni` and the cleanup run inside host
//! namespaces; the guard removes everything, also on panic.

mod common;

use common::kernel::*;
use common::{assert_gone, cleanup, have_root, lab_name, weft_bin};
use nix::sched::{setns, CloneFlags};
use nix::sys::signal::Signal;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weft::lab::probe::{self, Pinger};
use weft::lab::{Lab, LabGuard, LabOptions, ProbeKind};

async fn up(opts: LabOptions) -> LabGuard {
    Lab::up(opts.weft_bin(weft_bin())).await.expect("lab up")
}

/// Runs `f` on a thread of its own inside namespace `ns` (only that thread changes namespace;
/// sockets it opens stay in `ns`).
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let handle = std::fs::File::open(&path).expect("open the namespace");
        setns(&handle, CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
}

/// Sends UDP datagrams from namespace `from` to `to:port` (a few, 100 ms apart, until one
/// arrives) and returns the source address the listener in namespace `at` saw, if any.
fn udp_source_seen(from: &str, at: &str, to: Ipv4Addr) -> Option<Ipv4Addr> {
    const PORT: u16 = 40_123;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let done = Arc::new(AtomicBool::new(false));
    let done_rx = done.clone();
    let listener = in_ns(at, move || {
        let sock = UdpSocket::bind(("0.0.0.0", PORT)).expect("bind in the receiver");
        sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        ready_tx.send(()).unwrap();
        let mut buf = [0u8; 64];
        let got = match sock.recv_from(&mut buf) {
            Ok((_, SocketAddr::V4(a))) => Some(*a.ip()),
            _ => None,
        };
        done_rx.store(true, Ordering::Relaxed);
        got
    });
    ready_rx.recv_timeout(Duration::from_secs(3)).expect("listener ready");
    let sender = in_ns(from, move || {
        let sock = UdpSocket::bind(("0.0.0.0", 0)).expect("bind in the sender");
        for _ in 0..25 {
            if done.load(Ordering::Relaxed) {
                break;
            }
            let _ = sock.send_to(b"weft-lab-pods", (to, PORT));
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let seen = listener.join().unwrap();
    sender.join().unwrap();
    seen
}

/// One HTTP GET of `path` on the agent's status port inside namespace `ns`.
fn http_get(ns: &str, path: &'static str) -> String {
    in_ns(ns, move || {
        let mut s = match TcpStream::connect_timeout(
            &weft::agent::status::DEFAULT_HTTP_ADDR.parse().unwrap(),
            Duration::from_secs(1),
        ) {
            Ok(s) => s,
            Err(_) => return String::new(),
        };
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    })
    .join()
    .unwrap()
}

fn nft_table(lab: &Lab, host: &str) -> String {
    let out = lab.exec(host, &["nft", "list", "table", "ip", "weft"]).unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `/sys/class/net/flannel.1/statistics/<what>` on a host.
fn flannel_stat(lab: &Lab, host: &str, what: &str) -> u64 {
    sh(
        lab,
        host,
        &["cat", &format!("/sys/class/net/flannel.1/statistics/{what}")],
    )
    .trim()
    .parse()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_reach_each_other_unmasqueraded_and_the_outside_only_through_masquerade() {
    if !have_root("pods_reach_each_other_unmasqueraded_and_the_outside_only_through_masquerade") {
        return;
    }
    let name = lab_name();
    let mut lab = up(LabOptions::new(&name, 3).pods(2)).await;
    let outside = lab.outside_ip().expect("a lab with pods has an outside");
    for h in lab.host_names() {
        let pods = lab.pods(&h);
        assert_eq!(pods.len(), 2, "{h}");
        let subnet = lab.leases().await.unwrap()[&h].subnet;
        for p in &pods {
            assert!(subnet.contains(&p.ip), "{h}: {p:?} outside {subnet}");
            assert!(p.namespace.starts_with(&format!("{name}-{h}-p")), "{p:?}");
        }
    }

    // Everything answers: pod -> pod across hosts, pod -> every host, pod -> outside (masquerade
    // is on by default with pods).
    let report = lab.check().await.unwrap();
    assert!(report.ok(), "{report}");
    let kinds: Vec<ProbeKind> = report.pod_summary().into_iter().map(|(k, _, _)| k).collect();
    assert_eq!(
        kinds,
        [ProbeKind::PodToPod, ProbeKind::PodToHost, ProbeKind::PodToOutside]
    );
    // 6 pods, each to the 4 pods of the other hosts.
    assert_eq!(report.pod_summary()[0].2, 24);

    // Inside the overlay nobody masquerades: h2's pod sees h1's pod's own address.
    let (p1, p2) = (lab.pods("h1")[0].clone(), lab.pods("h2")[0].clone());
    assert_eq!(
        udp_source_seen(&p1.namespace, &p2.namespace, p2.ip),
        Some(p1.ip),
        "pod traffic inside the overlay must keep the pod's address"
    );
    // To the outside the pod's host masquerades: the outside sees h1's underlay address.
    let outside_ns = lab.outside_namespace();
    assert_eq!(
        udp_source_seen(&p1.namespace, &outside_ns, outside),
        Some(lab.underlay_ip("h1").unwrap()),
        "pod traffic to the outside must be masqueraded to the host's address"
    );

    // h1's agent restarted without --ip-masq rewrites its table without the NAT chain, and h1's
    // pods no longer get answers from the outside (it has no route to the overlay); h2's still do.
    assert!(nft_table(&lab, "h1").contains("chain postrouting"));
    lab.set_ip_masq("h1", false).unwrap();
    lab.kill_agent("h1", Signal::SIGTERM).unwrap();
    lab.start_agent("h1").await.unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || {
            let t = nft_table(&lab, "h1");
            t.contains("set peers") && !t.contains("postrouting") && !t.contains("masquerade")
        }),
        "agent without --ip-masq kept the NAT chain:\n{}\n{}",
        nft_table(&lab, "h1"),
        agent_log(&lab, "h1")
    );
    let short = Duration::from_millis(700);
    assert!(
        !probe::reach(&p1.namespace, outside, short).unwrap(),
        "answered without masquerade"
    );
    assert!(probe::reach(&p2.namespace, outside, Duration::from_secs(2)).unwrap());
    let report = lab.check().await.unwrap();
    assert!(!report.ok());
    let failed: Vec<String> = report
        .pod_failures(ProbeKind::PodToOutside)
        .iter()
        .map(|p| p.from.clone())
        .collect();
    assert_eq!(failed, [format!("{name}-h1-p1"), format!("{name}-h1-p2")], "{report}");
    assert!(report.pod_failures(ProbeKind::PodToPod).is_empty(), "{report}");
    assert!(report.pod_failures(ProbeKind::PodToHost).is_empty(), "{report}");

    // `down` removes the pods and the outside with the rest.
    lab.down().unwrap();
    assert_gone(&name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nft_table_deleted_or_flushed_by_hand_is_repaired_and_strangers_vxlan_is_dropped() {
    if !have_root("nft_table_deleted_or_flushed_by_hand_is_repaired_and_strangers_vxlan_is_dropped") {
        return;
    }
    // The peer filter in nft (its BPF place is tests/vxlan_filter.rs's and tests/bpf_filter.rs's).
    let lab = up(LabOptions::new(&lab_name(), 2)
        .ip_masq(true)
        .agent_arg("--resync-interval=2s")
        .agent_arg("--bpf-pin-dir=none"))
    .await;
    let want = nft_table(&lab, "h1");
    assert!(
        want.contains("chain postrouting") && want.contains("chain input"),
        "{want}"
    );

    let t = Instant::now();
    sh(&lab, "h1", &["nft", "delete", "table", "ip", "weft"]);
    assert!(
        wait_for(Duration::from_secs(5), || nft_table(&lab, "h1")
            .contains("chain postrouting")),
        "table not back after 5 s:\n{}",
        agent_log(&lab, "h1")
    );
    eprintln!("deleted table back after {} ms", t.elapsed().as_millis());

    let t = Instant::now();
    sh(&lab, "h1", &["nft", "flush", "chain", "ip", "weft", "postrouting"]);
    assert!(!nft_table(&lab, "h1").contains("masquerade"));
    assert!(
        wait_for(Duration::from_secs(5), || nft_table(&lab, "h1")
            .matches("masquerade")
            .count()
            == 2),
        "flushed chain not repaired after 5 s:\n{}",
        nft_table(&lab, "h1")
    );
    eprintln!("flushed chain repaired after {} ms", t.elapsed().as_millis());
    assert!(lab.check().await.unwrap().ok());

    // VXLAN from a non-peer (the router, 192.0.2.1) is dropped and counted, in nft and (after
    // the next resync) in the agent's metrics.
    let h1 = lab.underlay_ip("h1").unwrap();
    in_ns(&weft::lab::topology::router_ns(lab.name()), move || {
        let s = UdpSocket::bind(("0.0.0.0", 0)).unwrap();
        for _ in 0..5 {
            s.send_to(&[0u8; 16], (h1, 8472)).unwrap();
        }
    })
    .join()
    .unwrap();
    let counter = || sh(&lab, "h1", &["nft", "list", "counter", "ip", "weft", "vxlan_dropped"]);
    assert!(
        wait_for(Duration::from_secs(2), || counter().contains("packets 5 ")),
        "{}",
        counter()
    );
    assert!(
        wait_for(Duration::from_secs(5), || {
            http_get(lab.namespace("h1").unwrap(), "/metrics")
                .lines()
                .any(|l| l.contains("vxlan_dropped_packets_total") && l.trim_end().ends_with(" 5"))
        }),
        "metric: {}",
        http_get(lab.namespace("h1").unwrap(), "/metrics")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_routing_between_hosts_of_one_rack_carries_no_vxlan() {
    if !have_root("direct_routing_between_hosts_of_one_rack_carries_no_vxlan") {
        return;
    }
    let lab = up(LabOptions::new(&lab_name(), 3)
        .rack_size(2)
        .direct_routing(true)
        .pods(1))
    .await;
    let leases = lab.leases().await.unwrap();
    let (h2, h3) = (&leases["h2"], &leases["h3"]);
    assert_eq!(h2.public_ip, Ipv4Addr::new(192, 0, 2, 11), "h1 and h2 share rack 1");
    assert_eq!(h3.public_ip, Ipv4Addr::new(198, 51, 100, 10));

    let table = sh(&lab, "h1", &["ip", "route", "show", "proto", "87"]);
    assert!(
        table.contains(&format!("{} via {} dev eth0", h2.subnet, h2.public_ip)),
        "no direct route to h2:\n{table}"
    );
    assert!(
        table.contains(&format!("{} via {} dev flannel.1", h3.subnet, h3.subnet.network())),
        "h3 must go through VXLAN:\n{table}"
    );
    let (fdb, neigh) = (fdbs(&lab, "h1"), neighs(&lab, "h1"));
    assert_eq!(fdb.len(), 1, "only h3 needs an FDB entry: {fdb:?}");
    assert!(fdb[0].contains(&h3.vtep_mac.to_string()) && fdb[0].contains(&h3.public_ip.to_string()));
    assert_eq!(neigh.len(), 1, "only h3 needs a neighbour entry: {neigh:?}");
    assert!(!neigh[0].contains(&h2.subnet.network().to_string()));

    let report = lab.check().await.unwrap();
    assert!(report.ok(), "{report}");

    // 50 echoes pod -> pod to h2: flannel.1 sends nothing; to h3: at least one packet each.
    let from = lab.pods("h1")[0].namespace.clone();
    let ping = |dst: Ipv4Addr| {
        let stats = Pinger::start(&from, dst, Duration::from_millis(5), 50, Duration::from_secs(5))
            .unwrap()
            .wait()
            .unwrap();
        assert_eq!(stats.lost, 0, "{dst}: {stats:?}");
    };
    let before = flannel_stat(&lab, "h1", "tx_packets");
    let rx2 = flannel_stat(&lab, "h2", "rx_packets");
    ping(lab.pods("h2")[0].ip);
    let same_rack = flannel_stat(&lab, "h1", "tx_packets") - before;
    assert_eq!(same_rack, 0, "VXLAN packets sent to a same-rack peer");
    assert_eq!(flannel_stat(&lab, "h2", "rx_packets"), rx2, "h2 received VXLAN from h1");
    let before = flannel_stat(&lab, "h1", "tx_packets");
    ping(lab.pods("h3")[0].ip);
    let other_rack = flannel_stat(&lab, "h1", "tx_packets") - before;
    assert!(other_rack >= 50, "only {other_rack} VXLAN packets for 50 echoes to h3");
    eprintln!("flannel.1 tx on h1 for 50 echoes: to h2 {same_rack}, to h3 {other_rack}");
}

/// `ip -br link`, `ip -br addr`, `ip route` and the nft ruleset: what the cleanup must restore.
fn snapshot(lab: &Lab, host: &str) -> Vec<String> {
    [
        &["ip", "-br", "link"][..],
        &["ip", "-br", "addr"],
        &["ip", "route", "show", "table", "all"],
        &["nft", "list", "ruleset"],
    ]
    .iter()
    .map(|argv| sh(lab, host, argv))
    .collect()
}

/// The snapshot once a new host has settled: a fresh veth takes a moment to get its carrier and
/// its IPv6 link-local address, whose local route appears only after duplicate address detection
/// (~1 s); either would otherwise look like a difference.
fn settled_snapshot(lab: &Lab, host: &str) -> Vec<String> {
    let mut last = snapshot(lab, host);
    let settled = wait_for(Duration::from_secs(10), || {
        std::thread::sleep(Duration::from_millis(200));
        let now = snapshot(lab, host);
        let stable = now == last && now[0].contains(" UP ") && now[2].contains("local fe80::");
        last = now;
        stable
    });
    assert!(settled, "{host} did not settle: {last:?}");
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_leaves_the_host_as_it_was_and_release_frees_the_lease() {
    if !have_root("cleanup_leaves_the_host_as_it_was_and_release_frees_the_lease") {
        return;
    }
    // The bare topology first, so the hosts can be photographed before any agent touched them.
    let mut lab = up(LabOptions::topology_only(&lab_name(), 2).ip_masq(true)).await;
    let before: Vec<Vec<String>> = ["h1", "h2"].iter().map(|h| settled_snapshot(&lab, h)).collect();
    for h in ["h1", "h2"] {
        lab.start_agent(h).await.unwrap();
    }
    lab.wait_converged(Duration::from_secs(20)).await.unwrap();
    assert!(nft_table(&lab, "h1").contains("masquerade"));
    assert_ne!(snapshot(&lab, "h1"), before[0]);

    let h1_lease = lab.leases().await.unwrap()["h1"].subnet;
    let said = cleanup(&mut lab, "h1", false);
    assert!(!lab.subnet_file("h1").exists(), "subnet.env left behind");
    assert_eq!(
        snapshot(&lab, "h1"),
        before[0],
        "h1 not as before the agent; cleanup said:\n{said}"
    );
    assert!(!sh(&lab, "h1", &["ip", "link"]).contains("flannel.1"));
    // The peer filter's BPF program (the lab's default place) is detached, its pins removed.
    assert!(said.contains("detached the VXLAN peer filter's BPF program"), "{said}");
    assert!(!lab.dir().join("bpf/h1").exists(), "pins left: {said}");
    assert!(!sh(&lab, "h1", &["ip", "route", "show", "table", "all"]).contains("proto 87"));
    assert_eq!(
        lab.leases().await.unwrap().get("h1").map(|l| l.subnet),
        Some(h1_lease),
        "--cleanup without --release keeps the lease"
    );

    let said = cleanup(&mut lab, "h2", true);
    assert_eq!(
        snapshot(&lab, "h2"),
        before[1],
        "h2 not as before the agent; cleanup said:\n{said}"
    );
    assert!(
        !lab.leases().await.unwrap().contains_key("h2"),
        "--release must delete the lease: {said}"
    );
}
