//! `weft endpoint`: an L2 network's endpoints in the store.
//!
//! `add` registers a MAC and IP on a host (only if the MAC is not registered yet, or already on
//! that host); `move` re-registers it on another host with `Seq + 1` (MAC mobility); `delete`
//! removes it (and releases its address if weft-cni or `weft lab endpoint` claimed it), or with
//! `--host` everything of a host gone for good; `list` shows them. Every agent of the network
//! follows within milliseconds.

use super::StoreArgs;
use crate::config::NetworkConfig;
use crate::endpoint::{endpoint_key, endpoints_prefix, Endpoint};
use crate::mac::Mac;
use crate::network::{Mode, NetworkKeys};
use crate::store::{self, Store};
use anyhow::{bail, Context, Result};
use std::net::Ipv4Addr;

#[derive(clap::Subcommand, Debug)]
pub enum EndpointCommand {
    /// Register endpoint MAC/IP on HOST (its public IP) in L2 network NETWORK.
    Add {
        network: String,
        /// Public (underlay) IP of the host the endpoint is on.
        #[arg(long)]
        host: Ipv4Addr,
        #[arg(long)]
        mac: Mac,
        #[arg(long)]
        ip: Ipv4Addr,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Move endpoint MAC to HOST: the same MAC and IP, `Seq` one higher.
    Move {
        network: String,
        #[arg(long)]
        mac: Mac,
        /// Public IP of the host it is on now.
        #[arg(long)]
        host: Ipv4Addr,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Remove endpoint MAC, or with --host every endpoint of a host that is gone for good.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["mac", "host"])))]
    Delete {
        network: String,
        /// The endpoint's MAC.
        #[arg(long)]
        mac: Option<Mac>,
        /// Public IP of a host gone for good: remove every endpoint registered on it and release
        /// every address claimed for its containers, unless its endpoint moved to another host
        /// (nothing of an L2 network expires by itself). A host still running would lose its
        /// endpoints.
        #[arg(long)]
        host: Option<Ipv4Addr>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List the endpoints of NETWORK.
    List {
        network: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

pub async fn run(cmd: EndpointCommand) -> Result<()> {
    match cmd {
        EndpointCommand::Add {
            network,
            host,
            mac,
            ip,
            store,
        } => {
            let (s, keys, cfg) = open_l2(&store, &network).await?;
            let ep = Endpoint { mac, ip, host, seq: 0 };
            ep.validate(cfg.network)?;
            let key = endpoint_key(&keys.prefix, mac);
            let claim = crate::l2ipam::claim_key(&keys.prefix, ip);
            if let Some(c) = s.get(&claim).await?.and_then(|e| crate::l2ipam::Claim::parse(&e.value)) {
                if c.mac != mac {
                    bail!(
                        "{ip} is claimed by container {} ({}) on {} with MAC {}: pick another address",
                        c.container,
                        c.ifname,
                        c.host,
                        c.mac
                    );
                }
            }
            match s.get(&key).await? {
                Some(e) => {
                    let have: Endpoint = serde_json::from_str(&e.value)
                        .with_context(|| format!("{key} holds something that is not an endpoint"))?;
                    if have.host != host {
                        bail!(
                            "{mac} is registered on {} (Seq {}); `weft endpoint move {network} --mac {mac} --host {host}` moves it",
                            have.host,
                            have.seq
                        );
                    }
                    let ep = Endpoint { seq: have.seq, ..ep };
                    s.put(&key, &ep.to_json()).await?;
                    println!("re-registered {mac} {ip} on {host} (Seq {})", ep.seq);
                }
                None => {
                    // Not a create-only-if-absent: store keys made that way expire. Two hosts
                    // registering one MAC at once both write Seq 0, which every agent flags as
                    // a duplicate MAC (see `weft status`).
                    s.put(&key, &ep.to_json()).await?;
                    println!("registered {mac} {ip} on {host} in {network}");
                }
            }
            Ok(())
        }
        EndpointCommand::Move {
            network,
            mac,
            host,
            store,
        } => {
            let (s, keys, _) = open_l2(&store, &network).await?;
            let key = endpoint_key(&keys.prefix, mac);
            let Some(e) = s.get(&key).await? else {
                bail!("{mac} is not registered in {network}");
            };
            let have: Endpoint = serde_json::from_str(&e.value)
                .with_context(|| format!("{key} holds something that is not an endpoint"))?;
            let seq = have.seq.checked_add(1).context("Seq cannot grow any more")?;
            let ep = Endpoint { host, seq, ..have };
            s.put(&key, &ep.to_json()).await?;
            println!("moved {mac} {} from {} to {host} (Seq {seq})", ep.ip, have.host);
            Ok(())
        }
        EndpointCommand::Delete {
            network,
            mac: None,
            host: Some(host),
            store,
        } => {
            let (s, keys, _) = open_l2(&store, &network).await?;
            let f = crate::l2ipam::store::forget_host(s.as_ref(), &keys.prefix, host).await?;
            for (mac, ip) in &f.endpoints {
                println!("removed {mac} {ip} from {network}");
            }
            for ip in &f.released {
                println!("released {ip} (claimed on {host})");
            }
            if f == Default::default() {
                println!("nothing of {host} in {network}");
            }
            Ok(())
        }
        EndpointCommand::Delete {
            network, mac, store, ..
        } => {
            let mac = mac.context("give the endpoint's --mac, or --host for every endpoint of a host")?;
            let (s, keys, _) = open_l2(&store, &network).await?;
            let key = endpoint_key(&keys.prefix, mac);
            let had = s.get(&key).await?;
            if !s.delete(&key).await? {
                bail!("{mac} is not registered in {network}");
            }
            println!("removed {mac} from {network}");
            // A weft-cni container's (or lab endpoint's) address is released with it.
            if let Some(ep) = had.and_then(|e| serde_json::from_str::<Endpoint>(&e.value).ok()) {
                let claim = crate::l2ipam::claim_key(&keys.prefix, ep.ip);
                let ours = s.get(&claim).await?.and_then(|e| crate::l2ipam::Claim::parse(&e.value));
                if ours.is_some_and(|c| c.mac == mac) && s.delete(&claim).await? {
                    println!("released {} (claimed for {mac})", ep.ip);
                }
            }
            Ok(())
        }
        EndpointCommand::List { network, store } => {
            let (s, keys, cfg) = open_l2(&store, &network).await?;
            let prefix = endpoints_prefix(&keys.prefix);
            println!("{:<18} {:<16} {:<16} {:>5}  STATE", "MAC", "IP", "HOST", "SEQ");
            for e in s.list(&prefix).await?.entries {
                match Endpoint::parse(&e.key, &e.value, &prefix, cfg.network) {
                    Ok(ep) => println!(
                        "{:<18} {:<16} {:<16} {:>5}  ok",
                        ep.mac.to_string(),
                        ep.ip.to_string(),
                        ep.host.to_string(),
                        ep.seq
                    ),
                    Err(err) => println!("{:<58}  invalid: {err}", &e.key[prefix.len().min(e.key.len())..]),
                }
            }
            Ok(())
        }
    }
}

/// Opens the store and checks NETWORK is an L2 network.
async fn open_l2(args: &StoreArgs, network: &str) -> Result<(std::sync::Arc<dyn Store>, NetworkKeys, NetworkConfig)> {
    crate::network::validate_name(network)?;
    let s = store::open(&args.config())?;
    let keys = NetworkKeys::named(&args.etcd_prefix, network);
    let Some(e) = s.get(&keys.config()).await? else {
        bail!("no network {network:?} in {}", s.describe());
    };
    let cfg = NetworkConfig::parse(&e.value).with_context(|| format!("network {network:?}"))?;
    if Mode::from_config(&e.value)? != Mode::L2 {
        bail!("network {network:?} is not an L2 network (weft net create … --mode l2)");
    }
    Ok((s, keys, cfg))
}
