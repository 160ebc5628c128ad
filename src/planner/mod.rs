//! The planner: a pure function from (peers wanted, kernel state observed) to the operations
//! that make the kernel match. Everything subtle is decided here, where it can be tested
//! without root; the executor in `kernel` only carries operations out.

pub mod endpoints;
pub mod peers;
pub mod state;

#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
mod tests;

use ipnet::Ipv4Net;
use peers::Peer;
use state::{FdbEntry, NeighEntry, Observed, RouteEntry, ROUTE_PROTO_WEFT};
use std::collections::BTreeMap;
use std::fmt;

/// One kernel change. `Ensure*` create or replace; `Remove*` tolerate absence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    RemoveNeigh(NeighEntry),
    RemoveFdb(FdbEntry),
    RemoveRoute(RouteEntry),
    EnsureNeigh(NeighEntry),
    EnsureFdb(FdbEntry),
    EnsureRoute(RouteEntry),
}

impl Op {
    /// `(kind, action)` labels, e.g. `("route", "ensure")`, for logs and metrics.
    pub fn labels(&self) -> (&'static str, &'static str) {
        match self {
            Op::RemoveNeigh(_) => ("neigh", "remove"),
            Op::RemoveFdb(_) => ("fdb", "remove"),
            Op::RemoveRoute(_) => ("route", "remove"),
            Op::EnsureNeigh(_) => ("neigh", "ensure"),
            Op::EnsureFdb(_) => ("fdb", "ensure"),
            Op::EnsureRoute(_) => ("route", "ensure"),
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::RemoveNeigh(n) | Op::EnsureNeigh(n) => write!(f, "neigh {} lladdr {} permanent", n.ip, n.mac),
            Op::RemoveFdb(e) | Op::EnsureFdb(e) => write!(f, "fdb {} dst {} self permanent", e.mac, e.dst),
            Op::RemoveRoute(r) | Op::EnsureRoute(r) => {
                write!(
                    f,
                    "route {} via {}{} proto {}",
                    r.dst,
                    r.gateway,
                    if r.onlink { " onlink" } else { "" },
                    r.protocol
                )
            }
        }
    }
}

/// Where peers' entries go: the VXLAN device, and with DirectRouting the public link for the
/// peers that sit on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Devices {
    pub vxlan: u32,
    /// Set when DirectRouting is on.
    pub direct: Option<DirectLink>,
    /// The public interface, where weft's direct routes live: owned even with DirectRouting off,
    /// so turning it off leaves no stale route behind.
    pub public: Option<u32>,
}

/// The public interface and its connected subnet: peers inside it are reached without VXLAN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectLink {
    pub oif: u32,
    pub net: Ipv4Net,
}

impl Devices {
    pub fn vxlan_only(vxlan: u32) -> Devices {
        Devices {
            vxlan,
            direct: None,
            public: None,
        }
    }

    fn owns_route_on(&self, oif: u32) -> bool {
        oif == self.vxlan || self.public == Some(oif) || self.direct.is_some_and(|d| d.oif == oif)
    }
}

/// A peer's entries: through VXLAN, flannel's neighbour + FDB + route (in that order); on the
/// same link with DirectRouting, only a plain route via its public IP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerEntries {
    pub neigh: Option<NeighEntry>,
    pub fdb: Option<FdbEntry>,
    pub route: RouteEntry,
}

pub fn peer_entries(peer: &Peer, devices: Devices) -> PeerEntries {
    if let Some(d) = devices.direct.filter(|d| d.net.contains(&peer.public_ip)) {
        return PeerEntries {
            neigh: None,
            fdb: None,
            route: RouteEntry {
                dst: peer.subnet,
                gateway: peer.public_ip,
                oif: d.oif,
                onlink: false,
                protocol: ROUTE_PROTO_WEFT,
            },
        };
    }
    PeerEntries {
        neigh: Some(NeighEntry {
            ip: peer.vtep_ip(),
            mac: peer.vtep_mac,
        }),
        fdb: Some(FdbEntry {
            mac: peer.vtep_mac,
            dst: peer.public_ip,
        }),
        route: RouteEntry {
            dst: peer.subnet,
            gateway: peer.vtep_ip(),
            oif: devices.vxlan,
            onlink: true,
            protocol: ROUTE_PROTO_WEFT,
        },
    }
}

/// The operations that turn `observed` (the devices' entries) into exactly the peers' entries.
///
/// Ownership: weft owns permanent neighbours on its VXLAN device inside `network`, permanent
/// unicast FDB entries on it, and routes carrying `ROUTE_PROTO_WEFT` on its devices. Anything
/// else is left alone, except that a route someone else left for a subnet we now serve is
/// replaced. Removals come first (neighbour, FDB, route), then additions in the same order, so
/// a changed peer never has two FDB entries for one MAC.
pub fn plan(network: Ipv4Net, devices: Devices, peers: &[Peer], observed: &Observed) -> Vec<Op> {
    let mut want_neigh = BTreeMap::new();
    let mut want_fdb = BTreeMap::new();
    let mut want_route = BTreeMap::new();
    for p in peers {
        let e = peer_entries(p, devices);
        if let Some(n) = e.neigh {
            want_neigh.insert(n.ip, n);
        }
        if let Some(f) = e.fdb {
            want_fdb.insert(f.mac, f);
        }
        want_route.insert(e.route.dst, e.route);
    }

    let mut ops = Vec::new();
    let have_neigh = || observed.neighs.iter().filter(|n| network.contains(&n.ip));
    let have_route = || observed.routes.iter().filter(|r| devices.owns_route_on(r.oif));

    // Removals: owned entries no peer wants (a changed MAC or IP leaves the old one here).
    ops.extend(
        have_neigh()
            .filter(|n| !want_neigh.contains_key(&n.ip))
            .map(|n| Op::RemoveNeigh(*n)),
    );
    ops.extend(
        observed
            .fdbs
            .iter()
            .filter(|f| want_fdb.get(&f.mac) != Some(*f))
            .map(|f| Op::RemoveFdb(*f)),
    );
    ops.extend(
        have_route()
            .filter(|r| r.protocol == ROUTE_PROTO_WEFT && !want_route.contains_key(&r.dst))
            .map(|r| Op::RemoveRoute(*r)),
    );

    // Additions and corrections. The observed sets are ordered by IP, MAC and destination, so
    // each lookup is a search, not a scan.
    ops.extend(
        want_neigh
            .values()
            .filter(|n| !observed.neighs.contains(n))
            .map(|n| Op::EnsureNeigh(*n)),
    );
    ops.extend(
        want_fdb
            .values()
            .filter(|f| !observed.fdbs.contains(f))
            .map(|f| Op::EnsureFdb(*f)),
    );
    ops.extend(
        want_route
            .values()
            .filter(|r| !observed.routes.contains(r))
            .map(|r| Op::EnsureRoute(*r)),
    );
    ops
}
