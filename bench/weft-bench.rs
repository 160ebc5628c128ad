//! weft's benchmark suite (issue #6): data plane, convergence versus lab size, footprint.
//!
//! Run it through `sudo bench/run.sh [--quick]`, which builds the release agent and this runner
//! (an example of the weft package, so `plotters` stays a dev-dependency and the agent binary does
//! not grow). Everything happens inside lab namespaces named `wb*`; every lab is torn down when its
//! guard drops, also on error, and `bench/run.sh` runs `weft lab down` for each name on exit.
//!
//! Every comparison is measured side by side in one run: rounds are interleaved (round r runs each
//! test for every setup, in an order rotated by r) and the figures are medians over the rounds, so
//! a loaded machine slows every setup alike and the ratios stay honest.

use anyhow::{anyhow, bail, Context, Result};
use nix::sched::{setns, CloneFlags};
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};
use weft::kernel::Kernel;
use weft::lab::{Lab, LabGuard, LabOptions, LabStore};
use weft::lease::{lease_key, Lease};

#[path = "plots.rs"]
mod plots;

/// Lab names this runner uses (`bench/run.sh` tears down the same list on exit).
const LAB_HAND: &str = "wbh";
const LAB_WEFT: &str = "wbw";
const LAB_NOFILTER: &str = "wbn";
const LAB_NFT: &str = "wbf";
const LAB_CONV: &str = "wbc";

#[derive(Debug, Clone)]
struct Cfg {
    quick: bool,
    out: PathBuf,
    weft_bin: PathBuf,
    rounds: usize,
    secs: u32,
    pings: u32,
    sizes: Vec<u32>,
    /// `sqlite`, `etcd`: the convergence labs run once per store.
    stores: Vec<String>,
    adds: usize,
    parts: Vec<String>,
    /// Data-plane tests to run (all of [`TESTS`] unless `--tests` names some).
    tests: Vec<String>,
    command: String,
}

fn parse_args() -> Result<Cfg> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let mut cfg = Cfg {
        quick,
        out: if quick {
            "target/bench-quick".into()
        } else {
            "docs".into()
        },
        weft_bin: "target/release/weft".into(),
        rounds: if quick { 1 } else { 5 },
        secs: if quick { 2 } else { 5 },
        pings: if quick { 50 } else { 200 },
        sizes: if quick { vec![3, 10] } else { vec![3, 10, 30, 50] },
        stores: if quick {
            vec!["sqlite".into()]
        } else {
            vec!["sqlite".into(), "etcd".into()]
        },
        adds: if quick { 3 } else { 7 },
        parts: vec!["dataplane".into(), "convergence".into(), "footprint".into()],
        tests: TESTS.iter().map(|t| t.to_string()).collect(),
        command: std::env::var("WEFT_BENCH_COMMAND")
            .unwrap_or_else(|_| format!("sudo bench/run.sh{}", if quick { " --quick" } else { "" })),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().ok_or_else(|| anyhow!("{a} needs a value"));
        match a.as_str() {
            "--quick" => {}
            "--out" => cfg.out = val()?.into(),
            "--weft-bin" => cfg.weft_bin = val()?.into(),
            "--rounds" => cfg.rounds = val()?.parse()?,
            "--secs" => cfg.secs = val()?.parse()?,
            "--adds" => cfg.adds = val()?.parse()?,
            "--sizes" => cfg.sizes = val()?.split(',').map(str::parse).collect::<Result<_, _>>()?,
            "--stores" => cfg.stores = val()?.split(',').map(String::from).collect(),
            "--report-only" => cfg.parts = Vec::new(),
            "--only" => cfg.parts = val()?.split(',').map(String::from).collect(),
            "--tests" => {
                cfg.tests = val()?.split(',').map(String::from).collect();
                if let Some(t) = cfg.tests.iter().find(|t| !TESTS.contains(&t.as_str())) {
                    bail!("unknown test {t:?}: one of {}", TESTS.join(","));
                }
            }
            other => bail!("unknown argument {other:?} (see bench/run.sh)"),
        }
    }
    cfg.weft_bin = std::fs::canonicalize(&cfg.weft_bin).with_context(|| format!("{}", cfg.weft_bin.display()))?;
    Ok(cfg)
}

// ---------------------------------------------------------------------------------------------
// small helpers

fn sh(argv: &[&str]) -> Result<String> {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| argv.join(" "))?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}",
            argv.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn median(v: &[f64]) -> f64 {
    quantile(v, 0.5)
}

/// A distribution-free 95 % confidence interval of the median: the order statistics x(k) and
/// x(n+1-k) with the largest k for which P(Binomial(n, ½) < k) ≤ 2.5 %. None below 6 samples,
/// where no such k exists.
fn median_ci95(v: &[f64]) -> Option<(f64, f64)> {
    let n = v.len();
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    // P(Binomial(n, ½) ≤ j), summed term by term.
    let mut term = 0.5f64.powi(n as i32);
    let mut below = 0.0;
    let mut k = 0;
    for j in 0..n {
        below += term;
        if below > 0.025 {
            break;
        }
        k = j + 1;
        term *= (n - j) as f64 / (j + 1) as f64;
    }
    (k >= 1).then(|| (s[k - 1], s[n - k]))
}

/// Nearest-rank quantile of the samples (NaN for none).
fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if q == 0.5 && s.len() % 2 == 0 {
        return (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0;
    }
    let i = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1;
    s[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn machine() -> Value {
    let mem_kb: u64 = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().next().and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let commit = sh(&["git", "rev-parse", "--short", "HEAD"])
        .unwrap_or_default()
        .trim()
        .to_string();
    let dirty = !sh(&["git", "status", "--porcelain", "--untracked-files=no"])
        .unwrap_or_default()
        .trim()
        .is_empty();
    json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": cpu,
        "memory_gib": round2(mem_kb as f64 / 1048576.0),
        "kernel": sh(&["uname", "-r"]).unwrap_or_default().trim(),
        "date": sh(&["date", "-u", "+%Y-%m-%dT%H:%M:%SZ"]).unwrap_or_default().trim(),
        "commit": if dirty { format!("{commit}-dirty") } else { commit },
    })
}

// ---------------------------------------------------------------------------------------------
// 1. data plane

#[derive(Clone)]
struct Setup {
    key: &'static str,
    label: &'static str,
    ns_from: String,
    dst: Ipv4Addr,
}

