//! Subnet leases, stored exactly as flannel v0.18+ stores them:
//! key `<prefix>/subnets/10.0.37.0-24`, value
//! `{"PublicIP":"192.0.2.10","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:a0:2e:40:c0:2c"}}`.

use crate::mac::Mac;
use crate::store::{Entry, Revision};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::SystemTime;

/// Leases larger than this are refused before parsing (a hostile store entry must not cost memory).
pub const MAX_LEASE_VALUE_BYTES: usize = 4096;

/// Lease keys longer than this are refused before they are looked at (flannel's are ~45 bytes).
pub const MAX_LEASE_KEY_BYTES: usize = 512;

/// The JSON value of a lease key, field for field and in flannel's order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseAttrs {
    #[serde(rename = "PublicIP")]
    pub public_ip: Ipv4Addr,
    #[serde(rename = "PublicIPv6", default)]
    pub public_ipv6: Option<Ipv6Addr>,
    #[serde(rename = "BackendType")]
    pub backend_type: String,
    #[serde(rename = "BackendData", default)]
    pub backend_data: Option<serde_json::Value>,
}

/// flannel's VXLAN backend data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VxlanData {
    #[serde(rename = "VNI")]
    pub vni: u32,
    #[serde(rename = "VtepMAC")]
    pub vtep_mac: Mac,
}

/// A parsed, well-formed VXLAN lease. Whether it is *acceptable* (inside the network, not
/// overlapping, …) is the planner's call, not the parser's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub subnet: Ipv4Net,
    pub public_ip: Ipv4Addr,
    pub vni: u32,
    pub vtep_mac: Mac,
    pub backend_type: String,
    pub expires_at: Option<SystemTime>,
    pub revision: Revision,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum LeaseError {
    #[error("lease key {key:?} does not name a subnet (want <prefix>/subnets/a.b.c.d-len)")]
    BadKey { key: String },
    #[error("lease {key}: value is larger than {MAX_LEASE_VALUE_BYTES} bytes ({len} seen)")]
    TooLarge { key: String, len: usize },
    #[error("lease {key}: value is not valid lease JSON: {reason}")]
    BadJson { key: String, reason: String },
    #[error("lease {key}: backend type {backend:?} is not vxlan")]
    UnsupportedBackend { key: String, backend: String },
    #[error("lease {key}: value names subnet {value_subnet:?}, the key another")]
    KeyValueMismatch { key: String, value_subnet: String },
}

impl LeaseError {
    /// A short, stable reason label (for metrics and status).
    pub fn reason(&self) -> &'static str {
        match self {
            LeaseError::BadKey { .. } => "bad_key",
            LeaseError::TooLarge { .. } => "too_large",
            LeaseError::BadJson { .. } => "bad_json",
            LeaseError::UnsupportedBackend { .. } => "unsupported_backend",
            LeaseError::KeyValueMismatch { .. } => "key_value_mismatch",
        }
    }
}

/// `10.0.37.0/24` → `10.0.37.0-24`.
pub fn subnet_key_suffix(subnet: Ipv4Net) -> String {
    format!("{}-{}", subnet.addr(), subnet.prefix_len())
}

/// The store key of the lease for `subnet` under `prefix` (`/coreos.com/network`).
pub fn lease_key(prefix: &str, subnet: Ipv4Net) -> String {
    format!("{}/subnets/{}", prefix.trim_end_matches('/'), subnet_key_suffix(subnet))
}

/// Parses a lease key's subnet: what follows the last `/subnets/` (`10.0.37.0-24`). Only the
/// canonical spelling is a subnet, so one subnet has exactly one key: `10.0.37.5-24` (host
/// bits), `10.0.037.0-24`, `10.0.37.0-024`, `x/10.0.37.0-24` (a nested path) and anything with
/// bytes around it are junk, not synonyms.
pub fn parse_subnet_key(key: &str) -> Option<Ipv4Net> {
    if key.len() > MAX_LEASE_KEY_BYTES {
        return None;
    }
    let last = match key.rsplit_once("/subnets/") {
        Some((_, last)) => last,
        None => key.rsplit('/').next()?,
    };
    let (ip, len) = last.split_once('-')?;
    // Exactly the digits `subnet_key_suffix` writes: with a leading zero allowed, `10.0.0.0-08`
    // and `10.0.0.0-8` would be two store keys for one subnet, so two hosts could each hold it.
    // (The address needs no such care: std's Ipv4Addr already refuses leading zeros.)
    let canonical = (1..=2).contains(&len.len())
        && len.bytes().all(|b| b.is_ascii_digit())
        && (len == "0" || !len.starts_with('0'));
    if !canonical {
        return None;
    }
    let ip: Ipv4Addr = ip.parse().ok()?;
    let net = Ipv4Net::new(ip, len.parse().ok()?).ok()?;
    (net.network() == ip && subnet_key_suffix(net) == last).then_some(net)
}

/// What `from_entry` reads: flannel's fields, plus a `Subnet` field that flannel never writes
/// but a hand-made or hostile value might. Other unknown fields are ignored (newer flannels add
/// some); a field given twice is an error.
#[derive(Deserialize)]
struct WireLease {
    #[serde(rename = "PublicIP")]
    public_ip: Ipv4Addr,
    /// Read (so a malformed one is refused) but not used: IPv6 overlays are not supported yet.
    #[serde(rename = "PublicIPv6", default)]
    #[allow(dead_code)]
    public_ipv6: Option<Ipv6Addr>,
    #[serde(rename = "BackendType")]
    backend_type: String,
    #[serde(rename = "BackendData", default)]
    backend_data: Option<serde_json::Value>,
    #[serde(rename = "Subnet", alias = "subnet", default)]
    subnet: Option<serde_json::Value>,
}

