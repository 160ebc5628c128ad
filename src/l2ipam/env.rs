//! The file an L2 network's agent writes for `weft-cni`, `<subnet file dir>/networks/NAME.env`
//! (where a named L3 network's `subnet.env` goes):
//!
//! ```text
//! WEFT_MODE=l2
//! FLANNEL_NETWORK=10.70.0.0/16
//! FLANNEL_MTU=1450
//! WEFT_BRIDGE=weftbr.300
//! WEFT_SOCKET=/run/flannel/networks/NAME.sock
//! ```
//!
//! `FLANNEL_NETWORK` and `FLANNEL_MTU` mean what they mean in `subnet.env`; there is no
//! `FLANNEL_SUBNET` (an L2 network has no per-host subnet). `WEFT_SOCKET` is the agent's
//! root-only Unix socket through which the plugin asks for an address and registers endpoints.

use ipnet::Ipv4Net;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L2Env {
    pub network: Ipv4Net,
    pub mtu: u32,
    pub bridge: String,
    pub socket: PathBuf,
}

/// What a network file that is not an L2 one's is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotL2 {
    /// A named L3 network's `subnet.env` (it has `FLANNEL_SUBNET`).
    L3,
    /// These variables are missing or malformed.
    Incomplete(Vec<&'static str>),
}

impl L2Env {
    pub fn render(&self) -> String {
        format!(
            "WEFT_MODE=l2\nFLANNEL_NETWORK={}\nFLANNEL_MTU={}\nWEFT_BRIDGE={}\nWEFT_SOCKET={}\n",
            self.network,
            self.mtu,
            self.bridge,
            self.socket.display()
        )
    }

    pub fn parse(text: &str) -> Result<L2Env, NotL2> {
        let get = |k: &str| {
            text.lines()
                .filter_map(|l| l.trim().split_once('='))
                .find(|(key, _)| *key == k)
                .map(|(_, v)| v.trim().to_string())
        };
        if get("WEFT_MODE").as_deref() != Some("l2") && get("FLANNEL_SUBNET").is_some() {
            return Err(NotL2::L3);
        }
        let mode = get("WEFT_MODE").filter(|m| m == "l2");
        let network = get("FLANNEL_NETWORK").and_then(|v| v.parse::<Ipv4Net>().ok());
        let mtu = get("FLANNEL_MTU")
            .and_then(|v| v.parse::<u32>().ok())
            .filter(|m| *m >= 68);
        let bridge = get("WEFT_BRIDGE").filter(|b| !b.is_empty() && b.len() <= 15 && !b.contains('/'));
        let socket = get("WEFT_SOCKET").filter(|s| s.starts_with('/')).map(PathBuf::from);
        match (mode, network, mtu, bridge, socket) {
            (Some(_), Some(network), Some(mtu), Some(bridge), Some(socket)) => Ok(L2Env {
                network,
                mtu,
                bridge,
                socket,
            }),
            (mode, network, mtu, bridge, socket) => {
                let mut missing = Vec::new();
                for (ok, var) in [
                    (mode.is_some(), "WEFT_MODE"),
                    (network.is_some(), "FLANNEL_NETWORK"),
                    (mtu.is_some(), "FLANNEL_MTU"),
                    (bridge.is_some(), "WEFT_BRIDGE"),
                    (socket.is_some(), "WEFT_SOCKET"),
                ] {
                    if !ok {
                        missing.push(var);
                    }
                }
                Err(NotL2::Incomplete(missing))
            }
        }
    }
}

/// The agent's socket for the network whose file is `env_file` (`NAME.env` → `NAME.sock`).
pub fn socket_path(env_file: &Path) -> PathBuf {
    env_file.with_extension("sock")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> L2Env {
        L2Env {
            network: "10.70.0.0/16".parse().unwrap(),
            mtu: 1450,
            bridge: "weftbr.300".into(),
            socket: "/run/flannel/networks/l2.sock".into(),
        }
    }

    #[test]
    fn round_trips() {
        let e = sample();
        assert_eq!(L2Env::parse(&e.render()), Ok(e));
        assert_eq!(
            socket_path(Path::new("/run/flannel/networks/l2-a.env")),
            PathBuf::from("/run/flannel/networks/l2-a.sock")
        );
    }

    #[test]
    fn an_l3_file_and_an_incomplete_one_are_told_apart() {
        let l3 = "FLANNEL_NETWORK=10.50.0.0/16\nFLANNEL_SUBNET=10.50.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n";
        assert_eq!(L2Env::parse(l3), Err(NotL2::L3));
        let half = "WEFT_MODE=l2\nFLANNEL_NETWORK=10.70.0.0/16\nFLANNEL_MTU=x\n";
        assert_eq!(
            L2Env::parse(half),
            Err(NotL2::Incomplete(vec!["FLANNEL_MTU", "WEFT_BRIDGE", "WEFT_SOCKET"]))
        );
        let relative = sample().render().replace("WEFT_SOCKET=/", "WEFT_SOCKET=");
        assert_eq!(L2Env::parse(&relative), Err(NotL2::Incomplete(vec!["WEFT_SOCKET"])));
    }
}
