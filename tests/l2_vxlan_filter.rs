//! L2 networks accept VXLAN only from their peers: the other hosts with endpoints in the
//! network (the hosts its agent floods to). Each L2 agent keeps nft table `ip weft-NAME`.
//!
//! One lab of three hosts, an L2 network with endpoints e1 on h1 and e2 on h2, h3 with none.
//! (a) Each host's peers set holds exactly the other hosts with endpoints. (b) VXLAN of the
//! network's VNI crafted here (inner frame to e1 from an address nobody has) and sent to h1
//! from the lab's router is dropped and counted (nft counter,
//! `weft_vxlan_dropped_packets_total{network=…}`, `/status`) while e2 pings e1 without loss;
//! (c) the same from h3, a weft host but no peer of the network, is dropped too and never
//! reaches e1; (d) once e3 is registered on h3, h3 is a peer on h1 and h2 and its frames reach
//! e1, every one; (e) e3 unregistered, h3 leaves the sets; (e2) h2 forgotten (`weft endpoint
//! delete --host`), it leaves h1's set and FDB; (f) `--cleanup` and `weft net delete` remove
//! the table. Needs root; about 15 s.

mod common;

use common::kernel::{sh, wait_for};
use common::l2::{endpoint, metrics, network_status, ping, register};
use common::vxlan::{nft_peers, send_from, vxlan_dropped, vxlan_echo};
use common::{cleanup, create_l2_network, have_root, lab_name, weft_bin, weft_ok};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;
use weft::lab::endpoints::LabEndpoint;
use weft::lab::{Lab, LabGuard, LabOptions, Pinger};

const NET: &str = "l2f";
const VNI: u32 = 310;
const BRIDGE: &str = "weftbr.310";
const DEVICE: &str = "weft.310";
const TABLE: &str = "weft-l2f";
const VXLAN_PORT: u16 = 8472;
/// Datagrams injected per phase.
const BURST: u64 = 20;

fn ep(n: u32) -> LabEndpoint {
    endpoint(n, [10, 71])
}

fn ip_of(lab: &Lab, host: &str) -> Ipv4Addr {
    lab.underlay_ip(host).unwrap()
}

/// The peers set of the network's table on `host`, as addresses.
fn peers(lab: &Lab, host: &str) -> Vec<Ipv4Addr> {
    let set = nft_peers(lab, host, TABLE);
    let Some(elems) = set.split("elements = {").nth(1).and_then(|s| s.split('}').next()) else {
        return Vec::new();
    };
    let mut ips: Vec<Ipv4Addr> = elems.split(',').filter_map(|s| s.trim().parse().ok()).collect();
    ips.sort();
    ips
}

fn want(lab: &Lab, hosts: &[&str]) -> Vec<Ipv4Addr> {
    let mut ips: Vec<Ipv4Addr> = hosts.iter().map(|h| ip_of(lab, h)).collect();
    ips.sort();
    ips
}

/// The crafted frames' inner source: an address no endpoint has, so that what reaches e1
/// from it is exactly what was injected (bridges' own IGMP and MLD reports, flooded by h3
/// while it is no peer, are dropped and counted too).
const CRAFTED_SRC: Ipv4Addr = Ipv4Addr::new(10, 71, 0, 99);
const CRAFTED_MAC: [u8; 6] = [0x02, 0, 10, 71, 0, 99];

