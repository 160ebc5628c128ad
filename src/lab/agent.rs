//! Starting and stopping the per-host agent processes.
//!
//! The agent's command line is its interface, fixed:
//! `ip netns exec NS WEFT agent --store URL --iface eth0 --subnet-file FILE [extra args]` (with
//! `--etcd-endpoints LIST` in place of `--store` when the lab runs etcd), output
//! appended to the host's `agent.log`. `ip netns exec` execs the agent in place, so the pid we
//! spawn is the agent's own. Each agent gets its own process group so a Ctrl-C on `lab up` does
//! not take the lab down with it, and it outlives `lab up`.

use super::{LabError, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Extra arguments and environment for an agent (`--subnet-lease-ttl 5s`, `RUST_LOG=debug`, …).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentSpec {
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<(String, String)>,
}

impl AgentSpec {
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn env(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    /// `self` followed by `more` (per-host extras after the lab-wide ones).
    pub fn merged(&self, more: &AgentSpec) -> AgentSpec {
        AgentSpec {
            args: self.args.iter().chain(&more.args).cloned().collect(),
            env: self.env.iter().chain(&more.env).cloned().collect(),
        }
    }
}

/// The weft binary to run as agent: an explicit path, else `$WEFT_BIN`, else this executable.
pub fn weft_bin(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("WEFT_BIN") {
        return Ok(PathBuf::from(p));
    }
    std::env::current_exe().map_err(LabError::io("finding the weft binary (set WEFT_BIN)"))
}

/// The command that runs an agent: `weft-agent` next to the weft binary when it is there (what
/// hosts run: the agent without the CLI and the lab, a smaller resident agent), else `weft
/// agent`, which runs the same code. Like `weft-cni` for pods, it must come from the same build:
/// `cargo build` builds both.
pub fn agent_command(weft_bin: &Path) -> Vec<String> {
    let lean = weft_bin.with_file_name("weft-agent");
    if weft_bin.file_name() == lean.file_name() {
        vec![weft_bin.display().to_string()]
    } else if lean.is_file() {
        vec![lean.display().to_string()]
    } else {
        vec![weft_bin.display().to_string(), "agent".into()]
    }
}

/// Everything needed to start one agent.
pub struct Launch<'a> {
    pub bin: &'a Path,
    pub namespace: &'a str,
    pub store_url: &'a str,
    /// The network's store prefix, passed as `--etcd-prefix` when it is not the default.
    pub prefix: &'a str,
    pub subnet_file: &'a Path,
    pub log: &'a Path,
    pub spec: &'a AgentSpec,
}

/// The full command line, for logs and error messages.
pub fn command_line(l: &Launch) -> Vec<String> {
    let mut v: Vec<String> = vec!["ip".into(), "netns".into(), "exec".into(), l.namespace.into()];
    v.extend(agent_command(l.bin));
    match l.store_url.strip_prefix("etcd:") {
        Some(endpoints) => v.extend(["--etcd-endpoints".into(), endpoints.to_string()]),
        None => v.extend(["--store".into(), l.store_url.to_string()]),
    }
    v.extend(["--iface", "eth0", "--subnet-file"].map(String::from));
    v.push(l.subnet_file.display().to_string());
    // Each host namespace has its own loopback, so every agent can use the same address.
    v.extend(["--healthz-addr", crate::agent::status::DEFAULT_HTTP_ADDR].map(String::from));
    if l.prefix != crate::network::DEFAULT_PREFIX {
        v.extend(["--etcd-prefix".to_string(), l.prefix.to_string()]);
    }
    v.extend(l.spec.args.iter().cloned());
    v
}

pub fn spawn(l: &Launch) -> Result<Child> {
    if let Some(dir) = l.log.parent() {
        std::fs::create_dir_all(dir).map_err(LabError::io(format!("creating {}", dir.display())))?;
    }
    let open_log = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(l.log)
            .map_err(LabError::io(format!("opening {}", l.log.display())))
    };
    let argv = command_line(l);
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        // The log is a file: no colour codes (tracing honours NO_COLOR); a spec can override.
        .env("NO_COLOR", "1")
        .envs(l.spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(open_log()?)
        .stderr(open_log()?)
        .process_group(0);
    cmd.spawn()
        .map_err(LabError::io(format!("starting `{}`", argv.join(" "))))
}

/// True if `pid` is a live process (not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state letter follows the parenthesised command name, which may contain spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
            .unwrap_or(false),
        Err(_) => false,
    }
}

pub fn signal(pid: u32, sig: Signal) -> Result<()> {
    let p = i32::try_from(pid).map_err(|_| LabError::Sys {
        context: format!("pid {pid}"),
        source: nix::Error::EINVAL,
    })?;
    match kill(Pid::from_raw(p), sig) {
        Ok(()) | Err(nix::Error::ESRCH) => Ok(()),
        Err(e) => Err(LabError::Sys {
            context: format!("sending {sig} to pid {pid}"),
            source: e,
        }),
    }
}

/// Waits (bounded) for a process to go away: reaps it if it is our child, else polls /proc.
pub fn wait_exit(pid: u32, child: Option<&mut Child>, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut child = child;
    loop {
        let gone = match child.as_deref_mut() {
            Some(c) => !matches!(c.try_wait(), Ok(None)),
            None => !alive(pid),
        };
        if gone {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Stops an agent: `first` (usually SIGTERM), then SIGKILL if it has not gone after `grace`.
pub fn stop(pid: u32, mut child: Option<&mut Child>, first: Signal, grace: Duration) -> Result<()> {
    signal(pid, first)?;
    if wait_exit(pid, child.as_deref_mut(), grace) {
        return Ok(());
    }
    signal(pid, Signal::SIGKILL)?;
    wait_exit(pid, child, Duration::from_secs(5));
    Ok(())
}

/// Resident memory (`VmRSS`) of process `pid` in KB; 0 if it cannot be read.
pub fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_run_weft_agent_when_it_sits_next_to_weft_else_weft_agent_subcommand() {
        let dir = std::env::temp_dir().join(format!("weft-agent-cmd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let weft = dir.join("weft");
        let s = |p: &Path| p.display().to_string();
        assert_eq!(agent_command(&weft), vec![s(&weft), "agent".into()]);
        std::fs::write(dir.join("weft-agent"), b"").unwrap();
        assert_eq!(agent_command(&weft), vec![s(&dir.join("weft-agent"))]);
        // $WEFT_BIN may name the agent binary itself.
        assert_eq!(agent_command(&dir.join("weft-agent")), vec![s(&dir.join("weft-agent"))]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
