//! The agent in a real multi-host lab: overlay pings, flannel's exact kernel entries, restarts
//! that lose nothing, and a peer's lease going away. Needs root (network namespaces).

mod common;

use common::kernel::*;
use common::{have_root, lab_name, weft_bin};
use nix::sys::signal::Signal;
use std::time::Duration;
use weft::lab::probe::Pinger;
use weft::lab::{LabGuard, LabOptions};
use weft::subnet_env::SubnetEnv;

async fn lab(nodes: u32) -> LabGuard {
    up(LabOptions::new(&lab_name(), nodes).weft_bin(weft_bin())).await
}

async fn up(opts: LabOptions) -> LabGuard {
    weft::lab::Lab::up(opts).await.expect("lab up")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_reach_each_other_with_flannels_entries() {
    if !have_root("three_hosts_reach_each_other_with_flannels_entries") {
        return;
    }
    let lab = lab(3).await;
    let report = lab.check().await.expect("check");
    assert!(report.ok(), "ping matrix failures: {:?}", report.failures());

    let leases = lab.leases().await.unwrap();
    assert_eq!(leases.len(), 3);
    let mut subnets: Vec<_> = leases.values().map(|l| l.subnet).collect();
    subnets.dedup();
    assert_eq!(subnets.len(), 3, "distinct subnets");

    for host in lab.host_names() {
        let own = &leases[&host];
        // The device, exactly as flannel makes it.
        let link = sh(&lab, &host, &["ip", "-d", "link", "show", "flannel.1"]);
        for want in [
            "mtu 1450",
            "vxlan id 1",
            &format!("local {}", own.public_ip),
            "dev eth0",
            "dstport 8472",
            "nolearning",
        ] {
            assert!(link.contains(want), "{host}: {want:?} not in {link}");
        }
        let addr = sh(&lab, &host, &["ip", "-4", "addr", "show", "flannel.1"]);
        assert!(addr.contains(&format!("inet {}/32", own.subnet.network())), "{addr}");
        assert_eq!(own.vtep_mac.to_string(), device_mac(&lab, &host));

        // One route, one neighbour, one FDB entry per peer, nothing else.
        let (r, n, f) = (routes(&lab, &host), neighs(&lab, &host), fdbs(&lab, &host));
        assert_eq!((r.len(), n.len(), f.len()), (2, 2, 2), "{host}: {r:?} {n:?} {f:?}");
        for (peer, l) in leases.iter().filter(|(h, _)| **h != host) {
            let gw = l.subnet.network();
            assert!(
                r.contains(&format!(
                    "{} via {gw} proto 87 metric {} onlink",
                    l.subnet,
                    weft::planner::state::route_metric(l.subnet)
                )),
                "{host}→{peer}: {r:?}"
            );
            assert!(
                n.contains(&format!("{gw} lladdr {} PERMANENT", l.vtep_mac)),
                "{host}→{peer}: {n:?}"
            );
            assert!(
                f.contains(&format!("{} dst {} self permanent", l.vtep_mac, l.public_ip)),
                "{host}→{peer}: {f:?}"
            );
        }

        let env = SubnetEnv::read(&lab.subnet_file(&host)).expect("subnet.env");
        assert_eq!(env.subnet, own.subnet);
        assert_eq!(env.network.to_string(), "10.0.0.0/16");
        assert_eq!(env.mtu, 1450);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dash_nine_and_restart_loses_no_ping() {
    if !have_root("kill_dash_nine_and_restart_loses_no_ping") {
        return;
    }
    let mut lab = lab(3).await;
    let target = lab.overlay_ip("h1").await.unwrap().expect("h1 lease");
    let before = entries(&lab, "h1");
    let pingers: Vec<Pinger> = ["h2", "h3"]
        .iter()
        .map(|h| {
            Pinger::start(
                lab.namespace(h).unwrap(),
                target,
                Duration::from_millis(20),
                400,
                Duration::from_secs(8),
            )
            .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    lab.kill_agent("h1", Signal::SIGKILL).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    lab.start_agent("h1").await.unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || agent_log(&lab, "h1")
            .matches("reusing the lease")
            .count()
            == 1),
        "restarted agent did not take its lease back:\n{}",
        agent_log(&lab, "h1")
    );
    std::thread::sleep(Duration::from_millis(1000));
    for p in pingers {
        let stats = p.stop().unwrap();
        assert!(stats.sent > 50, "{stats:?}");
        assert_eq!(stats.lost, 0, "pings lost across a kill -9 and restart: {stats:?}");
    }
    assert_eq!(
        lab.overlay_ip("h1").await.unwrap(),
        Some(target),
        "same subnet after restart"
    );
    assert_eq!(entries(&lab, "h1"), before, "restart changed kernel entries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_leaves_everything_in_place_and_deleted_peer_lease_is_cleaned_up() {
    if !have_root("sigterm_leaves_everything_in_place_and_deleted_peer_lease_is_cleaned_up") {
        return;
    }
    let mut lab = lab(3).await;
    let h3 = lab.leases().await.unwrap()["h3"].clone();
    let h3_entries = entries(&lab, "h3");

    let t = std::time::Instant::now();
    lab.kill_agent("h3", Signal::SIGTERM).unwrap();
    // Without the line, the agent was SIGKILLed after the lab's grace period, or died otherwise.
    let log = agent_log(&lab, "h3");
    assert!(
        log.contains("shutting down"),
        "no orderly shutdown on SIGTERM ({:?} until gone):\n{log}",
        t.elapsed()
    );
    assert_eq!(
        entries(&lab, "h3"),
        h3_entries,
        "SIGTERM must leave the kernel state in place"
    );
    assert!(
        lab.leases().await.unwrap().contains_key("h3"),
        "SIGTERM must leave the lease in place"
    );

    let key = weft::lease::lease_key(lab.prefix(), h3.subnet);
    assert!(lab.store().unwrap().delete(&key).await.unwrap());
    let gone = |host: &str| {
        let all = entries(&lab, host).join("\n");
        !all.contains(&h3.subnet.network().to_string()) && !all.contains(&h3.vtep_mac.to_string())
    };
    for host in ["h1", "h2"] {
        assert!(
            wait_for(Duration::from_secs(3), || gone(host)),
            "{host} kept h3's entries: {:?}",
            entries(&lab, host)
        );
        assert_eq!(routes(&lab, host).len(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_hosts_lease_expires_and_peers_forget_it() {
    if !have_root("dead_hosts_lease_expires_and_peers_forget_it") {
        return;
    }
    let opts = LabOptions::new(&lab_name(), 3)
        .weft_bin(weft_bin())
        .agent_arg("--subnet-lease-ttl=4s");
    let mut lab = up(opts).await;
    let h3 = lab.leases().await.unwrap()["h3"].clone();
    // Renewals keep a live host's short lease alive well past its TTL.
    std::thread::sleep(Duration::from_secs(5));
    assert!(lab.check().await.unwrap().ok(), "short TTL leases must be renewed");

    lab.kill_agent("h3", Signal::SIGKILL).unwrap();
    for host in ["h1", "h2"] {
        let subnet = h3.subnet.to_string();
        assert!(
            wait_for(Duration::from_secs(10), || !routes(&lab, host)
                .iter()
                .any(|r| r.starts_with(&subnet))),
            "{host} still routes the dead host's {subnet}"
        );
        assert!(!fdbs(&lab, host).join(" ").contains(&h3.vtep_mac.to_string()));
        assert!(!neighs(&lab, host).join(" ").contains(&h3.subnet.network().to_string()));
    }
    assert!(!lab.leases().await.unwrap().contains_key("h3"));
}
