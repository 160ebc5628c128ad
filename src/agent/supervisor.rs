//! One agent process, several networks: the supervisor runs one network agent (the loop in
//! `mod.rs`) per network this host serves, and follows the store's list of networks.
//!
//! It watches `<prefix>/` for the default network's config and every `networks/NAME/config`.
//! A named network that appears (and passes `--networks`) gets an agent task; one that is
//! deleted, changes VNI or loses its VNI to another network has its task stopped and its state
//! on this host torn down (device, routes, rules, nft table, subnet file, lease). The default
//! network's agent runs as it always did. Kernel change notifications are read once and fanned
//! out to every network's agent. Which networks are served, and why others are not, shows in
//! `/status`; every network's series in `/metrics` carry `network="NAME"` (except the default
//! network's, which keep their labels of old).

use super::http::{self, Hub};
use super::isolation::{self, HostSubnets};
use super::l2::L2Agent;
use super::nft_batcher::NftBatcher;
use super::params::NetworkParams;
use super::status::RefusedNetwork;
use super::{Agent, AgentError, AgentOptions};
use crate::kernel::{self, Kernel, KernelEvent};
use crate::network::admin::{self, Verdict};
use crate::network::{self as net, Mode, NetworkKeys, DEFAULT_NETWORK};
use crate::store::{Entry, Store, StoreError, WatchEvent};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{error, info, warn, Instrument};

/// How long the supervisor gathers store events before acting on them.
const SETTLE: Duration = Duration::from_millis(50);
/// How often it checks that every network agent is still running.
const CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// Kernel events queued per network agent; beyond this it gets one Overrun (a full resync).
const EVENT_QUEUE: usize = 4096;

/// Runs the agents of every network this host serves until `shutdown` completes. Leaves
/// devices, entries and leases in place.
pub async fn run(opts: AgentOptions, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
    tokio::pin!(shutdown);
    let Some(store) = super::open_store(&opts.store, &mut shutdown).await? else {
        info!("shutting down before the store could be opened");
        return Ok(());
    };
    let kernel = Kernel::connect().await?;
    let fanout = Fanout::start()?;
    let hub = Arc::new(Hub::new(Arc::new(super::metrics::MetricsRegistry::new())));
    if let Some(addr) = opts.healthz_addr {
        http::serve(addr, hub.clone())
            .await
            .map_err(|source| AgentError::Http { addr, source })?;
    }
    let mut sup = Supervisor {
        host: Arc::new(HostSubnets::default()),
        nft: NftBatcher::start(),
        opts,
        store,
        kernel,
        fanout,
        hub,
        running: BTreeMap::new(),
        default_vni: None,
        configs: BTreeMap::new(),
        refused: BTreeMap::new(),
        leftovers_done: false,
    };
    // Read-only, host-wide: does another firewall drop this host's pod traffic?
    let forward = tokio::spawn(super::forward_check::watch(
        sup.host.clone(),
        sup.hub.clone(),
        sup.opts.resync_interval,
    ));
    sup.run(shutdown).await;
    forward.abort();
    Ok(())
}

/// Whether `--networks` lets this host serve `name` (`default` names the default network).
pub fn wanted(filter: &Option<Vec<String>>, name: &str) -> bool {
    filter.as_ref().is_none_or(|names| names.iter().any(|n| n == name))
}

struct Running {
    /// The VNI the named network had when its agent started (0 for the default network).
    vni: u32,
    mode: Mode,
    params: NetworkParams,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), AgentError>>,
}

struct Supervisor {
    opts: AgentOptions,
    store: Arc<dyn Store>,
    kernel: Kernel,
    fanout: Fanout,
    hub: Arc<Hub>,
    host: Arc<HostSubnets>,
    nft: NftBatcher,
    running: BTreeMap<String, Running>,
    /// The default network's VNI, if its config parses: no named network may use it.
    default_vni: Option<u32>,
    /// Named networks' config entries as stored.
    configs: BTreeMap<String, Entry>,
    /// Networks not served, and why (logged when the reason changes).
    refused: BTreeMap<String, String>,
    leftovers_done: bool,
}

