//! The overlay on etcd, in the namespace lab (etcd inside the lab's router namespace): a mixed
//! lab where one host is configured the way flannel does it; one etcd lease per live agent after
//! many renewals and a restart; an agent whose watch fell behind a compaction; etcd stopped for
//! 60 s under pings; one member of three killed. Needs root; the tests run concurrently.

mod common;

use common::{assert_gone, have_root, lab_name, weft_bin};
use nix::sys::signal::Signal;
use std::time::{Duration, Instant};
use weft::lab::{Lab, LabGuard, LabOptions, LabStore, Pinger};
use weft::lease::lease_key;

async fn etcd_lab(name: &str, nodes: u32, members: u32, ttl: &str) -> LabGuard {
    let opts = LabOptions::new(name, nodes)
        .weft_bin(weft_bin())
        .store(LabStore::Etcd { members })
        .agent_arg("--subnet-lease-ttl")
        .agent_arg(ttl)
        .agent_env("RUST_LOG", "info,weft=debug")
        .wait(Some(Duration::from_secs(60)));
    Lab::up(opts).await.expect("lab up with etcd")
}

fn sh(lab: &Lab, host: &str, cmd: &str) {
    let argv: Vec<&str> = cmd.split_whitespace().collect();
    let out = lab.exec(host, &argv).unwrap();
    assert!(
        out.status.success(),
        "{host}: {cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn etcdctl(lab: &Lab, args: &[&str]) -> String {
    let out = lab.etcdctl(args).unwrap();
    assert!(
        out.status.success(),
        "etcdctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn lease_ids(lab: &Lab) -> Vec<String> {
    etcdctl(lab, &["lease", "list"])
        .lines()
        .skip(1)
        .map(str::to_string)
        .collect()
}

fn log_of(lab: &Lab, host: &str) -> String {
    std::fs::read_to_string(lab.agent_log(host)).unwrap_or_default()
}

/// Two weft hosts and one flannel host (its lease written with flannel's exact JSON on a 24 h
/// etcd lease, its VXLAN device and entries configured by hand the way flanneld does) reach each
/// other. Meanwhile the weft agents renew every 1.5 s and one restarts: etcd still holds one lease
/// per host. Then an agent's watch falls behind a compaction: it re-lists and keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_flannel_and_weft_hosts_leases_and_compaction() {
    if !have_root("mixed_flannel_and_weft_hosts_leases_and_compaction") {
        return;
    }
    let name = lab_name();
    let mut lab = etcd_lab(&name, 3, 1, "3s").await;
    let store = lab.store().unwrap();

    // h3 becomes a flannel host: its weft agent, device and lease go.
    lab.kill_agent("h3", Signal::SIGKILL).unwrap();
    sh(&lab, "h3", "ip link del flannel.1");
    let old = lab.leases().await.unwrap()["h3"].clone();
    store.delete(&lease_key(lab.prefix(), old.subnet)).await.unwrap();
    let weft_leases = lab.leases().await.unwrap();
    let subnet = (40..250)
        .map(|i| format!("10.0.{i}.0/24").parse::<ipnet::Ipv4Net>().unwrap())
        .find(|s| weft_leases.values().all(|l| l.subnet != *s))
        .unwrap();
    let mac = "da:5a:c0:04:31:8a";
    let key = lease_key(lab.prefix(), subnet);
    let json = format!(
        r#"{{"PublicIP":"203.0.113.10","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#
    );
    let granted = etcdctl(&lab, &["lease", "grant", "86400"]);
    let id = granted.split_whitespace().nth(1).unwrap().to_string();
    etcdctl(&lab, &["put", "--lease", &id, &key, &json]);
    sh(
        &lab,
        "h3",
        &format!(
            "ip link add flannel.1 address {mac} type vxlan id 1 local 203.0.113.10 dev eth0 dstport 8472 nolearning"
        ),
    );
    sh(
        &lab,
        "h3",
        &format!("ip addr add {}/32 dev flannel.1", subnet.network()),
    );
    sh(&lab, "h3", "ip link set flannel.1 up");
    for (host, l) in weft_leases.iter().filter(|(h, _)| *h != "h3") {
        let peer = l.subnet.network();
        let underlay = lab.underlay_ip(host).unwrap();
        sh(
            &lab,
            "h3",
            &format!(
                "ip neigh replace {peer} lladdr {} dev flannel.1 nud permanent",
                l.vtep_mac
            ),
        );
        sh(
            &lab,
            "h3",
            &format!(
                "bridge fdb append {} dst {underlay} dev flannel.1 self permanent",
                l.vtep_mac
            ),
        );
        sh(
            &lab,
            "h3",
            &format!("ip route replace {} via {peer} dev flannel.1 onlink", l.subnet),
        );
    }
    let took = lab
        .wait_converged(Duration::from_secs(30))
        .await
        .expect("weft and flannel hosts reach each other");
    eprintln!("mixed lab converged {took:?} after the flannel host was configured");
    let report = lab.check().await.unwrap();
    assert!(report.ok(), "{report}");

    // Renewals every 1.5 s for 8 s, then a restart of h1: one lease per host, no more.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(
        log_of(&lab, "h1").matches("lease renewed").count() >= 3,
        "renewals happened"
    );
    assert_eq!(lease_ids(&lab).len(), 3, "{:?}", etcdctl(&lab, &["lease", "list"]));
    let h1_subnet = lab.leases().await.unwrap()["h1"].subnet;
    lab.kill_agent("h1", Signal::SIGKILL).unwrap();
    lab.start_agent("h1").await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        lab.leases().await.unwrap()["h1"].subnet,
        h1_subnet,
        "same subnet after restart"
    );
    let ids = lease_ids(&lab);
    assert_eq!(ids.len(), 3, "after a restart: {ids:?}");
    assert!(ids.contains(&id), "flannel's lease untouched");

    // Compaction: h2's agent is frozen while 3000 writes (12 MB) pile up in its watch and the
    // history is compacted; thawed, its watch is behind the compaction, so it re-lists.
    lab.signal_agent("h2", Signal::SIGSTOP).unwrap();
    let blob = "x".repeat(4096);
    let mut rev = 0;
    for i in 0..3000 {
        rev = store.put(&format!("{}/junk/{i}", lab.prefix()), &blob).await.unwrap();
    }
    etcdctl(&lab, &["compact", &rev.to_string()]);
    etcdctl(&lab, &["del", "--prefix", &format!("{}/junk/", lab.prefix())]);
    lab.signal_agent("h2", Signal::SIGCONT).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !log_of(&lab, "h2").contains("store history lost; listing again") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        log_of(&lab, "h2").contains("store history lost; listing again"),
        "h2 re-listed after the compaction"
    );
    // ...and still follows the store. The flannel host goes (it would never learn of a new host:
    // nothing drives it), then a new host is reached by all, h2 included.
    lab.remove_host("h3").await.unwrap();
    let added = lab.add_host().await.expect("a host added after the compaction");
    eprintln!("host added after compaction reachable in {:?}", added.reachable_after);
    assert_eq!(
        lease_ids(&lab).len(),
        3,
        "h1, h2 and the new host; flannel's lease revoked with its key"
    );
    for h in ["h1", "h2"] {
        let routes = String::from_utf8_lossy(&lab.exec(h, &["ip", "route"]).unwrap().stdout).into_owned();
        assert!(
            !routes.contains(&subnet.to_string()),
            "{h} dropped the flannel host's route:\n{routes}"
        );
    }

    lab.down().unwrap();
    assert_gone(&name);
}

