//! Repair: whatever happens to a host's kernel state, its own lease or the network config, the
//! agent puts back what weft owns and keeps the data plane. Needs root (network namespaces).

mod common;

use common::kernel::*;
use common::{have_root, lab_name, weft_bin};
use std::time::Duration;
use weft::lab::probe::Pinger;
use weft::lab::{Lab, LabGuard, LabOptions};

async fn lab(nodes: u32) -> LabGuard {
    Lab::up(LabOptions::new(&lab_name(), nodes).weft_bin(weft_bin()))
        .await
        .expect("lab up")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_deleted_by_hand_are_repaired() {
    if !have_root("entries_deleted_by_hand_are_repaired") {
        return;
    }
    let lab = lab(3).await;
    let want = entries(&lab, "h1");
    let h2 = lab.leases().await.unwrap()["h2"].clone();
    let (gw, mac, dst) = (
        h2.subnet.network().to_string(),
        h2.vtep_mac.to_string(),
        h2.public_ip.to_string(),
    );

    sh(&lab, "h1", &["ip", "route", "del", &h2.subnet.to_string()]);
    sh(&lab, "h1", &["ip", "neigh", "del", &gw, "dev", "flannel.1"]);
    sh(
        &lab,
        "h1",
        &["bridge", "fdb", "del", &mac, "dev", "flannel.1", "dst", &dst],
    );
    assert!(
        wait_for(Duration::from_secs(2), || entries(&lab, "h1") == want),
        "not repaired: {:?}",
        entries(&lab, "h1")
    );

    // Setting the device down flushes its routes and ARP entries in the kernel.
    sh(&lab, "h1", &["ip", "link", "set", "flannel.1", "down"]);
    assert!(
        wait_for(Duration::from_secs(2), || entries(&lab, "h1") == want),
        "not repaired after device down"
    );
    assert!(sh(&lab, "h1", &["ip", "link", "show", "flannel.1"]).contains(",UP"));
    assert!(lab.check().await.unwrap().ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_device_is_recreated_and_peers_follow_its_new_mac() {
    if !have_root("deleted_device_is_recreated_and_peers_follow_its_new_mac") {
        return;
    }
    let lab = lab(3).await;
    let old_mac = device_mac(&lab, "h1");
    sh(&lab, "h1", &["ip", "link", "del", "flannel.1"]);
    assert!(wait_for(Duration::from_secs(3), || lab
        .exec("h1", &["ip", "link", "show", "flannel.1"])
        .is_ok_and(|o| o.status.success())));
    let new_mac = device_mac(&lab, "h1");
    assert_ne!(old_mac, new_mac);
    for peer in ["h2", "h3"] {
        assert!(
            wait_for(Duration::from_secs(3), || {
                let f = fdbs(&lab, peer).join("\n");
                f.contains(&new_mac) && !f.contains(&old_mac) && !neighs(&lab, peer).join("\n").contains(&old_mac)
            }),
            "{peer} kept the old VTEP MAC {old_mac} or lacks {new_mac}: {:?} {:?}",
            fdbs(&lab, peer),
            neighs(&lab, peer)
        );
    }
    let leases = lab.leases().await.unwrap();
    assert_eq!(leases["h1"].vtep_mac.to_string(), new_mac);
    assert!(wait_for(Duration::from_secs(3), || routes(&lab, "h1").len() == 2));
    assert!(lab.check().await.unwrap().ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_link_flap_is_survived() {
    if !have_root("public_link_flap_is_survived") {
        return;
    }
    let lab = lab(3).await;
    let want = entries(&lab, "h1");
    let router = lab.host("h1").unwrap().router_ip.to_string();
    sh(&lab, "h1", &["ip", "link", "set", "eth0", "down"]);
    std::thread::sleep(Duration::from_millis(300));
    sh(&lab, "h1", &["ip", "link", "set", "eth0", "up"]);
    // The host's own network setup (not weft's) restores its underlay default route.
    sh(&lab, "h1", &["ip", "route", "replace", "default", "via", &router]);
    assert!(
        wait_for(Duration::from_secs(2), || entries(&lab, "h1") == want),
        "{:?}",
        entries(&lab, "h1")
    );
    assert!(wait_for(Duration::from_secs(5), || futures::executor::block_on(
        lab.check()
    )
    .is_ok_and(|r| r.ok())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_lease_deleted_is_taken_again() {
    if !have_root("own_lease_deleted_is_taken_again") {
        return;
    }
    let lab = lab(3).await;
    let h1 = lab.leases().await.unwrap()["h1"].clone();
    let key = weft::lease::lease_key(lab.prefix(), h1.subnet);
    let store = lab.store().unwrap();
    assert!(store.delete(&key).await.unwrap());
    let mut back = None;
    for _ in 0..100 {
        if let Some(e) = store.get(&key).await.unwrap() {
            back = Some(e);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let back = back.expect("agent did not lease its subnet again");
    assert!(back.value.contains(&h1.public_ip.to_string()));
    assert!(agent_log(&lab, "h1").contains("our lease was deleted"));
    assert!(lab.check().await.unwrap().ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_config_is_reported_and_the_data_plane_kept() {
    if !have_root("invalid_config_is_reported_and_the_data_plane_kept") {
        return;
    }
    let lab = lab(2).await;
    let target = lab.overlay_ip("h2").await.unwrap().unwrap();
    let before = entries(&lab, "h1");
    let pinger = Pinger::start(
        lab.namespace("h1").unwrap(),
        target,
        Duration::from_millis(20),
        200,
        Duration::from_secs(5),
    )
    .unwrap();
    let store = lab.store().unwrap();
    let key = weft::network::NetworkKeys::new(lab.prefix()).config();
    store
        .put(&key, r#"{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan","VNI":0}}"#)
        .await
        .unwrap();
    for host in ["h1", "h2"] {
        assert!(
            wait_for(Duration::from_secs(3), || agent_log(&lab, host)
                .contains("Backend.VNI = 0: must be between 1 and 16777215")),
            "{host} did not report the bad field:\n{}",
            agent_log(&lab, host)
        );
    }
    store.put(&key, "{not json").await.unwrap();
    assert!(wait_for(Duration::from_secs(3), || agent_log(&lab, "h1")
        .contains("not valid JSON")));
    std::thread::sleep(Duration::from_millis(500));
    let stats = pinger.stop().unwrap();
    assert_eq!(stats.lost, 0, "{stats:?}");
    assert_eq!(entries(&lab, "h1"), before);
    // The error is logged once, not at every resync.
    assert_eq!(agent_log(&lab, "h1").matches("Backend.VNI = 0").count(), 1);

    store
        .put(&key, r#"{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan"}}"#)
        .await
        .unwrap();
    assert!(lab.check().await.unwrap().ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_network_is_a_clear_error() {
    if !have_root("full_network_is_a_clear_error") {
        return;
    }
    // One leasable /25 in a /24: the second host cannot get a subnet.
    let opts = LabOptions::new(&lab_name(), 2)
        .weft_bin(weft_bin())
        .network_config(r#"{"Network":"10.0.0.0/24","SubnetLen":25,"Backend":{"Type":"vxlan"}}"#)
        .wait(None);
    let lab = Lab::up(opts).await.expect("lab up");
    let msg = "network 10.0.0.0/24 is full: all 1 subnets of length /25 between 10.0.0.128 and 10.0.0.128 are leased";
    assert!(
        wait_for(Duration::from_secs(5), || {
            lab.host_names()
                .iter()
                .filter(|h| agent_log(&lab, h).contains(msg))
                .count()
                == 1
        }),
        "no host reported the full network:\n{}\n{}",
        agent_log(&lab, "h1"),
        agent_log(&lab, "h2")
    );
    assert_eq!(lab.leases().await.unwrap().len(), 1);
    // The agent that got no subnet keeps running and retrying, and says so once.
    std::thread::sleep(Duration::from_secs(2));
    for h in lab.host_names() {
        assert!(lab.agent_pid(&h).is_some(), "{h}'s agent exited");
        assert!(agent_log(&lab, &h).matches(msg).count() <= 1);
    }
}
