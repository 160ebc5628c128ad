//! [`Lab`]: a running lab, as the CLI and the integration tests drive it, and [`LabGuard`], which
//! tears the lab down when dropped (also while a test panics).

use super::agent::{self, AgentSpec, Launch};
use super::check::{Cell, CheckReport, PodProbe};
use super::etcd::{self as lab_etcd, EtcdMember};
use super::nsstore::InNamespace;
use super::state::{self, HostState, LabState};
use super::topology::{self, HostPlan};
use super::{netns, probe, require_root, validate_name, LabError, Result};
use crate::lease::{lease_key, Lease};
use crate::network::{NetworkKeys, DEFAULT_PREFIX};
use crate::store::{self, Store};
use ipnet::Ipv4Net;
use nix::sys::signal::Signal;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Child, Output};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// flannel's documented example network, as the lab writes it by default.
pub const DEFAULT_NETWORK_CONFIG: &str = r#"{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan"}}"#;

/// Between unanswered probes while waiting for convergence. Small, because the moment of the
/// first answer is what `add` reports.
const CONVERGE_PROBE_INTERVAL: Duration = Duration::from_millis(5);
/// Total echo rate ceiling while waiting (pairs ÷ interval), so a 50-host lab (2450 pairs) does
/// not flood two cores that are busy starting 50 agents.
const MAX_PROBES_PER_SEC: usize = 50_000;
/// How often the store is read while waiting for leases to appear.
const LEASE_POLL: Duration = Duration::from_millis(5);
/// `check`: each pair is re-probed every 100 ms for at most a second.
pub(super) const CHECK_INTERVAL: Duration = Duration::from_millis(100);
pub(super) const CHECK_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a stopped agent gets to exit after SIGTERM before SIGKILL. Generous: an agent exits
/// in milliseconds and is not waited for beyond that, but a loaded machine can stall a process
/// for seconds, and a SIGKILL would then pass for an agent that ignores SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// How to build a lab.
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// `[a-z0-9]{1,8}`; prefixes every namespace and link.
    pub name: String,
    pub nodes: u32,
    /// JSON written at `<prefix>/config`; `None` for [`DEFAULT_NETWORK_CONFIG`].
    pub network_config: Option<String>,
    pub prefix: String,
    /// Start one agent per host. Without agents the lab is the bare topology (no store either).
    pub agents: bool,
    /// Extra agent arguments/environment for every host.
    pub agent: AgentSpec,
    /// Further extras for particular hosts (`"h2"` → …), after the lab-wide ones.
    pub per_host: BTreeMap<String, AgentSpec>,
    /// The weft binary; `None`: `$WEFT_BIN`, else this executable.
    pub weft_bin: Option<PathBuf>,
    /// Wait (at most this long) until every host reaches every other over the overlay;
    /// `None`: return once agents are started. Also bounds the wait in [`Lab::add_host`].
    pub wait: Option<Duration>,
    /// Pod namespaces per host, wired by `weft-cni` once the host's agent wrote `subnet.env`.
    /// With pods the lab also makes `NAME-outside`. Needs agents.
    pub pods: u32,
    /// Hosts per rack: 1 (default) gives every host a rack of its own; N > 1 puts hosts 1…N in
    /// rack 1 behind one bridge, N+1…2N in rack 2, …
    pub rack_size: u32,
    /// Writes `"DirectRouting": true` into the network config's `Backend`.
    pub direct_routing: bool,
    /// Agents run with `--ip-masq`; `None`: on exactly when the lab has pods.
    pub ip_masq: Option<bool>,
    /// The store the agents share.
    pub store: LabStore,
}

/// Which store the lab's agents share.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LabStore {
    /// The embedded SQLite file in the state directory.
    #[default]
    Sqlite,
    /// etcd `members` (1 or 3) in the router namespace, on underlay addresses.
    Etcd { members: u32 },
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            name: "weft".into(),
            nodes: 3,
            network_config: None,
            prefix: DEFAULT_PREFIX.into(),
            agents: true,
            agent: AgentSpec::default(),
            per_host: BTreeMap::new(),
            weft_bin: None,
            wait: Some(Duration::from_secs(60)),
            pods: 0,
            rack_size: 1,
            direct_routing: false,
            ip_masq: None,
            store: LabStore::Sqlite,
        }
    }
}

impl LabOptions {
    pub fn new(name: &str, nodes: u32) -> LabOptions {
        LabOptions {
            name: name.into(),
            nodes,
            ..LabOptions::default()
        }
    }

    /// Namespaces, veths and addresses only: no store, no agents, no waiting.
    pub fn topology_only(name: &str, nodes: u32) -> LabOptions {
        LabOptions {
            agents: false,
            wait: None,
            ..LabOptions::new(name, nodes)
        }
    }

    pub fn weft_bin(mut self, bin: impl Into<PathBuf>) -> Self {
        self.weft_bin = Some(bin.into());
        self
    }

    pub fn network_config(mut self, json: impl Into<String>) -> Self {
        self.network_config = Some(json.into());
        self
    }

    pub fn agent_arg(mut self, arg: impl Into<String>) -> Self {
        self.agent.args.push(arg.into());
        self
    }

    pub fn agent_env(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.agent.env.push((k.into(), v.into()));
        self
    }

