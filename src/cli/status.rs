//! `weft status`: this host's view of the overlay, from the running agent's `/status`, or, when
//! the agent cannot be reached, rebuilt from the store and the kernel (and labelled so).

use super::StoreArgs;
use crate::agent::reconcile::observe;
use crate::agent::status::{
    self, DeviceStatus, LeaseStatus, NetworkStatus, PeerState, PeerStatus, Status, StoreStatus,
};
use crate::config::NetworkConfig;
use crate::kernel::Kernel;
use crate::lease::Lease;
use crate::network::{device_name, NetworkKeys};
use crate::planner::peer_entries;
use crate::planner::peers::{select_peers, Host};
use crate::store;
use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// The agent's `--healthz-addr`.
    #[arg(long, env = "WEFT_HEALTHZ_ADDR", default_value = status::DEFAULT_HTTP_ADDR)]
    pub addr: SocketAddr,

    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub store: StoreArgs,
}

pub async fn run(args: StatusArgs) -> Result<()> {
    let addr = args.addr;
    let fetched = tokio::task::spawn_blocking(move || status::fetch(addr, Duration::from_secs(2))).await?;
    let st = match fetched {
        Ok(s) => s,
        Err(why) => {
            let mut s = offline(&args.store).await?;
            s.source = format!("store+kernel (agent not reachable: {why})");
            s
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&st)?);
    } else {
        print!("{}", render(&st, SystemTime::now()));
    }
    Ok(())
}

/// The status as far as the store and this host's kernel tell, without the agent.
async fn offline(args: &StoreArgs) -> Result<Status> {
    let keys = NetworkKeys::new(&args.etcd_prefix);
    let s = store::open(&args.config())?;
    let mut st = Status {
        store: StoreStatus {
            describe: s.describe(),
            ..Default::default()
        },
        ..Default::default()
    };
    let config = match s.get(&keys.config()).await {
        Ok(Some(e)) => {
            st.store.last_ok_ms = Some(status::unix_ms(SystemTime::now()));
            NetworkConfig::parse(&e.value)
                .map_err(|e| st.config_error = Some(e.to_string()))
                .ok()
        }
        Ok(None) => {
            st.store.last_ok_ms = Some(status::unix_ms(SystemTime::now()));
            st.config_error = Some(format!("no network config at {}", keys.config()));
            None
        }
        Err(e) => {
            st.store.last_error = Some(e.to_string());
            None
        }
    };
    let Some(cfg) = config else { return Ok(st) };
    st.network = Some(NetworkStatus {
        name: "default".into(),
        network: cfg.network.to_string(),
        subnet_len: cfg.subnet_len,
        vni: cfg.backend.vni,
        port: cfg.backend.port,
    });
    let kernel = Kernel::connect().await.context("opening netlink")?;
    let Some(link) = kernel.link_by_name(&device_name(cfg.backend.vni)).await? else {
        return Ok(st);
    };
    st.device = Some(DeviceStatus {
        name: link.name.clone(),
        index: link.index,
        mtu: link.mtu,
        mac: link.mac.map(|m| m.to_string()),
        up: link.up,
    });
    let listing = s.list(&keys.subnets()).await?;
    // Our lease is the one naming our device's MAC (the device's local IP would do too).
    let own = listing
        .entries
        .iter()
        .find(|e| Lease::from_entry(e).is_ok_and(|l| Some(l.vtep_mac) == link.mac));
    let own_lease = own.and_then(|e| Lease::from_entry(e).ok());
    if let (Some(e), Some(l)) = (own, &own_lease) {
        st.lease = Some(LeaseStatus {
            subnet: l.subnet.to_string(),
            key: e.key.clone(),
            expires_at_ms: e.expires_at.map(status::unix_ms),
        });
    }
    let public_ip = own_lease
        .as_ref()
        .map(|l| l.public_ip)
        .or(link.vxlan.as_ref().and_then(|v| v.local))
        .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED);
    let host = Host {
        public_ip,
        subnet: own_lease.as_ref().map(|l| l.subnet),
    };
    let set = select_peers(&cfg, &host, &listing.entries);
    // With DirectRouting, same-link peers are routed via the underlay device instead.
    let underlay = link.vxlan.as_ref().and_then(|v| v.link);
    let observed = observe(&kernel, link.index, underlay.unwrap_or(link.index)).await?;
    let direct_net = match (underlay, link.vxlan.as_ref().and_then(|v| v.local)) {
        (Some(u), Some(local)) if cfg.backend.direct_routing => kernel
            .addresses(Some(u))
            .await?
            .into_iter()
            .find(|(_, ip, _)| *ip == std::net::IpAddr::V4(local))
            .and_then(|(_, _, len)| ipnet::Ipv4Net::new(local, len).ok())
            .map(|n| crate::planner::DirectLink { oif: u, net: n.trunc() }),
        _ => None,
    };
    let devices = crate::planner::Devices {
        vxlan: link.index,
        direct: direct_net,
        public: underlay,
    };
    for p in &set.peers {
        let e = peer_entries(p, devices);
        let present = e.neigh.is_none_or(|n| observed.neighs.contains(&n))
            && e.fdb.is_none_or(|f| observed.fdbs.contains(&f))
            && observed.routes.contains(&e.route);
        Arc::make_mut(&mut st.peers).push(PeerStatus {
            key: p.key.clone(),
            subnet: Some(p.subnet.to_string()),
            public_ip: Some(p.public_ip.to_string()),
            vtep_mac: Some(p.vtep_mac.to_string()),
            state: if present {
                PeerState::Programmed
            } else {
                PeerState::Pending
            },
            reason: None,
        });
    }
    for r in &set.rejected {
        Arc::make_mut(&mut st.peers).push(PeerStatus {
            key: r.key.clone(),
            subnet: None,
            public_ip: None,
            vtep_mac: None,
            state: PeerState::Rejected,
            reason: Some(r.rejection.to_string()),
        });
    }
    Ok(st)
}

