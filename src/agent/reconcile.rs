//! Peers: observe the device's entries, plan, execute. The only place the agent changes the
//! kernel's per-peer state.

use super::iface::PublicIface;
use super::lease::OwnLease;
use super::status::PeerReport;
use super::{Agent, AgentError};
use crate::config::NetworkConfig;
use crate::kernel::{Kernel, KernelError, LinkInfo};
use crate::planner::peers::{select_parsed, update_selection, Host, ParsedLease, PeerDelta, PeerSet, Rejected};
use crate::planner::state::{Change, Observed};
use crate::planner::{plan, plan_scoped, Devices, DirectLink, Op};
use futures::StreamExt;
use std::collections::HashSet;
use std::sync::Arc;

use tracing::{info, warn};

/// Netlink requests in flight at once during a reconcile.
const PIPELINE: usize = 64;
/// A reconcile with more operations than this logs a summary per kind instead of one line per
/// entry: a 10,000-peer sync would otherwise write 30,000 lines.
const LOG_EACH_UP_TO: usize = 64;

/// After a full reconcile this large, freed memory is handed back to the kernel.
const TRIM_AFTER_OPS: usize = 1000;

/// A large sync (a listing, thousands of netlink requests and replies) leaves freed heap
/// pages that glibc keeps for reuse; the agent's steady state needs far less, so it returns
/// them rather than keep the peak resident.
fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The kernel's entries for our VXLAN device and public interface, as the agent last knew them.
pub(crate) struct KernelView {
    vxlan: u32,
    public: u32,
    /// The routing table the routes are in.
    table: u32,
    observed: Observed,
}

/// The lease changes since the last reconcile: one key (with the version it had then) can be
/// planned on its own; anything more, or a relist, is planned in full.
pub(crate) enum Pending {
    None,
    One { key: String, old: Option<ParsedLease> },
    Many,
}

impl Pending {
    pub(crate) fn note(&mut self, key: String, old: Option<ParsedLease>) {
        *self = match std::mem::replace(self, Pending::Many) {
            Pending::None => Pending::One { key, old },
            // The same key again: its version at the last reconcile is still the one to diff.
            Pending::One { key: k, old: first } if k == key => Pending::One { key, old: first },
            _ => Pending::Many,
        };
    }
}

/// A peer selection and what it was made for: valid for a fast update only while these hold.
pub(crate) struct Selected {
    set: Arc<PeerSet>,
    cfg: NetworkConfig,
    host: Host,
    devices: Devices,
}

