//! The agent of an L2 network: one flat subnet across hosts, endpoints registered in the store.
//!
//! On each host: a bridge `weftbr.<VNI>` with the VXLAN device `weft.<VNI>` (nolearning) as a
//! port with learning off and `neigh_suppress` on. For every endpoint on another host it
//! programs `MAC dev weft.N master static` (the bridge sends the MAC to the tunnel), `MAC dst
//! HOST self permanent` (the tunnel sends it to the host) and `IP lladdr MAC nud permanent` on
//! the bridge (from which the bridge answers ARP itself, so ARP for a known endpoint never
//! crosses the underlay). Broadcast and unknown traffic goes only to hosts with endpoints (the
//! all-zeros FDB entries). Which host an endpoint is on, duplicates and flapping are decided by
//! the pure [`Tracker`]; the kernel operations by the pure [`plan`].
//!
//! An endpoint that arrives on this host (registered here, or moved here) gets a gratuitous
//! ARP sent from its MAC on the bridge; an endpoint that leaves it has its bridge entry
//! replaced by the remote one, so this host forwards to its new place at once.
//!
//! VXLAN of the network's VNI is accepted only from its peers — the other hosts with endpoints,
//! the flood list — through the network's nft table `ip weft-NAME` (`--vxlan-peer-filter`; see
//! `FirewallSpec::l2`), kept like an L3 network's by the shared [`FirewallKeeper`].

use super::device;
use super::firewall::{BpfRole, FirewallKeeper};
use super::http::Shared;
use super::iface::{self, PublicIface};
use super::l2_socket;
use super::params::NetworkParams;
use super::status::{self, DeviceStatus, IfaceStatus, L2Status, NetworkStatus, ReconcileStatus, Status, StoreStatus};
use super::{AgentError, AgentOptions};
use crate::config::NetworkConfig;
use crate::endpoint::{self, Endpoint};
use crate::kernel::nft::FirewallSpec;
use crate::kernel::{self, Kernel, KernelEvent, LinkInfo, VxlanSpec};
use crate::l2ipam::env::{self, L2Env};
use crate::mac::Mac;
use crate::planner::endpoints::{plan, Damping, Event, L2Op, Tracker};
use crate::store::{Entry, Store, StoreError, WatchEvent};
use ipnet::Ipv4Net;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, error, info, warn, Instrument};

/// A task that ends when this is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(super) struct L2Agent {
    opts: AgentOptions,
    net: NetworkParams,
    vni: u32,
    store: Arc<dyn Store>,
    kernel: Kernel,
    shared: Arc<Shared>,
    config_text: Option<String>,
    config: Option<NetworkConfig>,
    config_error: Option<String>,
    iface: Option<PublicIface>,
    vxlan: Option<LinkInfo>,
    bridge: Option<LinkInfo>,
    /// Endpoint entries as stored (by key), so a config change can parse them again.
    entries: BTreeMap<String, Entry>,
    rejected: BTreeMap<String, String>,
    tracker: Tracker,
    /// Local endpoints a gratuitous ARP was sent for, with the registration it was sent for.
    announced: BTreeMap<Mac, (Ipv4Addr, u64)>,
    /// The devices must be checked again (start, resync, a change to them).
    devices_due: bool,
    retry_at: Option<Instant>,
    store_ok_at: Option<SystemTime>,
    store_error: Option<String>,
    last_reconcile: Option<ReconcileStatus>,
    converged_once: bool,
    last_error: Option<String>,
    /// Problems as last logged, so each is logged once when it appears and once when it ends.
    logged_problems: BTreeSet<(String, String)>,
    /// This host's public IP and the network's CIDR, for the weft-cni socket once both are known.
    ready: watch::Sender<Option<(Ipv4Addr, Ipv4Net)>>,
    /// The network file for weft-cni as last written.
    written_env: Option<L2Env>,
    /// The network's nft table: VXLAN of its VNI only from hosts with endpoints.
    firewall: FirewallKeeper,
}

