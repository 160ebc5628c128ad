//! etcd inside the lab (`weft lab up --store etcd [--etcd-members 1|3]`): Debian's `etcd`
//! server, one process per member, all in the router namespace.
//!
//! Member *i* listens on `192.0.2.(1+i)` (clients on :2379, peers on :2380), a /32 on the
//! router's `lo`: inside rack 1's documentation subnet, below the host addresses (.10 and up), so
//! every host reaches it through the router like any other underlay address, and killing one
//! member's process is losing one member. Data and logs live in the lab's state directory
//! (`etcdI/`, `etcdI.log`); `lab down` kills them with everything else in the namespaces.

use super::topology::router_ns;
use super::{agent, netns, LabError, Result};
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long members get to elect a leader and answer, at `up` and after a restart.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// One etcd member as `lab.json` records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdMember {
    /// 1, 2, 3
    pub index: u32,
    pub ip: Ipv4Addr,
    pub pid: Option<u32>,
}

impl EtcdMember {
    pub fn client_url(&self) -> String {
        format!("http://{}:2379", self.ip)
    }

    fn peer_url(&self) -> String {
        format!("http://{}:2380", self.ip)
    }
}

/// The members of a lab with `count` of them.
pub fn plan(count: u32) -> Vec<EtcdMember> {
    (1..=count)
        .map(|i| EtcdMember {
            index: i,
            ip: Ipv4Addr::new(192, 0, 2, 1 + i as u8),
            pid: None,
        })
        .collect()
}

/// `etcd:http://192.0.2.2:2379,…`: the lab's store address.
pub fn store_url(members: &[EtcdMember]) -> String {
    let eps: Vec<String> = members.iter().map(EtcdMember::client_url).collect();
    format!("etcd:{}", eps.join(","))
}

fn member_name(lab: &str, index: u32) -> String {
    format!("{lab}-etcd{index}")
}

pub fn data_dir(dir: &Path, index: u32) -> PathBuf {
    dir.join(format!("etcd{index}"))
}

pub fn log_file(dir: &Path, index: u32) -> PathBuf {
    dir.join(format!("etcd{index}.log"))
}

/// Puts the members' addresses on the router's `lo`.
pub fn add_addresses(lab: &str, members: &[EtcdMember]) -> Result<()> {
    let script: String = members
        .iter()
        .map(|m| format!("addr add {}/32 dev lo\n", m.ip))
        .collect();
    netns::batch(Some(&router_ns(lab)), false, &script)
}

/// Starts member `m` (first start bootstraps the cluster of `all`; later starts reuse the data).
pub fn spawn(lab: &str, dir: &Path, m: &EtcdMember, all: &[EtcdMember]) -> Result<Child> {
    let log_path = log_file(dir, m.index);
    let open_log = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(LabError::io(format!("opening {}", log_path.display())))
    };
    let cluster: Vec<String> = all
        .iter()
        .map(|o| format!("{}={}", member_name(lab, o.index), o.peer_url()))
        .collect();
    let data = data_dir(dir, m.index);
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        &router_ns(lab),
        "etcd",
        "--name",
        &member_name(lab, m.index),
    ])
    .arg("--data-dir")
    .arg(&data)
    .args(["--listen-client-urls", &m.client_url()])
    .args(["--advertise-client-urls", &m.client_url()])
    .args(["--listen-peer-urls", &m.peer_url()])
    .args(["--initial-advertise-peer-urls", &m.peer_url()])
    .args(["--initial-cluster", &cluster.join(",")])
    .args(["--initial-cluster-token", &format!("{lab}-lab")])
    .args(["--initial-cluster-state", "new"])
    .stdin(Stdio::null())
    .stdout(open_log()?)
    .stderr(open_log()?)
    // Like the agents: its own process group, so a Ctrl-C on `lab up` leaves it running.
    .process_group(0);
    cmd.spawn().map_err(LabError::io(format!(
        "starting etcd member {} (package etcd-server)",
        m.index
    )))
}

/// Runs `etcdctl` (v3 API) in the router namespace against `endpoints`.
pub fn etcdctl(lab: &str, endpoints: &str, args: &[&str]) -> Result<std::process::Output> {
    Command::new("ip")
        .args(["netns", "exec", &router_ns(lab), "etcdctl", "--endpoints", endpoints])
        .args(["--command-timeout", "3s"])
        .args(args)
        .env("ETCDCTL_API", "3")
        .stdin(Stdio::null())
        .output()
        .map_err(LabError::io(format!("running etcdctl {}", args.join(" "))))
}

/// Waits until every member in `members` answers a health check.
pub fn wait_ready(lab: &str, dir: &Path, members: &[EtcdMember]) -> Result<()> {
    let eps: Vec<String> = members.iter().map(EtcdMember::client_url).collect();
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let out = etcdctl(lab, &eps.join(","), &["endpoint", "health"])?;
        if out.status.success() {
            return Ok(());
        }
        if let Some(m) = members.iter().find(|m| m.pid.is_some_and(|p| !agent::alive(p))) {
            return Err(LabError::Invalid {
                lab: lab.to_string(),
                reason: format!(
                    "etcd member {} exited; last lines of its log:\n{}",
                    m.index,
                    super::state::tail(&log_file(dir, m.index), 20)
                ),
            });
        }
        if Instant::now() >= deadline {
            return Err(LabError::Timeout {
                what: "etcd to answer".into(),
                after: READY_TIMEOUT,
                detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_and_url() {
        let m = plan(3);
        assert_eq!(m[0].ip, Ipv4Addr::new(192, 0, 2, 2));
        assert_eq!(m[2].ip, Ipv4Addr::new(192, 0, 2, 4));
        assert_eq!(
            store_url(&m),
            "etcd:http://192.0.2.2:2379,http://192.0.2.3:2379,http://192.0.2.4:2379"
        );
        assert_eq!(member_name("weft", 2), "weft-etcd2");
    }
}
