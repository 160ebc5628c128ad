//! Networks: what an agent serves, and where each lives in the store and on the host.
//!
//! The *default* network is flannel's: its config at `<prefix>/config`, its leases at
//! `<prefix>/subnets/…`, its device `flannel.<VNI>`, routes in the main table. *Named* networks
//! (tenants) live under `<prefix>/networks/NAME/` with the same layout (`config`, `subnets/…`),
//! get the device `weft.<VNI>` and a routing table of their own, `100000000 + VNI`. A named
//! network's VNI is claimed at `<prefix>/vnis/<VNI>` (value: the network's name) before its
//! config is written, so two networks never share a VNI. Everything that names a key, a device,
//! a table or a file goes through this module.

#[cfg(feature = "runtime")]
pub mod admin;

use serde_json::Value;

pub const DEFAULT_PREFIX: &str = "/coreos.com/network";

/// How `--networks`, `/status` and the logs call the default network.
pub const DEFAULT_NETWORK: &str = "default";

/// Longest network name: `weft-NAME` must stay a short nft table name, and names appear in
/// file names, metric labels and log lines.
pub const MAX_NAME_LEN: usize = 31;

/// Routing table of a named network: `ROUTE_TABLE_BASE + VNI` (VNI 100 → table 100000100).
/// Above every table iproute2 or a distribution names, and below 2^32 for every 24-bit VNI.
pub const ROUTE_TABLE_BASE: u32 = 100_000_000;

/// How hosts share the network: `L3` is flannel's (one routed subnet per host); `L2` (later) is
/// one flat subnet across hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    #[default]
    L3,
    L2,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::L3 => "l3",
            Mode::L2 => "l2",
        }
    }

    /// The mode a network config asks for: weft's own `"Weft": {"Mode": "l2"}` (an object
    /// flannel ignores, as it ignores every unknown field); `l3` when absent.
    pub fn from_config(text: &str) -> Result<Mode, NetworkError> {
        let v: Value = serde_json::from_str(text).map_err(|e| NetworkError::Mode(format!("not JSON: {e}")))?;
        match v.get("Weft").and_then(|w| w.get("Mode")) {
            None | Some(Value::Null) => Ok(Mode::L3),
            Some(Value::String(s)) => s.parse(),
            Some(other) => Err(NetworkError::Mode(format!(
                "Weft.Mode = {other}: must be \"l3\" or \"l2\""
            ))),
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = NetworkError;
    fn from_str(s: &str) -> Result<Mode, NetworkError> {
        match s {
            "l3" | "L3" => Ok(Mode::L3),
            "l2" | "L2" => Ok(Mode::L2),
            other => Err(NetworkError::Mode(format!(
                "Weft.Mode = {:?}: must be \"l3\" or \"l2\"",
                other.chars().take(20).collect::<String>()
            ))),
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetworkError {
    #[error(
        "invalid network name {0:?}: use 1 to {MAX_NAME_LEN} characters a-z, 0-9 and '-', starting with a letter or digit"
    )]
    BadName(String),
    #[error("network name {0:?} is reserved for the default network")]
    Reserved(String),
    #[error("network config: {0}")]
    Mode(String),
}

/// Checks a named network's name: `[a-z0-9][a-z0-9-]{0,30}`, and not `default`.
pub fn validate_name(name: &str) -> Result<(), NetworkError> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= MAX_NAME_LEN
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-');
    if !ok {
        return Err(NetworkError::BadName(name.chars().take(40).collect()));
    }
    if name == DEFAULT_NETWORK {
        return Err(NetworkError::Reserved(name.into()));
    }
    Ok(())
}

/// Where a network's keys live in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkKeys {
    /// The network's own prefix without a trailing slash: `/coreos.com/network` for the default
    /// network, `/coreos.com/network/networks/NAME` for a named one.
    pub prefix: String,
}

impl NetworkKeys {
    /// The default network's keys under `prefix` (flannel's `--etcd-prefix`).
    pub fn new(prefix: &str) -> NetworkKeys {
        NetworkKeys {
            prefix: trim(prefix).to_string(),
        }
    }

