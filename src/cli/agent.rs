//! `weft agent`: flanneld's flags, with `WEFT_*` environment equivalents.

use super::StoreArgs;
use crate::agent::{self, iface::IfaceOptions, AgentOptions};
use crate::kernel::offload::TxChecksumPolicy;
use anyhow::Result;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct AgentArgs {
    /// TOML file holding any of these flags by name; flags and environment take precedence.
    #[arg(long, env = "WEFT_CONFIG")]
    pub config: Option<PathBuf>,

    /// Print the effective configuration, with where each value came from, and exit.
    #[arg(long)]
    pub print_config: bool,

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

    /// Serve only these networks, comma-separated: named networks by name, `default` for the
    /// default network. Every network in the store when not given.
    #[arg(long, env = "WEFT_NETWORKS", value_delimiter = ',', value_parser = parse_network_name)]
    pub networks: Option<Vec<String>>,

    /// Where to write the subnet file the CNI plugin reads (named networks' files go to
    /// `networks/NAME.env` next to it).
    #[arg(long, env = "WEFT_SUBNET_FILE", default_value = "/run/flannel/subnet.env")]
    pub subnet_file: PathBuf,

    /// Lifetime of the subnet lease; renewed well before it ends (--subnet-lease-renew-margin
    /// before, 1 h by default, or at half-life).
    #[arg(long, env = "WEFT_SUBNET_LEASE_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    pub subnet_lease_ttl: Duration,

    /// Full comparison of kernel state against the store, on top of event-driven updates.
    #[arg(long, env = "WEFT_RESYNC_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub resync_interval: Duration,

    /// Masquerade traffic from the overlay to destinations outside it (flannel's --ip-masq;
    /// `--ip-masq=true|false` as flanneld takes it works too).
    #[arg(long, env = "WEFT_IP_MASQ", num_args = 0..=1, default_missing_value = "true",
          action = clap::ArgAction::Set, default_value_t = false,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub ip_masq: bool,

    /// Accept VXLAN only from current peers' public IPs (a set that follows the leases; in an L2
    /// network, the hosts with endpoints), in nft or as a BPF program (see --bpf-pin-dir).
    #[arg(long, env = "WEFT_VXLAN_PEER_FILTER", default_value_t = true, action = clap::ArgAction::Set)]
    pub vxlan_peer_filter: bool,

    /// Where the peer filter's BPF program is pinned (a directory on a bpffs mount). A host
    /// serving one network on its VXLAN port filters there, at the UDP socket lookup, instead
    /// of in an nft `input` chain every received packet passes; without bpffs (or with `none`),
    /// the filter stays in nft.
    #[arg(long, env = "WEFT_BPF_PIN_DIR", default_value = crate::agent::DEFAULT_BPF_PIN_DIR)]
    pub bpf_pin_dir: String,

    /// Transmit checksum offload on the VXLAN device: `auto` turns it off only on kernels before
    /// 5.7, which corrupt VXLAN checksums under NAT; `on`/`off` force it.
    #[arg(long, env = "WEFT_TX_CHECKSUM_OFFLOAD", value_enum, default_value_t = OffloadArg::Auto)]
    pub tx_checksum_offload: OffloadArg,

    /// Remove what weft set up on this host (nft table, BPF peer filter, routes, device,
    /// subnet.env) and exit.
    #[arg(long)]
    pub cleanup: bool,

    /// With --cleanup: also delete this host's lease from the store.
    #[arg(long, requires = "cleanup")]
    pub release: bool,

    /// Serve /healthz, /readyz, /metrics and /status on this address (e.g. 127.0.0.1:9102).
    #[arg(long, env = "WEFT_HEALTHZ_ADDR")]
    pub healthz_addr: Option<std::net::SocketAddr>,

    #[command(flatten)]
    pub log: super::LogArgs,

    #[command(flatten)]
    pub flanneld: super::flanneld::FlanneldArgs,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffloadArg {
    Auto,
    On,
    Off,
}

/// `weft agent` as a command of its own, to re-parse it with a config file layered in.
#[derive(clap::Parser, Debug)]
#[command(name = "weft agent")]
struct AgentCommand {
    #[command(flatten)]
    args: AgentArgs,
}

/// flanneld's `FLANNELD_*` variables for the agent's flags (see [`super::flanneld`]); call
/// first thing in `main`.
pub fn take_flanneld_env() {
    use clap::CommandFactory;
    super::flanneld::take_flanneld_env(&AgentCommand::command());
}

/// Runs the agent to the end: `argv` are the command-line words of the agent's flags (after
/// `weft agent`, or after `weft-agent`), re-read when a config file is layered in.
pub fn main(args: AgentArgs, argv: Vec<std::ffi::OsString>) -> Result<()> {
    one_malloc_arena();
    // The agent is one task reacting to events: a single-threaded runtime keeps it small.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(run(args, argv))
}

/// The agent's work is on one thread; glibc would still give each blocking helper thread (store
/// calls, `nft`) an arena of its own, where memory freed after a large sync stays resident.
/// One arena keeps the agent's footprint to what it holds (docs/benchmarks.md, footprint).
fn one_malloc_arena() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets a tuning parameter; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

async fn run(args: AgentArgs, argv: Vec<std::ffi::OsString>) -> Result<()> {
    // First of all: until the handlers exist, SIGTERM's default action kills the agent outright.
    let shutdown = shutdown_signal();
    let args = if args.config.is_some() || args.print_config {
        use clap::{CommandFactory, FromArgMatches};
        let layered = super::config_file::layer(AgentCommand::command(), &argv, args.config.as_deref())?;
        if args.print_config {
            print!("{}", super::config_file::render(&AgentCommand::command(), &layered));
            return Ok(());
        }
        AgentCommand::from_arg_matches(&layered.matches)?.args
    } else {
        args
    };
    let flanneld = args.flanneld.map(args.healthz_addr)?;
    let mut log = args.log.clone();
    // --log-level, then flanneld's -v, then RUST_LOG.
    if log.log_level.is_none() {
        log.log_level = flanneld.log_level.map(String::from);
    }
    log.init()?;
    for warning in &flanneld.warnings {
        tracing::warn!("{warning}");
    }
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
        renew_margin: flanneld.renew_margin,
        resync_interval: args.resync_interval,
        ip_masq: args.ip_masq,
        vxlan_peer_filter: args.vxlan_peer_filter,
        bpf_pin_dir: agent::bpf_pin_dir(&args.bpf_pin_dir),
        tx_checksum: match args.tx_checksum_offload {
            OffloadArg::Auto => TxChecksumPolicy::Auto,
            OffloadArg::On => TxChecksumPolicy::ForceOn,
            OffloadArg::Off => TxChecksumPolicy::ForceOff,
        },
        healthz_addr: args.healthz_addr.or(flanneld.healthz_addr),
        networks: args.networks,
    };
    if args.cleanup {
        for line in agent::cleanup::cleanup(&opts, args.release).await? {
            println!("{line}");
        }
        return Ok(());
    }
    agent::run(opts, shutdown).await?;
    Ok(())
}

fn parse_network_name(s: &str) -> Result<String, String> {
    if s == crate::network::DEFAULT_NETWORK {
        return Ok(s.to_string());
    }
    crate::network::validate_name(s)
        .map(|()| s.to_string())
        .map_err(|e| e.to_string())
}

/// Completes on SIGTERM or SIGINT. The handlers are installed when this is called, not when
/// the future is first polled: the supervisor polls it only once its first store listing is
/// done, and a SIGTERM before that used to kill the agent (the default action) instead of
/// stopping it in order.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let handlers = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()));
    async move {
        match handlers {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => std::future::pending().await,
        }
    }
}
