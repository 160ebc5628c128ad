//! The lab's state directory, `/run/weft/lab/NAME/`: `lab.json` (what the lab made), `store.db`
//! (the SQLite store the agents share), and per host `hI/agent.log` and `hI/subnet.env`.
//!
//! `lab.json` is written before anything is created and after every change, so `status`, `down`
//! and friends work from another process and after `lab up` crashed or was killed.

use super::agent::AgentSpec;
use super::pods::PodInfo;
use super::topology::HostPlan;
use super::{LabError, Result};
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// Parent of every lab's state directory (tmpfs: a reboot forgets labs, as it forgets namespaces).
pub const STATE_ROOT: &str = "/run/weft/lab";

pub fn lab_dir(name: &str) -> PathBuf {
    Path::new(STATE_ROOT).join(name)
}

/// What `lab.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabState {
    pub name: String,
    /// `sqlite:/run/weft/lab/NAME/store.db`.
    pub store_url: String,
    /// Store prefix of the network, `/coreos.com/network` by default.
    pub prefix: String,
    /// The network config JSON written at `<prefix>/config`.
    pub network_config: String,
    /// Whether hosts run agents (a bare topology has none).
    pub agents: bool,
    /// Extra agent arguments and environment, for every host (also hosts added later).
    #[serde(default)]
    pub agent: AgentSpec,
    /// Index of the next host `add` creates; indexes are never reused, so a removed host's logs
    /// and rack are never confused with a new one's.
    pub next_index: u32,
    /// Hosts per rack (1: a rack each; more: racks are bridges in the router).
    #[serde(default = "one")]
    pub rack_size: u32,
    /// Pods per host (hosts added later get as many).
    #[serde(default)]
    pub pods_per_host: u32,
    /// Whether hosts added later run their agent with `--ip-masq`.
    #[serde(default)]
    pub ip_masq: bool,
    /// `NAME-outside`'s address, if the lab made it.
    #[serde(default)]
    pub outside: Option<Ipv4Addr>,
    pub hosts: Vec<HostState>,
    /// etcd members in the router namespace; empty when the store is the SQLite file.
    #[serde(default)]
    pub etcd: Vec<super::etcd::EtcdMember>,
    /// L2 endpoints made by `weft lab endpoint add` (namespaces `NAME-eN`).
    #[serde(default)]
    pub endpoints: Vec<EndpointState>,
}

/// One endpoint made by `weft lab endpoint add`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointState {
    /// `N` of its namespace `NAME-eN`.
    pub n: u32,
    /// The L2 network it is registered in.
    pub network: String,
    /// The host whose bridge it is plugged into.
    pub host: String,
    pub mac: crate::mac::Mac,
    pub ip: Ipv4Addr,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostState {
    #[serde(flatten)]
    pub plan: HostPlan,
    /// Pid of the host's agent, if one was started.
    pub agent_pid: Option<u32>,
    /// The agent runs (and restarts) with `--ip-masq`.
    #[serde(default)]
    pub ip_masq: bool,
    /// Pods wired so far (a pod made by a crashed `up` but not recorded is still found by name).
    #[serde(default)]
    pub pods: Vec<PodInfo>,
}

impl HostState {
    pub fn new(plan: HostPlan, ip_masq: bool) -> HostState {
        HostState {
            plan,
            agent_pid: None,
            ip_masq,
            pods: Vec::new(),
        }
    }
}

impl LabState {
    pub fn host(&self, name: &str) -> Option<&HostState> {
        self.hosts.iter().find(|h| h.plan.name == name)
    }

    pub fn host_mut(&mut self, name: &str) -> Option<&mut HostState> {
        self.hosts.iter_mut().find(|h| h.plan.name == name)
    }

    /// Reads `dir/lab.json`.
    pub fn load(dir: &Path) -> Result<LabState> {
        let path = dir.join("lab.json");
        let text = std::fs::read_to_string(&path).map_err(LabError::io(format!("reading {}", path.display())))?;
        serde_json::from_str(&text).map_err(|source| LabError::State { path, source })
    }

