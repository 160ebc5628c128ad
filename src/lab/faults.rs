//! Fault injection in the lab: a seeded plan of faults ([`plan`]), the faults themselves (methods
//! on [`Lab`]) and the invariants checked after each one ([`Lab::violations`]).
//!
//! The plan is a pure function of the seed and the host names, so a failing run is replayed
//! exactly by its seed (`tests/fault_injection.rs` prints it). Everything here acts only inside
//! the lab's own namespaces and state directory.

use super::cluster::Lab;
use super::{LabError, LabStore, Result};
use crate::lease::{lease_key, Lease};
use crate::network::NetworkKeys;
use ipnet::Ipv4Net;
use nix::sys::signal::Signal;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::time::Duration;

/// The device every lab agent keeps (the default network, VNI 1).
pub const DEVICE: &str = "flannel.1";
/// The host's public interface in the lab.
pub const PUBLIC_IFACE: &str = "eth0";

/// A kernel entry one host keeps for one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerEntry {
    Route,
    Neigh,
    Fdb,
}

/// One fault, with everything random about it already drawn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// `kill -9` of the host's agent; a new one started after `down`.
    KillAgent { host: String, down: Duration },
    /// The store stopped for `down` and started again (see [`Outage`]). With `restart`, that
    /// host's agent is killed (`kill -9`) and started again while the store is down.
    StoreOutage {
        down: Duration,
        how: Outage,
        restart: Option<String>,
    },
    /// The host's route, neighbour or FDB entry for `peer` deleted by hand.
    DeleteEntry {
        host: String,
        peer: String,
        entry: PeerEntry,
    },
    /// The host's VXLAN device deleted by hand.
    DeleteDevice { host: String },
    /// The host's public link set down for `down`, then up (and its default route put back,
    /// as the host's own network setup would).
    LinkFlap { host: String, down: Duration },
    /// The host's lease deleted from the store (its agent is running).
    DeleteLease { host: String },
    /// The host taken away for good: agent stopped, lease deleted, namespace gone.
    RemoveHost { host: String },
}

/// How the store is stopped (see [`Lab::stop_store`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outage {
    /// Every etcd member killed with SIGKILL.
    EtcdKill,
    /// Every etcd member stopped with SIGTERM.
    EtcdTerm,
    /// The SQLite database wedged: its WAL-index locks held by someone else, so no read or write
    /// of any agent gets through.
    SqliteWedged,
    /// The SQLite write lock held by someone else: reads (and so watches) go on, every write
    /// fails after the busy timeout.
    SqliteWriteLocked,
}

impl fmt::Display for Outage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outage::EtcdKill => "etcd SIGKILL",
            Outage::EtcdTerm => "etcd SIGTERM",
            Outage::SqliteWedged => "SQLite wedged",
            Outage::SqliteWriteLocked => "SQLite write-locked",
        })
    }
}

/// One step of a plan: a fault, optionally while a host's agent is down (killed before the
/// fault, started again after it): what that agent missed must be caught up on at its start.
/// That may be the faulted host's own agent (an entry, the device or the lease deleted while it
/// is down), never that of a host being removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub fault: Fault,
    pub agent_down: Option<String>,
}

impl fmt::Display for PeerEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PeerEntry::Route => "route",
            PeerEntry::Neigh => "neighbour",
            PeerEntry::Fdb => "FDB entry",
        })
    }
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::KillAgent { host, down } => write!(f, "kill -9 {host} + restart after {} ms", ms(*down)),
            Fault::StoreOutage { down, how, restart } => {
                write!(f, "store down {} ms ({how})", ms(*down))?;
                if let Some(h) = restart {
                    write!(f, ", kill -9 {h} + restart meanwhile")?;
                }
                Ok(())
            }
            Fault::DeleteEntry { host, peer, entry } => write!(f, "{entry} for {peer} deleted on {host}"),
            Fault::DeleteDevice { host } => write!(f, "{DEVICE} deleted on {host}"),
            Fault::LinkFlap { host, down } => write!(f, "{PUBLIC_IFACE} of {host} down {} ms + up", ms(*down)),
            Fault::DeleteLease { host } => write!(f, "lease of {host} deleted"),
            Fault::RemoveHost { host } => write!(f, "{host} removed for good"),
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.fault)?;
        if let Some(h) = &self.agent_down {
            write!(f, ", agent of {h} down meanwhile")?;
        }
        Ok(())
    }
}

impl Fault {
    /// The host the fault is done to (`None`: the store).
    pub fn host(&self) -> Option<&str> {
        match self {
            Fault::StoreOutage { .. } => None,
            Fault::KillAgent { host, .. }
            | Fault::DeleteEntry { host, .. }
            | Fault::DeleteDevice { host }
            | Fault::LinkFlap { host, .. }
            | Fault::DeleteLease { host }
            | Fault::RemoveHost { host } => Some(host),
        }
    }

