//! Ethernet MAC addresses as they appear in leases (`"VtepMAC":"c6:a0:2e:40:c0:2c"`) and the kernel.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid MAC address {0:?}: expected six hex octets separated by ':'")]
pub struct MacParseError(pub String);

impl Mac {
    pub const ZERO: Mac = Mac([0; 6]);

    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }

    pub fn is_zero(&self) -> bool {
        *self == Mac::ZERO
    }

    /// A MAC a VTEP may use: unicast and not all zeros.
    pub fn is_valid_unicast(&self) -> bool {
        !self.is_multicast() && !self.is_zero()
    }

    pub fn from_slice(b: &[u8]) -> Option<Mac> {
        <[u8; 6]>::try_from(b).ok().map(Mac)
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Mac {
    type Err = MacParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || MacParseError(s.chars().take(64).collect());
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for o in out.iter_mut() {
            let p = parts.next().ok_or_else(err)?;
            // from_str_radix alone would take "+f" for 0x0f: only two hex digits are an octet.
            if p.len() != 2 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err());
            }
            *o = u8::from_str_radix(p, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(Mac(out))
    }
}

impl Serialize for Mac {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let m: Mac = "c6:a0:2e:40:c0:2c".parse().unwrap();
        assert_eq!(m.to_string(), "c6:a0:2e:40:c0:2c");
        assert!(m.is_valid_unicast());
    }

    #[test]
    fn rejects_junk() {
        for s in [
            "",
            "c6:a0:2e:40:c0",
            "c6:a0:2e:40:c0:2c:00",
            "zz:a0:2e:40:c0:2c",
            "c6a0:2e:40:c0:2c:1",
            // Found by fuzz/fuzz_targets/mac.rs: from_str_radix accepts a leading '+'.
            "c6:a0:+e:40:c0:2c",
            "+6:a0:2e:40:c0:2c",
        ] {
            assert!(s.parse::<Mac>().is_err(), "{s}");
        }
        assert!("01:00:5e:00:00:01".parse::<Mac>().unwrap().is_multicast());
        assert!(!Mac::ZERO.is_valid_unicast());
    }
}
