//! The lab with real agents: up, the check matrix, add (with its convergence time), remove,
//! an agent kill -9 and restart under a continuous pinger, and down.

mod common;

use common::{assert_gone, have_root, lab_name, weft_bin};
use nix::sys::signal::Signal;
use std::time::Duration;
use weft::lab::{Lab, LabOptions, Pinger};

#[tokio::test]
async fn a_three_host_overlay_converges_grows_and_shrinks() {
    if !have_root("a_three_host_overlay_converges_grows_and_shrinks") {
        return;
    }
    let name = lab_name();
    let opts = LabOptions::new(&name, 3)
        .weft_bin(weft_bin())
        .agent_arg("--subnet-lease-ttl")
        .agent_arg("30s")
        .agent_env("RUST_LOG", "debug")
        .wait(Some(Duration::from_secs(30)));
    let mut lab = Lab::up(opts).await.expect("lab up");
    assert!(lab.converged_in().is_some());
    let report = lab.check().await.unwrap();
    assert!(report.ok(), "{report}");

    // Overlay addresses are the leases' network addresses, inside 10.0.0.0/16.
    let net: ipnet::Ipv4Net = "10.0.0.0/16".parse().unwrap();
    for h in lab.host_names() {
        let ip = lab.overlay_ip(&h).await.unwrap().expect("a lease");
        assert!(net.contains(&ip) && ip.octets()[3] == 0, "{h}: {ip}");
        assert!(lab.agent_pid(&h).is_some());
    }

    let added = lab.add_host().await.unwrap();
    assert_eq!(added.name, "h4");
    let took = added.reachable_after.expect("measured");
    assert!(took < Duration::from_secs(10), "{took:?}");

    // kill -9 and restart of an agent under a 20 ms pinger: the datapath stays up.
    let h1 = lab.namespace("h1").unwrap().to_string();
    let to = lab.overlay_ip("h2").await.unwrap().unwrap();
    let pinger = Pinger::start(&h1, to, Duration::from_millis(20), 1000, Duration::from_secs(10)).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    lab.kill_agent("h2", Signal::SIGKILL).unwrap();
    assert_eq!(lab.agent_pid("h2"), None);
    lab.start_agent("h2").await.unwrap();
    lab.wait_converged(Duration::from_secs(20)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stats = pinger.stop().unwrap();
    assert!(stats.sent > 10, "{stats:?}");
    eprintln!("ping h1 -> h2 across an agent restart: {stats:?}");
    assert_eq!(
        lab.overlay_ip("h2").await.unwrap(),
        Some(to),
        "same subnet back after restart"
    );

    // Remove: lease gone from the store, the others stop routing to it.
    lab.remove_host("h3").await.unwrap();
    assert!(!lab.leases().await.unwrap().contains_key("h3"));
    let report = lab.check().await.unwrap();
    assert!(report.ok(), "{report}");
    assert_eq!(report.hosts, ["h1", "h2", "h4"]);

    lab.down().unwrap();
    assert_gone(&name);
}
