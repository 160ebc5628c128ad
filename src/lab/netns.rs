//! Namespaces and veths, through the `ip` command.
//!
//! Setup is batched (`ip -batch -`: one process per namespace, not one per command) and host
//! namespaces are configured concurrently, so a 50-host lab takes well under a second to wire.
//! Every command that touches a link runs with `ip -n NS`: nothing is configured in the root
//! namespace (the only root-namespace commands are `netns add/del`, which manage the namespace
//! handles in /run/netns).

use super::topology::{router_ns, HostPlan};
use super::{LabError, Result};
use std::io::Write;
use std::process::{Command, Output, Stdio};

/// How many `ip` processes run at once while configuring hosts (the machine may have 2 cores and
/// other work).
const PARALLEL: usize = 8;

fn describe(args: &[&str]) -> String {
    format!("ip {}", args.join(" "))
}

fn check(command: String, out: Output) -> Result<Output> {
    if out.status.success() {
        Ok(out)
    } else {
        Err(LabError::Command {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Runs `ip ARGS`, failing with its stderr.
pub fn ip(args: &[&str]) -> Result<Output> {
    let command = describe(args);
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(LabError::io(format!("running `{command}`")))?;
    check(command, out)
}

/// Starts `ip [-n NS] [-force] -batch -` fed with `script`; wait with [`finish`].
fn spawn_batch(ns: Option<&str>, force: bool, script: &str) -> Result<(String, std::process::Child)> {
    let mut args: Vec<&str> = Vec::new();
    if let Some(ns) = ns {
        args.extend(["-n", ns]);
    }
    if force {
        args.push("-force");
    }
    args.extend(["-batch", "-"]);
    let command = describe(&args);
    let mut child = Command::new("ip")
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(LabError::io(format!("running `{command}`")))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A write error means ip died early; its exit status and stderr say why.
        let _ = stdin.write_all(script.as_bytes());
    }
    Ok((command, child))
}

fn finish(command: String, child: std::process::Child) -> Result<()> {
    let out = child
        .wait_with_output()
        .map_err(LabError::io(format!("waiting for `{command}`")))?;
    check(command, out).map(drop)
}

/// Runs an `ip -batch` script, in namespace `ns` if given. Without `force` it stops at the first
/// failing line.
pub fn batch(ns: Option<&str>, force: bool, script: &str) -> Result<()> {
    let (command, child) = spawn_batch(ns, force, script)?;
    finish(command, child)
}

/// Every namespace in /run/netns.
pub fn list() -> Result<Vec<String>> {
    let out = ip(&["netns", "list"])?;
    // Lines look like `weft-h1 (id: 3)` or just `weft-h1`.
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

pub fn add_namespaces(names: &[String]) -> Result<()> {
    let script: String = names.iter().map(|n| format!("netns add {n}\n")).collect();
    batch(None, false, &script)
}

/// Deletes namespaces, carrying on past ones that are already gone.
pub fn delete_namespaces(names: &[String]) -> Result<()> {
    if names.is_empty() {
        return Ok(());
    }
    let script: String = names.iter().map(|n| format!("netns del {n}\n")).collect();
    batch(None, true, &script)
}

/// Pids of the processes in namespace `ns` (`ip netns pids`).
pub fn pids(ns: &str) -> Result<Vec<i32>> {
    let out = ip(&["netns", "pids", ns])?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}

/// The router's side of the given hosts: one veth per host, created inside the router namespace
/// with its peer (`eth0`) placed directly in the host namespace, the router's `.1` on it.
///
/// With several hosts per rack (later) the router's address moves to a per-rack bridge and the
/// veths become its ports; only this function and [`host_script`] need to change.
pub fn router_script(hosts: &[HostPlan]) -> String {
    let mut s = String::new();
    for h in hosts {
        let port = &h.namespace;
        s += &format!("link add {port} type veth peer name eth0 netns {}\n", h.namespace);
        s += &format!("addr add {}/{} dev {port}\n", h.router_ip, h.rack_subnet.prefix_len());
        s += &format!("link set {port} up\n");
    }
    s
}

/// A host namespace's own configuration: `lo` and `eth0` up, the underlay address, the default
/// route via the router.
pub fn host_script(h: &HostPlan) -> String {
    format!(
        "link set lo up\naddr add {}/{} dev eth0\nlink set eth0 up\nroute add default via {}\n",
        h.underlay_ip,
        h.rack_subnet.prefix_len(),
        h.router_ip
    )
}

/// Creates the router namespace: `lo` up and IP forwarding on.
pub fn create_router(lab: &str) -> Result<()> {
    let ns = router_ns(lab);
    add_namespaces(std::slice::from_ref(&ns))?;
    batch(Some(&ns), false, "link set lo up\n")?;
    // ip_forward is per namespace; `ip netns exec` fails rather than falling back to the root
    // namespace if the namespace is missing.
    let out = Command::new("ip")
        .args(["netns", "exec", &ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
        .stdin(Stdio::null())
        .output()
        .map_err(LabError::io(format!("enabling forwarding in {ns}")))?;
    check(format!("ip netns exec {ns} sysctl -qw net.ipv4.ip_forward=1"), out).map(drop)
}

/// Creates and wires host namespaces (the router must exist).
pub fn create_hosts(lab: &str, hosts: &[HostPlan]) -> Result<()> {
    if hosts.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = hosts.iter().map(|h| h.namespace.clone()).collect();
    add_namespaces(&names)?;
    batch(Some(&router_ns(lab)), false, &router_script(hosts))?;
    for chunk in hosts.chunks(PARALLEL) {
        let running: Vec<_> = chunk
            .iter()
            .map(|h| spawn_batch(Some(&h.namespace), false, &host_script(h)))
            .collect::<Result<_>>()?;
        // Wait for all of the chunk before reporting the first error, so no `ip` is left behind.
        let results: Vec<Result<()>> = running.into_iter().map(|(c, child)| finish(c, child)).collect();
        results.into_iter().collect::<Result<()>>()?;
    }
    Ok(())
}

/// Runs a command inside a namespace (`ip netns exec NS ARGV…`) and returns its output, whatever
/// its exit status.
pub fn exec(ns: &str, argv: &[&str]) -> Result<Output> {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(argv)
        .stdin(Stdio::null())
        .output()
        .map_err(LabError::io(format!("running `ip netns exec {ns} {}`", argv.join(" "))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::topology::host_plan;

    #[test]
    fn scripts() {
        let h = host_plan("weft", 2).unwrap();
        assert_eq!(
            router_script(std::slice::from_ref(&h)),
            "link add weft-h2 type veth peer name eth0 netns weft-h2\n\
             addr add 198.51.100.1/24 dev weft-h2\n\
             link set weft-h2 up\n"
        );
        assert_eq!(
            host_script(&h),
            "link set lo up\naddr add 198.51.100.10/24 dev eth0\nlink set eth0 up\nroute add default via 198.51.100.1\n"
        );
    }
}
