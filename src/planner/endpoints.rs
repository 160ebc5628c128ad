//! L2 networks: which endpoint each agent follows where, and what that means in the kernel.
//!
//! Pure. The agent feeds every endpoint the store shows (in store order) into a [`Tracker`],
//! which decides, per MAC, where the endpoint is:
//!
//! - **Moves.** A claim from another host with a higher `Seq` is a move (MAC mobility, RFC 7432
//!   §15): followed at once.
//! - **Duplicate MAC.** A claim from another host that does not raise `Seq` is two hosts
//!   claiming one MAC at once: not followed, the endpoint stays where it was, flagged
//!   `duplicate_mac` until a claim raises `Seq` past both.
//! - **Flapping.** More than `max_moves` moves within `window` (RFC 7432's defaults: 5 in 180 s)
//!   freezes the endpoint at its last host: later claims are remembered but not followed until
//!   `window` has passed without a new one; then the latest claim is followed. Flagged `frozen`.
//! - **Duplicate IP.** Two MACs with one IP: the one registered first (lowest create revision of
//!   its key) is programmed, the others are not; all are flagged `duplicate_ip`.
//!
//! [`Tracker::desired`] then gives the kernel state for one host, and [`plan`] the operations
//! from what the kernel has to that.

use crate::endpoint::Endpoint;
use crate::mac::Mac;
use crate::planner::state::{FdbEntry, NeighEntry};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// Flap damping: more than `max_moves` moves within `window` freezes an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Damping {
    pub max_moves: usize,
    pub window: Duration,
}

impl Default for Damping {
    /// RFC 7432 §15.1's defaults: N = 5 moves within M = 180 s.
    fn default() -> Damping {
        Damping {
            max_moves: 5,
            window: Duration::from_secs(180),
        }
    }
}

/// What happened to an endpoint when a claim came in (for logs and metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Added {
        mac: Mac,
        host: Ipv4Addr,
    },
    Moved {
        mac: Mac,
        from: Ipv4Addr,
        to: Ipv4Addr,
        seq: u64,
    },
    /// A claim from `claimed` that does not raise `Seq` past the one at `kept`.
    DuplicateMac {
        mac: Mac,
        kept: Ipv4Addr,
        claimed: Ipv4Addr,
    },
    /// Too many moves: stays at `at`, the claim from `claimed` is not followed.
    Frozen {
        mac: Mac,
        at: Ipv4Addr,
        claimed: Ipv4Addr,
        moves: usize,
    },
    /// The freeze ended; the endpoint follows the store again (now at `at`).
    Thawed {
        mac: Mac,
        at: Ipv4Addr,
    },
    Removed {
        mac: Mac,
    },
}

/// A problem shown in `/status` (and counted in metrics).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Problem {
    /// `duplicate_ip`, `duplicate_mac` or `frozen`.
    pub kind: String,
    pub mac: String,
    pub ip: Ipv4Addr,
    /// Where the endpoint is followed, then the other hosts claiming it (duplicate_mac, frozen),
    /// or the host of each MAC with the IP (duplicate_ip, this MAC's first).
    pub hosts: Vec<Ipv4Addr>,
    pub detail: String,
}

#[derive(Debug, Clone)]
struct Track {
    /// The endpoint as followed.
    at: Endpoint,
    create_revision: i64,
    /// When the last moves happened (within the window).
    moves: VecDeque<Instant>,
    /// Frozen: the latest claim not followed, and when the freeze ends.
    frozen: Option<(Endpoint, Instant)>,
    /// A same-`Seq` claim from another host.
    conflict: Option<Endpoint>,
}

/// Every endpoint of one network, as this agent follows them.
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    damping: Damping,
    tracks: BTreeMap<Mac, Track>,
}

/// The kernel state one host wants for an L2 network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// Endpoints on other hosts: MAC → (IP, host).
    pub remote: BTreeMap<Mac, (Ipv4Addr, Ipv4Addr)>,
    /// Endpoints on this host: MAC → IP.
    pub local: BTreeMap<Mac, Ipv4Addr>,
    /// Other hosts with endpoints: where broadcast and unknown traffic goes.
    pub flood: BTreeSet<Ipv4Addr>,
}

