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
use state::{route_metric, FdbEntry, NeighEntry, Observed, RouteEntry, ROUTE_PROTO_WEFT};
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
                    "route {} via {}{} proto {} metric {}",
                    r.dst,
                    r.gateway,
                    if r.onlink { " onlink" } else { "" },
                    r.protocol,
                    r.metric
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
                metric: route_metric(peer.subnet),
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
            metric: route_metric(peer.subnet),
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
    let want = Want::of(peers, devices);
    diff(
        &want,
        observed.neighs.iter().filter(|n| network.contains(&n.ip)),
        observed.fdbs.iter(),
        observed.routes.iter().filter(|r| devices.owns_route_on(r.oif)),
        observed,
    )
}

/// The entries some peers want, by neighbour IP, FDB MAC and route destination.
struct Want {
    neigh: BTreeMap<std::net::Ipv4Addr, NeighEntry>,
    fdb: BTreeMap<crate::mac::Mac, FdbEntry>,
    route: BTreeMap<Ipv4Net, RouteEntry>,
}

impl Want {
    fn of(peers: &[Peer], devices: Devices) -> Want {
        let mut want = Want {
            neigh: BTreeMap::new(),
            fdb: BTreeMap::new(),
            route: BTreeMap::new(),
        };
        for p in peers {
            let e = peer_entries(p, devices);
            if let Some(n) = e.neigh {
                want.neigh.insert(n.ip, n);
            }
            if let Some(f) = e.fdb {
                want.fdb.insert(f.mac, f);
            }
            want.route.insert(e.route.dst, e.route);
        }
        want
    }
}

/// Removals of the owned entries `have_*` that are not wanted (neighbours, FDB, routes: a
/// changed MAC or IP leaves the old one here), then additions and corrections of the wanted
/// ones the view lacks, in the same order. The view's sets are ordered by IP, MAC and
/// destination, so each lookup is a search, not a scan.
fn diff<'a>(
    want: &Want,
    have_neigh: impl Iterator<Item = &'a NeighEntry>,
    have_fdb: impl Iterator<Item = &'a FdbEntry>,
    have_route: impl Iterator<Item = &'a RouteEntry>,
    observed: &Observed,
) -> Vec<Op> {
    let mut ops: Vec<Op> = have_neigh
        .filter(|n| !want.neigh.contains_key(&n.ip))
        .map(|n| Op::RemoveNeigh(*n))
        .collect();
    ops.extend(
        have_fdb
            .filter(|f| want.fdb.get(&f.mac) != Some(*f))
            .map(|f| Op::RemoveFdb(*f)),
    );
    let (gone, displaced): (Vec<&RouteEntry>, Vec<&RouteEntry>) =
        have_route.partition(|r| !want.route.contains_key(&r.dst));
    ops.extend(
        gone.iter()
            .filter(|r| r.protocol == ROUTE_PROTO_WEFT)
            .map(|r| Op::RemoveRoute(**r)),
    );
    ops.extend(
        want.neigh
            .values()
            .filter(|n| !observed.neighs.contains(n))
            .map(|n| Op::EnsureNeigh(*n)),
    );
    ops.extend(
        want.fdb
            .values()
            .filter(|f| !observed.fdbs.contains(f))
            .map(|f| Op::EnsureFdb(*f)),
    );
    ops.extend(
        want.route
            .values()
            .filter(|r| !observed.routes.contains(r))
            .map(|r| Op::EnsureRoute(*r)),
    );
    // A route to a wanted destination with another metric (flannel's, or an older weft's:
    // metric 0) is not displaced by ours and would win over it: removed, but only after ours is
    // in place, so traffic to the peer never lacks a route.
    ops.extend(
        displaced
            .iter()
            .filter(|r| want.route.get(&r.dst).is_some_and(|w| w.metric != r.metric))
            .map(|r| Op::RemoveRoute(**r)),
    );
    ops
}

/// [`plan`] restricted to the kernel objects of some peers: what changes when only `before`
/// (their old versions, gone or replaced) became `after` (their new versions), every other peer
/// staying as it was and the view being converged for it. Each neighbour IP, FDB MAC and route
/// destination belongs to one peer at most (the peer selection refuses duplicates), so the result
/// is exactly the part of the full plan that touches these objects, found by searching the view
/// rather than by walking it: a one-lease change costs O(log n).
pub fn plan_scoped(
    network: Ipv4Net,
    devices: Devices,
    before: &[Peer],
    after: &[Peer],
    observed: &Observed,
) -> Vec<Op> {
    let want = Want::of(after, devices);
    // The objects in scope: everything either version of these peers has or wants.
    let mut ips = std::collections::BTreeSet::new();
    let mut macs = std::collections::BTreeSet::new();
    let mut dsts = std::collections::BTreeSet::new();
    for p in before.iter().chain(after) {
        ips.insert(p.vtep_ip());
        macs.insert(p.vtep_mac);
        dsts.insert(p.subnet);
    }
    diff(
        &want,
        ips.iter()
            .filter(|ip| network.contains(*ip))
            .flat_map(|ip| observed.neighs_of(*ip)),
        macs.iter().flat_map(|m| observed.fdbs_of(*m)),
        dsts.iter()
            .flat_map(|d| observed.routes_to(*d))
            .filter(|r| devices.owns_route_on(r.oif)),
        observed,
    )
}
