//! The VXLAN device `flannel.<VNI>`: reused as is when compatible (its MAC too, so a restart
//! changes nothing a peer sees), created when missing, recreated when incompatible.

use crate::kernel::{Kernel, KernelError, LinkInfo, VxlanSpec};
use ipnet::Ipv4Net;
use std::net::IpAddr;
use tracing::{info, warn};

/// Why an existing device cannot be reused; `None` when it can.
pub fn incompatibility(have: &LinkInfo, want: &VxlanSpec) -> Option<String> {
    if have.kind.as_deref() != Some("vxlan") {
        return Some(format!(
            "it is a {} device, not vxlan",
            have.kind.as_deref().unwrap_or("unknown")
        ));
    }
    let Some(v) = &have.vxlan else {
        return Some("its VXLAN attributes cannot be read".into());
    };
    if v.vni != want.vni {
        return Some(format!("VNI {} instead of {}", v.vni, want.vni));
    }
    if v.local != Some(want.local) {
        return Some(format!("local {:?} instead of {}", v.local, want.local));
    }
    if v.link.is_some_and(|l| l != want.link) {
        return Some(format!("underlay device index {:?} instead of {}", v.link, want.link));
    }
    if v.port != want.port {
        return Some(format!("port {} instead of {}", v.port, want.port));
    }
    if v.learning != want.learning {
        return Some(format!("learning {} instead of {}", v.learning, want.learning));
    }
    if v.gbp != want.gbp {
        return Some(format!("gbp {} instead of {}", v.gbp, want.gbp));
    }
    None
}

/// Makes the device exist as `spec` says, up, with the right MTU. Returns it.
pub async fn ensure_device(kernel: &Kernel, spec: &VxlanSpec) -> Result<LinkInfo, KernelError> {
    let mut link = match kernel.link_by_name(&spec.name).await? {
        Some(have) => match incompatibility(&have, spec) {
            None => have,
            Some(why) => {
                warn!(device = %spec.name, reason = %why, "existing device is incompatible; recreating it");
                kernel.delete_link(have.index).await?;
                create(kernel, spec).await?
            }
        },
        None => create(kernel, spec).await?,
    };
    if link.mtu != spec.mtu {
        info!(device = %spec.name, from = link.mtu, to = spec.mtu, "kernel: set device MTU");
        kernel.set_mtu(link.index, spec.mtu).await?;
        link.mtu = spec.mtu;
    }
    if !link.up {
        info!(device = %spec.name, "kernel: set device up");
        kernel.set_up(link.index).await?;
        link.up = true;
    }
    Ok(link)
}

async fn create(kernel: &Kernel, spec: &VxlanSpec) -> Result<LinkInfo, KernelError> {
    let link = kernel
        .create_vxlan(spec)
        .await
        .map_err(|e| explain_create_error(e, spec))?;
    info!(
        device = %spec.name, vni = spec.vni, local = %spec.local, port = spec.port, mtu = spec.mtu,
        mac = ?link.mac, "kernel: created VXLAN device"
    );
    Ok(link)
}

/// We only create the device after finding no link of its name, so "File exists" means the
/// kernel's other uniqueness rule: one VXLAN device per VNI and port. Say so, or the operator is
/// left looking for a `flannel.1` that is not there (e.g. after it was renamed).
fn explain_create_error(e: KernelError, spec: &VxlanSpec) -> KernelError {
    match e {
        KernelError::Netlink {
            op,
            object,
            message,
            errno,
        } if errno == libc::EEXIST => KernelError::Netlink {
            op,
            object,
            message: format!(
                "{message}: another VXLAN device already uses VNI {} on port {} \
                 (find it with `ip -d link show type vxlan`)",
                spec.vni,
                if spec.port == 0 { 8472 } else { spec.port }
            ),
            errno,
        },
        e => e,
    }
}

/// Gives the device exactly one IPv4 address, `<subnet network address>/32` (flannel's).
pub async fn ensure_address(kernel: &Kernel, link: &LinkInfo, subnet: Ipv4Net) -> Result<(), KernelError> {
    let want = Ipv4Net::new(subnet.network(), 32).unwrap_or(subnet);
    let mut present = false;
    for (_, ip, len) in kernel.addresses(Some(link.index)).await? {
        let IpAddr::V4(v4) = ip else { continue };
        if v4 == want.addr() && len == 32 {
            present = true;
        } else if let Ok(old) = Ipv4Net::new(v4, len) {
            info!(device = %link.name, address = %old, "kernel: remove stale device address");
            kernel.remove_address(link.index, old).await?;
        }
    }
    if !present {
        info!(device = %link.name, address = %want, "kernel: add device address");
        kernel.ensure_address(link.index, want).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::VxlanInfo;

    fn spec() -> VxlanSpec {
        VxlanSpec {
            name: "flannel.1".into(),
            vni: 1,
            local: "192.0.2.10".parse().unwrap(),
            link: 2,
            port: 8472,
            mtu: 1450,
            learning: false,
            gbp: false,
        }
    }

    fn have() -> LinkInfo {
        LinkInfo {
            index: 5,
            name: "flannel.1".into(),
            mtu: 1400,
            mac: None,
            up: false,
            running: false,
            master: None,
            kind: Some("vxlan".into()),
            vxlan: Some(VxlanInfo {
                vni: 1,
                local: Some("192.0.2.10".parse().unwrap()),
                link: Some(2),
                port: 8472,
                learning: false,
                gbp: false,
            }),
        }
    }

    #[test]
    fn compatible_device_is_reused_whatever_its_mtu_and_state() {
        assert_eq!(incompatibility(&have(), &spec()), None);
    }

    #[test]
    fn incompatible_devices_say_why() {
        let mut h = have();
        h.vxlan.as_mut().unwrap().vni = 2;
        assert_eq!(incompatibility(&h, &spec()).unwrap(), "VNI 2 instead of 1");
        let mut h = have();
        h.vxlan.as_mut().unwrap().local = Some("192.0.2.99".parse().unwrap());
        assert!(incompatibility(&h, &spec()).unwrap().contains("local"));
        let mut h = have();
        h.vxlan.as_mut().unwrap().port = 4789;
        assert!(incompatibility(&h, &spec()).unwrap().contains("port"));
        let mut h = have();
        h.vxlan.as_mut().unwrap().learning = true;
        assert!(incompatibility(&h, &spec()).unwrap().contains("learning"));
        let mut h = have();
        h.kind = Some("bridge".into());
        assert!(incompatibility(&h, &spec()).unwrap().contains("bridge"));
    }
}