    /// Whether pings between `a` and `b` may legitimately be lost while this fault lasts and is
    /// repaired. Everything else must lose nothing: an agent's death and restart and a store
    /// outage never touch the data plane; a hand-deleted entry cuts only the one pair it served;
    /// a host's own device, link or lease cuts only that host.
    pub fn may_lose(&self, a: &str, b: &str) -> bool {
        match self {
            Fault::KillAgent { .. } | Fault::StoreOutage { .. } => false,
            Fault::DeleteEntry { host, peer, .. } => (a == host && b == peer) || (a == peer && b == host),
            Fault::DeleteDevice { host }
            | Fault::LinkFlap { host, .. }
            | Fault::DeleteLease { host }
            | Fault::RemoveHost { host } => a == host || b == host,
        }
    }

    /// How long after the fault the lab must be whole again (every pair answering, kernel state
    /// matching the store). After a store outage agents reconnect with a backoff of up to 5 s.
    pub fn recovery_bound(&self) -> Duration {
        match self {
            Fault::StoreOutage { .. } => Duration::from_secs(30),
            _ => Duration::from_secs(10),
        }
    }
}

/// Shape of a [`plan`].
#[derive(Debug, Clone)]
pub struct PlanOptions {
    pub steps: usize,
    /// A host is removed only while more than this many are left.
    pub min_hosts: usize,
    pub store: LabStore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Kill,
    Store,
    Route,
    Neigh,
    Fdb,
    Device,
    Flap,
    Lease,
    Remove,
}

const KINDS: [Kind; 9] = [
    Kind::Kill,
    Kind::Store,
    Kind::Route,
    Kind::Neigh,
    Kind::Fdb,
    Kind::Device,
    Kind::Flap,
    Kind::Lease,
    Kind::Remove,
];

/// A seeded plan of `opts.steps` faults on a lab whose hosts are `hosts`: every kind of fault
/// once (if there are enough steps), the rest drawn at random, in random order; hosts, peers and
/// durations drawn at random among the hosts still there at that step. A removal that would leave
/// `opts.min_hosts` or fewer hosts becomes another fault. Same seed and hosts, same plan (with
/// the `rand` version in Cargo.lock: `StdRng` is only stable within it).
pub fn plan(seed: u64, hosts: &[String], opts: &PlanOptions) -> Vec<Step> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut kinds: Vec<Kind> = KINDS.to_vec();
    kinds.shuffle(&mut rng);
    kinds.truncate(opts.steps);
    while kinds.len() < opts.steps {
        kinds.push(*KINDS.choose(&mut rng).expect("KINDS is not empty"));
    }
    kinds.shuffle(&mut rng);

    let mut live: Vec<String> = hosts.to_vec();
    let mut steps = Vec::with_capacity(kinds.len());
    for mut kind in kinds {
        while kind == Kind::Remove && live.len() <= opts.min_hosts.max(2) {
            kind = *KINDS.choose(&mut rng).expect("KINDS is not empty");
        }
        let host = live.choose(&mut rng).expect("a live host").clone();
        let other = |rng: &mut StdRng, not: &str| -> String {
            let others: Vec<&String> = live.iter().filter(|h| *h != not).collect();
            (*others.choose(rng).expect("at least two live hosts")).clone()
        };
        let fault = match kind {
            Kind::Kill => Fault::KillAgent {
                host,
                down: Duration::from_millis(rng.gen_range(0..=1500)),
            },
            Kind::Store => Fault::StoreOutage {
                down: match opts.store {
                    // Well past the SQLite busy timeout (5 s), so that accesses do fail, also
                    // those of an agent started half a second into the outage.
                    LabStore::Sqlite => Duration::from_millis(rng.gen_range(7500..=9000)),
                    LabStore::Etcd { .. } => Duration::from_millis(rng.gen_range(2000..=6000)),
                },
                how: match (opts.store, rng.gen_bool(0.5)) {
                    (LabStore::Sqlite, true) => Outage::SqliteWedged,
                    (LabStore::Sqlite, false) => Outage::SqliteWriteLocked,
                    (LabStore::Etcd { .. }, true) => Outage::EtcdKill,
                    (LabStore::Etcd { .. }, false) => Outage::EtcdTerm,
                },
                restart: rng.gen_bool(0.5).then_some(host),
            },
            Kind::Route | Kind::Neigh | Kind::Fdb => Fault::DeleteEntry {
                peer: other(&mut rng, &host),
                host,
                entry: match kind {
                    Kind::Route => PeerEntry::Route,
                    Kind::Neigh => PeerEntry::Neigh,
                    _ => PeerEntry::Fdb,
                },
            },
            Kind::Device => Fault::DeleteDevice { host },
            Kind::Flap => Fault::LinkFlap {
                host,
                down: Duration::from_millis(rng.gen_range(100..=1500)),
            },
            Kind::Lease => Fault::DeleteLease { host },
            Kind::Remove => Fault::RemoveHost { host },
        };
        // Any live host's agent, the faulted host's own too (it must then repair at start what
        // was done while it was down), except the host being removed.
        let agent_down = match &fault {
            Fault::KillAgent { .. } | Fault::StoreOutage { .. } => None,
            Fault::RemoveHost { host } => rng.gen_bool(1.0 / 3.0).then(|| other(&mut rng, host)),
            _ => rng
                .gen_bool(1.0 / 3.0)
                .then(|| live.choose(&mut rng).expect("a live host").clone()),
        };
        if let Fault::RemoveHost { host } = &fault {
            live.retain(|h| h != host);
        }
        steps.push(Step { fault, agent_down });
    }
    steps
}

