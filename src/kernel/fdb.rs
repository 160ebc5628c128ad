//! VXLAN forwarding database entries (`bridge fdb ... self`), i.e. AF_BRIDGE neighbours.

use super::{ignore_errnos, is_permanent, nl_error, Kernel, KernelError};
use crate::mac::Mac;
use crate::planner::state::FdbEntry;
use futures::TryStreamExt;
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::AddressFamily;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

impl Kernel {
    /// Permanent unicast entries with a remote IPv4 destination on device `index`. Leaves out
    /// the device's own multicast/broadcast entries and anything without NDA_DST.
    pub async fn fdbs(&self, index: u32) -> Result<Vec<FdbEntry>, KernelError> {
        // A plain ndmsg AF_BRIDGE dump ignores ndm_ifindex (the per-port filter needs strict
        // checking or the legacy ifinfomsg form), so dump all and filter here, in one pass.
        let req = self.handle.neighbours().get().set_address_family(AddressFamily::Bridge);
        // Filtered as the messages arrive: a 10,000-peer dump is never held whole.
        req.execute()
            .try_filter_map(|m| async move {
                Ok(parse_fdb(&m)
                    .filter(|&(i, _, permanent)| i == index && permanent)
                    .map(|(_, f, _)| f))
            })
            .try_collect()
            .await
            .map_err(|e| nl_error("dump fdb", format!("dev {index}"), e))
    }

    /// `bridge fdb replace MAC dev INDEX dst IP self permanent`: a new dst replaces the old one.
    pub async fn ensure_fdb(&self, index: u32, f: &FdbEntry) -> Result<(), KernelError> {
        let res = self
            .handle
            .neighbours()
            .add_bridge(index, &f.mac.0)
            .destination(IpAddr::V4(f.dst))
            .flags(NeighbourFlags::Own)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await;
        res.map_err(|e| nl_error("add fdb", Show(index, f), e))
    }

    /// `bridge fdb del MAC dev INDEX dst IP self`; an absent entry is success.
    pub async fn remove_fdb(&self, index: u32, f: &FdbEntry) -> Result<(), KernelError> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.header.ifindex = index;
        msg.header.flags = NeighbourFlags::Own;
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(f.mac.0.to_vec()));
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(f.dst)));
        let res = self.handle.neighbours().del(msg).execute().await;
        ignore_errnos(res, &[libc::ENOENT, libc::ENODEV], "delete fdb", Show(index, f))
    }
}

/// A unicast FDB entry with a remote IPv4 destination as `(device index, entry, permanent)`.
pub(super) fn parse_fdb(m: &NeighbourMessage) -> Option<(u32, FdbEntry, bool)> {
    let h = &m.header;
    if h.family != AddressFamily::Bridge {
        return None;
    }
    let (mut mac, mut dst) = (None, None);
    for a in &m.attributes {
        match a {
            NeighbourAttribute::LinkLayerAddress(l) => mac = Mac::from_slice(l),
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => dst = Some(*v4),
            // In an AF_BRIDGE message the parser cannot tell NDA_DST's family: raw bytes.
            NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                dst = <[u8; 4]>::try_from(b.as_slice()).ok().map(Ipv4Addr::from)
            }
            _ => {}
        }
    }
    let mac = mac.filter(Mac::is_valid_unicast)?;
    Some((h.ifindex, FdbEntry { mac, dst: dst? }, is_permanent(h.state)))
}

struct Show<'a>(u32, &'a FdbEntry);

impl fmt::Display for Show<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} dev {} dst {}", self.1.mac, self.0, self.1.dst)
    }
}