/// Counts, inside endpoint `e`'s namespace (the test's own), what arrives from CRAFTED_SRC.
fn watch_crafted(lab: &Lab, e: &LabEndpoint) {
    let src = CRAFTED_SRC.to_string();
    for cmd in [
        vec!["nft", "add", "table", "ip", "probe"],
        vec![
            "nft",
            "add chain ip probe pre { type filter hook prerouting priority -300; }",
        ],
        vec![
            "nft", "add", "rule", "ip", "probe", "pre", "ip", "saddr", &src, "counter",
        ],
    ] {
        let out = e.exec(lab, &cmd).unwrap();
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Frames from CRAFTED_SRC that reached endpoint `e`.
fn crafted_delivered(lab: &Lab, e: &LabEndpoint) -> u64 {
    let out = e.exec(lab, &["nft", "list", "chain", "ip", "probe", "pre"]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.split("counter packets ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no probe counter in {text}"))
}

/// `weft_vxlan_dropped_packets_total{network="l2f"}` from the host's agent.
fn metric_dropped(lab: &Lab, host: &str) -> u64 {
    let prefix = format!("weft_vxlan_dropped_packets_total{{network=\"{NET}\"}} ");
    metrics(lab, host)
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn has_table(lab: &Lab, host: &str) -> bool {
    sh(lab, host, &["nft", "list", "tables"]).contains(TABLE)
}

/// A lab of `hosts` hosts whose agents run with `args`, with the L2 network created and its
/// device, bridge and table on every host.
async fn lab_with_network(hosts: u32, args: &[&str]) -> LabGuard {
    let mut opts = LabOptions::new(&lab_name(), hosts)
        .weft_bin(weft_bin())
        .wait(Some(Duration::from_secs(30)));
    for a in args {
        opts = opts.agent_arg(*a);
    }
    let lab = Lab::up(opts).await.expect("lab up");
    create_l2_network(&lab, NET, VNI, "10.71.0.0/16");
    for h in lab.host_names() {
        let up = wait_for(Duration::from_secs(15), || {
            has_table(&lab, &h) && sh(&lab, &h, &["ip", "-d", "link", "show", DEVICE]).contains(BRIDGE)
        });
        assert!(up, "{h}: no {DEVICE} on {BRIDGE} or no table {TABLE}");
    }
    lab
}

/// Endpoint `e` plugged into `host`'s bridge and registered there.
fn place(lab: &Lab, e: &LabEndpoint, host: &str) {
    e.attach(lab, host, BRIDGE).unwrap();
    register(lab, NET, e, host);
}

/// `BURST` crafted datagrams of the network's VNI, inner frame to `to` from CRAFTED_SRC.
fn burst(to: &LabEndpoint) -> Vec<Vec<u8>> {
    (0..BURST as u16)
        .map(|seq| vxlan_echo(VNI, CRAFTED_MAC, to.mac.0, CRAFTED_SRC, to.ip, seq))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l2_vxlan_only_from_hosts_with_endpoints() {
    if !have_root("l2_vxlan_only_from_hosts_with_endpoints") {
        return;
    }
    let mut lab = lab_with_network(3, &["--resync-interval", "1s"]).await;
    // No endpoints anywhere: no peers, every datagram of the VNI dropped.
    assert_eq!(peers(&lab, "h1"), Vec::<Ipv4Addr>::new());

    // (a) e1 on h1, e2 on h2; h3 has none.
    let (e1, e2, e3) = (ep(1), ep(2), ep(3));
    place(&lab, &e1, "h1");
    place(&lab, &e2, "h2");
    let both = || ping(&lab, &e1, e2.ip) && ping(&lab, &e2, e1.ip);
    assert!(wait_for(Duration::from_secs(20), both), "e1 <-> e2 do not ping");
    let sets_are = |lab: &Lab, expected: &[(&str, &[&str])]| {
        wait_for(Duration::from_secs(10), || {
            expected.iter().all(|(h, p)| peers(lab, h) == want(lab, p))
        })
    };
    let ok = sets_are(&lab, &[("h1", &["h2"]), ("h2", &["h1"]), ("h3", &["h1", "h2"])]);
    assert!(
        ok,
        "peers sets: h1 {:?}, h2 {:?}, h3 {:?}",
        peers(&lab, "h1"),
        peers(&lab, "h2"),
        peers(&lab, "h3")
    );

    let target = SocketAddrV4::new(ip_of(&lab, "h1"), VXLAN_PORT);
    watch_crafted(&lab, &e1);

    // (b) From the router (no weft host at all), while e2 pings e1 through h1's filter.
    let pinger = Pinger::start(
        &e2.namespace(&lab),
        e1.ip,
        Duration::from_millis(20),
        100,
        Duration::from_secs(5),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let router = weft::lab::topology::router_ns(lab.name());
    let d0 = vxlan_dropped(&lab, "h1", TABLE);
    send_from(&router, target, burst(&e1));
    std::thread::sleep(Duration::from_millis(300));
    let d1 = vxlan_dropped(&lab, "h1", TABLE);
    assert!(d1 - d0 >= BURST, "nft counter of {TABLE} on h1: {d0} -> {d1}");
    assert_eq!(crafted_delivered(&lab, &e1), 0, "a stranger's frames reached e1");
    let stats = pinger.wait().unwrap();
    assert!(stats.sent >= 50, "{stats:?}");
    assert_eq!(stats.lost, 0, "e2 -> e1 pings lost: {stats:?}");
    let ok = wait_for(Duration::from_secs(5), || metric_dropped(&lab, "h1") >= d1);
    assert!(ok, "metric {} < nft {d1}", metric_dropped(&lab, "h1"));

    // (c) From h3: a weft host, but no endpoint of the network, so no peer of it.
    send_from(lab.namespace("h3").unwrap(), target, burst(&e1));
    std::thread::sleep(Duration::from_millis(300));
    let d2 = vxlan_dropped(&lab, "h1", TABLE);
    assert!(d2 - d1 >= BURST, "h3's datagrams were not all dropped: {d1} -> {d2}");
    assert_eq!(crafted_delivered(&lab, &e1), 0, "a non-peer's frames reached e1");

    // (d) h3 gets its first endpoint: it becomes a peer on h1 and h2, and is delivered.
    place(&lab, &e3, "h3");
    let ok = sets_are(
        &lab,
        &[("h1", &["h2", "h3"]), ("h2", &["h1", "h3"]), ("h3", &["h1", "h2"])],
    );
    assert!(
        ok,
        "h3 not a peer: h1 {:?}, h2 {:?}",
        peers(&lab, "h1"),
        peers(&lab, "h2")
    );
    assert!(wait_for(Duration::from_secs(10), || ping(&lab, &e3, e1.ip)), "e3 -> e1");
    // (h3's gratuitous ARP for e3 may have raced h1's set update and been dropped: the
    // count starts again here. Every host is a peer now and the router is silent.)
    let d3 = vxlan_dropped(&lab, "h1", TABLE);
    send_from(lab.namespace("h3").unwrap(), target, burst(&e1));
    std::thread::sleep(Duration::from_millis(300));
    let d4 = vxlan_dropped(&lab, "h1", TABLE);
    assert_eq!(d4, d3, "a peer's datagrams were dropped");
    assert_eq!(
        crafted_delivered(&lab, &e1),
        BURST,
        "a peer's frames did not all reach e1"
    );

    // /status and `weft status` show the table, its peers and what it dropped.
    let shown = wait_for(Duration::from_secs(5), || {
        network_status(&lab, "h1", NET)
            .and_then(|s| s.l2?.vxlan_filter)
            .is_some_and(|f| f.table == TABLE && f.enabled && f.peers == 2 && f.dropped >= 2 * BURST)
    });
    assert!(shown, "{:?}", network_status(&lab, "h1", NET).and_then(|s| s.l2));
    let bin = weft_bin().display().to_string();
    let text = sh(&lab, "h1", &[&bin, "status"]);
    assert!(
        text.contains(&format!("filter     nft table {TABLE}: VXLAN only from 2 peers")),
        "{text}"
    );

    // (e) e3 unregistered: h3 has no endpoint left and leaves the other hosts' sets.
    weft_ok(&lab, &["endpoint", "delete", NET, "--mac", &e3.mac.to_string()]);
    let ok = sets_are(&lab, &[("h1", &["h2"]), ("h2", &["h1"])]);
    assert!(
        ok,
        "h3 still a peer: h1 {:?}, h2 {:?}",
        peers(&lab, "h1"),
        peers(&lab, "h2")
    );
    assert!(both(), "e1 <-> e2 after h3 left");

    // (e2) h2 gone for good: `weft endpoint delete --host` removes its endpoint e2, and h2
    // leaves h1's set and h1's forwarding database.
    let h2ip = ip_of(&lab, "h2").to_string();
    let fdb = || sh(&lab, "h1", &["bridge", "fdb", "show", "dev", DEVICE]);
    assert!(fdb().contains(&format!("{} dst {h2ip}", e2.mac)), "{}", fdb());
    let said = weft_ok(&lab, &["endpoint", "delete", NET, "--host", &h2ip]);
    assert!(said.contains(&format!("removed {} {}", e2.mac, e2.ip)), "{said}");
    let no_peer: &[&str] = &[];
    assert!(
        sets_are(&lab, &[("h1", no_peer)]),
        "h2 still a peer on h1: {:?}",
        peers(&lab, "h1")
    );
    let forgotten = wait_for(Duration::from_secs(5), || !fdb().contains(&e2.mac.to_string()));
    assert!(forgotten, "h1 still forwards e2 to h2: {}", fdb());
    let again = weft_ok(&lab, &["endpoint", "delete", NET, "--host", &h2ip]);
    assert!(again.contains(&format!("nothing of {h2ip} in {NET}")), "{again}");

    // (f) `weft agent --cleanup` on h1 removes the table; deleting the network removes it on
    // the others.
    let said = cleanup(&mut lab, "h1", false);
    assert!(!has_table(&lab, "h1"), "--cleanup left {TABLE}: {said}");
    weft_ok(&lab, &["net", "delete", NET, "--yes"]);
    for h in ["h2", "h3"] {
        let gone = wait_for(Duration::from_secs(10), || !has_table(&lab, h));
        assert!(gone, "{h}: {TABLE} left behind after net delete");
    }
    eprintln!(
        "L2 VXLAN filter: router {BURST} sent, {} counted dropped; non-peer host {BURST} sent, {} counted dropped, \
         0 delivered; peer pings {}/{} answered; new peer's {BURST} delivered",
        d1 - d0,
        d2 - d1,
        stats.received,
        stats.sent
    );
    lab.down().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l2_vxlan_filter_off_accepts_anyone() {
    if !have_root("l2_vxlan_filter_off_accepts_anyone") {
        return;
    }
    let lab = lab_with_network(2, &["--vxlan-peer-filter=false"]).await;
    let (e1, e2) = (ep(1), ep(2));
    place(&lab, &e1, "h1");
    place(&lab, &e2, "h2");
    assert!(wait_for(Duration::from_secs(20), || ping(&lab, &e2, e1.ip)), "e2 -> e1");
    // The set is kept (for inspection) but nothing is dropped.
    let ok = wait_for(Duration::from_secs(10), || peers(&lab, "h1") == want(&lab, &["h2"]));
    assert!(ok, "h1's peers {:?}", peers(&lab, "h1"));
    watch_crafted(&lab, &e1);
    let target = SocketAddrV4::new(ip_of(&lab, "h1"), VXLAN_PORT);
    send_from(&weft::lab::topology::router_ns(lab.name()), target, burst(&e1));
    let ok = wait_for(Duration::from_secs(2), || crafted_delivered(&lab, &e1) == BURST);
    assert!(
        ok,
        "with the filter off, {} of {BURST} reached e1",
        crafted_delivered(&lab, &e1)
    );
    assert_eq!(vxlan_dropped(&lab, "h1", TABLE), 0);
    let f = network_status(&lab, "h1", NET).and_then(|s| s.l2?.vxlan_filter);
    assert!(f.as_ref().is_some_and(|f| !f.enabled && f.peers == 1), "{f:?}");
    lab.down().unwrap();
}
