//! Peers: observe the device's entries, plan, execute. The only place the agent changes the
//! kernel's per-peer state.

use super::iface::PublicIface;
use super::lease::OwnLease;
use super::status::{PeerState, PeerStatus};
use super::{Agent, AgentError};
use crate::config::NetworkConfig;
use crate::kernel::{Kernel, KernelError, LinkInfo};
use crate::planner::peers::{select_peers, Host, Peer, Rejected};
use crate::planner::state::Observed;
use crate::planner::{peer_entries, plan, Devices, DirectLink, Op};
use futures::StreamExt;
use std::collections::HashSet;

/// Netlink requests in flight at once during a reconcile.
const PIPELINE: usize = 64;
use tracing::{info, warn};

impl Agent {
    /// Returns the number of kernel operations carried out.
    pub(super) async fn reconcile_peers(
        &mut self,
        cfg: &NetworkConfig,
        iface: &PublicIface,
        link: &LinkInfo,
        own: &OwnLease,
    ) -> Result<usize, AgentError> {
        let host = Host {
            public_ip: iface.public_ip,
            subnet: Some(own.subnet),
        };
        let set = select_peers(cfg, &host, self.leases.values());
        self.log_rejections(&set.rejected);
        // Peers' VXLAN must be accepted before their entries send traffic our way. On the first
        // pass of this process the table may not exist yet, and then nothing is filtered: the
        // entries go first, so a joining host is reachable without waiting for `nft`.
        let firewall_first = self.firewall.is_some();
        if firewall_first {
            self.ensure_firewall(cfg, own.subnet, &set.peers).await?;
        }

        let devices = Devices {
            vxlan: link.index,
            direct: cfg.backend.direct_routing.then_some(DirectLink {
                oif: iface.index,
                net: iface.local_net,
            }),
            public: Some(iface.index),
        };
        let mut observed = observe(&self.kernel, link.index).await?;
        observed.routes.extend(self.kernel.routes(iface.index).await?);
        let ops = plan(cfg.network, devices, &set.peers, &observed);
        let mut failed: HashSet<Op> = HashSet::new();
        let mut first_error = None;
        // The plan comes in phases (remove neighbours, FDB, routes; then add them in the same
        // order). Within a phase order does not matter, so requests are pipelined: a 10,000-peer
        // sync is then bounded by the kernel, not by one round trip per entry. The bound keeps
        // the netlink socket's buffer from overflowing.
        for phase in ops.chunk_by(|a, b| a.labels() == b.labels()) {
            let kernel = &self.kernel;
            let results: Vec<(Op, Result<(), KernelError>)> = futures::stream::iter(phase.iter().copied())
                .map(|op| async move { (op, execute(kernel, link.index, &op).await) })
                .buffered(PIPELINE)
                .collect()
                .await;
            for (op, result) in results {
                let (kind, action) = op.labels();
                self.shared.metrics.kernel_op(kind, action, result.is_ok());
                match result {
                    Ok(()) => info!(device = %link.name, kind, action, entry = %op, "kernel: {action} {kind}"),
                    Err(e) => {
                        warn!(device = %link.name, kind, action, entry = %op, error = %e, "kernel operation failed");
                        failed.insert(op);
                        first_error.get_or_insert(e);
                    }
                }
            }
        }
        self.record_peers(&set.peers, &set.rejected, devices, &failed);
        if !firewall_first {
            self.ensure_firewall(cfg, own.subnet, &set.peers).await?;
        }
        match first_error {
            Some(e) => Err(e.into()),
            None => Ok(ops.len()),
        }
    }

    /// Each refused lease is logged and counted once per revision, not at every resync. What is
    /// remembered is bounded by the leases in the store: a revision no longer current is forgotten.
    fn log_rejections(&mut self, rejected: &[Rejected]) {
        let leases = &self.leases;
        self.logged_rejections
            .retain(|(key, rev)| leases.get(key).is_some_and(|e| e.mod_revision == *rev));
        for r in rejected {
            let rev = self.leases.get(&r.key).map(|e| e.mod_revision).unwrap_or_default();
            if self.logged_rejections.insert((r.key.clone(), rev)) {
                self.shared.metrics.rejected(r.rejection.reason());
                // The key is the store's, not ours: quoted and cut short, so it cannot forge log lines.
                warn!(key = ?crate::lease::shown(&r.key), reason = r.rejection.reason(), "refusing lease: {}", r.rejection);
            }
        }
    }

    /// A peer is programmed unless one of its three entries failed just now.
    fn record_peers(&mut self, peers: &[Peer], rejected: &[Rejected], devices: Devices, failed: &HashSet<Op>) {
        let mut out = Vec::with_capacity(peers.len() + rejected.len());
        for p in peers {
            let e = peer_entries(p, devices);
            let bad = e.neigh.is_some_and(|n| failed.contains(&Op::EnsureNeigh(n)))
                || e.fdb.is_some_and(|f| failed.contains(&Op::EnsureFdb(f)))
                || failed.contains(&Op::EnsureRoute(e.route));
            out.push(PeerStatus {
                key: p.key.clone(),
                subnet: Some(p.subnet.to_string()),
                public_ip: Some(p.public_ip.to_string()),
                vtep_mac: Some(p.vtep_mac.to_string()),
                state: if bad { PeerState::Pending } else { PeerState::Programmed },
                reason: None,
            });
        }
        let programmed = out.iter().filter(|p| p.state == PeerState::Programmed).count();
        self.shared.metrics.peers_programmed.set(programmed as i64);
        for r in rejected {
            let lease = self
                .leases
                .get(&r.key)
                .and_then(|e| crate::lease::Lease::from_entry(e).ok());
            out.push(PeerStatus {
                key: r.key.clone(),
                subnet: lease.as_ref().map(|l| l.subnet.to_string()),
                public_ip: lease.as_ref().map(|l| l.public_ip.to_string()),
                vtep_mac: lease.as_ref().map(|l| l.vtep_mac.to_string()),
                state: PeerState::Rejected,
                reason: Some(r.rejection.to_string()),
            });
        }
        self.peer_status = out;
    }
}

pub async fn observe(kernel: &Kernel, index: u32) -> Result<Observed, KernelError> {
    Ok(Observed {
        neighs: kernel.neighs(index).await?,
        fdbs: kernel.fdbs(index).await?,
        routes: kernel.routes(index).await?,
    })
}

pub async fn execute(kernel: &Kernel, index: u32, op: &Op) -> Result<(), KernelError> {
    match op {
        Op::RemoveNeigh(n) => kernel.remove_neigh(index, n).await,
        Op::RemoveFdb(f) => kernel.remove_fdb(index, f).await,
        Op::RemoveRoute(r) => kernel.remove_route(r).await,
        Op::EnsureNeigh(n) => kernel.ensure_neigh(index, n).await,
        Op::EnsureFdb(f) => kernel.ensure_fdb(index, f).await,
        Op::EnsureRoute(r) => kernel.ensure_route(r).await,
    }
}
