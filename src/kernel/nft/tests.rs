//! The table against the real kernel, each test in fresh namespaces (root needed; see testns).

use super::testns::{can_run, veth, Netns};
use super::*;
use std::net::UdpSocket;
use std::time::Duration;

pub(crate) fn spec() -> FirewallSpec {
    FirewallSpec {
        table: TABLE.into(),
        vxlan_port: 8472,
        peers: ["198.51.100.2".parse().unwrap()].into(),
        filter_vxlan: true,
        vni: None,
        exempt_vnis: Default::default(),
        l3: Some(L3Spec {
            network: "10.0.0.0/16".parse().unwrap(),
            own_subnet: "10.0.37.0/24".parse().unwrap(),
            ip_masq: true,
            isolate: None,
        }),
    }
}

fn ensure_in(ns: &Netns, spec: &FirewallSpec) -> Applied {
    let spec = spec.clone();
    ns.enter(move || ensure(&spec)).expect("ensure")
}

fn listing(ns: &Netns) -> String {
    ns.exec_ok("nft list table ip weft")
}

#[test]
fn ensure_repair_and_remove() {
    if !can_run() {
        return;
    }
    let ns = Netns::new();
    let s = spec();
    assert_eq!(ensure_in(&ns, &s), Applied::Created);
    let text = listing(&ns);
    for want in [
        "ip saddr 10.0.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random",
        "ip saddr != 10.0.0.0/16 ip daddr 10.0.37.0/24 return",
        "type nat hook postrouting priority srcnat; policy accept;",
        "udp dport 8472 ip saddr != @peers counter name \"vxlan_dropped\" drop",
        "elements = { 198.51.100.2 }",
    ] {
        assert!(text.contains(want), "{want} missing in\n{text}");
    }
    assert!(!text.contains("forward"), "{text}");
    assert_eq!(ensure_in(&ns, &s), Applied::Unchanged);

    // Hand edits are repaired: a deleted rule, a flushed chain, a foreign rule added.
    let handle = ns
        .exec_ok("nft -a list chain ip weft postrouting")
        .lines()
        .find(|l| l.contains("224.0.0.0/4"))
        .and_then(|l| l.rsplit("# handle ").next())
        .map(|h| h.trim().to_string())
        .expect("rule handle");
    ns.exec_ok(&format!("nft delete rule ip weft postrouting handle {handle}"));
    assert_eq!(ensure_in(&ns, &s), Applied::Rewritten);
    assert_eq!(listing(&ns), text);
    ns.exec_ok("nft flush chain ip weft input");
    assert_eq!(ensure_in(&ns, &s), Applied::Rewritten);
    ns.exec_ok("nft add rule ip weft postrouting accept");
    assert_eq!(ensure_in(&ns, &s), Applied::Rewritten);
    ns.exec_ok("nft add chain ip weft forward { type filter hook forward priority 0 ; }");
    assert_eq!(ensure_in(&ns, &s), Applied::Rewritten);
    ns.exec_ok("nft delete chain ip weft input");
    assert_eq!(ensure_in(&ns, &s), Applied::Rewritten);
    assert_eq!(listing(&ns), text);
    assert_eq!(ensure_in(&ns, &s), Applied::Unchanged);

    // A spec change rewrites; masquerade off removes the NAT chain.
    let no_masq = s.clone().with_l3(|l3| l3.ip_masq = false);
    assert_eq!(ensure_in(&ns, &no_masq), Applied::Rewritten);
    assert!(!listing(&ns).contains("postrouting"));
    assert_eq!(ensure_in(&ns, &no_masq), Applied::Unchanged);

    assert!(ns.enter(|| remove(TABLE)).unwrap());
    assert!(!ns.enter(|| remove(TABLE)).unwrap());
    assert!(!ns.exec_ok("nft list tables").contains("weft"));
    assert_eq!(ns.enter(|| dropped_vxlan_packets(TABLE)).unwrap(), 0);
}

