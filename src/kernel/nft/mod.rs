//! weft's nftables table: masquerade (`--ip-masq`), VXLAN accepted only from current peers,
//! and a named network's boundary. Forwarding is left to the host's own policy: unlike
//! flannel's FLANNEL-FWD (rules inside iptables' FORWARD chain), an accept in a table of ours
//! could not override a drop elsewhere.
//!
//! Everything of one network lives in one table that weft owns entirely: `ip weft` for the
//! default network, `ip weft-NAME` for a named one (which also isolates its device: nothing
//! enters or leaves the tenant through the host). An L2 network's table only polices VXLAN of
//! its VNI (see [`FirewallSpec::l2`]). Nothing outside these tables is read or
//! written; each agent only ever touches its network's table. [`ensure`] compares the table in the kernel with the one [`render`]ed from a
//! [`FirewallSpec`] and, only if they differ, rewrites it in one atomic `nft` transaction (a
//! change of peers alone only swaps the set's elements). Call it on every reconcile: a rule
//! changed by hand is back within one resync. [`remove`] is for `weft agent --cleanup`.
//!
//! ```no_run
//! use weft::kernel::nft::{self, FirewallSpec};
//! # fn main() -> Result<(), weft::kernel::KernelError> {
//! let spec = FirewallSpec {
//!     table: nft::TABLE.into(),
//!     vxlan_port: 8472,
//!     peers: ["198.51.100.10".parse().unwrap()].into(),
//!     filter_vxlan: true,
//!     vni: None,
//!     exempt_vnis: Default::default(),
//!     l3: Some(nft::L3Spec {
//!         network: "10.0.0.0/16".parse().unwrap(),
//!         own_subnet: "10.0.37.0/24".parse().unwrap(),
//!         ip_masq: true,
//!         isolate: None,
//!     }),
//! };
//! let applied = nft::ensure(&spec)?; // every reconcile; cheap when nothing changed
//! if applied == nft::Applied::Rewritten {
//!     tracing::warn!("nft table ip weft differed from the desired one: repaired");
//! }
//! let dropped = nft::dropped_vxlan_packets(nft::TABLE)?; // for /metrics
//! nft::remove(nft::TABLE)?; // --cleanup
//! # let _ = dropped; Ok(()) }
//! ```
//!
//! How it coexists with other rulesets (iptables-nft, firewalld, kube-proxy): every table's
//! base chains on a hook run, ordered by priority. Our chains use the standard priorities and
//! policy accept, and only ever `return`, `masquerade`, or drop non-peer VXLAN and a named
//! network's boundary crossings. (An `accept` would end evaluation in *our* chain only: a
//! `drop` in another table still drops the packet.) A masquerade here, or in another table's
//! chain of the same hook, is final for the connection (NAT is decided on its first packet by
//! the first NAT rule that matches).
//!
//! All functions are blocking (they run the `nft` binary, a few milliseconds; peer set updates
//! go over nfnetlink, see `setelem`) and act in the network namespace of the *calling thread*,
//! which the `nft` child and the netlink socket inherit.

mod batch;
mod compare;
mod render;
mod setelem;
#[cfg(test)]
pub(crate) mod testns;
#[cfg(test)]
pub(crate) mod tests;

pub use batch::{run_batch, NftOutcome, NftRequest};
pub use render::render;

use super::KernelError;
use ipnet::Ipv4Net;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

/// The default network's table (family `ip`): `nft list table ip weft`.
pub const TABLE: &str = crate::network::DEFAULT_NFT_TABLE;
const CHAIN_POSTROUTING: &str = "postrouting";
const CHAIN_FORWARD: &str = "forward";
const CHAIN_INPUT: &str = "input";
/// The set of peers' public IPs allowed to send VXLAN.
pub const SET_PEERS: &str = "peers";
/// The named counter of VXLAN datagrams dropped because they did not come from a peer.
pub const COUNTER_VXLAN_DROPPED: &str = "vxlan_dropped";
/// The named counter of packets dropped for crossing a named network's boundary.
pub const COUNTER_ISOLATION_DROPPED: &str = "isolation_dropped";

