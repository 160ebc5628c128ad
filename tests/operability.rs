//! Operability: `/healthz`, `/readyz`, `/metrics` and `/status` against a real lab, `weft status`
//! against the kernel, the agent's config file, and the `weft net` admin commands.
//!
//! The lab tests need root (network namespaces); the config and admin tests do not. Failures are
//! made observable by creating conditions the agent cannot repair until the test lets it (it
//! repairs anything else within milliseconds): a renamed device that blocks a new one, a squatter
//! on the only subnet, a process holding the store's lock.

mod common;

use common::kernel::*;
use common::{have_root, lab_name, weft_bin};
use nix::sys::signal::Signal;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;
use weft::agent::status::{PeerState, Status, DEFAULT_HTTP_ADDR};
use weft::lab::{Lab, LabGuard, LabOptions};

// ---------------------------------------------------------------------------------------------
// Helpers

async fn lab_with(nodes: u32, network: Option<&str>) -> LabGuard {
    let mut opts = LabOptions::new(&lab_name(), nodes).weft_bin(weft_bin());
    if let Some(n) = network {
        opts = opts.network_config(n);
    }
    Lab::up(opts).await.expect("lab up")
}

/// `GET path` from the host's agent, over the host namespace's loopback.
fn get(lab: &Lab, host: &str, path: &str) -> Option<(u16, String)> {
    let addr: SocketAddr = DEFAULT_HTTP_ADDR.parse().unwrap();
    weft::lab::probe::http_get(lab.namespace(host).unwrap(), addr, path, Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("{host}: GET {path}: {e}"))
}

/// The `/healthz` verdict: status code and the names of the failing checks.
fn healthz(lab: &Lab, host: &str) -> (u16, Vec<String>, String) {
    verdict(lab, host, "/healthz")
}

fn verdict(lab: &Lab, host: &str, path: &str) -> (u16, Vec<String>, String) {
    let Some((code, body)) = get(lab, host, path) else {
        return (0, vec![], "not answering".into());
    };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
    let checks = v["failing"]
        .as_array()
        .map(|a| a.iter().filter_map(|f| f["check"].as_str().map(String::from)).collect())
        .unwrap_or_default();
    assert_eq!(v["status"], if code == 200 { "ok" } else { "failing" }, "{body}");
    (code, checks, body)
}

/// Waits (bounded) until `/healthz` answers `code` and, for 503, names `check`.
fn wait_health(lab: &Lab, host: &str, code: u16, check: Option<&str>, timeout: Duration) -> (u16, Vec<String>, String) {
    let mut last = (0, vec![], String::new());
    let held = wait_for(timeout, || {
        last = healthz(lab, host);
        last.0 == code && check.is_none_or(|c| last.1.iter().any(|f| f == c))
    });
    assert!(held, "{host}: /healthz never became {code} {check:?}; last: {last:?}");
    last
}