fn ago(ms: u64, now: SystemTime) -> String {
    let d = status::unix_ms(now).saturating_sub(ms);
    humantime::format_duration(Duration::from_millis(d - d % 1000)).to_string()
}

/// The human-readable table: the default network, then each named network the agent serves,
/// then the named networks it refuses.
pub fn render(st: &Status, now: SystemTime) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "source     {}",
        if st.source.is_empty() { "agent" } else { &st.source }
    );
    if st.default_not_served {
        let _ = writeln!(o, "network    default: not served (--networks)");
    } else {
        render_network(&mut o, st, now);
    }
    if st.source.is_empty() || st.source == "agent" {
        let failing = st.health(now);
        if failing.is_empty() {
            let _ = writeln!(o, "health     ok");
        } else {
            let list: Vec<String> = failing.iter().map(|f| format!("{} ({})", f.check, f.reason)).collect();
            let _ = writeln!(o, "health     FAILING: {}", list.join("; "));
        }
    }
    if !st.default_not_served {
        render_peers(&mut o, st);
    }
    for n in &st.networks {
        let _ = writeln!(o);
        let _ = writeln!(o, "== network {} ==", n.name.as_deref().unwrap_or("?"));
        render_network(&mut o, n, now);
        match &n.l2 {
            Some(l2) => render_l2(&mut o, l2),
            None => render_peers(&mut o, n),
        }
    }
    if !st.forward_drops.is_empty() {
        let _ = writeln!(o);
        for d in &st.forward_drops {
            let _ = writeln!(
                o,
                "forward    {} drops forwarded packets by default and accepts none of {}: pods here \
                 may not reach pods on other hosts (operator guide, Troubleshooting)",
                d.chain, d.subnet
            );
        }
    }
    if !st.refused_networks.is_empty() {
        let _ = writeln!(o);
        for r in &st.refused_networks {
            let _ = writeln!(o, "not served: network {}: {}", r.name, r.reason);
        }
    }
    o
}

/// An L2 network's bridge, endpoints, flood list and flagged endpoints.
fn render_l2(o: &mut String, l2: &status::L2Status) {
    use std::fmt::Write;
    let _ = writeln!(
        o,
        "l2         bridge {}, {} endpoints ({} here, {} remote), flood to [{}]",
        l2.bridge,
        l2.endpoints,
        l2.local,
        l2.remote,
        l2.flood.join(", ")
    );
    if let Some(f) = &l2.vxlan_filter {
        filter_line(o, f);
    }
    for p in &l2.problems {
        let hosts: Vec<String> = p.hosts.iter().map(|h| h.to_string()).collect();
        let _ = writeln!(
            o,
            "FLAGGED    {} {} {} on [{}]: {}",
            p.kind,
            p.mac,
            p.ip,
            hosts.join(", "),
            p.detail
        );
    }
    for r in &l2.rejected {
        let _ = writeln!(o, "rejected   {r}");
    }
}