#[test]
fn a_named_networks_table_reads_back_as_rendered_and_lives_beside_the_default() {
    if !can_run() {
        return;
    }
    let ns = Netns::new();
    let named = FirewallSpec {
        table: "weft-tenant-a".into(),
        vni: Some(100),
        ..spec().with_l3(|l3| l3.isolate = Some("weft.100".into()))
    };
    assert_eq!(ensure_in(&ns, &named), Applied::Created);
    // nft lists raw payloads, fib and iifname matches back the way they were rendered.
    assert_eq!(ensure_in(&ns, &named), Applied::Unchanged);
    let text = ns.exec_ok("nft list table ip weft-tenant-a");
    for want in [
        "udp dport 8472 @th,96,24 0x64 ip saddr != @peers counter name \"vxlan_dropped\" drop",
        "iifname \"weft.100\" fib daddr . iif type != local counter name \"isolation_dropped\" drop",
        "iifname \"weft.100\" oifname != \"weft.100\" counter name \"isolation_dropped\" drop",
    ] {
        assert!(text.contains(want), "{want} missing in\n{text}");
    }
    let default = FirewallSpec {
        exempt_vnis: [100, 200].into(),
        ..spec()
    };
    assert_eq!(ensure_in(&ns, &default), Applied::Created);
    assert_eq!(ensure_in(&ns, &default), Applied::Unchanged);
    assert!(listing(&ns).contains("udp dport 8472 @th,96,24 != { 0x64, 0xc8 } ip saddr != @peers"));
    let peers = vec!["192.0.2.77".parse().unwrap()];
    ns.enter(move || update_peers("weft-tenant-a", &peers, &[])).unwrap();
    assert!(ns.exec_ok("nft list set ip weft-tenant-a peers").contains("192.0.2.77"));
    assert!(!ns.exec_ok("nft list set ip weft peers").contains("192.0.2.77"));
    let listed = ns.enter(tables).unwrap();
    assert!(
        listed.contains(&"weft".to_string()) && listed.contains(&"weft-tenant-a".to_string()),
        "{listed:?}"
    );
    assert!(ns.enter(|| remove("weft-tenant-a")).unwrap());
    assert_eq!(ns.enter(tables).unwrap(), ["weft"]);
}

#[test]
fn an_l2_networks_table_reads_back_as_rendered() {
    if !can_run() {
        return;
    }
    let ns = Netns::new();
    let peers = ["198.51.100.20".parse().unwrap()].into();
    let mut l2 = FirewallSpec::l2("weft-l2net", 300, 8472, peers, true);
    assert_eq!(ensure_in(&ns, &l2), Applied::Created);
    assert_eq!(ensure_in(&ns, &l2), Applied::Unchanged);
    let text = ns.exec_ok("nft list table ip weft-l2net");
    assert!(
        text.contains("udp dport 8472 @th,96,24 0x12c ip saddr != @peers counter name \"vxlan_dropped\" drop"),
        "{text}"
    );
    assert!(!text.contains("forward") && !text.contains("postrouting"), "{text}");
    l2.peers.insert("203.0.113.30".parse().unwrap());
    assert_eq!(ensure_in(&ns, &l2), Applied::PeersUpdated);
    l2.filter_vxlan = false;
    assert_eq!(ensure_in(&ns, &l2), Applied::Rewritten);
    assert_eq!(ensure_in(&ns, &l2), Applied::Unchanged);
    assert!(!ns.exec_ok("nft list table ip weft-l2net").contains("chain"));
}

#[test]
fn peers_set_follows_spec() {
    if !can_run() {
        return;
    }
    let ns = Netns::new();
    let mut s = spec();
    ensure_in(&ns, &s);
    let set = || ns.exec_ok("nft list set ip weft peers");
    s.peers.insert("203.0.113.10".parse().unwrap());
    s.peers.insert("192.0.2.10".parse().unwrap());
    assert_eq!(ensure_in(&ns, &s), Applied::PeersUpdated);
    assert!(set().contains("elements = { 192.0.2.10, 198.51.100.2,"), "{}", set());
    assert!(set().contains("203.0.113.10 }"), "{}", set());
    assert_eq!(ensure_in(&ns, &s), Applied::Unchanged);
    s.peers.remove(&"198.51.100.2".parse().unwrap());
    assert_eq!(ensure_in(&ns, &s), Applied::PeersUpdated);
    assert!(set().contains("elements = { 192.0.2.10, 203.0.113.10 }"), "{}", set());
    s.peers.clear();
    assert_eq!(ensure_in(&ns, &s), Applied::PeersUpdated);
    assert!(!set().contains("elements"), "{}", set());
    assert_eq!(ensure_in(&ns, &s), Applied::Unchanged);
    // An element added by hand is taken out again.
    ns.exec_ok("nft add element ip weft peers { 192.0.2.99 }");
    assert_eq!(ensure_in(&ns, &s), Applied::PeersUpdated);
    assert!(!set().contains("192.0.2.99"), "{}", set());
}

