//! The lab's addressing plan: which namespace, rack subnet, underlay address and router port each
//! host gets. Pure functions only, so the plan is unit-tested without root.
//!
//! Every rack is one underlay subnet behind the router; today each host has a rack of its own
//! (`slot` 0). A later "several hosts per rack" option puts a bridge per rack in the router and
//! gives the extra hosts slots 1, 2, … (addresses .11, .12, …) — the plan already carries both.

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// Racks 1–3 use the three documentation /24s; racks 4 … 515 use the benchmarking range
/// 198.18.0.0/15, one /24 each.
pub const MAX_RACKS: u32 = 3 + 512;

/// Most hosts per rack: host addresses .10 … .250.
pub const MAX_SLOTS: u32 = 241;

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

/// True for the namespace names a lab called `lab` creates: `lab-router` and `lab-hN`. Used by
/// `down` to find what a crashed `up` left behind without touching anyone else's namespaces.
pub fn is_lab_namespace(lab: &str, ns: &str) -> bool {
    match ns.strip_prefix(lab).and_then(|rest| rest.strip_prefix('-')) {
        Some("router") => true,
        Some(host) => host_index(host).is_some(),
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

/// The plan for host `index` placed in `rack` at `slot`.
pub fn host_plan_in_rack(lab: &str, index: u32, rack: u32, slot: u32) -> Option<HostPlan> {
    if index == 0 || slot >= MAX_SLOTS {
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
        let shared = host_plan_in_rack("weft", 7, 2, 1).unwrap();
        assert_eq!(shared.underlay_ip, Ipv4Addr::new(198, 51, 100, 11));
    }

    #[test]
    fn link_names_fit_the_kernel_limit() {
        let longest = host_ns("abcdefgh", &host_name(MAX_RACKS));
        assert!(longest.len() <= 15, "{longest}");
    }

    #[test]
    fn recognises_only_its_own_namespaces() {
        assert!(is_lab_namespace("t1", "t1-router"));
        assert!(is_lab_namespace("t1", "t1-h1"));
        assert!(is_lab_namespace("t1", "t1-h37"));
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
        ] {
            assert!(!is_lab_namespace("t1", other), "{other}");
        }
        assert_eq!(host_index("h12"), Some(12));
        assert_eq!(host_index("h0x"), None);
    }
}