    /// The keys of named network `name` under the store prefix `prefix`.
    pub fn named(prefix: &str, name: &str) -> NetworkKeys {
        NetworkKeys {
            prefix: format!("{}/networks/{name}", trim(prefix)),
        }
    }

    pub fn config(&self) -> String {
        format!("{}/config", self.prefix)
    }

    /// Prefix of every lease key, with the trailing slash.
    pub fn subnets(&self) -> String {
        format!("{}/subnets/", self.prefix)
    }

    /// Prefix of every key of this network, with the trailing slash.
    pub fn all(&self) -> String {
        format!("{}/", self.prefix)
    }
}

fn trim(prefix: &str) -> &str {
    prefix.trim_end_matches('/')
}

/// `<prefix>/networks/`: every named network's keys start with this.
pub fn networks_prefix(prefix: &str) -> String {
    format!("{}/networks/", trim(prefix))
}

/// `<prefix>/vnis/`: the VNI claims of named networks.
pub fn vnis_prefix(prefix: &str) -> String {
    format!("{}/vnis/", trim(prefix))
}

/// `<prefix>/vnis/<VNI>`: created (only if absent) by `weft net create` before the config.
pub fn vni_claim_key(prefix: &str, vni: u32) -> String {
    format!("{}{vni}", vnis_prefix(prefix))
}

/// The network name of a named network's config key, `<prefix>/networks/NAME/config`; `None`
/// for any other key (a lease, a stray key, an invalid name).
pub fn parse_config_key<'a>(prefix: &str, key: &'a str) -> Option<&'a str> {
    let rest = key.strip_prefix(&networks_prefix(prefix))?;
    let name = rest.strip_suffix("/config")?;
    validate_name(name).ok().map(|()| name)
}

/// flannel's device name for the default network, `flannel.<VNI>`.
pub fn device_name(vni: u32) -> String {
    format!("flannel.{vni}")
}

/// A named network's device, `weft.<VNI>`: at most 13 characters for any 24-bit VNI, within
/// the kernel's 15 (IFNAMSIZ − 1).
pub fn named_device_name(vni: u32) -> String {
    format!("weft.{vni}")
}

/// The VNI of a named network's device name (`weft.100` → 100).
pub fn parse_named_device(name: &str) -> Option<u32> {
    let n = name.strip_prefix("weft.")?;
    (!n.starts_with('0') || n == "0").then_some(())?;
    n.parse().ok()
}

/// An L2 network's bridge, `weftbr.<VNI>`: at most 15 characters for any 24-bit VNI (the
/// kernel's limit), with the VXLAN device `weft.<VNI>` as a port.
pub fn l2_bridge_name(vni: u32) -> String {
    format!("weftbr.{vni}")
}

/// The VNI of an L2 bridge's name (`weftbr.100` → 100).
pub fn parse_l2_bridge(name: &str) -> Option<u32> {
    let n = name.strip_prefix("weftbr.")?;
    (!n.starts_with('0') || n == "0").then_some(())?;
    n.parse().ok()
}

/// A named network's routing table.
pub fn route_table(vni: u32) -> u32 {
    ROUTE_TABLE_BASE + vni
}

/// The default network's nft table (`ip weft`).
pub const DEFAULT_NFT_TABLE: &str = "weft";

/// A named network's nft table, `ip weft-NAME`.
pub fn named_nft_table(name: &str) -> String {
    format!("{DEFAULT_NFT_TABLE}-{name}")
}

/// The name of the network whose nft table this is, for a named network's table.
pub fn parse_named_nft_table(table: &str) -> Option<&str> {
    let name = table.strip_prefix("weft-")?;
    validate_name(name).ok().map(|()| name)
}

