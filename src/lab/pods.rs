//! Pods: namespaces `NAME-hI-pJ` wired to their host by the `weft-cni` plugin, exactly as a
//! container runtime would call it.
//!
//! The plugin creates the bridge `cni0` in the namespace it runs in, so it always runs inside the
//! host's namespace (`ip netns exec NAME-hI weft-cni`), never in the root namespace. Its files —
//! the saved delegate configs and host-local's address leases — live in the host's directory of
//! the lab state dir, so `down` removes them with everything else.

use super::topology::HostPlan;
use super::{LabError, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Debian's containernetworking-plugins (`bridge`, `host-local`); `$WEFT_CNI_PATH` overrides.
pub const DEFAULT_CNI_PATH: &str = "/usr/lib/cni";

/// One pod as `lab.json` records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodInfo {
    /// `NAME-hI-pJ`.
    pub namespace: String,
    /// The pod's address on its `eth0`, from the CNI result.
    pub ip: Ipv4Addr,
}

/// The plugin binary: `$WEFT_CNI_BIN`, else `weft-cni` next to the weft binary (cargo builds
/// both into the same `target/<profile>/`).
pub fn cni_bin(weft_bin: &Path) -> PathBuf {
    if let Some(p) = std::env::var_os("WEFT_CNI_BIN") {
        return PathBuf::from(p);
    }
    weft_bin.with_file_name("weft-cni")
}

fn cni_path() -> String {
    std::env::var("WEFT_CNI_PATH").unwrap_or_else(|_| DEFAULT_CNI_PATH.to_string())
}

/// The network config the lab hands the plugin for a host (`host_dir` is the host's state
/// directory, holding its `subnet.env`).
///
/// `ipMasq: false` always: masquerading is the agent's job (`--ip-masq`). Without it the bridge
/// plugin would masquerade by itself (through iptables) whenever the agent does not, and a lab
/// without `--ip-masq` could not show that pods then do not reach the outside.
pub fn netconf(lab: &str, host_dir: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": format!("{lab}-pods"),
        "type": "weft-cni",
        "subnetFile": host_dir.join("subnet.env"),
        "dataDir": host_dir.join("cni"),
        "delegate": {
            "isDefaultGateway": true,
            "hairpinMode": true,
            "ipMasq": false,
            "ipam": { "dataDir": host_dir.join("ipam") },
        },
    })
}

/// The first IPv4 address of a CNI result (`ips[].address`, `10.0.37.2/24`).
pub fn result_ip(result: &Value) -> Option<Ipv4Addr> {
    result["ips"]
        .as_array()?
        .iter()
        .filter_map(|ip| ip["address"].as_str())
        .find_map(|a| a.split('/').next()?.parse().ok())
}

/// Runs `weft-cni` `ADD` for pod namespace `pod_ns` (which must exist) inside the host's
/// namespace; returns the pod's address.
pub fn add(lab: &str, cni: &Path, host: &HostPlan, host_dir: &Path, pod_ns: &str) -> Result<Ipv4Addr> {
    let conf = netconf(lab, host_dir).to_string();
    let command = format!(
        "ip netns exec {} {} (CNI_COMMAND=ADD, pod {pod_ns})",
        host.namespace,
        cni.display()
    );
    let mut child = Command::new("ip")
        .args(["netns", "exec", &host.namespace])
        .arg(cni)
        // Only what a runtime passes: no stray CNI_* from our own environment.
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", pod_ns)
        .env("CNI_NETNS", format!("/run/netns/{pod_ns}"))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", cni_path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(LabError::io(format!("running `{command}`")))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A write error means the plugin died early; its output says why.
        let _ = stdin.write_all(conf.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(LabError::io(format!("waiting for `{command}`")))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let fail = |why: String| LabError::Command {
        command: command.clone(),
        status: out.status.to_string(),
        stderr: why,
    };
    if !out.status.success() {
        // CNI errors are JSON on stdout.
        return Err(fail(format!(
            "{} {}",
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let result: Value =
        serde_json::from_str(&stdout).map_err(|e| fail(format!("result is not JSON ({e}): {stdout}")))?;
    result_ip(&result).ok_or_else(|| fail(format!("no IPv4 address in the result: {stdout}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_points_at_the_hosts_files() {
        let c = netconf("weft", Path::new("/run/weft/lab/weft/h2"));
        assert_eq!(c["type"], "weft-cni");
        assert_eq!(c["subnetFile"], "/run/weft/lab/weft/h2/subnet.env");
        assert_eq!(c["dataDir"], "/run/weft/lab/weft/h2/cni");
        assert_eq!(c["delegate"]["ipam"]["dataDir"], "/run/weft/lab/weft/h2/ipam");
        assert_eq!(c["delegate"]["ipMasq"], false);
    }

    #[test]
    fn address_from_the_result() {
        let r = json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.37.2/24", "gateway": "10.0.37.1"}]});
        assert_eq!(result_ip(&r), Some(Ipv4Addr::new(10, 0, 37, 2)));
        assert_eq!(result_ip(&json!({"ips": [{"address": "fd00::2/64"}]})), None);
        assert_eq!(result_ip(&json!({})), None);
    }

    #[test]
    fn plugin_next_to_weft() {
        if std::env::var_os("WEFT_CNI_BIN").is_none() {
            assert_eq!(
                cni_bin(Path::new("/x/target/debug/weft")),
                PathBuf::from("/x/target/debug/weft-cni")
            );
        }
    }
}
