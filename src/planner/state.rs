//! The kernel entries weft manages, as plain data: what the planner wants and what the observer saw.

use crate::mac::Mac;
use ipnet::Ipv4Net;
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

/// An IPv4 route in the main table: `<dst> via <gateway> dev <oif> [onlink] proto <protocol>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteEntry {
    pub dst: Ipv4Net,
    pub gateway: Ipv4Addr,
    /// Output interface index.
    pub oif: u32,
    pub onlink: bool,
    pub protocol: u8,
}

/// What the observer read from the kernel for one VXLAN device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// PERMANENT neighbour entries on the device (others are the kernel's, not ours).
    pub neighs: Vec<NeighEntry>,
    /// Permanent unicast FDB entries with a remote destination on the device.
    pub fdbs: Vec<FdbEntry>,
    /// IPv4 main-table routes whose output interface is the device, any protocol.
    pub routes: Vec<RouteEntry>,
}