/// One sample of the exposition, as parsed by Prometheus's own Python parser.
#[derive(Debug, Deserialize)]
struct Sample {
    family: String,
    #[serde(rename = "type")]
    kind: String,
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

const PARSE_METRICS: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = []
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        out.append({"family": fam.name, "type": fam.type, "name": s.name,
                    "labels": s.labels, "value": s.value})
print(json.dumps(out))
"#;

/// The system's Python, which has Debian's `python3-prometheus-client` (a `python3` earlier in
/// PATH, e.g. pyenv's, may not).
fn python3() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// Fetches `/metrics` from the host's agent and parses it with `prometheus_client`'s OpenMetrics
/// parser (strict: a malformed exposition fails the test).
fn metrics(lab: &Lab, host: &str) -> Vec<Sample> {
    let (code, text) = get(lab, host, "/metrics").expect("agent answers /metrics");
    assert_eq!(code, 200);
    let mut child = Command::new(python3())
        .args(["-c", PARSE_METRICS])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (with python3-prometheus-client, see scripts/deps.sh)");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The value of the sample `name` with exactly `labels`, if present.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    samples
        .iter()
        .find(|s| s.name == name && s.labels == want)
        .map(|s| s.value)
}

const ROUTE_OK: &[(&str, &str)] = &[("kind", "route"), ("action", "ensure"), ("result", "ok")];

/// `weft status --json` run inside the host's namespace, as an operator would.
fn status_json(lab: &Lab, host: &str) -> Status {
    let bin = weft_bin().display().to_string();
    let out = lab
        .exec(
            host,
            &[
                &bin,
                "status",
                "--json",
                "--store",
                lab.store_url(),
                "--etcd-prefix",
                lab.prefix(),
            ],
        )
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// (subnet, VTEP MAC, public IP) of every peer programmed on `host`'s flannel.1, read with
/// `ip route`, `ip neigh` and `bridge fdb`: a route's gateway leads to its neighbour's MAC,
/// the MAC to its FDB destination.
fn kernel_peers(lab: &Lab, host: &str) -> BTreeSet<(String, String, String)> {
    let neigh: BTreeMap<String, String> = neighs(lab, host)
        .iter()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            Some((
                w[0].to_string(),
                w.get(w.iter().position(|x| *x == "lladdr")? + 1)?.to_string(),
            ))
        })
        .collect();
    let fdb: BTreeMap<String, String> = fdbs(lab, host)
        .iter()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            Some((
                w[0].to_string(),
                w.get(w.iter().position(|x| *x == "dst")? + 1)?.to_string(),
            ))
        })
        .collect();
    routes(lab, host)
        .iter()
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let via = w[w.iter().position(|x| *x == "via").expect("via") + 1];
            let mac = neigh.get(via).unwrap_or_else(|| panic!("no neighbour for {l}")).clone();
            let dst = fdb
                .get(&mac)
                .unwrap_or_else(|| panic!("no FDB entry for {mac}"))
                .clone();
            (w[0].to_string(), mac, dst)
        })
        .collect()
}

fn status_peers(st: &Status) -> BTreeSet<(String, String, String)> {
    st.peers
        .iter()
        .filter(|p| p.state == PeerState::Programmed)
        .map(|p| {
            (
                p.subnet.clone().unwrap(),
                p.vtep_mac.clone().unwrap(),
                p.public_ip.clone().unwrap(),
            )
        })
        .collect()
}

/// Holds the SQLite store's WAL locks from another process, the way a wedged process holding
/// the database would: every read and write of every agent then blocks inside SQLite (and the
/// agent's store probe times out) until the holder lets go. Only the lab's own store file is
/// touched; released on drop.
struct StoreLockHolder(std::process::Child);

const HOLD_LOCK: &str = r#"
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
# SQLite's WAL-index locks: write, checkpoint, recover and the five read marks (bytes 120..128).
fcntl.lockf(fd, fcntl.LOCK_EX, 8, 120, 0)
print("locked", flush=True)
sys.stdin.read()
"#;

impl StoreLockHolder {
    fn hold(store_url: &str) -> StoreLockHolder {
        let db = store_url.strip_prefix("sqlite:").expect("a SQLite lab store");
        let mut child = Command::new(python3())
            .args(["-c", HOLD_LOCK, &format!("{db}-shm")])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
        assert_eq!(line.trim(), "locked");
        StoreLockHolder(child)
    }
}