impl KernelView {
    pub(crate) fn agrees_with(&self, change: &Change) -> bool {
        self.observed
            .agrees_with(change, self.vxlan, self.table, &[self.vxlan, self.public])
    }
}

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
        let devices = Devices {
            vxlan: link.index,
            direct: cfg.backend.direct_routing.then_some(DirectLink {
                oif: iface.index,
                net: iface.local_net,
            }),
            public: Some(iface.index),
        };
        // Planned against the view when we have one: a store event costs no kernel read.
        let view = self
            .view
            .take()
            .filter(|v| v.vxlan == link.index && v.public == iface.index && v.table == self.kernel.table());
        // One lease changed, nothing else: select and plan for it alone, O(log n) at 10,000
        // peers. Otherwise (or when another lease's verdict could change) in full.
        let pending = std::mem::replace(&mut self.pending, Pending::None);
        let fast = match (&pending, self.selected.take(), &view) {
            (Pending::One { key, old }, Some(mut sel), Some(_))
                if sel.cfg == *cfg && sel.host == host && sel.devices == devices =>
            {
                // Drop `/status`'s hold on the set first, so it is changed in place, not copied.
                self.shared.clear_peers();
                let delta = update_selection(cfg, &host, Arc::make_mut(&mut sel.set), &self.leases, key, old.as_ref());
                delta.map(|d| (sel, d))
            }
            _ => None,
        };
        let (set, delta) = match fast {
            Some((sel, d)) => (sel.set, Some(d)),
            None => (Arc::new(select_parsed(cfg, &host, self.leases.values())), None),
        };
        self.log_rejections(&set.rejected);
        // Peers' VXLAN must be accepted before their entries send traffic our way. On the first
        // pass of this process the table may not exist yet, and then nothing is filtered: the
        // entries go first, so a joining host is reachable without waiting for `nft`.
        // A peer that only leaves is filtered after its entries are gone, for the same reason.
        let leaving = matches!(delta, Some(PeerDelta { after: None, .. }));
        let firewall_first = self.firewall.written().is_some() && !leaving;
        if firewall_first {
            self.ensure_firewall(cfg, own.subnet, &set.peers).await?;
        }

        let mut observed = match view {
            Some(v) => v.observed,
            None => observe(&self.kernel, link.index, iface.index).await?,
        };
        let ops = match &delta {
            Some(PeerDelta { before, after }) => {
                plan_scoped(cfg.network, devices, before.as_slice(), after.as_slice(), &observed)
            }
            None => plan(cfg.network, devices, &set.peers, &observed),
        };
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
            let (kind, action) = phase[0].labels();
            if phase.len() > LOG_EACH_UP_TO {
                info!(device = %link.name, kind, action, count = phase.len(), "kernel: {action} {} {kind} entries", phase.len());
            }
            for (op, result) in results {
                self.shared.metrics.kernel_op(kind, action, result.is_ok());
                match result {
                    Ok(()) => {
                        observed.apply(&op);
                        if phase.len() <= LOG_EACH_UP_TO {
                            info!(device = %link.name, kind, action, entry = %op, "kernel: {action} {kind}");
                        }
                    }
                    Err(e) => {
                        warn!(device = %link.name, kind, action, entry = %op, error = %e, "kernel operation failed");
                        failed.insert(op);
                        first_error.get_or_insert(e);
                    }
                }
            }
        }
        // After a failure the kernel is read again at the retry, not trusted to be as planned.
        if failed.is_empty() {
            self.view = Some(KernelView {
                vxlan: link.index,
                public: iface.index,
                table: self.kernel.table(),
                observed,
            });
        }
        if !firewall_first {
            self.ensure_firewall(cfg, own.subnet, &set.peers).await?;
        }
        self.selected = Some(Selected {
            set: set.clone(),
            cfg: cfg.clone(),
            host,
            devices,
        });
        self.record_peers(set, devices, failed);
        if delta.is_none() && ops.len() > TRIM_AFTER_OPS {
            trim_heap();
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
            .retain(|(key, rev)| leases.get(key).is_some_and(|p| p.entry.mod_revision == *rev));
        for r in rejected {
            let rev = self
                .leases
                .get(&r.key)
                .map(|p| p.entry.mod_revision)
                .unwrap_or_default();
            if self.logged_rejections.insert((r.key.clone(), rev)) {
                self.shared.metrics.rejected(r.rejection.reason());
                // The key is the store's, not ours: quoted and cut short, so it cannot forge log lines.
                warn!(key = ?crate::lease::shown(&r.key), reason = r.rejection.reason(), "refusing lease: {}", r.rejection);
            }
        }
    }

    /// Hands the planned peers to `/status` (rendered there, when asked) and sets the gauge.
    fn record_peers(&mut self, set: Arc<PeerSet>, devices: Devices, failed: HashSet<Op>) {
        let rejected_leases = set
            .rejected
            .iter()
            .map(|r| self.leases.get(&r.key).and_then(|p| p.lease.clone().ok()))
            .collect();
        let report = PeerReport {
            set,
            rejected_leases,
            devices: Some(devices),
            failed,
        };
        let pending = if report.failed.is_empty() {
            0
        } else {
            report.set.peers.iter().filter(|p| report.is_pending(p)).count()
        };
        self.programmed = report.set.peers.len() - pending;
        self.shared.metrics.peers_programmed.set(self.programmed as i64);
        self.shared.set_peers(Arc::new(report));
    }
}

/// Reads the device's neighbours and FDB entries and the routes on it and on the public
/// interface: three dumps.
pub async fn observe(kernel: &Kernel, vxlan: u32, public: u32) -> Result<Observed, KernelError> {
    Ok(Observed {
        neighs: kernel.neighs(vxlan).await?.into_iter().collect(),
        fdbs: kernel.fdbs(vxlan).await?.into_iter().collect(),
        routes: kernel.routes_on(&[vxlan, public]).await?,
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
