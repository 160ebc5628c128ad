//! The kernel entries weft manages, as plain data: what the planner wants and what the observer saw.

use super::Op;
use crate::mac::Mac;
use ipnet::Ipv4Net;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

/// Route protocol number stamped on every route weft installs, so a resync can tell weft's routes
/// from everybody else's (see /etc/iproute2/rt_protos; 0x57 = 'W' is not assigned).
pub const ROUTE_PROTO_WEFT: u8 = 0x57;

/// A permanent ARP entry on the VXLAN device: `<ip> lladdr <mac> PERMANENT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NeighEntry {
    pub ip: Ipv4Addr,
    pub mac: Mac,
}

/// A VXLAN forwarding entry on the device: `<mac> dst <dst> self permanent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FdbEntry {
    pub mac: Mac,
    pub dst: Ipv4Addr,
}

/// An IPv4 route: `<dst> via <gateway> dev <oif> [onlink] proto <protocol> metric <metric>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteEntry {
    pub dst: Ipv4Net,
    pub gateway: Ipv4Addr,
    /// Output interface index.
    pub oif: u32,
    pub onlink: bool,
    pub protocol: u8,
    /// The kernel's route priority. With the destination (and TOS, always 0 here) it is what
    /// tells two routes apart: a `replace` displaces only the route with the same metric.
    pub metric: u32,
}

/// The metric weft gives its route to `dst`: the subnet's number (the address bits above the
/// prefix length, the low 16 of them), e.g. 0xf405 = 62469 for 10.244.5.0/24.
///
/// Why not 0, as flannel does: the kernel keeps one `fib_info` per distinct route attribute set
/// in a hash whose key is the device, protocol, scope and metric but not the gateway, so all of
/// a VXLAN device's routes with one metric share one bucket and adding the n-th costs a walk of
/// the n-1 before it. 10,000 peers took 2.2 s of kernel time; with distinct metrics, 0.3 s.
/// The metric does not change forwarding: each destination has exactly one route of weft's.
pub fn route_metric(dst: Ipv4Net) -> u32 {
    match dst.prefix_len() {
        0 => 0,
        len => (u32::from(dst.addr()) >> (32 - u32::from(len))) & 0xffff,
    }
}

/// What the observer read from the kernel for weft's devices, kept sorted so that the planner
/// and [`Observed::apply`] find an entry by its key (neighbour IP, FDB MAC, route destination)
/// without a scan: the agent keeps one as its view of the kernel between full reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// PERMANENT neighbour entries on the device (others are the kernel's, not ours).
    pub neighs: BTreeSet<NeighEntry>,
    /// Permanent unicast FDB entries with a remote destination on the device.
    pub fdbs: BTreeSet<FdbEntry>,
    /// IPv4 main-table routes whose output interface is one of weft's devices, any protocol.
    pub routes: BTreeSet<RouteEntry>,
}

/// One entry as a kernel notification reports it, added or deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// An IPv4 neighbour on device `index`; `permanent` is its NUD_PERMANENT bit.
    Neigh {
        index: u32,
        entry: NeighEntry,
        permanent: bool,
        deleted: bool,
    },
    /// A unicast FDB entry with a remote destination on device `index`.
    Fdb {
        index: u32,
        entry: FdbEntry,
        permanent: bool,
        deleted: bool,
    },
    /// A unicast IPv4 route in routing table `table`.
    Route {
        table: u32,
        entry: RouteEntry,
        deleted: bool,
    },
}

