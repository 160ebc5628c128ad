//! `weft lab`: a many-host overlay built out of network namespaces on one machine.
//!
//! A router namespace `NAME-router` (IP forwarding on) joins one rack subnet per host; each host
//! namespace `NAME-hI` has `eth0` in its rack and a default route via the router, and runs one
//! `weft agent` against a shared SQLite store. Nothing is ever created or configured in the root
//! namespace: veths are created inside the router namespace with their peer moved straight into
//! the host namespace.
//!
//! - [`topology`]: the addressing plan (pure).
//! - [`netns`]: namespaces and veths, through the `ip` command.
//! - [`etcd`]: etcd members in the router namespace (`--store etcd`); [`nsstore`]: the lab's
//!   own handle on that store, connecting from inside the namespace.
//! - [`state`]: the state directory and `lab.json`, so `status`/`down` work from another process
//!   and after a crash.
//! - [`agent`]: starting and stopping agent processes.
//! - [`probe`]: an in-process ICMP pinger that works from inside any namespace.
//! - [`faults`]: seeded fault plans, the faults themselves and the invariants checked after them.
//! - [`pods`]: pod namespaces wired by the `weft-cni` plugin, run inside their host's namespace.
//! - [`endpoints`]: L2 endpoints, namespaces `NAME-eN` with a veth on a host's bridge, and
//!   their moves from one host to another; `weft lab endpoint add|delete` makes and removes them
//!   with their address claimed and registered (`cluster_endpoints`).
//! - [`cluster`]: [`Lab`], the API the CLI and the integration tests use, and [`LabGuard`]
//!   (its pod half in `cluster_pods`).

pub mod agent;
pub mod check;
pub mod cluster;
mod cluster_endpoints;
mod cluster_pods;
pub mod endpoints;
pub mod etcd;
pub mod faults;
pub mod netns;
pub mod nsstore;
pub mod pods;
pub mod probe;
pub mod state;
pub mod topology;

pub use agent::{rss_kb, AgentSpec};
pub use check::{CheckReport, PodProbe, ProbeKind};
pub use cluster::{down, AddedHost, HostStatus, Lab, LabGuard, LabOptions, LabStore};
pub use pods::PodInfo;
pub use probe::{PingStats, Pinger};

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong in the lab, each with enough context to act on.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("weft lab needs root (it creates network namespaces); run it with sudo")]
    NotRoot,
    #[error("invalid lab name {0:?}: use 1 to 8 characters from a-z and 0-9")]
    BadName(String),
    #[error("lab {name:?} already exists ({what}); run `weft lab down --name {name}` first")]
    Exists { name: String, what: String },
    #[error("lab {0:?} is not running (no {dir}); start it with `weft lab up --name {0}`", dir = state::lab_dir(.0).display())]
    NotFound(String),
    #[error("lab {lab:?} has no host {host:?}")]
    NoSuchHost { lab: String, host: String },
    #[error("lab {lab:?}: {reason}")]
    Invalid { lab: String, reason: String },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{context}: {source}")]
    Sys {
        context: String,
        #[source]
        source: nix::Error,
    },
    #[error("{context}: {source}")]
    Store {
        context: String,
        #[source]
        source: crate::store::StoreError,
    },
    #[error("{path}: {source}")]
    State {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("agent on {host} exited; last lines of {log}:\n{tail}")]
    AgentExited { host: String, log: PathBuf, tail: String },
    #[error("agent on {host} is already running (pid {pid})")]
    AgentRunning { host: String, pid: u32 },
    #[error("timed out after {after:?} waiting for {what}: {detail}")]
    Timeout {
        what: String,
        after: Duration,
        detail: String,
    },
}

impl LabError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> LabError {
        let context = context.into();
        move |source| LabError::Io { context, source }
    }

    pub(crate) fn sys(context: impl Into<String>) -> impl FnOnce(nix::Error) -> LabError {
        let context = context.into();
        move |source| LabError::Sys { context, source }
    }

    pub(crate) fn store(context: impl Into<String>) -> impl FnOnce(crate::store::StoreError) -> LabError {
        let context = context.into();
        move |source| LabError::Store { context, source }
    }
}

pub type Result<T, E = LabError> = std::result::Result<T, E>;

/// Lab names end up in namespace and link names (`NAME-h12` must fit the kernel's 15 characters),
/// so they are short and plain: `[a-z0-9]{1,8}`.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = (1..=8).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(LabError::BadName(name.to_string()))
    }
}

/// Namespaces can only be made by root (CAP_SYS_ADMIN); say so up front rather than failing
/// half-way with an `ip` error.
pub fn require_root() -> Result<()> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(LabError::NotRoot)
    }
}

/// A fresh, unlikely-to-collide lab name for tests: `t` + 5 hex digits.
pub fn random_name() -> String {
    format!("t{:05x}", rand::random::<u32>() & 0xf_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["weft", "a", "t0a1b2", "abcdefgh", "12345678"] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "abcdefghi", "Weft", "we-ft", "we ft", "wé", "a/b", "../x"] {
            assert!(matches!(validate_name(bad), Err(LabError::BadName(_))), "{bad}");
        }
        for _ in 0..100 {
            assert!(validate_name(&random_name()).is_ok());
        }
    }
}
