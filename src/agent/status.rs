//! What the agent knows about itself, as plain data: served as JSON at `/status`, printed by
//! `weft status`, and judged by `/healthz` and `/readyz`.

use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A store that has not answered for this long counts as unreachable.
pub const STORE_STALE_AFTER: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Where this view comes from: `agent` (live) or `store+kernel` (agent not reachable).
    pub source: String,
    /// A named network's name (absent for the default network).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub store: StoreStatus,
    pub network: Option<NetworkStatus>,
    /// Why the stored network config is not in effect (missing or invalid), if it is not.
    pub config_error: Option<String>,
    pub iface: Option<IfaceStatus>,
    pub device: Option<DeviceStatus>,
    pub lease: Option<LeaseStatus>,
    /// Why this host holds no lease, if it holds none.
    pub lease_error: Option<String>,
    /// Rendered from the agent's [`PeerReport`] when `/status` is asked for.
    pub peers: Arc<Vec<PeerStatus>>,
    pub last_reconcile: Option<ReconcileStatus>,
    /// Whether the host has converged at least once since the agent started.
    pub converged_once: bool,
    /// The agent does not serve the default network (`--networks` leaves it out): the fields
    /// above are empty and not judged.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub default_not_served: bool,
    /// The named networks the agent serves, each with its own view (`network.name` says which).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<Status>,
    /// An L2 network's bridge, endpoints and flagged endpoints (absent for L3 networks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l2: Option<L2Status>,
    /// Named networks in the store the agent does not serve, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused_networks: Vec<RefusedNetwork>,
    /// Another firewall's forward chains that drop this host's pod traffic by default (see
    /// `agent::forward_check`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forward_drops: Vec<ForwardDrop>,
    /// An L3 network's VXLAN peer filter (an L2 network's is in `l2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vxlan_filter: Option<VxlanFilterStatus>,
}

/// A forward base chain of another table that drops by default, with no rule accepting `subnet`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardDrop {
    /// `FAMILY TABLE CHAIN`, e.g. `ip filter FORWARD` (iptables' FORWARD chain).
    pub chain: String,
    pub subnet: String,
}

/// An L2 network on this host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct L2Status {
    pub bridge: String,
    /// Endpoints registered in the store (valid ones).
    pub endpoints: usize,
    pub local: usize,
    pub remote: usize,
    /// Hosts broadcast and unknown traffic goes to.
    pub flood: Vec<String>,
    /// Duplicate IPs and MACs, frozen endpoints.
    pub problems: Vec<crate::planner::endpoints::Problem>,
    /// Store entries under `endpoints/` that are not valid endpoints, with the reason.
    pub rejected: Vec<String>,
    /// The network's nft table, once written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vxlan_filter: Option<VxlanFilterStatus>,
}