impl Observed {
    /// The view after `op` succeeded, following the kernel's semantics: `replace` of a
    /// neighbour, FDB entry or route displaces whatever had the same IP, MAC or destination.
    pub fn apply(&mut self, op: &Op) {
        match *op {
            Op::RemoveNeigh(n) => self.remove_neighs_of(n.ip),
            Op::EnsureNeigh(n) => {
                self.remove_neighs_of(n.ip);
                self.neighs.insert(n);
            }
            Op::RemoveFdb(f) => {
                self.fdbs.remove(&f);
            }
            Op::EnsureFdb(f) => {
                let old: Vec<FdbEntry> = self.fdbs_of(f.mac).copied().collect();
                for o in old {
                    self.fdbs.remove(&o);
                }
                self.fdbs.insert(f);
            }
            Op::RemoveRoute(r) => {
                // The kernel deletes the first route (lowest metric) that matches; metric 0 in
                // a delete matches any metric.
                let gone = self
                    .routes_to(r.dst)
                    .filter(|x| x.oif == r.oif && x.protocol == r.protocol)
                    .filter(|x| r.metric == 0 || x.metric == r.metric)
                    .min_by_key(|x| x.metric)
                    .copied();
                if let Some(g) = gone {
                    self.routes.remove(&g);
                }
            }
            Op::EnsureRoute(r) => {
                let old: Vec<RouteEntry> = self
                    .routes_to(r.dst)
                    .filter(|x| x.metric == r.metric)
                    .copied()
                    .collect();
                for o in old {
                    self.routes.remove(&o);
                }
                self.routes.insert(r);
            }
        }
    }

    /// True if the kernel reporting `change` agrees with this view, as the echo of an operation
    /// the agent carried out itself does; false if someone else changed what weft manages.
    /// Entries on other devices (`vxlan` is weft's device, `route_oifs` the devices whose routes
    /// are in the view) and non-permanent neighbours for addresses weft does not program are
    /// not weft's business and agree trivially, as do routes outside `table`, the view's.
    pub fn agrees_with(&self, change: &Change, vxlan: u32, table: u32, route_oifs: &[u32]) -> bool {
        match *change {
            Change::Neigh { index, .. } | Change::Fdb { index, .. } if index != vxlan => true,
            Change::Neigh {
                entry,
                permanent: false,
                ..
            } => self.neighs_of(entry.ip).next().is_none(),
            Change::Neigh { entry, deleted, .. } => self.neighs.contains(&entry) != deleted,
            Change::Fdb {
                entry,
                permanent: false,
                ..
            } => self.fdbs_of(entry.mac).next().is_none(),
            Change::Fdb { entry, deleted, .. } => self.fdbs.contains(&entry) != deleted,
            Change::Route { table: t, entry, .. } if t != table || !route_oifs.contains(&entry.oif) => true,
            Change::Route { entry, deleted, .. } => self.routes.contains(&entry) != deleted,
        }
    }

    pub fn neighs_of(&self, ip: Ipv4Addr) -> impl Iterator<Item = &NeighEntry> {
        self.neighs.range(
            NeighEntry { ip, mac: Mac([0; 6]) }..=NeighEntry {
                ip,
                mac: Mac([0xff; 6]),
            },
        )
    }

    fn remove_neighs_of(&mut self, ip: Ipv4Addr) {
        let old: Vec<NeighEntry> = self.neighs_of(ip).copied().collect();
        for o in old {
            self.neighs.remove(&o);
        }
    }

    pub fn fdbs_of(&self, mac: Mac) -> impl Iterator<Item = &FdbEntry> {
        self.fdbs.range(
            FdbEntry {
                mac,
                dst: Ipv4Addr::UNSPECIFIED,
            }..=FdbEntry {
                mac,
                dst: Ipv4Addr::BROADCAST,
            },
        )
    }

    /// Every route to `dst`, whatever its gateway, device, protocol or metric.
    pub fn routes_to(&self, dst: Ipv4Net) -> impl Iterator<Item = &RouteEntry> {
        let lo = RouteEntry {
            dst,
            gateway: Ipv4Addr::UNSPECIFIED,
            oif: 0,
            onlink: false,
            protocol: 0,
            metric: 0,
        };
        let hi = RouteEntry {
            dst,
            gateway: Ipv4Addr::BROADCAST,
            oif: u32::MAX,
            onlink: true,
            protocol: u8::MAX,
            metric: u32::MAX,
        };
        self.routes.range(lo..=hi)
    }
}
