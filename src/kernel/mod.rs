//! weft's netlink module: the thin, idempotent executor and the observer.
//! (Signatures fixed; bodies to be written.)
#![allow(unused_variables)]

use crate::mac::Mac;
use crate::planner::state::{FdbEntry, NeighEntry, RouteEntry};
use ipnet::Ipv4Net;
use std::net::{IpAddr, Ipv4Addr};
use tokio::sync::mpsc;

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("netlink {op} on {object}: {message}")]
    Netlink { op: &'static str, object: String, message: String },
    #[error("no such link {0}")]
    NoSuchLink(String),
    #[error("cannot open netlink socket: {0}")]
    Socket(String),
}

/// VXLAN attributes read back from a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanInfo {
    pub vni: u32,
    pub local: Option<Ipv4Addr>,
    /// Index of the underlay device (`dev eth0`).
    pub link: Option<u32>,
    /// UDP destination port.
    pub port: u16,
    pub learning: bool,
    pub gbp: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    pub mac: Option<Mac>,
    /// Administratively up (IFF_UP).
    pub up: bool,
    /// Carrier / operational state up (IFF_LOWER_UP or oper state UP/UNKNOWN).
    pub running: bool,
    /// `IFLA_INFO_KIND` (`"vxlan"`, `"veth"`, …).
    pub kind: Option<String>,
    pub vxlan: Option<VxlanInfo>,
}

/// What to create: `ip link add NAME type vxlan id VNI local LOCAL dev LINK dstport PORT nolearning`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    pub local: Ipv4Addr,
    pub link: u32,
    pub port: u16,
    pub mtu: u32,
    pub learning: bool,
    pub gbp: bool,
}

/// Something changed in the kernel that may need a reconcile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelEvent {
    Link { index: u32, deleted: bool },
    Address { index: u32 },
    Route { oif: Option<u32> },
    Neigh { index: u32 },
    /// The monitor socket overflowed: events were lost, reconcile everything.
    Overrun,
}

#[derive(Clone)]
pub struct Kernel;

impl Kernel {
    pub async fn connect() -> Result<Kernel, KernelError> { todo!() }
    pub async fn links(&self) -> Result<Vec<LinkInfo>, KernelError> { todo!() }
    pub async fn link_by_name(&self, name: &str) -> Result<Option<LinkInfo>, KernelError> { todo!() }
    pub async fn link_by_index(&self, index: u32) -> Result<Option<LinkInfo>, KernelError> { todo!() }
    pub async fn create_vxlan(&self, spec: &VxlanSpec) -> Result<LinkInfo, KernelError> { todo!() }
    pub async fn delete_link(&self, index: u32) -> Result<(), KernelError> { todo!() }
    pub async fn set_up(&self, index: u32) -> Result<(), KernelError> { todo!() }
    pub async fn set_mtu(&self, index: u32, mtu: u32) -> Result<(), KernelError> { todo!() }
    pub async fn addresses(&self, index: Option<u32>) -> Result<Vec<(u32, IpAddr, u8)>, KernelError> { todo!() }
    pub async fn ensure_address(&self, index: u32, addr: Ipv4Net) -> Result<(), KernelError> { todo!() }
    pub async fn remove_address(&self, index: u32, addr: Ipv4Net) -> Result<(), KernelError> { todo!() }
    pub async fn routes(&self, oif: u32) -> Result<Vec<RouteEntry>, KernelError> { todo!() }
    pub async fn default_route_oif(&self) -> Result<Option<u32>, KernelError> { todo!() }
    pub async fn ensure_route(&self, route: &RouteEntry) -> Result<(), KernelError> { todo!() }
    pub async fn remove_route(&self, route: &RouteEntry) -> Result<(), KernelError> { todo!() }
    pub async fn neighs(&self, index: u32) -> Result<Vec<NeighEntry>, KernelError> { todo!() }
    pub async fn ensure_neigh(&self, index: u32, n: &NeighEntry) -> Result<(), KernelError> { todo!() }
    pub async fn remove_neigh(&self, index: u32, n: &NeighEntry) -> Result<(), KernelError> { todo!() }
    pub async fn fdbs(&self, index: u32) -> Result<Vec<FdbEntry>, KernelError> { todo!() }
    pub async fn ensure_fdb(&self, index: u32, f: &FdbEntry) -> Result<(), KernelError> { todo!() }
    pub async fn remove_fdb(&self, index: u32, f: &FdbEntry) -> Result<(), KernelError> { todo!() }
}

pub fn monitor() -> Result<mpsc::Receiver<KernelEvent>, KernelError> { todo!() }