/// A named network's subnet file: `<dir of the default subnet file>/networks/NAME.env`, where
/// flannel's multi-network mode wrote it (`/run/flannel/networks/NAME.env`).
pub fn named_subnet_file(default_file: &std::path::Path, name: &str) -> std::path::PathBuf {
    let dir = default_file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    dir.join("networks").join(format!("{name}.env"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "tenant-a", "0", "a1-b2", &"x".repeat(31)] {
            assert_eq!(validate_name(ok), Ok(()), "{ok}");
        }
        for bad in ["", "-a", "A", "a_b", "a.b", "a/b", "é", &"x".repeat(32), "a b"] {
            assert!(matches!(validate_name(bad), Err(NetworkError::BadName(_))), "{bad}");
        }
        assert_eq!(validate_name("default"), Err(NetworkError::Reserved("default".into())));
    }

    #[test]
    fn keys() {
        let d = NetworkKeys::new("/coreos.com/network/");
        assert_eq!(d.config(), "/coreos.com/network/config");
        assert_eq!(d.subnets(), "/coreos.com/network/subnets/");
        let n = NetworkKeys::named("/coreos.com/network", "tenant-a");
        assert_eq!(n.config(), "/coreos.com/network/networks/tenant-a/config");
        assert_eq!(n.subnets(), "/coreos.com/network/networks/tenant-a/subnets/");
        assert_eq!(n.all(), "/coreos.com/network/networks/tenant-a/");
        assert_eq!(
            crate::lease::lease_key(&n.prefix, "10.50.3.0/24".parse().unwrap()),
            "/coreos.com/network/networks/tenant-a/subnets/10.50.3.0-24"
        );
        assert_eq!(
            vni_claim_key("/coreos.com/network", 100),
            "/coreos.com/network/vnis/100"
        );
        assert_eq!(networks_prefix("/p/"), "/p/networks/");
    }

    #[test]
    fn config_keys_name_their_network() {
        let p = "/coreos.com/network";
        assert_eq!(parse_config_key(p, "/coreos.com/network/networks/a/config"), Some("a"));
        assert_eq!(
            parse_config_key(p, "/coreos.com/network/networks/a/subnets/10.0.0.0-24"),
            None
        );
        assert_eq!(parse_config_key(p, "/coreos.com/network/networks/a/b/config"), None);
        assert_eq!(parse_config_key(p, "/coreos.com/network/networks/Bad/config"), None);
        assert_eq!(parse_config_key(p, "/coreos.com/network/networks/default/config"), None);
        assert_eq!(parse_config_key(p, "/coreos.com/network/config"), None);
        assert_eq!(parse_config_key(p, "/other/networks/a/config"), None);
    }

    #[test]
    fn devices_tables_and_files() {
        assert_eq!(device_name(1), "flannel.1");
        assert_eq!(named_device_name(100), "weft.100");
        assert!(named_device_name(crate::config::MAX_VNI).len() <= 15);
        assert_eq!(parse_named_device("weft.100"), Some(100));
        assert_eq!(parse_named_device("weft.0100"), None);
        assert_eq!(parse_named_device("flannel.1"), None);
        assert_eq!(route_table(100), 100_000_100);
        assert!(route_table(crate::config::MAX_VNI) > route_table(1));
        assert_eq!(named_nft_table("tenant-a"), "weft-tenant-a");
        assert_eq!(parse_named_nft_table("weft-tenant-a"), Some("tenant-a"));
        assert_eq!(parse_named_nft_table("weft"), None);
        assert_eq!(
            named_subnet_file(std::path::Path::new("/run/flannel/subnet.env"), "a"),
            std::path::Path::new("/run/flannel/networks/a.env")
        );
        assert_eq!(
            named_subnet_file(std::path::Path::new("subnet.env"), "a"),
            std::path::Path::new("./networks/a.env")
        );
    }

    #[test]
    fn mode_is_weft_field_of_the_config() {
        assert_eq!(Mode::from_config(r#"{"Network":"10.0.0.0/16"}"#), Ok(Mode::L3));
        assert_eq!(Mode::from_config(r#"{"Weft":{"Mode":"l2"}}"#), Ok(Mode::L2));
        assert_eq!(Mode::from_config(r#"{"Weft":{"Mode":"l3"}}"#), Ok(Mode::L3));
        assert!(Mode::from_config(r#"{"Weft":{"Mode":"l4"}}"#).is_err());
        assert!(Mode::from_config(r#"{"Weft":{"Mode":3}}"#).is_err());
        assert!(Mode::from_config("nope").is_err());
    }
}
