//! A network's nftables table and the VXLAN device's checksum offload: kept as the config and
//! the peers say, checked again at every resync (so a hand edit is repaired within one). The
//! table's upkeep ([`FirewallKeeper`]) is shared by the L3 and the L2 agents.

use super::metrics::Metrics;
use super::nft_batcher::NftBatcher;
use super::{Agent, AgentError};
use crate::config::NetworkConfig;
use crate::kernel::nft::{Applied, FirewallSpec, L3Spec, NftOutcome, NftRequest};
use crate::kernel::offload::{self, TxChecksumPolicy};
use crate::kernel::{KernelError, LinkInfo};
use crate::planner::peers::Peer;
use ipnet::Ipv4Net;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tracing::{info, warn};

/// One network's nft table as last written through the host's nft task, for the L3 and the L2
/// agents alike: a change of peers alone is one cheap set update, anything else (and every
/// resync) a full check.
#[derive(Debug, Default)]
pub(super) struct FirewallKeeper {
    /// The table as last written.
    written: Option<FirewallSpec>,
    /// A resync asked to check the whole table.
    check_due: bool,
    /// The table's dropped-VXLAN counter as last read (at the last full check).
    dropped: u64,
    /// Set by the nft task when a deferred set update failed.
    deferred_failed: Arc<AtomicBool>,
}

impl FirewallKeeper {
    /// The table as last written, if it was.
    pub fn written(&self) -> Option<&FirewallSpec> {
        self.written.as_ref()
    }

    /// The dropped-VXLAN counter as last read.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The next [`FirewallKeeper::ensure`] checks the whole table (resync).
    pub fn check_at_next(&mut self) {
        self.check_due = true;
    }

    /// Writes the table when what it should hold changed, or when a resync asks for a check.
    pub async fn ensure(&mut self, spec: FirewallSpec, nft: &NftBatcher, metrics: &Metrics) -> Result<(), KernelError> {
        if self.deferred_failed.swap(false, Ordering::Relaxed) {
            metrics.kernel_op("nft", "update", false);
            self.check_due = true;
        }
        if self.written.as_ref() == Some(&spec) && !self.check_due {
            return Ok(());
        }
        // A peer joining or leaving only changes the set: one transaction over nfnetlink
        // (`nft` only if that fails, see `kernel::nft::setelem`). The full check (list,
        // compare, rewrite if needed, read the counter) runs at start, when anything else
        // changed, at every resync, and if the fast path fails.
        if let (Some(old), false) = (&self.written, self.check_due) {
            if (FirewallSpec {
                peers: spec.peers.clone(),
                ..old.clone()
            }) == spec
            {
                let request = NftRequest::UpdatePeers {
                    table: spec.table.clone(),
                    added: spec.peers.difference(&old.peers).copied().collect(),
                    removed: old.peers.difference(&spec.peers).copied().collect(),
                };
                // Peers that only left: their entries are gone already, so nothing waits for
                // the set to shrink; it goes with the nft task's next round (within `LATER`).
                let only_removed = matches!(&request, NftRequest::UpdatePeers { added, .. } if added.is_empty());
                if only_removed && nft.run_later(request.clone(), self.deferred_failed.clone()).is_ok() {
                    metrics.kernel_op("nft", "update", true);
                    info!(table = %spec.table, peers = spec.peers.len(), "nft: peers set shrink queued");
                    self.written = Some(spec);
                    return Ok(());
                }
                match nft.run(request).await {
                    Ok(_) => {
                        metrics.kernel_op("nft", "update", true);
                        info!(table = %spec.table, peers = spec.peers.len(), "nft: updated peers set");
                        self.written = Some(spec);
                        return Ok(());
                    }
                    Err(e) => {
                        metrics.kernel_op("nft", "update", false);
                        warn!(table = %spec.table, error = %e, "nft: peers set update failed; checking the whole table");
                    }
                }
            }
        }
        let spec_changed = self.written.as_ref() != Some(&spec);
        let outcome = nft.run(NftRequest::Ensure(spec.clone())).await;
        metrics.kernel_op("nft", "ensure", outcome.is_ok());
        let NftOutcome::Ensured { applied, dropped } = outcome? else {
            return Err(KernelError::Nft {
                op: "ensure",
                message: format!("unexpected answer from the nft task for table {}", spec.table),
            });
        };
        match applied {
            Applied::Unchanged => {}
            Applied::Created => info!(
                table = %spec.table,
                ip_masq = spec.l3.as_ref().is_some_and(|l3| l3.ip_masq),
                filter_vxlan = spec.filter_vxlan,
                peers = spec.peers.len(),
                "nft: created table"
            ),
            Applied::PeersUpdated => info!(table = %spec.table, peers = spec.peers.len(), "nft: updated peers set"),
            Applied::Rewritten if spec_changed => info!(table = %spec.table, "nft: rewrote table"),
            Applied::Rewritten => warn!(table = %spec.table, "nft: table was changed by hand; repaired"),
        }
        // The counter as listed before the write (a rewrite keeps its value).
        metrics.set_vxlan_dropped(dropped);
        self.dropped = dropped;
        self.written = Some(spec);
        self.check_due = false;
        Ok(())
    }
}

impl Agent {
    /// The network's table as its config, lease and peers say (see [`FirewallKeeper`]).
    pub(super) async fn ensure_firewall(
        &mut self,
        cfg: &NetworkConfig,
        own_subnet: Ipv4Net,
        peers: &[Peer],
    ) -> Result<(), AgentError> {
        let spec = FirewallSpec {
            table: self.net.nft_table.clone(),
            vxlan_port: cfg.backend.port,
            peers: peers.iter().map(|p| p.public_ip).collect(),
            filter_vxlan: self.opts.vxlan_peer_filter,
            vni: self.net.named.map(|_| cfg.backend.vni),
            exempt_vnis: if self.net.is_default() {
                self.net.host.named_vnis()
            } else {
                Default::default()
            },
            l3: Some(L3Spec {
                network: cfg.network,
                own_subnet,
                ip_masq: self.opts.ip_masq,
                isolate: self.net.named.map(|_| self.net.device_name(cfg.backend.vni)),
            }),
        };
        Ok(self.firewall.ensure(spec, &self.net.nft, &self.shared.metrics).await?)
    }

    /// Applies the `--tx-checksum-offload` policy once per device (it is a device setting).
    pub(super) async fn ensure_offload(&mut self, link: &LinkInfo) -> Result<(), AgentError> {
        if self.offload_done_for == Some(link.index) {
            return Ok(());
        }
        let release = offload::running_kernel_release();
        if let Some(on) = self.opts.tx_checksum.wanted(&release) {
            let dev = link.name.clone();
            let changed = tokio::task::spawn_blocking(move || offload::ensure_tx_checksum(&dev, on))
                .await
                .map_err(|e| KernelError::Nft {
                    op: "ethtool",
                    message: e.to_string(),
                })??;
            if changed {
                let why = match self.opts.tx_checksum {
                    TxChecksumPolicy::Auto => "kernel before 5.7 corrupts VXLAN checksums under NAT",
                    _ => "--tx-checksum-offload",
                };
                info!(device = %link.name, kernel = %release, on, reason = why, "set tx checksum offload");
            }
        }
        self.offload_done_for = Some(link.index);
        Ok(())
    }
}