/// What one of weft's tables should contain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallSpec {
    /// The table's name: [`TABLE`] for the default network, `weft-NAME` for a named one.
    pub table: String,
    /// The VXLAN UDP port (8472 unless configured).
    pub vxlan_port: u16,
    /// Public IPs of the current peers (from the leases, or an L2 network's hosts with
    /// endpoints). Kept in the `peers` set whether or not the filter is on, so it can be
    /// inspected.
    pub peers: BTreeSet<Ipv4Addr>,
    /// Drop (and count) VXLAN on `vxlan_port` from anything not in `peers`. With no peers,
    /// all VXLAN is dropped. Peers behind NAT must appear with the address their packets
    /// arrive from, which is their lease's `PublicIP` in flannel's model.
    pub filter_vxlan: bool,
    /// The filter looks at VXLAN datagrams of this VNI only (`@th,96,24`, the VNI field after
    /// the UDP header): a named network's table polices its own VNI. `None`: every VXLAN
    /// datagram on the port (the default network's table) except those of `exempt_vnis`.
    pub vni: Option<u32>,
    /// VNIs left to their own networks' tables (the named networks served on this host), so
    /// the default network's table never drops a tenant's traffic from a host that is the
    /// tenant's peer but not the default network's.
    pub exempt_vnis: BTreeSet<u32>,
    /// An L3 network's routed traffic: masquerade, isolation. `None` for an L2
    /// network, whose table only polices VXLAN (its traffic is bridged, never routed here).
    pub l3: Option<L3Spec>,
}

/// The parts of a table only an L3 network has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L3Spec {
    /// The overlay (`Network` of the config), e.g. 10.0.0.0/16.
    pub network: Ipv4Net,
    /// This host's lease, e.g. 10.0.37.0/24.
    pub own_subnet: Ipv4Net,
    /// `--ip-masq`: flannel's masquerade rules. Without it no NAT chain exists at all.
    pub ip_masq: bool,
    /// A named network's device: drop (and count) what would cross the network's boundary on
    /// this host — arriving on the device for an address not on it, forwarded from the device
    /// elsewhere or from elsewhere to it, or arriving elsewhere for `own_subnet`.
    pub isolate: Option<String>,
}

impl FirewallSpec {
    /// An L2 network's table `table`: VXLAN of `vni` on `vxlan_port` only from `peers` (the
    /// network's other hosts with endpoints) when `filter_vxlan`; nothing else.
    pub fn l2(table: &str, vni: u32, vxlan_port: u16, peers: BTreeSet<Ipv4Addr>, filter_vxlan: bool) -> FirewallSpec {
        FirewallSpec {
            table: table.into(),
            vxlan_port,
            peers,
            filter_vxlan,
            vni: Some(vni),
            exempt_vnis: BTreeSet::new(),
            l3: None,
        }
    }

    /// The named device this table isolates, if any.
    pub fn isolated_device(&self) -> Option<&str> {
        self.l3.as_ref()?.isolate.as_deref()
    }

    /// This spec with its L3 parts changed by `f` (tests).
    #[cfg(test)]
    pub(crate) fn with_l3(mut self, f: impl FnOnce(&mut L3Spec)) -> FirewallSpec {
        if let Some(l3) = self.l3.as_mut() {
            f(l3);
        }
        self
    }
}

/// What [`ensure`] had to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The table was as wanted; nothing was written.
    Unchanged,
    /// There was no table; it was created.
    Created,
    /// Only the peers set's elements differed; they were replaced (one transaction).
    PeersUpdated,
    /// The table differed (spec changed, or a hand edit): rewritten whole, atomically. The
    /// dropped-VXLAN counter keeps its value. If the spec did not change, log "repaired".
    Rewritten,
}

