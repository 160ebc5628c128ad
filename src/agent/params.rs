//! What makes one network's agent differ from another's: where its keys are, what its device,
//! routing table, nft table and subnet file are called. The agent's loop is the same for every
//! network; an L2 network's agent (later) gets its own variant here.

use super::isolation::HostSubnets;
use super::nft_batcher::NftBatcher;
use super::AgentOptions;
use crate::network::{self, NetworkKeys, DEFAULT_NETWORK};
use ipnet::Ipv4Net;
use std::path::PathBuf;
use std::sync::Arc;

/// Priority of the `ip rule`s that send a named network's traffic to its table: after the
/// kernel's `local` rule (0), before `main` (32766).
pub const RULE_PRIORITY: u32 = 1000;

/// One network as an agent serves it.
#[derive(Debug, Clone)]
pub struct NetworkParams {
    /// `default`, or the named network's name (logs, `/status`, metric labels).
    pub name: String,
    pub keys: NetworkKeys,
    /// flannel's `subnet.env` for the default network, `…/networks/NAME.env` for a named one.
    pub subnet_file: PathBuf,
    /// `weft` or `weft-NAME`.
    pub nft_table: String,
    /// Set for a named network: its VNI as the supervisor started it, and its routing table.
    pub named: Option<Named>,
    /// The subnets this host holds in each of its networks (shared by all its agents).
    pub host: Arc<HostSubnets>,
    /// The host's `nft` task (shared by all its agents: their work goes in common runs).
    pub nft: NftBatcher,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Named {
    pub vni: u32,
    pub route_table: u32,
}

impl NetworkParams {
    /// The default network: flannel's keys, device, file and weft's `ip weft` table.
    pub fn default_network(opts: &AgentOptions, host: Arc<HostSubnets>, nft: NftBatcher) -> NetworkParams {
        NetworkParams {
            name: DEFAULT_NETWORK.into(),
            keys: NetworkKeys::new(&opts.prefix),
            subnet_file: opts.subnet_file.clone(),
            nft_table: network::DEFAULT_NFT_TABLE.into(),
            named: None,
            host,
            nft,
        }
    }

    /// Named network `name` with VNI `vni`.
    pub fn named(opts: &AgentOptions, name: &str, vni: u32, host: Arc<HostSubnets>, nft: NftBatcher) -> NetworkParams {
        NetworkParams {
            name: name.into(),
            keys: NetworkKeys::named(&opts.prefix, name),
            subnet_file: network::named_subnet_file(&opts.subnet_file, name),
            nft_table: network::named_nft_table(name),
            named: Some(Named {
                vni,
                route_table: network::route_table(vni),
            }),
            host,
            nft,
        }
    }

    pub fn is_default(&self) -> bool {
        self.named.is_none()
    }

    /// The VXLAN device for `vni`: `flannel.<VNI>` or `weft.<VNI>`.
    pub fn device_name(&self, vni: u32) -> String {
        match self.named {
            None => network::device_name(vni),
            Some(_) => network::named_device_name(vni),
        }
    }

    /// Subnets a new lease must not overlap: what this host holds in its other networks (a
    /// named network's `from SUBNET` rule must name one network only). The default network
    /// never moves for a named one, so it avoids nothing.
    pub fn avoid(&self) -> Vec<Ipv4Net> {
        if self.is_default() {
            Vec::new()
        } else {
            self.host.others(&self.name)
        }
    }
}