/// host (forwarding) with a pod 10.0.37.2 behind it, an "outside" 203.0.113.2 with no route
/// to the overlay, and an overlay peer 10.0.48.2 that routes back via the host.
struct Topology {
    host: Netns,
    pod: Netns,
    outside: Netns,
    peer: Netns,
}

fn topology() -> Topology {
    let t = Topology {
        host: Netns::new(),
        pod: Netns::new(),
        outside: Netns::new(),
        peer: Netns::new(),
    };
    t.host.exec_ok("sysctl -qw net.ipv4.ip_forward=1");
    veth(&t.host, "hpod", "10.0.37.1/24", &t.pod, "eth0", "10.0.37.2/24");
    veth(&t.host, "hout", "203.0.113.1/24", &t.outside, "eth0", "203.0.113.2/24");
    veth(&t.host, "hpeer", "10.0.48.1/24", &t.peer, "eth0", "10.0.48.2/24");
    t.pod.ip("route add default via 10.0.37.1");
    t.peer.ip("route add default via 10.0.48.1");
    // A counter in the receiver: echo requests that still carry the pod's address.
    t.peer.exec_ok("nft add table ip probe");
    t.peer
        .exec_ok("nft add chain ip probe in { type filter hook input priority 0 ; }");
    t.peer
        .exec_ok("nft add rule ip probe in ip saddr 10.0.37.2 icmp type echo-request counter");
    t
}

fn ping(from: &Netns, to: &str) -> bool {
    from.exec(&format!("ping -c 1 -W 1 {to}")).0
}

#[test]
fn masquerade_only_leaving_the_overlay() {
    if !can_run() {
        return;
    }
    let t = topology();
    let off = spec().with_l3(|l3| l3.ip_masq = false);
    ensure_in(&t.host, &off);
    assert!(!ping(&t.pod, "203.0.113.2"), "outside answered without masquerade");
    assert_eq!(ensure_in(&t.host, &spec()), Applied::Rewritten);
    assert!(ping(&t.pod, "203.0.113.2"), "outside did not answer with masquerade");
    // Inside the overlay the source stays the pod's.
    assert!(ping(&t.pod, "10.0.48.2"));
    let probe = t.peer.exec_ok("nft list chain ip probe in");
    assert!(probe.contains("counter packets 1 "), "{probe}");

    // Documented limit: weft leaves forwarding to the host's policy. A drop in another table
    // (Docker's `iptables -P FORWARD DROP`, say) drops overlay traffic that flannel's accept
    // rules inside that chain would let through (see the operator guide).
    t.host.exec_ok("nft add table ip other");
    t.host
        .exec_ok("nft add chain ip other gate { type filter hook forward priority 10 ; policy drop ; }");
    assert!(!ping(&t.pod, "10.0.48.2"), "a drop in another table was overridden");
}

#[test]
fn errors_carry_nft_stderr() {
    if !can_run() {
        return;
    }
    let ns = Netns::new();
    let err = ns
        .enter(|| nft("list table", &["list", "table", "ip", "absent"], None))
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("nft list table: nft exit status: 1: Error: No such file or directory"),
        "{text}"
    );
    // A missing table is not an error where "absent" is a normal answer.
    assert_eq!(ns.enter(|| dropped_vxlan_packets(TABLE)).unwrap(), 0);
    assert!(!ns.enter(|| remove(TABLE)).unwrap());
}

/// A bound UDP socket in `ns`.
fn udp(ns: &Netns, addr: &'static str) -> UdpSocket {
    let s = ns.enter(move || UdpSocket::bind(addr)).expect("bind");
    s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    s
}

