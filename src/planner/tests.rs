use super::peers::*;
use super::state::*;
use super::*;
use crate::config::NetworkConfig;
use crate::lease::{lease_key, vxlan_lease_value};
use crate::mac::Mac;
use crate::store::Entry;
use proptest::prelude::*;
use std::net::Ipv4Addr;

const DEV: u32 = 7;
const OTHER_DEV: u32 = 2;
/// The main routing table's id.
const MAIN: u32 = 254;

fn net() -> Ipv4Net {
    "10.0.0.0/16".parse().unwrap()
}

fn mac(i: u8) -> Mac {
    Mac([0x02, 0, 0, 0, 0, i])
}

fn peer(third: u8, m: u8, ip: [u8; 4]) -> Peer {
    let subnet: Ipv4Net = format!("10.0.{third}.0/24").parse().unwrap();
    Peer {
        key: lease_key("/coreos.com/network", subnet),
        subnet,
        public_ip: Ipv4Addr::from(ip),
        vtep_mac: mac(m),
    }
}

/// A model of what the kernel does with each operation, keyed as the kernel keys its objects.
fn apply(obs: &Observed, ops: &[Op]) -> Observed {
    let mut o = obs.clone();
    for op in ops {
        o.apply(op);
    }
    o
}

fn desired(peers: &[Peer]) -> Observed {
    let mut o = Observed::default();
    for p in peers {
        let e = peer_entries(p, Devices::vxlan_only(DEV));
        o.neighs.extend(e.neigh);
        o.fdbs.extend(e.fdb);
        o.routes.insert(e.route);
    }
    o
}

#[test]
fn fresh_host_gets_three_entries_per_peer_in_order() {
    let peers = [peer(48, 1, [198, 51, 100, 10])];
    let ops = plan(net(), Devices::vxlan_only(DEV), &peers, &Observed::default());
    let kinds: Vec<_> = ops.iter().map(|o| o.labels()).collect();
    assert_eq!(kinds, [("neigh", "ensure"), ("fdb", "ensure"), ("route", "ensure")]);
    assert_eq!(
        ops[2].to_string(),
        "route 10.0.48.0/24 via 10.0.48.0 onlink proto 87 metric 48"
    );
    assert_eq!(
        ops[1].to_string(),
        "fdb 02:00:00:00:00:01 dst 198.51.100.10 self permanent"
    );
}

#[test]
fn converged_state_plans_nothing() {
    let peers = [peer(48, 1, [198, 51, 100, 10]), peer(51, 2, [203, 0, 113, 10])];
    assert!(plan(net(), Devices::vxlan_only(DEV), &peers, &desired(&peers)).is_empty());
}

#[test]
fn changed_mac_leaves_no_old_fdb() {
    let old = [peer(48, 1, [198, 51, 100, 10])];
    let new = [peer(48, 9, [198, 51, 100, 10])];
    let ops = plan(net(), Devices::vxlan_only(DEV), &new, &desired(&old));
    assert_eq!(apply(&desired(&old), &ops), {
        let mut d = desired(&new);
        d.routes.clear();
        d.routes.extend(desired(&old).routes);
        d
    });
    assert!(ops.contains(&Op::RemoveFdb(FdbEntry {
        mac: mac(1),
        dst: "198.51.100.10".parse().unwrap()
    })));
}

#[test]
fn changed_public_ip_repoints_fdb() {
    let old = [peer(48, 1, [198, 51, 100, 10])];
    let new = [peer(48, 1, [198, 51, 100, 99])];
    let after = apply(
        &desired(&old),
        &plan(net(), Devices::vxlan_only(DEV), &new, &desired(&old)),
    );
    assert_eq!(after.fdbs, desired(&new).fdbs);
}

