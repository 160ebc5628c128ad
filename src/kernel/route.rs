//! IPv4 routes in the main table.

use super::{ignore_errnos, nl_error, Kernel, KernelError};
use crate::planner::state::RouteEntry;
use futures::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::AddressFamily;
use rtnetlink::RouteMessageBuilder;
use std::fmt;
use std::net::Ipv4Addr;

const RT_TABLE_MAIN: u32 = RouteHeader::RT_TABLE_MAIN as u32;

impl Kernel {
    /// IPv4 main-table unicast routes whose output interface is `oif`, any protocol.
    /// A route without a gateway (`dev X` only) is reported with gateway 0.0.0.0.
    pub async fn routes(&self, oif: u32) -> Result<Vec<RouteEntry>, KernelError> {
        self.routes_on(&[oif]).await
    }

    /// [`Kernel::routes`] for several devices, in one dump.
    pub async fn routes_on<C: FromIterator<RouteEntry>>(&self, oifs: &[u32]) -> Result<C, KernelError> {
        let what = oifs.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
        let msgs = self.dump_ipv4_routes(what).await?;
        Ok(msgs
            .iter()
            .filter_map(parse_main_unicast)
            .filter(|r| oifs.contains(&r.oif))
            .collect())
    }

    /// The output interface of the IPv4 default route in the main table (the lowest metric one
    /// if there are several).
    pub async fn default_route_oif(&self) -> Result<Option<u32>, KernelError> {
        let msgs = self.dump_ipv4_routes("default").await?;
        let best = msgs
            .iter()
            .filter(|m| m.header.destination_prefix_length == 0)
            .filter_map(|m| Some((priority(m), parse_main_unicast(m)?.oif)))
            .filter(|(_, oif)| *oif != 0)
            .min();
        Ok(best.map(|(_, oif)| oif))
    }

    /// `ip route replace DST via GW dev OIF [onlink] proto P` (main table, scope universe).
    pub async fn ensure_route(&self, route: &RouteEntry) -> Result<(), KernelError> {
        let msg = route_message(route, RouteScope::Universe);
        let res = self.handle.route().add(msg).replace().execute().await;
        res.map_err(|e| nl_error("add route", Show(route), e))
    }

    /// Deletes exactly this route; one that is already gone (or whose device is) is success.
    pub async fn remove_route(&self, route: &RouteEntry) -> Result<(), KernelError> {
        // Scope NOWHERE matches any scope on delete, as `ip route del` does, so a route read by
        // routes() can be deleted even if it is not one of ours (scope is not in RouteEntry).
        let msg = route_message(route, RouteScope::NoWhere);
        let res = self.handle.route().del(msg).execute().await;
        ignore_errnos(
            res,
            &[libc::ESRCH, libc::ENOENT, libc::ENODEV],
            "delete route",
            Show(route),
        )
    }

    /// One dump of every IPv4 route (all tables: the non-strict dump ignores header filters).
    async fn dump_ipv4_routes(&self, what: impl fmt::Display) -> Result<Vec<RouteMessage>, KernelError> {
        let mut query = RouteMessage::default();
        query.header.address_family = AddressFamily::Inet;
        self.handle
            .route()
            .get(query)
            .execute()
            .try_collect()
            .await
            .map_err(|e| nl_error("dump routes", what, e))
    }
}

fn route_message(r: &RouteEntry, scope: RouteScope) -> RouteMessage {
    let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(r.dst.addr(), r.dst.prefix_len())
        .output_interface(r.oif)
        .protocol(RouteProtocol::from(r.protocol))
        .scope(scope)
        .kind(RouteType::Unicast)
        .table_id(RT_TABLE_MAIN);
    if !r.gateway.is_unspecified() {
        b = b.gateway(r.gateway);
    }
    if r.onlink {
        b = b.onlink();
    }
    b.build()
}

fn priority(m: &RouteMessage) -> u32 {
    m.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Priority(p) => Some(*p),
            _ => None,
        })
        .unwrap_or(0)
}

/// An IPv4 unicast route of the main table as a RouteEntry (oif 0 when it has none, e.g.
/// multipath); None for anything else.
pub(super) fn parse_main_unicast(m: &RouteMessage) -> Option<RouteEntry> {
    let h = &m.header;
    if h.address_family != AddressFamily::Inet || h.kind != RouteType::Unicast {
        return None;
    }
    // RTA_TABLE carries the full 32-bit id; the header byte is only a fallback.
    let mut table = u32::from(h.table);
    let (mut dst, mut gateway, mut oif) = (Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED, 0);
    for a in &m.attributes {
        match a {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = *ip,
            RouteAttribute::Gateway(RouteAddress::Inet(ip)) => gateway = *ip,
            RouteAttribute::Oif(i) => oif = *i,
            _ => {}
        }
    }
    if table != RT_TABLE_MAIN {
        return None;
    }
    Some(RouteEntry {
        dst: Ipv4Net::new(dst, h.destination_prefix_length).ok()?,
        gateway,
        oif,
        onlink: h.flags.contains(RouteFlags::Onlink),
        protocol: u8::from(h.protocol),
    })
}

/// `10.0.48.0/24 via 10.0.48.0 dev 7`, the way `ip route` would say it.
struct Show<'a>(&'a RouteEntry);

impl fmt::Display for Show<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.0;
        write!(f, "{} via {} dev {}", r.dst, r.gateway, r.oif)?;
        if r.onlink {
            write!(f, " onlink")?;
        }
        write!(f, " proto {}", r.protocol)
    }
}
