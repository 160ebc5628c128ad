//! Issue #8 part 3: weft-cni in an L2 network, driven as a runtime drives it, with Debian's
//! `bridge` and `static` plugins (/usr/lib/cni) as delegates, on a three-host lab.
//!
//! One lab, agents running throughout, `weft net create l2cni --mode l2`: (a) a container ADDed
//! on each host gets a distinct address of the flat CIDR and its endpoint registered on its host,
//! and every container pings every other; CHECK passes; (b) ADDs on two hosts at once never give
//! one address twice, and two hosts asking for one address by name get it once, the other a
//! clear refusal; (c) DEL removes the endpoint from every host's FDB and neighbour table and
//! releases the address, and a second DEL succeeds; (d) `weft endpoint add` and `weft lab
//! endpoint add` endpoints share the address space with containers, and reach them; (e) an
//! unknown network and a host whose agent is not running give a clear "try again later" error,
//! and a DEL there succeeds once the agent is back; (f) removing a host removes its lab
//! endpoints. Containers are the lab's pod namespaces (`NAME-hI-pJ`), so the lab's guard removes
//! them. Needs root; a few seconds.

mod common;

use common::cni::{plugin_bin, run, Reply};
use common::kernel::{sh, wait_for};
use common::{assert_gone, create_l2_network, have_root, lab_name, weft_bin, weft_ok};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;
use weft::lab::{netns, topology, Lab, LabOptions};

const NET: &str = "l2cni";
const VNI: u32 = 320;
const CIDR: &str = "10.72.0.0/16";
const PLUGINS: &str = "/usr/lib/cni";

fn conf(lab: &Lab, host: &str, network: &str, extra: Value) -> String {
    let mut c = json!({
        "cniVersion": "1.0.0",
        "name": "l2-test",
        "type": "weft-cni",
        "weftNetwork": network,
        "subnetFile": lab.subnet_file(host),
        "dataDir": lab.dir().join(host).join("cni"),
    });
    if let (Value::Object(c), Value::Object(extra)) = (&mut c, extra) {
        c.extend(extra);
    }
    c.to_string()
}

/// One call of weft-cni inside `host`'s namespace for container namespace `pod`.
fn cni(lab: &Lab, command: &str, host: &str, pod: &str, stdin: &str) -> Reply {
    let env = [
        ("CNI_COMMAND", command.to_string()),
        ("CNI_CONTAINERID", pod.to_string()),
        ("CNI_NETNS", format!("/run/netns/{pod}")),
        ("CNI_IFNAME", "eth0".to_string()),
        ("CNI_PATH", PLUGINS.to_string()),
    ];
    run(Some(lab.namespace(host).unwrap()), &plugin_bin(), &env, stdin)
}

/// A container namespace on `host` (a lab pod name, so the lab removes it).
fn pod(lab: &Lab, host: &str, j: u32) -> String {
    let ns = topology::pod_ns(lab.name(), host, j);
    netns::add_namespaces(std::slice::from_ref(&ns)).unwrap();
    ns
}

/// ADD; returns the result and the container's address.
fn add(lab: &Lab, host: &str, pod: &str, extra: Value) -> (Value, Ipv4Addr) {
    let r = cni(lab, "ADD", host, pod, &conf(lab, host, NET, extra));
    let v = r.success().json();
    let ip = weft::lab::pods::result_ip(&v).unwrap_or_else(|| panic!("no address in {v}"));
    (v, ip)
}

fn ping(ns: &str, to: Ipv4Addr) -> bool {
    netns::exec(ns, &["ping", "-n", "-q", "-c", "1", "-W", "1", &to.to_string()]).is_ok_and(|o| o.status.success())
}

/// `weft endpoint list` lines: (MAC, IP, host).
fn endpoints(lab: &Lab) -> Vec<(String, String, String)> {
    weft_ok(lab, &["endpoint", "list", NET])
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3).then(|| (f[0].to_string(), f[1].to_string(), f[2].to_string()))
        })
        .collect()
}