const TESTS: [&str; 4] = ["tcp1", "tcp2", "udp64", "ping"];

/// Flannel's device, by hand, in the (agent-less) lab `hand`: `flannel.1`, VNI 1, local = the
/// host's underlay IP, dev eth0, dstport 8472, nolearning, MTU eth0 − 50, address `<subnet>.0/32`;
/// per peer neigh + fdb + onlink route, exactly what flanneld programs.
fn configure_hand_vxlan(hand: &Lab) -> Result<Vec<Ipv4Addr>> {
    let hosts = ["h1", "h2"];
    let mut macs = Vec::new();
    let mut ips = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        let ns = hand.namespace(h)?.to_string();
        let ip = hand.underlay_ip(h)?;
        let link: Value = serde_json::from_str(&sh(&["ip", "-n", &ns, "-j", "link", "show", "eth0"])?)?;
        let mtu = link[0]["mtu"].as_u64().unwrap_or(1500) - 50;
        let addr = format!("10.0.{}.0/32", i + 1);
        sh(&[
            "ip",
            "-n",
            &ns,
            "link",
            "add",
            "flannel.1",
            "type",
            "vxlan",
            "id",
            "1",
            "local",
            &ip.to_string(),
            "dev",
            "eth0",
            "dstport",
            "8472",
            "nolearning",
        ])?;
        sh(&[
            "ip",
            "-n",
            &ns,
            "link",
            "set",
            "flannel.1",
            "mtu",
            &mtu.to_string(),
            "up",
        ])?;
        sh(&["ip", "-n", &ns, "addr", "add", &addr, "dev", "flannel.1"])?;
        let dev: Value = serde_json::from_str(&sh(&["ip", "-n", &ns, "-j", "link", "show", "flannel.1"])?)?;
        macs.push(dev[0]["address"].as_str().unwrap_or_default().to_string());
        ips.push(ip);
    }
    for (i, h) in hosts.iter().enumerate() {
        let ns = hand.namespace(h)?.to_string();
        let j = 1 - i;
        let gw = format!("10.0.{}.0", j + 1);
        let net = format!("10.0.{}.0/24", j + 1);
        sh(&[
            "ip",
            "-n",
            &ns,
            "neigh",
            "replace",
            &gw,
            "lladdr",
            &macs[j],
            "dev",
            "flannel.1",
            "nud",
            "permanent",
        ])?;
        sh(&[
            "bridge",
            "-n",
            &ns,
            "fdb",
            "append",
            &macs[j],
            "dev",
            "flannel.1",
            "dst",
            &ips[j].to_string(),
            "self",
            "permanent",
        ])?;
        sh(&[
            "ip",
            "-n",
            &ns,
            "route",
            "replace",
            &net,
            "via",
            &gw,
            "dev",
            "flannel.1",
            "onlink",
        ])?;
    }
    Ok(vec!["10.0.1.0".parse()?, "10.0.2.0".parse()?])
}

