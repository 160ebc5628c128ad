//! Addresses of an L2 network's containers: one flat CIDR across hosts, each address claimed
//! once in the store for the whole cluster.
//!
//! An address is claimed at `<network prefix>/ips/<IP>` with the store's create-if-absent (etcd:
//! a transaction on `create_revision == 0`), so of two hosts that pick one address at the same
//! time exactly one gets it and the other takes the next free one (or, for an address asked for
//! by name, is refused). The claim's value names who holds it:
//!
//! ```json
//! {"Container":"4f3c…","IfName":"eth0","Host":"192.0.2.10","MAC":"02:5a:…"}
//! ```
//!
//! `(Host, Container, IfName)` is the holder: a repeated ADD finds its own claim again, and DEL
//! releases exactly it. The endpoint itself (`…/endpoints/<MAC>`, see [`crate::endpoint`]) is
//! registered after the claim and removed before it, so an address is never free while an
//! endpoint still uses it.
//!
//! The agent does this for `weft-cni` (see [`protocol`], served on a root-only Unix socket next
//! to the network's file [`env`]); `weft lab endpoint` does it directly. What is here is pure;
//! the store side is [`store`].

pub mod env;
pub mod protocol;
#[cfg(feature = "runtime")]
pub mod store;

use crate::mac::Mac;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

/// Longer claim values are treated as foreign (their address stays taken).
pub const MAX_CLAIM_VALUE_BYTES: usize = 1024;

/// Who holds an address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    #[serde(rename = "Container")]
    pub container: String,
    #[serde(rename = "IfName")]
    pub ifname: String,
    /// Public IP of the host the container is on.
    #[serde(rename = "Host")]
    pub host: Ipv4Addr,
    #[serde(rename = "MAC")]
    pub mac: Mac,
}

impl Claim {
    pub fn to_json(&self) -> String {
        // Plain fields: serialisation cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses a stored claim; `None` for anything else (whose address then stays taken).
    pub fn parse(value: &str) -> Option<Claim> {
        if value.len() > MAX_CLAIM_VALUE_BYTES {
            return None;
        }
        serde_json::from_str(value).ok()
    }

    /// Whether this claim is the one of `container`/`ifname` on `host`.
    pub fn held_by(&self, host: Ipv4Addr, container: &str, ifname: &str) -> bool {
        self.host == host && self.container == container && self.ifname == ifname
    }
}

/// `<network prefix>/ips/`: where a network's address claims live.
pub fn ips_prefix(net_prefix: &str) -> String {
    format!("{}/ips/", net_prefix.trim_end_matches('/'))
}

/// The claim key of `ip`.
pub fn claim_key(net_prefix: &str, ip: Ipv4Addr) -> String {
    format!("{}{ip}", ips_prefix(net_prefix))
}

/// The address a claim key names (`None` for a key that is not one).
pub fn parse_claim_key(net_prefix: &str, key: &str) -> Option<Ipv4Addr> {
    key.strip_prefix(&ips_prefix(net_prefix))?.parse().ok()
}

/// Whether `ip` is a host address of `network` (neither its network nor its broadcast address).
pub fn is_host_address(network: Ipv4Net, ip: Ipv4Addr) -> bool {
    network.contains(&ip) && (network.prefix_len() >= 31 || (ip != network.network() && ip != network.broadcast()))
}

/// The free host addresses of `network`, lowest first: what an allocation tries in turn.
/// Lowest-first keeps addresses predictable (`.1`, `.2`, …); two hosts racing for one address
/// are sorted out by the store's create-if-absent, the loser moving on to the next.
pub fn free_addresses(network: Ipv4Net, taken: &BTreeSet<Ipv4Addr>) -> impl Iterator<Item = Ipv4Addr> + '_ {
    network.hosts().filter(move |ip| !taken.contains(ip))
}