impl Applied {
    pub fn changed(self) -> bool {
        self != Applied::Unchanged
    }
}

/// Makes the kernel's table `spec.table` match `spec`, writing only if it differs.
pub fn ensure(spec: &FirewallSpec) -> Result<Applied, KernelError> {
    match one(NftRequest::Ensure(spec.clone()))? {
        NftOutcome::Ensured { applied, .. } => Ok(applied),
        other => Err(nft_err("ensure table", format!("unexpected outcome {other:?}"))),
    }
}

/// Adds and removes elements of the peers set in one transaction, without reading the table:
/// the fast path for a peer joining or leaving (a few netlink syscalls, or one `nft` run if
/// they fail, instead of a list, a compare and a write). Fails if the table or an element to
/// remove is missing; the caller then falls back to [`ensure`].
pub fn update_peers(table: &str, added: &[Ipv4Addr], removed: &[Ipv4Addr]) -> Result<(), KernelError> {
    one(NftRequest::UpdatePeers {
        table: table.into(),
        added: added.to_vec(),
        removed: removed.to_vec(),
    })
    .map(drop)
}

/// Deletes table `table`. Ok(false) if there was none.
pub fn remove(table: &str) -> Result<bool, KernelError> {
    Ok(one(NftRequest::Remove(table.into()))? == NftOutcome::Removed(true))
}

fn one(request: NftRequest) -> Result<NftOutcome, KernelError> {
    run_batch(std::slice::from_ref(&request))
        .pop()
        .unwrap_or_else(|| Err(nft_err("batch", "no result")))
}

/// The commands that add and remove elements of `table`'s peers set.
fn peer_commands(table: &str, added: &[Ipv4Addr], removed: &[Ipv4Addr]) -> Vec<Value> {
    let set = json!({"family": "ip", "table": table, "name": SET_PEERS});
    let mut cmds = Vec::new();
    let mut with = |verb: &str, ips: &[Ipv4Addr]| {
        if !ips.is_empty() {
            let mut element = set.clone();
            element["elem"] = json!(ips.iter().map(Ipv4Addr::to_string).collect::<Vec<_>>());
            cmds.push(json!({ verb: {"element": element} }));
        }
    };
    with("delete", removed);
    with("add", added);
    cmds
}

/// The names of every `ip` family table (weft's and anybody else's).
pub fn tables() -> Result<Vec<String>, KernelError> {
    let out = nft("list tables", &["-j", "list", "tables", "ip"], None)?;
    let v = parse("list tables", &out)?;
    Ok(objects(&v)
        .iter()
        .filter_map(|o| o.get("table")?.get("name")?.as_str().map(String::from))
        .collect())
}

/// Packets counted by table `table`'s VXLAN filter since it was created (0 if there is no
/// table).
pub fn dropped_vxlan_packets(table: &str) -> Result<u64, KernelError> {
    counter_packets(table, COUNTER_VXLAN_DROPPED)
}

/// Packets counted by a named counter of `table` (0 if there is no such table or counter).
pub fn counter_packets(table: &str, counter: &str) -> Result<u64, KernelError> {
    let args = ["-j", "list", "counter", "ip", table, counter];
    let Some(out) = nft_allow_missing("list counter", &args)? else {
        return Ok(0);
    };
    let v: Value = parse("list counter", &out)?;
    let packets = objects(&v)
        .iter()
        .find_map(|o| o.get("counter")?.get("packets")?.as_u64());
    packets.ok_or_else(|| nft_err("list counter", format!("no packet count in {out}")))
}

/// The table's objects as listed, None if there is no table.
fn list_table(table: &str) -> Result<Option<Vec<Value>>, KernelError> {
    let Some(out) = nft_allow_missing("list table", &["-j", "list", "table", "ip", table])? else {
        return Ok(None);
    };
    let v = parse("list table", &out)?;
    Ok(Some(objects(&v).to_vec()))
}