impl Tracker {
    pub fn new(damping: Damping) -> Tracker {
        Tracker {
            damping,
            tracks: BTreeMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.tracks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tracks.is_empty()
    }

    /// Where `mac` is followed now.
    pub fn get(&self, mac: Mac) -> Option<&Endpoint> {
        self.tracks.get(&mac).map(|t| &t.at)
    }

    /// Takes in the store's current claim for `ep.mac` (a put, or an entry of a listing).
    pub fn claim(&mut self, ep: Endpoint, create_revision: i64, now: Instant) -> Option<Event> {
        let mac = ep.mac;
        let Some(t) = self.tracks.get_mut(&mac) else {
            let host = ep.host;
            self.tracks.insert(
                mac,
                Track {
                    at: ep,
                    create_revision,
                    moves: VecDeque::new(),
                    frozen: None,
                    conflict: None,
                },
            );
            return Some(Event::Added { mac, host });
        };
        t.create_revision = create_revision;
        if let Some((pending, _)) = &mut t.frozen {
            if *pending != ep {
                let claimed = ep.host;
                *pending = ep;
                // Every new claim while frozen keeps it frozen a window longer.
                t.frozen = t.frozen.take().map(|(p, _)| (p, now + self.damping.window));
                return Some(Event::Frozen {
                    mac,
                    at: t.at.host,
                    claimed,
                    moves: t.moves.len(),
                });
            }
            return None;
        }
        if ep.host == t.at.host {
            // Same host: a re-registration (new IP, new Seq) is followed; it ends a conflict
            // only by raising Seq past the conflicting claim.
            if t.conflict.as_ref().is_some_and(|c| ep.seq > c.seq) {
                t.conflict = None;
            }
            if ep == t.at {
                return None;
            }
            t.at = ep;
            return None;
        }
        if ep.seq <= t.at.seq {
            let claimed = ep.host;
            let new = t.conflict.as_ref() != Some(&ep);
            t.conflict = Some(ep);
            return new.then_some(Event::DuplicateMac {
                mac,
                kept: t.at.host,
                claimed,
            });
        }
        // A move.
        while t
            .moves
            .front()
            .is_some_and(|m| now.saturating_duration_since(*m) > self.damping.window)
        {
            t.moves.pop_front();
        }
        if t.moves.len() >= self.damping.max_moves {
            let claimed = ep.host;
            t.frozen = Some((ep, now + self.damping.window));
            t.conflict = None;
            return Some(Event::Frozen {
                mac,
                at: t.at.host,
                claimed,
                moves: t.moves.len() + 1,
            });
        }
        t.moves.push_back(now);
        let from = t.at.host;
        let (to, seq) = (ep.host, ep.seq);
        t.at = ep;
        t.conflict = None;
        Some(Event::Moved { mac, from, to, seq })
    }

    /// The key of `mac` is gone from the store.
    pub fn remove(&mut self, mac: Mac) -> Option<Event> {
        self.tracks.remove(&mac).map(|_| Event::Removed { mac })
    }

    /// Keeps only the MACs in `present` (after a listing); returns what was dropped.
    pub fn retain(&mut self, present: &BTreeSet<Mac>) -> Vec<Event> {
        let gone: Vec<Mac> = self.tracks.keys().filter(|m| !present.contains(m)).copied().collect();
        gone.into_iter().filter_map(|m| self.remove(m)).collect()
    }

    /// Ends the freezes that are due: each endpoint follows its latest claim.
    pub fn thaw(&mut self, now: Instant) -> Vec<Event> {
        let mut out = Vec::new();
        for (mac, t) in &mut self.tracks {
            if t.frozen.as_ref().is_some_and(|(_, until)| *until <= now) {
                if let Some((pending, _)) = t.frozen.take() {
                    t.at = pending;
                    t.moves.clear();
                    out.push(Event::Thawed {
                        mac: *mac,
                        at: t.at.host,
                    });
                }
            }
        }
        out
    }

    /// When the next freeze ends, if any endpoint is frozen.
    pub fn next_thaw(&self) -> Option<Instant> {
        self.tracks
            .values()
            .filter_map(|t| t.frozen.as_ref().map(|f| f.1))
            .min()
    }

    /// Number of endpoints frozen now.
    pub fn frozen(&self) -> usize {
        self.tracks.values().filter(|t| t.frozen.is_some()).count()
    }

    /// For each IP held by more than one MAC, the MAC programmed (first registered) and the
    /// others.
    fn ip_owners(&self) -> BTreeMap<Ipv4Addr, Vec<(i64, Mac)>> {
        let mut by_ip: BTreeMap<Ipv4Addr, Vec<(i64, Mac)>> = BTreeMap::new();
        for (mac, t) in &self.tracks {
            by_ip.entry(t.at.ip).or_default().push((t.create_revision, *mac));
        }
        for v in by_ip.values_mut() {
            v.sort();
        }
        by_ip
    }

    /// The kernel state host `own` wants.
    pub fn desired(&self, own: Ipv4Addr) -> Desired {
        let mut d = Desired::default();
        for (ip, owners) in self.ip_owners() {
            let Some((_, mac)) = owners.first() else { continue };
            let Some(t) = self.tracks.get(mac) else { continue };
            if t.at.host == own {
                d.local.insert(*mac, ip);
            } else {
                d.remote.insert(*mac, (ip, t.at.host));
                d.flood.insert(t.at.host);
            }
        }
        // A host whose only endpoints lost an IP clash still gets broadcasts: it has endpoints.
        for t in self.tracks.values() {
            if t.at.host != own {
                d.flood.insert(t.at.host);
            }
        }
        d
    }

    /// Everything flagged: duplicate IPs, duplicate MACs, frozen endpoints.
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        for (ip, owners) in self.ip_owners() {
            if owners.len() < 2 {
                continue;
            }
            let hosts: Vec<Ipv4Addr> = owners
                .iter()
                .filter_map(|(_, m)| self.tracks.get(m).map(|t| t.at.host))
                .collect();
            let first = owners[0].1;
            for (i, (_, mac)) in owners.iter().enumerate() {
                let mut h = hosts.clone();
                h.swap(0, i);
                out.push(Problem {
                    kind: "duplicate_ip".into(),
                    mac: mac.to_string(),
                    ip,
                    hosts: h,
                    detail: if i == 0 {
                        "registered first: programmed".into()
                    } else {
                        format!("IP already registered by {first}: not programmed")
                    },
                });
            }
        }
        for (mac, t) in &self.tracks {
            if let Some(c) = &t.conflict {
                out.push(Problem {
                    kind: "duplicate_mac".into(),
                    mac: mac.to_string(),
                    ip: t.at.ip,
                    hosts: vec![t.at.host, c.host],
                    detail: format!(
                        "claimed by {} with Seq {} not above {}: kept at {}",
                        c.host, c.seq, t.at.seq, t.at.host
                    ),
                });
            }
            if let Some((p, _)) = &t.frozen {
                out.push(Problem {
                    kind: "frozen".into(),
                    mac: mac.to_string(),
                    ip: t.at.ip,
                    hosts: vec![t.at.host, p.host],
                    detail: format!(
                        "more than {} moves within {:?}: frozen at {}, latest claim {} not followed",
                        self.damping.max_moves, self.damping.window, t.at.host, p.host
                    ),
                });
            }
        }
        out.sort();
        out
    }
}

