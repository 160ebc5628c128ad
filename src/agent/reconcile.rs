//! Peers: observe the device's entries, plan, execute. The only place the agent changes the
//! kernel's per-peer state.

use super::iface::PublicIface;
use super::lease::OwnLease;
use super::{Agent, AgentError};
use crate::config::NetworkConfig;
use crate::kernel::{Kernel, KernelError, LinkInfo};
use crate::planner::peers::{select_peers, Host, Rejected};
use crate::planner::state::Observed;
use crate::planner::{plan, Op};
use tracing::{info, warn};

impl Agent {
    pub(super) async fn reconcile_peers(
        &mut self,
        cfg: &NetworkConfig,
        iface: &PublicIface,
        link: &LinkInfo,
        own: &OwnLease,
    ) -> Result<(), AgentError> {
        let host = Host {
            public_ip: iface.public_ip,
            subnet: Some(own.subnet),
        };
        let set = select_peers(cfg, &host, self.leases.values());
        self.log_rejections(&set.rejected);

        let observed = observe(&self.kernel, link.index).await?;
        let ops = plan(cfg.network, link.index, &set.peers, &observed);
        let mut first_error = None;
        for op in &ops {
            let (kind, action) = op.labels();
            match execute(&self.kernel, link.index, op).await {
                Ok(()) => info!(device = %link.name, kind, action, entry = %op, "kernel: {action} {kind}"),
                Err(e) => {
                    warn!(device = %link.name, kind, action, entry = %op, error = %e, "kernel operation failed");
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    /// Each refused lease is logged once per revision, not at every resync.
    fn log_rejections(&mut self, rejected: &[Rejected]) {
        for r in rejected {
            let rev = self.leases.get(&r.key).map(|e| e.mod_revision).unwrap_or_default();
            if self.logged_rejections.insert((r.key.clone(), rev)) {
                warn!(key = %r.key, reason = r.rejection.reason(), "refusing lease: {}", r.rejection);
            }
        }
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