/// A store outage in progress; [`Lab::start_store`] ends it.
pub enum StoreOutage {
    /// A connection holding the SQLite write lock (an open `BEGIN EXCLUSIVE` transaction).
    SqliteWrite(rusqlite::Connection),
    /// The `-shm` file whose WAL-index locks we hold (an open file description lock).
    SqliteWedged(std::fs::File),
    /// The etcd members stopped, by index.
    Etcd(Vec<u32>),
}

/// SQLite's WAL-index locks in the `-shm` file: write, checkpoint, recover and the five read
/// marks, bytes 120 to 127 (not the "DMS" byte 128 every open connection holds shared).
const WAL_INDEX_LOCKS: (i64, i64) = (120, 8);

/// Takes (`lock`) or releases SQLite's WAL-index locks on `shm` with an open file description
/// lock. OFD locks conflict with the POSIX locks SQLite takes, also those of this process's own
/// connections, and unlike POSIX locks they belong to this one descriptor. Taking them waits
/// (up to 10 s) for the read and write transactions in flight, which are short.
fn wal_index_lock(shm: &std::fs::File, lock: bool) -> std::result::Result<(), nix::Error> {
    use nix::fcntl::{fcntl, FcntlArg};
    // SAFETY: `flock` is plain old data; all-zero is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = if lock { libc::F_WRLCK } else { libc::F_UNLCK } as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = WAL_INDEX_LOCKS.0;
    fl.l_len = WAL_INDEX_LOCKS.1;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match fcntl(shm, FcntlArg::F_OFD_SETLK(&fl)) {
            Err(nix::Error::EAGAIN | nix::Error::EACCES | nix::Error::EINTR)
                if std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            r => return r.map(|_| ()),
        }
    }
}

/// What weft keeps on one host, as the kernel shows it (`ip -j`, `bridge -j`, `nft -j`), each
/// entry as a short string so that differences read well.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostView {
    /// Routes of proto 87 on the device: `10.0.5.0/24 via 10.0.5.0 onlink`.
    pub routes: BTreeSet<String>,
    /// Permanent neighbours on the device: `10.0.5.0 lladdr aa:bb:…`.
    pub neighs: BTreeSet<String>,
    /// Every FDB entry on the device: `aa:bb:… dst 192.0.2.10 permanent`.
    pub fdb: BTreeSet<String>,
    /// Elements of the nft set `ip weft peers`.
    pub nft_peers: BTreeSet<String>,
    /// IPv4 addresses on the device (`10.0.5.0/32`).
    pub addresses: BTreeSet<String>,
    /// The device's MAC; `None` if there is no device.
    pub mac: Option<String>,
    /// `FLANNEL_SUBNET` from the host's `subnet.env`.
    pub subnet_env: Option<String>,
}

impl HostView {
    /// What a host whose lease is `own` must hold when the store's leases are `leases`: one
    /// route, neighbour, FDB entry and nft set element per other lease, nothing else.
    pub fn expected(own: &Lease, leases: &[Lease]) -> HostView {
        let peers = || leases.iter().filter(|l| l.subnet != own.subnet);
        HostView {
            routes: peers()
                .map(|l| format!("{} via {} onlink", l.subnet, l.subnet.network()))
                .collect(),
            neighs: peers()
                .map(|l| format!("{} lladdr {}", l.subnet.network(), l.vtep_mac))
                .collect(),
            fdb: peers()
                .map(|l| format!("{} dst {} permanent", l.vtep_mac, l.public_ip))
                .collect(),
            nft_peers: peers().map(|l| l.public_ip.to_string()).collect(),
            addresses: BTreeSet::from([format!("{}/32", own.subnet.network())]),
            mac: Some(own.vtep_mac.to_string()),
            subnet_env: Some(format!(
                "{}/{}",
                Ipv4Addr::from(u32::from(own.subnet.network()) + 1),
                own.subnet.prefix_len()
            )),
        }
    }

