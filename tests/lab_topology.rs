//! The lab's topology without agents: namespaces, veths, routing through the router, the probe
//! and the pinger, and that `down` and the guard leave nothing behind.

mod common;

use common::{assert_gone, have_root, lab_name, namespaces_of};
use std::net::Ipv4Addr;
use std::time::Duration;
use weft::lab::{self, probe, Lab, LabOptions, Pinger};

#[tokio::test]
async fn three_hosts_reach_each_other_across_the_router() {
    if !have_root("three_hosts_reach_each_other_across_the_router") {
        return;
    }
    let name = lab_name();
    let lab = Lab::up(LabOptions::topology_only(&name, 3)).await.expect("lab up");
    let mut ns = namespaces_of(&name);
    ns.sort();
    assert_eq!(
        ns,
        [
            format!("{name}-h1"),
            format!("{name}-h2"),
            format!("{name}-h3"),
            format!("{name}-router")
        ]
    );
    assert_eq!(lab.underlay_ip("h1").unwrap(), Ipv4Addr::new(192, 0, 2, 10));
    assert_eq!(lab.underlay_ip("h3").unwrap(), Ipv4Addr::new(203, 0, 113, 10));

    // Every host reaches every other host's underlay address (routed: three different racks).
    let hosts = lab.host_names();
    let mut pairs = Vec::new();
    for a in &hosts {
        for b in hosts.iter().filter(|b| *b != a) {
            pairs.push((lab.namespace(a).unwrap().to_string(), lab.underlay_ip(b).unwrap()));
        }
    }
    let answered = probe::wait_all(&pairs, Duration::from_millis(5), Duration::from_secs(5)).unwrap();
    assert!(
        answered.iter().all(Option::is_some),
        "unanswered: {pairs:?} {answered:?}"
    );

    let h1 = lab.namespace("h1").unwrap();
    assert!(probe::reach(h1, Ipv4Addr::new(203, 0, 113, 10), Duration::from_secs(1)).unwrap());
    // An address nobody has: one echo, no answer, bounded wait.
    let t = std::time::Instant::now();
    assert!(!probe::reach(h1, Ipv4Addr::new(203, 0, 113, 99), Duration::from_millis(200)).unwrap());
    assert!(t.elapsed() < Duration::from_secs(1));

    // The host side is what the agent will see: eth0 with the rack address, default via .1.
    let route = lab.exec("h2", &["ip", "route", "show", "default"]).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&route.stdout).trim(),
        "default via 198.51.100.1 dev eth0"
    );
    // Nothing of the lab in the root namespace.
    let links = std::process::Command::new("ip").args(["-o", "link"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&links.stdout).contains(&name),
        "lab links in the root namespace"
    );

    // The continuous pinger: 25 echoes 20 ms apart, all answered.
    let pinger = Pinger::start(
        h1,
        Ipv4Addr::new(198, 51, 100, 10),
        Duration::from_millis(20),
        25,
        Duration::from_secs(5),
    )
    .unwrap();
    let stats = pinger.wait().unwrap();
    assert_eq!((stats.sent, stats.received, stats.lost), (25, 25, 0), "{stats:?}");
    // Stopped early, it counts what it sent; a dead destination shows up as lost.
    let pinger = Pinger::start(
        h1,
        Ipv4Addr::new(198, 51, 100, 99),
        Duration::from_millis(20),
        1000,
        Duration::from_secs(10),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stats = pinger.stop().unwrap();
    assert!(stats.sent >= 5 && stats.sent <= 20, "{stats:?}");
    assert_eq!(stats.received, 0);
    assert_eq!(stats.longest_gap, stats.sent);

    let removed = lab.down().unwrap();
    assert_eq!(removed.len(), 4);
    assert_gone(&name);
}

#[tokio::test]
async fn hosts_can_be_added_and_removed() {
    if !have_root("hosts_can_be_added_and_removed") {
        return;
    }
    let name = lab_name();
    let mut lab = Lab::up(LabOptions::topology_only(&name, 2)).await.expect("lab up");
    let added = lab.add_host().await.unwrap();
    assert_eq!(added.name, "h3");
    let added = lab.add_host().await.unwrap();
    assert_eq!(added.name, "h4");
    assert_eq!(lab.underlay_ip("h4").unwrap(), Ipv4Addr::new(198, 18, 0, 10));
    let h1 = lab.namespace("h1").unwrap().to_string();
    assert!(probe::reach(&h1, Ipv4Addr::new(198, 18, 0, 10), Duration::from_secs(1)).unwrap());

    lab.remove_host("h2").await.unwrap();
    assert_eq!(lab.host_names(), ["h1", "h3", "h4"]);
    assert!(!namespaces_of(&name).contains(&format!("{name}-h2")));
    assert!(!probe::reach(&h1, Ipv4Addr::new(198, 51, 100, 10), Duration::from_millis(200)).unwrap());
    // Another process sees the same lab.
    let other = Lab::open(&name).unwrap();
    assert_eq!(other.host_names(), ["h1", "h3", "h4"]);
    // Indexes are never reused.
    assert_eq!(lab.add_host().await.unwrap().name, "h5");
    drop(lab);
    assert_gone(&name);
}

#[test]
fn the_guard_cleans_up_when_a_test_panics() {
    if !have_root("the_guard_cleans_up_when_a_test_panics") {
        return;
    }
    let name = lab_name();
    let n = name.clone();
    let result = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let _lab = Lab::up(LabOptions::topology_only(&n, 2)).await.expect("lab up");
            assert_eq!(namespaces_of(&n).len(), 3);
            panic!("deliberate");
        })
    })
    .join();
    assert!(result.is_err(), "the thread should have panicked");
    assert_gone(&name);
}

#[tokio::test]
async fn down_cleans_up_after_a_lab_whose_owner_died() {
    if !have_root("down_cleans_up_after_a_lab_whose_owner_died") {
        return;
    }
    let name = lab_name();
    // `detach` stands for `lab up` having exited (or been killed): nothing will tear down.
    let lab = Lab::up(LabOptions::topology_only(&name, 2))
        .await
        .expect("lab up")
        .detach();
    let ns = lab.namespace("h2").unwrap().to_string();
    drop(lab);
    let mut sleeper = std::process::Command::new("ip")
        .args(["netns", "exec", &ns, "sleep", "60"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    // A second `up` with the same name refuses.
    let again = Lab::up(LabOptions::topology_only(&name, 2)).await;
    assert!(matches!(again, Err(lab::LabError::Exists { .. })), "{:?}", again.err());

    let removed = lab::down(&name).unwrap();
    assert_eq!(removed.len(), 3);
    let status = sleeper.wait().unwrap();
    assert!(!status.success(), "the process in the lab was killed");
    assert_gone(&name);
    // down is idempotent.
    assert_eq!(lab::down(&name).unwrap(), Vec::<String>::new());
}

#[tokio::test]
async fn bad_names_are_refused_before_anything_is_made() {
    if !have_root("bad_names_are_refused_before_anything_is_made") {
        return;
    }
    for bad in ["", "UPPER", "toolongname", "a-b"] {
        let r = Lab::up(LabOptions::topology_only(bad, 1)).await;
        assert!(matches!(r, Err(lab::LabError::BadName(_))), "{bad}: {:?}", r.err());
    }
}