#[test]
fn removed_peer_leaves_nothing() {
    let old = [peer(48, 1, [198, 51, 100, 10]), peer(51, 2, [203, 0, 113, 10])];
    let ops = plan(net(), Devices::vxlan_only(DEV), &old[..1], &desired(&old));
    assert_eq!(
        ops.iter().map(|o| o.labels()).collect::<Vec<_>>(),
        [("neigh", "remove"), ("fdb", "remove"), ("route", "remove")]
    );
    assert_eq!(apply(&desired(&old), &ops), desired(&old[..1]));
}

#[test]
fn foreign_entries_are_left_alone_but_flannel_routes_are_taken_over() {
    let peers = [peer(48, 1, [198, 51, 100, 10])];
    let mut obs = Observed::default();
    let foreign_route = RouteEntry {
        dst: "10.0.99.0/24".parse().unwrap(),
        gateway: "10.0.99.0".parse().unwrap(),
        oif: DEV,
        onlink: true,
        protocol: 3, // boot: flannel's, or an operator's
        metric: 0,
    };
    let other_dev_route = RouteEntry {
        oif: OTHER_DEV,
        protocol: ROUTE_PROTO_WEFT,
        ..foreign_route
    };
    // flannel's route to the peer: protocol boot, metric 0.
    let flannel_route = RouteEntry {
        protocol: 3,
        metric: 0,
        ..peer_entries(&peers[0], Devices::vxlan_only(DEV)).route
    };
    let foreign_neigh = NeighEntry {
        ip: "192.0.2.77".parse().unwrap(),
        mac: mac(50),
    };
    obs.routes = [foreign_route, other_dev_route, flannel_route].into();
    obs.neighs = [foreign_neigh].into();
    let ops = plan(net(), Devices::vxlan_only(DEV), &peers, &obs);
    let after = apply(&obs, &ops);
    assert!(after.routes.contains(&foreign_route));
    assert!(after.routes.contains(&other_dev_route));
    assert!(after.neighs.contains(&foreign_neigh));
    assert!(after
        .routes
        .contains(&peer_entries(&peers[0], Devices::vxlan_only(DEV)).route));
    assert!(!after.routes.contains(&flannel_route));
    // Ours is in place before flannel's goes: the peer is never without a route.
    let ours = peer_entries(&peers[0], Devices::vxlan_only(DEV)).route;
    let added = ops.iter().position(|o| *o == Op::EnsureRoute(ours));
    let removed = ops.iter().position(|o| *o == Op::RemoveRoute(flannel_route));
    assert!(added.is_some() && removed.is_some() && added < removed, "{ops:?}");
}

fn entry(key: &str, value: &str, rev: i64) -> Entry {
    Entry {
        key: key.into(),
        value: value.into(),
        create_revision: rev,
        mod_revision: rev,
        expires_at: None,
    }
}