fn iperf_server(ns: &str) -> Result<Child> {
    Command::new("ip")
        .args(["netns", "exec", ns, "iperf3", "-s", "-p", "5201"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting iperf3 -s")
}

/// One iperf3 run; returns (value, raw summary). tcp: Gbit/s at the receiver; udp64: packets/s
/// received.
fn iperf(ns: &str, dst: Ipv4Addr, test: &str, secs: u32) -> Result<(f64, Value)> {
    let t = secs.to_string();
    let bound = (secs + 20).to_string();
    let dst = dst.to_string();
    let mut argv = vec![
        "timeout",
        &bound,
        "ip",
        "netns",
        "exec",
        ns,
        "iperf3",
        "-c",
        &dst,
        "-p",
        "5201",
        "-t",
        &t,
        "-J",
        "--connect-timeout",
        "3000",
    ];
    match test {
        "tcp1" => {}
        "tcp2" => argv.extend(["-P", "2"]),
        "udp64" => argv.extend(["-u", "-l", "64", "-b", "0"]),
        _ => unreachable!(),
    }
    let mut last_err = None;
    for _ in 0..3 {
        let out = Command::new(argv[0]).args(&argv[1..]).stdin(Stdio::null()).output()?;
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if let Some(e) = v["error"].as_str() {
            last_err = Some(anyhow!("iperf3 {test} {ns} -> {dst}: {e}"));
            std::thread::sleep(Duration::from_millis(500));
            continue;
        }
        let end = &v["end"];
        let cpu = end["cpu_utilization_percent"].clone();
        return Ok(if test == "udp64" {
            let s = &end["sum"];
            let packets = s["packets"].as_f64().unwrap_or(0.0);
            let lost = s["lost_packets"].as_f64().unwrap_or(0.0);
            let secs = s["seconds"].as_f64().unwrap_or(1.0).max(0.001);
            (
                (packets - lost) / secs,
                json!({"sent": packets, "lost": lost, "seconds": secs, "cpu": cpu}),
            )
        } else {
            let bps = end["sum_received"]["bits_per_second"].as_f64().unwrap_or(0.0);
            let retr = end["sum_sent"]["retransmits"].clone();
            (bps / 1e9, json!({"retransmits": retr, "cpu": cpu}))
        });
    }
    Err(last_err.unwrap_or_else(|| anyhow!("iperf3 failed")))
}

/// Median RTT (ms) of `count` pings 10 ms apart.
fn ping_rtt(ns: &str, dst: Ipv4Addr, count: u32) -> Result<(f64, Value)> {
    let out = sh(&[
        "timeout",
        "60",
        "ip",
        "netns",
        "exec",
        ns,
        "ping",
        "-n",
        "-c",
        &count.to_string(),
        "-i",
        "0.01",
        "-W",
        "1",
        &dst.to_string(),
    ])?;
    let rtts: Vec<f64> = out
        .lines()
        .filter_map(|l| l.split("time=").nth(1)?.split_whitespace().next()?.parse().ok())
        .collect();
    if rtts.is_empty() {
        bail!("no ping answers {ns} -> {dst}");
    }
    Ok((
        median(&rtts),
        json!({"answered": rtts.len(), "sent": count, "p90": quantile(&rtts, 0.9)}),
    ))
}

fn device_facts(ns: &str) -> Value {
    let offload = sh(&["ip", "netns", "exec", ns, "ethtool", "-k", "flannel.1"]).unwrap_or_default();
    let pick = |k: &str| {
        offload
            .lines()
            .find(|l| l.trim_start().starts_with(k))
            .map(|l| l.trim().to_string())
    };
    let link = sh(&["ip", "-n", ns, "-d", "link", "show", "flannel.1"]).unwrap_or_default();
    let nft = sh(&["ip", "netns", "exec", ns, "nft", "list", "ruleset"]).unwrap_or_default();
    json!({
        "link": link.trim(),
        "tx-checksumming": pick("tx-checksumming"),
        "tx-udp_tnl-segmentation": pick("tx-udp_tnl-segmentation"),
        "generic-receive-offload": pick("generic-receive-offload"),
        "nft_rules": nft.lines().filter(|l| !l.trim().is_empty()).count(),
    })
}

/// The data-plane ratios reported: (key, numerator setup, denominator setup).
const PAIRS: [(&str, &str, &str); 6] = [
    ("hand_over_underlay", "hand", "underlay"),
    ("weft_over_hand", "weft", "hand"),
    ("weft_nft_over_hand", "weft_nft", "hand"),
    ("weft_nofilter_over_hand", "weft_nofilter", "hand"),
    ("weft_over_weft_nofilter", "weft", "weft_nofilter"),
    ("weft_nft_over_weft_nofilter", "weft_nft", "weft_nofilter"),
];

/// Per-round ratios of one test between two setups (same round, measured one right after the
/// other): robust against the load drifting between rounds. `samples` is
/// `{setup: {test: [value per round]}}`.
fn round_ratios(samples: &Value, a: &str, b: &str, test: &str) -> Vec<f64> {
    let values = |setup: &str| -> Vec<f64> {
        samples[setup][test]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_f64)
            .collect()
    };
    values(a).iter().zip(values(b)).map(|(x, y)| x / y).collect()
}

async fn dataplane(cfg: &Cfg) -> Result<Value> {
    let t_start = Instant::now();
    let hand = Lab::up(LabOptions::topology_only(LAB_HAND, 2).weft_bin(&cfg.weft_bin)).await?;
    let wopts = |name: &str| {
        LabOptions::new(name, 2)
            .weft_bin(&cfg.weft_bin)
            .wait(Some(Duration::from_secs(60)))
    };
    let weft = Lab::up(wopts(LAB_WEFT)).await?;
    let nofilter = Lab::up(wopts(LAB_NOFILTER).agent_arg("--vxlan-peer-filter=false")).await?;
    // The peer filter where weft puts it when it cannot use BPF (no bpffs, shared port).
    let nft = Lab::up(wopts(LAB_NFT).agent_arg("--bpf-pin-dir=none")).await?;
    let hand_ips = configure_hand_vxlan(&hand)?;
    let weft_dst = weft
        .overlay_ip("h2")
        .await?
        .ok_or_else(|| anyhow!("no lease for h2 in {LAB_WEFT}"))?;
    let nofilter_dst = nofilter
        .overlay_ip("h2")
        .await?
        .ok_or_else(|| anyhow!("no lease for h2 in {LAB_NOFILTER}"))?;
    let nft_dst = nft
        .overlay_ip("h2")
        .await?
        .ok_or_else(|| anyhow!("no lease for h2 in {LAB_NFT}"))?;
    let setups = vec![
        Setup {
            key: "underlay",
            label: "underlay",
            ns_from: hand.namespace("h1")?.into(),
            dst: hand.underlay_ip("h2")?,
        },
        Setup {
            key: "hand",
            label: "hand VXLAN",
            ns_from: hand.namespace("h1")?.into(),
            dst: hand_ips[1],
        },
        Setup {
            key: "weft",
            label: "weft (filter in BPF)",
            ns_from: weft.namespace("h1")?.into(),
            dst: weft_dst,
        },
        Setup {
            key: "weft_nft",
            label: "weft, filter in nft",
            ns_from: nft.namespace("h1")?.into(),
            dst: nft_dst,
        },
        Setup {
            key: "weft_nofilter",
            label: "weft, no peer filter",
            ns_from: nofilter.namespace("h1")?.into(),
            dst: nofilter_dst,
        },
    ];
    for s in &setups {
        if !weft::lab::probe::reach(&s.ns_from, s.dst, Duration::from_secs(3))? {
            bail!("{}: {} cannot reach {}", s.key, s.ns_from, s.dst);
        }
    }
    let mut servers = vec![
        iperf_server(hand.namespace("h2")?)?,
        iperf_server(weft.namespace("h2")?)?,
        iperf_server(nofilter.namespace("h2")?)?,
        iperf_server(nft.namespace("h2")?)?,
    ];
    std::thread::sleep(Duration::from_millis(500));
    let facts = json!({
        "hand": device_facts(hand.namespace("h1")?),
        "weft": device_facts(weft.namespace("h1")?),
        "weft_nofilter": device_facts(nofilter.namespace("h1")?),
        "weft_nft": device_facts(nft.namespace("h1")?),
    });

    // samples[setup][test] = values
    let mut samples: BTreeMap<&str, BTreeMap<&str, Vec<f64>>> = BTreeMap::new();
    let mut raw = Vec::new();
    let result = (|| -> Result<()> {
        for r in 0..cfg.rounds {
            for test in cfg.tests.iter().map(String::as_str) {
                for k in 0..setups.len() {
                    let s = &setups[(k + r) % setups.len()];
                    let (v, detail) = if test == "ping" {
                        ping_rtt(&s.ns_from, s.dst, cfg.pings)?
                    } else {
                        iperf(&s.ns_from, s.dst, test, cfg.secs)?
                    };
                    eprintln!("  round {} {test:6} {:14} {v:.3}", r + 1, s.key);
                    samples.entry(s.key).or_default().entry(test).or_default().push(v);
                    raw.push(json!({"round": r + 1, "test": test, "setup": s.key, "value": v, "detail": detail}));
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
        Ok(())
    })();
    for s in &mut servers {
        let _ = s.kill();
        let _ = s.wait();
    }
    drop(nft);
    drop(nofilter);
    drop(weft);
    drop(hand);
    result?;

    let med = |setup: &str, test: &str| median(&samples[setup][test]);
    let mut medians = serde_json::Map::new();
    for s in &setups {
        let mut m = serde_json::Map::new();
        for t in cfg.tests.iter().map(String::as_str) {
            m.insert(t.into(), json!(med(s.key, t)));
        }
        medians.insert(s.key.into(), Value::Object(m));
    }
    let samples_json = json!(samples);
    let mut paired_ratios = serde_json::Map::new();
    // How far the per-round median can be trusted: a 95 % interval from the rounds themselves.
    let mut paired_ci95 = serde_json::Map::new();
    for t in cfg.tests.iter().map(String::as_str) {
        let (mut m, mut ci) = (serde_json::Map::new(), serde_json::Map::new());
        for (key, a, b) in PAIRS {
            let r = round_ratios(&samples_json, a, b, t);
            m.insert(key.into(), json!(median(&r)));
            ci.insert(key.into(), json!(median_ci95(&r).map(|(lo, hi)| [lo, hi])));
        }
        paired_ratios.insert(t.into(), Value::Object(m));
        paired_ci95.insert(t.into(), Value::Object(ci));
    }
    let mut ratios = serde_json::Map::new();
    for t in cfg.tests.iter().map(String::as_str) {
        // For RTT a ratio > 1 is worse; for throughput < 1 is worse.
        let m: serde_json::Map<String, Value> = PAIRS
            .iter()
            .map(|(key, a, b)| (key.to_string(), json!(med(a, t) / med(b, t))))
            .collect();
        ratios.insert(t.into(), Value::Object(m));
    }
    Ok(json!({
        "rounds": cfg.rounds,
        "seconds_per_test": cfg.secs,
        "pings": cfg.pings,
        "setups": setups.iter().map(|s| json!({"key": s.key, "label": s.label, "from": s.ns_from, "to": s.dst.to_string()})).collect::<Vec<_>>(),
        "units": {"tcp1": "Gbit/s", "tcp2": "Gbit/s", "udp64": "packets/s received", "ping": "ms (median RTT)"},
        "medians": medians,
        "ratios": ratios,
        "paired_ratios": paired_ratios,
        "paired_ci95": paired_ci95,
        "samples": samples,
        "raw": raw,
        "devices": facts,
        "took_s": t_start.elapsed().as_secs_f64(),
    }))
}

// ---------------------------------------------------------------------------------------------
// 2. convergence and 4. footprint

/// True while the host (whose kernel `k` is) still has a route, neighbour or FDB entry for `gone`.
async fn has_entries(k: &Kernel, idx: u32, gone: &Lease) -> Result<bool> {
    if k.routes(idx).await?.iter().any(|r| r.dst == gone.subnet) {
        return Ok(true);
    }
    if k.neighs(idx).await?.iter().any(|n| n.ip == gone.subnet.network()) {
        return Ok(true);
    }
    Ok(k.fdbs(idx)
        .await?
        .iter()
        .any(|f| f.mac == gone.vtep_mac || f.dst == gone.public_ip))
}

/// Per remaining host, on a thread of its own inside the host's namespace: waits at the barrier,
/// then watches the host's kernel (netlink change events, plus a dump at least every 5 ms) until
/// it has nothing left for `gone`; returns the instant it was first clean.
fn watch_clean(
    ns: String,
    gone: Lease,
    barrier: Arc<Barrier>,
    bound: Duration,
) -> std::thread::JoinHandle<Result<Option<Instant>>> {
    std::thread::spawn(move || {
        // Whatever happens, pass the barrier once, or the caller waits for ever.
        let prep = (|| {
            let f = std::fs::File::open(format!("/run/netns/{ns}"))?;
            setns(&f, CloneFlags::CLONE_NEWNET)?;
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let (events, k, idx, present) = rt.block_on(async {
                let mut events = weft::kernel::monitor()?;
                let k = Kernel::connect().await?;
                let idx = k
                    .link_by_name("flannel.1")
                    .await?
                    .ok_or_else(|| anyhow!("no flannel.1 in {ns}"))?
                    .index;
                let present = has_entries(&k, idx, &gone).await?;
                while events.try_recv().is_ok() {}
                Ok::<_, anyhow::Error>((events, k, idx, present))
            })?;
            Ok::<_, anyhow::Error>((rt, events, k, idx, present))
        })();
        barrier.wait();
        let (rt, mut events, k, idx, present) = prep?;
        if !present {
            bail!("{ns} had no entries for {} before the removal", gone.subnet);
        }
        rt.block_on(async {
            let deadline = Instant::now() + bound;
            while Instant::now() < deadline {
                if !has_entries(&k, idx, &gone).await? {
                    return Ok(Some(Instant::now()));
                }
                let _ = tokio::time::timeout(poll_interval(), events.recv()).await;
            }
            Ok(None)
        })
    })
}

/// The removal watchers' fallback dump interval (they also dump on every netlink change event of
/// their namespace): `WEFT_BENCH_POLL_MS`, default 5.
fn poll_interval() -> Duration {
    Duration::from_millis(
        std::env::var("WEFT_BENCH_POLL_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(5),
    )
}

/// Deletes `host`'s lease (its agent stopped first, so nothing re-creates it) and returns the time
/// until no other host has a route, neighbour or FDB entry for it.
async fn measure_removal(lab: &mut LabGuard, host: &str) -> Result<Duration> {
    let leases = lab.leases().await?;
    let gone = leases
        .get(host)
        .cloned()
        .ok_or_else(|| anyhow!("no lease for {host}"))?;
    lab.kill_agent(host, Signal::SIGTERM)?;
    let others: Vec<String> = lab.host_names().into_iter().filter(|h| h != host).collect();
    let barrier = Arc::new(Barrier::new(others.len() + 1));
    let watchers: Vec<_> = others
        .iter()
        .map(|h| {
            Ok(watch_clean(
                lab.namespace(h)?.to_string(),
                gone.clone(),
                barrier.clone(),
                Duration::from_secs(20),
            ))
        })
        .collect::<Result<_>>()?;
    let b = barrier.clone();
    tokio::task::spawn_blocking(move || b.wait()).await?;
    let store = lab.store()?;
    let key = lease_key(lab.prefix(), gone.subnet);
    let t0 = Instant::now();
    store.delete(&key).await?;
    let results = tokio::task::spawn_blocking(move || {
        watchers
            .into_iter()
            .map(|w| w.join().map_err(|_| anyhow!("watcher panicked"))?)
            .collect::<Vec<_>>()
    })
    .await?;
    let mut last = t0;
    for r in results {
        match r? {
            Some(t) => last = last.max(t),
            None => bail!("a host still had entries for {} after 20 s", gone.subnet),
        }
    }
    Ok(last.saturating_duration_since(t0))
}

/// Polls (every 0.5 ms, for at most `bound`) until `path` exists.
fn wait_file(path: PathBuf, bound: Duration) -> std::thread::JoinHandle<Option<Instant>> {
    std::thread::spawn(move || {
        let deadline = Instant::now() + bound;
        while Instant::now() < deadline {
            if path.exists() {
                return Some(Instant::now());
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        None
    })
}

fn proc_kb(pid: u32, file: &str, key: &str) -> Option<f64> {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .ok()?
        .lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn cpu_ticks(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = s.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?)
}

async fn footprint(cfg: &Cfg, lab: &mut LabGuard) -> Result<Value> {
    tokio::time::sleep(Duration::from_secs(2)).await;
    let hosts = lab.host_names();
    let pids: Vec<u32> = hosts.iter().filter_map(|h| lab.agent_pid(h)).collect();
    let rss: Vec<f64> = pids
        .iter()
        .filter_map(|p| proc_kb(*p, "status", "VmRSS:"))
        .map(|k| k / 1024.0)
        .collect();
    let pss: Vec<f64> = pids
        .iter()
        .filter_map(|p| proc_kb(*p, "smaps_rollup", "Pss:"))
        .map(|k| k / 1024.0)
        .collect();
    let idle_s = if cfg.quick { 3.0 } else { 10.0 };
    let t0: Vec<Option<f64>> = pids.iter().map(|p| cpu_ticks(*p)).collect();
    tokio::time::sleep(Duration::from_secs_f64(idle_s)).await;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let idle: Vec<f64> = pids
        .iter()
        .zip(&t0)
        .filter_map(|(p, a)| Some(100.0 * (cpu_ticks(*p)? - (*a)?) / hz / idle_s))
        .collect();
    // Start-up: restart h3's agent (its lease is kept) with its subnet.env deleted; time from the
    // spawn until the file is written again.
    let mut restart = Vec::new();
    let host = hosts.last().cloned().ok_or_else(|| anyhow!("empty lab"))?;
    // As many samples as joins are measured (`--adds`), and some even when no join is.
    for _ in 0..cfg.adds.max(if cfg.quick { 1 } else { 7 }) {
        lab.kill_agent(&host, Signal::SIGTERM)?;
        let file = lab.subnet_file(&host);
        let _ = std::fs::remove_file(&file);
        let w = wait_file(file, Duration::from_secs(10));
        lab.start_agent(&host).await?;
        let t0 = lab.agent_started_at(&host).ok_or_else(|| anyhow!("no start time"))?;
        let seen = tokio::task::spawn_blocking(move || w.join())
            .await?
            .map_err(|_| anyhow!("poller panicked"))?;
        restart.push(ms(seen
            .ok_or_else(|| anyhow!("subnet.env not written in 10 s"))?
            .saturating_duration_since(t0)));
        lab.wait_converged(Duration::from_secs(20)).await?;
    }
    // The lab's agents run weft-agent (src/lab/agent.rs): its size is the agent's.
    let agent_bin = cfg.weft_bin.with_file_name("weft-agent");
    let size = std::fs::metadata(&agent_bin)?.len() as f64 / 1048576.0;
    let cli_size = std::fs::metadata(&cfg.weft_bin)?.len() as f64 / 1048576.0;
    let cni = cfg.weft_bin.with_file_name("weft-cni");
    Ok(json!({
        "rss_mb": rss, "pss_mb": pss, "rss_mb_max": rss.iter().cloned().fold(0.0, f64::max),
        "pss_mb_max": pss.iter().cloned().fold(0.0, f64::max),
        "idle_cpu_percent": idle, "idle_seconds": idle_s,
        "binary_mb": size, "cli_binary_mb": cli_size,
        "cni_binary_mb": std::fs::metadata(&cni).map(|m| m.len() as f64 / 1048576.0).ok(),
        "startup_restart_ms": restart, "startup_restart_ms_median": median(&restart),
    }))
}

async fn convergence(cfg: &Cfg, want_footprint: bool) -> Result<(Value, Option<Value>)> {
    let mut rows = Vec::new();
    let mut fp = None;
    for store in &cfg.stores {
        let lab_store = match store.as_str() {
            "sqlite" => LabStore::Sqlite,
            "etcd" => LabStore::Etcd { members: 1 },
            other => bail!("unknown store {other:?} (sqlite, etcd)"),
        };
        for &n in &cfg.sizes {
            let t = Instant::now();
            eprintln!("convergence: {n}-host lab, {store}");
            let mut lab = Lab::up(
                LabOptions::new(LAB_CONV, n)
                    .weft_bin(&cfg.weft_bin)
                    .store(lab_store)
                    .wait(Some(Duration::from_secs(180))),
            )
            .await?;
            let up_s = lab.converged_in().map(|d| d.as_secs_f64());
            if n == 3 && want_footprint && fp.is_none() {
                fp = Some(footprint(cfg, &mut lab).await?);
            }
            let (mut join, mut removal, mut fresh_start) = (Vec::new(), Vec::new(), Vec::new());
            for i in 0..cfg.adds {
                let next = format!("h{}", lab.state().next_index);
                let w = wait_file(lab.subnet_file(&next), Duration::from_secs(60));
                let added = lab.add_host().await?;
                if added.name == next {
                    if let (Some(Some(seen)), Some(t0)) = (w.join().ok(), lab.agent_started_at(&next)) {
                        fresh_start.push(ms(seen.saturating_duration_since(t0)));
                    }
                }
                let j = ms(added.reachable_after.ok_or_else(|| anyhow!("add_host did not wait"))?);
                let r = ms(measure_removal(&mut lab, &added.name).await?);
                eprintln!("  {n} hosts, {store}, add {}: join {j:.1} ms, removal {r:.1} ms", i + 1);
                join.push(j);
                removal.push(r);
                lab.remove_host(&added.name).await?;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            lab.down()?;
            rows.push(json!({
                "hosts": n, "store": store, "up_converged_s": up_s,
                "join_ms": join, "join_ms_median": median(&join), "join_ms_p90": quantile(&join, 0.9),
                "removal_ms": removal, "removal_ms_median": median(&removal), "removal_ms_p90": quantile(&removal, 0.9),
                "fresh_startup_ms": fresh_start, "took_s": t.elapsed().as_secs_f64(),
                "removal_poll_ms": ms(poll_interval()),
            }));
        }
    }
    Ok((Value::Array(rows), fp))
}

// ---------------------------------------------------------------------------------------------
// report

fn f(x: &Value, digits: usize) -> String {
    match x.as_f64() {
        Some(v) if v.is_finite() => format!("{v:.digits$}"),
        _ => "–".into(),
    }
}

/// A data-plane ratio for the report: of the medians, then the median of the per-round ratios
/// and its 95 % interval (`0.953 (0.947, 0.91–0.98)`).
fn ratio_cell(dp: &Value, test: &str, key: &str) -> String {
    // From the samples, so a report rewritten from an older run's JSON has it too.
    let (a, b) = PAIRS
        .iter()
        .find(|(k, ..)| *k == key)
        .map_or(("", ""), |(_, a, b)| (*a, *b));
    let ci = match median_ci95(&round_ratios(&dp["samples"], a, b, test)) {
        Some((lo, hi)) => format!(", {lo:.2}–{hi:.2}"),
        None => String::new(),
    };
    format!(
        "{} ({}{ci})",
        f(&dp["ratios"][test][key], 3),
        f(&dp["paired_ratios"][test][key], 3)
    )
}

fn meta_line(meta: &Value) -> String {
    format!(
        "\nMeasured by `{}` on {} (commit {}) in {:.0} s; load average (1, 5, 15 min) {} before, {} after.\n\n",
        meta["command"].as_str().unwrap_or(""),
        meta["date"].as_str().unwrap_or(""),
        meta["commit"].as_str().unwrap_or(""),
        meta["took_s"].as_f64().unwrap_or(0.0),
        meta["load_before"].as_str().unwrap_or(""),
        meta["load_after"].as_str().unwrap_or("")
    )
}

fn markdown(r: &Value) -> Vec<(&'static str, String)> {
    let mut blocks = Vec::new();
    let m = &r["machine"];
    let mut s = String::new();
    let cmd = r["command"].as_str().unwrap_or("");
    let _ = cmd;
    s += &format!(
        "Machine: {} cores ({}), {} GiB, kernel {}. The machine is shared with other builds and tests \
         (load averages below), so every comparison is interleaved and reported as a median; each \
         section names the command, date, commit and load of its run.\n\n",
        m["nproc"],
        m["cpu"].as_str().unwrap_or(""),
        m["memory_gib"],
        m["kernel"].as_str().unwrap_or(""),
    );
    // Summary
    s += "| figure | weft | target | reference |\n|---|---|---|---|\n";
    let dp = &r["dataplane"];
    if dp.is_object() {
        let rt = &dp["ratios"];
        for (t, what, anchor) in [
            ("tcp1", "TCP 1 stream", " (anchor ≈ 0.87)"),
            ("tcp2", "TCP 2 streams", ""),
            ("udp64", "UDP 64 B packets/s", ""),
        ] {
            s += &format!(
                "| data plane, {what}, weft ÷ hand-configured VXLAN | **{}** | ≥ 0.97 | hand VXLAN ÷ underlay {}{anchor} |\n",
                ratio_cell(dp, t, "weft_over_hand"),
                f(&rt[t]["hand_over_underlay"], 3)
            );
        }
        s += &format!(
            "| ping RTT, weft ÷ hand VXLAN (lower is better) | **{}** | | hand ÷ underlay {} |\n",
            ratio_cell(dp, "ping", "weft_over_hand"),
            f(&rt["ping"]["hand_over_underlay"], 3)
        );
    }
    if let Some(rows) = r["convergence"].as_array() {
        for row in rows {
            let n = row["hosts"].as_u64().unwrap_or(0);
            let target = match n {
                3 => "≤ 50 ms",
                50 => "≤ 250 ms",
                _ => "",
            };
            let reference = if n == 3 { "flannel v0.20.2: 100–220 ms" } else { "" };
            s += &format!(
                "| new host reachable by all, {n} hosts ({}), median | **{} ms** (p90 {}) | {target} | {reference} |\n",
                row["store"].as_str().unwrap_or(""),
                f(&row["join_ms_median"], 1),
                f(&row["join_ms_p90"], 1)
            );
            s += &format!(
                "| removed lease gone from every host, {n} hosts ({}), median | **{} ms** (p90 {}) | {target} | |\n",
                row["store"].as_str().unwrap_or(""),
                f(&row["removal_ms_median"], 1),
                f(&row["removal_ms_p90"], 1)
            );
        }
    }
    s += "| control plane at 10,000 hosts (part 3) | see [its section](#3-control-plane-at-10000-hosts) | | |\n";
    let fp = &r["footprint"];
    if fp.is_object() {
        s += &format!("| agent resident memory, 3-host lab (largest of 3) | **{} MB** (PSS {} MB) | ≤ 10 MB | flannel v0.20.2 ≈ 43 MB |\n", f(&fp["rss_mb_max"], 1), f(&fp["pss_mb_max"], 1));
        s += &format!(
            "| agent start to `subnet.env` written (restart, median of {}) | **{} ms** | | |\n",
            fp["startup_restart_ms"].as_array().map_or(0, Vec::len),
            f(&fp["startup_restart_ms_median"], 1)
        );
        s += &format!(
            "| agent binary `weft-agent` (stripped, LTO) | {} MB | | |\n",
            f(&fp["binary_mb"], 1)
        );
    }
    s += "| lease contention, 50 agents at once against etcd (part 5) | see [its section](#5-lease-contention-etcd) | ≤ 3 s | |\n\n";
    if dp.is_object() {
        s += "Data-plane ratios: of the medians, then in brackets the median of the per-round ratios and \
              its 95 % interval (from the rounds' order statistics). An interval wholly on the right \
              side of a target proves it met, one wholly on the left proves it missed, one that holds the \
              target decides nothing; a run of fewer than 6 rounds has none. Part 1's deciding run is \
              the 60-round UDP 64 B one in \"Target misses and why\".\n\n";
    }
    blocks.push(("weft-bench:summary", std::mem::take(&mut s)));

    if dp.is_object() {
        s += &format!(
            "![data plane](bench-dataplane.png)\n\nTwo lab hosts (veth underlay through the router namespace), \
             {} interleaved rounds; iperf3 {} s per test, ping {} × 10 ms. Medians:\n\n\
             | setup | TCP 1 stream Gbit/s | TCP 2 streams Gbit/s | UDP 64 B kpackets/s received | ping RTT ms |\n|---|---|---|---|---|\n",
            dp["rounds"], dp["seconds_per_test"], dp["pings"]
        );
        for st in dp["setups"].as_array().into_iter().flatten() {
            let k = st["key"].as_str().unwrap_or("");
            let md = &dp["medians"][k];
            s += &format!(
                "| {} | {} | {} | {} | {} |\n",
                st["label"].as_str().unwrap_or(""),
                f(&md["tcp1"], 2),
                f(&md["tcp2"], 2),
                f(&json!(md["udp64"].as_f64().unwrap_or(f64::NAN) / 1000.0), 0),
                f(&md["ping"], 3)
            );
        }
        s += "\nRatios: of the medians, and in brackets the median of the per-round ratios (each pair measured one right after the other) with its 95 % interval (order statistics of the rounds; none below 6 rounds):\n\n| ratio | TCP 1 | TCP 2 | UDP 64 B | ping RTT |\n|---|---|---|---|---|\n";
        for (key, label) in [
            ("hand_over_underlay", "hand VXLAN ÷ underlay"),
            ("weft_over_hand", "**weft ÷ hand VXLAN**"),
            ("weft_nft_over_hand", "weft, filter in nft ÷ hand"),
            ("weft_nofilter_over_hand", "weft without peer filter ÷ hand"),
            (
                "weft_over_weft_nofilter",
                "weft ÷ weft without peer filter (cost of the BPF filter)",
            ),
            (
                "weft_nft_over_weft_nofilter",
                "weft, filter in nft ÷ weft without (cost of the nft filter)",
            ),
        ] {
            let c = |t: &str| ratio_cell(dp, t, key);
            s += &format!(
                "| {label} | {} | {} | {} | {} |\n",
                c("tcp1"),
                c("tcp2"),
                c("udp64"),
                c("ping")
            );
        }
        s += &meta_line(&dp["meta"]);
        s += "\nSetups: *underlay* — iperf3 between the two hosts' underlay addresses; *hand VXLAN* — in a \
              second, agent-less lab, `flannel.1` made by hand with flannel's settings (`ip link add flannel.1 type vxlan id 1 \
              local <underlay IP> dev eth0 dstport 8472 nolearning`, MTU eth0 − 50, address `<subnet>.0/32`, \
              per peer a permanent neighbour, an FDB entry and an onlink route); *weft* — the overlay as the agent \
              configures it, as shipped: its nft table, and the VXLAN peer filter as a BPF sk_lookup program pinned \
              on the lab's bpffs; *weft, filter in nft* — the same with `--bpf-pin-dir=none`, so the filter is the nft \
              table's `input` rule (where it is when a named or L2 network shares the port, or without bpffs); \
              *weft, no peer filter* — the same with `--vxlan-peer-filter=false`. Per-round samples, the device settings (`ip -d link`, `ethtool -k`) and \
              the nft rule counts are in `benchmarks.json`.\n\n";
        blocks.push(("weft-bench:dataplane", std::mem::take(&mut s)));
    }
    if let Some(rows) = r["convergence"].as_array() {
        s += "![convergence](bench-convergence.png)\n\n\
              | hosts | store | join median ms | join p90 ms | removal median ms | removal p90 ms | samples | new agent start → subnet.env, median ms | lab up, all pairs reach each other, s |\n|---|---|---|---|---|---|---|---|---|\n";
        for row in rows {
            let fresh: Vec<f64> = row["fresh_startup_ms"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_f64)
                .collect();
            s += &format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                row["hosts"],
                row["store"].as_str().unwrap_or(""),
                f(&row["join_ms_median"], 1),
                f(&row["join_ms_p90"], 1),
                f(&row["removal_ms_median"], 1),
                f(&row["removal_ms_p90"], 1),
                row["join_ms"].as_array().map_or(0, Vec::len),
                f(&json!(median(&fresh)), 1),
                f(&row["up_converged_s"], 2)
            );
        }
        s += "\n*Join*: `Lab::add_host` starts a new host's agent and, from that instant, every other host pings the new \
              host's overlay address every ≤ 5 ms with the lab's in-process ICMP prober; the figure is the moment the last \
              peer first gets an answer (process start, leasing, device creation, the peers noticing the lease and \
              programming it, the new host programming its peers). *Removal*: the added host's agent is stopped, then its \
              lease is deleted from the store; a thread per remaining host, inside its namespace, watches netlink change \
              events and dumps the routes, neighbours and FDB entries of `flannel.1` at least every 5 ms; the figure is the \
              moment the last host has none left for the removed lease. Each added host is removed again before the next add.\n\n";
        s += &meta_line(&rows.first().map(|r| r["meta"].clone()).unwrap_or_default());
        blocks.push(("weft-bench:convergence", std::mem::take(&mut s)));
    }
    if fp.is_object() {
        let list = |k: &str| {
            fp[k]
                .as_array()
                .into_iter()
                .flatten()
                .map(|v| f(v, 1))
                .collect::<Vec<_>>()
                .join(", ")
        };
        s += &format!(
            "| figure | value |\n|---|---|\n\
             | resident memory (RSS) per agent, 3-host lab, after joining | {} MB |\n\
             | proportional set size (PSS) per agent | {} MB |\n\
             | CPU while idle ({} s, each agent) | {} % |\n\
             | agent binary `weft-agent` (command line `weft`), stripped, LTO | {} MB ({} MB) |\n\
             | start-up: agent spawn → `subnet.env` written (restart, lease kept), samples | {} ms (median {}) |\n\n\
             Memory is read from `/proc/PID/status` (VmRSS) and `/proc/PID/smaps_rollup` (Pss) two seconds after the lab \
             converged; the start-up samples delete `subnet.env`, restart the agent and poll the file every 0.5 ms. \
             The start-up of a *new* host (lease acquired fresh) is in the convergence table.\n\n",
            list("rss_mb"), list("pss_mb"), f(&fp["idle_seconds"], 0), fp["idle_cpu_percent"].as_array().into_iter().flatten().map(|v| f(v, 2)).collect::<Vec<_>>().join(", "),
            f(&fp["binary_mb"], 1), f(&fp["cli_binary_mb"], 1), list("startup_restart_ms"), f(&fp["startup_restart_ms_median"], 1)
        );
        s += &meta_line(&fp["meta"]);
        blocks.push(("weft-bench:footprint", s));
    }
    blocks
}

/// Replaces the text between `<!-- NAME:begin -->` and `<!-- NAME:end -->` in `path` (appends the
/// block if the markers are missing); the rest of the file is left alone.
fn splice(path: &Path, name: &str, body: &str) -> Result<()> {
    let begin = format!("<!-- {name}:begin -->");
    let end = format!("<!-- {name}:end -->");
    let old = std::fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n".into());
    let block = format!("{begin}\n{body}{end}");
    let new = match (old.find(&begin), old.find(&end)) {
        (Some(a), Some(b)) if b > a => format!("{}{}{}", &old[..a], block, &old[b + end.len()..]),
        _ => format!("{}\n{}\n", old.trim_end(), block),
    };
    std::fs::write(path, new)?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let cfg = parse_args()?;
    if !nix::unistd::geteuid().is_root() {
        bail!("the benchmarks build network namespaces: run them as root (sudo bench/run.sh)");
    }
    std::env::set_var("WEFT_BIN", &cfg.weft_bin);
    for name in [LAB_HAND, LAB_WEFT, LAB_NOFILTER, LAB_NFT, LAB_CONV] {
        let _ = weft::lab::down(name);
    }
    std::fs::create_dir_all(&cfg.out)?;
    let t0 = Instant::now();
    let load_before = loadavg();
    let machine = machine();
    eprintln!(
        "weft-bench: {} (load {load_before})",
        if cfg.quick { "quick" } else { "full" }
    );
    let has = |p: &str| cfg.parts.iter().any(|x| x == p);
    let dp = if has("dataplane") {
        eprintln!("data plane: {} rounds × {} s", cfg.rounds, cfg.secs);
        dataplane(&cfg).await?
    } else {
        Value::Null
    };
    let (conv, fp) = if has("convergence") || has("footprint") {
        let sizes = if has("convergence") { cfg.sizes.clone() } else { vec![3] };
        let c = Cfg {
            sizes,
            adds: if has("convergence") { cfg.adds } else { 0 },
            ..cfg.clone()
        };
        let (rows, fp) = convergence(&c, has("footprint")).await?;
        (
            if has("convergence") { rows } else { Value::Null },
            fp.unwrap_or(Value::Null),
        )
    } else {
        (Value::Null, Value::Null)
    };
    let meta = json!({
        "command": cfg.command, "date": machine["date"], "commit": machine["commit"],
        "load_before": load_before, "load_after": loadavg(), "took_s": t0.elapsed().as_secs_f64(),
    });
    let with_meta = |mut v: Value| {
        if let Some(o) = v.as_object_mut() {
            o.insert("meta".into(), meta.clone());
        }
        v
    };
    let (dp, fp) = (with_meta(dp), with_meta(fp));
    let conv = match conv {
        Value::Array(rows) => Value::Array(rows.into_iter().map(with_meta).collect()),
        v => v,
    };
    // Parts not measured in this run keep their figures from the previous results.
    let old: Value = std::fs::read(cfg.out.join("benchmarks.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    let keep = |v: Value, k: &str| if v.is_null() { old[k].clone() } else { v };
    let (dp, conv, fp) = (keep(dp, "dataplane"), keep(conv, "convergence"), keep(fp, "footprint"));
    // Rewriting the docs only: the run's own fields stay those of the last measuring run.
    let (machine, load_before, command, took) = if cfg.parts.is_empty() && old.is_object() {
        (
            old["machine"].clone(),
            old["load_before"].clone(),
            old["command"].clone(),
            old["took_s"].clone(),
        )
    } else {
        (
            machine,
            json!(load_before),
            json!(cfg.command),
            json!(t0.elapsed().as_secs_f64()),
        )
    };
    let report = json!({
        "command": command,
        "machine": machine,
        "load_before": load_before,
        "load_after": if cfg.parts.is_empty() { old["load_after"].clone() } else { json!(loadavg()) },
        "took_s": took,
        "dataplane": dp,
        "convergence": conv,
        "footprint": fp,
    });
    std::fs::write(
        cfg.out.join("benchmarks.json"),
        serde_json::to_string_pretty(&report)? + "\n",
    )?;
    let blocks = markdown(&report);
    for (name, body) in &blocks {
        splice(&cfg.out.join("benchmarks.md"), name, body)?;
        println!("{body}");
    }
    plots::plots(&report, &cfg.out)?;
    eprintln!(
        "weft-bench: wrote {}/benchmarks.{{md,json}}, bench-*.png in {:.0} s",
        cfg.out.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_interval_is_made_of_order_statistics() {
        // n = 10: P(Bin(10, ½) ≤ 1) = 11/1024 ≤ 2.5 % < P(≤ 2), so k = 2: x(2) and x(9).
        let v: Vec<f64> = (1..=10).rev().map(f64::from).collect();
        assert_eq!(median_ci95(&v), Some((2.0, 9.0)));
        // n = 60: k = 22 (P(≤ 21) = 1.4 %, P(≤ 22) = 2.7 %): x(22) and x(39).
        let v: Vec<f64> = (1..=60).map(f64::from).collect();
        assert_eq!(median_ci95(&v), Some((22.0, 39.0)));
        // Too few rounds for a 95 % interval: P(Bin(5, ½) = 0) = 3.1 %.
        assert_eq!(median_ci95(&[1.0, 2.0, 3.0, 4.0, 5.0]), None);
        assert_eq!(median_ci95(&[]), None);
        // n = 6 is the first with one: P(Bin(6, ½) = 0) = 1.6 %.
        assert_eq!(median_ci95(&[6.0, 5.0, 4.0, 3.0, 2.0, 1.0]), Some((1.0, 6.0)));
    }

    #[test]
    fn round_ratios_pair_the_same_rounds() {
        let samples = json!({"weft": {"udp64": [90.0, 100.0]}, "hand": {"udp64": [100.0, 80.0]}});
        assert_eq!(round_ratios(&samples, "weft", "hand", "udp64"), vec![0.9, 1.25]);
        // A test that was not run has no ratios (and so no interval).
        assert!(round_ratios(&samples, "weft", "hand", "tcp1").is_empty());
    }
}
