//! A network's nftables table and the VXLAN device's checksum offload: kept as the config and
//! the peers say, checked again at every resync (so a hand edit is repaired within one). The
//! table's upkeep ([`FirewallKeeper`]) is shared by the L3 and the L2 agents.
//!
//! The VXLAN peer filter lives in one of two places. When the default network is the only one
//! on its port and `--bpf-pin-dir` is on bpffs, it is a BPF `sk_lookup` program
//! (`kernel::bpf`): it costs only the VXLAN socket's lookups, where an nft `input` chain costs
//! every packet the host receives a hook pass. Otherwise (a named or L2 network shares the
//! port, so the check needs the VNI from the packet; no bpffs; BPF refused) it is the nft
//! rule. A switch puts the new filter in place before the old one goes, so no datagram passes
//! unchecked in between.

use super::metrics::Metrics;
use super::nft_batcher::NftBatcher;
use super::status::VxlanFilterStatus;
use super::{Agent, AgentError};
use crate::config::NetworkConfig;
use crate::kernel::bpf::{self, Attached, BpfError, PeerFilter};
use crate::kernel::nft::{Applied, FirewallSpec, L3Spec, NftOutcome, NftRequest};
use crate::kernel::offload::{self, TxChecksumPolicy};
use crate::kernel::{KernelError, LinkInfo};
use crate::planner::peers::Peer;
use ipnet::Ipv4Net;
use std::path::Path;
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
    /// Dropped VXLAN (the table's counter plus the BPF filter's) as last read (at the last
    /// full check).
    dropped: u64,
    /// Set by the nft task when a deferred set update failed.
    deferred_failed: Arc<AtomicBool>,
    /// The kernel's drop counters as last read: the table's and the BPF program's (`None`:
    /// not read since it was attached). The metric grows by what they grew.
    nft_dropped_seen: Option<u64>,
    bpf_dropped_seen: Option<u64>,
    /// The table's counter as listed at the last full check.
    nft_dropped_now: u64,
    /// The peer filter as a BPF program, while this network filters there.
    bpf: Option<PeerFilter>,
    /// Why the BPF filter is not used, as last logged (logged once per reason).
    bpf_refused: Option<String>,
    /// Why detaching BPF filters failed, as last logged (logged once per reason).
    bpf_remove_failed: Option<String>,
}

/// How much a kernel counter grew since `seen` (all of it if it started over: a table
/// recreated, a program attached anew); `now` `None` (not readable, or no program) forgets it.
fn growth(seen: &mut Option<u64>, now: Option<u64>) -> u64 {
    let grown = match (*seen, now) {
        (Some(s), Some(n)) if n >= s => n - s,
        (_, Some(n)) => n,
        (_, None) => 0,
    };
    *seen = now;
    grown
}

/// The BPF filter after an ensure: how it was attached (`None`: it already was), and the peers
/// (added, removed).
type BpfEnsured = (PeerFilter, Option<Attached>, (usize, usize));

/// A network's part in the host's BPF peer filter.
#[derive(Debug, Clone, Copy)]
pub(super) enum BpfRole<'a> {
    /// Named and L2 networks: their tables police by VNI, in nft; the BPF filter is not theirs.
    None,
    /// The default network owns it: it filters there (pinned in the directory, if any) when
    /// it can, and otherwise makes sure no BPF filter of weft's is left attached.
    Owner(Option<&'a Path>),
}

/// The BPF filter's pin directory when `spec` may use it: the filter is on, port-wide (no VNI
/// to tell networks apart), and the agent has a pin directory.
fn bpf_candidate<'a>(spec: &FirewallSpec, role: BpfRole<'a>) -> Option<&'a Path> {
    let port_wide = spec.vni.is_none() && spec.exempt_vnis.is_empty();
    match role {
        BpfRole::Owner(dir) => dir.filter(|_| spec.filter_vxlan && port_wide),
        BpfRole::None => None,
    }
}

impl FirewallKeeper {
    /// The table as last written, if it was.
    pub fn written(&self) -> Option<&FirewallSpec> {
        self.written.as_ref()
    }

    /// The filter for `/status`, once the table was written.
    pub fn status(&self) -> Option<VxlanFilterStatus> {
        let w = self.written.as_ref()?;
        let place = match (&self.bpf, w.filter_vxlan) {
            (Some(_), _) => "bpf",
            (None, true) => "nft",
            (None, false) => "off",
        };
        Some(VxlanFilterStatus {
            table: w.table.clone(),
            enabled: place != "off",
            peers: w.peers.len(),
            dropped: self.dropped,
            place: place.into(),
        })
    }

    /// The next [`FirewallKeeper::ensure`] checks the whole table (resync).
    pub fn check_at_next(&mut self) {
        self.check_due = true;
    }

