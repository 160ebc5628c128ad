//! `weft agent`: flanneld's flags, with `WEFT_*` environment equivalents.

use super::StoreArgs;
use crate::agent::{self, iface::IfaceOptions, AgentOptions};
use anyhow::Result;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct AgentArgs {
    #[command(flatten)]
    pub store: StoreArgs,

    /// Public interface, by name or IPv4 address; repeat to give fallbacks, tried in order.
    #[arg(long, env = "WEFT_IFACE", value_delimiter = ',')]
    pub iface: Vec<String>,

    /// Regular expression matched against interface names and addresses; repeatable.
    #[arg(long, env = "WEFT_IFACE_REGEX", value_delimiter = ',')]
    pub iface_regex: Vec<String>,

    /// Use the interface the kernel would use to reach this address.
    #[arg(long, env = "WEFT_IFACE_CAN_REACH")]
    pub iface_can_reach: Option<Ipv4Addr>,

    /// IP other hosts reach this one on (default: the public interface's address).
    #[arg(long, env = "WEFT_PUBLIC_IP")]
    pub public_ip: Option<Ipv4Addr>,

    /// Where to write the subnet file the CNI plugin reads.
    #[arg(long, env = "WEFT_SUBNET_FILE", default_value = "/run/flannel/subnet.env")]
    pub subnet_file: PathBuf,

    /// Lifetime of the subnet lease; renewed well before it ends (1 h before, or at half-life).
    #[arg(long, env = "WEFT_SUBNET_LEASE_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    pub subnet_lease_ttl: Duration,

    /// Full comparison of kernel state against the store, on top of event-driven updates.
    #[arg(long, env = "WEFT_RESYNC_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub resync_interval: Duration,

    #[command(flatten)]
    pub log: super::LogArgs,
}

pub async fn run(args: AgentArgs) -> Result<()> {
    args.log.init()?;
    if args.subnet_lease_ttl < Duration::from_secs(2) {
        anyhow::bail!(
            "--subnet-lease-ttl {:?} is too short (at least 2s)",
            args.subnet_lease_ttl
        );
    }
    if args.resync_interval.is_zero() {
        anyhow::bail!("--resync-interval must be greater than zero");
    }
    let opts = AgentOptions {
        store: args.store.config(),
        prefix: args.store.etcd_prefix.clone(),
        iface: IfaceOptions {
            ifaces: args.iface,
            regexes: args.iface_regex,
            can_reach: args.iface_can_reach,
            public_ip: args.public_ip,
        },
        subnet_file: args.subnet_file,
        lease_ttl: args.subnet_lease_ttl,
        resync_interval: args.resync_interval,
        ip_masq: false,
    };
    agent::run(opts, shutdown_signal()).await?;
    Ok(())
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}
