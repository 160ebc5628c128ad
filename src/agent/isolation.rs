//! Keeping a named network apart from the host's other networks, without VRFs (the kernels weft
//! runs on here have no `vrf` link type): policy routing, one routing table per network.
//!
//! - Routes to a named network's peers go to its own table, `100000000 + VNI`, which ends with
//!   `unreachable <Network>`: a destination in the network that is not a peer stops there
//!   instead of falling through to the main table (and maybe into another network).
//! - Three `ip rule`s (priority 1000, protocol weft) send the network's traffic to that table:
//!   `oif weft.<VNI>` (sockets bound to the device), `iif weft.<VNI>` (arriving from the
//!   network), `from <this host's subnet in the network>` (sent from the host's address in the
//!   network, or later its pods). The last one works only if the host's subnets in its networks
//!   never overlap, even when the networks' CIDRs do: [`HostSubnets`] keeps them apart (a named
//!   network's agent leases around the others', and gives a clashing lease back).
//! - The network's nft table drops what would still cross (see `FirewallSpec::isolate`).

use super::params::{NetworkParams, RULE_PRIORITY};
use super::{iface, Agent, AgentError, AgentOptions};
use crate::config::NetworkConfig;
use crate::kernel::nft::{self, NftOutcome, NftRequest};
use crate::kernel::rule::RuleEntry;
use crate::kernel::{Kernel, KernelError, LinkInfo};
use crate::lease::Lease;
use crate::planner::state::ROUTE_PROTO_WEFT;
use crate::store::Store;
use ipnet::Ipv4Net;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use tokio::time::Instant;
use tracing::{info, warn};

/// The subnet this host holds in each network it serves, and the VNIs of the named ones, shared
/// by the host's agents.
#[derive(Debug, Default)]
pub struct HostSubnets {
    inner: Mutex<Claims>,
}

#[derive(Debug, Default)]
struct Claims {
    by_network: BTreeMap<String, (Ipv4Net, u64)>,
    next: u64,
    /// The VNIs of the named networks served here.
    vnis: BTreeMap<String, u32>,
}

impl HostSubnets {
    /// Records `subnet` as network `name`'s. Fails, naming the holder, if it overlaps a subnet
    /// this host already holds in another network that keeps it: the default network always
    /// does; between named networks, the one that held it first. The default network's claim
    /// always succeeds.
    pub fn claim(&self, name: &str, subnet: Ipv4Net) -> Result<(), String> {
        let Ok(mut c) = self.inner.lock() else {
            return Ok(());
        };
        let is_default = name == crate::network::DEFAULT_NETWORK;
        if c.by_network.get(name).is_some_and(|(s, _)| *s == subnet) {
            return Ok(());
        }
        if !is_default {
            let holder = c
                .by_network
                .iter()
                .find(|(other, (s, _))| other.as_str() != name && overlap(*s, subnet))
                .map(|(other, _)| other.clone());
            if let Some(holder) = holder {
                c.by_network.remove(name);
                return Err(holder);
            }
        }
        let seq = c.next;
        c.next += 1;
        c.by_network.insert(name.to_string(), (subnet, seq));
        Ok(())
    }

    /// Whether `name` must give `subnet` up: another network holding an overlapping subnet
    /// keeps it (the default network, or a named one that claimed first).
    pub fn yields(&self, name: &str, subnet: Ipv4Net) -> Option<String> {
        let c = self.inner.lock().ok()?;
        if name == crate::network::DEFAULT_NETWORK {
            return None;
        }
        let mine = c.by_network.get(name).map(|(_, seq)| *seq).unwrap_or(u64::MAX);
        c.by_network
            .iter()
            .find(|(other, (s, seq))| {
                other.as_str() != name
                    && overlap(*s, subnet)
                    && (other.as_str() == crate::network::DEFAULT_NETWORK || *seq < mine)
            })
            .map(|(other, _)| other.clone())
    }

    /// Forgets network `name`: its subnet and VNI.
    pub fn release(&self, name: &str) {
        if let Ok(mut c) = self.inner.lock() {
            c.by_network.remove(name);
            c.vnis.remove(name);
        }
    }

    /// Records that named network `name` is served here with `vni`.
    pub fn serve_vni(&self, name: &str, vni: u32) {
        if let Ok(mut c) = self.inner.lock() {
            c.vnis.insert(name.to_string(), vni);
        }
    }

