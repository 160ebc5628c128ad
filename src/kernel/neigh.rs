//! Permanent IPv4 neighbour (ARP) entries on the VXLAN device.

use super::{ignore_errnos, is_permanent, nl_error, Kernel, KernelError};
use crate::mac::Mac;
use crate::planner::state::NeighEntry;
use futures::TryStreamExt;
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState};
use netlink_packet_route::AddressFamily;
use std::net::IpAddr;

impl Kernel {
    /// NUD_PERMANENT IPv4 entries on device `index` (the kernel's own, learnt entries are
    /// not ours and are left out).
    pub async fn neighs(&self, index: u32) -> Result<Vec<NeighEntry>, KernelError> {
        let mut req = self.handle.neighbours().get().set_address_family(AddressFamily::Inet);
        // NDA_IFINDEX makes the kernel filter the dump to the device (also without strict
        // checking); the entries are still checked below.
        req.message_mut().attributes.push(NeighbourAttribute::IfIndex(index));
        req.execute()
            .try_filter_map(|m| async move {
                Ok(parse_neigh(&m)
                    .filter(|&(i, _, permanent)| i == index && permanent)
                    .map(|(_, n, _)| n))
            })
            .try_collect()
            .await
            .map_err(|e| nl_error("dump neighbours", format!("dev {index}"), e))
    }

    /// `ip neigh replace IP lladdr MAC dev INDEX nud permanent`.
    pub async fn ensure_neigh(&self, index: u32, n: &NeighEntry) -> Result<(), KernelError> {
        let res = self
            .handle
            .neighbours()
            .add(index, IpAddr::V4(n.ip))
            .link_layer_address(&n.mac.0)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await;
        res.map_err(|e| nl_error("add neighbour", format!("{} lladdr {} dev {index}", n.ip, n.mac), e))
    }

    /// `ip neigh del IP dev INDEX` (whatever its MAC); an absent entry is success.
    pub async fn remove_neigh(&self, index: u32, n: &NeighEntry) -> Result<(), KernelError> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.ifindex = index;
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(n.ip)));
        let res = self.handle.neighbours().del(msg).execute().await;
        ignore_errnos(
            res,
            &[libc::ENOENT, libc::ENODEV],
            "delete neighbour",
            format!("{} dev {index}", n.ip),
        )
    }
}

/// An IPv4 neighbour as `(device index, entry, permanent)`.
pub(super) fn parse_neigh(m: &NeighbourMessage) -> Option<(u32, NeighEntry, bool)> {
    let h = &m.header;
    if h.family != AddressFamily::Inet {
        return None;
    }
    let (mut ip, mut mac) = (None, None);
    for a in &m.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => ip = Some(*v4),
            NeighbourAttribute::LinkLayerAddress(l) => mac = Mac::from_slice(l),
            _ => {}
        }
    }
    // An entry still resolving has no MAC yet; it is the kernel's, reported as all zeros.
    let entry = NeighEntry {
        ip: ip?,
        mac: mac.unwrap_or(Mac([0; 6])),
    };
    Some((h.ifindex, entry, is_permanent(h.state)))
}