impl Drop for StoreLockHolder {
    fn drop(&mut self) {
        drop(self.0.stdin.take()); // EOF: the holder exits, and its locks go with it
        let _ = self.0.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// /healthz and /readyz

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_names_a_blocked_device_until_it_is_unblocked() {
    if !have_root("healthz_names_a_blocked_device_until_it_is_unblocked") {
        return;
    }
    let lab = lab_with(1, None).await;
    wait_health(&lab, "h1", 200, None, Duration::from_secs(5));
    assert_eq!(verdict(&lab, "h1", "/readyz").0, 200);

    // The kernel refuses a second VXLAN device with the same VNI and port, so while the renamed
    // device exists the agent cannot create flannel.1 again.
    sh(&lab, "h1", &["ip", "link", "set", "flannel.1", "down"]);
    sh(&lab, "h1", &["ip", "link", "set", "flannel.1", "name", "blk0"]);
    let (_, failing, body) = wait_health(&lab, "h1", 503, Some("device"), Duration::from_secs(5));
    assert!(failing.contains(&"reconcile".to_string()), "{body}");
    assert!(
        body.contains("another VXLAN device already uses VNI 1"),
        "the reconcile error should say why: {body}"
    );
    // Ready means "has converged once": a later failure is /healthz's business, not /readyz's.
    assert_eq!(verdict(&lab, "h1", "/readyz").0, 200);

    sh(&lab, "h1", &["ip", "link", "del", "blk0"]);
    wait_health(&lab, "h1", 200, None, Duration::from_secs(5));
    assert!(sh(&lab, "h1", &["ip", "link", "show", "flannel.1"]).contains(",UP"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_names_a_lost_lease_until_it_is_leased_again() {
    if !have_root("healthz_names_a_lost_lease_until_it_is_leased_again") {
        return;
    }
    // One leasable subnet (10.0.0.128/25), so a squatter on it leaves the host nothing to lease.
    let lab = lab_with(
        1,
        Some(r#"{"Network":"10.0.0.0/24","SubnetLen":25,"Backend":{"Type":"vxlan"}}"#),
    )
    .await;
    wait_health(&lab, "h1", 200, None, Duration::from_secs(5));
    let own = lab.leases().await.unwrap()["h1"].clone();
    let key = weft::lease::lease_key(lab.prefix(), own.subnet);

    // Overwriting the key in one write (rather than delete, then create) leaves the agent no
    // moment in which it could take the subnet back.
    let squatter = r#"{"PublicIP":"203.0.113.250","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:fa"}}"#;
    let store = lab.store().unwrap();
    store.put(&key, squatter).await.unwrap();
    let (_, _, body) = wait_health(&lab, "h1", 503, Some("lease"), Duration::from_secs(5));
    assert!(body.contains("is full"), "the lease check should say why: {body}");

    assert!(store.delete(&key).await.unwrap());
    wait_health(&lab, "h1", 200, None, Duration::from_secs(5));
    let back = lab.leases().await.unwrap()["h1"].clone();
    assert_eq!(back.subnet, own.subnet);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_names_a_store_that_stops_answering() {
    if !have_root("healthz_names_a_store_that_stops_answering") {
        return;
    }
    let lab = lab_with(1, None).await;
    wait_health(&lab, "h1", 200, None, Duration::from_secs(5));

    let holder = StoreLockHolder::hold(lab.store_url());
    // The agent probes the store every 5 s and gives a probe 3 s.
    let (_, failing, body) = wait_health(&lab, "h1", 503, Some("store"), Duration::from_secs(15));
    assert_eq!(failing, ["store"], "only the store is wrong: {body}");
    assert!(body.contains("did not answer"), "{body}");

    drop(holder);
    wait_health(&lab, "h1", 200, None, Duration::from_secs(15));
    let errors = value(&metrics(&lab, "h1"), "weft_store_errors_total", &[]).unwrap();
    assert!(errors >= 1.0, "store errors not counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_waits_for_the_first_convergence() {
    if !have_root("readyz_waits_for_the_first_convergence") {
        return;
    }
    // Two hosts, one leasable subnet: one host converges, the other cannot until it is freed.
    let opts = LabOptions::new(&lab_name(), 2)
        .weft_bin(weft_bin())
        .network_config(r#"{"Network":"10.0.0.0/24","SubnetLen":25,"Backend":{"Type":"vxlan"}}"#)
        .wait(None);
    let mut lab = Lab::up(opts).await.expect("lab up");
    let mut leases = Default::default();
    assert!(wait_for(Duration::from_secs(5), || {
        leases = futures::executor::block_on(lab.leases()).unwrap();
        leases.len() == 1
    }));
    let winner = leases.keys().next().unwrap().clone();
    let loser = if winner == "h1" { "h2" } else { "h1" };
    assert!(wait_for(Duration::from_secs(5), || verdict(&lab, &winner, "/readyz").0 == 200));
    let (code, failing, body) = wait_health(&lab, loser, 503, Some("lease"), Duration::from_secs(5));
    assert_eq!(code, 503);
    assert!(body.contains("is full"), "{failing:?} {body}");
    let (code, failing, _) = verdict(&lab, loser, "/readyz");
    assert_eq!((code, failing), (503, vec!["converged".to_string()]));

    // Stop the winner (its lease stays) and release its subnet with the admin command.
    lab.kill_agent(&winner, Signal::SIGTERM).unwrap();
    let subnet = leases[&winner].subnet.to_string();
    let out = weft(
        &["net", "lease", "release", &subnet, "--yes"],
        &[("WEFT_STORE", lab.store_url()), ("WEFT_ETCD_PREFIX", lab.prefix())],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(wait_for(Duration::from_secs(5), || verdict(&lab, loser, "/readyz").0 == 200));
    wait_health(&lab, loser, 200, None, Duration::from_secs(5));
    assert_eq!(lab.leases().await.unwrap()[loser].subnet.to_string(), subnet);
}

// ---------------------------------------------------------------------------------------------
// /metrics

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_count_joins_rejections_and_repairs() {
    if !have_root("metrics_parse_and_count_joins_rejections_and_repairs") {
        return;
    }
    let mut lab = lab_with(2, None).await;
    let m = metrics(&lab, "h1");
    let routes_before = value(&m, "weft_kernel_operations_total", ROUTE_OK).expect("route counter");
    assert!(routes_before >= 1.0);
    assert_eq!(value(&m, "weft_leases", &[]), Some(2.0));
    assert_eq!(value(&m, "weft_peers_programmed", &[]), Some(1.0));
    // The lab's leases last 24 h (the default TTL).
    let expiry = value(&m, "weft_lease_expiry_seconds", &[]).unwrap();
    assert!(expiry > 23.0 * 3600.0 && expiry <= 24.0 * 3600.0, "{expiry}");
    let build = m.iter().find(|s| s.name == "weft_build_info").expect("weft_build_info");
    assert_eq!(build.labels["version"], env!("CARGO_PKG_VERSION"));
    let hist = m
        .iter()
        .find(|s| s.name == "weft_reconcile_duration_seconds_count")
        .unwrap();
    assert_eq!(hist.kind, "histogram");
    assert!(hist.value >= 1.0);
    assert!(value(&m, "weft_reconciles_total", &[("result", "ok")]).unwrap() >= 1.0);
    for name in ["weft_store_errors_total", "weft_store_watch_restarts_total"] {
        assert_eq!(value(&m, name, &[]), Some(0.0), "{name}");
    }
    assert!(m
        .iter()
        .any(|s| s.family == "weft_kernel_operations" && s.kind == "counter"));

    // A peer joins: h1 programs one more route.
    lab.add_host().await.unwrap();
    let mut m = metrics(&lab, "h1");
    assert!(
        wait_for(Duration::from_secs(5), || {
            m = metrics(&lab, "h1");
            value(&m, "weft_peers_programmed", &[]) == Some(2.0)
        }),
        "h3 not programmed on h1"
    );
    let routes_joined = value(&m, "weft_kernel_operations_total", ROUTE_OK).unwrap();
    assert!(
        routes_joined >= routes_before + 1.0,
        "{routes_before} -> {routes_joined}"
    );
    assert_eq!(value(&m, "weft_leases", &[]), Some(3.0));

    // A lease with a multicast VTEP MAC is refused, and counted once.
    let bad_key = weft::lease::lease_key(lab.prefix(), "10.0.250.0/24".parse().unwrap());
    let bad = r#"{"PublicIP":"203.0.113.251","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"01:00:5e:00:00:01"}}"#;
    lab.store().unwrap().put(&bad_key, bad).await.unwrap();
    let rejected = &[("reason", "bad_vtep_mac")];
    assert!(
        wait_for(Duration::from_secs(5), || {
            value(&metrics(&lab, "h1"), "weft_leases_rejected_total", rejected) == Some(1.0)
        }),
        "rejection not counted"
    );
    let m = metrics(&lab, "h1");
    assert_eq!(value(&m, "weft_leases", &[]), Some(4.0));
    assert_eq!(value(&m, "weft_peers_programmed", &[]), Some(2.0));

    // A route deleted by hand is put back: the counter moves again.
    let h2 = lab.leases().await.unwrap()["h2"].clone();
    sh(&lab, "h1", &["ip", "route", "del", &h2.subnet.to_string()]);
    assert!(
        wait_for(Duration::from_secs(5), || {
            value(&metrics(&lab, "h1"), "weft_kernel_operations_total", ROUTE_OK)
                .is_some_and(|v| v >= routes_joined + 1.0)
        }),
        "repair not counted"
    );
    assert_eq!(routes(&lab, "h1").len(), 2);
    // Still refused once, not once per reconcile.
    assert_eq!(
        value(&metrics(&lab, "h1"), "weft_leases_rejected_total", rejected),
        Some(1.0)
    );
}

// ---------------------------------------------------------------------------------------------
// weft status

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_matches_the_kernel_and_falls_back_to_store_and_kernel() {
    if !have_root("status_json_matches_the_kernel_and_falls_back_to_store_and_kernel") {
        return;
    }
    let mut lab = lab_with(3, None).await;
    let leases = lab.leases().await.unwrap();
    let from_store: BTreeSet<(String, String, String)> = leases
        .iter()
        .filter(|(h, _)| *h != "h1")
        .map(|(_, l)| (l.subnet.to_string(), l.vtep_mac.to_string(), l.public_ip.to_string()))
        .collect();
    assert!(wait_for(Duration::from_secs(5), || kernel_peers(&lab, "h1") == from_store));

    let st = status_json(&lab, "h1");
    assert_eq!(st.source, "agent");
    assert_eq!(st.health(std::time::SystemTime::now()), vec![]);
    assert!(st.converged_once);
    assert_eq!(status_peers(&st), from_store);
    assert_eq!(status_peers(&st), kernel_peers(&lab, "h1"));
    assert_eq!(st.peers.len(), 2);
    let lease = st.lease.as_ref().unwrap();
    assert_eq!(lease.subnet, leases["h1"].subnet.to_string());
    let dev = st.device.as_ref().unwrap();
    assert_eq!(dev.name, "flannel.1");
    assert_eq!(dev.mac.as_deref(), Some(device_mac(&lab, "h1").as_str()));
    assert_eq!(
        st.iface.as_ref().unwrap().public_ip,
        lab.underlay_ip("h1").unwrap().to_string()
    );

    // A stopped agent leaves the data plane in place; `weft status` rebuilds the view from the
    // store and the kernel, and says so.
    lab.kill_agent("h1", Signal::SIGTERM).unwrap();
    let st = status_json(&lab, "h1");
    assert!(st.source.starts_with("store+kernel"), "{}", st.source);
    assert!(st.source.contains("agent not reachable"), "{}", st.source);
    assert_eq!(status_peers(&st), from_store);
    assert_eq!(st.lease.as_ref().unwrap().subnet, leases["h1"].subnet.to_string());
    assert_eq!(
        st.device.as_ref().unwrap().mac.as_deref(),
        Some(device_mac(&lab, "h1").as_str())
    );
    assert!(st.store.last_ok_ms.is_some());
}

// ---------------------------------------------------------------------------------------------
// The config file (no root needed)

/// Runs `weft ARGS` with exactly `env` as its environment (nothing inherited, so a `WEFT_*`
/// variable of the caller cannot leak in).
fn weft(args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(weft_bin());
    cmd.args(args)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `--print-config` as `key -> (value, source)`.
fn effective(out: &Output) -> BTreeMap<String, (String, String)> {
    assert!(out.status.success(), "{}", stderr(out));
    stdout(out)
        .lines()
        .map(|l| {
            let (kv, source) = l.rsplit_once("  # ").unwrap_or_else(|| panic!("no source: {l}"));
            let (k, v) = kv.split_once(" = ").unwrap();
            (k.to_string(), (v.to_string(), source.to_string()))
        })
        .collect()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[test]
fn config_precedence_is_flag_env_file_default() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "agent.toml",
        r#"
subnet-file = "/file/subnet.env"
resync-interval = "10s"
subnet-lease-ttl = "1h"
iface = ["eth1", "eth2"]
ip-masq = true
vxlan-peer-filter = false
"#,
    );
    let out = weft(
        &[
            "agent",
            "--config",
            &file,
            "--print-config",
            "--subnet-file",
            "/flag/subnet.env",
        ],
        &[("WEFT_SUBNET_FILE", "/env/subnet.env"), ("WEFT_RESYNC_INTERVAL", "20s")],
        None,
    );
    let eff = effective(&out);
    let pair = |v: &str, s: &str| (v.to_string(), s.to_string());
    // Each key shows the layer that won: flag over env over file over default.
    assert_eq!(eff["subnet-file"], pair("\"/flag/subnet.env\"", "flag"));
    assert_eq!(eff["resync-interval"], pair("\"20s\"", "env"));
    assert_eq!(eff["subnet-lease-ttl"], pair("\"1h\"", "file"));
    assert_eq!(eff["iface"], pair("[\"eth1\", \"eth2\"]", "file"));
    assert_eq!(eff["etcd-prefix"], pair("\"/coreos.com/network\"", "default"));
    assert_eq!(eff["store"].1, "default");
    assert_eq!(eff["public-ip"].1, "unset");
    // Booleans, both a switch (`--ip-masq`) and a boolean option (`--vxlan-peer-filter false`).
    assert_eq!(eff["ip-masq"], pair("true", "file"));
    assert_eq!(eff["vxlan-peer-filter"], pair("false", "file"));
    let out = weft(
        &[
            "agent",
            "--config",
            &file,
            "--print-config",
            "--vxlan-peer-filter",
            "true",
        ],
        &[],
        None,
    );
    assert_eq!(effective(&out)["vxlan-peer-filter"], pair("true", "flag"));
    // The file itself may come from the environment too.
    let out = weft(&["agent", "--print-config"], &[("WEFT_CONFIG", &file)], None);
    assert_eq!(effective(&out)["subnet-lease-ttl"], pair("\"1h\"", "file"));
}

#[test]
fn print_config_output_is_a_config_file_that_means_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "agent",
        "--print-config",
        "--iface",
        "eth1",
        "--ip-masq",
        "--vxlan-peer-filter",
        "false",
        "--subnet-lease-ttl",
        "2h",
        "--healthz-addr",
        "127.0.0.1:9102",
    ];
    let first = effective(&weft(&args, &[], None));
    let printed = stdout(&weft(&args, &[], None));
    let as_file: String = printed
        .lines()
        .filter(|l| !l.contains("(unset)"))
        .map(|l| format!("{l}\n"))
        .collect();
    let file = write(dir.path(), "printed.toml", &as_file);
    let again = effective(&weft(&["agent", "--config", &file, "--print-config"], &[], None));
    let values = |m: &BTreeMap<String, (String, String)>| {
        m.iter()
            .map(|(k, (v, _))| (k.clone(), v.clone()))
            .collect::<BTreeMap<_, _>>()
    };
    assert_eq!(values(&first), values(&again));
}

#[test]
fn config_file_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let unknown = write(dir.path(), "unknown.toml", "resync-intervall = \"10s\"\n");
    let out = weft(&["agent", "--config", &unknown, "--print-config"], &[], None);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("unknown key `resync-intervall`"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains(&unknown), "{}", stderr(&out));

    // A number where a duration is wanted: the key and the reason.
    let wrong = write(dir.path(), "wrong.toml", "subnet-lease-ttl = 5\n");
    let out = weft(&["agent", "--config", &wrong, "--print-config"], &[], None);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("subnet-lease-ttl") && err.contains("time unit"), "{err}");

    // A table where a value is wanted.
    let table = write(dir.path(), "table.toml", "[store]\nurl = \"x\"\n");
    let out = weft(&["agent", "--config", &table, "--print-config"], &[], None);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("`store`") && err.contains("expected a string"), "{err}");

    // A one-shot action in the file would run at every start.
    let action = write(dir.path(), "action.toml", "cleanup = true\n");
    let out = weft(&["agent", "--config", &action, "--print-config"], &[], None);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("`cleanup` cannot be set in a config file"),
        "{}",
        stderr(&out)
    );

    let broken = write(dir.path(), "broken.toml", "store = \n");
    let out = weft(&["agent", "--config", &broken, "--print-config"], &[], None);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not valid TOML"), "{}", stderr(&out));
}

#[test]
fn the_example_config_holds_every_flag_and_is_accepted() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/agent.toml");
    let out = weft(&["agent", "--config", example, "--print-config"], &[], None);
    let eff = effective(&out);
    let text = std::fs::read_to_string(example).unwrap();
    for key in eff.keys() {
        let documented = text.lines().any(|l| {
            let l = l.trim_start_matches('#').trim_start();
            l.starts_with(&format!("{key} ="))
        });
        assert!(documented, "contrib/agent.toml does not mention `{key}`");
    }
    // The unit's ExecStart uses that file at its installed place.
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/weft.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/weft-agent --config /etc/weft/agent.toml"));
    assert!(
        !unit.lines().any(|l| l.trim_start().starts_with("ExecStop")),
        "stopping must leave the data plane alone"
    );
}

// ---------------------------------------------------------------------------------------------
// weft net: validate, leases, lease release (no root needed: a store file of our own)

#[test]
fn net_config_validate_uses_the_agents_messages() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(
        dir.path(),
        "good.json",
        r#"{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan"}}"#,
    );
    let out = weft(&["net", "config", "validate", &good], &[], None);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("valid: network 10.0.0.0/16, subnets /24"),
        "{}",
        stdout(&out)
    );

    let bad = write(
        dir.path(),
        "bad.json",
        r#"{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan","VNI":0}}"#,
    );
    let out = weft(&["net", "config", "validate", &bad], &[], None);
    assert!(!out.status.success());
    // The very words the agent logs for the same config (see tests/agent_repair.rs).
    assert!(
        stderr(&out).contains("Backend.VNI = 0: must be between 1 and 16777215"),
        "{}",
        stderr(&out)
    );

    let out = weft(&["net", "config", "validate", "-"], &[], Some("{not json"));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not valid JSON"), "{}", stderr(&out));
}

#[tokio::test]
async fn net_leases_and_lease_release() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("store.db").display());
    let store = weft::store::open_url(&url).unwrap();
    let prefix = weft::network::DEFAULT_PREFIX;
    store
        .put(
            &format!("{prefix}/config"),
            r#"{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan"}}"#,
        )
        .await
        .unwrap();
    let good_key = weft::lease::lease_key(prefix, "10.0.37.0/24".parse().unwrap());
    let bad_key = weft::lease::lease_key(prefix, "10.0.38.0/24".parse().unwrap());
    let good = r#"{"PublicIP":"192.0.2.10","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:a0:2e:40:c0:2c"}}"#;
    let bad = r#"{"PublicIP":"198.51.100.20","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"01:00:5e:00:00:01"}}"#;
    store.put(&good_key, good).await.unwrap();
    store.put(&bad_key, bad).await.unwrap();
    let env = [("WEFT_STORE", url.as_str())];

    let out = weft(&["net", "leases"], &env, None);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let line = |subnet: &str| {
        text.lines()
            .find(|l| l.starts_with(subnet))
            .unwrap_or_else(|| panic!("{subnet} missing:\n{text}"))
            .to_string()
    };
    assert!(line("10.0.37.0/24").ends_with("yes"), "{text}");
    assert!(
        line("10.0.38.0/24").contains("no: VTEP MAC is multicast or all zeros"),
        "{text}"
    );

    // Answering "n" keeps the lease.
    let out = weft(&["net", "lease", "release", "10.0.38.0/24"], &env, Some("n\n"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("Release 10.0.38.0/24 (held by 198.51.100.20)? [y/N]"));
    assert!(stdout(&out).contains("not released"));
    assert!(store.get(&bad_key).await.unwrap().is_some());

    // `--yes` asks nothing and removes it.
    let out = weft(&["net", "lease", "release", "10.0.38.0/24", "--yes"], &env, None);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("released 10.0.38.0/24"));
    assert!(store.get(&bad_key).await.unwrap().is_none());
    assert!(store.get(&good_key).await.unwrap().is_some());

    // Releasing what is not leased is an error that names it.
    let out = weft(&["net", "lease", "release", "10.0.99.0/24", "--yes"], &env, None);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no lease for 10.0.99.0/24"), "{}", stderr(&out));
}

