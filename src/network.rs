//! Networks: what an agent serves. The default network lives at flannel's keys
//! (`<prefix>/config`, `<prefix>/subnets/…`); named networks (later) get their own prefix, VNI and
//! device, so everything that names a key or a device goes through this type.

use crate::config::NetworkConfig;

pub const DEFAULT_PREFIX: &str = "/coreos.com/network";

/// How hosts share the network: `L3` is flannel's (one routed subnet per host); `L2` (later) is
/// one flat subnet across hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    #[default]
    L3,
    L2,
}

/// Where a network's keys live in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkKeys {
    /// Store prefix without a trailing slash, e.g. `/coreos.com/network`.
    pub prefix: String,
}

impl NetworkKeys {
    pub fn new(prefix: &str) -> NetworkKeys {
        let p = prefix.trim_end_matches('/');
        NetworkKeys {
            prefix: if p.is_empty() { String::new() } else { p.to_string() },
        }
    }

    pub fn config(&self) -> String {
        format!("{}/config", self.prefix)
    }

    /// Prefix of every lease key, with the trailing slash.
    pub fn subnets(&self) -> String {
        format!("{}/subnets/", self.prefix)
    }
}

/// A network an agent serves: its name, where it is stored, and its validated config.
#[derive(Debug, Clone, PartialEq)]
pub struct Network {
    pub name: String,
    pub keys: NetworkKeys,
    pub mode: Mode,
    pub config: NetworkConfig,
}

impl Network {
    /// flannel's device name, `flannel.<VNI>`.
    pub fn device_name(&self) -> String {
        device_name(self.config.backend.vni)
    }
}

pub fn device_name(vni: u32) -> String {
    format!("flannel.{vni}")
}
