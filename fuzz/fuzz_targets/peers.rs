//! The planner's peer selection over a store listing of arbitrary entries. Most entries are
//! well-formed leases drawn from small pools of subnets, public IPs and MACs, so that the
//! interesting cases (our own subnet, our own IP, a MAC claimed twice, the wrong VNI or length)
//! come up often; the rest are arbitrary keys and values. Every entry must end up as exactly
//! one of: a peer, a rejection, or our own lease.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use std::collections::HashSet;
use std::net::Ipv4Addr;
use weft::config::NetworkConfig;
use weft::lease::{lease_key, vxlan_lease_value, Lease};
use weft::mac::Mac;
use weft::planner::peers::{select_peers, Host};
use weft::store::Entry;

/// The network every listing is checked against: 10.0.0.0/16 of /24s, VNI 1 (flannel's defaults).
const CONFIG: &str = r#"{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan"}}"#;

#[derive(Debug, Arbitrary)]
enum Item {
    Lease {
        /// Third octet of 10.0.x.0; a few values fall outside the network via `outside`.
        subnet: u8,
        outside: bool,
        /// Prefix length: 24 most of the time (see below).
        len: Option<u8>,
        /// Index into a small pool, so the same IP and MAC recur across entries.
        public_ip: u8,
        mac: u8,
        vni: Option<u32>,
        create_revision: i16,
    },
    Raw {
        key: String,
        value: String,
        create_revision: i64,
    },
}

#[derive(Debug, Arbitrary)]
struct Input {
    our_subnet: Option<u8>,
    our_ip: u8,
    items: Vec<Item>,
}

fn public_ip(i: u8) -> Ipv4Addr {
    // Mostly ordinary addresses; every sixteenth is one a peer may not have.
    match i % 16 {
        0 => Ipv4Addr::UNSPECIFIED,
        1 => Ipv4Addr::LOCALHOST,
        2 => Ipv4Addr::new(224, 0, 0, 1),
        3 => Ipv4Addr::BROADCAST,
        4 => Ipv4Addr::new(169, 254, 1, 1),
        n => Ipv4Addr::new(192, 0, 2, n),
    }
}

fn mac(i: u8) -> Mac {
    // Index 0 is all zeros, odd first octets are multicast: both must be refused.
    Mac([(i % 8) & !1 | u8::from(i % 13 == 0), 0x11, 0x22, 0x33, 0x44, i % 8])
}

fuzz_target!(|input: Input| {
    let cfg = NetworkConfig::parse(CONFIG).expect("the fixed config is valid");
    let host = Host {
        public_ip: public_ip(input.our_ip),
        subnet: input.our_subnet.map(|s| format!("10.0.{s}.0/24").parse().unwrap()),
    };
    let mut entries: Vec<Entry> = input
        .items
        .iter()
        .map(|item| match item {
            Item::Lease {
                subnet,
                outside,
                len,
                public_ip: ip,
                mac: m,
                vni,
                create_revision,
            } => {
                let first = if *outside { 11 } else { 10 };
                let len = len.map_or(24, |l| 16 + l % 17);
                let net = ipnet::Ipv4Net::new(Ipv4Addr::new(first, 0, *subnet, 0), len)
                    .unwrap()
                    .trunc();
                Entry {
                    key: lease_key("/coreos.com/network", net),
                    value: vxlan_lease_value(public_ip(*ip), vni.unwrap_or(1), mac(*m)),
                    create_revision: i64::from(*create_revision),
                    mod_revision: 1,
                    expires_at: None,
                }
            }
            Item::Raw {
                key,
                value,
                create_revision,
            } => Entry {
                key: key.clone(),
                value: value.clone(),
                create_revision: *create_revision,
                mod_revision: 1,
                expires_at: None,
            },
        })
        .collect();
    // A store listing holds each key once.
    let mut keys = HashSet::new();
    entries.retain(|e| keys.insert(e.key.clone()));

    let set = select_peers(&cfg, &host, &entries);

    let ours = entries
        .iter()
        .filter(|e| Lease::from_entry(e).is_ok_and(|l| Some(l.subnet) == host.subnet))
        .count();
    assert_eq!(
        set.peers.len() + set.rejected.len() + ours,
        entries.len(),
        "an entry went missing"
    );

    let mut macs = HashSet::new();
    let mut subnets = HashSet::new();
    for p in &set.peers {
        assert!(cfg.network.contains(&p.subnet), "{p:?}");
        assert_eq!(p.subnet.prefix_len(), cfg.subnet_len, "{p:?}");
        assert_ne!(Some(p.subnet), host.subnet, "our own lease is not a peer");
        assert_ne!(p.public_ip, host.public_ip, "{p:?}");
        assert!(p.vtep_mac.is_valid_unicast(), "{p:?}");
        // Distinct keys must never give two peers the same subnet (two routes for one subnet).
        assert!(subnets.insert(p.subnet), "two peers share a subnet: {:?}", set.peers);
        assert!(macs.insert(p.vtep_mac), "two peers share a VTEP MAC: {:?}", set.peers);
    }
    assert!(
        set.peers.windows(2).all(|w| w[0].subnet <= w[1].subnet),
        "peers are sorted"
    );
    for r in &set.rejected {
        let _ = (r.rejection.to_string(), r.rejection.reason());
    }
});