    pub fn host_agent(mut self, host: &str, spec: AgentSpec) -> Self {
        self.per_host.insert(host.into(), spec);
        self
    }

    pub fn wait(mut self, wait: Option<Duration>) -> Self {
        self.wait = wait;
        self
    }

    pub fn store(mut self, store: LabStore) -> Self {
        self.store = store;
        self
    }

    pub fn pods(mut self, per_host: u32) -> Self {
        self.pods = per_host;
        self
    }

    pub fn rack_size(mut self, hosts: u32) -> Self {
        self.rack_size = hosts;
        self
    }

    pub fn direct_routing(mut self, on: bool) -> Self {
        self.direct_routing = on;
        self
    }

    pub fn ip_masq(mut self, on: bool) -> Self {
        self.ip_masq = Some(on);
        self
    }

    /// Whether agents run with `--ip-masq`.
    pub fn masquerades(&self) -> bool {
        self.ip_masq.unwrap_or(self.pods > 0)
    }
}

/// `json` with `Backend.DirectRouting` set to true.
fn with_direct_routing(json: &str) -> std::result::Result<String, String> {
    let mut v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("network config is not JSON: {e}"))?;
    let backend = v
        .as_object_mut()
        .ok_or("network config is not a JSON object")?
        .entry("Backend")
        .or_insert_with(|| serde_json::json!({"Type": "vxlan"}));
    backend
        .as_object_mut()
        .ok_or("network config's Backend is not an object")?
        .insert("DirectRouting".into(), true.into());
    Ok(v.to_string())
}

/// One host as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostStatus {
    pub name: String,
    pub namespace: String,
    pub underlay_ip: Ipv4Addr,
    pub rack_subnet: Ipv4Net,
    pub agent_pid: Option<u32>,
    pub agent_alive: bool,
    pub lease: Option<Ipv4Net>,
}

/// What [`Lab::add_host`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedHost {
    pub name: String,
    /// From the new agent's start until every other host reaches the new one over the overlay
    /// (`None` when the lab runs no agents or does not wait).
    pub reachable_after: Option<Duration>,
}

/// A lab: its recorded state plus what this process holds (agent children, store handle).
pub struct Lab {
    pub(super) state: LabState,
    pub(super) dir: PathBuf,
    pub(super) weft_bin: Option<PathBuf>,
    per_host: BTreeMap<String, AgentSpec>,
    /// Agents this process started; kept so they can be reaped (no zombies in tests).
    children: HashMap<String, Child>,
    /// etcd members this process started, by index; kept to be reaped.
    etcd_children: HashMap<u32, Child>,
    started_at: HashMap<String, Instant>,
    store: OnceLock<Arc<dyn Store>>,
    config_written: bool,
    wait: Option<Duration>,
    converged_in: Option<Duration>,
}

impl Lab {
    /// Builds a lab: namespaces, veths, addresses, routes; with agents, the network config and
    /// one agent per host; with `wait`, returns once every host reaches every other. On any error
    /// everything made so far is removed again.
    pub async fn up(opts: LabOptions) -> Result<LabGuard> {
        require_root()?;
        validate_name(&opts.name)?;
        let name = opts.name.clone();
        let invalid = |reason: String| LabError::Invalid {
            lab: name.clone(),
            reason,
        };
        if opts.rack_size == 0 || opts.rack_size > topology::MAX_SLOTS {
            return Err(invalid(format!(
                "--rack-size must be 1 to {}, not {}",
                topology::MAX_SLOTS,
                opts.rack_size
            )));
        }
        let max_nodes = topology::MAX_HOST_RACKS * opts.rack_size;
        if opts.nodes == 0 || opts.nodes > max_nodes {
            return Err(invalid(format!("--nodes must be 1 to {max_nodes}, not {}", opts.nodes)));
        }
        if opts.pods > 0 && !opts.agents {
            return Err(invalid("pods need agents (their subnet.env)".into()));
        }
        let mut network_config = opts
            .network_config
            .clone()
            .unwrap_or_else(|| DEFAULT_NETWORK_CONFIG.to_string());
        serde_json::from_str::<serde_json::Value>(&network_config)
            .map_err(|e| invalid(format!("network config is not JSON: {e}")))?;
        if opts.direct_routing {
            network_config = with_direct_routing(&network_config).map_err(invalid)?;
        }
        let ip_masq = opts.masquerades();

        let dir = state::lab_dir(&name);
        if dir.exists() {
            return Err(LabError::Exists {
                name,
                what: format!("{} exists", dir.display()),
            });
        }
        if let Some(ns) = netns::list()?
            .into_iter()
            .find(|ns| topology::is_lab_namespace(&name, ns))
        {
            return Err(LabError::Exists {
                name,
                what: format!("namespace {ns} exists"),
            });
        }

        let members = match opts.store {
            LabStore::Sqlite => Vec::new(),
            LabStore::Etcd { members: n @ 1..=5 } if opts.agents => lab_etcd::plan(n),
            LabStore::Etcd { members: 1..=5 } => Vec::new(),
            LabStore::Etcd { members } => {
                return Err(invalid(format!(
                    "--etcd-members must be 1 to 5 (1 or 3 make sense), not {members}"
                )))
            }
        };
        let plans: Vec<HostPlan> = (1..=opts.nodes)
            .map(|i| {
                topology::host_plan_sized(&name, i, opts.rack_size)
                    .ok_or_else(|| invalid(format!("no rack for host {i}")))
            })
            .collect::<Result<_>>()?;
        let state = LabState {
            name: name.clone(),
            store_url: if members.is_empty() {
                state::store_url(&dir)
            } else {
                lab_etcd::store_url(&members)
            },
            prefix: opts.prefix.clone(),
            network_config,
            agents: opts.agents,
            agent: opts.agent.clone(),
            next_index: opts.nodes + 1,
            rack_size: opts.rack_size,
            pods_per_host: opts.pods,
            ip_masq,
            outside: None,
            hosts: plans.iter().map(|p| HostState::new(p.clone(), ip_masq)).collect(),
            etcd: members,
            endpoints: Vec::new(),
        };
        for p in &plans {
            let d = state::host_dir(&dir, &p.name);
            std::fs::create_dir_all(&d).map_err(LabError::io(format!("creating {}", d.display())))?;
        }
        // Recorded before anything is created, so `down` finds everything even if we die now.
        state.save(&dir)?;
        state::mount_bpffs(&dir);

        let mut lab = LabGuard::new(Lab {
            state,
            dir,
            weft_bin: opts.weft_bin.clone(),
            per_host: opts.per_host.clone(),
            children: HashMap::new(),
            etcd_children: HashMap::new(),
            started_at: HashMap::new(),
            store: OnceLock::new(),
            config_written: false,
            wait: opts.wait,
            converged_in: None,
        });
        netns::create_router(&name)?;
        netns::create_hosts(&name, &plans, opts.rack_size > 1)?;
        if !lab.state.etcd.is_empty() {
            lab.start_etcd_cluster()?;
        }
        if opts.pods > 0 {
            lab.create_outside()?;
        }
        if opts.agents {
            lab.write_network_config().await?;
            let t0 = Instant::now();
            for p in &plans {
                lab.start_agent(&p.name).await?;
            }
            if let Some(timeout) = opts.wait {
                let all = lab.host_names();
                let pairs = lab.pairs(&all, &all);
                let took = lab.wait_pairs(t0, pairs, timeout).await?;
                lab.converged_in = Some(took);
            }
            for p in &plans {
                lab.add_pods(&p.name, opts.pods).await?;
            }
        }
        Ok(lab)
    }