/// `weft-agent` (what hosts run) is `weft agent`: the same flags, environment and config file,
/// read the same way.
#[test]
fn weft_agent_binary_reads_flags_env_and_file_as_weft_agent_does() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "agent.toml",
        "subnet-lease-ttl = \"1h\"\niface = [\"eth1\"]\nresync-interval = \"10s\"\n",
    );
    let flags = [
        "--config",
        file.as_str(),
        "--print-config",
        "--subnet-file",
        "/flag/subnet.env",
    ];
    let env = [("WEFT_RESYNC_INTERVAL", "20s")];
    let via_weft = effective(&weft(&[&["agent"][..], &flags[..]].concat(), &env, None));
    let out = Command::new(env!("CARGO_BIN_EXE_weft-agent"))
        .args(flags)
        .env_clear()
        .envs(env)
        .output()
        .unwrap();
    let via_agent = effective(&out);
    assert_eq!(via_agent, via_weft);
    assert_eq!(
        via_agent["subnet-lease-ttl"],
        ("\"1h\"".to_string(), "file".to_string())
    );
    assert_eq!(via_agent["resync-interval"], ("\"20s\"".to_string(), "env".to_string()));
    assert_eq!(via_agent["subnet-file"].1, "flag");
    // A bad flag is refused by name, as `weft agent` refuses it.
    let out = Command::new(env!("CARGO_BIN_EXE_weft-agent"))
        .args(["--subnet-lease-ttl", "1s", "--no-such-flag"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--no-such-flag"), "{}", stderr(&out));
}