impl L2Agent {
    pub(super) fn new(
        opts: AgentOptions,
        net: NetworkParams,
        vni: u32,
        store: Arc<dyn Store>,
        kernel: Kernel,
        shared: Arc<Shared>,
    ) -> L2Agent {
        L2Agent {
            opts,
            net,
            vni,
            store,
            kernel,
            shared,
            config_text: None,
            config: None,
            config_error: None,
            iface: None,
            vxlan: None,
            bridge: None,
            entries: BTreeMap::new(),
            rejected: BTreeMap::new(),
            tracker: Tracker::new(Damping::default()),
            announced: BTreeMap::new(),
            devices_due: true,
            retry_at: None,
            store_ok_at: None,
            store_error: None,
            last_reconcile: None,
            converged_once: false,
            last_error: None,
            logged_problems: BTreeSet::new(),
            ready: watch::channel(None).0,
            written_env: None,
            firewall: FirewallKeeper::default(),
        }
    }

    fn endpoints_prefix(&self) -> String {
        endpoint::endpoints_prefix(&self.net.keys.prefix)
    }

    pub(super) async fn run(
        mut self,
        mut events: mpsc::Receiver<KernelEvent>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), AgentError> {
        tokio::pin!(shutdown);
        let mut resync = super::interval_from_now(self.opts.resync_interval);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut backoff = Duration::from_millis(100);
        info!(vni = self.vni, bridge = %crate::network::l2_bridge_name(self.vni), "L2 network agent starting");
        // Stops with the agent (dropped on every return).
        let _socket = self.serve_cni();
        'connect: loop {
            let mut watch = match self.relist().await {
                Ok(w) => {
                    backoff = Duration::from_millis(100);
                    self.store_ok_at = Some(SystemTime::now());
                    self.store_error = None;
                    w
                }
                Err(e) => {
                    self.shared.metrics.store_errors.inc();
                    warn!(error = %e, "store unavailable; data plane kept as is, retrying");
                    self.store_error = Some(e.to_string());
                    self.publish();
                    tokio::select! {
                        _ = &mut shutdown => return Ok(()),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue 'connect;
                }
            };
            self.step().await;
            loop {
                let far = Instant::now() + Duration::from_secs(3600);
                let thaw = self.tracker.next_thaw().map(Instant::from_std);
                let wake = [Some(far), self.retry_at, thaw]
                    .into_iter()
                    .flatten()
                    .min()
                    .unwrap_or(far);
                tokio::select! {
                    _ = &mut shutdown => {
                        info!("shutting down; bridge, device and entries stay in place");
                        return Ok(());
                    }
                    ev = watch.recv() => {
                        let mut next = ev;
                        loop {
                            match next {
                                None | Some(WatchEvent::Resync) => {
                                    info!("store watch ended or lost history; listing again");
                                    continue 'connect;
                                }
                                Some(ev) => {
                                    self.store_ok_at = Some(SystemTime::now());
                                    self.apply(ev);
                                }
                            }
                            next = match watch.try_recv() {
                                Ok(ev) => Some(ev),
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
                        while let Ok(ev) = events.try_recv() {
                            relevant |= self.kernel_event(&ev);
                        }
                        if !relevant {
                            continue;
                        }
                    }
                    _ = resync.tick() => {
                        self.devices_due = true;
                        self.firewall.check_at_next();
                    }
                    _ = tokio::time::sleep_until(wake) => {}
                }
                self.step().await;
            }
        }
    }

    async fn relist(&mut self) -> Result<mpsc::Receiver<WatchEvent>, StoreError> {
        let all = self.net.keys.all();
        let listing = self.store.list(&all).await?;
        self.entries.clear();
        self.config_text = None;
        for e in listing.entries {
            if e.key == self.net.keys.config() {
                self.config_text = Some(e.value);
            } else if e.key.starts_with(&self.endpoints_prefix()) {
                self.entries.insert(e.key.clone(), e);
            }
        }
        self.evaluate_config();
        self.reparse();
        self.store.watch(&all, listing.revision).await
    }

    fn apply(&mut self, ev: WatchEvent) {
        let prefix = self.endpoints_prefix();
        match ev {
            WatchEvent::Put(e) if e.key == self.net.keys.config() => {
                self.config_text = Some(e.value);
                if self.evaluate_config() {
                    self.reparse();
                }
            }
            WatchEvent::Put(e) if e.key.starts_with(&prefix) => {
                self.entries.insert(e.key.clone(), e.clone());
                self.take(&e);
            }
            WatchEvent::Delete { key, .. } if key.starts_with(&prefix) => {
                self.entries.remove(&key);
                self.rejected.remove(&key);
                if let Ok(mac) = key[prefix.len()..].parse::<Mac>() {
                    if let Some(ev) = self.tracker.remove(mac) {
                        self.note(&ev);
                    }
                }
            }
            _ => {}
        }
    }

    /// Takes in one stored endpoint entry.
    fn take(&mut self, e: &Entry) {
        let Some(cfg) = &self.config else { return };
        match Endpoint::parse(&e.key, &e.value, &self.endpoints_prefix(), cfg.network) {
            Ok(ep) => {
                self.rejected.remove(&e.key);
                if let Some(ev) = self.tracker.claim(ep, e.create_revision, std::time::Instant::now()) {
                    self.note(&ev);
                }
            }
            Err(err) => {
                if self.rejected.get(&e.key) != Some(&err.to_string()) {
                    warn!(key = %e.key, reason = err.reason(), error = %err, "endpoint rejected");
                    self.shared.metrics.endpoint_event("rejected");
                    self.rejected.insert(e.key.clone(), err.to_string());
                }
                // An entry that became invalid no longer places its MAC anywhere.
                if let Ok(mac) = e.key[self.endpoints_prefix().len()..].parse::<Mac>() {
                    self.tracker.remove(mac);
                }
            }
        }
    }

    /// Parses every stored entry again (after a listing or a new CIDR), keeping what the tracker
    /// knows about MACs still there.
    fn reparse(&mut self) {
        let entries: Vec<Entry> = self.entries.values().cloned().collect();
        let prefix = self.endpoints_prefix();
        let present: BTreeSet<Mac> = entries
            .iter()
            .filter_map(|e| e.key[prefix.len()..].parse().ok())
            .collect();
        for ev in self.tracker.retain(&present) {
            self.note(&ev);
        }
        self.rejected.retain(|k, _| self.entries.contains_key(k));
        for e in &entries {
            self.take(e);
        }
    }

    /// Logs and counts an endpoint event.
    fn note(&self, ev: &Event) {
        let m = &self.shared.metrics;
        match ev {
            Event::Added { mac, host } => debug!(%mac, %host, "endpoint registered"),
            Event::Removed { mac } => info!(%mac, "endpoint removed"),
            Event::Moved { mac, from, to, seq } => {
                m.endpoint_event("moved");
                info!(%mac, %from, %to, seq, "endpoint moved");
            }
            Event::DuplicateMac { mac, kept, claimed } => {
                m.endpoint_event("duplicate_mac");
                warn!(%mac, %kept, %claimed, "duplicate MAC: claimed by another host without a higher Seq; kept where it was");
            }
            Event::Frozen {
                mac,
                at,
                claimed,
                moves,
            } => {
                m.endpoint_event("frozen");
                warn!(%mac, %at, %claimed, moves, "endpoint flapping: frozen at its last host");
            }
            Event::Thawed { mac, at } => {
                m.endpoint_event("thawed");
                info!(%mac, %at, "endpoint no longer frozen; following the store again");
            }
        }
    }

    /// Adopts the stored config if valid; true if the CIDR the endpoints are checked against
    /// changed.
    fn evaluate_config(&mut self) -> bool {
        let Some(text) = &self.config_text else {
            self.config_error = Some(format!("no network config at {}", self.net.keys.config()));
            return false;
        };
        match NetworkConfig::parse(text) {
            Ok(cfg) => {
                self.config_error = None;
                let changed = self.config.as_ref().map(|c| c.network) != Some(cfg.network);
                if self.config.as_ref() != Some(&cfg) {
                    info!(network = %cfg.network, vni = cfg.backend.vni, "L2 network config accepted");
                }
                self.config = Some(cfg);
                changed
            }
            Err(e) => {
                if self.config_error.as_deref() != Some(&e.to_string()) {
                    error!(error = %e, "invalid network config; keeping the current data plane");
                }
                self.config_error = Some(e.to_string());
                false
            }
        }
    }

    fn kernel_event(&mut self, ev: &KernelEvent) -> bool {
        let ours = |i: u32| {
            self.vxlan.as_ref().is_some_and(|l| l.index == i) || self.bridge.as_ref().is_some_and(|l| l.index == i)
        };
        match *ev {
            KernelEvent::Link { index, .. } | KernelEvent::Address { index } => {
                let hit = ours(index) || self.iface.as_ref().is_some_and(|i| i.index == index);
                if hit {
                    self.devices_due = true;
                }
                hit
            }
            // Our own operations echo back too: the step they cause finds nothing to do.
            KernelEvent::Neigh { index, .. } => ours(index),
            KernelEvent::Route { .. } => false,
            KernelEvent::Overrun => {
                self.devices_due = true;
                true
            }
        }
    }

    async fn step(&mut self) {
        self.retry_at = None;
        let started = std::time::Instant::now();
        let result = self.try_step().await;
        let seconds = started.elapsed().as_secs_f64();
        let (ok, error, operations) = match result {
            Ok(Some(n)) => {
                if n > 0 {
                    info!(operations = n, duration_ms = seconds * 1000.0, "reconciled");
                }
                self.converged_once = true;
                if self.last_error.take().is_some() {
                    info!("recovered: the host is converged again");
                }
                (true, None, n)
            }
            Ok(None) => (true, None, 0),
            Err(e) => {
                if self.last_error.as_deref() != Some(&e.to_string()) {
                    error!(error = %e, "reconcile failed; retrying every second");
                }
                self.last_error = Some(e.to_string());
                self.devices_due = true;
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

    async fn try_step(&mut self) -> Result<Option<usize>, AgentError> {
        let iface = match &self.iface {
            Some(i) => i.clone(),
            None => {
                let i = iface::select(&self.kernel, &self.opts.iface).await?;
                info!(iface = %i.name, local_ip = %i.local_ip, public_ip = %i.public_ip, "using public interface");
                self.iface = Some(i.clone());
                i
            }
        };
        let Some(cfg) = self.config.clone() else {
            return Ok(None);
        };
        if self.devices_due || self.vxlan.is_none() || self.bridge.is_none() {
            self.ensure_devices(&cfg, &iface).await?;
            self.devices_due = false;
        }
        let (Some(vx), Some(br)) = (self.vxlan.clone(), self.bridge.clone()) else {
            return Ok(None);
        };
        for ev in self.tracker.thaw(std::time::Instant::now()) {
            self.note(&ev);
        }
        let desired = self.tracker.desired(iface.public_ip);
        let filter = FirewallSpec::l2(
            &self.net.nft_table,
            self.vni,
            cfg.backend.port,
            desired.flood.clone(),
            self.opts.vxlan_peer_filter,
        );
        // A host that gains its first endpoint must be accepted before entries send traffic its
        // way (and its answers come back); a host that lost its last one is filtered after its
        // entries are gone. On this process's first pass the table may not exist yet, and then
        // nothing is filtered: the entries go first.
        let firewall_first = self
            .firewall
            .written()
            .is_some_and(|w| !filter.peers.is_subset(&w.peers));
        if firewall_first {
            self.ensure_firewall(filter.clone()).await?;
        }
        let observed = self.kernel.observe_l2(vx.index, br.index).await?;
        let ops = plan(&desired, &observed);
        let n = ops.len();
        for op in ops {
            let res = self.execute(&op, vx.index, br.index).await;
            let (kind, action) = op.labels();
            self.shared.metrics.kernel_op(kind, action, res.is_ok());
            match &res {
                Ok(()) => debug!(?op, "kernel"),
                Err(e) => warn!(?op, error = %e, "kernel operation failed"),
            }
            res?;
        }
        if !firewall_first {
            self.ensure_firewall(filter).await?;
        }
        self.publish_for_cni(&cfg, &iface, &vx)?;
        self.announce(&desired.local, br.index);
        self.shared.metrics.set_endpoints("local", desired.local.len());
        self.shared.metrics.set_endpoints("remote", desired.remote.len());
        self.shared.metrics.peers_programmed.set(desired.flood.len() as i64);
        Ok(Some(n))
    }

    /// The network's nft table as `spec` says, through the host's nft task.
    async fn ensure_firewall(&mut self, spec: FirewallSpec) -> Result<(), AgentError> {
        Ok(self
            .firewall
            .ensure(spec, &self.net.nft, &self.shared.metrics, BpfRole::None)
            .await?)
    }

    async fn execute(&self, op: &L2Op, vx: u32, br: u32) -> Result<(), kernel::KernelError> {
        let k = &self.kernel;
        match *op {
            L2Op::RemoveNeigh(n) => k.remove_neigh(br, &n).await,
            L2Op::RemoveBridgeFdb(mac) => k.remove_bridge_fdb(vx, mac).await,
            L2Op::RemoveFdb(f) => k.remove_fdb(vx, &f).await,
            L2Op::RemoveFlood(h) => k.remove_flood(vx, h).await,
            L2Op::AddFlood(h) => k.add_flood(vx, h).await,
            L2Op::EnsureFdb(f) => k.ensure_fdb(vx, &f).await,
            L2Op::EnsureBridgeFdb(mac) => k.ensure_bridge_fdb(vx, mac).await,
            L2Op::EnsureNeigh(n) => k.ensure_neigh(br, &n).await,
        }
    }

    /// Sends a gratuitous ARP for every local endpoint not yet announced in its current
    /// registration (new here, moved here, new IP or Seq).
    fn announce(&mut self, local: &BTreeMap<Mac, Ipv4Addr>, bridge: u32) {
        self.announced.retain(|m, _| local.contains_key(m));
        for (mac, ip) in local {
            let seq = self.tracker.get(*mac).map(|e| e.seq).unwrap_or(0);
            if self.announced.get(mac) == Some(&(*ip, seq)) {
                continue;
            }
            match kernel::bridge::send_gratuitous_arp(bridge, *mac, *ip) {
                Ok(()) => info!(%mac, %ip, seq, "endpoint is on this host: gratuitous ARP sent"),
                Err(e) => warn!(%mac, %ip, error = %e, "gratuitous ARP not sent"),
            }
            self.announced.insert(*mac, (*ip, seq));
        }
    }

    /// The VXLAN device (nolearning, no address), the bridge, the device as the bridge's port
    /// with learning off and neigh_suppress on, both up.
    async fn ensure_devices(&mut self, cfg: &NetworkConfig, iface: &PublicIface) -> Result<(), AgentError> {
        let spec = VxlanSpec {
            name: self.net.device_name(self.vni),
            vni: self.vni,
            local: iface.local_ip,
            link: iface.index,
            port: cfg.backend.port,
            mtu: cfg
                .device_mtu(&iface.name, iface.mtu)
                .unwrap_or(iface.mtu.saturating_sub(50)),
            learning: false,
            gbp: cfg.backend.gbp,
        };
        let vx = device::ensure_device(&self.kernel, &spec).await?;
        let name = crate::network::l2_bridge_name(self.vni);
        let mut br = match self.kernel.link_by_name(&name).await? {
            Some(l) if l.kind.as_deref() == Some("bridge") => l,
            Some(l) => {
                warn!(device = %name, kind = ?l.kind, "a link with the bridge's name is no bridge; recreating it");
                self.kernel.delete_link(l.index).await?;
                self.create_bridge(&name).await?
            }
            None => self.create_bridge(&name).await?,
        };
        if vx.master != Some(br.index) {
            info!(device = %spec.name, bridge = %name, "kernel: device joins the bridge");
            self.kernel.set_master(vx.index, br.index).await?;
        }
        if self.kernel.tunnel_port_flags(vx.index).await? != Some((false, true)) {
            info!(device = %spec.name, "kernel: bridge port learning off, neigh_suppress on");
            self.kernel.set_tunnel_port(vx.index).await?;
        }
        // Before the bridge comes up: it then never gets an IPv6 link-local address.
        for dev in [&name, &spec.name] {
            if kernel::sysctl::disable_ipv6(dev)? {
                info!(device = %dev, "kernel: IPv6 off (the host stays out of the tenant's network)");
            }
        }
        if !br.up {
            self.kernel.set_up(br.index).await?;
            br.up = true;
        }
        self.vxlan = self.kernel.link_by_name(&spec.name).await?;
        self.bridge = Some(br);
        Ok(())
    }

    /// Starts the weft-cni socket next to the network's file (see `l2_socket`). Without it
    /// the network still works; only weft-cni cannot register containers.
    fn serve_cni(&self) -> Option<AbortOnDrop> {
        let path = env::socket_path(&self.net.subnet_file);
        match l2_socket::bind(&path) {
            Ok(listener) => {
                let server = l2_socket::Server {
                    path,
                    store: self.store.clone(),
                    net_prefix: self.net.keys.prefix.clone(),
                    ready: self.ready.subscribe(),
                    shared: self.shared.clone(),
                };
                Some(AbortOnDrop(tokio::spawn(server.run(listener).in_current_span())))
            }
            Err(e) => {
                error!(socket = %path.display(), error = %e, "cannot serve weft-cni: socket not bound");
                None
            }
        }
    }

    /// Tells the socket what it needs and writes the network file weft-cni reads (atomically,
    /// when it changes).
    fn publish_for_cni(&mut self, cfg: &NetworkConfig, iface: &PublicIface, vx: &LinkInfo) -> Result<(), AgentError> {
        self.ready.send_if_modified(|r| {
            let now = Some((iface.public_ip, cfg.network));
            let changed = *r != now;
            *r = now;
            changed
        });
        let path = &self.net.subnet_file;
        let want = L2Env {
            network: cfg.network,
            mtu: vx.mtu,
            bridge: crate::network::l2_bridge_name(self.vni),
            socket: env::socket_path(path),
        };
        if self.written_env.as_ref() == Some(&want) {
            return Ok(());
        }
        let on_disk = std::fs::read_to_string(path).ok().and_then(|t| L2Env::parse(&t).ok());
        if on_disk.as_ref() != Some(&want) {
            crate::subnet_env::write_atomic(path, &want.render()).map_err(|source| AgentError::SubnetEnv {
                path: path.clone(),
                source,
            })?;
            info!(path = %path.display(), network = %want.network, mtu = want.mtu, "wrote the network file for weft-cni");
        }
        self.written_env = Some(want);
        Ok(())
    }

    async fn create_bridge(&self, name: &str) -> Result<LinkInfo, AgentError> {
        info!(bridge = %name, "kernel: creating bridge");
        Ok(self.kernel.create_bridge(name).await?)
    }

    fn publish(&mut self) {
        let problems = self.tracker.problems();
        let now: BTreeSet<(String, String)> = problems.iter().map(|p| (p.kind.clone(), p.mac.clone())).collect();
        for p in problems
            .iter()
            .filter(|p| !self.logged_problems.contains(&(p.kind.clone(), p.mac.clone())))
        {
            let hosts: Vec<String> = p.hosts.iter().map(|h| h.to_string()).collect();
            warn!(kind = %p.kind, mac = %p.mac, ip = %p.ip, hosts = %hosts.join(","), detail = %p.detail, "endpoint flagged");
        }
        for (kind, mac) in self.logged_problems.difference(&now) {
            info!(%kind, %mac, "endpoint no longer flagged");
        }
        self.logged_problems = now;
        for kind in ["duplicate_ip", "duplicate_mac", "frozen"] {
            let n = problems.iter().filter(|p| p.kind == kind).count();
            self.shared.metrics.set_endpoint_problems(kind, n);
        }
        let own = self.iface.as_ref().map(|i| i.public_ip);
        let desired = own.map(|o| self.tracker.desired(o)).unwrap_or_default();
        let status = Status {
            source: "agent".into(),
            name: Some(self.net.name.clone()),
            store: StoreStatus {
                describe: self.store.describe(),
                last_ok_ms: self.store_ok_at.map(status::unix_ms),
                last_error: self.store_error.clone(),
            },
            network: self.config.as_ref().map(|c| NetworkStatus {
                name: self.net.name.clone(),
                network: c.network.to_string(),
                subnet_len: c.network.prefix_len(),
                vni: self.vni,
                port: c.backend.port,
            }),
            config_error: self.config_error.clone(),
            iface: self.iface.as_ref().map(|i| IfaceStatus {
                name: i.name.clone(),
                local_ip: i.local_ip.to_string(),
                public_ip: i.public_ip.to_string(),
                mtu: i.mtu,
            }),
            device: self.vxlan.as_ref().map(|d| DeviceStatus {
                name: d.name.clone(),
                index: d.index,
                mtu: d.mtu,
                mac: d.mac.map(|m| m.to_string()),
                up: d.up,
            }),
            l2: Some(L2Status {
                bridge: crate::network::l2_bridge_name(self.vni),
                endpoints: self.tracker.len(),
                local: desired.local.len(),
                remote: desired.remote.len(),
                flood: desired.flood.iter().map(|h| h.to_string()).collect(),
                problems,
                rejected: self.rejected.values().cloned().collect(),
                vxlan_filter: self.firewall.status(),
            }),
            last_reconcile: self.last_reconcile.clone(),
            converged_once: self.converged_once,
            ..Status::default()
        };
        self.shared.set_status(status);
    }
}