#[test]
fn select_peers_refuses_bad_leases_with_reasons() {
    let cfg = NetworkConfig::parse(r#"{"Network":"10.0.0.0/16"}"#).unwrap();
    let host = Host {
        public_ip: "192.0.2.10".parse().unwrap(),
        subnet: Some("10.0.37.0/24".parse().unwrap()),
    };
    let k = |s: &str| format!("/coreos.com/network/subnets/{s}");
    let v = |ip: &str, vni: u32, m: &str| vxlan_lease_value(ip.parse().unwrap(), vni, m.parse().unwrap());
    let entries = vec![
        entry(&k("10.0.37.0-24"), &v("192.0.2.10", 1, "02:00:00:00:00:01"), 1), // ours
        entry(&k("10.0.48.0-24"), &v("198.51.100.10", 1, "02:00:00:00:00:02"), 2), // good
        entry(&k("10.1.0.0-24"), &v("198.51.100.11", 1, "02:00:00:00:00:03"), 3),
        entry(&k("10.0.50.0-25"), &v("198.51.100.12", 1, "02:00:00:00:00:04"), 4),
        entry(&k("10.0.51.0-24"), &v("198.51.100.13", 2, "02:00:00:00:00:05"), 5),
        entry(&k("10.0.52.0-24"), &v("127.0.0.1", 1, "02:00:00:00:00:06"), 6),
        entry(&k("10.0.53.0-24"), &v("192.0.2.10", 1, "02:00:00:00:00:07"), 7),
        entry(&k("10.0.54.0-24"), &v("198.51.100.14", 1, "01:00:5e:00:00:01"), 8),
        entry(&k("10.0.55.0-24"), &v("198.51.100.15", 1, "02:00:00:00:00:02"), 9),
        entry(&k("10.0.56.0-24"), "{junk", 10),
        entry(&k("10.0.57.0-24"), &v("169.254.1.1", 1, "02:00:00:00:00:08"), 11),
        entry(&k("10.0.58.0-24"), &v("0.0.0.0", 1, "02:00:00:00:00:09"), 12),
        entry(&k("10.0.59.0-24"), &v("224.0.0.1", 1, "02:00:00:00:00:0a"), 13),
        entry(&k("10.0.60.0-24"), &v("255.255.255.255", 1, "02:00:00:00:00:0b"), 14),
        entry(&k("10.0.61.0-24"), &v("198.51.100.16", 1, "00:00:00:00:00:00"), 15),
    ];
    let set = select_peers(&cfg, &host, &entries);
    assert_eq!(set.peers.len(), 1);
    assert_eq!(set.peers[0].subnet, "10.0.48.0/24".parse::<Ipv4Net>().unwrap());
    let reasons: Vec<_> = set.rejected.iter().map(|r| r.rejection.reason()).collect();
    assert_eq!(
        reasons,
        [
            "outside_network",
            "wrong_length",
            "vni_mismatch",
            "bad_public_ip",
            "own_public_ip",
            "bad_vtep_mac",
            "duplicate_vtep_mac",
            "bad_json",
            "bad_public_ip",
            "bad_public_ip",
            "bad_public_ip",
            "bad_public_ip",
            "bad_vtep_mac",
        ]
    );
    assert_eq!(
        set.rejected[6].rejection.to_string(),
        "VTEP MAC is already used by the lease for 10.0.48.0/24"
    );
}

fn arb_peers() -> impl Strategy<Value = Vec<Peer>> {
    proptest::collection::btree_map(1u8..60, (1u8..200, 1u8..250), 0..12).prop_map(|m| {
        let mut used = std::collections::BTreeSet::new();
        m.into_iter()
            .filter(|(_, (mm, _))| used.insert(*mm))
            .map(|(third, (mm, host))| peer(third, mm, [198, 51, 100, host]))
            .collect()
    })
}

fn arb_observed() -> impl Strategy<Value = Observed> {
    let neigh = (1u8..60, 1u8..200, any::<bool>()).prop_map(|(t, m, inside)| NeighEntry {
        ip: if inside {
            Ipv4Addr::new(10, 0, t, 0)
        } else {
            Ipv4Addr::new(192, 0, 2, t)
        },
        mac: mac(m),
    });
    let fdb = (1u8..200, 1u8..250).prop_map(|(m, h)| FdbEntry {
        mac: mac(m),
        dst: Ipv4Addr::new(198, 51, 100, h),
    });
    let route = (
        1u8..60,
        prop_oneof![Just(ROUTE_PROTO_WEFT), Just(3u8), Just(4u8)],
        prop_oneof![Just(DEV), Just(OTHER_DEV)],
        any::<bool>(),
    )
        .prop_map(|(t, protocol, oif, ours)| {
            let dst: Ipv4Net = format!("10.0.{t}.0/24").parse().unwrap();
            RouteEntry {
                dst,
                gateway: Ipv4Addr::new(10, 0, t, 0),
                oif,
                onlink: true,
                protocol,
                // weft's metric, or flannel's (and older weft's) 0.
                metric: if ours { route_metric(dst) } else { 0 },
            }
        });
    (
        proptest::collection::vec(neigh, 0..10),
        proptest::collection::vec(fdb, 0..10),
        proptest::collection::vec(route, 0..10),
    )
        .prop_map(|(mut neighs, mut fdbs, mut routes)| {
            // The kernel holds one neighbour per IP, one FDB entry per MAC here, one route per
            // (dst, oif) in these tests.
            neighs.sort_by_key(|n| n.ip);
            neighs.dedup_by_key(|n| n.ip);
            fdbs.sort_by_key(|f| f.mac);
            fdbs.dedup_by_key(|f| f.mac);
            routes.sort_by_key(|r| (r.dst, r.oif));
            routes.dedup_by_key(|r| (r.dst, r.oif));
            Observed {
                neighs: neighs.into_iter().collect(),
                fdbs: fdbs.into_iter().collect(),
                routes: routes.into_iter().collect(),
            }
        })
}

proptest! {
    /// One plan reaches the desired state, and a second plan has nothing left to do.
    #[test]
    fn plan_converges_in_one_step(peers in arb_peers(), obs in arb_observed()) {
        let after = apply(&obs, &plan(net(), Devices::vxlan_only(DEV), &peers, &obs));
        prop_assert!(plan(net(), Devices::vxlan_only(DEV), &peers, &after).is_empty());
        let want = desired(&peers);
        for n in &want.neighs { prop_assert!(after.neighs.contains(n)); }
        for f in &want.fdbs { prop_assert!(after.fdbs.contains(f)); }
        for r in &want.routes { prop_assert!(after.routes.contains(r)); }
    }

    /// Nothing weft does not own is removed or changed, and nothing stale that it owns survives.
    #[test]
    fn plan_touches_only_what_weft_owns(peers in arb_peers(), obs in arb_observed()) {
        let ops = plan(net(), Devices::vxlan_only(DEV), &peers, &obs);
        let after = apply(&obs, &ops);
        let want = desired(&peers);
        let wanted_dsts: Vec<_> = want.routes.iter().map(|r| r.dst).collect();
        for r in &obs.routes {
            let owned = r.oif == DEV && r.protocol == ROUTE_PROTO_WEFT;
            // A peer's subnet route is replaced wherever it points: the peer's subnet must go to the overlay.
            if !owned && !wanted_dsts.contains(&r.dst) {
                prop_assert!(after.routes.contains(r), "foreign route {r:?} touched");
            }
        }
        for n in &obs.neighs {
            if !net().contains(&n.ip) { prop_assert!(after.neighs.contains(n)); }
        }
        for r in &after.routes {
            if r.oif == DEV && r.protocol == ROUTE_PROTO_WEFT { prop_assert!(want.routes.contains(r), "stale {r:?}"); }
        }
        for f in &after.fdbs { prop_assert!(want.fdbs.contains(f), "stale {f:?}"); }
        for n in after.neighs.iter().filter(|n| net().contains(&n.ip)) { prop_assert!(want.neighs.contains(n), "stale {n:?}"); }
    }
}

#[test]
fn direct_routing_uses_a_plain_route_for_peers_on_the_same_link() {
    let link = DirectLink {
        oif: OTHER_DEV,
        net: "198.51.100.0/24".parse().unwrap(),
    };
    let devices = Devices {
        vxlan: DEV,
        direct: Some(link),
        public: Some(OTHER_DEV),
    };
    let near = peer(48, 1, [198, 51, 100, 10]);
    let far = peer(51, 2, [203, 0, 113, 10]);
    let ops = plan(net(), devices, &[near.clone(), far.clone()], &Observed::default());
    let near_route = RouteEntry {
        dst: near.subnet,
        gateway: near.public_ip,
        oif: OTHER_DEV,
        onlink: false,
        protocol: ROUTE_PROTO_WEFT,
        metric: route_metric(near.subnet),
    };
    assert!(ops.contains(&Op::EnsureRoute(near_route)));
    assert!(
        !ops.iter()
            .any(|o| matches!(o, Op::EnsureFdb(f) if f.mac == near.vtep_mac)),
        "{ops:?}"
    );
    assert!(ops
        .iter()
        .any(|o| matches!(o, Op::EnsureFdb(f) if f.mac == far.vtep_mac)));
    let after = apply(&Observed::default(), &ops);
    assert!(plan(net(), devices, &[near.clone(), far.clone()], &after).is_empty());

    // Turning DirectRouting off moves the near peer back onto VXLAN, leaving nothing behind.
    let off = Devices {
        direct: None,
        ..devices
    };
    let ops = plan(net(), off, &[near.clone(), far.clone()], &after);
    let back = apply(&after, &ops);
    assert!(!back.routes.contains(&near_route), "{:?}", back.routes);
    assert!(back.fdbs.iter().any(|f| f.mac == near.vtep_mac));
    // A gone peer's direct route is removed even after DirectRouting was turned off.
    let ops = plan(net(), off, std::slice::from_ref(&far), &after);
    assert!(ops.contains(&Op::RemoveRoute(near_route)), "{ops:?}");
}

/// What the kernel would announce after carrying out `op` on device DEV.
fn echo(op: &Op) -> Change {
    match *op {
        Op::RemoveNeigh(entry) | Op::EnsureNeigh(entry) => Change::Neigh {
            index: DEV,
            entry,
            permanent: true,
            deleted: matches!(op, Op::RemoveNeigh(_)),
        },
        Op::RemoveFdb(entry) | Op::EnsureFdb(entry) => Change::Fdb {
            index: DEV,
            entry,
            permanent: true,
            deleted: matches!(op, Op::RemoveFdb(_)),
        },
        Op::RemoveRoute(entry) | Op::EnsureRoute(entry) => Change::Route {
            table: MAIN,
            entry,
            deleted: matches!(op, Op::RemoveRoute(_)),
        },
    }
}

proptest! {
    /// The agent keeps its view by applying the operations it carried out; the kernel's echoes
    /// of those operations must then agree with the view (else every change would cost a full
    /// read of the kernel), and the view must plan to nothing.
    #[test]
    fn echoes_of_our_own_operations_agree_with_the_view(peers in arb_peers(), obs in arb_observed()) {
        let ops = plan(net(), Devices::vxlan_only(DEV), &peers, &obs);
        let view = apply(&obs, &ops);
        prop_assert!(plan(net(), Devices::vxlan_only(DEV), &peers, &view).is_empty());
        // An echo is checked against the view after the whole plan: only the last operation on
        // an object is expected to agree (an earlier one's echo costs one extra read, no harm).
        for op in &ops {
            let later_on_same = ops.iter().skip_while(|o| *o != op).skip(1).any(|o| same_key(o, op));
            if !later_on_same {
                prop_assert!(view.agrees_with(&echo(op), DEV, MAIN, &[DEV]), "{op} disagrees with the view");
            }
        }
    }

    /// Somebody else deleting an entry the view holds is noticed, whatever the entry.
    #[test]
    fn a_foreign_deletion_disagrees_with_the_view(peers in arb_peers()) {
        let view = apply(&Observed::default(), &plan(net(), Devices::vxlan_only(DEV), &peers, &Observed::default()));
        for n in &view.neighs {
            let c = Change::Neigh { index: DEV, entry: *n, permanent: true, deleted: true };
            prop_assert!(!view.agrees_with(&c, DEV, MAIN, &[DEV]));
        }
        for f in &view.fdbs {
            let c = Change::Fdb { index: DEV, entry: *f, permanent: true, deleted: true };
            prop_assert!(!view.agrees_with(&c, DEV, MAIN, &[DEV]));
        }
        for r in &view.routes {
            let c = Change::Route { table: MAIN, entry: *r, deleted: true };
            prop_assert!(!view.agrees_with(&c, DEV, MAIN, &[DEV]));
        }
    }
}

/// Two operations on the same kernel object (neighbour IP, FDB MAC, route destination).
fn same_key(a: &Op, b: &Op) -> bool {
    match (a, b) {
        (Op::RemoveNeigh(x) | Op::EnsureNeigh(x), Op::RemoveNeigh(y) | Op::EnsureNeigh(y)) => x.ip == y.ip,
        (Op::RemoveFdb(x) | Op::EnsureFdb(x), Op::RemoveFdb(y) | Op::EnsureFdb(y)) => x.mac == y.mac,
        (Op::RemoveRoute(x) | Op::EnsureRoute(x), Op::RemoveRoute(y) | Op::EnsureRoute(y)) => x.dst == y.dst,
        _ => false,
    }
}

#[test]
fn foreign_entries_the_view_does_not_hold_are_noticed_and_kernel_churn_is_not() {
    let p = peer(48, 1, [198, 51, 100, 10]);
    let view = apply(
        &Observed::default(),
        &plan(
            net(),
            Devices::vxlan_only(DEV),
            std::slice::from_ref(&p),
            &Observed::default(),
        ),
    );
    let ours = peer_entries(&p, Devices::vxlan_only(DEV));
    let n = ours.neigh.unwrap();
    // Our permanent entry replaced by a learnt one: noticed.
    let learnt = Change::Neigh {
        index: DEV,
        entry: n,
        permanent: false,
        deleted: false,
    };
    assert!(!view.agrees_with(&learnt, DEV, MAIN, &[DEV]));
    // The kernel resolving some other address on the device: not our business.
    let other = NeighEntry {
        ip: Ipv4Addr::new(10, 0, 99, 1),
        mac: mac(9),
    };
    let churn = Change::Neigh {
        index: DEV,
        entry: other,
        permanent: false,
        deleted: false,
    };
    assert!(view.agrees_with(&churn, DEV, MAIN, &[DEV]));
    // A route added by hand on our device: noticed; on another device: not ours.
    let hand = RouteEntry {
        dst: "10.0.99.0/24".parse().unwrap(),
        gateway: other.ip,
        oif: DEV,
        onlink: true,
        protocol: 4,
        metric: 0,
    };
    assert!(!view.agrees_with(
        &Change::Route {
            table: MAIN,
            entry: hand,
            deleted: false
        },
        DEV,
        MAIN,
        &[DEV]
    ));
    let elsewhere = RouteEntry { oif: OTHER_DEV, ..hand };
    assert!(view.agrees_with(
        &Change::Route {
            table: MAIN,
            entry: elsewhere,
            deleted: false
        },
        DEV,
        MAIN,
        &[DEV]
    ));
    // A route of ours changed to another gateway: noticed.
    let moved = RouteEntry {
        gateway: Ipv4Addr::new(10, 0, 48, 9),
        ..ours.route
    };
    assert!(!view.agrees_with(
        &Change::Route {
            table: MAIN,
            entry: moved,
            deleted: false
        },
        DEV,
        MAIN,
        &[DEV]
    ));
}

/// A lease from a small domain, so that MACs and public IPs collide now and then; `bad` makes
/// it malformed.
fn small_lease(third: u8, m: u8, ip: u8, rev: i64, bad: bool) -> ParsedLease {
    let subnet: Ipv4Net = format!("10.0.{third}.0/24").parse().unwrap();
    let value = if bad {
        "not json".to_string()
    } else {
        vxlan_lease_value(Ipv4Addr::new(198, 51, 100, ip), 1, mac(m))
    };
    ParsedLease::new(Entry {
        key: lease_key("/coreos.com/network", subnet),
        value,
        create_revision: rev,
        mod_revision: rev,
        expires_at: None,
    })
}

fn arb_small_lease() -> impl Strategy<Value = (u8, u8, u8, bool)> {
    (1u8..12, 1u8..10, 1u8..10, proptest::bool::weighted(0.1))
}

fn sorted_rejections(set: &PeerSet) -> Vec<Rejected> {
    let mut r = set.rejected.clone();
    r.sort_by(|a, b| a.key.cmp(&b.key));
    r
}

proptest! {
    /// Changing one lease at a time, the incremental selection (where it answers) equals a full
    /// selection, and the scoped plan against the converged view equals the full plan.
    #[test]
    fn incremental_selection_and_scoped_plan_match_the_full_ones(
        start in proptest::collection::vec(arb_small_lease(), 0..10),
        changes in proptest::collection::vec((1u8..12, proptest::option::of(arb_small_lease())), 1..12),
    ) {
        let cfg = NetworkConfig::parse(r#"{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan"}}"#).unwrap();
        let host = Host { public_ip: Ipv4Addr::new(198, 51, 100, 1), subnet: Some("10.0.200.0/24".parse().unwrap()) };
        let devices = Devices::vxlan_only(DEV);
        let mut table = LeaseTable::default();
        let mut rev = 1;
        for (t, m, ip, bad) in start {
            rev += 1;
            table.insert(small_lease(t, m, ip, rev, bad));
        }
        let mut set = select_parsed(&cfg, &host, table.values());
        let mut view = apply(&Observed::default(), &plan(net(), devices, &set.peers, &Observed::default()));
        for (slot, change) in changes {
            let key = lease_key("/coreos.com/network", format!("10.0.{slot}.0/24").parse().unwrap());
            let old = match change {
                Some((_, m, ip, bad)) => {
                    rev += 1;
                    table.insert(small_lease(slot, m, ip, rev, bad))
                }
                None => table.remove(&key),
            };
            let full = select_parsed(&cfg, &host, table.values());
            let mut inc = set.clone();
            match update_selection(&cfg, &host, &mut inc, &table, &key, old.as_ref()) {
                Some(delta) => {
                    prop_assert_eq!(&inc.peers, &full.peers);
                    prop_assert_eq!(sorted_rejections(&inc), sorted_rejections(&full));
                    let before: Vec<Peer> = delta.before.into_iter().collect();
                    let after: Vec<Peer> = delta.after.into_iter().collect();
                    let scoped = plan_scoped(net(), devices, &before, &after, &view);
                    let mut whole = plan(net(), devices, &full.peers, &view);
                    let mut s = scoped.clone();
                    s.sort();
                    whole.sort();
                    prop_assert_eq!(s, whole);
                    view = apply(&view, &scoped);
                }
                None => {
                    prop_assert_eq!(&inc, &set, "a refused update must leave the set alone");
                    view = apply(&view, &plan(net(), devices, &full.peers, &view));
                }
            }
            set = full;
        }
    }
}

#[test]
fn a_plain_join_or_leave_takes_the_incremental_path_and_a_collision_does_not() {
    let cfg = NetworkConfig::parse(r#"{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan"}}"#).unwrap();
    let host = Host {
        public_ip: Ipv4Addr::new(198, 51, 100, 1),
        subnet: Some("10.0.200.0/24".parse().unwrap()),
    };
    let mut table = LeaseTable::default();
    table.insert(small_lease(1, 1, 11, 1, false));
    let mut set = select_parsed(&cfg, &host, table.values());
    let joined = small_lease(2, 2, 12, 2, false);
    let key = joined.entry.key.clone();
    table.insert(joined);
    let delta = update_selection(&cfg, &host, &mut set, &table, &key, None).expect("a plain join is incremental");
    assert_eq!(delta.after.map(|p| p.subnet), Some("10.0.2.0/24".parse().unwrap()));
    assert_eq!(set.peers.len(), 2);
    // A newcomer with the first lease's MAC changes nothing for it, but needs the full rules.
    let clash = small_lease(3, 1, 13, 3, false);
    let key3 = clash.entry.key.clone();
    table.insert(clash);
    assert_eq!(update_selection(&cfg, &host, &mut set, &table, &key3, None), None);
    // A plain leave is incremental again.
    let gone = table.remove(&key);
    let delta = update_selection(&cfg, &host, &mut set, &table, &key, gone.as_ref()).expect("a plain leave");
    assert_eq!(delta.before.map(|p| p.subnet), Some("10.0.2.0/24".parse().unwrap()));
}
