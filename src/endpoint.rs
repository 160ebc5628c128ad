//! Endpoints of an L2 network: a MAC and an IPv4 address on one host, registered in the store.
//!
//! One key per MAC, `<prefix>/networks/NAME/endpoints/<MAC>` (lower-case, colon-separated), so
//! a move is an overwrite of the same key. The value is JSON:
//!
//! ```json
//! {"MAC":"02:42:0a:32:00:05","IP":"10.50.0.5","Host":"192.0.2.10","Seq":3}
//! ```
//!
//! `Host` is the public (underlay) IP of the host the endpoint is on; `Seq` is the MAC mobility
//! sequence number (RFC 7432 §15): every move writes the previous value's `Seq + 1`, and a claim
//! that does not raise it is a conflict, not a move. `VtepMAC` is accepted and ignored (the
//! VXLAN device's MAC plays no part in an L2 network's forwarding).
//!
//! Everything here is pure: entries from the store are hostile input until [`Endpoint::parse`]
//! has checked them against the network's CIDR.

use crate::mac::Mac;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// Longer values are refused unparsed (a real endpoint is about 100 bytes).
pub const MAX_ENDPOINT_VALUE_BYTES: usize = 1024;

/// One endpoint as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    #[serde(rename = "MAC")]
    pub mac: Mac,
    #[serde(rename = "IP")]
    pub ip: Ipv4Addr,
    /// Public IP of the host the endpoint is on.
    #[serde(rename = "Host")]
    pub host: Ipv4Addr,
    /// MAC mobility sequence number: raised by one at every move.
    #[serde(rename = "Seq", default)]
    pub seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("endpoint key {key:?}: {why}")]
    BadKey { key: String, why: String },
    #[error("endpoint {key}: value is {len} bytes, more than {MAX_ENDPOINT_VALUE_BYTES}")]
    TooLarge { key: String, len: usize },
    #[error("endpoint {key}: not an endpoint: {why}")]
    BadValue { key: String, why: String },
    #[error("endpoint {key}: MAC {mac} does not match its key")]
    KeyMismatch { key: String, mac: Mac },
    #[error("endpoint {mac}: {why}")]
    Invalid { mac: Mac, why: String },
}

impl EndpointError {
    /// A short label for metrics and `/status` (`bad_value`, `outside_network`, …).
    pub fn reason(&self) -> &'static str {
        match self {
            EndpointError::BadKey { .. } => "bad_key",
            EndpointError::TooLarge { .. } => "too_large",
            EndpointError::BadValue { .. } => "bad_value",
            EndpointError::KeyMismatch { .. } => "key_mismatch",
            EndpointError::Invalid { .. } => "invalid",
        }
    }
}

/// `<network prefix>/endpoints/`: where a network's endpoints live (`net_prefix` is the named
/// network's prefix, `…/networks/NAME`, without a trailing slash).
pub fn endpoints_prefix(net_prefix: &str) -> String {
    format!("{}/endpoints/", net_prefix.trim_end_matches('/'))
}

/// The key of the endpoint with MAC `mac`.
pub fn endpoint_key(net_prefix: &str, mac: Mac) -> String {
    format!("{}{mac}", endpoints_prefix(net_prefix))
}

