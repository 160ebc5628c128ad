//! IPv4 routes in the handle's routing table (the main table unless [`Kernel::with_table`] said
//! otherwise), and the `unreachable` route that closes a named network's table.

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

pub(super) const RT_TABLE_MAIN: u32 = RouteHeader::RT_TABLE_MAIN as u32;

impl Kernel {
    /// IPv4 unicast routes of this handle's table whose output interface is `oif`, any
    /// protocol. A route without a gateway (`dev X` only) is reported with gateway 0.0.0.0.
    pub async fn routes(&self, oif: u32) -> Result<Vec<RouteEntry>, KernelError> {
        self.routes_on(&[oif]).await
    }

    /// [`Kernel::routes`] for several devices, in one dump.
    pub async fn routes_on<C: FromIterator<RouteEntry>>(&self, oifs: &[u32]) -> Result<C, KernelError> {
        let mut query = RouteMessage::default();
        query.header.address_family = AddressFamily::Inet;
        let table = self.table;
        // Filtered as the messages arrive: a 10,000-peer dump is never held whole.
        let routes: Vec<RouteEntry> = self
            .handle
            .route()
            .get(query)
            .execute()
            .try_filter_map(|m| async move { Ok(parse_unicast(&m, table).filter(|r| oifs.contains(&r.oif))) })
            .try_collect()
            .await
            .map_err(|e| {
                let what = oifs.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
                nl_error("dump routes", format!("dev {what}"), e)
            })?;
        Ok(routes.into_iter().collect())
    }

