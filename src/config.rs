//! The network config at `<prefix>/config`: flannel's JSON, parsed and validated.
//!
//! ```json
//! {"Network":"10.0.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan","VNI":1}}
//! ```
//! Defaults follow flannel: `SubnetLen` 24 for a /22 or larger network (else one bit longer than
//! the network), `SubnetMin` the second subnet, `SubnetMax` the last, VNI 1, port 8472. Every
//! error names the field and the value, so an operator can fix the config from the log line.

use ipnet::Ipv4Net;
use serde_json::{Map, Value};
use std::fmt;
use std::net::Ipv4Addr;

/// The kernel's default VXLAN port, used by flannel (Linux predates the IANA port 4789).
pub const DEFAULT_VXLAN_PORT: u16 = 8472;
/// VXLAN over IPv4 adds 50 bytes: outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8.
pub const VXLAN_OVERHEAD: u32 = 50;
/// The smallest MTU every IPv4 host must accept (RFC 791).
pub const MIN_MTU: u32 = 576;
pub const MAX_VNI: u32 = (1 << 24) - 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanBackend {
    pub vni: u32,
    /// UDP port; 0 in the JSON means the kernel default, stored here already resolved.
    pub port: u16,
    /// MTU of the VXLAN device; `None`: the public interface's MTU minus 50.
    pub mtu: Option<u32>,
    pub gbp: bool,
    pub learning: bool,
    pub direct_routing: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    pub network: Ipv4Net,
    pub subnet_len: u8,
    pub subnet_min: Ipv4Addr,
    pub subnet_max: Ipv4Addr,
    pub backend: VxlanBackend,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("network config is not valid JSON: {0}")]
    NotJson(String),
    #[error("network config must be a JSON object")]
    NotObject,
    #[error("network config: {field} is missing")]
    Missing { field: &'static str },
    #[error("network config: {field} = {value}: {reason}")]
    Invalid {
        field: &'static str,
        value: String,
        reason: String,
    },
}

fn invalid(field: &'static str, value: impl fmt::Display, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// Largest config we will even try to parse: a hostile store entry must not cost memory.
pub const MAX_CONFIG_BYTES: usize = 64 * 1024;

impl NetworkConfig {
    /// Parses and validates flannel's JSON. Fields weft does not use are ignored, as flannel does.
    pub fn parse(text: &str) -> Result<NetworkConfig, ConfigError> {
        if text.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError::NotJson(format!(
                "{} bytes is more than {MAX_CONFIG_BYTES}",
                text.len()
            )));
        }
        let value: Value = serde_json::from_str(text).map_err(|e| ConfigError::NotJson(e.to_string()))?;
        let obj = value.as_object().ok_or(ConfigError::NotObject)?;

        if get_bool(obj, "EnableIPv4", "EnableIPv4")? == Some(false) {
            return Err(invalid("EnableIPv4", false, "weft needs IPv4 enabled"));
        }
        if get_bool(obj, "EnableIPv6", "EnableIPv6")? == Some(true) {
            return Err(invalid("EnableIPv6", true, "IPv6 overlays are not supported yet"));
        }

        let network_text = get_str(obj, "Network", "Network")?.ok_or(ConfigError::Missing { field: "Network" })?;
        let network: Ipv4Net = network_text
            .parse()
            .map_err(|_| invalid("Network", quoted(network_text), "not an IPv4 CIDR like 10.0.0.0/16"))?;
        if network.network() != network.addr() {
            return Err(invalid(
                "Network",
                quoted(network_text),
                format!("host bits set; did you mean {}?", network.trunc()),
            ));
        }
        if network.prefix_len() > 30 {
            return Err(invalid(
                "Network",
                quoted(network_text),
                "too small: a network must be /30 or larger",
            ));
        }

        let subnet_len = match get_uint(obj, "SubnetLen", "SubnetLen")? {
            None | Some(0) if network.prefix_len() <= 22 => 24,
            None | Some(0) => (network.prefix_len() + 1).min(30),
            Some(n) if n < u64::from(network.prefix_len()) || n > 30 => {
                return Err(invalid(
                    "SubnetLen",
                    n,
                    format!("must be between the network's /{} and /30", network.prefix_len()),
                ))
            }
            Some(n) => n as u8,
        };
        let size = 1u32 << (32 - subnet_len);
        let first = u32::from(network.network());
        let last_subnet = u32::from(network.broadcast()) - (size - 1);
        let mask = !(size - 1);

        let bound = |field: &'static str, default: u32| -> Result<Ipv4Addr, ConfigError> {
            let Some(text) = get_str(obj, field, field)? else {
                return Ok(Ipv4Addr::from(default));
            };
            let ip: Ipv4Addr = text
                .parse()
                .map_err(|_| invalid(field, quoted(text), "not an IPv4 address"))?;
            if !network.contains(&ip) {
                return Err(invalid(field, quoted(text), format!("outside Network {network}")));
            }
            if u32::from(ip) & mask != u32::from(ip) {
                return Err(invalid(field, quoted(text), format!("not on a /{subnet_len} boundary")));
            }
            Ok(ip)
        };
        // flannel skips the first subnet: its .0 address would be the network's own address.
        let default_min = if last_subnet > first { first + size } else { first };
        let subnet_min = bound("SubnetMin", default_min)?;
        let subnet_max = bound("SubnetMax", last_subnet)?;
        if subnet_min > subnet_max {
            return Err(invalid(
                "SubnetMin",
                subnet_min,
                format!("greater than SubnetMax {subnet_max}"),
            ));
        }

        let backend = parse_backend(obj.get("Backend"))?;
        Ok(NetworkConfig {
            network,
            subnet_len,
            subnet_min,
            subnet_max,
            backend,
        })
    }

    /// Number of subnets hosts can lease (SubnetMin..=SubnetMax).
    pub fn subnet_count(&self) -> u64 {
        let size = 1u64 << (32 - self.subnet_len);
        (u64::from(u32::from(self.subnet_max)) - u64::from(u32::from(self.subnet_min))) / size + 1
    }

    /// The VXLAN device MTU for a public interface of MTU `iface_mtu`, or why the configured one
    /// cannot be used there.
    pub fn device_mtu(&self, iface: &str, iface_mtu: u32) -> Result<u32, ConfigError> {
        match self.backend.mtu {
            None => Ok(iface_mtu.saturating_sub(VXLAN_OVERHEAD).max(MIN_MTU)),
            Some(mtu) if mtu > iface_mtu => Err(invalid(
                "Backend.MTU",
                mtu,
                format!("above the MTU {iface_mtu} of the public interface {iface}"),
            )),
            Some(mtu) => Ok(mtu),
        }
    }
}

