//! The L2-endpoint side of [`Lab`]: `weft lab endpoint add|delete`. An endpoint is a namespace
//! `NAME-eN` plugged into a host's bridge (see [`super::endpoints`]) with an address claimed and
//! the endpoint registered in the store, exactly as weft-cni has the agent do it for a container
//! (same claims, so the two never hand out one address twice).

use super::cluster::Lab;
use super::endpoints::LabEndpoint;
use super::state::EndpointState;
use super::{netns, topology, LabError, Result};
use crate::config::NetworkConfig;
use crate::l2ipam::env::L2Env;
use crate::l2ipam::store::Ipam;
use crate::network::{Mode, NetworkKeys};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How long `add` waits for the host's agent to serve the network (bridge made, file written).
const NETWORK_WAIT: Duration = Duration::from_secs(20);

impl Lab {
    /// Endpoints made by [`Lab::add_endpoint`].
    pub fn endpoints(&self) -> &[EndpointState] {
        &self.state.endpoints
    }

    /// The L2 network file host `host`'s agent writes for `network`.
    fn network_file(&self, host: &str, network: &str) -> PathBuf {
        crate::network::named_subnet_file(&self.subnet_file(host), network)
    }

    /// The claim holder's name for endpoint `n`: its namespace's.
    fn endpoint_container(&self, n: u32) -> String {
        topology::endpoint_ns(&self.state.name, n)
    }

    fn ipam_error(&self, what: String) -> impl FnOnce(crate::l2ipam::store::IpamError) -> LabError + '_ {
        move |e| LabError::Invalid {
            lab: self.state.name.clone(),
            reason: format!("{what}: {e}"),
        }
    }

    /// Makes an endpoint on `host` in L2 network `network`: claims `ip` (or the lowest free
    /// address), registers it, and plugs namespace `NAME-eN` into the host's bridge.
    pub async fn add_endpoint(&mut self, network: &str, host: &str, ip: Option<Ipv4Addr>) -> Result<EndpointState> {
        let host_ip = self.underlay_ip(host)?;
        let cidr = self.l2_network(network).await?.ok_or_else(|| LabError::Invalid {
            lab: self.state.name.clone(),
            reason: format!("no network {network:?} (create it with `weft net create {network} --mode l2 …`)"),
        })?;
        let env = self.wait_for_network(host, network).await?;
        let taken: Vec<u32> = netns::list()?
            .iter()
            .filter_map(|ns| ns.strip_prefix(&format!("{}-e", self.state.name))?.parse().ok())
            .chain(self.state.endpoints.iter().map(|e| e.n))
            .collect();
        let n = taken.into_iter().max().unwrap_or(0) + 1;
        let container = self.endpoint_container(n);
        let mac = crate::l2ipam::container_mac(network, &container, "eth0");
        let store = self.store()?;
        let prefix = NetworkKeys::named(&self.state.prefix, network).prefix;
        let ipam = Ipam {
            store: store.as_ref(),
            net_prefix: &prefix,
            network: cidr,
            host: host_ip,
        };
        let reg = ipam
            .add(&container, "eth0", mac, ip)
            .await
            .map_err(self.ipam_error(format!("registering an endpoint in {network} on {host}")))?;
        let ep = LabEndpoint {
            n,
            mac,
            ip: reg.ip,
            prefix_len: reg.prefix_len,
            mtu: env.mtu,
        };
        if let Err(e) = ep.attach(self, host, &env.bridge) {
            let _ = netns::delete_namespaces(&[ep.namespace(self)]);
            let _ = ipam.release(&container, "eth0").await;
            return Err(e);
        }
        let made = EndpointState {
            n,
            network: network.into(),
            host: host.into(),
            mac,
            ip: reg.ip,
        };
        self.state.endpoints.push(made.clone());
        self.state.save(&self.dir)?;
        Ok(made)
    }

    /// Removes the endpoint with address `ip` in `network`: unregisters it, releases its address
    /// and deletes its namespace (and with it the veth on its host's bridge).
    pub async fn delete_endpoint(&mut self, network: &str, ip: Ipv4Addr) -> Result<EndpointState> {
        let Some(at) = self
            .state
            .endpoints
            .iter()
            .position(|e| e.network == network && e.ip == ip)
        else {
            return Err(LabError::Invalid {
                lab: self.state.name.clone(),
                reason: format!("no endpoint {ip} in {network} (`weft lab status` lists them)"),
            });
        };
        let ep = self.state.endpoints[at].clone();
        let store = self.store()?;
        let prefix = NetworkKeys::named(&self.state.prefix, network).prefix;
        // A deleted network took its endpoints and claims with it.
        if let Some(cidr) = self.l2_network(network).await? {
            let ipam = Ipam {
                store: store.as_ref(),
                net_prefix: &prefix,
                network: cidr,
                host: self.underlay_ip(&ep.host)?,
            };
            ipam.release(&self.endpoint_container(ep.n), "eth0")
                .await
                .map_err(self.ipam_error(format!("unregistering {ip} from {network}")))?;
        }
        let ns = topology::endpoint_ns(&self.state.name, ep.n);
        if netns::list()?.contains(&ns) {
            netns::delete_namespaces(&[ns])?;
        }
        self.state.endpoints.remove(at);
        self.state.save(&self.dir)?;
        Ok(ep)
    }

    /// The CIDR of L2 network `network` (`None` if it does not exist), refusing an L3 one.
    async fn l2_network(&self, network: &str) -> Result<Option<ipnet::Ipv4Net>> {
        let invalid = |reason: String| LabError::Invalid {
            lab: self.state.name.clone(),
            reason,
        };
        crate::network::validate_name(network).map_err(|e| invalid(e.to_string()))?;
        let key = NetworkKeys::named(&self.state.prefix, network).config();
        let store = self.store()?;
        let Some(entry) = store
            .get(&key)
            .await
            .map_err(LabError::store(format!("reading {key}")))?
        else {
            return Ok(None);
        };
        let is_l2 = Mode::from_config(&entry.value).is_ok_and(|m| m == Mode::L2);
        if !is_l2 {
            return Err(invalid(format!("network {network:?} is not an L2 network")));
        }
        NetworkConfig::parse(&entry.value)
            .map(|c| Some(c.network))
            .map_err(|e| invalid(format!("network {network:?}: {e}")))
    }

    /// Waits (bounded) until the host's agent serves the network: its file written, which it
    /// does once the bridge is up.
    async fn wait_for_network(&self, host: &str, network: &str) -> Result<L2Env> {
        let path = self.network_file(host, network);
        let deadline = Instant::now() + NETWORK_WAIT;
        loop {
            if let Some(env) = std::fs::read_to_string(&path).ok().and_then(|t| L2Env::parse(&t).ok()) {
                return Ok(env);
            }
            if Instant::now() >= deadline {
                return Err(LabError::Timeout {
                    what: format!("{host}'s agent to serve {network}"),
                    after: NETWORK_WAIT,
                    detail: format!("{} was not written; is the agent running?", path.display()),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
