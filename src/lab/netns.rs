//! Namespaces and veths, through the `ip` command.
//!
//! Setup is batched (`ip -batch -`: one process per namespace, not one per command) and host
//! namespaces are configured concurrently, so a 50-host lab takes well under a second to wire.
//! Every command that touches a link runs with `ip -n NS`: nothing is configured in the root
//! namespace (the only root-namespace commands are `netns add/del`, which manage the namespace
//! handles in /run/netns).

use super::topology::{self, router_ns, HostPlan};
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
/// with its peer (`eth0`) placed directly in the host namespace.
///
/// Unbridged (one host per rack), the router's `.1` sits on the veth itself. Bridged (several
/// hosts per rack), each rack has a bridge `LAB-rR` carrying the `.1`, made with the rack's
/// first host (slot 0: indexes are never reused, so slot 0 always comes first), and the veths
/// are its ports: hosts of one rack then share a link, as servers behind one switch do.
pub fn router_script(lab: &str, hosts: &[HostPlan], bridged: bool) -> String {
    let mut s = String::new();
    for h in hosts {
        let port = &h.namespace;
        s += &format!("link add {port} type veth peer name eth0 netns {}\n", h.namespace);
        let addr_dev = if bridged {
            let br = topology::rack_bridge(lab, h.rack);
            if h.slot == 0 {
                s += &format!("link add {br} type bridge\nlink set {br} up\n");
                s += &format!("addr add {}/{} dev {br}\n", h.router_ip, h.rack_subnet.prefix_len());
            }
            s += &format!("link set {port} master {br}\n");
            None
        } else {
            Some(port)
        };
        if let Some(dev) = addr_dev {
            s += &format!("addr add {}/{} dev {dev}\n", h.router_ip, h.rack_subnet.prefix_len());
        }
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

/// Creates and wires host namespaces (the router must exist); `bridged` as in [`router_script`].
pub fn create_hosts(lab: &str, hosts: &[HostPlan], bridged: bool) -> Result<()> {
    if hosts.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = hosts.iter().map(|h| h.namespace.clone()).collect();
    add_namespaces(&names)?;
    batch(Some(&router_ns(lab)), false, &router_script(lab, hosts, bridged))?;
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

/// The underlay ranges the outside namespace routes back through the router: every range a
/// rack can use, and nothing else — in particular no route to the overlay, so a pod's packet
/// reaches the outside but its answer only finds the way back if the pod's host masqueraded it.
pub const UNDERLAY_RANGES: [&str; 4] = ["192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "198.18.0.0/15"];

/// `NAME-outside`'s own configuration (its `eth0` is the peer of the router's `NAME-out`).
pub fn outside_script() -> String {
    let net = topology::outside_subnet();
    let (ip, gw) = (topology::host_ip(net, 0), topology::router_ip(net));
    let mut s = format!(
        "link set lo up\naddr add {ip}/{} dev eth0\nlink set eth0 up\n",
        net.prefix_len()
    );
    for r in UNDERLAY_RANGES {
        s += &format!("route add {r} via {gw}\n");
    }
    s
}

/// Creates `NAME-outside` beyond the router (the router must exist); returns its address.
pub fn create_outside(lab: &str) -> Result<std::net::Ipv4Addr> {
    let (ns, port, net) = (
        topology::outside_ns(lab),
        topology::outside_port(lab),
        topology::outside_subnet(),
    );
    add_namespaces(std::slice::from_ref(&ns))?;
    let router = format!(
        "link add {port} type veth peer name eth0 netns {ns}\naddr add {}/{} dev {port}\nlink set {port} up\n",
        topology::router_ip(net),
        net.prefix_len()
    );
    batch(Some(&router_ns(lab)), false, &router)?;
    batch(Some(&ns), false, &outside_script())?;
    Ok(topology::host_ip(net, 0))
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
            router_script("weft", std::slice::from_ref(&h), false),
            "link add weft-h2 type veth peer name eth0 netns weft-h2\n\
             addr add 198.51.100.1/24 dev weft-h2\n\
             link set weft-h2 up\n"
        );
        assert_eq!(
            host_script(&h),
            "link set lo up\naddr add 198.51.100.10/24 dev eth0\nlink set eth0 up\nroute add default via 198.51.100.1\n"
        );
    }

    #[test]
    fn bridged_racks() {
        use crate::lab::topology::host_plan_sized;
        let hosts: Vec<_> = (1..=3).map(|i| host_plan_sized("weft", i, 2).unwrap()).collect();
        assert_eq!(
            router_script("weft", &hosts, true),
            "link add weft-h1 type veth peer name eth0 netns weft-h1\n\
             link add weft-r1 type bridge\nlink set weft-r1 up\n\
             addr add 192.0.2.1/24 dev weft-r1\n\
             link set weft-h1 master weft-r1\nlink set weft-h1 up\n\
             link add weft-h2 type veth peer name eth0 netns weft-h2\n\
             link set weft-h2 master weft-r1\nlink set weft-h2 up\n\
             link add weft-h3 type veth peer name eth0 netns weft-h3\n\
             link add weft-r2 type bridge\nlink set weft-r2 up\n\
             addr add 198.51.100.1/24 dev weft-r2\n\
             link set weft-h3 master weft-r2\nlink set weft-h3 up\n"
        );
        assert_eq!(
            host_script(&hosts[1]).lines().nth(1),
            Some("addr add 192.0.2.11/24 dev eth0")
        );
    }

    #[test]
    fn outside_routes_back_only_to_the_underlay() {
        let s = outside_script();
        assert!(s.contains("addr add 198.19.255.10/24 dev eth0"), "{s}");
        assert!(s.contains("route add 198.18.0.0/15 via 198.19.255.1"), "{s}");
        assert!(!s.contains("10.0.") && !s.contains("default"), "{s}");
    }
}