    /// A lab made earlier (by this or another process), from its `lab.json`. Dropping it leaves
    /// the lab running.
    pub fn open(name: &str) -> Result<Lab> {
        require_root()?;
        validate_name(name)?;
        let dir = state::lab_dir(name);
        if !dir.join("lab.json").exists() {
            return Err(LabError::NotFound(name.to_string()));
        }
        let state = LabState::load(&dir)?;
        Ok(Lab {
            config_written: state.agents,
            state,
            dir,
            weft_bin: None,
            per_host: BTreeMap::new(),
            children: HashMap::new(),
            etcd_children: HashMap::new(),
            started_at: HashMap::new(),
            store: OnceLock::new(),
            wait: Some(Duration::from_secs(60)),
            converged_in: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// The state directory, `/run/weft/lab/NAME`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn state(&self) -> &LabState {
        &self.state
    }

    pub fn store_url(&self) -> &str {
        &self.state.store_url
    }

    pub fn prefix(&self) -> &str {
        &self.state.prefix
    }

    /// How long `up` took from the first agent's start until every pair answered.
    pub fn converged_in(&self) -> Option<Duration> {
        self.converged_in
    }

    pub fn hosts(&self) -> &[HostState] {
        &self.state.hosts
    }

    /// `["h1", "h2", …]`.
    pub fn host_names(&self) -> Vec<String> {
        self.state.hosts.iter().map(|h| h.plan.name.clone()).collect()
    }

    pub fn host(&self, host: &str) -> Result<&HostPlan> {
        self.host_state(host).map(|h| &h.plan)
    }

    pub(super) fn host_state(&self, host: &str) -> Result<&HostState> {
        self.state.host(host).ok_or_else(|| LabError::NoSuchHost {
            lab: self.state.name.clone(),
            host: host.to_string(),
        })
    }

    /// The host's namespace, `NAME-hI`.
    pub fn namespace(&self, host: &str) -> Result<&str> {
        self.host(host).map(|h| h.namespace.as_str())
    }

    pub fn underlay_ip(&self, host: &str) -> Result<Ipv4Addr> {
        self.host(host).map(|h| h.underlay_ip)
    }

    pub fn agent_log(&self, host: &str) -> PathBuf {
        state::agent_log(&self.dir, host)
    }

    pub fn subnet_file(&self, host: &str) -> PathBuf {
        state::subnet_file(&self.dir, host)
    }

    /// Runs `argv` inside the host's namespace (`ip netns exec`), whatever its exit status.
    pub fn exec(&self, host: &str, argv: &[&str]) -> Result<Output> {
        netns::exec(self.namespace(host)?, argv)
    }

    /// The lab's store (opened on first use).
    pub fn store(&self) -> Result<Arc<dyn Store>> {
        if let Some(s) = self.store.get() {
            return Ok(s.clone());
        }
        let url = self.state.store_url.clone();
        let context = format!("opening {url}");
        let s: Arc<dyn Store> = if self.state.etcd.is_empty() {
            store::open_url(&url).map_err(LabError::store(context))?
        } else {
            // etcd listens on underlay addresses, reachable from the lab's namespaces only.
            let ns = topology::router_ns(&self.state.name);
            Arc::new(InNamespace::new(&ns, || store::open_url(&url)).map_err(LabError::store(context))?)
        };
        Ok(self.store.get_or_init(|| s).clone())
    }

    /// The etcd members (empty with the SQLite store).
    pub fn etcd_members(&self) -> &[EtcdMember] {
        &self.state.etcd
    }

    /// Starts every etcd member (bootstrapping the cluster) and waits until all answer.
    fn start_etcd_cluster(&mut self) -> Result<()> {
        lab_etcd::add_addresses(&self.state.name, &self.state.etcd)?;
        let indexes: Vec<u32> = self.state.etcd.iter().map(|m| m.index).collect();
        for i in indexes {
            self.spawn_etcd(i)?;
        }
        self.state.save(&self.dir)?;
        lab_etcd::wait_ready(&self.state.name, &self.dir, &self.state.etcd)
    }

    fn spawn_etcd(&mut self, index: u32) -> Result<u32> {
        let all = self.state.etcd.clone();
        let m = self.etcd_member(index)?.clone();
        let child = lab_etcd::spawn(&self.state.name, &self.dir, &m, &all)?;
        let pid = child.id();
        if let Some(mut old) = self.etcd_children.insert(index, child) {
            let _ = old.try_wait();
        }
        if let Some(m) = self.state.etcd.iter_mut().find(|m| m.index == index) {
            m.pid = Some(pid);
        }
        Ok(pid)
    }

    fn etcd_member(&self, index: u32) -> Result<&EtcdMember> {
        self.state
            .etcd
            .iter()
            .find(|m| m.index == index)
            .ok_or_else(|| LabError::Invalid {
                lab: self.state.name.clone(),
                reason: format!("no etcd member {index}"),
            })
    }

    /// Stops etcd member `index` with `sig` (SIGKILL: a crash) and waits until it is gone.
    pub fn stop_etcd(&mut self, index: u32, sig: Signal) -> Result<()> {
        let Some(pid) = self.etcd_member(index)?.pid else {
            return Ok(());
        };
        agent::stop(pid, self.etcd_children.get_mut(&index), sig, STOP_GRACE)?;
        self.etcd_children.remove(&index);
        if let Some(m) = self.state.etcd.iter_mut().find(|m| m.index == index) {
            m.pid = None;
        }
        self.state.save(&self.dir)
    }

    /// Starts a stopped etcd member again on its data and waits until it answers.
    pub fn start_etcd(&mut self, index: u32) -> Result<()> {
        self.spawn_etcd(index)?;
        self.state.save(&self.dir)?;
        let m = self.etcd_member(index)?.clone();
        lab_etcd::wait_ready(&self.state.name, &self.dir, std::slice::from_ref(&m))
    }

    /// Runs `etcdctl ARGS` (v3 API) in the router namespace against every member; its output.
    pub fn etcdctl(&self, args: &[&str]) -> Result<Output> {
        let eps: Vec<String> = self.state.etcd.iter().map(EtcdMember::client_url).collect();
        lab_etcd::etcdctl(&self.state.name, &eps.join(","), args)
    }

    /// Writes the network config at `<prefix>/config` (idempotent).
    pub async fn write_network_config(&mut self) -> Result<()> {
        let key = NetworkKeys::new(&self.state.prefix).config();
        self.store()?
            .put(&key, &self.state.network_config)
            .await
            .map_err(LabError::store(format!("writing {key}")))?;
        self.config_written = true;
        Ok(())
    }

    /// Every lease whose `PublicIP` is one of our hosts' underlay addresses, by host name. Empty
    /// (without creating a store file) when no store exists yet.
    pub async fn leases(&self) -> Result<BTreeMap<String, Lease>> {
        let path = self.state.store_url.strip_prefix("sqlite:").map(Path::new);
        if path.is_some_and(|p| !p.exists()) {
            return Ok(BTreeMap::new());
        }
        let prefix = NetworkKeys::new(&self.state.prefix).subnets();
        let listing = self
            .store()?
            .list(&prefix)
            .await
            .map_err(LabError::store(format!("listing {prefix}")))?;
        let by_ip: HashMap<Ipv4Addr, &str> = self
            .state
            .hosts
            .iter()
            .map(|h| (h.plan.underlay_ip, h.plan.name.as_str()))
            .collect();
        // Malformed entries are the agents' business (and tests may plant them): skip them.
        // Tests also plant well-formed leases naming a host's address (hostile ones the agents
        // refuse): a host's own lease is the one its `subnet.env` names, else its oldest.
        let mut candidates: BTreeMap<&str, Vec<(i64, Lease)>> = BTreeMap::new();
        for e in &listing.entries {
            let Ok(lease) = Lease::from_entry(e) else { continue };
            if let Some(host) = by_ip.get(&lease.public_ip) {
                candidates.entry(host).or_default().push((e.create_revision, lease));
            }
        }
        let mut out = BTreeMap::new();
        for (host, mut leases) in candidates {
            let own = crate::subnet_env::SubnetEnv::read(&self.subnet_file(host)).map(|env| env.subnet.trunc());
            leases.sort_by_key(|(rev, l)| (Some(l.subnet) != own, *rev));
            if let Some((_, lease)) = leases.into_iter().next() {
                out.insert(host.to_string(), lease);
            }
        }
        Ok(out)
    }

    /// The host's overlay address: its lease's network address (`10.0.37.0`), which its agent
    /// puts on `flannel.<VNI>`. `None` while it has no lease.
    pub async fn overlay_ip(&self, host: &str) -> Result<Option<Ipv4Addr>> {
        self.host(host)?;
        Ok(self.leases().await?.get(host).map(|l| l.subnet.network()))
    }

    /// Starts the host's agent with the lab-wide extras (and any per-host ones given at `up`).
    pub async fn start_agent(&mut self, host: &str) -> Result<u32> {
        self.start_agent_with(host, &AgentSpec::default()).await
    }

    /// Starts the host's agent with `extra` arguments/environment appended. Returns its pid.
    pub async fn start_agent_with(&mut self, host: &str, extra: &AgentSpec) -> Result<u32> {
        let plan = self.host(host)?.clone();
        if let Some(pid) = self.agent_pid(host) {
            return Err(LabError::AgentRunning {
                host: host.to_string(),
                pid,
            });
        }
        if !self.config_written {
            self.write_network_config().await?;
        }
        let spec = self
            .state
            .agent
            .merged(self.per_host.get(host).unwrap_or(&AgentSpec::default()))
            .merged(extra);
        let mut spec = spec;
        if self.host_state(host)?.ip_masq {
            spec.args.push("--ip-masq".into());
        }
        // The host's pin directory on the lab's bpffs, unless the test or user chose one.
        let bpffs = state::bpffs_dir(&self.dir);
        let chosen = spec.args.iter().any(|a| a.starts_with("--bpf-pin-dir"))
            || spec.env.iter().any(|(k, _)| k == "WEFT_BPF_PIN_DIR");
        if !chosen && crate::kernel::bpf::is_bpffs(&bpffs) {
            spec.args.push("--bpf-pin-dir".into());
            spec.args.push(bpffs.join(host).display().to_string());
        }
        let bin = agent::weft_bin(self.weft_bin.as_deref())?;
        let (subnet_file, log) = (self.subnet_file(host), self.agent_log(host));
        let launch = Launch {
            bin: &bin,
            namespace: &plan.namespace,
            store_url: &self.state.store_url,
            prefix: &self.state.prefix,
            subnet_file: &subnet_file,
            log: &log,
            spec: &spec,
        };
        self.started_at.insert(host.to_string(), Instant::now());
        let child = agent::spawn(&launch)?;
        let pid = child.id();
        if let Some(mut old) = self.children.insert(host.to_string(), child) {
            let _ = old.try_wait(); // reap a previous, already dead agent
        }
        if let Some(h) = self.state.host_mut(host) {
            h.agent_pid = Some(pid);
        }
        self.state.save(&self.dir)?;
        Ok(pid)
    }

    /// The pid of the host's agent if it is running.
    pub fn agent_pid(&self, host: &str) -> Option<u32> {
        let pid = self.state.host(host)?.agent_pid?;
        agent::alive(pid).then_some(pid)
    }

    /// When this process last started the host's agent.
    pub fn agent_started_at(&self, host: &str) -> Option<Instant> {
        self.started_at.get(host).copied()
    }

    /// Sends `sig` to the host's agent and returns at once (SIGSTOP/SIGCONT, SIGHUP, …).
    pub fn signal_agent(&self, host: &str, sig: Signal) -> Result<()> {
        match self.host_state(host)?.agent_pid {
            Some(pid) => agent::signal(pid, sig),
            None => Ok(()),
        }
    }

    /// Stops the host's agent with `sig` (SIGTERM for a clean stop, SIGKILL for a crash) and
    /// waits until it has exited (SIGKILL after a grace period if it ignores `sig`).
    pub fn kill_agent(&mut self, host: &str, sig: Signal) -> Result<()> {
        let Some(pid) = self.host_state(host)?.agent_pid else {
            return Ok(());
        };
        let child = self.children.get_mut(host);
        agent::stop(pid, child, sig, STOP_GRACE)?;
        self.children.remove(host);
        if let Some(h) = self.state.host_mut(host) {
            h.agent_pid = None;
        }
        self.state.save(&self.dir)
    }

    /// Adds one host (in the last rack if racks hold several hosts and it has room, else in a new
    /// one); with agents, starts its agent, (if the lab waits) measures the time until every other
    /// host reaches it, and gives it as many pods as the other hosts.
    pub async fn add_host(&mut self) -> Result<AddedHost> {
        let index = self.state.next_index;
        let plan = topology::host_plan_sized(&self.state.name, index, self.state.rack_size).ok_or_else(|| {
            LabError::Invalid {
                lab: self.state.name.clone(),
                reason: format!("no rack left for host {index} (at most {})", topology::MAX_HOST_RACKS),
            }
        })?;
        let d = state::host_dir(&self.dir, &plan.name);
        std::fs::create_dir_all(&d).map_err(LabError::io(format!("creating {}", d.display())))?;
        self.state.next_index += 1;
        self.state.hosts.push(HostState::new(plan.clone(), self.state.ip_masq));
        self.state.save(&self.dir)?;
        netns::create_hosts(&self.state.name, std::slice::from_ref(&plan), self.state.rack_size > 1)?;
        let mut added = AddedHost {
            name: plan.name.clone(),
            reachable_after: None,
        };
        if self.state.agents {
            self.start_agent(&plan.name).await?;
            if let Some(timeout) = self.wait {
                let t0 = self.started_at.get(&plan.name).copied().unwrap_or_else(Instant::now);
                let others: Vec<String> = self.host_names().into_iter().filter(|h| *h != plan.name).collect();
                let pairs = self.pairs(&others, std::slice::from_ref(&plan.name));
                added.reachable_after = Some(self.wait_pairs(t0, pairs, timeout).await?);
            }
            self.add_pods(&plan.name, self.state.pods_per_host).await?;
        }
        Ok(added)
    }

    /// Takes a host away: its L2 endpoints deleted, its agent stopped, its lease deleted from the
    /// store (so the other agents drop their entries for it), its namespace deleted.
    pub async fn remove_host(&mut self, host: &str) -> Result<()> {
        let plan = self.host(host)?.clone();
        // Its L2 endpoints go with it (unregistered, addresses released, namespaces deleted).
        let endpoints: Vec<(String, Ipv4Addr)> = self
            .endpoints()
            .iter()
            .filter(|e| e.host == host)
            .map(|e| (e.network.clone(), e.ip))
            .collect();
        for (network, ip) in endpoints {
            self.delete_endpoint(&network, ip).await?;
        }
        self.kill_agent(host, Signal::SIGTERM)?;
        if let Some(lease) = self.leases().await?.get(host) {
            let key = lease_key(&self.state.prefix, lease.subnet);
            self.store()?
                .delete(&key)
                .await
                .map_err(LabError::store(format!("deleting {key}")))?;
        }
        let pods: Vec<String> = self
            .host_state(host)?
            .pods
            .iter()
            .map(|p| p.namespace.clone())
            .collect();
        for ns in &pods {
            kill_namespace_processes(ns)?;
        }
        netns::delete_namespaces(&pods)?;
        kill_namespace_processes(&plan.namespace)?;
        // The kernel destroys a deleted namespace (and its veth) asynchronously, sometimes
        // hundreds of ms later: cut the host off the router first so it is gone at once.
        let router = topology::router_ns(&self.state.name);
        let _ = netns::ip(&["-n", &router, "link", "del", &plan.namespace]);
        netns::delete_namespaces(std::slice::from_ref(&plan.namespace))?;
        self.state.hosts.retain(|h| h.plan.name != host);
        self.state.save(&self.dir)
    }

    /// Per host: addresses, agent pid and liveness, leased subnet.
    pub async fn status(&self) -> Result<Vec<HostStatus>> {
        let leases = self.leases().await?;
        Ok(self
            .state
            .hosts
            .iter()
            .map(|h| HostStatus {
                name: h.plan.name.clone(),
                namespace: h.plan.namespace.clone(),
                underlay_ip: h.plan.underlay_ip,
                rack_subnet: h.plan.rack_subnet,
                agent_pid: h.agent_pid,
                agent_alive: h.agent_pid.is_some_and(agent::alive),
                lease: leases.get(&h.plan.name).map(|l| l.subnet),
            })
            .collect())
    }

    /// The full ping matrix over overlay addresses (each pair probed for up to a second); with
    /// pods also pod → pod across hosts, pod → every host's overlay address, pod → outside. All
    /// probes run at once, so the whole check takes about a second even when some fail.
    pub async fn check(&self) -> Result<CheckReport> {
        let leases = self.leases().await?;
        let hosts = self.host_names();
        let overlay: Vec<Option<Ipv4Addr>> = hosts
            .iter()
            .map(|h| leases.get(h).map(|l| l.subnet.network()))
            .collect();
        let mut pairs = Vec::new();
        for a in &self.state.hosts {
            for ip in overlay.iter().flatten() {
                pairs.push((a.plan.namespace.clone(), *ip));
            }
        }
        let host_pairs = pairs.len();
        let pod_probes = self.pod_probes(&leases);
        pairs.extend(pod_probes.iter().map(|p| (p.from.clone(), p.ip)));
        let mut answered = blocking(move || probe::wait_all(&pairs, CHECK_INTERVAL, CHECK_TIMEOUT)).await?;
        let pod_answers = answered.split_off(host_pairs);
        let pods = pod_probes
            .into_iter()
            .zip(pod_answers)
            .map(|(p, a)| PodProbe {
                answered: a.is_some(),
                ..p
            })
            .collect();
        let n = overlay.iter().flatten().count();
        let mut cells = Vec::new();
        for (i, _) in hosts.iter().enumerate() {
            let mut row = Vec::new();
            let mut k = 0;
            for (j, ip) in overlay.iter().enumerate() {
                row.push(match ip {
                    _ if i == j => Cell::Own,
                    None => Cell::NoLease,
                    Some(_) if answered[i * n + k].is_some() => Cell::Answered,
                    Some(_) => Cell::Unanswered,
                });
                if ip.is_some() {
                    k += 1;
                }
            }
            cells.push(row);
        }
        Ok(CheckReport {
            hosts,
            overlay,
            cells,
            pods,
        })
    }

    /// Waits (at most `timeout`) until every host reaches every other over the overlay; returns
    /// how long that took from the call.
    pub async fn wait_converged(&self, timeout: Duration) -> Result<Duration> {
        let all = self.host_names();
        let pairs = self.pairs(&all, &all);
        self.wait_pairs(Instant::now(), pairs, timeout).await
    }

    /// `(from, to)` host pairs, without a host probing itself.
    fn pairs(&self, from: &[String], to: &[String]) -> Vec<(String, String)> {
        from.iter()
            .flat_map(|a| to.iter().filter(move |b| *b != a).map(move |b| (a.clone(), b.clone())))
            .collect()
    }

    /// Waits until each `(from, to)` pair answers over the overlay; returns the time from `t0`
    /// until the last pair first answered.
    async fn wait_pairs(&self, t0: Instant, pairs: Vec<(String, String)>, timeout: Duration) -> Result<Duration> {
        let deadline = Instant::now() + timeout;
        let wanted: BTreeSet<&String> = pairs.iter().map(|(_, b)| b).collect();
        // First every destination needs a lease (an overlay address to probe).
        let leases = loop {
            let leases = self.leases().await?;
            let missing: Vec<&str> = wanted
                .iter()
                .filter(|h| !leases.contains_key(**h))
                .map(|h| h.as_str())
                .collect();
            if missing.is_empty() {
                break leases;
            }
            self.fail_if_agent_died()?;
            if Instant::now() >= deadline {
                return Err(LabError::Timeout {
                    what: "leases".into(),
                    after: timeout,
                    detail: format!("no lease for {}", missing.join(", ")),
                });
            }
            tokio::time::sleep(LEASE_POLL).await;
        };
        let probes: Vec<(String, Ipv4Addr)> = pairs
            .iter()
            .map(|(a, b)| Ok((self.namespace(a)?.to_string(), leases[b].subnet.network())))
            .collect::<Result<_>>()?;
        let interval =
            CONVERGE_PROBE_INTERVAL.max(Duration::from_secs(1) * probes.len() as u32 / MAX_PROBES_PER_SEC as u32);
        let remaining = deadline.saturating_duration_since(Instant::now());
        let answered = blocking(move || probe::wait_all(&probes, interval, remaining)).await?;
        let failed: Vec<String> = pairs
            .iter()
            .zip(&answered)
            .filter(|(_, t)| t.is_none())
            .map(|((a, b), _)| format!("{a} -> {b} ({})", leases[b].subnet.network()))
            .collect();
        if !failed.is_empty() {
            let dead: Vec<&str> = self
                .state
                .hosts
                .iter()
                .filter(|h| h.agent_pid.is_some_and(|p| !agent::alive(p)))
                .map(|h| h.plan.name.as_str())
                .collect();
            let mut detail = format!(
                "{} of {} pairs never answered: {}",
                failed.len(),
                pairs.len(),
                failed.iter().take(10).cloned().collect::<Vec<_>>().join(", ")
            );
            if !dead.is_empty() {
                detail += &format!("; agents not running on {}", dead.join(", "));
            }
            return Err(LabError::Timeout {
                what: "every host to reach every other".into(),
                after: timeout,
                detail,
            });
        }
        let last = answered.into_iter().flatten().max().unwrap_or(t0);
        Ok(last.saturating_duration_since(t0))
    }

    /// An agent that died while we wait would make us wait in vain: report it with its log.
    fn fail_if_agent_died(&self) -> Result<()> {
        for h in &self.state.hosts {
            if let Some(pid) = h.agent_pid {
                if !agent::alive(pid) {
                    let log = self.agent_log(&h.plan.name);
                    return Err(LabError::AgentExited {
                        host: h.plan.name.clone(),
                        tail: state::tail(&log, 20),
                        log,
                    });
                }
            }
        }
        Ok(())
    }

    /// Removes everything the lab made (see [`down`]) and reaps the agents this process started.
    pub fn down(mut self) -> Result<Vec<String>> {
        self.down_inner()
    }

    fn down_inner(&mut self) -> Result<Vec<String>> {
        let result = down(&self.state.name);
        let etcd = self.etcd_children.drain().map(|(i, c)| (i.to_string(), c));
        for (_, mut child) in self.children.drain().chain(etcd) {
            let pid = child.id();
            agent::wait_exit(pid, Some(&mut child), Duration::from_secs(5));
        }
        result
    }
}

/// Runs blocking probe work off the async runtime's worker threads.
pub(super) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| LabError::Io {
        context: "probe task".into(),
        source: std::io::Error::other(e.to_string()),
    })?
}

