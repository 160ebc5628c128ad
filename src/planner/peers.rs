//! From store entries to the peers this host should program, and the leases it must refuse.

use crate::config::NetworkConfig;
use crate::lease::{Lease, LeaseError};
use crate::mac::Mac;
use crate::store::Entry;
use ipnet::Ipv4Net;
use std::collections::HashMap;
use std::fmt;
use std::net::Ipv4Addr;

/// This host, as far as the planner cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Host {
    pub public_ip: Ipv4Addr,
    /// Our own leased subnet, once we hold one.
    pub subnet: Option<Ipv4Net>,
}

/// A remote host whose entries this host programs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub key: String,
    pub subnet: Ipv4Net,
    pub public_ip: Ipv4Addr,
    pub vtep_mac: Mac,
}

impl Peer {
    /// The peer's VTEP address: the network address of its subnet, on its `flannel.N` device.
    pub fn vtep_ip(&self) -> Ipv4Addr {
        self.subnet.network()
    }
}

/// Why a lease is not programmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    Malformed(LeaseError),
    OutsideNetwork { network: Ipv4Net },
    WrongLength { want: u8 },
    VniMismatch { want: u32, got: u32 },
    BadPublicIp { why: &'static str },
    OwnPublicIp,
    BadVtepMac,
    DuplicateVtepMac { other: Ipv4Net },
    DuplicatePublicIp { other: Ipv4Net },
}

impl Rejection {
    /// A short, stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::Malformed(e) => e.reason(),
            Rejection::OutsideNetwork { .. } => "outside_network",
            Rejection::WrongLength { .. } => "wrong_length",
            Rejection::VniMismatch { .. } => "vni_mismatch",
            Rejection::BadPublicIp { .. } => "bad_public_ip",
            Rejection::OwnPublicIp => "own_public_ip",
            Rejection::BadVtepMac => "bad_vtep_mac",
            Rejection::DuplicateVtepMac { .. } => "duplicate_vtep_mac",
            Rejection::DuplicatePublicIp { .. } => "duplicate_public_ip",
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::Malformed(e) => write!(f, "{e}"),
            Rejection::OutsideNetwork { network } => write!(f, "subnet is outside the network {network}"),
            Rejection::WrongLength { want } => write!(f, "subnet length is not the network's SubnetLen /{want}"),
            Rejection::VniMismatch { want, got } => write!(f, "VNI {got} is not the network's VNI {want}"),
            Rejection::BadPublicIp { why } => write!(f, "public IP is {why}"),
            Rejection::OwnPublicIp => write!(f, "public IP is this host's own, but the subnet is not ours"),
            Rejection::BadVtepMac => write!(f, "VTEP MAC is multicast or all zeros"),
            Rejection::DuplicateVtepMac { other } => write!(f, "VTEP MAC is already used by the lease for {other}"),
            Rejection::DuplicatePublicIp { other } => write!(f, "public IP is already used by the lease for {other}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub key: String,
    pub rejection: Rejection,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerSet {
    pub peers: Vec<Peer>,
    pub rejected: Vec<Rejected>,
}

/// Why `ip` cannot be a peer's underlay address, if it cannot. An address inside the overlay
/// network would send VXLAN into the overlay itself (a loop).
fn public_ip_problem(ip: Ipv4Addr, overlay: Ipv4Net) -> Option<&'static str> {
    let first = ip.octets()[0];
    if ip.is_unspecified() {
        Some("unspecified")
    } else if first == 0 {
        Some("in 0.0.0.0/8 (this network)")
    } else if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if ip.is_broadcast() {
        Some("broadcast")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if first >= 240 {
        Some("reserved (240.0.0.0/4)")
    } else if overlay.contains(&ip) {
        Some("inside the overlay network")
    } else {
        None
    }
}

fn check(cfg: &NetworkConfig, host: &Host, lease: &Lease) -> Result<(), Rejection> {
    if !cfg.network.contains(&lease.subnet) {
        return Err(Rejection::OutsideNetwork { network: cfg.network });
    }
    if lease.subnet.prefix_len() != cfg.subnet_len {
        return Err(Rejection::WrongLength { want: cfg.subnet_len });
    }
    if lease.vni != cfg.backend.vni {
        return Err(Rejection::VniMismatch {
            want: cfg.backend.vni,
            got: lease.vni,
        });
    }
    if let Some(why) = public_ip_problem(lease.public_ip, cfg.network) {
        return Err(Rejection::BadPublicIp { why });
    }
    if lease.public_ip == host.public_ip {
        return Err(Rejection::OwnPublicIp);
    }
    if !lease.vtep_mac.is_valid_unicast() {
        return Err(Rejection::BadVtepMac);
    }
    Ok(())
}

/// A store entry with its lease parsed once, when it arrives: the agent keeps these, so that a
/// change to one lease does not re-parse all the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedLease {
    pub entry: Entry,
    pub lease: Result<Lease, LeaseError>,
}

impl ParsedLease {
    pub fn new(entry: Entry) -> ParsedLease {
        let lease = Lease::from_entry(&entry);
        ParsedLease { entry, lease }
    }
}

/// Sorts store entries into peers and refusals. Our own lease is neither. Deterministic: a
/// VTEP MAC or public IP claimed twice stays with our own lease, else with the older lease
/// (lower create revision); one host has one lease.
pub fn select_peers<'a>(cfg: &NetworkConfig, host: &Host, entries: impl IntoIterator<Item = &'a Entry>) -> PeerSet {
    let parsed: Vec<ParsedLease> = entries.into_iter().cloned().map(ParsedLease::new).collect();
    select_parsed(cfg, host, &parsed)
}

