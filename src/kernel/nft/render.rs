//! The pure half: a [`FirewallSpec`] rendered as one nftables JSON batch.
//!
//! The shapes here are exactly the ones `nft -j list table` prints back (payload matches,
//! prefixes, `"prio": 100` rather than `srcnat`), so the comparison in `compare` stays simple.

use super::{
    FirewallSpec, L3Spec, CHAIN_FORWARD, CHAIN_INPUT, CHAIN_POSTROUTING, COUNTER_ISOLATION_DROPPED,
    COUNTER_VXLAN_DROPPED, SET_PEERS,
};
use ipnet::Ipv4Net;
use nftables::batch::Batch;
use nftables::expr::{
    BinaryOperation, Expression, Fib, FibFlag, FibResult, Meta, MetaKey, NamedExpression, Payload, PayloadBase,
    PayloadField, PayloadRaw, Prefix, SetItem,
};
use nftables::schema::{Chain, Counter, NfListObject, Nftables, Rule, Set, SetType, SetTypeValue, Table};
use nftables::stmt::{self, Match, Operator, Statement, NAT};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use std::borrow::Cow;

/// `ip`, not `inet`: NAT chains in `inet` tables need Linux 5.2, and weft supports older kernels
/// (the checksum workaround exists for them). The overlay is IPv4-only, so nothing is lost.
pub(super) const FAMILY: NfFamily = NfFamily::IP;

/// kube-proxy's "masquerade me" mark; flannel leaves such packets to kube-proxy's own rules.
const KUBE_MARK_MASQ: u32 = 0x4000;

/// Standard priorities (`srcnat` = 100, `filter` = 0), the ones iptables-nft and firewalld use:
/// chains of different tables on one hook all run, ordered by priority, whatever their table.
const PRIO_SRCNAT: i32 = 100;
const PRIO_FILTER: i32 = 0;

/// The whole table as one atomic batch: `add table` + `delete table` (together an idempotent
/// "delete if it exists"; nft 1.0.6 has no `destroy`), then the table from scratch. `nft -f`
/// applies a batch as one transaction, so no packet ever sees a half-written table.
///
/// Deterministic: the same spec always gives the same batch (peers are a `BTreeSet`).
pub fn render(spec: &FirewallSpec) -> Nftables<'static> {
    let mut batch = Batch::new();
    batch.add(NfListObject::Table(table(&spec.table)));
    batch.delete(NfListObject::Table(table(&spec.table)));
    for obj in table_objects(spec) {
        batch.add(obj);
    }
    batch.to_nftables()
}

/// The table's contents in the order `nft list table` prints them: table, counters, sets,
/// chains, then each chain's rules.
pub(super) fn table_objects(spec: &FirewallSpec) -> Vec<NfListObject<'static>> {
    let t = spec.table.as_str();
    let counter = |name: &'static str| {
        NfListObject::Counter(Counter {
            family: FAMILY,
            table: t.to_string().into(),
            name: name.into(),
            handle: None,
            packets: None,
            bytes: None,
        })
    };
    // Always present, so the metric exists (as 0) even with the filter off.
    let mut objs = vec![NfListObject::Table(table(t)), counter(COUNTER_VXLAN_DROPPED)];
    let isolate = spec.isolated_device();
    if isolate.is_some() {
        objs.push(counter(COUNTER_ISOLATION_DROPPED));
    }
    objs.push(NfListObject::Set(Box::new(peers_set(spec))));
    let mut rules = Vec::new();
    if let Some(l3) = &spec.l3 {
        if l3.ip_masq {
            objs.push(base_chain(
                t,
                CHAIN_POSTROUTING,
                NfChainType::NAT,
                NfHook::Postrouting,
                PRIO_SRCNAT,
            ));
            rules.extend(masq_rules(l3).into_iter().map(|r| rule(t, CHAIN_POSTROUTING, r)));
        }
        // Only a named network needs the forward hook. flannel's FLANNEL-FWD accepts have no
        // equivalent here: an accept cannot override another table's drop, so they changed
        // nothing and cost every forwarded packet a pass through the hook.
        if let Some(dev) = isolate {
            objs.push(base_chain(
                t,
                CHAIN_FORWARD,
                NfChainType::Filter,
                NfHook::Forward,
                PRIO_FILTER,
            ));
            rules.extend(
                forward_isolation_rules(dev)
                    .into_iter()
                    .map(|r| rule(t, CHAIN_FORWARD, r)),
            );
        }
    }
    if spec.filter_vxlan || isolate.is_some() {
        objs.push(base_chain(
            t,
            CHAIN_INPUT,
            NfChainType::Filter,
            NfHook::Input,
            PRIO_FILTER,
        ));
    }
    if spec.filter_vxlan {
        rules.push(rule(t, CHAIN_INPUT, vxlan_filter_rule(spec)));
    }
    if let (Some(dev), Some(l3)) = (isolate, &spec.l3) {
        rules.extend(
            input_isolation_rules(dev, l3.own_subnet)
                .into_iter()
                .map(|r| rule(t, CHAIN_INPUT, r)),
        );
    }
    objs.extend(rules);
    objs
}

