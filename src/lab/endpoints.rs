//! L2 endpoints in the lab: namespace `NAME-eN` with `eth0` (the endpoint's MAC and IP), the
//! other end of its veth pair (`vepN`) a port of a host's bridge `weftbr.<VNI>`.
//!
//! A move is what a live migration looks like from the network: the pair is deleted on host A
//! and created on host B with the same MAC and IP inside the endpoint's namespace (which stays
//! as it is, addresses, neighbour cache and all). Registration in the store is separate (`weft
//! endpoint add|move`), as it would be for a hypervisor.

use super::netns;
use super::{topology, Lab, Result};
use crate::mac::Mac;
use std::net::Ipv4Addr;

/// One endpoint as the lab wires it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabEndpoint {
    /// 1-based number: namespace `NAME-eN`, host-side veth `vepN`.
    pub n: u32,
    pub mac: Mac,
    pub ip: Ipv4Addr,
    /// Prefix length of the network (the address on `eth0`).
    pub prefix_len: u8,
    pub mtu: u32,
}

impl LabEndpoint {
    pub fn namespace(&self, lab: &Lab) -> String {
        topology::endpoint_ns(lab.name(), self.n)
    }

    fn host_veth(&self) -> String {
        format!("vep{}", self.n)
    }

    /// Creates the endpoint's namespace (if it does not exist yet) and plugs it into `bridge`
    /// on `host`: `vepN` on the bridge, `eth0` in the namespace with the MAC and IP.
    pub fn attach(&self, lab: &Lab, host: &str, bridge: &str) -> Result<()> {
        let ns = self.namespace(lab);
        if !netns::list()?.contains(&ns) {
            netns::add_namespaces(std::slice::from_ref(&ns))?;
            netns::batch(Some(&ns), false, "link set lo up\n")?;
        }
        let host_ns = lab.namespace(host)?.to_string();
        let veth = self.host_veth();
        let mtu = self.mtu.to_string();
        netns::batch(
            Some(&host_ns),
            false,
            &format!(
                "link add {veth} mtu {mtu} type veth peer name ep{n} mtu {mtu}\n\
                 link set ep{n} netns {ns}\n\
                 link set {veth} master {bridge} up\n",
                n = self.n
            ),
        )?;
        netns::batch(
            Some(&ns),
            false,
            &format!(
                "link set ep{n} name eth0\n\
                 link set eth0 address {mac}\n\
                 addr replace {ip}/{len} dev eth0\n\
                 link set eth0 up\n",
                n = self.n,
                mac = self.mac,
                ip = self.ip,
                len = self.prefix_len
            ),
        )
    }

    /// Unplugs the endpoint from `host` (deletes its veth pair); the namespace stays.
    pub fn detach(&self, lab: &Lab, host: &str) -> Result<()> {
        let host_ns = lab.namespace(host)?.to_string();
        netns::batch(Some(&host_ns), false, &format!("link del {}\n", self.host_veth()))
    }

    /// Runs `argv` inside the endpoint's namespace.
    pub fn exec(&self, lab: &Lab, argv: &[&str]) -> Result<std::process::Output> {
        netns::exec(&self.namespace(lab), argv)
    }
}