    /// Writes the table (and the BPF filter, when `role` owns it and the spec allows it) when
    /// what they should hold changed, or when a resync asks for a check.
    pub async fn ensure(
        &mut self,
        spec: FirewallSpec,
        nft: &NftBatcher,
        metrics: &Metrics,
        role: BpfRole<'_>,
    ) -> Result<(), KernelError> {
        let reread = self.check_due || self.written.is_none();
        let on_bpf = match bpf_candidate(&spec, role) {
            Some(dir) => self.ensure_bpf(dir, &spec, reread, metrics).await,
            None => false,
        };
        // With the BPF filter in place, the nft rule goes (after it, never before).
        let nft_spec = FirewallSpec {
            filter_vxlan: spec.filter_vxlan && !on_bpf,
            ..spec
        };
        let checked = self.ensure_nft(nft_spec, nft, metrics).await?;
        if !on_bpf && (checked || self.bpf.is_some()) {
            // The nft rule is in place (or the filter is off): no BPF filter may stay behind,
            // neither ours nor one a previous agent pinned.
            if let BpfRole::Owner(dir) = role {
                self.remove_bpf(dir, metrics).await;
            }
        }
        if checked {
            let bpf_now = match &self.bpf {
                Some(f) => f
                    .dropped()
                    .map_err(|e| warn!(error = %e, "cannot read the BPF peer filter's drop counter"))
                    .ok(),
                None => None,
            };
            metrics.add_vxlan_dropped(growth(&mut self.nft_dropped_seen, Some(self.nft_dropped_now)));
            metrics.add_vxlan_dropped(growth(&mut self.bpf_dropped_seen, bpf_now));
            self.dropped = self.nft_dropped_now + bpf_now.unwrap_or(0);
        }
        Ok(())
    }

    /// Attaches (or takes over) the BPF filter and makes its peers `spec.peers`; false if it
    /// cannot be used (logged once per reason), and the nft rule must filter.
    async fn ensure_bpf(&mut self, dir: &Path, spec: &FirewallSpec, reread: bool, metrics: &Metrics) -> bool {
        // Refused (no bpffs, say): tried again at resyncs only, not at every reconcile.
        if self.bpf_refused.is_some() && !reread {
            return false;
        }
        let (dir_buf, port, peers) = (dir.to_path_buf(), spec.vxlan_port, spec.peers.clone());
        let current = self.bpf.take();
        let work = move || -> Result<BpfEnsured, BpfError> {
            let (mut f, how) = match current {
                // At a resync, also check that it is still attached and pinned.
                Some(f) if f.port() == port && f.dir() == dir_buf && (!reread || f.attached_here()?) => (f, None),
                // First use, a new port, or a resync found it detached or unpinned by hand.
                _ => {
                    let (f, how) = PeerFilter::ensure(&dir_buf, port)?;
                    (f, Some(how))
                }
            };
            let changed = f.sync(&peers, reread)?;
            if reread {
                // One filter per namespace: another left by a previous pin directory goes.
                bpf::detach_strays(Some(&f))?;
            }
            Ok((f, how, changed))
        };
        let result = tokio::task::spawn_blocking(work).await.unwrap_or_else(|e| {
            Err(BpfError {
                op: "task",
                object: dir.display().to_string(),
                message: e.to_string(),
                errno: 0,
            })
        });
        match result {
            Ok((f, how, (added, removed))) => {
                metrics.kernel_op("bpf", "update", true);
                match how {
                    Some(Attached::Created) => {
                        info!(pin_dir = %dir.display(), port, peers = spec.peers.len(), "VXLAN peer filter: BPF sk_lookup program attached")
                    }
                    Some(Attached::TakenOver) => {
                        info!(pin_dir = %dir.display(), port, peers = spec.peers.len(), "VXLAN peer filter: took over the pinned BPF program")
                    }
                    None if reread && added + removed > 0 => {
                        warn!(pin_dir = %dir.display(), added, removed, "VXLAN peer filter: BPF peers map was changed by hand; repaired")
                    }
                    None => {}
                }
                self.bpf = Some(f);
                self.bpf_refused = None;
                true
            }
            Err(e) => {
                let why = e.to_string();
                // Counted (and logged) once per reason: without bpffs, filtering in nft is a
                // place, not a fault that should keep an error-rate alert firing.
                if self.bpf_refused.as_deref() != Some(why.as_str()) {
                    metrics.kernel_op("bpf", "update", false);
                    warn!(pin_dir = %dir.display(), error = %why, "VXLAN peer filter: BPF not usable; filtering in nft");
                    self.bpf_refused = Some(why);
                }
                false
            }
        }
    }

