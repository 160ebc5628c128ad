//! The lab's addressing plan: which namespace, rack subnet, underlay address and router port each
//! host gets. Pure functions only, so the plan is unit-tested without root.
//!
//! Every rack is one underlay subnet behind the router. By default each host has a rack of its
//! own (`slot` 0); with a rack size N > 1 hosts fill racks N at a time (slots 0, 1, … at .10,
//! .11, …) and the router joins each rack through a bridge `NAME-rR`, so hosts of one rack share
//! a link (what DirectRouting needs).
//!
//! The last rack subnet (198.19.255.0/24) is never a host rack: it is the `NAME-outside`
//! namespace's, a stand-in for the world beyond the cluster that has no route to the overlay.

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// Racks 1–3 use the three documentation /24s; racks 4 … 515 use the benchmarking range
/// 198.18.0.0/15, one /24 each.
pub const MAX_RACKS: u32 = 3 + 512;

/// Most hosts per rack: host addresses .10 … .250.
pub const MAX_SLOTS: u32 = 241;

/// The rack whose subnet the `NAME-outside` namespace uses; no host is ever placed in it.
pub const OUTSIDE_RACK: u32 = MAX_RACKS;

/// Racks available to hosts: all but [`OUTSIDE_RACK`].
pub const MAX_HOST_RACKS: u32 = MAX_RACKS - 1;

/// The rack subnet for rack `rack` (1-based), `None` past [`MAX_RACKS`].
///
/// rack 1 → 192.0.2.0/24, 2 → 198.51.100.0/24, 3 → 203.0.113.0/24, 4 → 198.18.0.0/24, …,
/// 259 → 198.18.255.0/24, 260 → 198.19.0.0/24, … 515 → 198.19.255.0/24. Only ranges reserved
/// for documentation and benchmarking, so nothing the lab configures can collide with a real network.
pub fn rack_subnet(rack: u32) -> Option<Ipv4Net> {
    let addr = match rack {
        1 => Ipv4Addr::new(192, 0, 2, 0),
        2 => Ipv4Addr::new(198, 51, 100, 0),
        3 => Ipv4Addr::new(203, 0, 113, 0),
        4..=259 => Ipv4Addr::new(198, 18, (rack - 4) as u8, 0),
        260..=515 => Ipv4Addr::new(198, 19, (rack - 260) as u8, 0),
        _ => return None,
    };
    Ipv4Net::new(addr, 24).ok()
}

/// `.1` of a rack subnet: the router's address on that rack.
pub fn router_ip(rack: Ipv4Net) -> Ipv4Addr {
    offset(rack, 1)
}

/// `.10 + slot`: the underlay address of the `slot`-th host in a rack.
pub fn host_ip(rack: Ipv4Net, slot: u32) -> Ipv4Addr {
    offset(rack, 10 + slot)
}

fn offset(net: Ipv4Net, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()) + n)
}

/// Host names are `h1`, `h2`, …
pub fn host_name(index: u32) -> String {
    format!("h{index}")
}