/// SIGKILLs every process in a namespace (never this process) and waits briefly for them to go.
fn kill_namespace_processes(ns: &str) -> Result<usize> {
    let me = std::process::id();
    let pids: Vec<u32> = netns::pids(ns)?
        .into_iter()
        .filter_map(|p| u32::try_from(p).ok())
        .filter(|p| *p != me)
        .collect();
    for pid in &pids {
        agent::signal(*pid, Signal::SIGKILL)?;
    }
    for pid in &pids {
        agent::wait_exit(*pid, None, Duration::from_secs(2));
    }
    Ok(pids.len())
}

/// True if `pid` runs an agent of the lab whose store URL is `store_url` or whose files are in
/// `dir` (its command line names them): how `down` recognises an agent whose namespace is already
/// gone. (etcd labs all use the same endpoints, so their agents are known by their subnet file.)
fn is_lab_agent(pid: u32, store_url: &str, dir: &Path) -> bool {
    let dir = dir.as_os_str().as_encoded_bytes();
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            c.split(|b| *b == 0)
                .any(|arg| arg == store_url.as_bytes() || arg.starts_with(dir))
        })
        .unwrap_or(false)
}

/// Removes everything lab `name` made, whether or not `up` finished: kills every process in its
/// namespaces, deletes the namespaces (those in `lab.json` and any `NAME-router`, `NAME-outside`,
/// `NAME-hN` or pod `NAME-hN-pM` left by a crash), removes the state directory (pods' CNI and
/// IPAM files included). Returns the namespaces deleted. Idempotent.
pub fn down(name: &str) -> Result<Vec<String>> {
    require_root()?;
    validate_name(name)?;
    let dir = state::lab_dir(name);
    let recorded = LabState::load(&dir).ok();
    let mut wanted: BTreeSet<String> = BTreeSet::new();
    if let Some(s) = &recorded {
        wanted.insert(topology::router_ns(name));
        wanted.insert(topology::outside_ns(name));
        wanted.extend(s.hosts.iter().map(|h| h.plan.namespace.clone()));
        wanted.extend(s.hosts.iter().flat_map(|h| h.pods.iter().map(|p| p.namespace.clone())));
    }
    let existing: Vec<String> = netns::list()?
        .into_iter()
        .filter(|ns| wanted.contains(ns) || topology::is_lab_namespace(name, ns))
        .collect();
    for ns in &existing {
        kill_namespace_processes(ns)?;
    }
    // Agents whose namespace was deleted already (an interrupted `down`, `ip netns del` by hand).
    if let Some(s) = &recorded {
        for pid in s.hosts.iter().filter_map(|h| h.agent_pid) {
            if agent::alive(pid) && is_lab_agent(pid, &s.store_url, &dir) {
                agent::signal(pid, Signal::SIGKILL)?;
            }
        }
    }
    netns::delete_namespaces(&existing)?;
    state::unmount_bpffs(&dir);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(LabError::io(format!("removing {}", dir.display())))?;
    }
    Ok(existing)
}

