//! Issue #7, part 3: VXLAN only from peers. A VXLAN packet crafted here (VXLAN header with the
//! network's VNI, inner Ethernet + IPv4 + ICMP echo to the target's overlay address) sent from
//! the lab's router, which is not a peer, is dropped and counted (the filter's counter and
//! `weft_vxlan_dropped_packets_total`) while peers' pings flow; the same packet from a peer's
//! address is accepted; and the peers set follows the leases. Run twice: with the filter as
//! the lab's agents place it by default (a BPF sk_lookup program pinned on the lab's bpffs)
//! and in nft (`--bpf-pin-dir=none`). Needs root (network namespaces).

mod common;

use common::kernel::*;
use common::vxlan::{mac_bytes, nft_peers, send_from, vxlan_dropped, vxlan_echo};
use common::{have_root, lab_name, weft_bin};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;
use weft::lab::probe::Pinger;
use weft::lab::{Lab, LabOptions};

const VXLAN_PORT: u16 = 8472;
const VNI: u32 = 1;
/// Packets injected per phase.
const BURST: u64 = 20;

/// `weft_vxlan_dropped_packets_total` from the host's agent.
fn metric_dropped(lab: &Lab, host: &str) -> u64 {
    let m = sh(
        lab,
        host,
        &["curl", "-sf", "--max-time", "3", "http://127.0.0.1:9102/metrics"],
    );
    m.lines()
        .find_map(|l| l.strip_prefix("weft_vxlan_dropped_packets_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// RX packets of flannel.1.
fn rx_packets(lab: &Lab, host: &str) -> u64 {
    sh(lab, host, &["cat", "/sys/class/net/flannel.1/statistics/rx_packets"])
        .trim()
        .parse()
        .unwrap()
}

/// Where the agents filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Bpf,
    Nft,
}

/// The filter's own drop counter: the pinned BPF map's or the nft table's.
fn filter_dropped(lab: &Lab, host: &str, place: Place) -> u64 {
    match place {
        Place::Bpf => weft::kernel::bpf::pinned_dropped(&lab.dir().join("bpf").join(host))
            .unwrap()
            .expect("a pinned drop counter"),
        Place::Nft => vxlan_dropped(lab, host, "weft"),
    }
}

/// `/status`'s `vxlan_filter.place` of the host's agent.
fn status_place(lab: &Lab, host: &str) -> String {
    let s = sh(
        lab,
        host,
        &["curl", "-sf", "--max-time", "3", "http://127.0.0.1:9102/status"],
    );
    let v: serde_json::Value = serde_json::from_str(&s).unwrap();
    v["vxlan_filter"]["place"].as_str().unwrap_or("").to_string()
}

fn peers_set(lab: &Lab, host: &str) -> String {
    nft_peers(lab, host, "weft")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vxlan_from_a_stranger_is_dropped_and_counted_while_peers_flow_bpf() {
    if !have_root("vxlan_from_a_stranger_is_dropped_and_counted_while_peers_flow_bpf") {
        return;
    }
    stranger_dropped_peers_flow(Place::Bpf).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vxlan_from_a_stranger_is_dropped_and_counted_while_peers_flow_nft() {
    if !have_root("vxlan_from_a_stranger_is_dropped_and_counted_while_peers_flow_nft") {
        return;
    }
    stranger_dropped_peers_flow(Place::Nft).await;
}

async fn stranger_dropped_peers_flow(place: Place) {
    let name = lab_name();
    let mut opts = LabOptions::new(&name, 3)
        .weft_bin(weft_bin())
        .agent_arg("--resync-interval")
        .agent_arg("1s");
    if place == Place::Nft {
        opts = opts.agent_arg("--bpf-pin-dir=none");
    }
    let mut lab = Lab::up(opts).await.expect("lab up");
    let table = sh(&lab, "h1", &["nft", "list", "table", "ip", "weft"]);
    assert_eq!(table.contains("chain input"), place == Place::Nft, "{table}");
    let want = if place == Place::Bpf { "bpf" } else { "nft" };
    assert!(
        wait_for(Duration::from_secs(5), || status_place(&lab, "h1") == want),
        "/status place {:?}, want {want}",
        status_place(&lab, "h1")
    );
    let leases = lab.leases().await.unwrap();
    let (h1, h2, h3) = (&leases["h1"], &leases["h2"], &leases["h3"]);
    let target = SocketAddrV4::new(h1.public_ip, VXLAN_PORT);
    let packets = |from: Ipv4Addr| -> Vec<Vec<u8>> {
        (0..BURST as u16)
            .map(|seq| {
                vxlan_echo(
                    VNI,
                    mac_bytes(&h2.vtep_mac.to_string()),
                    mac_bytes(&device_mac(&lab, "h1")),
                    from,
                    h1.subnet.network(),
                    seq,
                )
            })
            .collect()
    };
    let set = peers_set(&lab, "h1");
    assert!(
        set.contains(&h2.public_ip.to_string()) && set.contains(&h3.public_ip.to_string()),
        "{set}"
    );
    assert!(!set.contains(&h1.public_ip.to_string()), "own IP in the set: {set}");

    // A peer's traffic flows throughout.
    let pinger = Pinger::start(
        lab.namespace("h2").unwrap(),
        h3.subnet.network(),
        Duration::from_millis(20),
        300,
        Duration::from_secs(10),
    )
    .unwrap();

    // 1. From the router (not a peer): dropped and counted; nothing reaches flannel.1.
    let router = weft::lab::topology::router_ns(&name);
    let (dropped0, rx0) = (filter_dropped(&lab, "h1", place), rx_packets(&lab, "h1"));
    send_from(&router, target, packets(h2.subnet.network()));
    std::thread::sleep(Duration::from_millis(300));
    let (dropped1, rx1) = (filter_dropped(&lab, "h1", place), rx_packets(&lab, "h1"));
    assert_eq!(dropped1 - dropped0, BURST, "the filter's counter");
    assert_eq!(rx1, rx0, "a stranger's VXLAN reached flannel.1");
    // The agent's metric follows the filter's counter at the latest at the next resync (1 s here).
    let ok = wait_for(Duration::from_secs(5), || metric_dropped(&lab, "h1") >= dropped1);
    assert!(ok, "metric {} < counter {dropped1}", metric_dropped(&lab, "h1"));

    // 2. The same packets from a peer's namespace (source: its public IP): accepted and
    // delivered to flannel.1; the drop counter does not move.
    send_from(lab.namespace("h2").unwrap(), target, packets(h2.subnet.network()));
    std::thread::sleep(Duration::from_millis(300));
    let (dropped2, rx2) = (filter_dropped(&lab, "h1", place), rx_packets(&lab, "h1"));
    assert_eq!(dropped2, dropped1, "a peer's VXLAN was dropped");
    assert!(rx2 - rx1 >= BURST, "flannel.1 rx {rx1} → {rx2}");

    let stats = pinger.stop().unwrap();
    assert!(stats.sent > 20, "{stats:?}");
    assert_eq!(stats.lost, 0, "peer pings lost: {stats:?}");

    // 3. The set follows the leases: h3 goes away (agent stopped, lease deleted).
    let h3_ip = h3.public_ip.to_string();
    lab.remove_host("h3").await.unwrap();
    let ok = wait_for(Duration::from_secs(10), || !peers_set(&lab, "h1").contains(&h3_ip));
    assert!(ok, "h3's IP still in the set: {}", peers_set(&lab, "h1"));
    assert!(peers_set(&lab, "h1").contains(&h2.public_ip.to_string()));
    eprintln!(
        "stranger: {BURST} sent, {} dropped, 0 delivered; peer: {BURST} sent, {} delivered; pings h2→h3: {}/{} answered",
        dropped1 - dropped0,
        rx2 - rx1,
        stats.received,
        stats.sent
    );
    lab.down().unwrap();
}
