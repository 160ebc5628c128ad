//! Interface addresses.

use super::{ignore_errnos, nl_error, Kernel, KernelError};
use futures::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::AddressMessageBuilder;
use std::net::{IpAddr, Ipv4Addr};

impl Kernel {
    /// Addresses as `(ifindex, ip, prefix_len)`, IPv4 and IPv6, on `index` or on every link.
    pub async fn addresses(&self, index: Option<u32>) -> Result<Vec<(u32, IpAddr, u8)>, KernelError> {
        let mut req = self.handle.address().get();
        if let Some(i) = index {
            req = req.set_link_index_filter(i);
        }
        let msgs: Vec<AddressMessage> = req
            .execute()
            .try_collect()
            .await
            .map_err(|e| nl_error("dump addresses", index.map_or("all".into(), |i| i.to_string()), e))?;
        Ok(msgs.iter().filter_map(parse_address).collect())
    }

    /// `ip addr add ADDR dev INDEX`; an address that is already there is success.
    pub async fn ensure_address(&self, index: u32, addr: Ipv4Net) -> Result<(), KernelError> {
        let res = self
            .handle
            .address()
            .add(index, IpAddr::V4(addr.addr()), addr.prefix_len())
            .execute()
            .await;
        ignore_errnos(res, &[libc::EEXIST], "add address", format!("{addr} dev {index}"))
    }

    /// `ip addr del ADDR dev INDEX`; an address that is already gone is success.
    pub async fn remove_address(&self, index: u32, addr: Ipv4Net) -> Result<(), KernelError> {
        let msg = AddressMessageBuilder::<Ipv4Addr>::new()
            .index(index)
            .address(addr.addr(), addr.prefix_len())
            .build();
        let res = self.handle.address().del(msg).execute().await;
        // IPv4 answers EADDRNOTAVAIL for a missing address; ENOENT kept for safety.
        ignore_errnos(
            res,
            &[libc::EADDRNOTAVAIL, libc::ENOENT],
            "delete address",
            format!("{addr} dev {index}"),
        )
    }
}

fn parse_address(msg: &AddressMessage) -> Option<(u32, IpAddr, u8)> {
    // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer on point-to-point links
    // (and the only one IPv6 sends), so prefer LOCAL.
    let local = msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    let address = || {
        msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        })
    };
    let ip = local.or_else(address)?;
    Some((msg.header.index, ip, msg.header.prefix_len))
}