/// A named network's device is a boundary: what arrives on it may only be forwarded back out
/// of it (to another host of the network), and nothing is forwarded into it from elsewhere.
fn forward_isolation_rules(dev: &str) -> Vec<Vec<Statement<'static>>> {
    vec![
        vec![
            iifname(Operator::EQ, dev),
            oifname(Operator::NEQ, dev),
            isolation_drop(),
            drop(),
        ],
        vec![
            oifname(Operator::EQ, dev),
            iifname(Operator::NEQ, dev),
            isolation_drop(),
            drop(),
        ],
    ]
}

/// Delivered to this host: through the device only to an address of the device (not to the
/// host's addresses in other networks, which the kernel would otherwise accept on any
/// interface), and to the network's own subnet only through the device (or from the host
/// itself, over `lo`).
fn input_isolation_rules(dev: &str, own_subnet: Ipv4Net) -> Vec<Vec<Statement<'static>>> {
    let not_local = Statement::Match(Match {
        left: Expression::Named(NamedExpression::Fib(Fib {
            result: FibResult::Type,
            flags: [FibFlag::Daddr, FibFlag::Iif].into_iter().collect(),
        })),
        right: Expression::String("local".into()),
        op: Operator::NEQ,
    });
    vec![
        vec![iifname(Operator::EQ, dev), not_local, isolation_drop(), drop()],
        vec![
            iifname(Operator::NEQ, dev),
            iifname(Operator::NEQ, "lo"),
            daddr(Operator::EQ, own_subnet),
            isolation_drop(),
            drop(),
        ],
    ]
}

fn meta_match(key: MetaKey, op: Operator, value: &str) -> Statement<'static> {
    Statement::Match(Match {
        left: Expression::Named(NamedExpression::Meta(Meta { key })),
        right: Expression::String(value.to_string().into()),
        op,
    })
}

fn iifname(op: Operator, dev: &str) -> Statement<'static> {
    meta_match(MetaKey::Iifname, op, dev)
}

fn oifname(op: Operator, dev: &str) -> Statement<'static> {
    meta_match(MetaKey::Oifname, op, dev)
}

fn isolation_drop() -> Statement<'static> {
    Statement::Counter(stmt::Counter::Named(COUNTER_ISOLATION_DROPPED.into()))
}

fn drop() -> Statement<'static> {
    Statement::Drop(None)
}

