//! `weft lab`: build, inspect and tear down a many-host overlay made of network namespaces.

use crate::lab::{self, AgentSpec, Lab, LabOptions, LabStore};
use anyhow::{bail, Context, Result};
use std::time::Duration;

#[derive(clap::Subcommand, Debug)]
pub enum LabCommand {
    /// Build the lab: router and host namespaces, one agent per host; returns once every host
    /// reaches every other over the overlay.
    Up {
        /// Lab name, [a-z0-9]{1,8}: prefixes every namespace (NAME-router, NAME-h1, …).
        #[arg(long, default_value = "weft")]
        name: String,
        /// Number of hosts, each in its own rack subnet.
        #[arg(long, default_value_t = 3)]
        nodes: u32,
        /// Network config JSON written at <prefix>/config.
        #[arg(long, value_name = "JSON")]
        network_config: Option<String>,
        /// Extra argument for every agent (repeat for several: --agent-arg=--subnet-lease-ttl --agent-arg=5s).
        #[arg(long = "agent-arg", value_name = "ARG", allow_hyphen_values = true)]
        agent_args: Vec<String>,
        /// Build the namespaces only: no store, no agents.
        #[arg(long)]
        no_agents: bool,
        /// The store the agents share: the embedded SQLite file, or etcd started inside the lab
        /// (in the router namespace, on underlay addresses 192.0.2.2, .3, …).
        #[arg(long, value_enum, default_value_t = StoreKind::Sqlite)]
        store: StoreKind,
        /// Number of etcd members with `--store etcd`: 1, or 3 for a cluster that survives losing one.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=5))]
        etcd_members: u32,
        /// Give up waiting for the overlay after this long (default: 30s + 1s per host).
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
        /// Pod namespaces per host (NAME-hI-pJ), wired by weft-cni; also makes NAME-outside, a
        /// namespace beyond the router with no route to the overlay.
        #[arg(long, default_value_t = 0)]
        pods: u32,
        /// Hosts per rack: 2 puts h1 and h2 on one bridged rack subnet (.10, .11), h3 and h4 on
        /// the next, … (what DirectRouting needs).
        #[arg(long, default_value_t = 1)]
        rack_size: u32,
        /// Set "DirectRouting": true in the network config's Backend.
        #[arg(long)]
        direct_routing: bool,
        /// Run agents with --ip-masq (default: true with --pods, false without).
        #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set)]
        ip_masq: Option<bool>,
    },
    /// Add one host (in a new rack, or the last rack if it has room) to a running lab, with as
    /// many pods as the others; reports how long until every other host reaches it.
    Add {
        #[arg(long, default_value = "weft")]
        name: String,
    },
    /// Remove a host: stop its agent, delete its lease, delete its namespace.
    Remove {
        /// Host to remove (h1, h2, …).
        host: String,
        #[arg(long, default_value = "weft")]
        name: String,
    },
    /// Show hosts, underlay addresses, agents and leases.
    Status {
        #[arg(long, default_value = "weft")]
        name: String,
    },
    /// Ping every host from every other over the overlay (with pods also pod -> pod across hosts,
    /// pod -> hosts, pod -> outside); exit 0 only if everything answers.
    Check {
        #[arg(long, default_value = "weft")]
        name: String,
    },
    /// Remove everything the lab made (also after a crash of `lab up`).
    Down {
        #[arg(long, default_value = "weft")]
        name: String,
    },
    /// L2 endpoints: namespaces NAME-eN plugged into a host's bridge of an L2 network, their
    /// address claimed and the endpoint registered in the store (as weft-cni does for containers).
    #[command(subcommand)]
    Endpoint(LabEndpointCommand),
}

