//! Pods do not reach pods on other hosts where another firewall drops forwarded packets by
//! default: Docker and ufw set iptables' `FORWARD` policy to `DROP`. flanneld adds accepts for its
//! network to that chain; weft keeps to its own nft table, which cannot override another table's
//! drop. So the agent looks, read-only, at the other tables' `forward` base chains (iptables-nft's
//! included) and logs when one drops by default and no rule of it accepts a subnet this host
//! serves: the operator learns it from the log, not from a silent outage (operator guide,
//! Troubleshooting). iptables-legacy rules are not visible to nftables and go unchecked.

use super::http::Hub;
use super::isolation::HostSubnets;
use super::status::ForwardDrop;
use ipnet::Ipv4Net;
use serde_json::Value;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, info, warn};

/// A base chain, `FAMILY TABLE CHAIN` as `nft list chain` takes it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ChainRef {
    pub family: String,
    pub table: String,
    pub name: String,
}

impl std::fmt::Display for ChainRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.family, self.table, self.name)
    }
}

/// From `nft -j list chains`: the IPv4 `forward` base chains whose policy is drop.
pub fn dropping_forward_chains(listing: &Value) -> Vec<ChainRef> {
    items(listing)
        .filter_map(|item| item.get("chain"))
        .filter(|c| c["hook"] == "forward" && c["policy"] == "drop")
        .filter(|c| c["family"] == "ip" || c["family"] == "inet")
        .filter_map(|c| {
            Some(ChainRef {
                family: c["family"].as_str()?.into(),
                table: c["table"].as_str()?.into(),
                name: c["name"].as_str()?.into(),
            })
        })
        .collect()
}

/// From `nft -j list chain …`: whether a rule accepts packets from or to a prefix holding all of
/// `subnet` (flannel's `-s NETWORK -j ACCEPT` and `-d NETWORK -j ACCEPT` are such rules). Rules
/// of chains it jumps to are not followed; a drop there would be reported, a false alarm at worst.
pub fn accepts(listing: &Value, subnet: Ipv4Net) -> bool {
    items(listing).filter_map(|item| item.get("rule")).any(|rule| {
        let Some(expr) = rule["expr"].as_array() else {
            return false;
        };
        let accepting = expr.last().is_some_and(|e| e.get("accept").is_some());
        accepting && expr.iter().any(|e| matches_subnet(&e["match"], subnet))
    })
}

/// `ip saddr PREFIX` or `ip daddr PREFIX`, the prefix holding `subnet`.
fn matches_subnet(m: &Value, subnet: Ipv4Net) -> bool {
    let payload = &m["left"]["payload"];
    let address = payload["protocol"] == "ip" && (payload["field"] == "saddr" || payload["field"] == "daddr");
    if !address || m["op"] != "==" {
        return false;
    }
    let prefix = &m["right"]["prefix"];
    let net = prefix["addr"]
        .as_str()
        .and_then(|a| a.parse::<Ipv4Addr>().ok())
        .zip(prefix["len"].as_u64().and_then(|l| u8::try_from(l).ok()))
        .and_then(|(addr, len)| Ipv4Net::new(addr, len).ok());
    net.is_some_and(|n| n.contains(&subnet))
}

fn items(listing: &Value) -> impl Iterator<Item = &Value> {
    listing["nftables"].as_array().into_iter().flatten()
}

/// What one look found: (chain, subnet) pairs that chain would drop.
pub type Blocked = BTreeSet<(ChainRef, Ipv4Net)>;

/// Looks once: lists the chains, then the rules of each dropping forward chain.
pub fn look(subnets: &[Ipv4Net]) -> Result<Blocked, String> {
    let mut blocked = Blocked::new();
    if subnets.is_empty() {
        return Ok(blocked);
    }
    for chain in dropping_forward_chains(&nft_json(&["list", "chains"])?) {
        let rules = nft_json(&["list", "chain", &chain.family, &chain.table, &chain.name])?;
        for subnet in subnets.iter().filter(|s| !accepts(&rules, **s)) {
            blocked.insert((chain.clone(), *subnet));
        }
    }
    Ok(blocked)
}