/// Owns a lab and tears it down when dropped, also when a test panics. [`LabGuard::detach`]
/// keeps the lab running (what `weft lab up` does).
pub struct LabGuard {
    lab: Option<Lab>,
}

impl LabGuard {
    pub fn new(lab: Lab) -> LabGuard {
        LabGuard { lab: Some(lab) }
    }

    /// Disarms the guard: the lab outlives it.
    pub fn detach(mut self) -> Lab {
        self.lab
            .take()
            .expect("a LabGuard holds its lab until dropped or detached")
    }

    /// Tears the lab down now, reporting errors (dropping does the same, printing them).
    pub fn down(mut self) -> Result<Vec<String>> {
        match self.lab.take() {
            Some(mut lab) => lab.down_inner(),
            None => Ok(Vec::new()),
        }
    }
}

impl Deref for LabGuard {
    type Target = Lab;
    fn deref(&self) -> &Lab {
        self.lab
            .as_ref()
            .expect("a LabGuard holds its lab until dropped or detached")
    }
}

impl DerefMut for LabGuard {
    fn deref_mut(&mut self) -> &mut Lab {
        self.lab
            .as_mut()
            .expect("a LabGuard holds its lab until dropped or detached")
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        if let Some(mut lab) = self.lab.take() {
            if let Err(e) = lab.down_inner() {
                eprintln!("weft lab: tearing down lab {:?} failed: {e}", lab.state.name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_routing_is_merged_into_the_backend() {
        let v: serde_json::Value = serde_json::from_str(&with_direct_routing(DEFAULT_NETWORK_CONFIG).unwrap()).unwrap();
        assert_eq!(v["Backend"]["DirectRouting"], true);
        assert_eq!(v["Backend"]["Type"], "vxlan");
        assert_eq!(v["Network"], "10.0.0.0/16");
        let v: serde_json::Value =
            serde_json::from_str(&with_direct_routing(r#"{"Network":"10.0.0.0/16"}"#).unwrap()).unwrap();
        assert_eq!(v["Backend"]["DirectRouting"], true);
        assert!(with_direct_routing("[1]").is_err());
        assert!(with_direct_routing(r#"{"Backend":3}"#).is_err());
    }

    #[test]
    fn masquerade_follows_pods_unless_set() {
        assert!(!LabOptions::new("w", 2).masquerades());
        assert!(LabOptions::new("w", 2).pods(1).masquerades());
        assert!(!LabOptions::new("w", 2).pods(1).ip_masq(false).masquerades());
        assert!(LabOptions::new("w", 2).ip_masq(true).masquerades());
    }
}