impl Lease {
    pub fn from_entry(entry: &Entry) -> Result<Lease, LeaseError> {
        let key = &entry.key;
        let subnet = parse_subnet_key(key).ok_or_else(|| LeaseError::BadKey { key: shown(key) })?;
        if entry.value.len() > MAX_LEASE_VALUE_BYTES {
            return Err(LeaseError::TooLarge {
                key: key.clone(),
                len: entry.value.len(),
            });
        }
        let bad = |e: serde_json::Error| LeaseError::BadJson {
            key: key.clone(),
            reason: e.to_string(),
        };
        let attrs: WireLease = serde_json::from_str(&entry.value).map_err(bad)?;
        // The key says which subnet the lease is for; a value that says otherwise is refused
        // rather than guessed at.
        if let Some(v) = &attrs.subnet {
            let agrees = v.as_str().and_then(|s| s.parse::<Ipv4Net>().ok()) == Some(subnet);
            if !agrees {
                return Err(LeaseError::KeyValueMismatch {
                    key: key.clone(),
                    value_subnet: v.to_string().chars().take(64).collect(),
                });
            }
        }
        if attrs.backend_type != "vxlan" {
            return Err(LeaseError::UnsupportedBackend {
                key: key.clone(),
                backend: shown(&attrs.backend_type),
            });
        }
        let data: VxlanData =
            serde_json::from_value(attrs.backend_data.unwrap_or(serde_json::Value::Null)).map_err(bad)?;
        Ok(Lease {
            subnet,
            public_ip: attrs.public_ip,
            vni: data.vni,
            vtep_mac: data.vtep_mac,
            backend_type: attrs.backend_type,
            expires_at: entry.expires_at,
            revision: entry.mod_revision,
        })
    }
}

/// At most 128 characters of a hostile string, for errors and logs.
pub(crate) fn shown(s: &str) -> String {
    const MAX: usize = 128;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// The JSON flannel writes for a VXLAN lease, byte for byte.
pub fn vxlan_lease_value(public_ip: Ipv4Addr, vni: u32, vtep_mac: Mac) -> String {
    let attrs = LeaseAttrs {
        public_ip,
        public_ipv6: None,
        backend_type: "vxlan".into(),
        backend_data: Some(serde_json::to_value(VxlanData { vni, vtep_mac }).unwrap_or_default()),
    };
    // Serializing plain data with string keys cannot fail.
    serde_json::to_string(&attrs).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, value: &str) -> Entry {
        Entry {
            key: key.into(),
            value: value.into(),
            create_revision: 1,
            mod_revision: 1,
            expires_at: None,
        }
    }

    const FLANNEL: &str = r#"{"PublicIP":"192.0.2.10","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:a0:2e:40:c0:2c"}}"#;

    #[test]
    fn writes_what_flannel_writes() {
        let v = vxlan_lease_value("192.0.2.10".parse().unwrap(), 1, "c6:a0:2e:40:c0:2c".parse().unwrap());
        assert_eq!(v, FLANNEL);
        assert_eq!(
            lease_key("/coreos.com/network", "10.0.37.0/24".parse().unwrap()),
            "/coreos.com/network/subnets/10.0.37.0-24"
        );
    }

    #[test]
    fn reads_what_flannel_writes() {
        let l = Lease::from_entry(&entry("/coreos.com/network/subnets/10.0.37.0-24", FLANNEL)).unwrap();
        assert_eq!(l.subnet, "10.0.37.0/24".parse().unwrap());
        assert_eq!(l.public_ip, "192.0.2.10".parse::<Ipv4Addr>().unwrap());
        assert_eq!(l.vni, 1);
        assert_eq!(l.vtep_mac.to_string(), "c6:a0:2e:40:c0:2c");
    }

    #[test]
    fn rejects_bad_keys_and_values() {
        for k in [
            "/p/subnets/10.0.37.5-24",
            "/p/subnets/10.0.37.0-",
            "/p/subnets/10.0.37.0-33",
            "/p/subnets/x-24",
            "/p/subnets/10.0.37.0-24junk",
            // Found by fuzz/fuzz_targets/lease.rs: a second spelling of 10.0.0.0/9's key.
            "/p/subnets/10.0.0.0-09",
            "/p/subnets/0.0.0.0-00",
        ] {
            assert!(
                matches!(Lease::from_entry(&entry(k, FLANNEL)), Err(LeaseError::BadKey { .. })),
                "{k}"
            );
        }
        let k = "/p/subnets/10.0.37.0-24";
        assert!(matches!(
            Lease::from_entry(&entry(k, "not json")),
            Err(LeaseError::BadJson { .. })
        ));
        assert!(matches!(
            Lease::from_entry(&entry(k, &"x".repeat(5000))),
            Err(LeaseError::TooLarge { .. })
        ));
        let udp = FLANNEL.replace("\"vxlan\"", "\"udp\"");
        assert!(matches!(
            Lease::from_entry(&entry(k, &udp)),
            Err(LeaseError::UnsupportedBackend { .. })
        ));
        let bad_mac = FLANNEL.replace("c6:a0:2e:40:c0:2c", "nope");
        assert!(matches!(
            Lease::from_entry(&entry(k, &bad_mac)),
            Err(LeaseError::BadJson { .. })
        ));
    }
}
