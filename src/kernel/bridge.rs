//! L2 networks' kernel objects: the bridge, the VXLAN device as its port, the bridge's FDB
//! entries pointing at that port, the flood list, and a gratuitous ARP sender.
//!
//! Everything goes over rtnetlink (0.24 with netlink-packet-route 0.34 has the bridge port
//! attributes, `IFLA_BRPORT_NEIGH_SUPPRESS` included), except the flood list's `append`, which
//! rtnetlink's builder lacks and is sent as a raw `RTM_NEWNEIGH` with `NLM_F_APPEND`, and the
//! gratuitous ARP, sent from an `AF_PACKET` socket.

use super::{errno_of, ignore_errnos, nl_error, Kernel, KernelError, LinkInfo};
use crate::mac::Mac;
use crate::planner::endpoints::ObservedL2;
use crate::planner::state::FdbEntry;
use futures::{StreamExt, TryStreamExt};
use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{LinkBridge, LinkBridgePort, LinkUnspec};
use std::net::Ipv4Addr;

const NUD_NOARP: u16 = 0x40;

impl Kernel {
    /// `ip link add NAME type bridge` (STP off, the kernel's default), then reads it back.
    /// EEXIST if the name is taken.
    pub async fn create_bridge(&self, name: &str) -> Result<LinkInfo, KernelError> {
        self.handle
            .link()
            .add(LinkBridge::new(name).build())
            .execute()
            .await
            .map_err(|e| nl_error("add link", format!("bridge {name}"), e))?;
        self.link_by_name(name)
            .await?
            .ok_or_else(|| KernelError::NoSuchLink(name.into()))
    }

    /// `ip link set PORT master BRIDGE`.
    pub async fn set_master(&self, port: u32, bridge: u32) -> Result<(), KernelError> {
        let msg = LinkUnspec::new_with_index(port).controller(bridge).build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| nl_error("set master", format!("dev {port} master {bridge}"), e))
    }

    /// `ip link set PORT type bridge_slave learning off neigh_suppress on`: the bridge learns
    /// nothing from the tunnel and answers ARP/ND for remote endpoints itself.
    pub async fn set_tunnel_port(&self, port: u32) -> Result<(), KernelError> {
        let msg = LinkBridgePort::new(port).learning(false).neigh_suppress(true).build();
        let req = self.handle.link().set_port(msg);
        let res = req.execute().await;
        res.map_err(|e| {
            nl_error(
                "set bridge port",
                format!("dev {port} learning off neigh_suppress on"),
                e,
            )
        })
    }

    /// The bridge port flags of `port` as `(learning, neigh_suppress)`, `None` if it is no port.
    pub async fn tunnel_port_flags(&self, port: u32) -> Result<Option<(bool, bool)>, KernelError> {
        use netlink_packet_route::link::{InfoBridgePort, InfoPortData, LinkAttribute, LinkInfo as NlLinkInfo};
        let mut stream = self.handle.link().get().match_index(port).execute();
        let msg = match stream.try_next().await {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(None),
            Err(e) if errno_of(&e) == Some(libc::ENODEV) => return Ok(None),
            Err(e) => return Err(nl_error("get link", port, e)),
        };
        let (mut learning, mut suppress, mut found) = (true, false, false);
        for a in &msg.attributes {
            if let LinkAttribute::LinkInfo(infos) = a {
                for i in infos {
                    if let NlLinkInfo::PortData(InfoPortData::BridgePort(ps)) = i {
                        found = true;
                        for p in ps {
                            match p {
                                InfoBridgePort::Learning(v) => learning = *v,
                                InfoBridgePort::NeighSupress(v) => suppress = *v,
                                _ => {}
                            }
                        }
                    }
                }
            }
        }
        Ok(found.then_some((learning, suppress)))
    }

    /// `bridge fdb replace MAC dev PORT master static`: the bridge sends frames for MAC to the
    /// tunnel port (and, with `neigh_suppress`, answers ARP for its IP).
    pub async fn ensure_bridge_fdb(&self, port: u32, mac: Mac) -> Result<(), KernelError> {
        let res = self
            .handle
            .neighbours()
            .add_bridge(port, &mac.0)
            .flags(NeighbourFlags::Controller)
            .state(NeighbourState::Noarp)
            .replace()
            .execute()
            .await;
        res.map_err(|e| nl_error("add bridge fdb", format!("{mac} dev {port} master static"), e))
    }

    /// `bridge fdb del MAC dev PORT master`; an absent entry is success.
    pub async fn remove_bridge_fdb(&self, port: u32, mac: Mac) -> Result<(), KernelError> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.header.ifindex = port;
        msg.header.flags = NeighbourFlags::Controller;
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
        let res = self.handle.neighbours().del(msg).execute().await;
        ignore_errnos(
            res,
            &[libc::ENOENT, libc::ENODEV],
            "delete bridge fdb",
            format!("{mac} dev {port} master"),
        )
    }

    /// `bridge fdb append 00:00:00:00:00:00 dev VXLAN dst HOST self permanent`: one more host
    /// in the flood list. An entry already there is success.
    pub async fn add_flood(&self, vxlan: u32, host: Ipv4Addr) -> Result<(), KernelError> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.header.ifindex = vxlan;
        msg.header.flags = NeighbourFlags::Own;
        msg.header.state = NeighbourState::Permanent;
        msg.attributes.push(NeighbourAttribute::LinkLayerAddress(vec![0; 6]));
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(host)));
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::NewNeighbour(msg));
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND;
        let object = format!("00:00:00:00:00:00 dev {vxlan} dst {host} (append)");
        let mut handle = self.handle.clone();
        let mut answers = handle.request(req).map_err(|e| nl_error("append fdb", &object, e))?;
        while let Some(m) = answers.next().await {
            if let NetlinkPayload::Error(err) = m.payload {
                let res = Err(rtnetlink::Error::NetlinkError(err));
                return ignore_errnos(res, &[libc::EEXIST], "append fdb", &object);
            }
        }
        Ok(())
    }

    /// Removes `host` from the flood list; absent is success.
    pub async fn remove_flood(&self, vxlan: u32, host: Ipv4Addr) -> Result<(), KernelError> {
        self.remove_fdb(
            vxlan,
            &FdbEntry {
                mac: Mac::ZERO,
                dst: host,
            },
        )
        .await
    }

    /// What weft would have put on an L2 network's devices: one AF_BRIDGE dump for the FDBs,
    /// one neighbour dump for the bridge.
    pub async fn observe_l2(&self, vxlan: u32, bridge: u32) -> Result<ObservedL2, KernelError> {
        let req = self.handle.neighbours().get().set_address_family(AddressFamily::Bridge);
        let msgs: Vec<NeighbourMessage> = req
            .execute()
            .try_collect()
            .await
            .map_err(|e| nl_error("dump fdb", format!("dev {vxlan}"), e))?;
        let mut o = ObservedL2::default();
        for m in msgs.iter().filter(|m| m.header.ifindex == vxlan) {
            let state = u16::from(m.header.state);
            let mut mac = None;
            let mut dst = None;
            for a in &m.attributes {
                match a {
                    NeighbourAttribute::LinkLayerAddress(l) => mac = Mac::from_slice(l),
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => dst = Some(*v4),
                    NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                        dst = <[u8; 4]>::try_from(b.as_slice()).ok().map(Ipv4Addr::from)
                    }
                    _ => {}
                }
            }
            let Some(mac) = mac else { continue };
            if m.header.flags.contains(NeighbourFlags::Own) {
                match dst {
                    Some(d) if mac.is_zero() => {
                        o.flood.insert(d);
                    }
                    Some(d) if mac.is_valid_unicast() && super::is_permanent(m.header.state) => {
                        o.fdbs.insert(FdbEntry { mac, dst: d });
                    }
                    _ => {}
                }
            } else if state & NUD_NOARP != 0 && mac.is_valid_unicast() {
                // A static entry on the tunnel port: the bridge's own ("permanent", the port's
                // MAC) has NUD_PERMANENT and is left out. (The bridge's dump does not set
                // NTF_MASTER, the flag such entries are added and deleted with: it names the
                // bridge in NDA_MASTER. Entries without NTF_SELF are the bridge's.)
                if !super::is_permanent(m.header.state) {
                    o.bridge_fdbs.insert(mac);
                }
            }
        }
        o.neighs = self.neighs(bridge).await?.into_iter().collect();
        Ok(o)
    }
}