/// [`select_peers`] over leases parsed already.
pub fn select_parsed<'a>(
    cfg: &NetworkConfig,
    host: &Host,
    leases: impl IntoIterator<Item = &'a ParsedLease>,
) -> PeerSet {
    let mut sorted: Vec<&ParsedLease> = leases.into_iter().collect();
    sorted.sort_by(|a, b| (a.entry.create_revision, &a.entry.key).cmp(&(b.entry.create_revision, &b.entry.key)));

    let mut out = PeerSet::default();
    let mut macs: HashMap<Mac, Ipv4Net> = HashMap::new();
    let mut ips: HashMap<Ipv4Addr, Ipv4Net> = HashMap::new();
    // Refusals in entry order: (position, refusal).
    let mut rejected = Vec::new();
    let mut leases = Vec::with_capacity(sorted.len());
    for (i, parsed) in sorted.into_iter().enumerate() {
        let entry = &parsed.entry;
        match &parsed.lease {
            // Ours claims its MAC first, whatever its age.
            Ok(l) if Some(l.subnet) == host.subnet => {
                macs.insert(l.vtep_mac, l.subnet);
            }
            Ok(l) => leases.push((i, entry, l)),
            Err(e) => rejected.push((
                i,
                Rejected {
                    key: entry.key.clone(),
                    rejection: Rejection::Malformed(e.clone()),
                },
            )),
        }
    }
    for (i, entry, lease) in leases {
        let verdict = check(cfg, host, lease).and_then(|()| {
            if let Some(&other) = macs.get(&lease.vtep_mac) {
                Err(Rejection::DuplicateVtepMac { other })
            } else if let Some(&other) = ips.get(&lease.public_ip) {
                Err(Rejection::DuplicatePublicIp { other })
            } else {
                Ok(())
            }
        });
        match verdict {
            Ok(()) => {
                macs.insert(lease.vtep_mac, lease.subnet);
                ips.insert(lease.public_ip, lease.subnet);
                out.peers.push(Peer {
                    key: entry.key.clone(),
                    subnet: lease.subnet,
                    public_ip: lease.public_ip,
                    vtep_mac: lease.vtep_mac,
                });
            }
            Err(rejection) => rejected.push((
                i,
                Rejected {
                    key: entry.key.clone(),
                    rejection,
                },
            )),
        }
    }
    rejected.sort_by_key(|(i, _)| *i);
    out.rejected = rejected.into_iter().map(|(_, r)| r).collect();
    out.peers.sort_by_key(|p| p.subnet);
    out
}

/// The store's leases, parsed, with how many claim each VTEP MAC and public IP: enough to tell
/// when a change to one lease cannot change the verdict on any other.
#[derive(Debug, Clone, Default)]
pub struct LeaseTable {
    leases: std::collections::BTreeMap<String, ParsedLease>,
    macs: HashMap<Mac, u32>,
    ips: HashMap<Ipv4Addr, u32>,
}

impl LeaseTable {
    pub fn get(&self, key: &str) -> Option<&ParsedLease> {
        self.leases.get(key)
    }