fn quoted(s: &str) -> String {
    format!("{:?}", s.chars().take(80).collect::<String>())
}

fn parse_backend(v: Option<&Value>) -> Result<VxlanBackend, ConfigError> {
    let empty = Map::new();
    let obj = match v {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(o)) => o,
        Some(other) => return Err(invalid("Backend", other, "must be an object like {\"Type\":\"vxlan\"}")),
    };
    // flannel's own default is the long-gone "udp" backend; vxlan is the only sensible one now.
    let ty = get_str(obj, "Type", "Backend.Type")?.unwrap_or("vxlan");
    if ty != "vxlan" {
        return Err(invalid(
            "Backend.Type",
            quoted(ty),
            "unknown backend: weft supports \"vxlan\"",
        ));
    }
    let vni = match get_uint(obj, "VNI", "Backend.VNI")? {
        None => 1,
        Some(n) if (1..=u64::from(MAX_VNI)).contains(&n) => n as u32,
        Some(n) => return Err(invalid("Backend.VNI", n, format!("must be between 1 and {MAX_VNI}"))),
    };
    let port = match get_uint(obj, "Port", "Backend.Port")? {
        None | Some(0) => DEFAULT_VXLAN_PORT,
        Some(n) if n <= 65535 => n as u16,
        Some(n) => return Err(invalid("Backend.Port", n, "must be between 1 and 65535 (0: 8472)")),
    };
    let mtu = match get_uint(obj, "MTU", "Backend.MTU")? {
        None | Some(0) => None,
        Some(n) if n < u64::from(MIN_MTU) => {
            return Err(invalid(
                "Backend.MTU",
                n,
                format!("below the IPv4 minimum of {MIN_MTU}"),
            ))
        }
        Some(n) if n > 65535 => return Err(invalid("Backend.MTU", n, "above 65535")),
        Some(n) => Some(n as u32),
    };
    Ok(VxlanBackend {
        vni,
        port,
        mtu,
        gbp: get_bool(obj, "GBP", "Backend.GBP")?.unwrap_or(false),
        learning: get_bool(obj, "Learning", "Backend.Learning")?.unwrap_or(false),
        direct_routing: get_bool(obj, "DirectRouting", "Backend.DirectRouting")?.unwrap_or(false),
    })
}

fn get_str<'a>(obj: &'a Map<String, Value>, key: &str, field: &'static str) -> Result<Option<&'a str>, ConfigError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(invalid(field, other, "must be a string")),
    }
}

fn get_uint(obj: &Map<String, Value>, key: &str, field: &'static str) -> Result<Option<u64>, ConfigError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| invalid(field, n, "must be a whole number ≥ 0")),
        Some(other) => Err(invalid(field, other, "must be a number")),
    }
}

fn get_bool(obj: &Map<String, Value>, key: &str, field: &'static str) -> Result<Option<bool>, ConfigError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(invalid(field, other, "must be true or false")),
    }
}

#[cfg(test)]
mod tests;
