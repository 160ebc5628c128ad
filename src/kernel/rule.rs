//! IPv4 policy routing rules (`ip rule`) that send a named network's traffic to its own routing
//! table. Every rule weft adds carries weft's protocol number, so weft only ever lists, keeps or
//! deletes its own.

use super::{ignore_errnos, nl_error, Kernel, KernelError};
use crate::planner::state::ROUTE_PROTO_WEFT;
use futures::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::route::RouteProtocol;
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use netlink_packet_route::AddressFamily;
use rtnetlink::IpVersion;
use std::fmt;
use std::net::IpAddr;

/// `ip rule add [from SRC] [iif DEV] [oif DEV] lookup TABLE priority PRIORITY proto weft`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleEntry {
    pub priority: u32,
    pub table: u32,
    pub from: Option<Ipv4Net>,
    pub iif: Option<String>,
    pub oif: Option<String>,
}

impl fmt::Display for RuleEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.priority)?;
        match &self.from {
            Some(n) => write!(f, " from {n}")?,
            None => write!(f, " from all")?,
        }
        if let Some(d) = &self.iif {
            write!(f, " iif {d}")?;
        }
        if let Some(d) = &self.oif {
            write!(f, " oif {d}")?;
        }
        write!(f, " lookup {}", self.table)
    }
}

impl Kernel {
    /// The IPv4 rules stamped with weft's protocol, in any table.
    pub async fn weft_rules(&self) -> Result<Vec<RuleEntry>, KernelError> {
        let msgs: Vec<RuleMessage> = self
            .handle
            .rule()
            .get(IpVersion::V4)
            .execute()
            .try_collect()
            .await
            .map_err(|e| nl_error("dump rules", "IPv4 rules", e))?;
        Ok(msgs.iter().filter_map(parse_weft_rule).collect())
    }

    /// Adds the rule; one that exists already is success.
    pub async fn ensure_rule(&self, r: &RuleEntry) -> Result<(), KernelError> {
        let mut req = self
            .handle
            .rule()
            .add()
            .v4()
            .table_id(r.table)
            .priority(r.priority)
            .action(RuleAction::ToTable);
        if let Some(n) = r.from {
            req = req.source_prefix(n.network(), n.prefix_len());
        }
        if let Some(d) = &r.iif {
            req = req.input_interface(d.clone());
        }
        if let Some(d) = &r.oif {
            req = req.output_interface(d.clone());
        }
        req.message_mut()
            .attributes
            .push(RuleAttribute::Protocol(RouteProtocol::from(ROUTE_PROTO_WEFT)));
        ignore_errnos(req.execute().await, &[libc::EEXIST], "add rule", r)
    }

    /// Deletes the rule; one that is already gone is success.
    pub async fn remove_rule(&self, r: &RuleEntry) -> Result<(), KernelError> {
        let mut m = RuleMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.action = RuleAction::ToTable;
        m.attributes.push(RuleAttribute::Table(r.table));
        m.attributes.push(RuleAttribute::Priority(r.priority));
        if let Some(n) = r.from {
            m.header.src_len = n.prefix_len();
            m.attributes.push(RuleAttribute::Source(IpAddr::V4(n.network())));
        }
        if let Some(d) = &r.iif {
            m.attributes.push(RuleAttribute::Iifname(d.clone()));
        }
        if let Some(d) = &r.oif {
            m.attributes.push(RuleAttribute::Oifname(d.clone()));
        }
        let res = self.handle.rule().del(m).execute().await;
        ignore_errnos(res, &[libc::ENOENT, libc::ESRCH], "delete rule", r)
    }
}

fn parse_weft_rule(m: &RuleMessage) -> Option<RuleEntry> {
    if m.header.family != AddressFamily::Inet || m.header.action != RuleAction::ToTable {
        return None;
    }
    let mut ours = false;
    let mut r = RuleEntry {
        priority: 0,
        table: u32::from(m.header.table),
        from: None,
        iif: None,
        oif: None,
    };
    for a in &m.attributes {
        match a {
            RuleAttribute::Protocol(p) => ours = u8::from(*p) == ROUTE_PROTO_WEFT,
            RuleAttribute::Priority(p) => r.priority = *p,
            RuleAttribute::Table(t) => r.table = *t,
            RuleAttribute::Source(ip) => {
                let v4 = match ip {
                    IpAddr::V4(v4) => *v4,
                    IpAddr::V6(_) => return None,
                };
                r.from = Ipv4Net::new(v4, m.header.src_len).ok();
            }
            RuleAttribute::Iifname(d) => r.iif = Some(d.clone()),
            RuleAttribute::Oifname(d) => r.oif = Some(d.clone()),
            _ => {}
        }
    }
    ours.then_some(r)
}
