//! `subnet.env`, the file flannel's CNI plugin reads:
//! ```text
//! FLANNEL_NETWORK=10.0.0.0/16
//! FLANNEL_SUBNET=10.0.37.1/24
//! FLANNEL_MTU=1450
//! FLANNEL_IPMASQ=false
//! ```

use ipnet::Ipv4Net;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetEnv {
    pub network: Ipv4Net,
    /// The host's leased subnet (written as its first host address, flannel-style).
    pub subnet: Ipv4Net,
    pub mtu: u32,
    pub ipmasq: bool,
}

impl SubnetEnv {
    pub fn render(&self) -> String {
        let first_host = Ipv4Addr::from(u32::from(self.subnet.network()).saturating_add(1));
        format!(
            "FLANNEL_NETWORK={}\nFLANNEL_SUBNET={}/{}\nFLANNEL_MTU={}\nFLANNEL_IPMASQ={}\n",
            self.network,
            first_host,
            self.subnet.prefix_len(),
            self.mtu,
            self.ipmasq
        )
    }

    /// Parses a `subnet.env`; `None` if any of the four variables is missing or malformed.
    pub fn parse(text: &str) -> Option<SubnetEnv> {
        let mut network = None;
        let mut subnet = None;
        let mut mtu = None;
        let mut ipmasq = None;
        for line in text.lines() {
            let Some((k, v)) = line.trim().split_once('=') else {
                continue;
            };
            match k {
                "FLANNEL_NETWORK" => network = v.parse::<Ipv4Net>().ok(),
                "FLANNEL_SUBNET" => subnet = v.parse::<Ipv4Net>().ok().map(|n| n.trunc()),
                "FLANNEL_MTU" => mtu = v.parse().ok(),
                "FLANNEL_IPMASQ" => ipmasq = v.parse().ok(),
                _ => {}
            }
        }
        Some(SubnetEnv {
            network: network?,
            subnet: subnet?,
            mtu: mtu?,
            ipmasq: ipmasq?,
        })
    }

    pub fn read(path: &Path) -> Option<SubnetEnv> {
        std::fs::read_to_string(path).ok().and_then(|t| SubnetEnv::parse(&t))
    }

    /// Writes the file atomically (see [`write_atomic`]).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        write_atomic(path, &self.render())
    }
}

/// Writes a file atomically: a reader sees the old file or the new one, never half of one.
pub fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_flannel() {
        let env = SubnetEnv {
            network: "10.0.0.0/16".parse().unwrap(),
            subnet: "10.0.37.0/24".parse().unwrap(),
            mtu: 1450,
            ipmasq: true,
        };
        assert_eq!(
            env.render(),
            "FLANNEL_NETWORK=10.0.0.0/16\nFLANNEL_SUBNET=10.0.37.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
        );
        assert_eq!(SubnetEnv::parse(&env.render()), Some(env.clone()));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("run/flannel/subnet.env");
        env.write(&p).unwrap();
        assert_eq!(SubnetEnv::read(&p), Some(env));
        assert_eq!(
            std::fs::read_dir(p.parent().unwrap()).unwrap().count(),
            1,
            "no temp file left"
        );
    }

    #[test]
    fn malformed_is_none() {
        assert_eq!(SubnetEnv::parse(""), None);
        assert_eq!(
            SubnetEnv::parse(
                "FLANNEL_NETWORK=10.0.0.0/16\nFLANNEL_SUBNET=junk\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false"
            ),
            None
        );
    }
}