fn mac_of(result: &Value) -> String {
    result["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["sandbox"].is_string())
        .unwrap()["mac"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn l2_config_errors_need_no_agent() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("CNI_COMMAND", "ADD".to_string()),
        ("CNI_CONTAINERID", "c1".to_string()),
        ("CNI_NETNS", "/run/netns/none".to_string()),
        ("CNI_IFNAME", "eth0".to_string()),
        // Empty: no delegate could run even by mistake.
        ("CNI_PATH", dir.path().display().to_string()),
    ];
    let base = json!({"cniVersion": "1.0.0", "name": "l2", "type": "weft-cni", "weftNetwork": "nosuch",
                      "subnetFile": dir.path().join("subnet.env"), "dataDir": dir.path().join("data")});
    let msg = run(None, &plugin_bin(), &env, &base.to_string()).error(11);
    assert!(msg.contains("does not serve an L2 network \"nosuch\""), "{msg}");
    let mut bad = base.clone();
    bad["delegate"] = json!({"bridge": "cni0"});
    assert!(run(None, &plugin_bin(), &env, &bad.to_string())
        .error(2)
        .contains("delegate.bridge"));
    bad = base.clone();
    bad["weftNetwork"] = json!("No/Such");
    assert!(run(None, &plugin_bin(), &env, &bad.to_string())
        .error(7)
        .contains("weftNetwork"));
    // DEL of a container of a network this host does not serve: nothing to do.
    let del = [
        ("CNI_COMMAND", "DEL".to_string()),
        env[1].clone(),
        env[3].clone(),
        env[4].clone(),
    ];
    run(None, &plugin_bin(), &del, &base.to_string()).success();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weft_cni_joins_containers_to_an_l2_network_across_hosts() {
    if !have_root("weft_cni_joins_containers_to_an_l2_network_across_hosts") {
        return;
    }
    let name = lab_name();
    let opts = LabOptions::new(&name, 3)
        .weft_bin(weft_bin())
        .wait(Some(Duration::from_secs(30)));
    let mut lab = Lab::up(opts).await.expect("lab up");
    let hosts = lab.host_names();
    create_l2_network(&lab, NET, VNI, CIDR);
    for h in &hosts {
        let file = weft::network::named_subnet_file(&lab.subnet_file(h), NET);
        assert!(
            wait_for(Duration::from_secs(15), || file.exists()),
            "{h}: the agent did not write {}",
            file.display()
        );
    }

    // (a) One container per host; distinct addresses; registered on their hosts; all ping.
    let mut pods = Vec::new();
    for h in &hosts {
        let p = pod(&lab, h, 1);
        let (result, ip) = add(&lab, h, &p, json!({}));
        pods.push((h.clone(), p, result, ip));
    }
    let ips: BTreeSet<Ipv4Addr> = pods.iter().map(|p| p.3).collect();
    assert_eq!(ips.len(), 3, "{ips:?}");
    assert!(ips
        .iter()
        .all(|ip| CIDR.parse::<ipnet::Ipv4Net>().unwrap().contains(ip)));
    let registered = endpoints(&lab);
    for (h, _, result, ip) in &pods {
        let want = (mac_of(result), ip.to_string(), lab.underlay_ip(h).unwrap().to_string());
        assert!(registered.contains(&want), "{want:?} not in {registered:?}");
    }
    let all_ping = || {
        std::thread::scope(|s| {
            let hs: Vec<_> = pods
                .iter()
                .flat_map(|a| pods.iter().filter(move |b| b.1 != a.1).map(move |b| (a, b)))
                .map(|(a, b)| s.spawn(move || ping(&a.1, b.3)))
                .collect();
            hs.into_iter().all(|h| h.join().unwrap())
        })
    };
    assert!(
        wait_for(Duration::from_secs(20), all_ping),
        "containers do not reach each other"
    );
    let (h1, p1, r1, _) = &pods[0];
    let mut check = serde_json::from_str::<Value>(&conf(&lab, h1, NET, json!({}))).unwrap();
    check["prevResult"] = r1.clone();
    cni(&lab, "CHECK", h1, p1, &check.to_string()).success();

    // (b) Concurrent ADDs on h1 and h2: every address once. Then both ask for one address.
    let batch: Vec<(String, String)> = (2..=5)
        .flat_map(|j| hosts[..2].iter().map(move |h| (h.clone(), j)))
        .map(|(h, j)| {
            let p = pod(&lab, &h, j);
            (h, p)
        })
        .collect();
    let got: Vec<Ipv4Addr> = std::thread::scope(|s| {
        let hs: Vec<_> = batch
            .iter()
            .map(|(h, p)| s.spawn(|| add(&lab, h, p, json!({})).1))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut seen = ips.clone();
    for ip in &got {
        assert!(seen.insert(*ip), "{ip} given twice: {got:?} after {ips:?}");
    }
    let wanted = json!({"runtimeConfig": {"ips": ["10.72.0.200/16"]}});
    let racers: Vec<(String, String)> = hosts[..2].iter().map(|h| (h.clone(), pod(&lab, h, 9))).collect();
    let replies: Vec<Reply> = std::thread::scope(|s| {
        let hs: Vec<_> = racers
            .iter()
            .map(|(h, p)| {
                let c = conf(&lab, h, NET, wanted.clone());
                let lab = &lab;
                s.spawn(move || cni(lab, "ADD", h, p, &c))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(replies.iter().filter(|r| r.ok).count(), 1, "{replies:?}");
    let msg = replies.iter().find(|r| !r.ok).unwrap().error(100);
    assert!(
        msg.contains("10.72.0.200 is already taken: claimed by container"),
        "{msg}"
    );

    // (c) DEL of h2's container: gone from every host's FDB and neighbours, address released.
    let (h2, p2, r2, ip2) = &pods[1];
    let mac2 = mac_of(r2);
    let del_conf = conf(&lab, h2, NET, json!({}));
    cni(&lab, "DEL", h2, p2, &del_conf).success();
    for h in &hosts {
        let gone = wait_for(Duration::from_secs(10), || {
            let fdb = sh(&lab, h, &["bridge", "fdb", "show", "dev", &format!("weft.{VNI}")]);
            let neigh = sh(&lab, h, &["ip", "neigh", "show", "dev", &format!("weftbr.{VNI}")]);
            !fdb.contains(&mac2) && !neigh.contains(&format!("{ip2} "))
        });
        assert!(gone, "{h}: {mac2} / {ip2} still programmed after DEL");
    }
    assert!(!endpoints(&lab).iter().any(|e| e.0 == mac2));
    let store = lab.store().unwrap();
    let claims = store
        .list(&weft::l2ipam::ips_prefix(&format!("{}/networks/{NET}", lab.prefix())))
        .await
        .unwrap();
    assert!(
        !claims.entries.iter().any(|e| e.key.ends_with(&format!("/{ip2}"))),
        "claim of {ip2} kept"
    );
    cni(&lab, "DEL", h2, p2, &del_conf).success();

    // (d) `weft endpoint add` of a container's address is refused; so is a lab endpoint asking
    // for it, while one with a free address is reached by the containers.
    let out = std::process::Command::new(weft_bin())
        .args([
            "endpoint",
            "add",
            NET,
            "--host",
            "192.0.2.99",
            "--mac",
            "02:00:00:00:99:99",
        ])
        .args(["--ip", &pods[0].3.to_string(), "--store", lab.store_url()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("is claimed by container"),
        "{stderr}"
    );
    // A lab endpoint asking for a container's address is refused; one with a free address
    // is reached by the containers.
    let err = lab
        .add_endpoint(NET, "h3", Some(pods[0].3))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("already taken"), "{err}");
    let ep = lab.add_endpoint(NET, "h3", Some(*ip2)).await.expect("lab endpoint");
    assert_eq!(ep.ip, *ip2, "the released address is free again");
    let ep_ns = topology::endpoint_ns(lab.name(), ep.n);
    // The address now has another MAC: h1's container forgets the old one (as it would after
    // its neighbour entry timed out).
    netns::exec(p1, &["ip", "neigh", "flush", "dev", "eth0"]).unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || ping(p1, ep.ip) && ping(&ep_ns, pods[0].3)),
        "lab endpoint and container do not reach each other"
    );
    lab.delete_endpoint(NET, ep.ip).await.expect("lab endpoint delete");
    assert!(!netns::list().unwrap().contains(&ep_ns));

    // (e) Unknown network; a host whose agent is down.
    let msg = cni(
        &lab,
        "ADD",
        h1,
        &pod(&lab, h1, 20),
        &conf(&lab, h1, "nosuch", json!({})),
    )
    .error(11);
    assert!(msg.contains("does not serve an L2 network \"nosuch\""), "{msg}");
    lab.kill_agent("h3", nix::sys::signal::Signal::SIGKILL).unwrap();
    let p = pod(&lab, "h3", 20);
    let links = sh(&lab, "h3", &["ip", "-br", "link"]);
    let msg = cni(&lab, "ADD", "h3", &p, &conf(&lab, "h3", NET, json!({}))).error(11);
    assert!(msg.contains("cannot reach the weft agent of L2 network l2cni"), "{msg}");
    assert_eq!(
        sh(&lab, "h3", &["ip", "-br", "link"]),
        links,
        "a refused ADD changed h3's links"
    );

    // DEL while the agent is down is retried (code 11) until it can unregister; then it does.
    let (h3, p3, r3, _) = &pods[2];
    let del3 = conf(&lab, h3, NET, json!({}));
    assert!(cni(&lab, "DEL", h3, p3, &del3)
        .error(11)
        .contains("cannot reach the weft agent"));
    lab.start_agent(h3).await.unwrap();
    assert!(
        wait_for(Duration::from_secs(15), || cni(&lab, "DEL", h3, p3, &del3).ok),
        "DEL does not succeed once the agent is back"
    );
    assert!(!endpoints(&lab).iter().any(|e| e.0 == mac_of(r3)));

    // Removing a host removes its lab endpoints.
    let ep = lab.add_endpoint(NET, "h2", None).await.expect("lab endpoint on h2");
    lab.remove_host("h2").await.unwrap();
    assert!(lab.endpoints().is_empty());
    assert!(!endpoints(&lab).iter().any(|e| e.1 == ep.ip.to_string()));

    lab.down().expect("lab down");
    assert_gone(&name);
}