/// etcd stopped for 60 s: zero pings lost between hosts already up, the agents keep running and
/// say the store is unreachable; etcd back, they keep their subnets and pick up a host leased
/// while they were still reconnecting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_stopped_for_a_minute_under_pings() {
    if !have_root("etcd_stopped_for_a_minute_under_pings") {
        return;
    }
    let name = lab_name();
    let mut lab = etcd_lab(&name, 3, 1, "24h").await;
    let before = lab.leases().await.unwrap();
    let h1 = lab.namespace("h1").unwrap().to_string();
    let h3 = lab.namespace("h3").unwrap().to_string();
    let to2 = before["h2"].subnet.network();
    let to1 = before["h1"].subnet.network();
    let p12 = Pinger::start(&h1, to2, Duration::from_millis(100), 1000, Duration::from_secs(100)).unwrap();
    let p31 = Pinger::start(&h3, to1, Duration::from_millis(100), 1000, Duration::from_secs(100)).unwrap();

    lab.stop_etcd(1, Signal::SIGTERM).unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
    for h in ["h1", "h2", "h3"] {
        assert!(lab.agent_pid(h).is_some(), "{h}'s agent keeps running");
        let log = log_of(&lab, h);
        assert!(
            log.contains("store unavailable"),
            "{h} reports the store unreachable:\n{log}"
        );
    }
    lab.start_etcd(1).unwrap();
    let added = lab
        .add_host()
        .await
        .expect("a host leased right after etcd returned is reached by all");
    eprintln!("host added after the outage reachable in {:?}", added.reachable_after);
    let after = lab.leases().await.unwrap();
    for h in ["h1", "h2", "h3"] {
        assert_eq!(after[h].subnet, before[h].subnet, "{h} kept its subnet");
        assert!(log_of(&lab, h).contains("store reachable again"), "{h} reconnected");
    }
    let report = lab.check().await.unwrap();
    assert!(report.ok(), "{report}");
    for (what, p) in [("h1 -> h2", p12), ("h3 -> h1", p31)] {
        let stats = p.stop().unwrap();
        eprintln!("{what} across the etcd outage: {stats:?}");
        assert!(stats.sent >= 600, "{stats:?}");
        assert_eq!(stats.lost, 0, "{what}: {stats:?}");
    }
    lab.down().unwrap();
    assert_gone(&name);
}

/// Three members, one killed: pings go on, and a new host's lease still reaches every agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_three_etcd_members_killed() {
    if !have_root("one_of_three_etcd_members_killed") {
        return;
    }
    let name = lab_name();
    let mut lab = etcd_lab(&name, 3, 3, "24h").await;
    assert_eq!(lab.etcd_members().len(), 3);
    let leases = lab.leases().await.unwrap();
    let h1 = lab.namespace("h1").unwrap().to_string();
    let p = Pinger::start(
        &h1,
        leases["h3"].subnet.network(),
        Duration::from_millis(50),
        1000,
        Duration::from_secs(40),
    )
    .unwrap();
    // The first member: every agent listed it first, so their connections are likely on it.
    lab.stop_etcd(1, Signal::SIGKILL).unwrap();
    let t = Instant::now();
    let added = lab
        .add_host()
        .await
        .expect("a new lease propagates with two members of three");
    eprintln!(
        "host added with one etcd member dead: reachable after {:?} ({:?} after the kill)",
        added.reachable_after,
        t.elapsed()
    );
    let report = lab.check().await.unwrap();
    assert!(report.ok(), "{report}");
    for h in ["h1", "h2", "h3"] {
        assert!(lab.agent_pid(h).is_some());
    }
    let stats = p.stop().unwrap();
    eprintln!("h1 -> h3 across the member kill: {stats:?}");
    assert_eq!(stats.lost, 0, "{stats:?}");
    lab.down().unwrap();
    assert_gone(&name);
}