/// A network's VXLAN peer filter: VXLAN (of its VNI, for a named or L2 network) accepted only
/// from its peers (an L2 network's: the other hosts with endpoints).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VxlanFilterStatus {
    /// `weft` (the default network) or `weft-NAME`.
    pub table: String,
    /// `--vxlan-peer-filter`: whether VXLAN from anything but a peer is dropped.
    pub enabled: bool,
    /// Hosts in the table's `peers` set.
    pub peers: usize,
    /// VXLAN datagrams dropped, as of the table's last full check (every resync).
    pub dropped: u64,
    /// Where the filter runs: `nft` (the table's `input` chain), `bpf` (an sk_lookup program
    /// pinned in `--bpf-pin-dir`) or `off`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub place: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedNetwork {
    pub name: String,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreStatus {
    pub describe: String,
    /// Unix milliseconds of the last successful exchange with the store.
    pub last_ok_ms: Option<u64>,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkStatus {
    pub name: String,
    pub network: String,
    pub subnet_len: u8,
    pub vni: u32,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IfaceStatus {
    pub name: String,
    pub local_ip: String,
    pub public_ip: String,
    pub mtu: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceStatus {
    pub name: String,
    pub index: u32,
    pub mtu: u32,
    pub mac: Option<String>,
    pub up: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseStatus {
    pub subnet: String,
    pub key: String,
    /// Unix milliseconds at which the lease expires, if the store says.
    pub expires_at_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerState {
    /// Its route, neighbour and FDB entries are in the kernel.
    Programmed,
    /// Known, not (yet) programmed: the last attempt failed or none was made.
    Pending,
    /// Its lease is refused; see `reason`.
    Rejected,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub key: String,
    pub subnet: Option<String>,
    pub public_ip: Option<String>,
    pub vtep_mac: Option<String>,
    pub state: PeerState,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReconcileStatus {
    pub at_ms: u64,
    pub duration_ms: f64,
    pub ok: bool,
    pub error: Option<String>,
    /// Kernel operations carried out by that reconcile.
    pub operations: usize,
}

/// One failed health check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failing {
    pub check: String,
    pub reason: String,
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Status {
    /// The `/healthz` checks that fail now, for every network served; empty means healthy. A
    /// named network's checks are named `NAME/check`.
    pub fn health(&self, now: SystemTime) -> Vec<Failing> {
        let mut out = if self.default_not_served {
            Vec::new()
        } else {
            self.network_health(now)
        };
        for n in &self.networks {
            let name = n.name.clone().unwrap_or_default();
            out.extend(n.network_health(now).into_iter().map(|f| Failing {
                check: format!("{name}/{}", f.check),
                reason: f.reason,
            }));
        }
        if self.default_not_served && self.networks.is_empty() {
            out.push(Failing {
                check: "networks".into(),
                reason: "none of the networks this agent serves exists yet".into(),
            });
        }
        out
    }

    /// One network's checks.
    fn network_health(&self, now: SystemTime) -> Vec<Failing> {
        let now_ms = unix_ms(now);
        let mut out = Vec::new();
        let mut fail = |check: &str, reason: String| {
            out.push(Failing {
                check: check.into(),
                reason,
            })
        };
        match (&self.network, &self.config_error) {
            (_, Some(e)) => fail("config", e.clone()),
            (None, None) => fail("config", "no network config yet".into()),
            _ => {}
        }
        match &self.lease {
            // An L2 network leases nothing: its endpoints are registered instead.
            _ if self.l2.is_some() => {}
            None => fail(
                "lease",
                self.lease_error.clone().unwrap_or_else(|| "no lease held".into()),
            ),
            Some(l) if l.expires_at_ms.is_some_and(|t| t <= now_ms) => {
                fail("lease", format!("lease for {} has expired", l.subnet))
            }
            Some(_) => {}
        }
        // The last exchange must have succeeded (a success clears `last_error`), and recently: a
        // store that hangs produces no error at all, only silence.
        let stale_ms = STORE_STALE_AFTER.as_millis() as u64;
        match (&self.store.last_error, self.store.last_ok_ms) {
            (Some(e), _) => fail("store", e.clone()),
            (None, Some(t)) if now_ms.saturating_sub(t) <= stale_ms => {}
            (None, Some(_)) => fail(
                "store",
                format!(
                    "{} has not answered for more than {}s",
                    self.store.describe,
                    STORE_STALE_AFTER.as_secs()
                ),
            ),
            (None, None) => fail("store", format!("{} has not answered yet", self.store.describe)),
        }
        match &self.last_reconcile {
            Some(r) if r.ok => {}
            Some(r) => fail("reconcile", r.error.clone().unwrap_or_else(|| "failed".into())),
            None => fail("reconcile", "no reconcile yet".into()),
        }
        match &self.device {
            Some(d) if d.up => {}
            Some(d) => fail("device", format!("{} is down", d.name)),
            None => fail("device", "no VXLAN device".into()),
        }
        out
    }

    /// The `/readyz` checks that fail now: every network served has converged once.
    pub fn readiness(&self) -> Vec<Failing> {
        let mut out = Vec::new();
        if !self.default_not_served && !self.converged_once {
            out.push(Failing {
                check: "converged".into(),
                reason: "the host has not converged yet".into(),
            });
        }
        for n in self.networks.iter().filter(|n| !n.converged_once) {
            let name = n.name.clone().unwrap_or_default();
            out.push(Failing {
                check: format!("{name}/converged"),
                reason: format!("the host has not converged in network {name} yet"),
            });
        }
        out
    }
}

/// Where `weft agent --healthz-addr` listens in the lab, and where `weft status` looks first.
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:9102";

/// `GET path` from an agent's HTTP endpoint (blocking, plain HTTP/1.0, short timeouts): the
/// status code and the body. Deliberately tiny: `weft status` and the tests need nothing more,
/// and it must work from any thread, including one that entered another network namespace.
pub fn get(addr: std::net::SocketAddr, path: &str, timeout: Duration) -> Result<(u16, String), String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("{addr}: {e}"))?;
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(timeout));
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: weft\r\n\r\n").as_bytes())
        .map_err(|e| format!("{addr}: {e}"))?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).map_err(|e| format!("{addr}: {e}"))?;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{addr}: malformed HTTP answer"))?;
    let code = head
        .starts_with("HTTP/1.")
        .then(|| head.split_whitespace().nth(1))
        .flatten()
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| format!("{addr}: {}", head.lines().next().unwrap_or("no status line")))?;
    Ok((code, body.to_string()))
}

/// Reads `/status` from an agent's HTTP endpoint.
pub fn fetch(addr: std::net::SocketAddr, timeout: Duration) -> Result<Status, String> {
    let (code, json) = get(addr, "/status", timeout)?;
    if code != 200 {
        return Err(format!("{addr}: /status answered {code}"));
    }
    serde_json::from_str(&json).map_err(|e| format!("{addr}: /status is not weft's: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy(now: SystemTime) -> Status {
        let ms = unix_ms(now);
        Status {
            source: "agent".into(),
            store: StoreStatus {
                describe: "sqlite:x".into(),
                last_ok_ms: Some(ms - 1000),
                last_error: None,
            },
            network: Some(NetworkStatus {
                name: "default".into(),
                network: "10.0.0.0/16".into(),
                subnet_len: 24,
                vni: 1,
                port: 8472,
            }),
            config_error: None,
            iface: None,
            device: Some(DeviceStatus {
                name: "flannel.1".into(),
                index: 3,
                mtu: 1450,
                mac: None,
                up: true,
            }),
            lease: Some(LeaseStatus {
                subnet: "10.0.37.0/24".into(),
                key: "k".into(),
                expires_at_ms: Some(ms + 10_000),
            }),
            lease_error: None,
            peers: Arc::default(),
            last_reconcile: Some(ReconcileStatus {
                at_ms: ms,
                duration_ms: 1.0,
                ok: true,
                error: None,
                operations: 0,
            }),
            converged_once: true,
            ..Status::default()
        }
    }

    #[test]
    fn healthy_host_passes_every_check() {
        let now = SystemTime::now();
        assert_eq!(healthy(now).health(now), vec![]);
        assert_eq!(healthy(now).readiness(), vec![]);
    }

    #[test]
    fn each_failure_is_named() {
        let now = SystemTime::now();
        let checks = |s: Status| s.health(now).into_iter().map(|f| f.check).collect::<Vec<String>>();
        let mut s = healthy(now);
        s.config_error = Some("network config: Backend.VNI = 0".into());
        assert_eq!(checks(s), ["config"]);
        let mut s = healthy(now);
        s.lease = None;
        assert_eq!(checks(s), ["lease"]);
        let mut s = healthy(now);
        s.lease.as_mut().unwrap().expires_at_ms = Some(unix_ms(now) - 1);
        assert_eq!(checks(s), ["lease"]);
        let mut s = healthy(now);
        s.store.last_ok_ms = Some(unix_ms(now) - 60_000);
        assert_eq!(checks(s), ["store"]);
        // A recent success does not hide a failure since.
        let mut s = healthy(now);
        s.store.last_error = Some("sqlite:x did not answer within 3s".into());
        assert_eq!(checks(s), ["store"]);
        let mut s = healthy(now);
        s.last_reconcile.as_mut().unwrap().ok = false;
        assert_eq!(checks(s), ["reconcile"]);
        let mut s = healthy(now);
        s.device.as_mut().unwrap().up = false;
        assert_eq!(checks(s), ["device"]);
        let mut s = healthy(now);
        s.converged_once = false;
        assert_eq!(s.readiness().len(), 1);
        assert_eq!(
            checks(Status::default()),
            ["config", "lease", "store", "reconcile", "device"]
        );
    }

    #[test]
    fn named_networks_are_judged_under_their_name() {
        let now = SystemTime::now();
        let mut named = healthy(now);
        named.name = Some("tenant-a".into());
        named.network.as_mut().unwrap().name = "tenant-a".into();
        named.lease = None;
        named.converged_once = false;
        let mut s = healthy(now);
        s.networks.push(named);
        let checks: Vec<String> = s.health(now).into_iter().map(|f| f.check).collect();
        assert_eq!(checks, ["tenant-a/lease"]);
        assert_eq!(s.readiness()[0].check, "tenant-a/converged");
        // Without the default network, only the named ones count.
        let only = Status {
            default_not_served: true,
            ..Status::default()
        };
        assert_eq!(only.health(now)[0].check, "networks");
        let only = Status {
            networks: vec![healthy(now)],
            ..only
        };
        assert_eq!(only.health(now), vec![]);
        assert_eq!(only.readiness(), vec![]);
        // The JSON of a default-only agent is what it was before named networks existed.
        let json = serde_json::to_string(&healthy(now)).unwrap();
        assert!(
            !json.contains("networks") && !json.contains("default_not_served"),
            "{json}"
        );
    }
}

/// The peers as one reconcile planned them, kept as the planner's values and turned into
/// [`PeerStatus`] lines only when somebody asks.
#[derive(Debug, Default)]
pub struct PeerReport {
    pub set: Arc<crate::planner::peers::PeerSet>,
    /// The refused leases' contents, where they parse, in `set.rejected`'s order.
    pub rejected_leases: Vec<Option<crate::lease::Lease>>,
    pub devices: Option<crate::planner::Devices>,
    /// Operations that failed in that reconcile: their peers are `pending`.
    pub failed: std::collections::HashSet<crate::planner::Op>,
}

impl PeerReport {
    /// A peer is programmed unless one of its entries failed.
    pub fn is_pending(&self, p: &crate::planner::peers::Peer) -> bool {
        use crate::planner::Op;
        let Some(devices) = self.devices else { return true };
        let e = crate::planner::peer_entries(p, devices);
        e.neigh.is_some_and(|n| self.failed.contains(&Op::EnsureNeigh(n)))
            || e.fdb.is_some_and(|f| self.failed.contains(&Op::EnsureFdb(f)))
            || self.failed.contains(&Op::EnsureRoute(e.route))
    }

    pub fn render(&self) -> Vec<PeerStatus> {
        let mut out = Vec::with_capacity(self.set.peers.len() + self.set.rejected.len());
        for p in &self.set.peers {
            out.push(PeerStatus {
                key: p.key.clone(),
                subnet: Some(p.subnet.to_string()),
                public_ip: Some(p.public_ip.to_string()),
                vtep_mac: Some(p.vtep_mac.to_string()),
                state: if self.is_pending(p) {
                    PeerState::Pending
                } else {
                    PeerState::Programmed
                },
                reason: None,
            });
        }
        for (r, lease) in self.set.rejected.iter().zip(&self.rejected_leases) {
            out.push(PeerStatus {
                key: r.key.clone(),
                subnet: lease.as_ref().map(|l| l.subnet.to_string()),
                public_ip: lease.as_ref().map(|l| l.public_ip.to_string()),
                vtep_mac: lease.as_ref().map(|l| l.vtep_mac.to_string()),
                state: PeerState::Rejected,
                reason: Some(r.rejection.to_string()),
            });
        }
        out
    }
}