/// `h12` → 12.
pub fn host_index(host: &str) -> Option<u32> {
    let digits = host.strip_prefix('h')?;
    if digits.is_empty() || digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The router namespace, `NAME-router`.
pub fn router_ns(lab: &str) -> String {
    format!("{lab}-router")
}

/// A host's namespace, `NAME-hI`. The router's end of the host's veth has the same name, inside
/// the router namespace (at most 8 + 2 + 3 = 13 characters: under the kernel's 15).
pub fn host_ns(lab: &str, host: &str) -> String {
    format!("{lab}-{host}")
}

/// The namespace beyond the router that stands for the outside world, `NAME-outside`.
pub fn outside_ns(lab: &str) -> String {
    format!("{lab}-outside")
}

/// The router's port towards `NAME-outside` (`NAME-outside` itself would pass the kernel's 15
/// characters for an 8-character lab name).
pub fn outside_port(lab: &str) -> String {
    format!("{lab}-out")
}

/// The router's bridge for rack `rack` when racks hold several hosts, `NAME-rR` (≤ 13 characters).
pub fn rack_bridge(lab: &str, rack: u32) -> String {
    format!("{lab}-r{rack}")
}

/// Pod `pod` (1-based) of a host: namespace `NAME-hI-pJ`.
pub fn pod_ns(lab: &str, host: &str, pod: u32) -> String {
    format!("{lab}-{host}-p{pod}")
}

/// L2 endpoint `n` (1-based): namespace `NAME-eN`, wired to a host's bridge by
/// [`crate::lab::endpoints`].
pub fn endpoint_ns(lab: &str, n: u32) -> String {
    format!("{lab}-e{n}")
}

/// The outside namespace's plan: the router's `.1` and the outside's `.10` on [`OUTSIDE_RACK`]'s subnet.
pub fn outside_subnet() -> Ipv4Net {
    rack_subnet(OUTSIDE_RACK).expect("OUTSIDE_RACK is a rack")
}

/// Which rack and slot host `index` gets when racks hold `rack_size` hosts (indexes fill racks in
/// order: 1…N in rack 1, N+1…2N in rack 2, …).
pub fn rack_and_slot(index: u32, rack_size: u32) -> (u32, u32) {
    let n = rack_size.max(1);
    ((index - 1) / n + 1, (index - 1) % n)
}

/// True for the namespace names a lab called `lab` creates: `lab-router`, `lab-outside`,
/// `lab-hN` and pods `lab-hN-pM`. Used by `down` to find what a crashed `up` left behind without
/// touching anyone else's namespaces.
pub fn is_lab_namespace(lab: &str, ns: &str) -> bool {
    let positive = |n: &str| !n.is_empty() && !n.starts_with('0') && n.bytes().all(|b| b.is_ascii_digit());
    match ns.strip_prefix(lab).and_then(|rest| rest.strip_prefix('-')) {
        Some("router") | Some("outside") => true,
        Some(rest) if rest.starts_with('e') && positive(&rest[1..]) => true,
        Some(rest) => match rest.split_once("-p") {
            Some((host, pod)) => host_index(host).is_some() && positive(pod),
            None => host_index(rest).is_some(),
        },
        None => false,
    }
}

/// Where one host sits in the lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPlan {
    /// `h1`, `h2`, …
    pub name: String,
    /// `NAME-hI`, also the name of the router's port towards it.
    pub namespace: String,
    pub rack: u32,
    /// Position in the rack (0 today; see the module docs).
    pub slot: u32,
    pub rack_subnet: Ipv4Net,
    pub underlay_ip: Ipv4Addr,
    pub router_ip: Ipv4Addr,
}

/// The plan for host `index` of lab `lab`, in a rack of its own (rack = index).
pub fn host_plan(lab: &str, index: u32) -> Option<HostPlan> {
    host_plan_in_rack(lab, index, index, 0)
}

/// The plan for host `index` when racks hold `rack_size` hosts (see [`rack_and_slot`]).
pub fn host_plan_sized(lab: &str, index: u32, rack_size: u32) -> Option<HostPlan> {
    if index == 0 || rack_size == 0 || rack_size > MAX_SLOTS {
        return None;
    }
    let (rack, slot) = rack_and_slot(index, rack_size);
    host_plan_in_rack(lab, index, rack, slot)
}