    /// Differences from `want`, one line per field that differs.
    pub fn diff(&self, want: &HostView) -> Vec<String> {
        let mut out = Vec::new();
        let sets = [
            ("routes", &self.routes, &want.routes),
            ("neighbours", &self.neighs, &want.neighs),
            ("fdb", &self.fdb, &want.fdb),
            ("nft peers", &self.nft_peers, &want.nft_peers),
            ("addresses", &self.addresses, &want.addresses),
        ];
        for (what, have, want) in sets {
            let extra: Vec<&String> = have.difference(want).collect();
            let missing: Vec<&String> = want.difference(have).collect();
            if !extra.is_empty() || !missing.is_empty() {
                out.push(format!("{what}: extra {extra:?}, missing {missing:?}"));
            }
        }
        if self.mac != want.mac {
            out.push(format!("device MAC {:?}, lease says {:?}", self.mac, want.mac));
        }
        if self.subnet_env != want.subnet_env {
            out.push(format!(
                "subnet.env FLANNEL_SUBNET {:?}, lease says {:?}",
                self.subnet_env, want.subnet_env
            ));
        }
        out
    }
}

/// The commands whose output makes a [`HostView`], run in one shell, separated by this line.
const VIEW_SEPARATOR: &str = "----weft-view----";

fn view_script() -> String {
    [
        format!("ip -j route show dev {DEVICE} proto 87"),
        format!("ip -j neigh show dev {DEVICE} nud permanent"),
        format!("bridge -j fdb show dev {DEVICE}"),
        "nft -j list set ip weft peers".to_string(),
        format!("ip -j -4 addr show dev {DEVICE}"),
        format!("cat /sys/class/net/{DEVICE}/address"),
    ]
    .iter()
    .map(|c| format!("{c} 2>/dev/null; echo {VIEW_SEPARATOR}"))
    .collect::<Vec<_>>()
    .join("; ")
}

/// A JSON array from `ip -j`/`bridge -j` (empty output, e.g. no device: empty).
fn json_array(text: &str) -> Vec<serde_json::Value> {
    serde_json::from_str::<serde_json::Value>(text.trim())
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

fn field<'a>(v: &'a serde_json::Value, key: &str) -> &'a str {
    v.get(key).and_then(|x| x.as_str()).unwrap_or("?")
}

fn has_flag(v: &serde_json::Value, key: &str, flag: &str) -> bool {
    match v.get(key) {
        Some(serde_json::Value::Array(a)) => a.iter().any(|x| x.as_str() == Some(flag)),
        Some(serde_json::Value::String(s)) => s == flag,
        _ => false,
    }
}

/// Parses the output of [`view_script`].
fn parse_view(out: &str) -> HostView {
    let parts: Vec<&str> = out.split(VIEW_SEPARATOR).collect();
    let part = |i: usize| parts.get(i).copied().unwrap_or("");
    let mut v = HostView {
        routes: json_array(part(0))
            .iter()
            .map(|r| {
                let onlink = if has_flag(r, "flags", "onlink") { " onlink" } else { "" };
                format!("{} via {}{onlink}", field(r, "dst"), field(r, "gateway"))
            })
            .collect(),
        neighs: json_array(part(1))
            .iter()
            .map(|n| format!("{} lladdr {}", field(n, "dst"), field(n, "lladdr")))
            .collect(),
        fdb: json_array(part(2))
            .iter()
            .map(|e| {
                let state = e.get("state").and_then(|s| s.as_str()).unwrap_or("");
                format!("{} dst {} {state}", field(e, "mac"), field(e, "dst"))
                    .trim_end()
                    .to_string()
            })
            .collect(),
        ..HostView::default()
    };
    if let Ok(nft) = serde_json::from_str::<serde_json::Value>(part(3).trim()) {
        let items = nft
            .get("nftables")
            .and_then(|n| n.as_array())
            .cloned()
            .unwrap_or_default();
        for item in items {
            if let Some(elems) = item.pointer("/set/elem").and_then(|e| e.as_array()) {
                v.nft_peers.extend(elems.iter().map(|e| match e.as_str() {
                    Some(s) => s.to_string(),
                    None => e.to_string(),
                }));
            }
        }
    }
    for link in json_array(part(4)) {
        for a in link.get("addr_info").and_then(|a| a.as_array()).into_iter().flatten() {
            let len = a.get("prefixlen").and_then(|l| l.as_u64()).unwrap_or(0);
            v.addresses.insert(format!("{}/{len}", field(a, "local")));
        }
    }
    let mac = part(5).trim();
    v.mac = (!mac.is_empty()).then(|| mac.to_string());
    v
}