    /// The VNIs of the named networks served here.
    pub fn named_vnis(&self) -> BTreeSet<u32> {
        self.inner
            .lock()
            .map(|c| c.vnis.values().copied().collect())
            .unwrap_or_default()
    }

    /// Every subnet this host holds, in any network.
    pub fn subnets(&self) -> Vec<Ipv4Net> {
        self.inner
            .lock()
            .map(|c| c.by_network.values().map(|(s, _)| *s).collect())
            .unwrap_or_default()
    }

    /// The subnets held in every network but `name`.
    pub fn others(&self, name: &str) -> Vec<Ipv4Net> {
        self.inner
            .lock()
            .map(|c| {
                c.by_network
                    .iter()
                    .filter(|(n, _)| n.as_str() != name)
                    .map(|(_, (s, _))| *s)
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn overlap(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The rules a named network needs on this host (pure).
pub fn wanted_rules(device: &str, table: u32, own_subnet: Option<Ipv4Net>) -> BTreeSet<RuleEntry> {
    let base = RuleEntry {
        priority: RULE_PRIORITY,
        table,
        from: None,
        iif: None,
        oif: None,
    };
    let mut out = BTreeSet::from([
        RuleEntry {
            oif: Some(device.into()),
            ..base.clone()
        },
        RuleEntry {
            iif: Some(device.into()),
            ..base.clone()
        },
    ]);
    if let Some(s) = own_subnet {
        out.insert(RuleEntry {
            from: Some(s.trunc()),
            ..base
        });
    }
    out
}

impl Agent {
    /// After the lease, before the address: claims the lease's subnet for this network among
    /// the host's networks, and for a named network keeps its rules and table closed. Returns
    /// false when the lease had to be given back (it overlaps a subnet another of the host's
    /// networks keeps); the next step leases another one.
    pub(super) async fn isolate(
        &mut self,
        cfg: &NetworkConfig,
        link: &LinkInfo,
        own: &super::lease::OwnLease,
    ) -> Result<bool, AgentError> {
        let host = self.net.host.clone();
        let holder = host
            .claim(&self.net.name, own.subnet)
            .err()
            .or_else(|| host.yields(&self.net.name, own.subnet));
        if let Some(holder) = holder {
            warn!(
                subnet = %own.subnet, holder = %holder,
                "our lease overlaps this host's subnet in network {holder}; giving it back and leasing another"
            );
            self.store.delete(&own.key).await?;
            self.own = None;
            self.preferred = None;
            self.retry_at = Some(Instant::now());
            return Ok(false);
        }
        let Some(named) = self.net.named else {
            return Ok(true);
        };
        ensure_rules(&self.kernel, named.route_table, &link.name, Some(own.subnet)).await?;
        let table = self.kernel.with_table(named.route_table);
        let want = cfg.network.trunc();
        let have = table.unreachable_routes(ROUTE_PROTO_WEFT).await?;
        for stale in have.iter().filter(|r| **r != want) {
            info!(route = %stale, table = named.route_table, "kernel: remove stale unreachable route");
            table.remove_unreachable(*stale).await?;
        }
        if !have.contains(&want) {
            info!(route = %want, table = named.route_table, "kernel: add unreachable route closing the network's table");
            table.ensure_unreachable(want, ROUTE_PROTO_WEFT).await?;
        }
        Ok(true)
    }
}

/// Makes the weft rules pointing at `table` exactly the wanted ones.
async fn ensure_rules(kernel: &Kernel, table: u32, device: &str, own: Option<Ipv4Net>) -> Result<(), KernelError> {
    let want = wanted_rules(device, table, own);
    let have: BTreeSet<RuleEntry> = kernel
        .weft_rules()
        .await?
        .into_iter()
        .filter(|r| r.table == table)
        .collect();
    for r in have.difference(&want) {
        info!(rule = %r, "kernel: remove rule");
        kernel.remove_rule(r).await?;
    }
    for r in want.difference(&have) {
        info!(rule = %r, "kernel: add rule");
        kernel.ensure_rule(r).await?;
    }
    Ok(())
}

/// Takes a named network off this host: its rules, routing table, device (its neighbour and FDB
/// entries go with it), nft table, subnet file, and this host's lease in it. Returns one line
/// per thing removed; failures are logged and the rest is still attempted.
pub async fn teardown(
    kernel: &Kernel,
    store: &dyn Store,
    opts: &AgentOptions,
    net: &NetworkParams,
    vni: u32,
) -> Vec<String> {
    let mut done = Vec::new();
    net.host.release(&net.name);
    let table = crate::network::route_table(vni);
    let device = net.device_name(vni);
    if let Err(e) = remove_kernel_state(kernel, table, &device, &mut done).await {
        warn!(error = %e, "teardown: kernel state not fully removed");
    }
    // An L2 network's bridge (an L3 network has none).
    let bridge = crate::network::l2_bridge_name(vni);
    match kernel.link_by_name(&bridge).await {
        Ok(Some(link)) if link.kind.as_deref() == Some("bridge") => match kernel.delete_link(link.index).await {
            Ok(()) => done.push(format!("removed bridge {bridge} with its neighbour and FDB entries")),
            Err(e) => warn!(error = %e, "teardown: bridge not removed"),
        },
        Ok(_) => {}
        Err(e) => warn!(error = %e, "teardown: bridge not looked up"),
    }
    match net.nft.run(NftRequest::Remove(net.nft_table.clone())).await {
        Ok(NftOutcome::Removed(true)) => done.push(format!("removed nft table ip {}", net.nft_table)),
        Ok(_) => {}
        Err(e) => warn!(error = %e, "teardown: nft table not removed"),
    }
    // The subnet file, or an L2 network's file and weft-cni socket.
    for path in [
        net.subnet_file.clone(),
        crate::l2ipam::env::socket_path(&net.subnet_file),
    ] {
        match std::fs::remove_file(&path) {
            Ok(()) => done.push(format!("removed {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => warn!(path = %path.display(), error = %e, "teardown: file not removed"),
        }
    }
    match release_own_leases(kernel, store, opts, net).await {
        Ok(keys) => done.extend(keys.into_iter().map(|k| format!("released lease {k}"))),
        Err(e) => warn!(error = %e, "teardown: lease not released"),
    }
    done
}

async fn remove_kernel_state(
    kernel: &Kernel,
    table: u32,
    device: &str,
    done: &mut Vec<String>,
) -> Result<(), KernelError> {
    for r in kernel.weft_rules().await?.into_iter().filter(|r| r.table == table) {
        kernel.remove_rule(&r).await?;
        done.push(format!("removed rule {r}"));
    }
    let n = kernel.with_table(table).flush_table().await?;
    if n > 0 {
        done.push(format!("removed {n} routes of table {table}"));
    }
    if let Some(link) = kernel.link_by_name(device).await? {
        if link.kind.as_deref() == Some("vxlan") {
            kernel.delete_link(link.index).await?;
            done.push(format!("removed device {device} with its neighbour and FDB entries"));
        }
    }
    Ok(())
}

/// Deletes the leases of `net` that name this host's public IP.
async fn release_own_leases(
    kernel: &Kernel,
    store: &dyn Store,
    opts: &AgentOptions,
    net: &NetworkParams,
) -> Result<Vec<String>, AgentError> {
    let public_ip = iface::select(kernel, &opts.iface).await?.public_ip;
    let mut out = Vec::new();
    for e in store.list(&net.keys.subnets()).await?.entries {
        if Lease::from_entry(&e).is_ok_and(|l| l.public_ip == public_ip) && store.delete(&e.key).await? {
            out.push(e.key);
        }
    }
    Ok(out)
}

/// What named networks left on this host while no agent ran: devices `weft.<VNI>`, routing
/// tables and rules of VNIs no stored network uses, nft tables `weft-NAME` and subnet files of
/// names no longer stored. Things of a stored network, served here or not, are left alone.
pub async fn remove_leftovers(
    kernel: &Kernel,
    subnet_file: &std::path::Path,
    stored_names: &BTreeSet<String>,
    stored_vnis: &BTreeSet<u32>,
) -> Vec<String> {
    let mut done = Vec::new();
    let stale_vni = |vni: u32| !stored_vnis.contains(&vni);
    let result: Result<(), KernelError> = async {
        let mut tables = BTreeSet::new();
        for r in kernel.weft_rules().await? {
            if let Some(vni) = r.table.checked_sub(crate::network::ROUTE_TABLE_BASE) {
                if stale_vni(vni) {
                    kernel.remove_rule(&r).await?;
                    done.push(format!("removed rule {r}"));
                    tables.insert(r.table);
                }
            }
        }
        for link in kernel.links().await? {
            if let Some(vni) = crate::network::parse_l2_bridge(&link.name) {
                if stale_vni(vni) && link.kind.as_deref() == Some("bridge") {
                    kernel.delete_link(link.index).await?;
                    done.push(format!("removed bridge {}", link.name));
                }
                continue;
            }
            let Some(vni) = crate::network::parse_named_device(&link.name) else {
                continue;
            };
            if stale_vni(vni) && link.kind.as_deref() == Some("vxlan") {
                kernel.delete_link(link.index).await?;
                done.push(format!("removed device {}", link.name));
                tables.insert(crate::network::route_table(vni));
            }
        }
        for t in tables {
            let n = kernel.with_table(t).flush_table().await?;
            if n > 0 {
                done.push(format!("removed {n} routes of table {t}"));
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        warn!(error = %e, "removing what deleted networks left: kernel state not fully removed");
    }
    let names = stored_names.clone();
    let tables = tokio::task::spawn_blocking(move || -> Result<Vec<String>, KernelError> {
        let mut removed = Vec::new();
        for t in nft::tables()? {
            if crate::network::parse_named_nft_table(&t).is_some_and(|n| !names.contains(n)) && nft::remove(&t)? {
                removed.push(format!("removed nft table ip {t}"));
            }
        }
        Ok(removed)
    })
    .await;
    match tables {
        Ok(Ok(removed)) => done.extend(removed),
        Ok(Err(e)) => warn!(error = %e, "removing what deleted networks left: nft tables"),
        Err(e) => warn!(error = %e, "removing what deleted networks left: nft task failed"),
    }
    let dir = crate::network::named_subnet_file(subnet_file, "x")
        .parent()
        .map(std::path::Path::to_path_buf);
    if let Some(Ok(entries)) = dir.map(std::fs::read_dir) {
        for e in entries.flatten() {
            let path = e.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".env").or_else(|| n.strip_suffix(".sock")));
            let stale = name.is_some_and(|n| crate::network::validate_name(n).is_ok() && !stored_names.contains(n));
            if stale && std::fs::remove_file(&path).is_ok() {
                done.push(format!("removed {}", path.display()));
            }
        }
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn the_first_network_keeps_an_overlapping_subnet_and_the_default_always_does() {
        let h = HostSubnets::default();
        assert_eq!(h.claim("a", net("10.50.3.0/24")), Ok(()));
        assert_eq!(h.claim("a", net("10.50.3.0/24")), Ok(()));
        assert_eq!(h.claim("b", net("10.50.3.0/24")), Err("a".into()));
        assert_eq!(h.claim("b", net("10.50.0.0/16")), Err("a".into()));
        assert_eq!(h.claim("b", net("10.50.4.0/24")), Ok(()));
        assert_eq!(h.others("b"), [net("10.50.3.0/24")]);
        assert_eq!(h.yields("a", net("10.50.3.0/24")), None);
        // The default network claims whatever it leased; the named one then yields.
        assert_eq!(h.claim("default", net("10.50.4.0/24")), Ok(()));
        assert_eq!(h.yields("b", net("10.50.4.0/24")), Some("default".into()));
        assert_eq!(h.yields("default", net("10.50.4.0/24")), None);
        h.release("a");
        assert_eq!(h.claim("c", net("10.50.3.0/24")), Ok(()));
        let mut others = h.others("x");
        others.sort();
        assert_eq!(others, [net("10.50.3.0/24"), net("10.50.4.0/24"), net("10.50.4.0/24")]);
    }

    #[test]
    fn a_named_network_has_three_rules_into_its_table() {
        let r = wanted_rules("weft.100", 100_000_100, Some(net("10.50.3.0/24")));
        let shown: Vec<String> = r.iter().map(|r| r.to_string()).collect();
        assert_eq!(
            shown,
            [
                "1000: from all oif weft.100 lookup 100000100",
                "1000: from all iif weft.100 lookup 100000100",
                "1000: from 10.50.3.0/24 lookup 100000100",
            ]
        );
        assert_eq!(wanted_rules("weft.100", 100_000_100, None).len(), 2);
    }
}
