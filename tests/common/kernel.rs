//! Reading a lab host's kernel state the way an operator would: with `ip` and `bridge`.

use std::time::{Duration, Instant};
use weft::lab::Lab;

/// Runs a command in a host's namespace and returns its stdout (panics if it fails).
pub fn sh(lab: &Lab, host: &str, argv: &[&str]) -> String {
    let out = lab.exec(host, argv).unwrap_or_else(|e| panic!("{host}: {argv:?}: {e}"));
    assert!(
        out.status.success(),
        "{host}: {argv:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ip route` lines through flannel.1.
pub fn routes(lab: &Lab, host: &str) -> Vec<String> {
    lines(&sh(lab, host, &["ip", "route", "show", "dev", "flannel.1"]))
}

/// `ip neigh` lines on flannel.1.
pub fn neighs(lab: &Lab, host: &str) -> Vec<String> {
    lines(&sh(lab, host, &["ip", "neigh", "show", "dev", "flannel.1"]))
}

/// `bridge fdb` lines on flannel.1.
pub fn fdbs(lab: &Lab, host: &str) -> Vec<String> {
    lines(&sh(lab, host, &["bridge", "fdb", "show", "dev", "flannel.1"]))
}

/// The device's MAC address.
pub fn device_mac(lab: &Lab, host: &str) -> String {
    let out = sh(lab, host, &["cat", "/sys/class/net/flannel.1/address"]);
    out.trim().to_string()
}

/// Every entry weft keeps on `host`, one string each, sorted: for comparing before and after.
pub fn entries(lab: &Lab, host: &str) -> Vec<String> {
    let mut all = routes(lab, host);
    all.extend(neighs(lab, host));
    all.extend(fdbs(lab, host));
    all.sort();
    all
}

fn lines(s: &str) -> Vec<String> {
    s.lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The agent's log so far.
pub fn agent_log(lab: &Lab, host: &str) -> String {
    std::fs::read_to_string(lab.agent_log(host)).unwrap_or_default()
}
