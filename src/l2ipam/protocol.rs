//! What `weft-cni` and an L2 network's agent say to each other on the agent's Unix socket: one
//! JSON request line, one JSON reply line, then the connection closes.
//!
//! ```text
//! -> {"Op":"ADD","Container":"4f3c…","IfName":"eth0","MAC":"02:5a:…","IP":null}
//! <- {"Ok":true,"IP":"10.70.0.2","PrefixLen":16,"MAC":"02:5a:…","Host":"192.0.2.10","Seq":0}
//! <- {"Ok":false,"Error":"10.70.0.9 is claimed by container c7 (eth0) on 198.51.100.20","Retry":false}
//! ```
//!
//! `ADD` claims an address (the one asked for, or the lowest free one) and registers the
//! endpoint on the agent's host; repeated, it answers with what the first one got. `DEL`
//! unregisters and releases (nothing registered is fine). `CHECK` verifies that the claim and
//! the endpoint are in the store as `ADD` left them. `Retry` says whether the same request may
//! succeed later (the store unreachable, the agent still starting).

use crate::mac::Mac;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// Requests longer than this are refused unread (a real one is about 150 bytes).
pub const MAX_REQUEST_BYTES: usize = 4096;
/// Replies longer than this are not read to the end (a real one is about 200 bytes).
pub const MAX_REPLY_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Op {
    Add,
    Del,
    Check,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    #[serde(rename = "Op")]
    pub op: Op,
    #[serde(rename = "Container")]
    pub container: String,
    #[serde(rename = "IfName")]
    pub ifname: String,
    /// ADD: the container's MAC; CHECK: the MAC it must have. Unused by DEL.
    #[serde(rename = "MAC", default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<Mac>,
    /// ADD: the address asked for (none: the lowest free one); CHECK: the one it must have.
    #[serde(rename = "IP", default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<Ipv4Addr>,
}

/// What ADD (and CHECK) answer with: the endpoint as registered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    #[serde(rename = "IP")]
    pub ip: Ipv4Addr,
    #[serde(rename = "PrefixLen")]
    pub prefix_len: u8,
    #[serde(rename = "MAC")]
    pub mac: Mac,
    #[serde(rename = "Host")]
    pub host: Ipv4Addr,
    #[serde(rename = "Seq")]
    pub seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    #[serde(rename = "Ok")]
    pub ok: bool,
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub registration: Option<Registration>,
    #[serde(rename = "Error", default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(rename = "Retry", default, skip_serializing_if = "std::ops::Not::not")]
    pub retry: bool,
}

impl Reply {
    pub fn done(registration: Option<Registration>) -> Reply {
        Reply {
            ok: true,
            registration,
            error: None,
            retry: false,
        }
    }

    pub fn failed(error: impl Into<String>, retry: bool) -> Reply {
        Reply {
            ok: false,
            registration: None,
            error: Some(error.into()),
            retry,
        }
    }

    /// One line of JSON.
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default() + "\n"
    }
}

impl Request {
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default() + "\n"
    }

    /// Parses and checks a request line (the container ID and interface name follow CNI's rules).
    pub fn parse(line: &[u8]) -> Result<Request, String> {
        if line.len() > MAX_REQUEST_BYTES {
            return Err(format!(
                "request of {} bytes, more than {MAX_REQUEST_BYTES}",
                line.len()
            ));
        }
        let r: Request = serde_json::from_slice(line).map_err(|e| format!("not a request: {e}"))?;
        let id_ok = r.container.len() <= 256
            && r.container.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && r.container
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !id_ok {
            return Err(format!(
                "container ID {:?} is not a valid one",
                r.container.chars().take(64).collect::<String>()
            ));
        }
        if r.ifname.is_empty() || r.ifname.len() > 15 || r.ifname.contains(['/', ':', ' ']) {
            return Err(format!(
                "interface name {:?} is not a valid one",
                r.ifname.chars().take(32).collect::<String>()
            ));
        }
        if r.op == Op::Add && r.mac.is_none_or(|m| !m.is_valid_unicast()) {
            return Err("ADD needs the container's MAC, a unicast one".into());
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip() {
        let r = Request {
            op: Op::Add,
            container: "c1".into(),
            ifname: "eth0".into(),
            mac: Some("02:00:00:00:00:01".parse().unwrap()),
            ip: None,
        };
        assert_eq!(
            r.to_line(),
            "{\"Op\":\"ADD\",\"Container\":\"c1\",\"IfName\":\"eth0\",\"MAC\":\"02:00:00:00:00:01\"}\n"
        );
        assert_eq!(Request::parse(r.to_line().trim().as_bytes()), Ok(r));
        let ok = Reply::done(Some(Registration {
            ip: Ipv4Addr::new(10, 70, 0, 2),
            prefix_len: 16,
            mac: "02:00:00:00:00:01".parse().unwrap(),
            host: Ipv4Addr::new(192, 0, 2, 10),
            seq: 0,
        }));
        assert_eq!(
            ok.to_line(),
            "{\"Ok\":true,\"IP\":\"10.70.0.2\",\"PrefixLen\":16,\"MAC\":\"02:00:00:00:00:01\",\"Host\":\"192.0.2.10\",\"Seq\":0}\n"
        );
        assert_eq!(serde_json::from_str::<Reply>(&ok.to_line()).unwrap(), ok);
        let bad = Reply::failed("no", true);
        assert_eq!(bad.to_line(), "{\"Ok\":false,\"Error\":\"no\",\"Retry\":true}\n");
        assert_eq!(serde_json::from_str::<Reply>(&bad.to_line()).unwrap(), bad);
        assert_eq!(
            serde_json::from_str::<Reply>("{\"Ok\":true}").unwrap(),
            Reply::done(None)
        );
    }

    #[test]
    fn hostile_requests_are_refused() {
        for bad in [
            &b"junk"[..],
            br#"{"Op":"ADD","Container":"c","IfName":"eth0"}"#,
            br#"{"Op":"ADD","Container":"c","IfName":"eth0","MAC":"01:00:5e:00:00:01"}"#,
            br#"{"Op":"DEL","Container":"../x","IfName":"eth0"}"#,
            br#"{"Op":"DEL","Container":"c","IfName":"a/b"}"#,
            br#"{"Op":"GC","Container":"c","IfName":"eth0"}"#,
        ] {
            assert!(Request::parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        assert!(Request::parse(&vec![b' '; MAX_REQUEST_BYTES + 1]).is_err());
        assert!(Request::parse(br#"{"Op":"DEL","Container":"c","IfName":"eth0"}"#).is_ok());
    }
}