impl Supervisor {
    async fn run(&mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        if wanted(&self.opts.networks, DEFAULT_NETWORK) {
            // Before the store answers: the default network's agent does not wait for us.
            self.start(DEFAULT_NETWORK, None, Mode::L3).await;
        }
        let mut check = tokio::time::interval(CHECK_INTERVAL);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut backoff = Duration::from_millis(100);
        let root = format!("{}/", NetworkKeys::new(&self.opts.prefix).prefix);
        'connect: loop {
            let mut watch = match self.relist(&root).await {
                Ok(w) => {
                    backoff = Duration::from_millis(100);
                    w
                }
                Err(e) => {
                    // The network agents report the store's state; this only retries.
                    warn!(error = %e, "networks: store unavailable; retrying");
                    tokio::select! {
                        _ = &mut shutdown => break 'connect,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue 'connect;
                }
            };
            self.follow().await;
            loop {
                tokio::select! {
                    _ = &mut shutdown => break 'connect,
                    ev = watch.recv() => {
                        let mut changed = false;
                        let mut next = ev;
                        loop {
                            match next {
                                None | Some(WatchEvent::Resync) => continue 'connect,
                                Some(ev) => changed |= self.apply(ev),
                            }
                            next = match tokio::time::timeout(SETTLE, watch.recv()).await {
                                Ok(ev) => ev,
                                Err(_) => break,
                            };
                        }
                        if changed {
                            self.follow().await;
                        }
                    }
                    _ = check.tick() => {
                        self.restart_exited().await;
                        self.follow().await;
                    }
                }
            }
        }
        self.stop_all().await;
    }

    /// Lists the prefix: the default network's config and the named networks' configs.
    async fn relist(&mut self, root: &str) -> Result<mpsc::Receiver<WatchEvent>, StoreError> {
        let listing = self.store.list(root).await?;
        self.configs.clear();
        self.default_vni = None;
        for e in listing.entries {
            self.apply(WatchEvent::Put(e));
        }
        self.store.watch(root, listing.revision).await
    }

    /// Takes in one change; true if it concerns the networks.
    fn apply(&mut self, ev: WatchEvent) -> bool {
        let default_config = NetworkKeys::new(&self.opts.prefix).config();
        match ev {
            WatchEvent::Put(e) if e.key == default_config => {
                let vni = crate::config::NetworkConfig::parse(&e.value)
                    .ok()
                    .map(|c| c.backend.vni);
                std::mem::replace(&mut self.default_vni, vni) != vni
            }
            WatchEvent::Delete { key, .. } if key == default_config => self.default_vni.take().is_some(),
            WatchEvent::Put(e) => match net::parse_config_key(&self.opts.prefix, &e.key) {
                Some(name) => {
                    let name = name.to_string();
                    self.configs.insert(name, e);
                    true
                }
                None => false,
            },
            WatchEvent::Delete { key, .. } => match net::parse_config_key(&self.opts.prefix, &key) {
                Some(name) => self.configs.remove(name).is_some(),
                None => false,
            },
            WatchEvent::Resync => false,
        }
    }

