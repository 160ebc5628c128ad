//! `weft net`: the network config and the leases, straight from the store.

use super::StoreArgs;
use crate::config::NetworkConfig;
use crate::lease::Lease;
use crate::network::{admin, Mode, NetworkKeys};
use crate::store;
use anyhow::{Context, Result};
use std::io::Read;
use std::time::SystemTime;

#[derive(clap::Subcommand, Debug)]
pub enum NetCommand {
    /// Create named network NAME (a tenant): its own VNI, device `weft.<VNI>` and routing table
    /// on every host, its keys under `<prefix>/networks/NAME/`. Agents pick it up while running.
    Create {
        name: String,
        /// The network's VXLAN VNI (1–16777215); no other network may use it.
        #[arg(long)]
        vni: u32,
        /// The network's CIDR; it may overlap other networks' CIDRs.
        #[arg(long)]
        cidr: ipnet::Ipv4Net,
        /// Length of each host's subnet (default 24 for a /22 or larger network).
        #[arg(long)]
        subnet_len: Option<u8>,
        /// `l3`: one routed subnet per host (flannel's); `l2`: one flat subnet with endpoints registered
        /// in the store (`weft endpoint`).
        #[arg(long, default_value = "l3", value_parser = parse_mode)]
        mode: Mode,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Delete named network NAME: agents tear it down on every host; its leases and VNI claim
    /// are removed.
    Delete {
        name: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List the named networks: name, VNI, CIDR, mode, leases.
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Show or write the network config (`<prefix>/config`).
    Config {
        #[command(subcommand)]
        cmd: ConfigCommand,
    },
    /// List the subnet leases, with their expiry and whether each is valid.
    Leases {
        /// A named network's leases instead of the default network's.
        #[arg(long)]
        network: Option<String>,
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
        /// A named network's config instead of the default network's.
        #[arg(long)]
        network: Option<String>,
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
            let vni = cfg.backend.vni;
            let claim = s.get(&crate::network::vni_claim_key(&store.etcd_prefix, vni)).await?;
            let named = admin::list(s.as_ref(), &store.etcd_prefix).await?;
            if let Some(holder) = claim
                .map(|e| e.value)
                .or_else(|| named.iter().find(|n| n.vni() == Some(vni)).map(|n| n.name.clone()))
            {
                anyhow::bail!("VNI {vni} is already used by network {holder:?}; every network needs a VNI of its own");
            }
            s.put(&keys.config(), text.trim()).await?;
            println!("wrote {}: {}", keys.config(), summary(&cfg));
            Ok(())
        }
        NetCommand::Config {
            cmd: ConfigCommand::Show { network, store },
        } => {
            let keys = keys_of(&store, network.as_deref())?;
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
        NetCommand::Leases { network, store } => leases(&store, &keys_of(&store, network.as_deref())?).await,
        NetCommand::Create {
            name,
            vni,
            cidr,
            subnet_len,
            mode,
            store,
        } => {
            let text = create_config(cidr, vni, subnet_len, mode);
            let s = store::open(&store.config())?;
            let cfg = admin::create(s.as_ref(), &store.etcd_prefix, &name, &text)
                .await
                .with_context(|| format!("creating network {name:?}"))?;
            let keys = NetworkKeys::named(&store.etcd_prefix, &name);
            println!(
                "created network {name} ({mode}): {}; device {} on every host; config at {}",
                summary(&cfg),
                crate::network::named_device_name(vni),
                keys.config()
            );
            if mode == Mode::L2 {
                println!(
                    "bridge {} on every host; add endpoints with `weft endpoint add {name} --host … --mac … --ip …`",
                    crate::network::l2_bridge_name(vni)
                );
            }
            Ok(())
        }
        NetCommand::Delete { name, yes, store } => {
            crate::network::validate_name(&name)?;
            let s = store::open(&store.config())?;
            if !yes && !confirm(&format!("Delete network {name} and every host's lease in it? [y/N] "))? {
                println!("not deleted");
                return Ok(());
            }
            let done = admin::delete(s.as_ref(), &store.etcd_prefix, &name)
                .await
                .with_context(|| format!("deleting network {name:?}"))?;
            let claims: Vec<String> = done.claims.iter().map(|v| v.to_string()).collect();
            println!(
                "deleted network {name}: config {}, {} lease(s), VNI claim {}",
                if done.config { "removed" } else { "was missing" },
                done.leases,
                if claims.is_empty() {
                    "none".into()
                } else {
                    claims.join(", ")
                }
            );
            Ok(())
        }
        NetCommand::List { store } => {
            let s = store::open(&store.config())?;
            let nets = admin::list(s.as_ref(), &store.etcd_prefix).await?;
            let default_vni = match s.get(&NetworkKeys::new(&store.etcd_prefix).config()).await? {
                Some(e) => NetworkConfig::parse(&e.value).ok().map(|c| c.backend.vni),
                None => None,
            };
            let verdicts = admin::verdicts(default_vni, &nets);
            println!(
                "{:<20} {:>8} {:<18} {:<4} {:>6}  STATE",
                "NAME", "VNI", "CIDR", "MODE", "LEASES"
            );
            for n in &nets {
                let (vni, cidr) = match &n.config {
                    Ok(c) => (c.backend.vni.to_string(), c.network.to_string()),
                    Err(_) => ("-".into(), "-".into()),
                };
                let mode = n.mode.as_ref().map(|m| m.as_str()).unwrap_or("-");
                let state = match verdicts.get(&n.name) {
                    Some(admin::Verdict::Serve { mode: Mode::L2, .. }) => "not served: L2 mode not served yet".into(),
                    Some(admin::Verdict::Serve { .. }) => "ok".to_string(),
                    Some(admin::Verdict::Invalid(why) | admin::Verdict::Refuse(why)) => format!("not served: {why}"),
                    None => "-".into(),
                };
                println!("{:<20} {vni:>8} {cidr:<18} {mode:<4} {:>6}  {state}", n.name, n.leases);
            }
            Ok(())
        }
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

/// The default network's keys, or named network `name`'s.
fn keys_of(store: &StoreArgs, name: Option<&str>) -> Result<NetworkKeys> {
    match name {
        None => Ok(NetworkKeys::new(&store.etcd_prefix)),
        Some(n) if n == crate::network::DEFAULT_NETWORK => Ok(NetworkKeys::new(&store.etcd_prefix)),
        Some(n) => {
            crate::network::validate_name(n)?;
            Ok(NetworkKeys::named(&store.etcd_prefix, n))
        }
    }
}

/// The stored config of a network made by `weft net create`: flannel's JSON, plus weft's mode.
fn create_config(cidr: ipnet::Ipv4Net, vni: u32, subnet_len: Option<u8>, mode: Mode) -> String {
    let mut v = serde_json::json!({
        "Network": cidr.to_string(),
        "Backend": {"Type": "vxlan", "VNI": vni},
        "Weft": {"Mode": mode.as_str()},
    });
    if let Some(len) = subnet_len {
        v["SubnetLen"] = len.into();
    }
    v.to_string()
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    s.parse().map_err(|e: crate::network::NetworkError| e.to_string())
}

async fn leases(store: &StoreArgs, keys: &NetworkKeys) -> Result<()> {
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
