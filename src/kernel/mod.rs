//! weft's netlink module: the thin, idempotent executor and the observer.
//!
//! One submodule per kernel object kind (the rtnetlink crate's layout): `link` (links and VXLAN
//! devices), `addr`, `route`, `neigh` (ARP entries), `fdb` (VXLAN forwarding entries) and
//! `monitor` (change notifications). Every request runs in the network namespace the calling
//! thread was in when the socket was opened ([`Kernel::connect`] / [`monitor`]).
//!
//! Every `ensure_*` / `remove_*` is idempotent: "already there" and "already gone" are success.
//! Dumps are single netlink requests filtered in one linear pass, so a 10,000-peer resync costs
//! three dumps, not 30,000 lookups.

mod addr;
pub mod bpf;
pub mod bridge;
mod fdb;
mod link;
mod monitor;
mod neigh;
pub mod nft;
pub mod offload;
mod route;
pub mod rule;
pub mod sysctl;
#[cfg(test)]
mod tests;

pub use monitor::monitor;

use crate::mac::Mac;
use crate::planner::state::Change;
use std::fmt::Display;
use std::net::Ipv4Addr;

#[derive(Debug, Clone, thiserror::Error)]
pub enum KernelError {
    /// The kernel (or the netlink transport) refused `op` on `object`.
    /// `errno` is the positive errno the kernel answered with, 0 if the failure was not an errno
    /// (transport closed, unexpected reply).
    #[error("netlink {op} on {object}: {message}")]
    Netlink {
        op: &'static str,
        object: String,
        message: String,
        errno: i32,
    },
    #[error("no such link {0}")]
    NoSuchLink(String),
    #[error("cannot open netlink socket: {0}")]
    Socket(String),
    /// A device sysctl could not be read or written.
    #[error("sysctl of {dev}: {message}")]
    Sysctl { dev: String, message: String },
    /// `nft` failed; `message` carries its stderr.
    #[error("nft {op}: {message}")]
    Nft { op: &'static str, message: String },
    /// A `bpf(2)` command of the peer filter failed.
    #[error(transparent)]
    Bpf(#[from] bpf::BpfError),
    /// The ethtool ioctl `op` failed on `dev` with positive errno `errno`.
    #[error("ethtool {op} on {dev}: {message}")]
    Ethtool {
        op: &'static str,
        dev: String,
        message: String,
        errno: i32,
    },
}

impl KernelError {
    /// The errno of a kernel refusal, if this is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            KernelError::Netlink { errno, .. } if *errno != 0 => Some(*errno),
            _ => None,
        }
    }
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
    /// Index of the bridge (or other master) the link is a port of.
    pub master: Option<u32>,
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
    Link {
        index: u32,
        deleted: bool,
    },
    Address {
        index: u32,
    },
    /// An IPv4 route changed; `change` says which, if it is a main-table unicast route.
    Route {
        oif: Option<u32>,
        change: Option<Change>,
    },
    /// An ARP entry or an FDB entry (both are RTM_*NEIGH) changed on device `index`; `change`
    /// says which, if it is an IPv4 neighbour or a unicast FDB entry with a remote destination.
    Neigh {
        index: u32,
        change: Option<Change>,
    },
    /// The monitor socket overflowed: events were lost, reconcile everything.
    Overrun,
}

/// A cloneable handle on one rtnetlink socket; clones share the socket and its background task.
/// Route requests and dumps act on one routing table: the main table, or the one given to
/// [`Kernel::with_table`] (a named network's).
#[derive(Clone)]
pub struct Kernel {
    handle: rtnetlink::Handle,
    table: u32,
}

impl Kernel {
    /// Opens the request socket in the current network namespace and spawns its I/O task on the
    /// current tokio runtime.
    pub async fn connect() -> Result<Kernel, KernelError> {
        let rt =
            tokio::runtime::Handle::try_current().map_err(|e| KernelError::Socket(format!("no tokio runtime: {e}")))?;
        let (connection, handle, _) = rtnetlink::new_connection().map_err(|e| KernelError::Socket(e.to_string()))?;
        rt.spawn(connection);
        Ok(Kernel {
            handle,
            table: route::RT_TABLE_MAIN,
        })
    }

    /// The same socket, with routes read and written in routing table `table`.
    pub fn with_table(&self, table: u32) -> Kernel {
        Kernel {
            handle: self.handle.clone(),
            table,
        }
    }

    /// The routing table this handle's route requests use.
    pub fn table(&self) -> u32 {
        self.table
    }
}

/// The positive errno carried by a netlink error, if any.
fn errno_of(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| c.get().abs()),
        _ => None,
    }
}

/// Wraps a failed request with what was asked and on what, with the kernel's plain-words reason
/// ("File exists") rather than rtnetlink's debug rendering.
fn nl_error(op: &'static str, object: impl Display, e: rtnetlink::Error) -> KernelError {
    let (message, errno) = match errno_of(&e) {
        Some(n) => (nix::errno::Errno::from_raw(n).desc().to_string(), n),
        None => (e.to_string(), 0),
    };
    KernelError::Netlink {
        op,
        object: object.to_string(),
        message,
        errno,
    }
}

/// Maps an "already done" errno to success, so ensure/remove calls are idempotent.
fn ignore_errnos(
    res: Result<(), rtnetlink::Error>,
    ok: &[i32],
    op: &'static str,
    object: impl Display,
) -> Result<(), KernelError> {
    match res {
        Err(e) if errno_of(&e).is_some_and(|n| ok.contains(&n)) => {
            tracing::debug!(op, %object, "netlink: already in the wanted state ({e})");
            Ok(())
        }
        Err(e) => Err(nl_error(op, object, e)),
        Ok(()) => Ok(()),
    }
}

/// NUD_PERMANENT is a bit, not a value: `bridge fdb add` without a state keyword stores
/// NUD_PERMANENT|NUD_NOARP (0xc0), which the parser reports as `Other(192)`.
fn is_permanent(state: netlink_packet_route::neighbour::NeighbourState) -> bool {
    const NUD_PERMANENT: u16 = 0x80;
    u16::from(state) & NUD_PERMANENT != 0
}