    /// Detaches every BPF peer filter of weft's in this namespace (ours, a previous agent's,
    /// one pinned in another directory) and removes the pins in `dir`.
    async fn remove_bpf(&mut self, dir: Option<&Path>, metrics: &Metrics) {
        let ours = self.bpf.take();
        let dir_buf = dir.map(Path::to_path_buf);
        let work = move || -> Result<usize, BpfError> {
            let mut n = match (ours, dir_buf) {
                (Some(f), _) => f.remove().map(|()| 1)?,
                (None, Some(d)) => usize::from(bpf::remove_pinned(&d)?),
                (None, None) => 0,
            };
            n += bpf::detach_strays(None)?;
            Ok(n)
        };
        let shown = dir.map(|d| d.display().to_string()).unwrap_or_else(|| "none".into());
        let result = tokio::task::spawn_blocking(work).await;
        if result.as_ref().is_ok_and(|r| r.is_ok()) {
            self.bpf_remove_failed = None;
        }
        match result {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => {
                metrics.kernel_op("bpf", "remove", true);
                let place = if self.written.as_ref().is_some_and(|w| w.filter_vxlan) {
                    "the nft rule filters"
                } else {
                    "the filter is off"
                };
                info!(pin_dir = %shown, programs = n, "VXLAN peer filter: BPF program detached; {place}")
            }
            Ok(Err(e)) => {
                metrics.kernel_op("bpf", "remove", false);
                let why = e.to_string();
                if self.bpf_remove_failed.as_deref() != Some(why.as_str()) {
                    warn!(pin_dir = %shown, error = %why, "cannot detach the BPF peer filter");
                    self.bpf_remove_failed = Some(why);
                }
            }
            Err(e) => warn!(error = %e, "BPF removal task failed"),
        }
    }

    /// Writes the nft table; true if this was a full check (counter read).
    async fn ensure_nft(
        &mut self,
        spec: FirewallSpec,
        nft: &NftBatcher,
        metrics: &Metrics,
    ) -> Result<bool, KernelError> {
        if self.deferred_failed.swap(false, Ordering::Relaxed) {
            metrics.kernel_op("nft", "update", false);
            self.check_due = true;
        }
        if self.written.as_ref() == Some(&spec) && !self.check_due {
            return Ok(false);
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
                    return Ok(false);
                }
                match nft.run(request).await {
                    Ok(_) => {
                        metrics.kernel_op("nft", "update", true);
                        info!(table = %spec.table, peers = spec.peers.len(), "nft: updated peers set");
                        self.written = Some(spec);
                        return Ok(false);
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
        self.nft_dropped_now = dropped;
        self.written = Some(spec);
        self.check_due = false;
        Ok(true)
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
        // Only the default network's agent owns the host's BPF filter: a named network's table
        // always polices by VNI.
        let role = match self.net.is_default() {
            true => BpfRole::Owner(self.opts.bpf_pin_dir.as_deref()),
            false => BpfRole::None,
        };
        Ok(self
            .firewall
            .ensure(spec, &self.net.nft, &self.shared.metrics, role)
            .await?)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metric_grows_by_what_the_counters_grew() {
        let mut seen = None;
        assert_eq!(
            growth(&mut seen, Some(7)),
            7,
            "first read: all of it (kept across restarts)"
        );
        assert_eq!(growth(&mut seen, Some(7)), 0);
        assert_eq!(growth(&mut seen, Some(10)), 3);
        assert_eq!(growth(&mut seen, Some(2)), 2, "started over: a recreated table");
        assert_eq!(growth(&mut seen, None), 0, "program detached");
        assert_eq!(seen, None);
        assert_eq!(growth(&mut seen, Some(4)), 4, "attached anew");
    }

    #[test]
    fn only_the_default_network_filtering_a_port_of_its_own_uses_bpf() {
        let dir = Path::new("/sys/fs/bpf/weft");
        let spec = FirewallSpec {
            table: "weft".into(),
            vxlan_port: 8472,
            peers: Default::default(),
            filter_vxlan: true,
            vni: None,
            exempt_vnis: Default::default(),
            l3: None,
        };
        assert_eq!(bpf_candidate(&spec, BpfRole::Owner(Some(dir))), Some(dir));
        assert_eq!(bpf_candidate(&spec, BpfRole::Owner(None)), None, "--bpf-pin-dir=none");
        assert_eq!(bpf_candidate(&spec, BpfRole::None), None, "not the owner");
        let off = FirewallSpec {
            filter_vxlan: false,
            ..spec.clone()
        };
        assert_eq!(bpf_candidate(&off, BpfRole::Owner(Some(dir))), None);
        let shared = FirewallSpec {
            exempt_vnis: [100].into(),
            ..spec.clone()
        };
        assert_eq!(
            bpf_candidate(&shared, BpfRole::Owner(Some(dir))),
            None,
            "a named network shares the port"
        );
        let named = FirewallSpec { vni: Some(100), ..spec };
        assert_eq!(bpf_candidate(&named, BpfRole::Owner(Some(dir))), None);
    }
}