    pub fn values(&self) -> impl Iterator<Item = &ParsedLease> {
        self.leases.values()
    }

    pub fn len(&self) -> usize {
        self.leases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    pub fn clear(&mut self) {
        *self = LeaseTable::default();
    }

    /// Inserts or replaces; returns the lease it replaced.
    pub fn insert(&mut self, p: ParsedLease) -> Option<ParsedLease> {
        if let Ok(l) = &p.lease {
            *self.macs.entry(l.vtep_mac).or_default() += 1;
            *self.ips.entry(l.public_ip).or_default() += 1;
        }
        let old = self.leases.insert(p.entry.key.clone(), p);
        if let Some(o) = &old {
            self.uncount(o);
        }
        old
    }

    pub fn remove(&mut self, key: &str) -> Option<ParsedLease> {
        let old = self.leases.remove(key);
        if let Some(o) = &old {
            self.uncount(o);
        }
        old
    }

    fn uncount(&mut self, p: &ParsedLease) {
        if let Ok(l) = &p.lease {
            for n in [self.macs.get_mut(&l.vtep_mac), self.ips.get_mut(&l.public_ip)]
                .into_iter()
                .flatten()
            {
                *n = n.saturating_sub(1);
            }
            self.macs.retain(|_, n| *n > 0);
            self.ips.retain(|_, n| *n > 0);
        }
    }

    /// How many leases claim this MAC and this public IP.
    fn claims(&self, l: &Lease) -> (u32, u32) {
        (
            self.macs.get(&l.vtep_mac).copied().unwrap_or(0),
            self.ips.get(&l.public_ip).copied().unwrap_or(0),
        )
    }
}

/// A peer set changed by one lease: the peer it had before and has now (either may be none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerDelta {
    pub before: Option<Peer>,
    pub after: Option<Peer>,
}

/// Brings `set` (as [`select_parsed`] made it from `table` before the change) up to date after
/// the lease at `key` changed from `old` to what `table` holds now, without looking at the other
/// leases. Returns `None`, leaving `set` alone, when the change could alter the verdict on
/// another lease (a VTEP MAC or public IP shared with one) or concerns our own lease: the
/// caller then selects again from scratch. The result equals [`select_parsed`]'s, up to the
/// order of the refusals.
pub fn update_selection(
    cfg: &NetworkConfig,
    host: &Host,
    set: &mut PeerSet,
    table: &LeaseTable,
    key: &str,
    old: Option<&ParsedLease>,
) -> Option<PeerDelta> {
    let new = table.get(key);
    let ours = |p: Option<&ParsedLease>| {
        p.and_then(|p| p.lease.as_ref().ok())
            .is_some_and(|l| Some(l.subnet) == host.subnet)
    };
    if ours(old) || ours(new) {
        return None;
    }
    let new_lease = new.and_then(|p| p.lease.as_ref().ok());
    // The old claims must now be held by nobody but the new version; the new ones by it alone.
    if let Some(o) = old.and_then(|p| p.lease.as_ref().ok()) {
        let (macs, ips) = table.claims(o);
        let kept = |same: bool| u32::from(same);
        if macs != kept(new_lease.is_some_and(|n| n.vtep_mac == o.vtep_mac))
            || ips != kept(new_lease.is_some_and(|n| n.public_ip == o.public_ip))
        {
            return None;
        }
    }
    if let Some(n) = new_lease {
        if table.claims(n) != (1, 1) {
            return None;
        }
    }

    let mut delta = PeerDelta::default();
    if let Some(i) = set.peers.iter().position(|p| p.key == key) {
        delta.before = Some(set.peers.remove(i));
    }
    set.rejected.retain(|r| r.key != key);
    let Some(new) = new else { return Some(delta) };
    let verdict = match &new.lease {
        Err(e) => Err(Rejection::Malformed(e.clone())),
        Ok(l) => check(cfg, host, l).map(|()| l),
    };
    match verdict {
        Ok(l) => {
            let peer = Peer {
                key: key.to_string(),
                subnet: l.subnet,
                public_ip: l.public_ip,
                vtep_mac: l.vtep_mac,
            };
            let at = set.peers.partition_point(|p| p.subnet < peer.subnet);
            set.peers.insert(at, peer.clone());
            delta.after = Some(peer);
        }
        Err(rejection) => set.rejected.push(Rejected {
            key: key.to_string(),
            rejection,
        }),
    }
    Some(delta)
}
