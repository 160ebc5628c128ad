//! Choosing the public interface and address, as flanneld does with `--iface`, `--iface-regex`,
//! `--iface-can-reach` and `--public-ip`.

use crate::kernel::{Kernel, LinkInfo};
use ipnet::Ipv4Net;
use regex_lite::Regex;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};

#[derive(Debug, Clone, Default)]
pub struct IfaceOptions {
    /// Interface names or IPv4 addresses, tried in order.
    pub ifaces: Vec<String>,
    /// Regular expressions matched against interface names and addresses, tried in order.
    pub regexes: Vec<String>,
    /// Pick the interface the kernel would use to reach this address.
    pub can_reach: Option<Ipv4Addr>,
    /// Address other hosts use to reach us, when it differs from the interface's (NAT).
    pub public_ip: Option<Ipv4Addr>,
}

/// The interface VXLAN packets leave through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicIface {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    /// The interface's own address: the VXLAN device's `local`.
    pub local_ip: Ipv4Addr,
    /// The address written to our lease (`--public-ip`, else `local_ip`).
    pub public_ip: Ipv4Addr,
    /// The subnet `local_ip` sits in on this link: peers inside it are directly reachable.
    pub local_net: Ipv4Net,
}

#[derive(Debug, thiserror::Error)]
pub enum IfaceError {
    #[error("--iface {0}: no such interface or address on this host")]
    NotFound(String),
    #[error("--iface-regex {0:?}: {1}")]
    BadRegex(String, String),
    #[error("--iface-regex: no interface name or address matches any of {0:?}")]
    NoRegexMatch(Vec<String>),
    #[error("--iface-can-reach {0}: no route from this host: {1}")]
    Unreachable(Ipv4Addr, String),
    #[error("interface {0} has no IPv4 address")]
    NoAddress(String),
    #[error("no default route: give --iface, --iface-regex or --iface-can-reach")]
    NoDefaultRoute,
    #[error(transparent)]
    Kernel(#[from] crate::kernel::KernelError),
}

pub async fn select(kernel: &Kernel, opts: &IfaceOptions) -> Result<PublicIface, IfaceError> {
    let links = kernel.links().await?;
    let with_len: Vec<(u32, Ipv4Addr, u8)> = kernel
        .addresses(None)
        .await?
        .into_iter()
        .filter_map(|(i, ip, len)| match ip {
            IpAddr::V4(v4) => Some((i, v4, len)),
            IpAddr::V6(_) => None,
        })
        .collect();
    let addrs: Vec<(u32, Ipv4Addr)> = with_len.iter().map(|(i, ip, _)| (*i, *ip)).collect();
    let first_v4 = |index: u32| addrs.iter().find(|(i, _)| *i == index).map(|(_, ip)| *ip);
    let by_ip = |ip: Ipv4Addr| addrs.iter().find(|(_, a)| *a == ip).map(|(i, _)| *i);
    let link = |index: u32| links.iter().find(|l| l.index == index);

    let (chosen, local): (&LinkInfo, Option<Ipv4Addr>) = if !opts.ifaces.is_empty() {
        opts.ifaces
            .iter()
            .find_map(|want| match want.parse::<Ipv4Addr>() {
                Ok(ip) => by_ip(ip).and_then(link).map(|l| (l, Some(ip))),
                Err(_) => links.iter().find(|l| &l.name == want).map(|l| (l, first_v4(l.index))),
            })
            .ok_or_else(|| IfaceError::NotFound(opts.ifaces.join(",")))?
    } else if !opts.regexes.is_empty() {
        let names: Vec<(u32, &str)> = links.iter().map(|l| (l.index, l.name.as_str())).collect();
        let (index, ip) =
            by_regex(&opts.regexes, &addrs, &names)?.ok_or_else(|| IfaceError::NoRegexMatch(opts.regexes.clone()))?;
        let l = link(index).ok_or_else(|| IfaceError::NoRegexMatch(opts.regexes.clone()))?;
        (l, ip.or_else(|| first_v4(index)))
    } else if let Some(dst) = opts.can_reach {
        let src = source_for(dst).map_err(|e| IfaceError::Unreachable(dst, e.to_string()))?;
        let index =
            by_ip(src).ok_or_else(|| IfaceError::Unreachable(dst, format!("source {src} is on no interface")))?;
        (
            link(index).ok_or_else(|| IfaceError::NotFound(src.to_string()))?,
            Some(src),
        )
    } else {
        let index = kernel.default_route_oif().await?.ok_or(IfaceError::NoDefaultRoute)?;
        let l = link(index).ok_or(IfaceError::NoDefaultRoute)?;
        (l, first_v4(index))
    };

    let local_ip = local.ok_or_else(|| IfaceError::NoAddress(chosen.name.clone()))?;
    let prefix = with_len
        .iter()
        .find(|(i, ip, _)| *i == chosen.index && *ip == local_ip)
        .map_or(32, |a| a.2);
    let local_net = Ipv4Net::new(local_ip, prefix)
        .map(|n| n.trunc())
        .unwrap_or(Ipv4Net::from(local_ip));
    Ok(PublicIface {
        local_net,
        index: chosen.index,
        name: chosen.name.clone(),
        mtu: chosen.mtu,
        local_ip,
        public_ip: opts.public_ip.unwrap_or(local_ip),
    })
}

/// flanneld's `--iface-regex`: each pattern in turn, first against the addresses, then against the
/// interface names; the first match wins (interface index, and the address if one matched).
fn by_regex(
    patterns: &[String],
    addrs: &[(u32, Ipv4Addr)],
    names: &[(u32, &str)],
) -> Result<Option<(u32, Option<Ipv4Addr>)>, IfaceError> {
    for pattern in patterns {
        let re = Regex::new(pattern).map_err(|e| IfaceError::BadRegex(pattern.clone(), e.to_string()))?;
        if let Some((i, ip)) = addrs.iter().find(|(_, ip)| re.is_match(&ip.to_string())) {
            return Ok(Some((*i, Some(*ip))));
        }
        if let Some((i, _)) = names.iter().find(|(_, name)| re.is_match(name)) {
            return Ok(Some((*i, None)));
        }
    }
    Ok(None)
}

/// The source address the kernel would pick to reach `dst` (a connected UDP socket sends nothing).
fn source_for(dst: Ipv4Addr) -> std::io::Result<Ipv4Addr> {
    let sock = UdpSocket::bind("0.0.0.0:0")?;
    sock.connect(SocketAddr::new(IpAddr::V4(dst), 9))?;
    match sock.local_addr()?.ip() {
        IpAddr::V4(ip) => Ok(ip),
        IpAddr::V6(_) => Err(std::io::Error::other("IPv6 source")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pats(p: &[&str]) -> Vec<String> {
        p.iter().map(|s| s.to_string()).collect()
    }

    const ADDRS: [(u32, Ipv4Addr); 3] = [
        (1, Ipv4Addr::new(127, 0, 0, 1)),
        (2, Ipv4Addr::new(192, 0, 2, 10)),
        (3, Ipv4Addr::new(198, 51, 100, 7)),
    ];
    const NAMES: [(u32, &str); 3] = [(1, "lo"), (2, "eth0"), (3, "bond0.100")];

    #[test]
    fn iface_regex_matches_addresses_before_names_and_patterns_in_order() {
        // flannel's usual forms: an address range, an interface name pattern.
        let got = by_regex(&pats(&[r"^198\.51\.100\.\d+$"]), &ADDRS, &NAMES).unwrap();
        assert_eq!(got, Some((3, Some(Ipv4Addr::new(198, 51, 100, 7)))));
        let got = by_regex(&pats(&[r"^bond\d+\.\d+$"]), &ADDRS, &NAMES).unwrap();
        assert_eq!(got, Some((3, None)));
        // The first pattern that matches anything wins, even if a later one matches earlier.
        let got = by_regex(&pats(&["^nomatch$", "^eth[0-9]$", "^lo$"]), &ADDRS, &NAMES).unwrap();
        assert_eq!(got, Some((2, None)));
        // An address match wins over a name match of the same pattern.
        let got = by_regex(&pats(&["0"]), &ADDRS, &NAMES).unwrap();
        assert_eq!(got, Some((1, Some(Ipv4Addr::new(127, 0, 0, 1)))));
        assert_eq!(by_regex(&pats(&["^wlan"]), &ADDRS, &NAMES).unwrap(), None);
    }

    #[test]
    fn a_bad_iface_regex_is_a_clear_error() {
        let err = by_regex(&pats(&["eth(0"]), &ADDRS, &NAMES).unwrap_err();
        assert!(matches!(&err, IfaceError::BadRegex(p, _) if p == "eth(0"), "{err}");
        assert!(err.to_string().starts_with("--iface-regex \"eth(0\": "), "{err}");
    }
}