fn render_network(o: &mut String, st: &Status, now: SystemTime) {
    use std::fmt::Write;
    match (&st.network, &st.config_error) {
        (Some(n), err) => {
            let _ = writeln!(
                o,
                "network    {} (subnets /{}, VNI {}, port {}){}",
                n.network,
                n.subnet_len,
                n.vni,
                n.port,
                err.as_ref()
                    .map(|e| format!("; stored config not in effect: {e}"))
                    .unwrap_or_default()
            );
        }
        (None, Some(e)) => {
            let _ = writeln!(o, "network    none: {e}");
        }
        (None, None) => {
            let _ = writeln!(o, "network    none");
        }
    }
    match &st.lease {
        Some(l) => {
            let exp = l
                .expires_at_ms
                .map(|t| {
                    let left = t.saturating_sub(status::unix_ms(now));
                    format!(
                        "expires in {}",
                        humantime::format_duration(Duration::from_secs(left / 1000))
                    )
                })
                .unwrap_or_else(|| "expiry unknown".into());
            let _ = writeln!(o, "lease      {} ({exp})", l.subnet);
        }
        None => {
            let _ = writeln!(
                o,
                "lease      none{}",
                st.lease_error.as_ref().map(|e| format!(": {e}")).unwrap_or_default()
            );
        }
    }
    match &st.device {
        Some(d) => {
            let _ = writeln!(
                o,
                "device     {} mtu {} mac {} {}",
                d.name,
                d.mtu,
                d.mac.as_deref().unwrap_or("-"),
                if d.up { "up" } else { "DOWN" }
            );
        }
        None => {
            let _ = writeln!(o, "device     none");
        }
    }
    if let Some(i) = &st.iface {
        let _ = writeln!(
            o,
            "interface  {} {} (public {}, mtu {})",
            i.name, i.local_ip, i.public_ip, i.mtu
        );
    }
    let store_state = match (&st.store.last_error, st.store.last_ok_ms) {
        (Some(e), _) => format!("FAILING: {e}"),
        (None, Some(t)) => format!("ok (answered {} ago)", ago(t, now)),
        (None, None) => "not reached".into(),
    };
    let _ = writeln!(o, "store      {} {store_state}", st.store.describe);
    if let Some(r) = &st.last_reconcile {
        let _ = writeln!(
            o,
            "reconcile  {} {} ago, {} kernel operations, {:.1} ms{}",
            if r.ok { "ok" } else { "FAILED" },
            ago(r.at_ms, now),
            r.operations,
            r.duration_ms,
            r.error.as_ref().map(|e| format!(": {e}")).unwrap_or_default()
        );
    }
    if let Some(f) = &st.vxlan_filter {
        filter_line(o, f);
    }
}

/// `filter     bpf sk_lookup: VXLAN only from 2 peers, 0 dropped (peers also in nft table weft)`
fn filter_line(o: &mut String, f: &status::VxlanFilterStatus) {
    use std::fmt::Write;
    let state = format!("VXLAN only from {} peers, {} dropped", f.peers, f.dropped);
    let _ = match f.place.as_str() {
        "bpf" => writeln!(
            o,
            "filter     bpf sk_lookup program: {state} (peers also in nft table {})",
            f.table
        ),
        _ if f.enabled => writeln!(o, "filter     nft table {}: {state}", f.table),
        _ => writeln!(o, "filter     off ({} peers in nft table {})", f.peers, f.table),
    };
}

fn render_peers(o: &mut String, st: &Status) {
    use std::fmt::Write;
    let _ = writeln!(o);
    let _ = writeln!(o, "{:<18} {:<16} {:<18} STATE", "PEER SUBNET", "PUBLIC IP", "VTEP MAC");
    for p in st.peers.iter() {
        let state = match p.state {
            PeerState::Programmed => "programmed".to_string(),
            PeerState::Pending => "pending".to_string(),
            PeerState::Rejected => format!("rejected: {}", p.reason.as_deref().unwrap_or("")),
        };
        let subnet = p
            .subnet
            .clone()
            .unwrap_or_else(|| p.key.rsplit('/').next().unwrap_or("").to_string());
        let _ = writeln!(
            o,
            "{:<18} {:<16} {:<18} {state}",
            subnet,
            p.public_ip.as_deref().unwrap_or("-"),
            p.vtep_mac.as_deref().unwrap_or("-")
        );
    }
}