/// What the kernel has for an L2 network on this host (only what weft would have put there).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedL2 {
    /// `MAC dst HOST self permanent` on the VXLAN device (unicast MACs).
    pub fdbs: BTreeSet<FdbEntry>,
    /// `MAC dev weft.N master static`: the bridge's entries pointing at the VXLAN port.
    pub bridge_fdbs: BTreeSet<Mac>,
    /// `00:00:00:00:00:00 dst HOST self permanent`: the flood list.
    pub flood: BTreeSet<Ipv4Addr>,
    /// PERMANENT neighbours on the bridge.
    pub neighs: BTreeSet<NeighEntry>,
}

/// One kernel change for an L2 network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum L2Op {
    // Removals first: an endpoint that moved here loses its remote entries before anything
    // else, so the bridge forwards to its local port.
    RemoveNeigh(NeighEntry),
    RemoveBridgeFdb(Mac),
    RemoveFdb(FdbEntry),
    RemoveFlood(Ipv4Addr),
    // Then additions, the tunnel entry before the bridge entry that sends frames to it, the
    // neighbour (which makes the bridge answer ARP) last.
    AddFlood(Ipv4Addr),
    EnsureFdb(FdbEntry),
    EnsureBridgeFdb(Mac),
    EnsureNeigh(NeighEntry),
}

impl L2Op {
    /// `(kind, action)` labels for logs and metrics.
    pub fn labels(&self) -> (&'static str, &'static str) {
        match self {
            L2Op::RemoveNeigh(_) => ("neigh", "remove"),
            L2Op::RemoveBridgeFdb(_) => ("bridge_fdb", "remove"),
            L2Op::RemoveFdb(_) => ("fdb", "remove"),
            L2Op::RemoveFlood(_) => ("flood", "remove"),
            L2Op::AddFlood(_) => ("flood", "ensure"),
            L2Op::EnsureFdb(_) => ("fdb", "ensure"),
            L2Op::EnsureBridgeFdb(_) => ("bridge_fdb", "ensure"),
            L2Op::EnsureNeigh(_) => ("neigh", "ensure"),
        }
    }
}

