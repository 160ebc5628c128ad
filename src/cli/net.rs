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
    /// List the subnet leases.
    Leases {
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
    /// Print the stored config.
    Show {
        #[command(flatten)]
        store: StoreArgs,
    },
}

pub async fn run(cmd: NetCommand) -> Result<()> {
    match cmd {
        NetCommand::Config {
            cmd: ConfigCommand::Set { file, store },
        } => {
            let text = if file == "-" {
                let mut s = String::new();
                std::io::stdin()
                    .read_to_string(&mut s)
                    .context("reading the config from stdin")?;
                s
            } else {
                std::fs::read_to_string(&file).with_context(|| format!("reading {file}"))?
            };
            let cfg = NetworkConfig::parse(&text)?;
            let keys = NetworkKeys::new(&store.etcd_prefix);
            let s = store::open(&store.config())?;
            s.put(&keys.config(), text.trim()).await?;
            println!(
                "wrote {}: network {}, subnets /{} from {} to {} ({} hosts), VNI {}",
                keys.config(),
                cfg.network,
                cfg.subnet_len,
                cfg.subnet_min,
                cfg.subnet_max,
                cfg.subnet_count(),
                cfg.backend.vni
            );
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
        NetCommand::Leases { store } => {
            let keys = NetworkKeys::new(&store.etcd_prefix);
            let s = store::open(&store.config_with_expiries())?;
            let listing = s.list(&keys.subnets()).await?;
            println!(
                "{:<18} {:<16} {:<18} {:>10}  STATE",
                "SUBNET", "PUBLIC-IP", "VTEP-MAC", "EXPIRES-IN"
            );
            let now = SystemTime::now();
            for e in &listing.entries {
                let expires = store::remaining(e, now)
                    .map(|d| humantime::format_duration(std::time::Duration::from_secs(d.as_secs())).to_string())
                    .unwrap_or_else(|| "never".into());
                match Lease::from_entry(e) {
                    Ok(l) => println!(
                        "{:<18} {:<16} {:<18} {:>10}  ok",
                        l.subnet.to_string(),
                        l.public_ip.to_string(),
                        l.vtep_mac.to_string(),
                        expires
                    ),
                    Err(err) => println!(
                        "{:<18} {:<16} {:<18} {:>10}  invalid: {err}",
                        e.key.rsplit('/').next().unwrap_or(""),
                        "-",
                        "-",
                        expires
                    ),
                }
            }
            Ok(())
        }
    }
}