#[test]
fn vxlan_only_from_peers() {
    if !can_run() {
        return;
    }
    let host = Netns::new();
    let other = Netns::new();
    veth(&host, "eth0", "198.51.100.1/24", &other, "eth0", "198.51.100.2/24");
    other.ip("addr add 198.51.100.3/24 dev eth0");
    ensure_in(&host, &spec()); // peers: 198.51.100.2
    let rx = udp(&host, "198.51.100.1:8472");
    let stranger = udp(&other, "198.51.100.3:0");
    let peer = udp(&other, "198.51.100.2:0");
    let mut buf = [0u8; 16];

    stranger.send_to(b"stranger", "198.51.100.1:8472").unwrap();
    assert!(rx.recv_from(&mut buf).is_err(), "a non-peer's datagram arrived");
    assert_eq!(host.enter(|| dropped_vxlan_packets(TABLE)).unwrap(), 1);

    peer.send_to(b"peer", "198.51.100.1:8472").unwrap();
    let (n, from) = rx.recv_from(&mut buf).expect("the peer's datagram");
    assert_eq!(&buf[..n], b"peer");
    assert_eq!(from.ip().to_string(), "198.51.100.2");
    assert_eq!(host.enter(|| dropped_vxlan_packets(TABLE)).unwrap(), 1);

    // Other ports are not filtered.
    let rx2 = udp(&host, "198.51.100.1:9000");
    stranger.send_to(b"x", "198.51.100.1:9000").unwrap();
    assert!(rx2.recv_from(&mut buf).is_ok());

    // A rewrite (here: a hand edit repaired) keeps the counter's value.
    host.exec_ok("nft flush chain ip weft postrouting");
    assert_eq!(ensure_in(&host, &spec()), Applied::Rewritten);
    assert_eq!(host.enter(|| dropped_vxlan_packets(TABLE)).unwrap(), 1);

    // The filter off: everyone's VXLAN gets through.
    let open = FirewallSpec {
        filter_vxlan: false,
        ..spec()
    };
    ensure_in(&host, &open);
    stranger.send_to(b"stranger", "198.51.100.1:8472").unwrap();
    assert!(rx.recv_from(&mut buf).is_ok());
}

#[test]
fn a_batch_serves_many_tables_in_one_run_and_keeps_errors_apart() {
    if !can_run() {
        return;
    }
    let ns = Netns::new();
    let named = |name: &str, vni: u32| FirewallSpec {
        table: format!("weft-{name}"),
        vni: Some(vni),
        ..spec().with_l3(|l3| {
            l3.ip_masq = false;
            l3.isolate = Some(format!("weft.{vni}"));
        })
    };
    let (a, b) = (named("a", 100), named("b", 101));
    let peer: Ipv4Addr = "198.51.100.9".parse().unwrap();
    let requests = vec![
        NftRequest::Ensure(a.clone()),
        NftRequest::Ensure(b.clone()),
        // A peer update of a table that does not exist fails, alone.
        NftRequest::UpdatePeers {
            table: "weft-missing".into(),
            added: vec![peer],
            removed: vec![],
        },
        // The same table again: decided after the first request created it.
        NftRequest::UpdatePeers {
            table: a.table.clone(),
            added: vec![peer],
            removed: vec![],
        },
        NftRequest::Remove("weft-none".into()),
    ];
    let results = ns.enter(move || run_batch(&requests));
    let created = NftOutcome::Ensured {
        applied: Applied::Created,
        dropped: 0,
    };
    assert_eq!(results[0].as_ref().ok(), Some(&created), "{results:?}");
    assert_eq!(results[1].as_ref().ok(), Some(&created), "{results:?}");
    assert!(results[2].is_err(), "{results:?}");
    assert_eq!(results[3].as_ref().ok(), Some(&NftOutcome::PeersUpdated), "{results:?}");
    assert_eq!(
        results[4].as_ref().ok(),
        Some(&NftOutcome::Removed(false)),
        "{results:?}"
    );
    assert!(ns.exec_ok("nft list table ip weft-a").contains("198.51.100.9"));
    assert!(ns
        .exec_ok("nft list table ip weft-b")
        .contains("elements = { 198.51.100.2 }"));

    // Both listed in one run: b unchanged, a's extra peer taken out again, c created, a
    // foreign table left alone.
    ns.exec_ok("nft add table ip other");
    let c = named("c", 102);
    let requests = vec![
        NftRequest::Ensure(a.clone()),
        NftRequest::Ensure(b.clone()),
        NftRequest::Ensure(c),
        NftRequest::Remove(b.table.clone()),
    ];
    let results = ns.enter(move || run_batch(&requests));
    let outcome = |applied| NftOutcome::Ensured { applied, dropped: 0 };
    let got: Vec<_> = results.iter().map(|r| r.as_ref().ok().copied()).collect();
    assert_eq!(
        got,
        [
            Some(outcome(Applied::PeersUpdated)),
            Some(outcome(Applied::Unchanged)),
            Some(outcome(Applied::Created)),
            Some(NftOutcome::Removed(true)),
        ]
    );
    let tables = ns.exec_ok("nft list tables");
    assert!(
        tables.contains("weft-a") && tables.contains("weft-c") && tables.contains("other"),
        "{tables}"
    );
    assert!(!tables.contains("weft-b"), "{tables}");
    assert!(!ns.exec_ok("nft list table ip weft-a").contains("198.51.100.9"));
}