/// The plan for host `index` placed in `rack` at `slot`.
pub fn host_plan_in_rack(lab: &str, index: u32, rack: u32, slot: u32) -> Option<HostPlan> {
    if index == 0 || slot >= MAX_SLOTS || rack > MAX_HOST_RACKS {
        return None;
    }
    let rack_subnet = rack_subnet(rack)?;
    let name = host_name(index);
    Some(HostPlan {
        namespace: host_ns(lab, &name),
        name,
        rack,
        slot,
        rack_subnet,
        underlay_ip: host_ip(rack_subnet, slot),
        router_ip: router_ip(rack_subnet),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn racks_follow_the_documented_ranges() {
        assert_eq!(rack_subnet(0), None);
        assert_eq!(rack_subnet(1), Some(net("192.0.2.0/24")));
        assert_eq!(rack_subnet(2), Some(net("198.51.100.0/24")));
        assert_eq!(rack_subnet(3), Some(net("203.0.113.0/24")));
        assert_eq!(rack_subnet(4), Some(net("198.18.0.0/24")));
        assert_eq!(rack_subnet(5), Some(net("198.18.1.0/24")));
        assert_eq!(rack_subnet(259), Some(net("198.18.255.0/24")));
        assert_eq!(rack_subnet(260), Some(net("198.19.0.0/24")));
        assert_eq!(rack_subnet(MAX_RACKS), Some(net("198.19.255.0/24")));
        assert_eq!(rack_subnet(MAX_RACKS + 1), None);
    }

    #[test]
    fn every_rack_is_distinct_and_inside_the_allowed_ranges() {
        let allowed = [
            net("192.0.2.0/24"),
            net("198.51.100.0/24"),
            net("203.0.113.0/24"),
            net("198.18.0.0/15"),
        ];
        let mut seen = std::collections::HashSet::new();
        for r in 1..=MAX_RACKS {
            let s = rack_subnet(r).unwrap();
            assert!(allowed.iter().any(|a| a.contains(&s)), "{s}");
            assert!(seen.insert(s), "{s} twice");
        }
    }

    #[test]
    fn host_plan_addresses() {
        let h = host_plan("weft", 4).unwrap();
        assert_eq!(h.name, "h4");
        assert_eq!(h.namespace, "weft-h4");
        assert_eq!(h.rack_subnet, net("198.18.0.0/24"));
        assert_eq!(h.underlay_ip, Ipv4Addr::new(198, 18, 0, 10));
        assert_eq!(h.router_ip, Ipv4Addr::new(198, 18, 0, 1));
        let h1 = host_plan("weft", 1).unwrap();
        assert_eq!(h1.underlay_ip, Ipv4Addr::new(192, 0, 2, 10));
        assert_eq!(host_plan("weft", 0), None);
        assert_eq!(host_plan("weft", MAX_RACKS + 1), None);
        // The last rack is the outside's.
        assert_eq!(host_plan("weft", OUTSIDE_RACK), None);
        assert!(host_plan("weft", MAX_HOST_RACKS).is_some());
        assert_eq!(outside_subnet(), net("198.19.255.0/24"));
        let shared = host_plan_in_rack("weft", 7, 2, 1).unwrap();
        assert_eq!(shared.underlay_ip, Ipv4Addr::new(198, 51, 100, 11));
    }

    #[test]
    fn racks_of_several_hosts() {
        assert_eq!(rack_and_slot(1, 1), (1, 0));
        assert_eq!(rack_and_slot(3, 1), (3, 0));
        assert_eq!(rack_and_slot(1, 2), (1, 0));
        assert_eq!(rack_and_slot(2, 2), (1, 1));
        assert_eq!(rack_and_slot(3, 2), (2, 0));
        let h2 = host_plan_sized("weft", 2, 2).unwrap();
        assert_eq!((h2.rack, h2.slot), (1, 1));
        assert_eq!(h2.underlay_ip, Ipv4Addr::new(192, 0, 2, 11));
        assert_eq!(h2.router_ip, Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(
            host_plan_sized("weft", 3, 2).unwrap().rack_subnet,
            net("198.51.100.0/24")
        );
        assert_eq!(host_plan_sized("weft", 1, 0), None);
        assert_eq!(host_plan_sized("weft", 4, 1), host_plan("weft", 4));
    }

    #[test]
    fn link_names_fit_the_kernel_limit() {
        let longest = host_ns("abcdefgh", &host_name(MAX_RACKS));
        assert!(longest.len() <= 15, "{longest}");
        assert!(outside_port("abcdefgh").len() <= 15);
        assert!(rack_bridge("abcdefgh", MAX_RACKS).len() <= 15);
    }

    #[test]
    fn recognises_only_its_own_namespaces() {
        assert!(is_lab_namespace("t1", "t1-router"));
        assert!(is_lab_namespace("t1", "t1-h1"));
        assert!(is_lab_namespace("t1", "t1-h37"));
        assert!(is_lab_namespace("t1", "t1-outside"));
        assert!(is_lab_namespace("t1", "t1-h2-p3"));
        assert!(is_lab_namespace("t1", "t1-e4"));
        assert!(!is_lab_namespace("t1", "t1-e04") && !is_lab_namespace("t1", "t1-ex"));
        assert_eq!(pod_ns("t1", "h2", 3), "t1-h2-p3");
        for other in [
            "t1",
            "t1-",
            "t1-h",
            "t1-h01",
            "t1-hx",
            "t12-h1",
            "t-h1",
            "t1-routerx",
            "xt1-h1",
            "t1-h1-x",
            "t1-h1-p",
            "t1-h1-p0",
            "t1-h1-px",
            "t1-h-p1",
            "t1-outsidex",
        ] {
            assert!(!is_lab_namespace("t1", other), "{other}");
        }
        assert_eq!(host_index("h12"), Some(12));
        assert_eq!(host_index("h0x"), None);
    }
}