/// flannel's FLANNEL-POSTRTG, rule for rule (see the v0.20.2 capture).
fn masq_rules(l3: &L3Spec) -> Vec<Vec<Statement<'static>>> {
    let net = l3.network;
    let multicast: Ipv4Net = "224.0.0.0/4".parse().expect("constant");
    vec![
        // Marked by kube-proxy: its own rules masquerade these; don't do it twice.
        vec![mark_match(KUBE_MARK_MASQ), ret()],
        // Inside the overlay: never.
        vec![saddr(Operator::EQ, net), daddr(Operator::EQ, net), ret()],
        // Overlay to the outside world (multicast excepted).
        vec![saddr(Operator::EQ, net), daddr(Operator::NEQ, multicast), masquerade()],
        // From outside to our own pods: keep the client's address.
        vec![saddr(Operator::NEQ, net), daddr(Operator::EQ, l3.own_subnet), ret()],
        // From outside (the host itself, say) to other hosts' pods: answers must come back here.
        vec![saddr(Operator::NEQ, net), daddr(Operator::EQ, net), masquerade()],
    ]
}

/// `udp dport PORT [@th,96,24 VNI | @th,96,24 != EXEMPT …] ip saddr != @peers counter name
/// vxlan_dropped drop`
fn vxlan_filter_rule(spec: &FirewallSpec) -> Vec<Statement<'static>> {
    let mut v = vec![Statement::Match(Match {
        left: payload("udp", "dport"),
        right: Expression::Number(u32::from(spec.vxlan_port)),
        op: Operator::EQ,
    })];
    // The VXLAN header follows the 8-byte UDP header: flags (8 bits), reserved (24), VNI (24).
    let vni_match = |op: Operator, right: Expression<'static>| {
        Statement::Match(Match {
            left: Expression::Named(NamedExpression::Payload(Payload::PayloadRaw(PayloadRaw {
                base: PayloadBase::TH,
                offset: 96,
                len: 24,
            }))),
            right,
            op,
        })
    };
    match spec.vni {
        Some(vni) => v.push(vni_match(Operator::EQ, Expression::Number(vni))),
        None if spec.exempt_vnis.is_empty() => {}
        // One anonymous set, not one comparison per VNI: a rule holds at most 128 expressions,
        // and a host may serve more named networks than that.
        None => v.push(vni_match(
            Operator::NEQ,
            Expression::Named(NamedExpression::Set(
                spec.exempt_vnis
                    .iter()
                    .map(|vni| SetItem::Element(Expression::Number(*vni)))
                    .collect(),
            )),
        )),
    }
    v.extend([
        Statement::Match(Match {
            left: payload("ip", "saddr"),
            right: Expression::String(format!("@{SET_PEERS}").into()),
            op: Operator::NEQ,
        }),
        Statement::Counter(stmt::Counter::Named(COUNTER_VXLAN_DROPPED.into())),
        Statement::Drop(None),
    ]);
    v
}

fn table(name: &str) -> Table<'static> {
    Table {
        family: FAMILY,
        name: name.to_string().into(),
        handle: None,
    }
}

fn peers_set(spec: &FirewallSpec) -> Set<'static> {
    let elems: Vec<Expression<'static>> = spec
        .peers
        .iter()
        .map(|ip| Expression::String(ip.to_string().into()))
        .collect();
    Set {
        family: FAMILY,
        table: spec.table.clone().into(),
        name: SET_PEERS.into(),
        handle: None,
        set_type: SetTypeValue::Single(SetType::Ipv4Addr),
        policy: None,
        flags: None,
        // nft omits `elem` for an empty set; so do we.
        elem: (!elems.is_empty()).then(|| Cow::Owned(elems)),
        timeout: None,
        gc_interval: None,
        size: None,
        comment: None,
    }
}

fn base_chain(table: &str, name: &'static str, kind: NfChainType, hook: NfHook, prio: i32) -> NfListObject<'static> {
    NfListObject::Chain(Chain {
        family: FAMILY,
        table: table.to_string().into(),
        name: name.into(),
        newname: None,
        handle: None,
        _type: Some(kind),
        hook: Some(hook),
        prio: Some(prio),
        dev: None,
        policy: Some(NfChainPolicy::Accept),
    })
}

fn rule(table: &str, chain: &'static str, expr: Vec<Statement<'static>>) -> NfListObject<'static> {
    NfListObject::Rule(Rule {
        family: FAMILY,
        table: table.to_string().into(),
        chain: chain.into(),
        expr: expr.into(),
        handle: None,
        index: None,
        comment: None,
    })
}

fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(PayloadField {
        protocol: protocol.into(),
        field: field.into(),
    })))
}

fn prefix(net: Ipv4Net) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(Expression::String(net.network().to_string().into())),
        len: u32::from(net.prefix_len()),
    }))
}

fn saddr(op: Operator, net: Ipv4Net) -> Statement<'static> {
    Statement::Match(Match {
        left: payload("ip", "saddr"),
        right: prefix(net),
        op,
    })
}

fn daddr(op: Operator, net: Ipv4Net) -> Statement<'static> {
    Statement::Match(Match {
        left: payload("ip", "daddr"),
        right: prefix(net),
        op,
    })
}

/// `meta mark & MARK == MARK`
fn mark_match(mark: u32) -> Statement<'static> {
    Statement::Match(Match {
        left: Expression::BinaryOperation(Box::new(BinaryOperation::AND(
            Expression::Named(NamedExpression::Meta(Meta { key: MetaKey::Mark })),
            Expression::Number(mark),
        ))),
        right: Expression::Number(mark),
        op: Operator::EQ,
    })
}

/// `masquerade fully-random`, as flannel's `--random-fully`: no source-port collisions between
/// pods that picked the same port.
fn masquerade() -> Statement<'static> {
    Statement::Masquerade(Some(NAT {
        addr: None,
        family: None,
        port: None,
        flags: Some([stmt::NATFlag::FullyRandom].into_iter().collect()),
    }))
}

fn ret() -> Statement<'static> {
    Statement::Return(None)
}

#[cfg(test)]
mod unit {
    use super::*;
    use std::collections::BTreeSet;

    pub(crate) fn spec() -> FirewallSpec {
        FirewallSpec {
            table: "weft".into(),
            vxlan_port: 8472,
            peers: ["198.51.100.10", "192.0.2.10"]
                .iter()
                .map(|s| s.parse().unwrap())
                .collect(),
            filter_vxlan: true,
            vni: None,
            exempt_vnis: BTreeSet::new(),
            l3: Some(L3Spec {
                network: "10.0.0.0/16".parse().unwrap(),
                own_subnet: "10.0.37.0/24".parse().unwrap(),
                ip_masq: true,
                isolate: None,
            }),
        }
    }

    fn json(spec: &FirewallSpec) -> String {
        serde_json::to_string(&render(spec)).unwrap()
    }

    #[test]
    fn deterministic() {
        let a = spec();
        let mut b = spec();
        // Same peers inserted in another order.
        b.peers = a.peers.iter().rev().copied().collect::<BTreeSet<_>>();
        assert_eq!(json(&a), json(&b));
        assert_eq!(render(&a), render(&a));
    }

    #[test]
    fn batch_starts_with_idempotent_delete() {
        let s = json(&spec());
        let want = r#"{"nftables":[{"add":{"table":{"family":"ip","name":"weft"}}},{"delete":{"table":{"family":"ip","name":"weft"}}},{"add":{"table":{"family":"ip","name":"weft"}}},"#;
        assert!(s.starts_with(want), "{s}");
    }