    /// Starts, stops and restarts network agents so that they match the store.
    async fn follow(&mut self) {
        let stored: Vec<admin::StoredNetwork> = self
            .configs
            .iter()
            .map(|(name, e)| admin::stored(name, &e.value, e.create_revision))
            .collect();
        if !self.leftovers_done {
            self.leftovers_done = true;
            let names: BTreeSet<String> = stored.iter().map(|n| n.name.clone()).collect();
            let vnis: BTreeSet<u32> = stored.iter().filter_map(|n| n.vni()).collect();
            for line in isolation::remove_leftovers(&self.kernel, &self.opts.subnet_file, &names, &vnis).await {
                info!("networks deleted while no agent ran: {line}");
            }
        }
        let verdicts = admin::verdicts(self.default_vni, &stored);
        let mut refused = BTreeMap::new();
        let mut serve: BTreeMap<String, u32> = BTreeMap::new();
        let mut modes: BTreeMap<String, Mode> = BTreeMap::new();
        for (name, v) in &verdicts {
            if !wanted(&self.opts.networks, name) {
                continue;
            }
            match v {
                Verdict::Serve { vni, mode } => {
                    serve.insert(name.clone(), *vni);
                    modes.insert(name.clone(), *mode);
                }
                // An agent already serving it keeps its data plane and says what is wrong.
                Verdict::Invalid(why) => match self.running.get(name) {
                    Some(r) => {
                        serve.insert(name.clone(), r.vni);
                        modes.insert(name.clone(), r.mode);
                    }
                    None => {
                        refused.insert(name.clone(), why.clone());
                    }
                },
                Verdict::Refuse(why) => {
                    refused.insert(name.clone(), why.clone());
                }
            }
        }
        if let Some(names) = &self.opts.networks {
            for n in names {
                if n != DEFAULT_NETWORK && !verdicts.contains_key(n) {
                    refused.insert(n.clone(), "named by --networks but not in the store (yet)".into());
                }
            }
        }

        let stale: Vec<String> = self
            .running
            .iter()
            .filter(|(name, r)| {
                name.as_str() != DEFAULT_NETWORK
                    && (serve.get(*name) != Some(&r.vni) || modes.get(*name) != Some(&r.mode))
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            let why = match (self.configs.contains_key(&name), refused.get(&name)) {
                (false, _) => "deleted from the store".to_string(),
                (true, Some(r)) => r.clone(),
                (true, None) => "its VNI or mode changed".to_string(),
            };
            self.stop_and_tear_down(&name, &why).await;
        }
        if wanted(&self.opts.networks, DEFAULT_NETWORK) && !self.running.contains_key(DEFAULT_NETWORK) {
            self.start(DEFAULT_NETWORK, None, Mode::L3).await;
        }
        for (name, vni) in serve {
            if !self.running.contains_key(&name) {
                let mode = modes.get(&name).copied().unwrap_or_default();
                self.start(&name, Some(vni), mode).await;
            }
        }
        self.note_refused(refused);
    }

    fn note_refused(&mut self, refused: BTreeMap<String, String>) {
        for (name, why) in &refused {
            if self.refused.get(name) != Some(why) {
                warn!(network = %name, reason = %why, "network not served");
            }
        }
        for name in self.refused.keys() {
            if !refused.contains_key(name) && self.configs.contains_key(name) {
                info!(network = %name, "network no longer refused");
            }
        }
        self.hub.set_refused(
            refused
                .iter()
                .map(|(name, reason)| RefusedNetwork {
                    name: name.clone(),
                    reason: reason.clone(),
                })
                .collect(),
        );
        self.refused = refused;
    }

    /// Starts the agent of `name` (`vni` for a named network, `None` for the default one).
    async fn start(&mut self, name: &str, vni: Option<u32>, mode: Mode) {
        // A netlink socket of its own: the kernel runs one dump at a time per socket, and every
        // agent dumps at every reconcile.
        let kernel = match Kernel::connect().await {
            Ok(k) => k,
            Err(e) => {
                error!(network = %name, error = %e, "cannot open a netlink socket for the network's agent");
                return;
            }
        };
        let (params, kernel) = match vni {
            None => (
                NetworkParams::default_network(&self.opts, self.host.clone(), self.nft.clone()),
                kernel,
            ),
            Some(vni) => (
                NetworkParams::named(&self.opts, name, vni, self.host.clone(), self.nft.clone()),
                kernel.with_table(net::route_table(vni)),
            ),
        };
        if let Some(vni) = vni {
            info!(network = %name, vni, %mode, device = %params.device_name(vni), table = net::route_table(vni), "serving network");
            // The default network's nft table leaves this VNI to the network's own table.
            self.host.serve_vni(name, vni);
            self.fanout.nudge(DEFAULT_NETWORK);
        }
        let shared = self.hub.add(name);
        let (stop, stopped) = oneshot::channel::<()>();
        let span = tracing::info_span!("network", network = %name);
        let events = self.fanout.subscribe(name);
        let stopped = async move {
            let _ = stopped.await;
        };
        let task = match (mode, vni) {
            (Mode::L2, Some(vni)) => {
                let agent = L2Agent::new(
                    self.opts.clone(),
                    params.clone(),
                    vni,
                    self.store.clone(),
                    kernel,
                    shared,
                );
                tokio::spawn(agent.run(events, stopped).instrument(span))
            }
            _ => {
                let agent = Agent::new(self.opts.clone(), params.clone(), self.store.clone(), kernel, shared);
                tokio::spawn(agent.run(events, stopped).instrument(span))
            }
        };
        self.running.insert(
            name.to_string(),
            Running {
                vni: vni.unwrap_or(0),
                mode,
                params,
                stop: Some(stop),
                task,
            },
        );
    }

    async fn stop(&mut self, name: &str) -> Option<Running> {
        let mut r = self.running.remove(name)?;
        if let Some(stop) = r.stop.take() {
            let _ = stop.send(());
        }
        match (&mut r.task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(network = %name, error = %e, "network agent had stopped with an error"),
            Err(e) => warn!(network = %name, error = %e, "network agent task failed"),
        }
        Some(r)
    }

    async fn stop_and_tear_down(&mut self, name: &str, why: &str) {
        let Some(r) = self.stop(name).await else { return };
        info!(network = %name, reason = %why, "no longer serving network; tearing it down on this host");
        self.hub.remove(name);
        let done = isolation::teardown(&self.kernel, self.store.as_ref(), &self.opts, &r.params, r.vni).await;
        self.fanout.nudge(DEFAULT_NETWORK);
        for line in done {
            info!(network = %name, "teardown: {line}");
        }
    }

    /// An agent whose task ended (it only does on a fatal error) is started again.
    async fn restart_exited(&mut self) {
        let ended: Vec<String> = self
            .running
            .iter()
            .filter(|(_, r)| r.task.is_finished())
            .map(|(n, _)| n.clone())
            .collect();
        for name in ended {
            if let Some(r) = self.stop(&name).await {
                error!(network = %name, "network agent stopped; starting it again");
                let vni = r.params.named.map(|n| n.vni);
                self.start(&name, vni, r.mode).await;
            }
        }
    }

    async fn stop_all(&mut self) {
        let names: Vec<String> = self.running.keys().cloned().collect();
        for name in names {
            self.stop(&name).await;
        }
    }
}

/// Reads the kernel's change notifications once and hands each to every network agent.
struct Fanout {
    subs: Arc<Mutex<Vec<Subscriber>>>,
}

struct Subscriber {
    /// The network whose agent reads these events.
    name: String,
    tx: mpsc::Sender<KernelEvent>,
    /// Events were lost: send an Overrun as soon as there is room.
    overrun: bool,
}

impl Fanout {
    fn start() -> Result<Fanout, kernel::KernelError> {
        let mut events = kernel::monitor()?;
        let subs: Arc<Mutex<Vec<Subscriber>>> = Arc::default();
        let to = subs.clone();
        tokio::spawn(async move {
            loop {
                let ev = match events.recv().await {
                    Some(ev) => ev,
                    None => {
                        error!("kernel event monitor stopped; reopening it");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        match kernel::monitor() {
                            Ok(m) => events = m,
                            Err(e) => error!(error = %e, "cannot reopen the kernel event monitor"),
                        }
                        KernelEvent::Overrun
                    }
                };
                let Ok(mut subs) = to.lock() else { return };
                subs.retain(|s| !s.tx.is_closed());
                for s in subs.iter_mut() {
                    if s.overrun && s.tx.try_send(KernelEvent::Overrun).is_ok() {
                        s.overrun = false;
                    }
                    if s.tx.try_send(ev.clone()).is_err() {
                        s.overrun = true;
                    }
                }
            }
        });
        Ok(Fanout { subs })
    }

    /// The events for network `name`'s agent.
    fn subscribe(&self, name: &str) -> mpsc::Receiver<KernelEvent> {
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        if let Ok(mut subs) = self.subs.lock() {
            subs.push(Subscriber {
                name: name.to_string(),
                tx,
                overrun: false,
            });
        }
        rx
    }

    /// Makes network `name`'s agent go over everything now (an Overrun).
    fn nudge(&self, name: &str) {
        if let Ok(mut subs) = self.subs.lock() {
            for s in subs.iter_mut().filter(|s| s.name == name) {
                if s.tx.try_send(KernelEvent::Overrun).is_err() {
                    s.overrun = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_networks_filter() {
        assert!(wanted(&None, "default") && wanted(&None, "a"));
        let only_a = Some(vec!["a".to_string()]);
        assert!(wanted(&only_a, "a") && !wanted(&only_a, "default") && !wanted(&only_a, "b"));
        let both = Some(vec!["default".to_string(), "a".to_string()]);
        assert!(wanted(&both, "default") && wanted(&both, "a"));
    }
}