/// Replaces the peers set's elements in one transaction.
fn peers_update(table: &str, peers: &BTreeSet<Ipv4Addr>) -> Value {
    let set = json!({"family": "ip", "table": table, "name": SET_PEERS});
    let mut cmds = vec![json!({"flush": {"set": set}})];
    if !peers.is_empty() {
        let elem: Vec<String> = peers.iter().map(Ipv4Addr::to_string).collect();
        let mut element = set.clone();
        element["elem"] = json!(elem);
        cmds.push(json!({"add": {"element": element}}));
    }
    json!({ "nftables": cmds })
}

/// Sets the rendered counter's initial values to the old counter's, so a rewrite does not
/// reset the metric (a counter object accepts initial values on input).
fn carry_counter(batch: &mut Value, old: &Value) {
    let Some(cmds) = batch.get_mut("nftables").and_then(Value::as_array_mut) else {
        return;
    };
    for cmd in cmds {
        if let Some(c) = cmd.pointer_mut("/add/counter").and_then(Value::as_object_mut) {
            if c.get("name") == old.get("name") {
                for key in ["packets", "bytes"] {
                    if let Some(n) = old.get(key) {
                        c.insert(key.into(), n.clone());
                    }
                }
            }
        }
    }
}

fn to_value<T: serde::Serialize>(x: &T) -> Value {
    serde_json::to_value(x).expect("nftables types serialize")
}

fn objects(v: &Value) -> &[Value] {
    v.get("nftables").and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

fn parse(op: &'static str, out: &str) -> Result<Value, KernelError> {
    serde_json::from_str(out).map_err(|e| nft_err(op, format!("unreadable JSON from nft: {e}")))
}

fn nft_err(op: &'static str, message: impl Into<String>) -> KernelError {
    KernelError::Nft {
        op,
        message: message.into(),
    }
}

/// Applies commands with `nft -j -f -` (one transaction); none is a no-op.
fn apply_commands(op: &'static str, commands: Vec<Value>) -> Result<(), KernelError> {
    if commands.is_empty() {
        return Ok(());
    }
    let input = json!({ "nftables": commands }).to_string();
    nft(op, &["-j", "-f", "-"], Some(&input)).map(drop)
}

/// Runs nft; Ok(None) when it ran and failed because the object does not exist.
fn nft_allow_missing(op: &'static str, args: &[&str]) -> Result<Option<String>, KernelError> {
    let out = run_nft(op, args, None)?;
    if out.status.success() {
        return Ok(Some(out.stdout));
    }
    if out.stderr.contains("No such file or directory") {
        return Ok(None);
    }
    Err(failed(op, &out))
}

/// Runs `nft ARGS` (stdin from `input`), returning stdout; failures carry nft's stderr.
fn nft(op: &'static str, args: &[&str], input: Option<&str>) -> Result<String, KernelError> {
    let out = run_nft(op, args, input)?;
    if !out.status.success() {
        return Err(failed(op, &out));
    }
    Ok(out.stdout)
}

struct NftOutput {
    status: std::process::ExitStatus,
    stdout: String,
    stderr: String,
}

fn failed(op: &'static str, out: &NftOutput) -> KernelError {
    nft_err(op, format!("nft {}: {}", out.status, out.stderr.trim()))
}

/// Spawns nft; only failing to run it at all is an error here.
fn run_nft(op: &'static str, args: &[&str], input: Option<&str>) -> Result<NftOutput, KernelError> {
    let mut child = Command::new("nft")
        .args(args)
        // Error texts are matched ("No such file or directory"): keep them untranslated.
        .env("LC_ALL", "C")
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| nft_err(op, format!("cannot run nft: {e}")))?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        // A write error means nft exited early; its stderr says why.
        let _ = stdin.write_all(input.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| nft_err(op, format!("waiting for nft: {e}")))?;
    Ok(NftOutput {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}