#[derive(clap::Subcommand, Debug)]
pub enum LabEndpointCommand {
    /// Make an endpoint on HOST in L2 network NETWORK (`weft net create NETWORK --mode l2 …`).
    Add {
        network: String,
        /// The host whose bridge it is plugged into (h1, h2, …).
        #[arg(long)]
        host: String,
        /// Its address (default: the lowest free one of the network).
        #[arg(long)]
        ip: Option<std::net::Ipv4Addr>,
        #[arg(long, default_value = "weft")]
        name: String,
    },
    /// Remove the endpoint with address IP from NETWORK: unregister it, delete its namespace.
    Delete {
        network: String,
        #[arg(long)]
        ip: std::net::Ipv4Addr,
        #[arg(long, default_value = "weft")]
        name: String,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    Sqlite,
    Etcd,
}

impl LabCommand {
    fn name(&self) -> &str {
        match self {
            LabCommand::Up { name, .. }
            | LabCommand::Add { name }
            | LabCommand::Remove { name, .. }
            | LabCommand::Status { name }
            | LabCommand::Check { name }
            | LabCommand::Down { name }
            | LabCommand::Endpoint(LabEndpointCommand::Add { name, .. } | LabEndpointCommand::Delete { name, .. }) => {
                name
            }
        }
    }
}

pub async fn run(cmd: LabCommand) -> Result<()> {
    // Checked first so that every subcommand fails the same, clear way.
    lab::require_root()?;
    lab::validate_name(cmd.name())?;
    match cmd {
        LabCommand::Up {
            name,
            nodes,
            network_config,
            agent_args,
            no_agents,
            store,
            etcd_members,
            timeout,
            pods,
            rack_size,
            direct_routing,
            ip_masq,
        } => {
            let opts = LabOptions {
                network_config,
                pods,
                rack_size,
                direct_routing,
                ip_masq,
                agent: AgentSpec {
                    args: agent_args,
                    env: Vec::new(),
                },
                agents: !no_agents,
                wait: (!no_agents).then(|| timeout.unwrap_or(Duration::from_secs(30 + u64::from(nodes)))),
                store: match store {
                    StoreKind::Sqlite => LabStore::Sqlite,
                    StoreKind::Etcd => LabStore::Etcd { members: etcd_members },
                },
                ..LabOptions::new(&name, nodes)
            };
            let started = std::time::Instant::now();
            let lab = Lab::up(opts)
                .await
                .with_context(|| format!("lab {name}: up failed (everything made was removed again)"))?;
            // The agents run on after we exit; `weft lab down` removes them.
            let lab = lab.detach();
            print_status(&lab).await?;
            match lab.converged_in() {
                Some(t) => println!(
                    "{} hosts reach each other over the overlay {} ms after the agents started ({} ms in all)",
                    lab.hosts().len(),
                    t.as_millis(),
                    started.elapsed().as_millis()
                ),
                None => println!(
                    "{} hosts up, no agents ({} ms)",
                    lab.hosts().len(),
                    started.elapsed().as_millis()
                ),
            }
            print_pods(&lab);
            println!("state and agent logs: {}", lab.dir().display());
            Ok(())
        }
        LabCommand::Add { name } => {
            let mut lab = Lab::open(&name)?;
            let added = lab
                .add_host()
                .await
                .with_context(|| format!("lab {name}: adding a host"))?;
            let ip = lab.underlay_ip(&added.name)?;
            let overlay = lab.overlay_ip(&added.name).await?;
            match (added.reachable_after, overlay) {
                (Some(t), Some(o)) => println!(
                    "added {} (underlay {ip}, overlay {o}): every other host reaches it {} ms after its agent started",
                    added.name,
                    t.as_millis()
                ),
                _ => println!("added {} (underlay {ip})", added.name),
            }
            Ok(())
        }
        LabCommand::Remove { host, name } => {
            let mut lab = Lab::open(&name)?;
            lab.remove_host(&host)
                .await
                .with_context(|| format!("lab {name}: removing {host}"))?;
            println!("removed {host}: agent stopped, lease released, namespace deleted");
            Ok(())
        }
        LabCommand::Status { name } => {
            let lab = Lab::open(&name)?;
            print_status(&lab).await?;
            print_pods(&lab);
            Ok(())
        }
        LabCommand::Check { name } => {
            let lab = Lab::open(&name)?;
            let report = lab.check().await.with_context(|| format!("lab {name}: check"))?;
            print!("{report}");
            if !report.ok() {
                let mut failed: Vec<String> = Vec::new();
                if !report.failures().is_empty() {
                    failed.push(format!("{} host pairs", report.failures().len()));
                }
                for (kind, answered, total) in report.pod_summary() {
                    if answered < total {
                        failed.push(format!("{} {kind}", total - answered));
                    }
                }
                bail!("lab {name}: no answer for {}", failed.join(", "));
            }
            Ok(())
        }
        LabCommand::Endpoint(LabEndpointCommand::Add {
            network,
            host,
            ip,
            name,
        }) => {
            let mut lab = Lab::open(&name)?;
            let ep = lab
                .add_endpoint(&network, &host, ip)
                .await
                .with_context(|| format!("lab {name}: adding an endpoint to {network} on {host}"))?;
            println!(
                "endpoint {} {} ({}) on {host}'s bridge, registered in {network}",
                lab::topology::endpoint_ns(&name, ep.n),
                ep.ip,
                ep.mac,
            );
            Ok(())
        }
        LabCommand::Endpoint(LabEndpointCommand::Delete { network, ip, name }) => {
            let mut lab = Lab::open(&name)?;
            let ep = lab
                .delete_endpoint(&network, ip)
                .await
                .with_context(|| format!("lab {name}: deleting endpoint {ip} of {network}"))?;
            println!(
                "endpoint {} {ip} removed from {network} and from {}",
                lab::topology::endpoint_ns(&name, ep.n),
                ep.host
            );
            Ok(())
        }
        LabCommand::Down { name } => {
            let removed = lab::down(&name).with_context(|| format!("lab {name}: down"))?;
            println!("lab {name} down: {} namespaces removed", removed.len());
            Ok(())
        }
    }
}

async fn print_status(lab: &Lab) -> Result<()> {
    let hosts = lab.status().await?;
    println!("lab {} ({} hosts, store {})", lab.name(), hosts.len(), lab.store_url());
    println!(
        "{:<6} {:<16} {:<18} {:<14} {:<18} {:<8} {:<8}",
        "host", "underlay", "rack", "agent", "lease", "peers", "health"
    );
    let now = std::time::SystemTime::now();
    for h in hosts {
        let agent = match (h.agent_pid, h.agent_alive) {
            (Some(pid), true) => format!("{pid}"),
            (Some(pid), false) => format!("{pid} (dead)"),
            (None, _) => "-".into(),
        };
        let lease = h.lease.map(|l| l.to_string()).unwrap_or_else(|| "-".into());
        // Each host's own `weft status`, asked inside its namespace.
        let st = h.agent_alive.then(|| agent_status(lab, &h.name)).flatten();
        let (peers, health) = match &st {
            Some(s) => {
                let programmed = s
                    .peers
                    .iter()
                    .filter(|p| p.state == crate::agent::status::PeerState::Programmed)
                    .count();
                let failing: Vec<String> = s.health(now).into_iter().map(|f| f.check).collect();
                let health = if failing.is_empty() {
                    "ok".to_string()
                } else {
                    failing.join(",")
                };
                (format!("{programmed}/{}", s.peers.len()), health)
            }
            None => ("-".into(), "-".into()),
        };
        println!(
            "{:<6} {:<16} {:<18} {:<14} {:<18} {:<8} {:<8}",
            h.name,
            h.underlay_ip.to_string(),
            h.rack_subnet.to_string(),
            agent,
            lease,
            peers,
            health
        );
    }
    Ok(())
}

/// One line per host with pods, and where the outside is.
fn print_pods(lab: &Lab) {
    for h in lab.hosts().iter().filter(|h| !h.pods.is_empty()) {
        let pods: Vec<String> = h.pods.iter().map(|p| format!("{} {}", p.namespace, p.ip)).collect();
        println!("pods on {}: {}", h.plan.name, pods.join(", "));
    }
    for e in lab.endpoints() {
        println!(
            "endpoint {} {} ({}) on {} in {}",
            lab::topology::endpoint_ns(lab.name(), e.n),
            e.ip,
            e.mac,
            e.host,
            e.network
        );
    }
    if let Some(ip) = lab.outside_ip() {
        println!(
            "outside: {} {ip} (no route to the overlay: pods reach it only through --ip-masq)",
            lab.outside_namespace()
        );
    }
}

/// `weft status --json` run inside the host's namespace.
fn agent_status(lab: &Lab, host: &str) -> Option<crate::agent::status::Status> {
    let bin = std::env::current_exe().ok()?;
    let bin = bin.to_string_lossy();
    let out = lab
        .exec(host, &[&bin, "status", "--json", "--store", lab.store_url()])
        .ok()?;
    serde_json::from_slice(&out.stdout).ok()
}