    #[test]
    fn flannel_masquerade_rules() {
        let s = json(&spec());
        // The five FLANNEL-POSTRTG rules, in flannel's order.
        let order = [
            r#"{"match":{"left":{"&":[{"meta":{"key":"mark"}},16384]},"right":16384,"op":"=="}},{"return":null}"#,
            r#""right":{"prefix":{"addr":"10.0.0.0","len":16}},"op":"=="}},{"return":null}"#,
            r#""right":{"prefix":{"addr":"224.0.0.0","len":4}},"op":"!="}},{"masquerade":{"flags":["fully-random"]}}"#,
            r#""right":{"prefix":{"addr":"10.0.37.0","len":24}},"op":"=="}},{"return":null}"#,
            r#""right":{"prefix":{"addr":"10.0.0.0","len":16}},"op":"=="}},{"masquerade":{"flags":["fully-random"]}}"#,
        ];
        let mut at = 0;
        for part in order {
            let i = s[at..]
                .find(part)
                .unwrap_or_else(|| panic!("{part} missing after {at} in {s}"));
            at += i + part.len();
        }
        assert!(
            s.contains(r#""type":"nat","hook":"postrouting","prio":100,"policy":"accept""#),
            "{s}"
        );
    }

    #[test]
    fn host_bits_are_dropped() {
        // nft lists prefixes without host bits; rendering them would look like a hand edit.
        let s = json(&spec().with_l3(|l3| {
            l3.network = "10.0.0.5/16".parse().unwrap();
            l3.own_subnet = "10.0.37.1/24".parse().unwrap();
        }));
        assert!(!s.contains("10.0.0.5") && !s.contains("10.0.37.1"), "{s}");
        assert!(s.contains(r#"{"prefix":{"addr":"10.0.37.0","len":24}}"#), "{s}");
    }

    #[test]
    fn without_masq_no_nat_chain() {
        let s = json(&spec().with_l3(|l3| l3.ip_masq = false));
        assert!(!s.contains("postrouting") && !s.contains("masquerade"), "{s}");
    }

    #[test]
    fn the_default_network_leaves_forwarding_alone() {
        // No forward chain: its accepts could not override a drop elsewhere, and the hook
        // costs every forwarded packet.
        for ip_masq in [true, false] {
            let s = json(&spec().with_l3(|l3| l3.ip_masq = ip_masq));
            assert!(!s.contains(r#""hook":"forward""#), "{s}");
            assert!(!s.contains(r#"{"accept":null}"#), "{s}");
        }
    }

    #[test]
    fn vxlan_filter_and_peers() {
        let s = json(&spec());
        assert!(s.contains(r#""elem":["192.0.2.10","198.51.100.10"]"#), "{s}");
        assert!(s.contains(r#""right":8472,"op":"=="}},{"match":{"left":{"payload":{"protocol":"ip","field":"saddr"}},"right":"@peers","op":"!="}},{"counter":"vxlan_dropped"},{"drop":null}"#), "{s}");
        let off = json(&FirewallSpec {
            filter_vxlan: false,
            peers: BTreeSet::new(),
            ..spec()
        });
        assert!(!off.contains(r#""hook":"input""#) && !off.contains("@peers"), "{off}");
        // Set and counter stay, empty set without `elem` (as nft lists it).
        assert!(
            off.contains(r#"{"set":{"family":"ip","table":"weft","name":"peers","type":"ipv4_addr"}}"#),
            "{off}"
        );
        assert!(
            off.contains(r#""counter":{"family":"ip","table":"weft","name":"vxlan_dropped""#),
            "{off}"
        );
    }

    #[test]
    fn a_named_network_has_its_table_polices_its_vni_and_isolates_its_device() {
        let s = json(&FirewallSpec {
            table: "weft-a".into(),
            vni: Some(100),
            ..spec().with_l3(|l3| {
                l3.isolate = Some("weft.100".into());
                l3.ip_masq = false;
            })
        });
        assert!(
            s.contains(r#"{"add":{"table":{"family":"ip","name":"weft-a"}}}"#),
            "{s}"
        );
        assert!(!s.contains(r#""table":"weft","#), "{s}");
        assert!(
            s.contains(r#"{"payload":{"base":"th","offset":96,"len":24}},"right":100,"op":"=="}}"#),
            "{s}"
        );
        assert!(s.contains(r#""name":"isolation_dropped""#), "{s}");
        // Forward: the two boundary drops, and nothing else.
        assert!(
            s.contains(r#""type":"filter","hook":"forward","prio":0,"policy":"accept""#),
            "{s}"
        );
        assert!(
            s.contains(r#""chain":"forward","expr":[{"match":{"left":{"meta":{"key":"iifname"}},"right":"weft.100","op":"=="}},{"match":{"left":{"meta":{"key":"oifname"}},"right":"weft.100","op":"!="}},{"counter":"isolation_dropped"},{"drop":null}]"#),
            "{s}"
        );
        assert!(
            s.contains(r#""chain":"forward","expr":[{"match":{"left":{"meta":{"key":"oifname"}},"right":"weft.100","op":"=="}},{"match":{"left":{"meta":{"key":"iifname"}},"right":"weft.100","op":"!="}},{"counter":"isolation_dropped"},{"drop":null}]"#),
            "{s}"
        );
        assert!(!s.contains(r#"{"accept":null}"#), "{s}");
        assert!(
            s.contains(r#""right":"local","op":"!="}},{"counter":"isolation_dropped"},{"drop":null}"#),
            "{s}"
        );
        assert!(s.contains(r#""right":"lo","op":"!="}}"#), "{s}");
        // The default network's table has none of it, and leaves the named networks' VNIs to
        // their tables.
        let d = json(&spec());
        assert!(!d.contains("isolation") && !d.contains("\"th\""), "{d}");
        let d = json(&FirewallSpec {
            exempt_vnis: [100, 200].into(),
            ..spec()
        });
        assert!(
            d.contains(r#""right":8472,"op":"=="}},{"match":{"left":{"payload":{"base":"th","offset":96,"len":24}},"right":{"set":[100,200]},"op":"!="}},{"match":{"left":{"payload":{"protocol":"ip","field":"saddr"}}"#),
            "{d}"
        );
    }

    fn l2(filter: bool) -> FirewallSpec {
        let peers = ["198.51.100.20".parse().unwrap(), "203.0.113.30".parse().unwrap()].into();
        FirewallSpec::l2("weft-l2net", 300, 8472, peers, filter)
    }

    #[test]
    fn an_l2_network_table_only_polices_its_vni() {
        let s = json(&l2(true));
        assert!(
            s.contains(r#"{"add":{"table":{"family":"ip","name":"weft-l2net"}}}"#),
            "{s}"
        );
        assert!(s.contains(r#""elem":["198.51.100.20","203.0.113.30"]"#), "{s}");
        // One rule: udp dport 8472 @th,96,24 300 ip saddr != @peers counter drop.
        assert!(
            s.contains(r#""chain":"input","expr":[{"match":{"left":{"payload":{"protocol":"udp","field":"dport"}},"right":8472,"op":"=="}},{"match":{"left":{"payload":{"base":"th","offset":96,"len":24}},"right":300,"op":"=="}},{"match":{"left":{"payload":{"protocol":"ip","field":"saddr"}},"right":"@peers","op":"!="}},{"counter":"vxlan_dropped"},{"drop":null}]"#),
            "{s}"
        );
        assert_eq!(s.matches(r#"{"rule":"#).count(), 1, "{s}");
        assert!(
            s.contains(r#""type":"filter","hook":"input","prio":0,"policy":"accept""#),
            "{s}"
        );
        // Bridged traffic is never routed here: no forward, NAT or isolation.
        for absent in ["forward", "postrouting", "masquerade", "isolation", "prefix"] {
            assert!(!s.contains(absent), "{absent} in {s}");
        }
    }

    #[test]
    fn an_l2_network_table_without_the_filter_keeps_set_and_counter() {
        let s = json(&l2(false));
        assert!(!s.contains(r#""chain""#) && !s.contains("@peers"), "{s}");
        assert!(
            s.contains(r#"{"set":{"family":"ip","table":"weft-l2net","name":"peers","type":"ipv4_addr","elem":["198.51.100.20","203.0.113.30"]}}"#),
            "{s}"
        );
        assert!(s.contains(r#""name":"vxlan_dropped""#), "{s}");
        // With no peer at all, every datagram of the VNI is dropped (the set is just empty).
        let lonely = json(&FirewallSpec::l2("weft-l2net", 300, 8472, BTreeSet::new(), true));
        assert!(lonely.contains(r#""right":"@peers","op":"!="}}"#), "{lonely}");
        assert!(!lonely.contains("elem"), "{lonely}");
    }
}