/// A MAC for a container that has none of its own: locally administered, unicast, and the same
/// for the same network, container and interface (FNV-1a over the three), so a repeated ADD asks
/// for the same endpoint.
pub fn container_mac(network: &str, container: &str, ifname: &str) -> Mac {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in network
        .bytes()
        .chain([0])
        .chain(container.bytes())
        .chain([0])
        .chain(ifname.bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let b = h.to_be_bytes();
    // 0x02: locally administered, unicast.
    Mac([(b[0] & 0xfc) | 0x02, b[1], b[2], b[3], b[4], b[5]])
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "/coreos.com/network/networks/l2";

    #[test]
    fn keys() {
        let ip = Ipv4Addr::new(10, 70, 0, 5);
        assert_eq!(claim_key(P, ip), "/coreos.com/network/networks/l2/ips/10.70.0.5");
        assert_eq!(parse_claim_key(P, &claim_key(P, ip)), Some(ip));
        assert_eq!(parse_claim_key(P, "/coreos.com/network/networks/l2/ips/x"), None);
        assert_eq!(parse_claim_key(P, "/elsewhere/ips/10.70.0.5"), None);
    }

    #[test]
    fn claims_round_trip_and_junk_is_none() {
        let c = Claim {
            container: "abc".into(),
            ifname: "eth0".into(),
            host: Ipv4Addr::new(192, 0, 2, 10),
            mac: "02:00:00:00:00:01".parse().unwrap(),
        };
        assert_eq!(
            c.to_json(),
            r#"{"Container":"abc","IfName":"eth0","Host":"192.0.2.10","MAC":"02:00:00:00:00:01"}"#
        );
        assert_eq!(Claim::parse(&c.to_json()), Some(c.clone()));
        assert!(c.held_by(Ipv4Addr::new(192, 0, 2, 10), "abc", "eth0"));
        assert!(!c.held_by(Ipv4Addr::new(192, 0, 2, 11), "abc", "eth0"));
        assert!(!c.held_by(Ipv4Addr::new(192, 0, 2, 10), "abc", "eth1"));
        for junk in ["", "{}", "null", &"x".repeat(2000)] {
            assert_eq!(Claim::parse(junk), None, "{junk:.20}");
        }
    }

    #[test]
    fn free_addresses_skip_taken_network_and_broadcast() {
        let net: Ipv4Net = "10.70.0.0/29".parse().unwrap();
        let taken: BTreeSet<Ipv4Addr> = [Ipv4Addr::new(10, 70, 0, 1), Ipv4Addr::new(10, 70, 0, 3)].into();
        let free: Vec<Ipv4Addr> = free_addresses(net, &taken).collect();
        assert_eq!(free, [2, 4, 5, 6].map(|d| Ipv4Addr::new(10, 70, 0, d)));
        assert!(is_host_address(net, Ipv4Addr::new(10, 70, 0, 6)));
        assert!(!is_host_address(net, Ipv4Addr::new(10, 70, 0, 7)));
        assert!(!is_host_address(net, Ipv4Addr::new(10, 70, 0, 0)));
        assert!(!is_host_address(net, Ipv4Addr::new(10, 71, 0, 1)));
    }

    #[test]
    fn container_macs_are_stable_unicast_and_distinct() {
        let a = container_mac("l2", "c1", "eth0");
        assert_eq!(a, container_mac("l2", "c1", "eth0"));
        assert!(a.is_valid_unicast() && a.0[0] & 0x02 == 0x02);
        let others = [
            container_mac("l2", "c2", "eth0"),
            container_mac("l2", "c1", "eth1"),
            container_mac("l3", "c1", "eth0"),
            // The separator keeps ("ab","c") and ("a","bc") apart.
            container_mac("l2", "c", "1eth0"),
        ];
        assert!(others.iter().all(|m| *m != a && m.is_valid_unicast()));
        let set: BTreeSet<Mac> = (0..1000)
            .map(|i| container_mac("l2", &format!("c{i}"), "eth0"))
            .collect();
        assert_eq!(set.len(), 1000);
    }
}
