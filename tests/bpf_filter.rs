//! The VXLAN peer filter as a BPF sk_lookup program, where the lab's agents put it by default
//! (pinned on the lab's bpffs, as a real host's would be in /sys/fs/bpf/weft):
//! - it outlives its agent: with h1's agent killed (-9), a stranger's VXLAN is still dropped
//!   and counted, and the next agent takes the pinned program over while a peer's pings lose
//!   nothing;
//! - a pin removed by hand is back at the next resync;
//! - a named network on the host moves the filter into nft (it must tell VNIs apart), the
//!   rule first, and back when the network is deleted; strangers are dropped throughout;
//! - an agent whose --bpf-pin-dir is not on bpffs filters in nft and detaches the program its
//!   predecessor left, which would otherwise go on filtering with a peers map nobody updates.
//!
//! Needs root (network namespaces).

mod common;

use common::kernel::{agent_log, sh, wait_for};
use common::vxlan::vxlan_dropped;
use common::{have_root, lab_name, weft_bin, weft_ok};
use std::net::{Ipv4Addr, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;
use weft::lab::agent::AgentSpec;
use weft::lab::probe::Pinger;
use weft::lab::{Lab, LabOptions};

const BURST: u64 = 10;

fn pin_dir(lab: &Lab, host: &str) -> PathBuf {
    weft::lab::state::bpffs_dir(lab.dir()).join(host)
}

fn bpf_dropped(lab: &Lab, host: &str) -> Option<u64> {
    weft::kernel::bpf::pinned_dropped(&pin_dir(lab, host)).unwrap()
}

/// BURST datagrams to `to`'s VXLAN port from the lab's router, which is no peer.
fn stranger_sends(lab: &Lab, to: Ipv4Addr) {
    let router = weft::lab::topology::router_ns(lab.name());
    std::thread::spawn(move || {
        let f = std::fs::File::open(format!("/run/netns/{router}")).unwrap();
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        for _ in 0..BURST {
            s.send_to(&[0x08, 0, 0, 0, 0, 0, 1, 0], (to, 8472)).unwrap();
        }
    })
    .join()
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
}

/// The `filter` line of `weft status` in the host.
fn status_filter(lab: &Lab, host: &str) -> String {
    let bin = weft_bin().display().to_string();
    let text = sh(lab, host, &[&bin, "status"]);
    text.lines()
        .find(|l| l.starts_with("filter "))
        .unwrap_or_default()
        .to_string()
}

fn has_input_chain(lab: &Lab, host: &str) -> bool {
    sh(lab, host, &["nft", "list", "table", "ip", "weft"]).contains("chain input")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bpf_filter_outlives_its_agent_and_gives_way_to_nft_when_the_port_is_shared() {
    if !have_root("the_bpf_filter_outlives_its_agent_and_gives_way_to_nft_when_the_port_is_shared") {
        return;
    }
    let opts = LabOptions::new(&lab_name(), 2)
        .weft_bin(weft_bin())
        .agent_arg("--resync-interval=1s");
    let mut lab = Lab::up(opts).await.expect("lab up");
    let h1 = lab.underlay_ip("h1").unwrap();
    let h1_subnet = lab.leases().await.unwrap()["h1"].subnet;
    assert!(pin_dir(&lab, "h1").join("link").exists());
    assert!(!has_input_chain(&lab, "h1"), "the nft rule is not needed");

    // 1. h1's agent killed: the pinned program still drops a stranger's VXLAN and counts it.
    let pinger = Pinger::start(
        lab.namespace("h2").unwrap(),
        h1_subnet.network(),
        Duration::from_millis(20),
        200,
        Duration::from_secs(15),
    )
    .unwrap();
    let before = bpf_dropped(&lab, "h1").unwrap();
    lab.kill_agent("h1", nix::sys::signal::Signal::SIGKILL).unwrap();
    stranger_sends(&lab, h1);
    assert_eq!(
        bpf_dropped(&lab, "h1").unwrap() - before,
        BURST,
        "dropped while no agent ran"
    );

    // 2. The next agent takes it over (peers kept: the pings lose nothing).
    lab.start_agent("h1").await.unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || agent_log(&lab, "h1")
            .contains("took over the pinned BPF program")),
        "{}",
        agent_log(&lab, "h1")
    );
    std::thread::sleep(Duration::from_millis(500));
    let stats = pinger.stop().unwrap();
    assert!(stats.sent > 20, "{stats:?}");
    assert_eq!(stats.lost, 0, "a peer's pings were lost across the restart: {stats:?}");
    let line = status_filter(&lab, "h1");
    assert!(
        line.contains("bpf sk_lookup program: VXLAN only from 1 peers"),
        "{line}"
    );

    // 3. The link's pin removed by hand: back at the next resync, still filtering.
    std::fs::remove_file(pin_dir(&lab, "h1").join("link")).unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || pin_dir(&lab, "h1").join("link").exists()),
        "pin not repaired:\n{}",
        agent_log(&lab, "h1")
    );
    let before = bpf_dropped(&lab, "h1").unwrap();
    stranger_sends(&lab, h1);
    assert_eq!(bpf_dropped(&lab, "h1").unwrap() - before, BURST);
    assert!(lab.check().await.unwrap().ok());

    // 4. A named network shares the port: the filter moves into nft (VNI-aware), pins go.
    weft_ok(
        &lab,
        &["net", "create", "tenant-a", "--vni", "100", "--cidr", "10.50.0.0/16"],
    );
    assert!(
        wait_for(Duration::from_secs(10), || has_input_chain(&lab, "h1")
            && !pin_dir(&lab, "h1").exists()),
        "filter not moved to nft:\n{}",
        agent_log(&lab, "h1")
    );
    let before = vxlan_dropped(&lab, "h1", "weft");
    stranger_sends(&lab, h1);
    assert_eq!(vxlan_dropped(&lab, "h1", "weft") - before, BURST, "nft drops strangers");
    let line = status_filter(&lab, "h1");
    assert!(line.contains("nft table weft: VXLAN only from 1 peers"), "{line}");
    assert!(lab.check().await.unwrap().ok());

    // ... and back once it is gone.
    weft_ok(&lab, &["net", "delete", "tenant-a", "--yes"]);
    assert!(
        wait_for(Duration::from_secs(10), || !has_input_chain(&lab, "h1")
            && pin_dir(&lab, "h1").join("link").exists()),
        "filter not back in BPF:\n{}",
        agent_log(&lab, "h1")
    );
    let before = bpf_dropped(&lab, "h1").unwrap();
    stranger_sends(&lab, h1);
    assert_eq!(bpf_dropped(&lab, "h1").unwrap() - before, BURST);

    // 5. Restarted with a pin directory outside bpffs: nft filters, the old program is detached
    // (the lab's pins stay, but they no longer filter).
    lab.kill_agent("h1", nix::sys::signal::Signal::SIGTERM).unwrap();
    let elsewhere = lab.dir().join("h1").join("not-bpffs");
    let spec = AgentSpec {
        args: vec!["--bpf-pin-dir".into(), elsewhere.display().to_string()],
        ..Default::default()
    };
    lab.start_agent_with("h1", &spec).await.unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || has_input_chain(&lab, "h1")
            && agent_log(&lab, "h1").contains("BPF program detached")),
        "{}",
        agent_log(&lab, "h1")
    );
    // Said once, not at every resync (1 s here), and retried quietly.
    std::thread::sleep(Duration::from_millis(2500));
    let log = agent_log(&lab, "h1");
    assert_eq!(log.matches("BPF not usable").count(), 1, "{log}");
    assert!(log.contains("not on a bpffs mount"), "{log}");
    let (b_bpf, b_nft) = (bpf_dropped(&lab, "h1").unwrap(), vxlan_dropped(&lab, "h1", "weft"));
    stranger_sends(&lab, h1);
    assert_eq!(bpf_dropped(&lab, "h1").unwrap(), b_bpf, "the old program still runs");
    assert_eq!(vxlan_dropped(&lab, "h1", "weft") - b_nft, BURST);
    assert!(lab.check().await.unwrap().ok());
    lab.down().unwrap();
}