    /// Writes `dir/lab.json` atomically (temporary file + rename): a crash mid-write never leaves
    /// a half file that would stop `down` from cleaning up.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join("lab.json");
        let tmp = dir.join("lab.json.tmp");
        let text = serde_json::to_string_pretty(self).map_err(|source| LabError::State {
            path: path.clone(),
            source,
        })?;
        std::fs::write(&tmp, text + "\n").map_err(LabError::io(format!("writing {}", tmp.display())))?;
        std::fs::rename(&tmp, &path).map_err(LabError::io(format!(
            "renaming {} to {}",
            tmp.display(),
            path.display()
        )))
    }
}

/// The lab's own bpffs mount, `DIR/bpf`: each host's agent pins its VXLAN peer filter in
/// `DIR/bpf/HOST` (as a real host's would in `/sys/fs/bpf/weft`).
pub fn bpffs_dir(dir: &Path) -> PathBuf {
    dir.join("bpf")
}

/// Mounts the lab's bpffs. A failure is only logged: the agents then filter in nft.
pub fn mount_bpffs(dir: &Path) {
    let at = bpffs_dir(dir);
    let mounted = std::fs::create_dir_all(&at).map_err(|e| e.to_string()).and_then(|()| {
        nix::mount::mount(
            Some("bpf"),
            &at,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| e.to_string())
    });
    if let Err(e) = mounted {
        tracing::warn!(path = %at.display(), error = %e, "cannot mount a bpffs for the lab; agents filter VXLAN in nft");
    }
}

/// Unmounts the lab's bpffs (its pins go with it), if it is mounted.
pub fn unmount_bpffs(dir: &Path) {
    let at = bpffs_dir(dir);
    while crate::kernel::bpf::is_bpffs(&at) && at.exists() {
        if nix::mount::umount2(&at, nix::mount::MntFlags::MNT_DETACH).is_err() {
            break;
        }
    }
}

/// Per-host files.
pub fn host_dir(dir: &Path, host: &str) -> PathBuf {
    dir.join(host)
}

pub fn agent_log(dir: &Path, host: &str) -> PathBuf {
    host_dir(dir, host).join("agent.log")
}

pub fn subnet_file(dir: &Path, host: &str) -> PathBuf {
    host_dir(dir, host).join("subnet.env")
}

pub fn store_url(dir: &Path) -> String {
    format!("sqlite:{}", dir.join("store.db").display())
}

/// The last `lines` lines of a file, for error messages about a dead agent.
pub fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read: {e})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::topology::host_plan;

    #[test]
    fn lab_json_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let state = LabState {
            name: "weft".into(),
            store_url: store_url(dir.path()),
            prefix: "/coreos.com/network".into(),
            network_config: r#"{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan"}}"#.into(),
            agents: true,
            agent: AgentSpec {
                args: vec!["--subnet-lease-ttl".into(), "5s".into()],
                env: vec![("RUST_LOG".into(), "debug".into())],
            },
            next_index: 3,
            rack_size: 1,
            pods_per_host: 1,
            ip_masq: true,
            outside: Some(Ipv4Addr::new(198, 19, 255, 10)),
            hosts: vec![
                HostState {
                    agent_pid: Some(1234),
                    pods: vec![PodInfo {
                        namespace: "weft-h1-p1".into(),
                        ip: Ipv4Addr::new(10, 0, 5, 2),
                    }],
                    ..HostState::new(host_plan("weft", 1).unwrap(), true)
                },
                HostState::new(host_plan("weft", 2).unwrap(), false),
            ],
            etcd: Vec::new(),
            endpoints: vec![EndpointState {
                n: 1,
                network: "l2".into(),
                host: "h1".into(),
                mac: "02:00:00:00:00:01".parse().unwrap(),
                ip: Ipv4Addr::new(10, 70, 0, 1),
            }],
        };
        state.save(dir.path()).unwrap();
        let back = LabState::load(dir.path()).unwrap();
        assert_eq!(back, state);
        // Flat, readable host entries: what `jq` users would look for.
        let raw: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("lab.json")).unwrap()).unwrap();
        assert_eq!(raw["hosts"][0]["underlay_ip"], "192.0.2.10");
        assert_eq!(raw["hosts"][0]["namespace"], "weft-h1");
        assert_eq!(raw["hosts"][0]["agent_pid"], 1234);
        assert!(!dir.path().join("lab.json.tmp").exists());
    }

    #[test]
    fn load_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("lab.json"), "{").unwrap();
        let err = LabState::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("lab.json"), "{err}");
    }
}
