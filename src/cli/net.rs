//! `weft net`: the network config and the leases, straight from the store.

use super::StoreArgs;
use crate::config::NetworkConfig;
use crate::lease::Lease;
use crate::network::NetworkKeys;
use crate::store;
use anyhow::{Context, Result};
use std::io::Read;
use std::time::SystemTime;

#[derive(clap::Subcommand, Debug)]
pub enum NetCommand {
    /// Show or write the network config (`<prefix>/config`).
    Config {
        #[command(subcommand)]
        cmd: ConfigCommand,
    },
    /// List the subnet leases, with their expiry and whether each is valid.
    Leases {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Act on one lease.
    Lease {
        #[command(subcommand)]
        cmd: LeaseCommand,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum LeaseCommand {
    /// Delete the lease of SUBNET (e.g. 10.0.37.0/24): its host loses its subnet; every peer
    /// removes its entries. A live agent on that host leases a subnet again.
    Release {
        subnet: ipnet::Ipv4Net,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum ConfigCommand {
    /// Validate a config (flannel's JSON) from FILE, or `-` for stdin, and write it.
    Set {
        file: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Check a config from FILE (or `-`) without writing it, with the agent's messages.
    Validate { file: String },
    /// Print the stored config.
    Show {
        #[command(flatten)]
        store: StoreArgs,
    },
}

pub async fn run(cmd: NetCommand) -> Result<()> {
    match cmd {
        NetCommand::Config {
            cmd: ConfigCommand::Validate { file },
        } => {
            let cfg = NetworkConfig::parse(&read_input(&file)?)?;
            println!("{file}: valid: {}", summary(&cfg));
            Ok(())
        }
        NetCommand::Config {
            cmd: ConfigCommand::Set { file, store },
        } => {
            let text = read_input(&file)?;
            let cfg = NetworkConfig::parse(&text)?;
            let keys = NetworkKeys::new(&store.etcd_prefix);
            let s = store::open(&store.config())?;
            s.put(&keys.config(), text.trim()).await?;
            println!("wrote {}: {}", keys.config(), summary(&cfg));
            Ok(())
        }
        NetCommand::Config {
            cmd: ConfigCommand::Show { store },
        } => {
            let keys = NetworkKeys::new(&store.etcd_prefix);
            let s = store::open(&store.config())?;
            match s.get(&keys.config()).await? {
                Some(e) => {
                    println!("{}", e.value);
                    if let Err(err) = NetworkConfig::parse(&e.value) {
                        eprintln!("warning: {err}");
                    }
                    Ok(())
                }
                None => anyhow::bail!("no network config at {} in {}", keys.config(), s.describe()),
            }
        }
        NetCommand::Leases { store } => leases(&store).await,
        NetCommand::Lease {
            cmd: LeaseCommand::Release { subnet, yes, store },
        } => {
            let keys = NetworkKeys::new(&store.etcd_prefix);
            let key = crate::lease::lease_key(&keys.prefix, subnet.trunc());
            let s = store::open(&store.config())?;
            let Some(entry) = s.get(&key).await? else {
                anyhow::bail!("no lease for {subnet} in {} (key {key})", s.describe());
            };
            if !yes && !confirm(&format!("Release {subnet} (held by {})? [y/N] ", holder(&entry.value)))? {
                println!("not released");
                return Ok(());
            }
            s.delete(&key).await?;
            println!("released {subnet} ({key})");
            Ok(())
        }
    }
}

async fn leases(store: &StoreArgs) -> Result<()> {
    let keys = NetworkKeys::new(&store.etcd_prefix);
    let s = store::open(&store.config_with_expiries())?;
    let cfg = match s.get(&keys.config()).await? {
        Some(e) => NetworkConfig::parse(&e.value).ok(),
        None => None,
    };
    let listing = s.list(&keys.subnets()).await?;
    println!(
        "{:<18} {:<16} {:<18} {:>13}  VALID",
        "SUBNET", "PUBLIC-IP", "VTEP-MAC", "EXPIRES-IN"
    );
    let now = SystemTime::now();
    for e in &listing.entries {
        let expires = store::remaining(e, now)
            .map(|d| humantime::format_duration(std::time::Duration::from_secs(d.as_secs())).to_string())
            .unwrap_or_else(|| "unknown".into());
        match Lease::from_entry(e) {
            Ok(l) => {
                let valid = match &cfg {
                    Some(c) => lease_verdict(c, &l),
                    None => "unknown (no valid network config)".into(),
                };
                println!(
                    "{:<18} {:<16} {:<18} {:>13}  {valid}",
                    l.subnet.to_string(),
                    l.public_ip.to_string(),
                    l.vtep_mac.to_string(),
                    expires
                )
            }
            Err(err) => println!(
                "{:<18} {:<16} {:<18} {:>13}  no: {err}",
                e.key.rsplit('/').next().unwrap_or(""),
                "-",
                "-",
                expires
            ),
        }
    }
    Ok(())
}

/// "yes", or "no: why", judged as an agent would (except for duplicates and own-IP checks,
/// which depend on the host).
fn lease_verdict(cfg: &NetworkConfig, l: &Lease) -> String {
    use crate::planner::peers::{select_peers, Host};
    let entry = crate::store::Entry {
        key: crate::lease::lease_key("/x", l.subnet),
        value: crate::lease::vxlan_lease_value(l.public_ip, l.vni, l.vtep_mac),
        create_revision: 0,
        mod_revision: 0,
        expires_at: None,
    };
    let host = Host {
        public_ip: std::net::Ipv4Addr::UNSPECIFIED,
        subnet: None,
    };
    match select_peers(cfg, &host, [&entry]).rejected.first() {
        Some(r) => format!("no: {}", r.rejection),
        None => "yes".into(),
    }
}

fn read_input(file: &str) -> Result<String> {
    if file == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading the config from stdin")?;
        Ok(s)
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {file}"))
    }
}

fn summary(cfg: &NetworkConfig) -> String {
    format!(
        "network {}, subnets /{} from {} to {} ({} hosts), VNI {}, port {}",
        cfg.network,
        cfg.subnet_len,
        cfg.subnet_min,
        cfg.subnet_max,
        cfg.subnet_count(),
        cfg.backend.vni,
        cfg.backend.port
    )
}

/// "192.0.2.10" from a lease value, or "an unreadable lease".
fn holder(value: &str) -> String {
    serde_json::from_str::<crate::lease::LeaseAttrs>(value)
        .map(|a| a.public_ip.to_string())
        .unwrap_or_else(|_| "an unreadable lease".into())
}

fn confirm(question: &str) -> Result<bool> {
    use std::io::Write;
    print!("{question}");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}
