//! The per-host agent: one task that owns the host's state and reconciles it.
//!
//! Inputs: the store (listed, then watched), kernel events for our device and public interface,
//! a periodic resync and the lease renewal deadline. Every input leads to the same `step`:
//! config → public interface → device → lease → address and `subnet.env` → peers. Nothing is ever
//! flushed; each step only diffs observed against desired state, so a restart drops no packet.

pub mod cleanup;
pub mod device;
mod firewall;
mod forward_check;
pub mod http;
pub mod iface;
pub mod isolation;
mod l2;
mod l2_socket;
pub mod lease;
pub mod metrics;
mod nft_batcher;
mod notes;
pub mod params;
pub(crate) mod reconcile;
mod report;
pub mod status;
pub mod supervisor;

use crate::config::NetworkConfig;
use crate::kernel::{self, Kernel, KernelError, KernelEvent, LinkInfo, VxlanSpec};
use crate::lease::vxlan_lease_value;
use crate::network::NetworkKeys;
use crate::planner::peers::{LeaseTable, ParsedLease};
use crate::store::{self, Entry, Store, StoreError, WatchEvent};
use crate::subnet_env::SubnetEnv;
use http::Shared;
use iface::{IfaceOptions, PublicIface};
use ipnet::Ipv4Net;
use lease::{LeaseRequest, OwnLease};
use notes::Notes;
use params::NetworkParams;
use status::ReconcileStatus;
use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{error, info, warn};

#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// `--store sqlite:PATH`, or etcd from the `--etcd-*` flags.
    pub store: store::StoreConfig,
    /// `--etcd-prefix`: where the network lives in the store.
    pub prefix: String,
    pub iface: IfaceOptions,
    pub subnet_file: PathBuf,
    pub lease_ttl: Duration,
    /// Renew the lease this long before it expires (at most half its lifetime before).
    pub renew_margin: Duration,
    pub resync_interval: Duration,
    pub ip_masq: bool,
    /// Accept VXLAN only from current peers' public IPs (nftables set).
    pub vxlan_peer_filter: bool,
    /// `--bpf-pin-dir`: where the peer filter's sk_lookup program is pinned; `None`: nft only.
    pub bpf_pin_dir: Option<PathBuf>,
    pub tx_checksum: crate::kernel::offload::TxChecksumPolicy,
    /// Where to serve `/healthz`, `/readyz`, `/metrics` and `/status`; off when `None`.
    pub healthz_addr: Option<SocketAddr>,
    /// `--networks`: the networks to serve (`default` is the default network); all when `None`.
    pub networks: Option<Vec<String>>,
}

/// `--bpf-pin-dir`'s default: where systemd mounts bpffs.
pub const DEFAULT_BPF_PIN_DIR: &str = "/sys/fs/bpf/weft";