/// Sends a gratuitous ARP (a request for `ip` from `ip` at `mac`, to the broadcast address) out
/// of device `ifindex`, from an `AF_PACKET` socket opened in the calling thread's namespace.
pub fn send_gratuitous_arp(ifindex: u32, mac: Mac, ip: Ipv4Addr) -> Result<(), KernelError> {
    let frame = gratuitous_arp(mac, ip);
    let err = |op: &'static str| KernelError::Netlink {
        op,
        object: format!("gratuitous ARP {ip} at {mac} on dev {ifindex}"),
        message: std::io::Error::last_os_error().to_string(),
        errno: std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
    };
    // SAFETY: plain socket calls on a descriptor we own and close; the address struct is
    // zero-initialised and fully set before use.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(err("socket AF_PACKET"));
        }
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = (libc::ETH_P_ARP as u16).to_be();
        addr.sll_ifindex = ifindex as i32;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&[0xff; 6]);
        let n = libc::sendto(
            fd,
            frame.as_ptr().cast(),
            frame.len(),
            0,
            std::ptr::addr_of!(addr).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        );
        let result = if n < 0 { Err(err("sendto")) } else { Ok(()) };
        libc::close(fd);
        result
    }
}

/// The Ethernet frame of a gratuitous ARP request: who-has `ip` tell `ip`, from `mac`.
pub fn gratuitous_arp(mac: Mac, ip: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend([0xff; 6]);
    f.extend(mac.0);
    f.extend([0x08, 0x06]); // ARP
    f.extend([0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01]); // Ethernet/IPv4, request
    f.extend(mac.0);
    f.extend(ip.octets());
    f.extend([0; 6]);
    f.extend(ip.octets());
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gratuitous_arp_is_a_request_for_its_own_address() {
        let mac = Mac([2, 0, 0, 0, 0, 9]);
        let f = gratuitous_arp(mac, Ipv4Addr::new(10, 50, 0, 9));
        assert_eq!(f.len(), 42);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[20..22], &[0, 1]);
        assert_eq!(&f[22..28], &mac.0);
        assert_eq!(&f[28..32], &f[38..42]);
    }
}