fn nft_json(args: &[&str]) -> Result<Value, String> {
    let out = Command::new("nft")
        .arg("-j")
        .args(args)
        .output()
        .map_err(|e| format!("running nft: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "nft -j {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("nft -j {}: {e}", args.join(" ")))
}

/// Looks every `interval` (the first time shortly after start, once leases are likely held),
/// shows what it found in `/status` (`weft status`), and logs when that changes: a warning per
/// newly blocked subnet, a note when none is.
pub async fn watch(host: Arc<HostSubnets>, hub: Arc<Hub>, interval: Duration) {
    let mut last = Blocked::new();
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + Duration::from_secs(2), interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let subnets = host.subnets();
        let found = match tokio::task::spawn_blocking(move || look(&subnets)).await {
            Ok(Ok(found)) => found,
            Ok(Err(e)) => {
                debug!(error = %e, "forward check: could not read the other nft tables");
                continue;
            }
            Err(_) => continue,
        };
        // Before the log says so, so that whoever reads the log finds it in /status.
        hub.metrics.set_forward_drops(found.len());
        hub.set_forward_drops(
            found
                .iter()
                .map(|(chain, subnet)| ForwardDrop {
                    chain: chain.to_string(),
                    subnet: subnet.to_string(),
                })
                .collect(),
        );
        for (chain, subnet) in found.difference(&last) {
            warn!(
                chain = %chain,
                subnet = %subnet,
                "forwarded packets are dropped by default in another firewall's chain and no rule \
                 there accepts this subnet: pods here may not reach pods on other hosts (operator \
                 guide, Troubleshooting: the FORWARD policy is DROP)"
            );
        }
        if found.is_empty() && !last.is_empty() {
            info!("forward check: no other firewall drops this host's pod traffic any more");
        }
        last = found;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// What iptables-nft makes of `iptables -P FORWARD DROP` (nft 1.0.6's JSON).
    fn chains(policy: &str) -> Value {
        json!({"nftables": [
            {"metainfo": {"version": "1.0.6"}},
            {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "handle": 1,
                       "type": "filter", "hook": "forward", "prio": 0, "policy": policy}},
            {"chain": {"family": "ip", "table": "filter", "name": "INPUT", "handle": 2,
                       "type": "filter", "hook": "input", "prio": 0, "policy": "drop"}},
            {"chain": {"family": "ip", "table": "filter", "name": "DOCKER-USER", "handle": 3}},
            {"chain": {"family": "ip6", "table": "filter", "name": "FORWARD", "handle": 1,
                       "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}},
        ]})
    }

    /// flannel's two rules as iptables-nft lists them (one with a comment match).
    fn rule(field: &str, addr: &str, len: u8, verdict: &str) -> Value {
        json!({"rule": {"family": "ip", "table": "filter", "chain": "FORWARD", "expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": field}},
                       "right": {"prefix": {"addr": addr, "len": len}}}},
            {"xt": {"type": "match", "name": "comment"}},
            {"counter": {"packets": 0, "bytes": 0}},
            {verdict: null},
        ]}})
    }

    fn listing(rules: Vec<Value>) -> Value {
        json!({"nftables": rules})
    }

    #[test]
    fn only_ipv4_forward_chains_that_drop_by_default() {
        let found = dropping_forward_chains(&chains("drop"));
        assert_eq!(
            found,
            vec![ChainRef {
                family: "ip".into(),
                table: "filter".into(),
                name: "FORWARD".into()
            }]
        );
        assert_eq!(found[0].to_string(), "ip filter FORWARD");
        assert!(dropping_forward_chains(&chains("accept")).is_empty());
        assert!(dropping_forward_chains(&json!({})).is_empty());
    }

    #[test]
    fn flannels_accepts_cover_the_hosts_subnets() {
        let own: Ipv4Net = "10.0.37.0/24".parse().unwrap();
        assert!(!accepts(&listing(vec![]), own));
        // -s NETWORK -j ACCEPT, or -d NETWORK: either lets pod-to-pod traffic through.
        assert!(accepts(&listing(vec![rule("saddr", "10.0.0.0", 16, "accept")]), own));
        assert!(accepts(&listing(vec![rule("daddr", "10.0.0.0", 16, "accept")]), own));
        assert!(accepts(&listing(vec![rule("daddr", "10.0.37.0", 24, "accept")]), own));
        // A prefix that holds only part of the subnet, another network, or a drop: not covered.
        assert!(!accepts(&listing(vec![rule("saddr", "10.0.37.0", 25, "accept")]), own));
        assert!(!accepts(&listing(vec![rule("saddr", "10.1.0.0", 16, "accept")]), own));
        assert!(!accepts(&listing(vec![rule("saddr", "10.0.0.0", 16, "drop")]), own));
        // Docker's rules name its bridge, not our subnet.
        let docker = json!({"rule": {"expr": [
            {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "docker0"}},
            {"accept": null},
        ]}});
        assert!(!accepts(&listing(vec![docker]), own));
    }
}