#[test]
fn set_changes_over_netlink_are_one_transaction_like_nft() {
    use super::setelem::{apply, SetChange, MAX_ELEMENTS};
    if !can_run() {
        return;
    }
    let ns = Netns::new();
    ensure_in(&ns, &spec());
    ensure_in(
        &ns,
        &FirewallSpec {
            table: "weft-b".into(),
            ..spec()
        },
    );
    let ips = |list: &[&str]| list.iter().map(|s| s.parse().unwrap()).collect::<Vec<Ipv4Addr>>();
    // The set's elements as listed by nft, sorted.
    let set = |table: &str| {
        let out = ns.exec_ok(&format!("nft -j list set ip {table} peers"));
        let v: Value = serde_json::from_str(&out).expect("nft JSON");
        let mut elems: Vec<String> = objects(&v)
            .iter()
            .filter_map(|o| o.get("set")?.get("elem")?.as_array().cloned())
            .flatten()
            .filter_map(|e| e.as_str().map(String::from))
            .collect();
        elems.sort_by_key(|e| e.parse::<Ipv4Addr>().ok());
        elems.join(" ")
    };
    let run = |changes: Vec<(&'static str, Vec<Ipv4Addr>, Vec<Ipv4Addr>)>| {
        ns.enter(move || {
            let changes: Vec<SetChange> = changes
                .iter()
                .map(|(table, added, removed)| SetChange {
                    table,
                    set: SET_PEERS,
                    added,
                    removed,
                })
                .collect();
            apply(&changes)
        })
    };

    // Two tables in one transaction; adding an element that is there already is no error.
    let added = ips(&["192.0.2.10", "198.51.100.2", "203.0.113.7"]);
    run(vec![
        ("weft", added.clone(), vec![]),
        ("weft-b", ips(&["192.0.2.20"]), vec![]),
    ])
    .unwrap();
    assert_eq!(set("weft"), "192.0.2.10 198.51.100.2 203.0.113.7");
    assert_eq!(set("weft-b"), "192.0.2.20 198.51.100.2");
    run(vec![("weft", ips(&["203.0.113.8"]), ips(&["192.0.2.10"]))]).unwrap();
    assert_eq!(set("weft"), "198.51.100.2 203.0.113.7 203.0.113.8");

    // Removing an element that is not there fails the whole transaction, as `nft` does: the
    // addition in it is not applied either, and the error says why.
    let e = run(vec![("weft", ips(&["192.0.2.99"]), ips(&["192.0.2.98"]))]).unwrap_err();
    assert!(e.to_string().contains("No such file or directory"), "{e}");
    assert_eq!(set("weft"), "198.51.100.2 203.0.113.7 203.0.113.8");
    // A table that does not exist is an error too, and so is a change too big for one send.
    let e = run(vec![("weft-missing", ips(&["192.0.2.1"]), vec![])]).unwrap_err();
    assert!(e.to_string().contains("No such file or directory"), "{e}");
    let too_many: Vec<Ipv4Addr> = (0..=MAX_ELEMENTS as u32)
        .map(|i| Ipv4Addr::from(0xc612_0000 + i))
        .collect();
    let e = run(vec![("weft", too_many, vec![])]).unwrap_err();
    assert!(e.to_string().contains("more than"), "{e}");

    // The biggest change that goes over netlink: split into messages, still one transaction.
    let many: Vec<Ipv4Addr> = (0..MAX_ELEMENTS as u32)
        .map(|i| Ipv4Addr::from(0xc612_0000 + i))
        .collect();
    run(vec![("weft-b", many.clone(), vec![])]).unwrap();
    assert_eq!(
        set("weft-b").matches("198.18.").count(),
        MAX_ELEMENTS,
        "every element listed"
    );
    run(vec![("weft-b", vec![], many)]).unwrap();
    assert_eq!(set("weft-b"), "192.0.2.20 198.51.100.2");

    // Through the public API (a batch round of set updates only, so the netlink path).
    let peer = ips(&["192.0.2.55"]);
    ns.enter(move || update_peers("weft", &peer, &[])).unwrap();
    assert_eq!(set("weft"), "192.0.2.55 198.51.100.2 203.0.113.7 203.0.113.8");
}
