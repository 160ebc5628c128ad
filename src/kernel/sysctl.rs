//! Per-device sysctls, through `/proc/sys/net`, which shows the network namespace of the process
//! that opens it (the agent's).

use super::KernelError;
use std::io::ErrorKind;

/// Turns IPv6 off on device `dev` (`net.ipv6.conf.DEV.disable_ipv6 = 1`): no link-local
/// address, so the host sends no MLD reports or router solicitations into a tenant's L2 network
/// and cannot be reached from it over IPv6. Ok(true) if it changed; Ok(false) if it was off
/// already or the kernel has no IPv6.
pub fn disable_ipv6(dev: &str) -> Result<bool, KernelError> {
    if dev.is_empty() || dev.contains('/') || dev.starts_with('.') {
        return Err(sysctl_err(dev, "not a device name".into()));
    }
    let path = format!("/proc/sys/net/ipv6/conf/{dev}/disable_ipv6");
    match std::fs::read_to_string(&path) {
        Ok(v) if v.trim() == "1" => Ok(false),
        Ok(_) => std::fs::write(&path, "1")
            .map(|()| true)
            .map_err(|e| sysctl_err(dev, format!("writing {path}: {e}"))),
        // No IPv6 in this kernel (or the device just went away): nothing to turn off.
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(sysctl_err(dev, format!("reading {path}: {e}"))),
    }
}

fn sysctl_err(dev: &str, message: String) -> KernelError {
    KernelError::Sysctl {
        dev: dev.into(),
        message,
    }
}