impl Endpoint {
    /// The value to store.
    pub fn to_json(&self) -> String {
        // Four plain fields: serialisation cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses and checks a stored endpoint: the key names its MAC, the MAC is a unicast one, the
    /// IP is a host address of `network`, the host is a usable unicast address.
    pub fn parse(key: &str, value: &str, prefix: &str, network: Ipv4Net) -> Result<Endpoint, EndpointError> {
        let bad_key = |why: &str| EndpointError::BadKey {
            key: key.chars().take(120).collect(),
            why: why.into(),
        };
        let tail = key
            .strip_prefix(prefix)
            .ok_or_else(|| bad_key("not under the endpoints prefix"))?;
        let key_mac: Mac = tail.parse().map_err(|_| bad_key("does not end in a MAC address"))?;
        if value.len() > MAX_ENDPOINT_VALUE_BYTES {
            return Err(EndpointError::TooLarge {
                key: key.into(),
                len: value.len(),
            });
        }
        let ep: Endpoint = serde_json::from_str(value).map_err(|e| EndpointError::BadValue {
            key: key.into(),
            why: e.to_string().chars().take(200).collect(),
        })?;
        if ep.mac != key_mac {
            return Err(EndpointError::KeyMismatch {
                key: key.into(),
                mac: ep.mac,
            });
        }
        ep.validate(network)?;
        Ok(ep)
    }

    /// The checks of [`Endpoint::parse`] that do not concern the key (also what `weft endpoint
    /// add` runs before writing).
    pub fn validate(&self, network: Ipv4Net) -> Result<(), EndpointError> {
        let invalid = |why: String| EndpointError::Invalid { mac: self.mac, why };
        if !self.mac.is_valid_unicast() {
            return Err(invalid(format!("{} is not a unicast MAC", self.mac)));
        }
        if !network.contains(&self.ip) || self.ip == network.network() || self.ip == network.broadcast() {
            return Err(invalid(format!("IP {} is not a host address of {network}", self.ip)));
        }
        let h = self.host;
        if h.is_unspecified() || h.is_loopback() || h.is_multicast() || h.is_broadcast() || h.is_link_local() {
            return Err(invalid(format!("host {h} is not a usable underlay address")));
        }
        // One below the largest value: a move writes Seq + 1, which must not overflow.
        if self.seq == u64::MAX {
            return Err(invalid("Seq is at its largest value; it cannot move again".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const P: &str = "/coreos.com/network/networks/l2/endpoints/";

    fn net() -> Ipv4Net {
        "10.50.0.0/16".parse().unwrap()
    }

    fn key(mac: &str) -> String {
        format!("{P}{mac}")
    }

    #[test]
    fn round_trips() {
        let ep = Endpoint {
            mac: "02:42:0a:32:00:05".parse().unwrap(),
            ip: "10.50.0.5".parse().unwrap(),
            host: "192.0.2.10".parse().unwrap(),
            seq: 3,
        };
        let json = ep.to_json();
        assert_eq!(
            json,
            r#"{"MAC":"02:42:0a:32:00:05","IP":"10.50.0.5","Host":"192.0.2.10","Seq":3}"#
        );
        let k = endpoint_key("/coreos.com/network/networks/l2", ep.mac);
        assert_eq!(k, key("02:42:0a:32:00:05"));
        assert_eq!(Endpoint::parse(&k, &json, P, net()), Ok(ep));
    }

    #[test]
    fn seq_defaults_to_zero_and_vtep_mac_is_ignored() {
        let v = r#"{"MAC":"02:00:00:00:00:01","IP":"10.50.1.1","Host":"198.51.100.20","VtepMAC":"aa:bb:cc:dd:ee:ff"}"#;
        let ep = Endpoint::parse(&key("02:00:00:00:00:01"), v, P, net()).unwrap();
        assert_eq!(ep.seq, 0);
    }

    #[test]
    fn hostile_entries_are_refused_with_a_reason() {
        let ok_mac = "02:00:00:00:00:01";
        let cases: Vec<(String, String, &str)> = vec![
            (key("zz"), "{}".into(), "bad_key"),
            ("/elsewhere/02:00:00:00:00:01".into(), "{}".into(), "bad_key"),
            (key(ok_mac), "not json".into(), "bad_value"),
            (key(ok_mac), "x".repeat(5000), "too_large"),
            (
                key(ok_mac),
                r#"{"MAC":"02:00:00:00:00:01","IP":"10.50.1.1"}"#.into(),
                "bad_value",
            ),
            (
                key(ok_mac),
                r#"{"MAC":"02:00:00:00:00:02","IP":"10.50.1.1","Host":"192.0.2.1","Seq":1}"#.into(),
                "key_mismatch",
            ),
            (
                key("01:00:5e:00:00:01"),
                r#"{"MAC":"01:00:5e:00:00:01","IP":"10.50.1.1","Host":"192.0.2.1"}"#.into(),
                "invalid",
            ),
            (
                key("00:00:00:00:00:00"),
                r#"{"MAC":"00:00:00:00:00:00","IP":"10.50.1.1","Host":"192.0.2.1"}"#.into(),
                "invalid",
            ),
            (
                key(ok_mac),
                r#"{"MAC":"02:00:00:00:00:01","IP":"10.60.1.1","Host":"192.0.2.1"}"#.into(),
                "invalid",
            ),
            (
                key(ok_mac),
                r#"{"MAC":"02:00:00:00:00:01","IP":"10.50.255.255","Host":"192.0.2.1"}"#.into(),
                "invalid",
            ),
            (
                key(ok_mac),
                r#"{"MAC":"02:00:00:00:00:01","IP":"10.50.1.1","Host":"127.0.0.1"}"#.into(),
                "invalid",
            ),
            (
                key(ok_mac),
                r#"{"MAC":"02:00:00:00:00:01","IP":"10.50.1.1","Host":"192.0.2.1","Seq":18446744073709551615}"#.into(),
                "invalid",
            ),
            (
                key(ok_mac),
                r#"{"MAC":"02:00:00:00:00:01","IP":"10.50.1.1","Host":"192.0.2.1","Seq":18446744073709551616}"#.into(),
                "bad_value",
            ),
            (
                key(ok_mac),
                r#"{"MAC":"02:00:00:00:00:01","IP":"10.50.1.1","Host":"192.0.2.1","Seq":-1}"#.into(),
                "bad_value",
            ),
            (
                key(ok_mac),
                r#"{"MAC":"02:00:00:00:00:01","IP":"999.1.1.1","Host":"192.0.2.1"}"#.into(),
                "bad_value",
            ),
        ];
        for (k, v, want) in cases {
            let got = Endpoint::parse(&k, &v, P, net());
            assert_eq!(
                got.as_ref().err().map(|e| e.reason()),
                Some(want),
                "{k} {v:.80}: {got:?}"
            );
            // Errors stay short whatever the input.
            assert!(got.unwrap_err().to_string().len() < 400);
        }
    }

    proptest! {
        #[test]
        fn never_panics_on_any_value(v in ".{0,300}", tail in "[0-9a-f:]{0,20}") {
            let _ = Endpoint::parse(&format!("{P}{tail}"), &v, P, net());
        }

        #[test]
        fn any_valid_endpoint_round_trips(
            mac in any::<[u8; 6]>(), host in 1u32..0x7f00_0000, ip in 1u32..0xfffe, seq in 0u64..u64::MAX,
        ) {
            let mut mac = mac;
            mac[0] = (mac[0] & 0xfe) | 0x02;
            let ep = Endpoint {
                mac: Mac(mac),
                ip: Ipv4Addr::from(u32::from(net().network()) + ip),
                host: Ipv4Addr::from(0x0100_0000 + host),
                seq,
            };
            prop_assume!(ep.validate(net()).is_ok());
            let k = format!("{P}{}", ep.mac);
            prop_assert_eq!(Endpoint::parse(&k, &ep.to_json(), P, net()), Ok(ep));
        }
    }
}