/// `--bpf-pin-dir`'s value as an option: empty or `none` keeps the peer filter in nft.
pub fn bpf_pin_dir(arg: &str) -> Option<PathBuf> {
    match arg.trim() {
        "" | "none" => None,
        dir => Some(PathBuf::from(dir)),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Iface(#[from] iface::IfaceError),
    #[error(transparent)]
    Lease(#[from] lease::AcquireError),
    #[error("device {0} has no MAC address")]
    NoMac(String),
    #[error("writing {path}: {source}")]
    SubnetEnv { path: PathBuf, source: std::io::Error },
    #[error("cannot serve HTTP on {addr}: {source}")]
    Http { addr: SocketAddr, source: std::io::Error },
}

/// Runs the agent of every network served until `shutdown` completes (see `supervisor`).
/// Leaves devices, entries and leases in place.
pub async fn run(opts: AgentOptions, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
    supervisor::run(opts, shutdown).await
}

/// Opens the store; `None` if `shutdown` came first. etcd connects on first use, so only a bad
/// config fails here. The SQLite store opens its file at once, and a database locked by another
/// process (a long write transaction, a wedged process) fails after the busy timeout: like an
/// etcd that is down, that is an outage to wait out (with the same backoff), not a reason to exit
/// and leave the host unmanaged.
pub(crate) async fn open_store(
    cfg: &store::StoreConfig,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Result<Option<Arc<dyn Store>>, AgentError> {
    let mut backoff = Duration::from_millis(100);
    let mut reported = false;
    loop {
        let c = cfg.clone();
        let opened = tokio::task::spawn_blocking(move || store::open(&c))
            .await
            .unwrap_or_else(|e| {
                Err(StoreError::Unavailable {
                    store: cfg.describe(),
                    message: format!("opening the store: {e}"),
                })
            });
        match opened {
            Ok(s) => {
                if reported {
                    info!(store = %s.describe(), "store reachable again");
                }
                return Ok(Some(s));
            }
            Err(e @ StoreError::Unavailable { .. }) if matches!(cfg, store::StoreConfig::Sqlite(_)) => {
                if !reported {
                    warn!(error = %e, "store unavailable; data plane kept as is, retrying");
                    reported = true;
                }
            }
            Err(e) => return Err(e.into()),
        }
        tokio::select! {
            _ = shutdown.as_mut() => return Ok(None),
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// How often the agent checks that the store still answers, for `/healthz`.
const STORE_PROBE_INTERVAL: Duration = Duration::from_secs(5);
const STORE_PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// At most this long is spent taking in a burst of store events before reconciling.
const STORM_DRAIN: Duration = Duration::from_millis(100);

struct Agent {
    opts: AgentOptions,
    /// Which network this agent serves, and what its keys, device, tables and file are.
    net: NetworkParams,
    store: Arc<dyn Store>,
    kernel: Kernel,
    keys: NetworkKeys,
    /// The config text as last read from the store, and whether it has been evaluated.
    config_text: Option<String>,
    config_seen: bool,
    /// The config the data plane follows: the last valid one.
    config: Option<NetworkConfig>,
    iface: Option<PublicIface>,
    device: Option<LinkInfo>,
    own: Option<OwnLease>,
    /// Subnet to ask for first when (re)leasing.
    preferred: Option<Ipv4Net>,
    /// Lease keys → entries (parsed once), kept current by the watch.
    leases: LeaseTable,
    /// What changed in `leases` since the last reconcile, for the one-lease fast path.
    pending: reconcile::Pending,
    /// The peer selection of the last reconcile, and what it was made for.
    selected: Option<reconcile::Selected>,
    /// The kernel's entries for our devices as last read and since changed by our own operations;
    /// `None` when they must be read again (at start, at resync, after somebody else's change or
    /// a failed operation). A store event is then planned without reading the kernel at all.
    view: Option<reconcile::KernelView>,
    written_env: Option<SubnetEnv>,
    notes: Notes,
    logged_rejections: HashSet<(String, i64)>,
    retry_at: Option<Instant>,
    // What `/status` and `/healthz` report.
    shared: Arc<Shared>,
    store_ok_at: Option<SystemTime>,
    store_error: Option<String>,
    config_error: Option<String>,
    lease_error: Option<String>,
    /// Peers whose entries are all in place, as of the last reconcile.
    programmed: usize,
    last_reconcile: Option<ReconcileStatus>,
    converged_once: bool,
    /// The nft table as last written, and whether a resync asked to check it.
    firewall: firewall::FirewallKeeper,
    offload_done_for: Option<u32>,
}

/// A lease entry as the agent keeps it: a value too large to be a lease (refused as `too_large`
/// anyway) is cut to just over the limit, so a hostile entry costs at most that much memory.
fn bounded(mut e: Entry) -> Entry {
    crate::store::cut_value(&mut e.value, crate::lease::MAX_LEASE_VALUE_BYTES);
    e
}

impl Agent {
    fn new(
        opts: AgentOptions,
        net: NetworkParams,
        store: Arc<dyn Store>,
        kernel: Kernel,
        shared: Arc<Shared>,
    ) -> Agent {
        let keys = net.keys.clone();
        let preferred = SubnetEnv::read(&net.subnet_file).map(|e| e.subnet);
        Agent {
            opts,
            net,
            store,
            kernel,
            keys,
            config_text: None,
            config_seen: false,
            config: None,
            iface: None,
            device: None,
            own: None,
            preferred,
            leases: LeaseTable::default(),
            pending: reconcile::Pending::Many,
            selected: None,
            view: None,
            written_env: None,
            notes: Notes::default(),
            logged_rejections: HashSet::new(),
            retry_at: None,
            shared,
            store_ok_at: None,
            store_error: None,
            config_error: None,
            lease_error: None,
            programmed: 0,
            last_reconcile: None,
            converged_once: false,
            firewall: firewall::FirewallKeeper::default(),
            offload_done_for: None,
        }
    }

    async fn run(
        mut self,
        mut events: mpsc::Receiver<KernelEvent>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), AgentError> {
        tokio::pin!(shutdown);
        // First ticks one period from now: the start is a full sync already, and a tick at
        // once would make the first change after it a second one (a table listing, dumps).
        let mut resync = interval_from_now(self.opts.resync_interval);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut probe = interval_from_now(STORE_PROBE_INTERVAL);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut backoff = Duration::from_millis(100);
        let mut first_connect = true;
        info!(store = %self.store.describe(), prefix = %self.keys.prefix, "agent starting");

        'connect: loop {
            if !first_connect {
                self.shared.metrics.watch_restarts.inc();
            }
            first_connect = false;
            let mut watch = match self.relist_and_watch().await {
                Ok(w) => {
                    self.store_answered();
                    backoff = Duration::from_millis(100);
                    if self.notes.clear("store") {
                        info!(store = %self.store.describe(), "store reachable again");
                    }
                    w
                }
                Err(e) => {
                    self.store_failed(&e);
                    if self.notes.raise("store", e.to_string()) {
                        warn!(error = %e, "store unavailable; data plane kept as is, retrying");
                    }
                    self.publish();
                    tokio::select! {
                        _ = &mut shutdown => return self.stopped(),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue 'connect;
                }
            };
            self.step().await;

            loop {
                let wake = self.next_wake();
                tokio::select! {
                    _ = &mut shutdown => return self.stopped(),
                    ev = watch.recv() => {
                        let mut next = ev;
                        let drain_until = Instant::now() + STORM_DRAIN;
                        loop {
                            match next {
                                None => {
                                    warn!(store = %self.store.describe(), "store watch ended; reconnecting");
                                    continue 'connect;
                                }
                                Some(WatchEvent::Resync) => {
                                    info!("store history lost; listing again");
                                    continue 'connect;
                                }
                                Some(ev) => {
                                    self.store_answered();
                                    self.apply_event(ev);
                                }
                            }
                            next = match watch.try_recv() {
                                Ok(ev) => Some(ev),
                                // The store's watch task runs on this thread too: let it refill
                                // the channel, so a storm is one step, not one per channel-full.
                                Err(_) if Instant::now() < drain_until => {
                                    tokio::task::yield_now().await;
                                    match watch.try_recv() {
                                        Ok(ev) => Some(ev),
                                        Err(_) => break,
                                    }
                                }
                                Err(_) => break,
                            };
                        }
                    }
                    ev = events.recv() => {
                        let Some(ev) = ev else {
                            error!("kernel event monitor stopped; reopening it");
                            events = kernel::monitor()?;
                            continue;
                        };
                        let mut relevant = self.kernel_event(&ev);
                        // Coalesce a burst into one step.
                        while let Ok(ev) = events.try_recv() {
                            relevant |= self.kernel_event(&ev);
                        }
                        if !relevant {
                            continue;
                        }
                    }
                    _ = resync.tick() => {
                        self.firewall.check_at_next();
                        self.view = None;
                    }
                    _ = probe.tick() => {
                        self.probe_store().await;
                        continue;
                    }
                    _ = tokio::time::sleep_until(wake) => {}
                }
                self.step().await;
            }
        }
    }

    fn stopped(&self) -> Result<(), AgentError> {
        info!("shutting down; device, entries and lease stay in place");
        Ok(())
    }

    async fn relist_and_watch(&mut self) -> Result<mpsc::Receiver<WatchEvent>, StoreError> {
        let listing = self.store.list(&format!("{}/", self.keys.prefix)).await?;
        let subnets = self.keys.subnets();
        let config_key = self.keys.config();
        let mut config_text = None;
        self.leases.clear();
        self.pending = reconcile::Pending::Many;
        for e in listing.entries {
            if e.key == config_key {
                config_text = Some(e.value);
            } else if e.key.starts_with(&subnets) {
                self.leases.insert(ParsedLease::new(bounded(e)));
            }
        }
        if config_text != self.config_text {
            self.config_text = config_text;
            self.config_seen = false;
        }
        if let Some(own) = &self.own {
            match self.leases.get(&own.key).map(|p| &p.entry) {
                Some(e) if e.value == own.value => {
                    let e = e.clone();
                    self.track_own(&e);
                }
                _ => self.lose_lease("our lease is gone from the store"),
            }
        }
        self.store
            .watch(&format!("{}/", self.keys.prefix), listing.revision)
            .await
    }

    fn apply_event(&mut self, ev: WatchEvent) {
        match ev {
            WatchEvent::Put(e) if e.key == self.keys.config() => {
                self.config_text = Some(e.value);
                self.config_seen = false;
            }
            WatchEvent::Delete { key, .. } if key == self.keys.config() => {
                warn!(key = %key, "network config deleted; keeping the current data plane");
                self.config_text = None;
                self.config_seen = false;
            }
            WatchEvent::Put(e) if e.key.starts_with(&self.keys.subnets()) => {
                if self.own.as_ref().is_some_and(|o| o.key == e.key) {
                    if self.own.as_ref().is_some_and(|o| o.value == e.value) {
                        self.track_own(&e);
                    } else {
                        self.lose_lease("our lease was overwritten by someone else");
                    }
                }
                let key = e.key.clone();
                let old = self.leases.insert(ParsedLease::new(bounded(e)));
                self.pending.note(key, old);
            }
            WatchEvent::Delete { key, .. } if key.starts_with(&self.keys.subnets()) => {
                if self.own.as_ref().is_some_and(|o| o.key == key) {
                    self.lose_lease("our lease was deleted");
                }
                let old = self.leases.remove(&key);
                self.pending.note(key.clone(), old);
                self.logged_rejections.retain(|(k, _)| *k != key);
            }
            _ => {}
        }
    }

    fn track_own(&mut self, e: &Entry) {
        if let Some(own) = &mut self.own {
            if e.mod_revision >= own.revision {
                own.revision = e.mod_revision;
                own.expires_at = e.expires_at;
            }
        }
    }

    fn lose_lease(&mut self, why: &str) {
        if let Some(own) = self.own.take() {
            warn!(subnet = %own.subnet, key = %own.key, "{why}; leasing again (data plane kept)");
            self.preferred = Some(own.subnet);
        }
    }

    /// Whether a kernel event needs a step. The echoes of our own operations (the view already
    /// has them) do not; anything else on our devices does, and drops the view so that the step
    /// reads the kernel again.
    fn kernel_event(&mut self, ev: &KernelEvent) -> bool {
        let dev = self.device.as_ref().map(|d| d.index);
        let iface = self.iface.as_ref().map(|i| i.index);
        let ours = match *ev {
            KernelEvent::Link { index, .. } | KernelEvent::Address { index } => {
                Some(index) == dev || Some(index) == iface
            }
            // Only main-table unicast routes are ever weft's.
            KernelEvent::Route { change: None, .. } => false,
            KernelEvent::Route { oif, change: Some(c) } => {
                (oif == dev || oif == iface) && !self.view.as_ref().is_some_and(|v| v.agrees_with(&c))
            }
            KernelEvent::Neigh { index, change } => {
                Some(index) == dev && !self.view.as_ref().zip(change).is_some_and(|(v, c)| v.agrees_with(&c))
            }
            KernelEvent::Overrun => true,
        };
        if ours {
            self.view = None;
        }
        ours
    }

    fn next_wake(&self) -> Instant {
        let far = Instant::now() + Duration::from_secs(3600);
        let renew = self
            .own
            .as_ref()
            .and_then(|o| o.renew_at(self.opts.lease_ttl, self.opts.renew_margin))
            .map(|t| Instant::now() + t.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO));
        [Some(far), renew, self.retry_at]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(far)
    }

    /// One pass over everything; failures are logged once and retried shortly.
    async fn step(&mut self) {
        self.retry_at = None;
        let started = std::time::Instant::now();
        let result = self.try_step().await;
        let seconds = started.elapsed().as_secs_f64();
        let (ok, error, operations) = match result {
            Ok(Some(ops)) => {
                if ops > 0 {
                    let peers = self.programmed;
                    info!(operations = ops, peers, duration_ms = seconds * 1000.0, "reconciled");
                }
                self.converged_once = true;
                if self.notes.clear("step") {
                    info!("recovered: the host is converged again");
                }
                (true, None, ops)
            }
            Ok(None) => (true, None, 0),
            Err(e) => {
                if matches!(
                    e,
                    AgentError::Store(_) | AgentError::Lease(lease::AcquireError::Store(_))
                ) {
                    self.store_failed(&e);
                }
                if self.notes.raise("step", e.to_string()) {
                    error!(error = %e, "reconcile failed; retrying every second");
                }
                self.retry_at = Some(Instant::now() + Duration::from_secs(1));
                (false, Some(e.to_string()), 0)
            }
        };
        self.shared.metrics.reconciled(ok, seconds);
        self.last_reconcile = Some(ReconcileStatus {
            at_ms: status::unix_ms(SystemTime::now()),
            duration_ms: seconds * 1000.0,
            ok,
            error,
            operations,
        });
        self.publish();
    }

    /// Checks the store answers (a cheap read), so `/healthz` tells the truth in quiet times.
    async fn probe_store(&mut self) {
        match tokio::time::timeout(STORE_PROBE_TIMEOUT, self.store.get(&self.keys.config())).await {
            Ok(Ok(_)) => self.store_answered(),
            Ok(Err(e)) => self.store_failed(&e),
            Err(_) => self.store_failed(&format!(
                "{} did not answer within {STORE_PROBE_TIMEOUT:?}",
                self.store.describe()
            )),
        }
        self.publish();
    }

    fn store_answered(&mut self) {
        self.store_ok_at = Some(SystemTime::now());
        self.store_error = None;
    }

    fn store_failed(&mut self, e: &dyn std::fmt::Display) {
        self.shared.metrics.store_errors.inc();
        self.store_error = Some(e.to_string());
    }

    /// Returns `Some(kernel operations)` when it got as far as reconciling peers.
    async fn try_step(&mut self) -> Result<Option<usize>, AgentError> {
        let iface = match &self.iface {
            Some(i) => i.clone(),
            None => {
                let i = iface::select(&self.kernel, &self.opts.iface).await?;
                info!(iface = %i.name, local_ip = %i.local_ip, public_ip = %i.public_ip, mtu = i.mtu, "using public interface");
                self.iface = Some(i.clone());
                i
            }
        };
        self.evaluate_config(&iface);
        let Some(cfg) = self.config.clone() else {
            return Ok(None);
        };

        let spec = VxlanSpec {
            name: self.net.device_name(cfg.backend.vni),
            vni: cfg.backend.vni,
            local: iface.local_ip,
            link: iface.index,
            port: cfg.backend.port,
            mtu: cfg
                .device_mtu(&iface.name, iface.mtu)
                .unwrap_or(iface.mtu.saturating_sub(50)),
            learning: cfg.backend.learning,
            gbp: cfg.backend.gbp,
        };
        let link = match device::ensure_device(&self.kernel, &spec).await {
            Ok(link) => link,
            Err(e) => {
                // Report the device as the kernel has it now, not as it was before this failure.
                self.device = self.kernel.link_by_name(&spec.name).await.ok().flatten();
                return Err(e.into());
            }
        };
        self.device = Some(link.clone());
        self.ensure_offload(&link).await?;
        let mac = link.mac.ok_or_else(|| AgentError::NoMac(spec.name.clone()))?;
        let value = vxlan_lease_value(iface.public_ip, cfg.backend.vni, mac);

        if let Some(own) = &self.own {
            let fits = cfg.network.contains(&own.subnet) && own.subnet.prefix_len() == cfg.subnet_len;
            if !fits {
                warn!(subnet = %own.subnet, network = %cfg.network, "our lease does not fit the new network config; releasing it");
                let key = own.key.clone();
                self.own = None;
                self.preferred = None;
                self.store.delete(&key).await?;
            }
        }
        self.keep_lease(&cfg, &iface, mac, &value).await?;
        let Some(own) = self.own.clone() else { return Ok(None) };
        if !self.isolate(&cfg, &link, &own).await? {
            return Ok(None);
        }

        device::ensure_address(&self.kernel, &link, own.subnet).await?;
        self.write_subnet_env(&cfg, own.subnet, spec.mtu)?;
        self.reconcile_peers(&cfg, &iface, &link, &own).await.map(Some)
    }

    /// Adopts the store's config if it is valid; otherwise says why, once, and keeps the old one.
    fn evaluate_config(&mut self, iface: &PublicIface) {
        if self.config_seen {
            return;
        }
        self.config_seen = true;
        let key = self.keys.config();
        let Some(text) = &self.config_text else {
            if self.config.is_none() {
                self.config_error = Some(format!("no network config at {key}"));
                if self.notes.raise("config", "missing".into()) {
                    info!(key = %key, "waiting for the network config to be written to the store");
                }
            }
            return;
        };
        let parsed = NetworkConfig::parse(text).and_then(|c| c.device_mtu(&iface.name, iface.mtu).map(|_| c));
        match parsed {
            Ok(cfg) => {
                self.notes.clear("config");
                self.config_error = None;
                if self.config.as_ref() != Some(&cfg) {
                    info!(
                        network = %cfg.network, subnet_len = cfg.subnet_len, vni = cfg.backend.vni,
                        port = cfg.backend.port, "network config accepted"
                    );
                    self.config = Some(cfg);
                }
            }
            Err(e) => {
                self.config_error = Some(e.to_string());
                if self.notes.raise("config", e.to_string()) {
                    if self.config.is_some() {
                        error!(key = %key, error = %e, "invalid network config; keeping the current data plane");
                    } else {
                        error!(key = %key, error = %e, "invalid network config; waiting for a valid one");
                    }
                }
            }
        }
    }

    /// Acquires a lease if we hold none, rewrites it if our MAC changed, renews it when due.
    async fn keep_lease(
        &mut self,
        cfg: &NetworkConfig,
        iface: &PublicIface,
        mac: crate::mac::Mac,
        value: &str,
    ) -> Result<(), AgentError> {
        let ttl = self.opts.lease_ttl;
        if let Some(own) = &self.own {
            let due = own
                .renew_at(ttl, self.opts.renew_margin)
                .is_some_and(|t| t <= SystemTime::now());
            if own.value == value && !due {
                return Ok(());
            }
            match lease::renew(self.store.as_ref(), own, value, ttl).await? {
                Some(renewed) => {
                    info!(subnet = %renewed.subnet, expires_in = ?ttl, "lease renewed");
                    self.own = Some(renewed);
                    return Ok(());
                }
                None => self.lose_lease("our lease changed in the store before we could renew it"),
            }
        }
        let avoid = self.net.avoid();
        let req = LeaseRequest {
            avoid: &avoid,
            keys: &self.keys,
            config: cfg,
            public_ip: iface.public_ip,
            vtep_mac: mac,
            ttl,
            preferred: self.preferred,
        };
        match lease::acquire(self.store.as_ref(), &req).await {
            Ok(own) => {
                self.store_answered();
                self.lease_error = None;
                self.preferred = Some(own.subnet);
                self.pending = reconcile::Pending::Many;
                self.leases.insert(ParsedLease::new(Entry {
                    key: own.key.clone(),
                    value: own.value.clone(),
                    create_revision: own.revision,
                    mod_revision: own.revision,
                    expires_at: own.expires_at,
                }));
                self.own = Some(own);
                Ok(())
            }
            Err(e) => {
                self.lease_error = Some(e.to_string());
                Err(e.into())
            }
        }
    }

    fn write_subnet_env(&mut self, cfg: &NetworkConfig, subnet: Ipv4Net, mtu: u32) -> Result<(), AgentError> {
        let env = SubnetEnv {
            network: cfg.network,
            subnet,
            mtu,
            ipmasq: self.opts.ip_masq,
        };
        if self.written_env.as_ref() == Some(&env) {
            return Ok(());
        }
        let path = &self.net.subnet_file;
        if SubnetEnv::read(path).as_ref() != Some(&env) {
            env.write(path).map_err(|source| AgentError::SubnetEnv {
                path: path.clone(),
                source,
            })?;
            info!(path = %path.display(), subnet = %subnet, mtu, "wrote subnet.env");
        }
        self.written_env = Some(env);
        Ok(())
    }
}

/// A `tokio::time::interval` whose first tick is one period away, not immediate.
pub(super) fn interval_from_now(period: Duration) -> tokio::time::Interval {
    tokio::time::interval_at(tokio::time::Instant::now() + period, period)
}

#[cfg(test)]
mod bounded_tests {
    use super::*;

    #[test]
    fn an_oversized_lease_value_is_kept_cut_to_just_over_the_limit() {
        let limit = crate::lease::MAX_LEASE_VALUE_BYTES;
        let e = Entry {
            key: "/coreos.com/network/subnets/10.0.5.0-24".into(),
            value: "é".repeat(1 << 19), // 1 MiB, two bytes a character
            create_revision: 1,
            mod_revision: 1,
            expires_at: None,
        };
        let kept = bounded(e.clone());
        assert!(kept.value.len() > limit && kept.value.len() <= limit + 4);
        assert!(kept.value.capacity() < 2 * limit);
        let err = crate::lease::Lease::from_entry(&kept).unwrap_err();
        assert_eq!(err.reason(), "too_large");
        let small = Entry {
            value: "{}".into(),
            ..e
        };
        assert_eq!(bounded(small.clone()), small);
    }
}