    /// `ip route replace unreachable DST table T proto P`: in a named network's table, what is
    /// inside the network but not a peer's ends there instead of falling through to the main
    /// table.
    pub async fn ensure_unreachable(&self, dst: Ipv4Net, protocol: u8) -> Result<(), KernelError> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst.network(), dst.prefix_len())
            .protocol(RouteProtocol::from(protocol))
            .scope(RouteScope::Universe)
            .kind(RouteType::Unreachable)
            .table_id(self.table)
            .build();
        let res = self.handle.route().add(msg).replace().execute().await;
        res.map_err(|e| nl_error("add route", format!("unreachable {dst} table {}", self.table), e))
    }

    /// The `unreachable` routes of this handle's table with protocol `protocol`.
    pub async fn unreachable_routes(&self, protocol: u8) -> Result<Vec<Ipv4Net>, KernelError> {
        let msgs = self.dump_ipv4_routes(format!("table {}", self.table)).await?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.kind == RouteType::Unreachable && u8::from(m.header.protocol) == protocol)
            .filter(|m| table_of(m) == self.table)
            .filter_map(|m| Ipv4Net::new(destination(m), m.header.destination_prefix_length).ok())
            .collect())
    }

    /// Deletes an `unreachable` route of this handle's table; one already gone is success.
    pub async fn remove_unreachable(&self, dst: Ipv4Net) -> Result<(), KernelError> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst.network(), dst.prefix_len())
            .scope(RouteScope::NoWhere)
            .kind(RouteType::Unreachable)
            .table_id(self.table)
            .build();
        let res = self.handle.route().del(msg).execute().await;
        ignore_errnos(
            res,
            &[libc::ESRCH, libc::ENOENT],
            "delete route",
            format!("unreachable {dst} table {}", self.table),
        )
    }

    /// Deletes every IPv4 route of this handle's table, which must be a named network's (being
    /// torn down): any other table is left alone. Returns how many there were.
    pub async fn flush_table(&self) -> Result<usize, KernelError> {
        if self.table < crate::network::ROUTE_TABLE_BASE {
            return Ok(0);
        }
        let msgs = self.dump_ipv4_routes(format!("table {}", self.table)).await?;
        let mut n = 0;
        for m in msgs.into_iter().filter(|m| table_of(m) == self.table) {
            let what = format!(
                "{:?} route to {} in table {}",
                m.header.kind,
                destination(&m),
                self.table
            );
            let res = self.handle.route().del(m).execute().await;
            ignore_errnos(res, &[libc::ESRCH, libc::ENOENT, libc::ENODEV], "delete route", what)?;
            n += 1;
        }
        Ok(n)
    }

    /// The output interface of the IPv4 default route in the main table (the lowest metric one
    /// if there are several).
    pub async fn default_route_oif(&self) -> Result<Option<u32>, KernelError> {
        let msgs = self.dump_ipv4_routes("default").await?;
        let best = msgs
            .iter()
            .filter(|m| m.header.destination_prefix_length == 0)
            .filter_map(|m| Some((priority(m), parse_unicast(m, RT_TABLE_MAIN)?.oif)))
            .filter(|(_, oif)| *oif != 0)
            .min();
        Ok(best.map(|(_, oif)| oif))
    }

    /// `ip route replace DST via GW dev OIF [onlink] proto P` (this handle's table, scope
    /// universe).
    pub async fn ensure_route(&self, route: &RouteEntry) -> Result<(), KernelError> {
        let msg = route_message(route, RouteScope::Universe, self.table);
        let res = self.handle.route().add(msg).replace().execute().await;
        res.map_err(|e| nl_error("add route", Show(route), e))
    }

    /// Deletes exactly this route; one that is already gone (or whose device is) is success.
    pub async fn remove_route(&self, route: &RouteEntry) -> Result<(), KernelError> {
        // Scope NOWHERE matches any scope on delete, as `ip route del` does, so a route read by
        // routes() can be deleted even if it is not one of ours (scope is not in RouteEntry).
        let msg = route_message(route, RouteScope::NoWhere, self.table);
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

fn route_message(r: &RouteEntry, scope: RouteScope, table: u32) -> RouteMessage {
    let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(r.dst.addr(), r.dst.prefix_len())
        .output_interface(r.oif)
        .protocol(RouteProtocol::from(r.protocol))
        .scope(scope)
        .kind(RouteType::Unicast)
        .table_id(table);
    if !r.gateway.is_unspecified() {
        b = b.gateway(r.gateway);
    }
    if r.onlink {
        b = b.onlink();
    }
    // Metric 0 sends no attribute: in a delete, that matches any metric (the lowest first).
    if r.metric != 0 {
        b = b.priority(r.metric);
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

/// The route's table: RTA_TABLE carries the full 32-bit id; the header byte is only a fallback.
fn table_of(m: &RouteMessage) -> u32 {
    m.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(m.header.table))
}

fn destination(m: &RouteMessage) -> Ipv4Addr {
    m.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(*ip),
            _ => None,
        })
        .unwrap_or(Ipv4Addr::UNSPECIFIED)
}

/// An IPv4 unicast route of table `want_table` as a RouteEntry (oif 0 when it has none, e.g.
/// multipath); None for anything else.
fn parse_unicast(m: &RouteMessage, want_table: u32) -> Option<RouteEntry> {
    parse_any_unicast(m)
        .filter(|&(table, _)| table == want_table)
        .map(|(_, r)| r)
}

/// An IPv4 unicast route of any table as `(table, entry)`.
pub(super) fn parse_any_unicast(m: &RouteMessage) -> Option<(u32, RouteEntry)> {
    let h = &m.header;
    if h.address_family != AddressFamily::Inet || h.kind != RouteType::Unicast {
        return None;
    }
    let (mut dst, mut gateway, mut oif) = (Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED, 0);
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = *ip,
            RouteAttribute::Gateway(RouteAddress::Inet(ip)) => gateway = *ip,
            RouteAttribute::Oif(i) => oif = *i,
            _ => {}
        }
    }
    let entry = RouteEntry {
        dst: Ipv4Net::new(dst, h.destination_prefix_length).ok()?,
        gateway,
        oif,
        onlink: h.flags.contains(RouteFlags::Onlink),
        protocol: u8::from(h.protocol),
        metric: priority(m),
    };
    Some((table_of(m), entry))
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
        write!(f, " proto {}", r.protocol)?;
        if r.metric != 0 {
            write!(f, " metric {}", r.metric)?;
        }
        Ok(())
    }
}