/// The public IP of the canary lease: in rack 1's subnet, where hosts are .10 to .250 and the
/// router .1, so never a lab host's.
pub const CANARY_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);
/// The canary's VTEP MAC (locally administered, unicast).
pub const CANARY_MAC: &str = "02:00:00:00:fa:17";

impl Lab {
    /// Writes a lease for a host that does not exist ([`CANARY_IP`], [`CANARY_MAC`], on a free
    /// subnet from the top of the network down), so that every agent must program it: proof
    /// that each follows the store. Nothing is ever sent to it. Returns it; [`Lab::delete_lease_of`]
    /// takes it away again.
    pub async fn put_canary(&self) -> Result<Lease> {
        let store = self.store()?;
        let config: serde_json::Value = serde_json::from_str(&self.state.network_config).unwrap_or_default();
        let network: Ipv4Net = config
            .get("Network")
            .and_then(|n| n.as_str())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| "10.0.0.0/16".parse().expect("a network"));
        let len = config
            .get("SubnetLen")
            .and_then(|l| l.as_u64())
            .map(|l| l as u8)
            .unwrap_or(24);
        let mac: crate::mac::Mac = CANARY_MAC.parse().expect("a MAC");
        let value = crate::lease::vxlan_lease_value(CANARY_IP, 1, mac);
        let subnets: Vec<Ipv4Net> = network.subnets(len).map(|s| s.collect()).unwrap_or_default();
        for subnet in subnets.into_iter().rev().take(16) {
            let key = lease_key(&self.state.prefix, subnet);
            let created = store
                .create(&key, &value, Duration::from_secs(120))
                .await
                .map_err(LabError::store(format!("creating {key}")))?;
            if let Some(e) = created {
                return Lease::from_entry(&e).map_err(|e| LabError::Invalid {
                    lab: self.state.name.clone(),
                    reason: format!("the canary lease: {e}"),
                });
            }
        }
        Err(LabError::Invalid {
            lab: self.state.name.clone(),
            reason: format!("no free subnet for a canary lease at the top of {network}"),
        })
    }

    /// Deletes `lease` (by its subnet) from the store.
    pub async fn delete_lease_of(&self, lease: &Lease) -> Result<()> {
        let key = lease_key(&self.state.prefix, lease.subnet);
        self.store()?
            .delete(&key)
            .await
            .map_err(LabError::store(format!("deleting {key}")))?;
        Ok(())
    }

    /// Stops the lab's store until [`Lab::start_store`].
    ///
    /// etcd: every member is stopped with SIGKILL (a crash) or SIGTERM.
    ///
    /// SQLite has no server to stop. Its real outages are the database held by another process
    /// for longer than the busy timeout (5 s), in two ways, and those are what this does:
    /// - [`Outage::SqliteWedged`]: a wedged process holding the WAL-index locks in the `-shm`
    ///   file (taken here with an OFD lock): no read or write of any agent gets through, as if
    ///   the store were down. (The lock holder of `tests/operability.rs` does the same.)
    /// - [`Outage::SqliteWriteLocked`]: a long write transaction (a backup, a `sqlite3` shell, a
    ///   stuck writer), taken here by a connection of our own with `BEGIN EXCLUSIVE`, which in
    ///   WAL mode blocks writers, not readers: watches go on, every write (lease renewal,
    ///   acquisition on start, a changed VTEP MAC) fails with SQLITE_BUSY.
    ///
    /// Moving or deleting the file instead would split the store (a process opening it
    /// afterwards makes a new, empty one), and permissions do not stop root.
    pub fn stop_store(&mut self, how: Outage) -> Result<StoreOutage> {
        let Some(path) = self.state.store_url.strip_prefix("sqlite:").map(str::to_string) else {
            let sig = if how == Outage::EtcdKill {
                Signal::SIGKILL
            } else {
                Signal::SIGTERM
            };
            let members: Vec<u32> = self.etcd_members().iter().map(|m| m.index).collect();
            for i in &members {
                self.stop_etcd(*i, sig)?;
            }
            return Ok(StoreOutage::Etcd(members));
        };
        let lab = self.state.name.clone();
        let fail = |reason: String| LabError::Invalid {
            lab: lab.clone(),
            reason,
        };
        if how == Outage::SqliteWedged {
            let shm = format!("{path}-shm");
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&shm)
                .map_err(|e| fail(format!("opening {shm}: {e}")))?;
            wal_index_lock(&file, true).map_err(|e| fail(format!("locking {shm}: {e}")))?;
            return Ok(StoreOutage::SqliteWedged(file));
        }
        let err = |e: rusqlite::Error| fail(format!("locking the store {path}: {e}"));
        let conn = rusqlite::Connection::open(&path).map_err(err)?;
        // Agents' writes are short: wait for the one in flight, if any.
        conn.busy_timeout(Duration::from_secs(10)).map_err(err)?;
        conn.execute_batch("BEGIN EXCLUSIVE").map_err(err)?;
        Ok(StoreOutage::SqliteWrite(conn))
    }

    /// Ends a store outage: etcd members started again (waiting until they answer); the SQLite
    /// write lock released.
    pub fn start_store(&mut self, outage: StoreOutage) -> Result<()> {
        match outage {
            StoreOutage::Etcd(members) => {
                for i in members {
                    self.start_etcd(i)?;
                }
                Ok(())
            }
            StoreOutage::SqliteWrite(conn) => conn.execute_batch("ROLLBACK").map_err(|e| LabError::Invalid {
                lab: self.state.name.clone(),
                reason: format!("unlocking the store: {e}"),
            }),
            StoreOutage::SqliteWedged(file) => {
                let unlocked = wal_index_lock(&file, false);
                // Never closed: closing any descriptor of a file drops every POSIX lock this
                // process holds on it, those of the lab's own SQLite connection included (one
                // descriptor per outage stays open until the process ends).
                std::mem::forget(file);
                unlocked.map_err(|e| LabError::Invalid {
                    lab: self.state.name.clone(),
                    reason: format!("unlocking the store's WAL index: {e}"),
                })
            }
        }
    }

    /// Sets the host's public link down for `down` and up again, then puts its default route
    /// back (the kernel drops it with the link; the host's own network setup, not weft, restores
    /// it).
    pub fn flap_public_link(&self, host: &str, down: Duration) -> Result<()> {
        let plan = self.host(host)?.clone();
        let ns = plan.namespace.as_str();
        super::netns::ip(&["-n", ns, "link", "set", PUBLIC_IFACE, "down"])?;
        std::thread::sleep(down);
        super::netns::ip(&["-n", ns, "link", "set", PUBLIC_IFACE, "up"])?;
        let router = plan.router_ip.to_string();
        super::netns::ip(&["-n", ns, "route", "replace", "default", "via", &router])?;
        Ok(())
    }

    /// Deletes, by hand, the host's `entry` for the peer whose lease is `peer`.
    pub fn delete_peer_entry(&self, host: &str, entry: PeerEntry, peer: &Lease) -> Result<()> {
        let ns = self.namespace(host)?.to_string();
        let (subnet, gw, mac, dst) = (
            peer.subnet.to_string(),
            peer.subnet.network().to_string(),
            peer.vtep_mac.to_string(),
            peer.public_ip.to_string(),
        );
        match entry {
            PeerEntry::Route => super::netns::ip(&["-n", &ns, "route", "del", &subnet, "dev", DEVICE])?,
            PeerEntry::Neigh => super::netns::ip(&["-n", &ns, "neigh", "del", &gw, "dev", DEVICE])?,
            PeerEntry::Fdb => {
                let out = self.exec(host, &["bridge", "fdb", "del", &mac, "dev", DEVICE, "dst", &dst])?;
                if !out.status.success() {
                    return Err(LabError::Command {
                        command: format!("bridge fdb del {mac} dev {DEVICE} dst {dst} (in {ns})"),
                        status: out.status.to_string(),
                        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                    });
                }
                out
            }
        };
        Ok(())
    }

    /// Deletes the host's VXLAN device by hand.
    pub fn delete_device(&self, host: &str) -> Result<()> {
        let ns = self.namespace(host)?.to_string();
        super::netns::ip(&["-n", &ns, "link", "del", DEVICE]).map(|_| ())
    }

    /// Deletes the host's lease from the store; returns it.
    pub async fn delete_lease(&self, host: &str) -> Result<Lease> {
        let lease = self.leases().await?.remove(host).ok_or_else(|| LabError::Invalid {
            lab: self.state.name.clone(),
            reason: format!("{host} has no lease to delete"),
        })?;
        let key = lease_key(&self.state.prefix, lease.subnet);
        self.store()?
            .delete(&key)
            .await
            .map_err(LabError::store(format!("deleting {key}")))?;
        Ok(lease)
    }

    /// Every entry under the network's `subnets/` prefix, whoever wrote it. An entry that is
    /// not a valid lease is an `Err` with its key.
    pub async fn all_leases(&self) -> Result<Vec<std::result::Result<Lease, String>>> {
        let prefix = NetworkKeys::new(&self.state.prefix).subnets();
        let listing = self
            .store()?
            .list(&prefix)
            .await
            .map_err(LabError::store(format!("listing {prefix}")))?;
        Ok(listing
            .entries
            .iter()
            .map(|e| Lease::from_entry(e).map_err(|err| format!("{}: {err}", e.key)))
            .collect())
    }

    /// What the host's kernel holds for weft, and its `subnet.env`.
    pub fn host_view(&self, host: &str) -> Result<HostView> {
        let out = self.exec(host, &["sh", "-c", &view_script()])?;
        let mut view = parse_view(&String::from_utf8_lossy(&out.stdout));
        view.subnet_env = std::fs::read_to_string(self.subnet_file(host)).ok().and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("FLANNEL_SUBNET="))
                .map(|s| s.trim().to_string())
        });
        Ok(view)
    }

    /// Every way the lab differs from what the store says, one line each; empty when whole:
    /// exactly one valid lease per host and none for anything else, no two on one subnet,
    /// public IP or VTEP MAC; every agent running; on every host exactly one route, neighbour,
    /// FDB entry and nft peer per other host's lease (nothing for a lease that no longer
    /// exists), its own lease's address and MAC on the device, and its subnet in `subnet.env`.
    pub async fn violations(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let mut leases = Vec::new();
        for l in self.all_leases().await? {
            match l {
                Ok(l) => leases.push(l),
                Err(e) => out.push(format!("store: not a valid lease: {e}")),
            }
        }
        let by_ip: BTreeMap<Ipv4Addr, &str> = self
            .hosts()
            .iter()
            .map(|h| (h.plan.underlay_ip, h.plan.name.as_str()))
            .collect();
        let mut own: BTreeMap<&str, &Lease> = BTreeMap::new();
        let mut subnets: BTreeMap<Ipv4Net, usize> = BTreeMap::new();
        let mut macs: BTreeMap<String, usize> = BTreeMap::new();
        for l in &leases {
            *subnets.entry(l.subnet).or_default() += 1;
            *macs.entry(l.vtep_mac.to_string()).or_default() += 1;
            match by_ip.get(&l.public_ip) {
                Some(h) if own.contains_key(h) => out.push(format!("store: {h} holds two leases")),
                Some(h) => {
                    own.insert(h, l);
                }
                None => out.push(format!(
                    "store: lease {} of {} belongs to no live host",
                    l.subnet, l.public_ip
                )),
            }
        }
        out.extend(
            subnets
                .iter()
                .filter(|(_, n)| **n > 1)
                .map(|(s, n)| format!("store: {n} leases on {s}")),
        );
        out.extend(
            macs.iter()
                .filter(|(_, n)| **n > 1)
                .map(|(m, n)| format!("store: {n} leases with VTEP MAC {m}")),
        );
        let mut addresses: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for h in self.host_names() {
            if self.agent_pid(&h).is_none() {
                out.push(format!("{h}: agent not running"));
            }
            let view = self.host_view(&h)?;
            for a in &view.addresses {
                addresses.entry(a.clone()).or_default().push(h.clone());
            }
            match own.get(h.as_str()) {
                None => out.push(format!("store: {h} has no lease")),
                Some(l) => out.extend(
                    view.diff(&HostView::expected(l, &leases))
                        .into_iter()
                        .map(|d| format!("{h}: {d}")),
                ),
            }
        }
        out.extend(
            addresses
                .iter()
                .filter(|(_, hs)| hs.len() > 1)
                .map(|(a, hs)| format!("hosts {} all have {a} on {DEVICE}", hs.join(", "))),
        );
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(n: u32) -> Vec<String> {
        (1..=n).map(|i| format!("h{i}")).collect()
    }

    fn opts(steps: usize) -> PlanOptions {
        PlanOptions {
            steps,
            min_hosts: 3,
            store: LabStore::Sqlite,
        }
    }

    #[test]
    fn same_seed_same_plan_and_every_kind_once() {
        for seed in 0..200 {
            let p = plan(seed, &hosts(5), &opts(14));
            assert_eq!(p, plan(seed, &hosts(5), &opts(14)));
            assert_eq!(p.len(), 14);
            let has = |f: &dyn Fn(&Fault) -> bool| p.iter().any(|s| f(&s.fault));
            assert!(has(&|f| matches!(f, Fault::KillAgent { .. })), "seed {seed}");
            assert!(has(&|f| matches!(f, Fault::StoreOutage { .. })), "seed {seed}");
            assert!(has(&|f| matches!(f, Fault::RemoveHost { .. })), "seed {seed}");
            for e in [PeerEntry::Route, PeerEntry::Neigh, PeerEntry::Fdb] {
                assert!(
                    has(&|f| matches!(f, Fault::DeleteEntry { entry, .. } if *entry == e)),
                    "seed {seed}"
                );
            }
        }
        assert_ne!(plan(1, &hosts(5), &opts(14)), plan(2, &hosts(5), &opts(14)));
    }

    #[test]
    fn plans_only_touch_live_hosts_and_keep_the_floor() {
        for seed in 0..500 {
            let mut live = hosts(5);
            for step in plan(seed, &live.clone(), &opts(30)) {
                let f = &step.fault;
                for h in f.host().into_iter().chain(step.agent_down.as_deref()) {
                    assert!(live.iter().any(|l| l == h), "seed {seed}: {step} on a removed host");
                }
                if let Fault::DeleteEntry { host, peer, .. } = f {
                    assert_ne!(host, peer);
                    assert!(live.contains(peer));
                }
                if let Fault::StoreOutage { restart: Some(h), .. } = f {
                    assert!(live.contains(h));
                }
                if let (Fault::RemoveHost { host }, Some(down)) = (f, &step.agent_down) {
                    assert_ne!(host, down, "seed {seed}: {step}");
                }
                if let Fault::RemoveHost { host } = f {
                    live.retain(|h| h != host);
                }
                assert!(live.len() >= 3, "seed {seed}");
            }
        }
    }

    #[test]
    fn who_may_lose_packets() {
        let f = Fault::DeleteEntry {
            host: "h1".into(),
            peer: "h2".into(),
            entry: PeerEntry::Route,
        };
        assert!(f.may_lose("h1", "h2") && f.may_lose("h2", "h1"));
        assert!(!f.may_lose("h1", "h3") && !f.may_lose("h2", "h3"));
        let f = Fault::LinkFlap {
            host: "h1".into(),
            down: Duration::ZERO,
        };
        assert!(f.may_lose("h1", "h3") && f.may_lose("h3", "h1") && !f.may_lose("h2", "h3"));
        let f = Fault::KillAgent {
            host: "h1".into(),
            down: Duration::ZERO,
        };
        assert!(!f.may_lose("h1", "h2"));
    }

    #[test]
    fn views_parse_and_compare() {
        let out = format!(
            r#"[{{"dst":"10.0.110.0/24","gateway":"10.0.110.0","flags":["onlink"]}}]
{s}
[{{"dst":"10.0.110.0","lladdr":"2a:e6:ee:2e:8c:ce","state":["PERMANENT"]}}]
{s}
[{{"mac":"2a:e6:ee:2e:8c:ce","dst":"198.51.100.10","flags":["self"],"state":"permanent"}}]
{s}
{{"nftables": [{{"metainfo": {{"version": "1.0.6"}}}}, {{"set": {{"family": "ip", "name": "peers", "elem": ["198.51.100.10"]}}}}]}}
{s}
[{{"ifname":"flannel.1","addr_info":[{{"family":"inet","local":"10.0.137.0","prefixlen":32}}]}}]
{s}
de:3a:24:01:78:e4
{s}
"#,
            s = VIEW_SEPARATOR
        );
        let mut view = parse_view(&out);
        view.subnet_env = Some("10.0.137.1/24".into());
        let own: Lease = lease("10.0.137.0/24", "192.0.2.10", "de:3a:24:01:78:e4");
        let peer = lease("10.0.110.0/24", "198.51.100.10", "2a:e6:ee:2e:8c:ce");
        let want = HostView::expected(&own, &[own.clone(), peer.clone()]);
        assert_eq!(view.diff(&want), Vec::<String>::new(), "{view:?}");
        let gone = HostView::expected(&own, std::slice::from_ref(&own));
        assert_eq!(view.diff(&gone).len(), 4, "{:?}", view.diff(&gone));
        // No device at all: everything missing, nothing invented.
        let empty = parse_view(&format!("{s}{s}{s}{s}{s}\n{s}", s = VIEW_SEPARATOR));
        assert_eq!(empty, HostView::default());
    }

    fn lease(subnet: &str, ip: &str, mac: &str) -> Lease {
        Lease {
            subnet: subnet.parse().unwrap(),
            public_ip: ip.parse().unwrap(),
            vni: 1,
            vtep_mac: mac.parse().unwrap(),
            backend_type: "vxlan".into(),
            expires_at: None,
            revision: 1,
        }
    }
}
