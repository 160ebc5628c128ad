//! Checks shared by several fuzz targets: what must hold of a parser's result, beyond "no panic".
#![allow(dead_code)]

use weft::config::{NetworkConfig, MAX_VNI, MIN_MTU};

/// Parses a network config and, if it is accepted, checks what the rest of weft assumes of it.
pub fn check_config(text: &str) -> Option<NetworkConfig> {
    let cfg = match NetworkConfig::parse(text) {
        Ok(cfg) => cfg,
        Err(e) => {
            // The message is logged; building it must not panic either.
            let _ = e.to_string();
            return None;
        }
    };
    let net = cfg.network;
    assert_eq!(net, net.trunc(), "host bits in the network: {cfg:?}");
    assert!(net.prefix_len() <= 30, "{cfg:?}");
    assert!(
        (net.prefix_len()..=30).contains(&cfg.subnet_len),
        "SubnetLen out of range: {cfg:?}"
    );
    assert!(cfg.subnet_min <= cfg.subnet_max, "{cfg:?}");
    let mask = u32::MAX.checked_shl(32 - u32::from(cfg.subnet_len)).unwrap_or(0);
    for bound in [cfg.subnet_min, cfg.subnet_max] {
        assert!(net.contains(&bound), "{bound} outside {net}: {cfg:?}");
        assert_eq!(
            u32::from(bound) & mask,
            u32::from(bound),
            "{bound} not on a boundary: {cfg:?}"
        );
    }
    assert!(cfg.subnet_count() >= 1, "{cfg:?}");
    let b = &cfg.backend;
    assert!((1..=MAX_VNI).contains(&b.vni), "{cfg:?}");
    assert_ne!(b.port, 0, "port 0 is resolved to the default: {cfg:?}");
    if let Some(mtu) = b.mtu {
        assert!((MIN_MTU..=65535).contains(&mtu), "{cfg:?}");
    }
    // The public interface's MTU comes from the kernel: any u32, checked at its edges and at a
    // value derived from the input.
    let derived = text.len() as u32 * 7;
    for iface_mtu in [0, 1, MIN_MTU, 1500, 9000, 65535, derived, u32::MAX] {
        match cfg.device_mtu("eth0", iface_mtu) {
            Ok(mtu) => assert!(mtu >= MIN_MTU || b.mtu == Some(mtu), "{mtu} for {iface_mtu}: {cfg:?}"),
            Err(e) => {
                assert!(b.mtu.is_some_and(|m| m > iface_mtu), "{e}");
                let _ = e.to_string();
            }
        }
    }
    Some(cfg)
}