/// The operations that take the kernel from `observed` to `desired`, in order.
pub fn plan(desired: &Desired, observed: &ObservedL2) -> Vec<L2Op> {
    let mut ops = Vec::new();
    let want_fdb: BTreeSet<FdbEntry> = desired
        .remote
        .iter()
        .map(|(mac, (_, host))| FdbEntry { mac: *mac, dst: *host })
        .collect();
    let want_neigh: BTreeSet<NeighEntry> = desired
        .remote
        .iter()
        .map(|(mac, (ip, _))| NeighEntry { ip: *ip, mac: *mac })
        .collect();
    let want_ips: BTreeSet<Ipv4Addr> = want_neigh.iter().map(|n| n.ip).collect();
    for n in &observed.neighs {
        // A neighbour replaced in place (same IP, new MAC) is not removed first.
        if !want_neigh.contains(n) && !want_ips.contains(&n.ip) {
            ops.push(L2Op::RemoveNeigh(*n));
        }
    }
    for m in &observed.bridge_fdbs {
        if !desired.remote.contains_key(m) {
            ops.push(L2Op::RemoveBridgeFdb(*m));
        }
    }
    let mut per_mac: BTreeMap<Mac, usize> = BTreeMap::new();
    for f in &observed.fdbs {
        *per_mac.entry(f.mac).or_default() += 1;
    }
    for f in &observed.fdbs {
        // `replace` repoints the one entry of a MAC that stays remote, without a gap; anything
        // else unwanted is removed.
        let repointed = desired.remote.contains_key(&f.mac) && per_mac.get(&f.mac) == Some(&1);
        if !want_fdb.contains(f) && !repointed {
            ops.push(L2Op::RemoveFdb(*f));
        }
    }
    for h in observed.flood.difference(&desired.flood) {
        ops.push(L2Op::RemoveFlood(*h));
    }
    for h in desired.flood.difference(&observed.flood) {
        ops.push(L2Op::AddFlood(*h));
    }
    for f in want_fdb.difference(&observed.fdbs) {
        ops.push(L2Op::EnsureFdb(*f));
    }
    for m in desired.remote.keys() {
        if !observed.bridge_fdbs.contains(m) {
            ops.push(L2Op::EnsureBridgeFdb(*m));
        }
    }
    for n in want_neigh.difference(&observed.neighs) {
        ops.push(L2Op::EnsureNeigh(*n));
    }
    ops.sort();
    ops
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn mac(n: u8) -> Mac {
        Mac([2, 0, 0, 0, 0, n])
    }
    fn host(n: u8) -> Ipv4Addr {
        Ipv4Addr::new(192, 0, 2, n)
    }
    fn ep(m: u8, ip: u8, h: u8, seq: u64) -> Endpoint {
        Endpoint {
            mac: mac(m),
            ip: Ipv4Addr::new(10, 50, 0, ip),
            host: host(h),
            seq,
        }
    }

    #[test]
    fn a_move_with_a_higher_seq_is_followed() {
        let mut t = Tracker::default();
        let now = Instant::now();
        assert_eq!(
            t.claim(ep(1, 5, 1, 0), 10, now),
            Some(Event::Added {
                mac: mac(1),
                host: host(1)
            })
        );
        let d = t.desired(host(3));
        assert_eq!(d.remote[&mac(1)], (Ipv4Addr::new(10, 50, 0, 5), host(1)));
        assert_eq!(d.flood, [host(1)].into());
        assert!(matches!(
            t.claim(ep(1, 5, 2, 1), 10, now),
            Some(Event::Moved { seq: 1, .. })
        ));
        assert_eq!(t.desired(host(3)).remote[&mac(1)].1, host(2));
        assert_eq!(t.desired(host(3)).flood, [host(2)].into());
        // On the host it moved to it is local; on the one it left, remote.
        assert_eq!(
            t.desired(host(2)).local.keys().copied().collect::<Vec<_>>(),
            vec![mac(1)]
        );
        assert!(t.desired(host(2)).remote.is_empty() && t.desired(host(2)).flood.is_empty());
        assert!(t.desired(host(1)).remote.contains_key(&mac(1)));
        assert!(t.problems().is_empty());
    }

    #[test]
    fn a_claim_that_does_not_raise_seq_is_a_duplicate_mac() {
        let mut t = Tracker::default();
        let now = Instant::now();
        t.claim(ep(1, 5, 1, 4), 10, now);
        let e = t.claim(ep(1, 5, 2, 4), 10, now);
        assert_eq!(
            e,
            Some(Event::DuplicateMac {
                mac: mac(1),
                kept: host(1),
                claimed: host(2)
            })
        );
        // Logged once, however often it is seen again.
        assert_eq!(t.claim(ep(1, 5, 2, 4), 10, now), None);
        assert_eq!(t.get(mac(1)).unwrap().host, host(1));
        let p = t.problems();
        assert_eq!(p.len(), 1);
        assert_eq!(
            (p[0].kind.as_str(), p[0].hosts.clone()),
            ("duplicate_mac", vec![host(1), host(2)])
        );
        // A real move (higher Seq) ends it.
        assert!(matches!(t.claim(ep(1, 5, 2, 5), 10, now), Some(Event::Moved { .. })));
        assert!(t.problems().is_empty());
    }

    #[test]
    fn a_duplicate_ip_keeps_the_first_registered() {
        let mut t = Tracker::default();
        let now = Instant::now();
        t.claim(ep(2, 5, 2, 0), 20, now);
        t.claim(ep(1, 5, 1, 0), 10, now);
        let d = t.desired(host(3));
        assert_eq!(d.remote.keys().copied().collect::<Vec<_>>(), vec![mac(1)]);
        // Host 2 still has an endpoint: it stays in the flood list.
        assert_eq!(d.flood, [host(1), host(2)].into());
        let p = t.problems();
        assert_eq!(p.iter().filter(|p| p.kind == "duplicate_ip").count(), 2);
        assert!(p
            .iter()
            .any(|p| p.mac == mac(2).to_string() && p.detail.contains("not programmed")));
        t.remove(mac(1));
        assert_eq!(
            t.desired(host(3)).remote.keys().copied().collect::<Vec<_>>(),
            vec![mac(2)]
        );
        assert!(t.problems().is_empty());
    }

    #[test]
    fn flapping_freezes_then_thaws_after_a_quiet_window() {
        let damping = Damping {
            max_moves: 5,
            window: Duration::from_secs(180),
        };
        let mut t = Tracker::new(damping);
        let t0 = Instant::now();
        t.claim(ep(1, 5, 1, 0), 10, t0);
        for seq in 1..=5u64 {
            let h = if seq % 2 == 1 { 2 } else { 1 };
            let e = t.claim(ep(1, 5, h, seq), 10, t0 + Duration::from_secs(seq));
            assert!(matches!(e, Some(Event::Moved { .. })), "{seq}: {e:?}");
        }
        // The sixth move within the window freezes it at host 2 (where move 5 left it).
        let e = t.claim(ep(1, 5, 1, 6), 10, t0 + Duration::from_secs(6));
        assert_eq!(
            e,
            Some(Event::Frozen {
                mac: mac(1),
                at: host(2),
                claimed: host(1),
                moves: 6
            })
        );
        assert_eq!(t.get(mac(1)).unwrap().host, host(2));
        assert_eq!(t.frozen(), 1);
        assert_eq!(t.problems()[0].kind, "frozen");
        // Claims while frozen are remembered, not followed, and extend the freeze.
        let e = t.claim(ep(1, 5, 3, 7), 10, t0 + Duration::from_secs(100));
        assert!(matches!(e, Some(Event::Frozen { claimed, .. }) if claimed == host(3)));
        assert_eq!(t.get(mac(1)).unwrap().host, host(2));
        assert!(t.thaw(t0 + Duration::from_secs(200)).is_empty());
        assert_eq!(t.next_thaw(), Some(t0 + Duration::from_secs(280)));
        let e = t.thaw(t0 + Duration::from_secs(280));
        assert_eq!(
            e,
            vec![Event::Thawed {
                mac: mac(1),
                at: host(3)
            }]
        );
        assert_eq!(t.get(mac(1)).unwrap().host, host(3));
        assert!(t.problems().is_empty());
    }

    #[test]
    fn moves_spread_over_more_than_the_window_never_freeze() {
        let mut t = Tracker::default();
        let t0 = Instant::now();
        t.claim(ep(1, 5, 1, 0), 10, t0);
        for seq in 1..=30u64 {
            let e = t.claim(
                ep(1, 5, (seq % 3) as u8 + 1, seq),
                10,
                t0 + Duration::from_secs(40 * seq),
            );
            assert!(matches!(e, Some(Event::Moved { .. })), "{seq}: {e:?}");
        }
    }

    #[test]
    fn plan_repoints_and_hands_over_a_moved_endpoint() {
        let n = |m: u8, ip: u8| NeighEntry {
            ip: Ipv4Addr::new(10, 50, 0, ip),
            mac: mac(m),
        };
        let f = |m: u8, h: u8| FdbEntry {
            mac: mac(m),
            dst: host(h),
        };
        let observed = ObservedL2 {
            fdbs: [f(1, 1), f(2, 1)].into(),
            bridge_fdbs: [mac(1), mac(2)].into(),
            flood: [host(1)].into(),
            neighs: [n(1, 5), n(2, 6)].into(),
        };
        // mac 1 moved to host 2; mac 2 moved here.
        let desired = Desired {
            remote: [(mac(1), (Ipv4Addr::new(10, 50, 0, 5), host(2)))].into(),
            local: [(mac(2), Ipv4Addr::new(10, 50, 0, 6))].into(),
            flood: [host(2)].into(),
        };
        let ops = plan(&desired, &observed);
        assert_eq!(
            ops,
            vec![
                L2Op::RemoveNeigh(n(2, 6)),
                L2Op::RemoveBridgeFdb(mac(2)),
                L2Op::RemoveFdb(f(2, 1)),
                L2Op::RemoveFlood(host(1)),
                L2Op::AddFlood(host(2)),
                L2Op::EnsureFdb(f(1, 2)),
            ]
        );
    }

    fn apply(o: &mut ObservedL2, ops: &[L2Op]) {
        for op in ops {
            match *op {
                L2Op::RemoveNeigh(n) => {
                    o.neighs.remove(&n);
                }
                L2Op::RemoveBridgeFdb(m) => {
                    o.bridge_fdbs.remove(&m);
                }
                L2Op::RemoveFdb(f) => {
                    o.fdbs.remove(&f);
                }
                L2Op::RemoveFlood(h) => {
                    o.flood.remove(&h);
                }
                L2Op::AddFlood(h) => {
                    o.flood.insert(h);
                }
                L2Op::EnsureFdb(f) => {
                    o.fdbs.retain(|x| x.mac != f.mac);
                    o.fdbs.insert(f);
                }
                L2Op::EnsureBridgeFdb(m) => {
                    o.bridge_fdbs.insert(m);
                }
                L2Op::EnsureNeigh(n) => {
                    o.neighs.retain(|x| x.ip != n.ip);
                    o.neighs.insert(n);
                }
            }
        }
    }

    proptest! {
        /// Whatever the claims, the plan converges in one pass, programs every IP at most
        /// once, and a second plan is empty.
        #[test]
        fn plans_converge(
            claims in proptest::collection::vec((1u8..6, 1u8..5, 1u8..4, 0u64..4, 0u64..400), 0..40),
            junk in proptest::collection::vec((1u8..8, 1u8..5), 0..6),
        ) {
            let mut t = Tracker::default();
            let t0 = Instant::now();
            for (m, ip, h, seq, at) in claims {
                t.claim(ep(m, ip, h, seq), i64::from(m), t0 + Duration::from_secs(at));
            }
            let own = host(1);
            let d = t.desired(own);
            let mut o = ObservedL2::default();
            for (m, h) in junk {
                o.fdbs.insert(FdbEntry { mac: mac(m), dst: host(h) });
                o.bridge_fdbs.insert(mac(m));
                o.flood.insert(host(h));
                o.neighs.insert(NeighEntry { ip: Ipv4Addr::new(10, 50, 0, m), mac: mac(m) });
            }
            let ops = plan(&d, &o);
            apply(&mut o, &ops);
            prop_assert_eq!(plan(&d, &o), vec![]);
            let want: BTreeSet<FdbEntry> = d.remote.iter().map(|(m, (_, h))| FdbEntry { mac: *m, dst: *h }).collect();
            prop_assert_eq!(&o.fdbs, &want);
            prop_assert_eq!(o.bridge_fdbs.len(), d.remote.len());
            prop_assert_eq!(&o.flood, &d.flood);
            let ips: BTreeSet<_> = o.neighs.iter().map(|n| n.ip).collect();
            prop_assert_eq!(ips.len(), o.neighs.len());
            prop_assert!(!d.flood.contains(&own));
            prop_assert!(d.remote.values().all(|(_, h)| *h != own));
        }
    }
}
