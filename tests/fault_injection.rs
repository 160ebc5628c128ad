//! Seeded fault injection (issue 7): a 5-host lab with pings flowing between every pair of hosts
//! and a seeded random sequence of faults (`weft::lab::faults::plan`): `kill -9` of an agent and
//! its restart; the store stopped and started (with an agent restarted meanwhile, sometimes); a
//! route, neighbour or FDB entry or the device deleted by hand; the public link set down and up;
//! a lease deleted; a host removed for good. A third of the host faults happen while an agent
//! is down (the faulted host's own or another's), which must catch up at its restart.
//!
//! After each step, within a bound (10 s; 30 s after a store outage): every live host reaches
//! every other; each host's routes (proto 87), permanent neighbours, FDB entries and nft peers
//! on `flannel.1` are exactly one per other live lease, nothing for a lease that no longer
//! exists; one lease per live host, none for anything else, no two on one subnet, MAC or public
//! IP; the device carries the host's own lease address and MAC, `subnet.env` its subnet; every
//! agent runs; (etcd) one etcd lease per live host; every agent follows the store (a canary
//! lease is programmed, then removed, by all). No host changes subnet, and no VTEP MAC changes
//! unless that device was deleted. Pings every 20 ms between every pair the fault does not touch
//! (`Fault::may_lose`: for an agent kill or a store outage, every pair) lose nothing and none
//! is held up (slowest answer under 250 ms). See docs/reliability.md, "Fault injection".
//!
//! `WEFT_FAULT_SEED=N` replays a run (the seed is printed at the start and in every failure,
//! with the step and its fault); `WEFT_FAULT_STEPS` changes the number of steps (default 14).
//! On failure the lab's logs are copied to `/tmp/weft-fault-LAB-SEED/` before the lab goes.
//! Needs root; skips without it unless `WEFT_REQUIRE_ROOT=1`.

mod common;

use common::{have_root, lab_name, weft_bin};
use nix::sys::signal::Signal;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use weft::lab::faults::{self, Fault, Outage, PlanOptions, Step};
use weft::lab::{Lab, LabOptions, LabStore, PingStats, Pinger};
use weft::lease::Lease;

const HOSTS: u32 = 5;
/// A host is removed only while more than this many are left.
const MIN_HOSTS: usize = 3;
const DEFAULT_STEPS: usize = 14;
/// The whole test, lab included, with the default number of steps (more steps: 10 s each);
/// past it the test fails with the seed and the step.
const DEADLINE: Duration = Duration::from_secs(150);
const DEADLINE_PER_STEP: Duration = Duration::from_secs(10);
const PING_INTERVAL: Duration = Duration::from_millis(20);
/// The slowest round trip allowed on a pair a fault must not touch (kernel receive time; the
/// underlay's is about 0.1 ms): an echo held up longer waited somewhere, e.g. in the queue of a
/// neighbour entry being resolved again, which counts as lost.
const UNTOUCHED_MAX_RTT: Duration = Duration::from_millis(250);
/// Short enough that leases are renewed during the run (every 15 s), outages included.
const LEASE_TTL: &str = "30s";
/// What an agent logs when it takes its lease back at start.
const LEASE_REUSED: &str = "reusing the lease that names our public IP";
/// How long an agent stays down when a fault happens while it is down.
const AGENT_DOWN: Duration = Duration::from_millis(700);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_with_sqlite_store() {
    if !have_root("faults_with_sqlite_store") {
        return;
    }
    run(LabStore::Sqlite, "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_with_etcd_store() {
    if !have_root("faults_with_etcd_store") {
        return;
    }
    run(LabStore::Etcd { members: 1 }, "etcd").await;
}

fn seed() -> u64 {
    match std::env::var("WEFT_FAULT_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("WEFT_FAULT_SEED={s:?} is not a number")),
        Err(_) => rand::random::<u32>().into(),
    }
}

fn step_count() -> usize {
    match std::env::var("WEFT_FAULT_STEPS") {
        Ok(s) => s
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=100).contains(n))
            .unwrap_or_else(|| panic!("WEFT_FAULT_STEPS={s:?}: want 1 to 100")),
        Err(_) => DEFAULT_STEPS,
    }
}

/// What identifies a run in every message.
struct Run {
    seed: u64,
    backend: &'static str,
    steps: usize,
}

impl Run {
    /// Fails the test: seed, step and fault first, then the detail; the lab's logs are kept.
    fn fail(&self, lab: &Lab, step: usize, what: &str, detail: &str) -> ! {
        for h in lab.host_names() {
            let log = std::fs::read_to_string(lab.agent_log(&h)).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(12).collect();
            eprintln!("--- last lines of {h}'s agent log:");
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
        let kept = keep_logs(lab, self.seed);
        panic!(
            "seed={} step {step}/{} [{}] ({what}): {detail}\n  logs: {kept}\n  replay: WEFT_FAULT_SEED={} \
             cargo test --test fault_injection {} -- --nocapture",
            self.seed, self.steps, self.backend, self.seed, self.backend
        );
    }
}

/// Copies the lab's state directory (agent and etcd logs, `lab.json`, `subnet.env`s, the SQLite
/// store; not etcd's data) out of the way of the guard that deletes it.
fn keep_logs(lab: &Lab, seed: u64) -> String {
    let to = PathBuf::from(format!("/tmp/weft-fault-{}-{seed}", lab.name()));
    fn copy(from: &Path, to: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(to)?;
        for e in std::fs::read_dir(from)? {
            let e = e?;
            let name = e.file_name();
            let is_etcd_data = name.to_string_lossy().starts_with("etcd") && e.file_type()?.is_dir();
            if e.file_type()?.is_dir() && !is_etcd_data {
                copy(&e.path(), &to.join(&name))?;
            } else if e.file_type()?.is_file() {
                std::fs::copy(e.path(), to.join(&name))?;
            }
        }
        Ok(())
    }
    match copy(lab.dir(), &to) {
        Ok(()) => to.display().to_string(),
        Err(e) => format!("could not copy {} to {}: {e}", lab.dir().display(), to.display()),
    }
}

async fn run(store: LabStore, backend: &'static str) {
    let run = Run {
        seed: seed(),
        backend,
        steps: step_count(),
    };
    let t0 = Instant::now();
    let name = lab_name();
    eprintln!(
        "fault injection ({backend}, lab {name}): seed={} ({} steps; replay with WEFT_FAULT_SEED={})",
        run.seed, run.steps, run.seed
    );
    let opts = LabOptions::new(&name, HOSTS)
        .weft_bin(weft_bin())
        .store(store)
        .agent_arg("--subnet-lease-ttl")
        .agent_arg(LEASE_TTL)
        .wait(Some(Duration::from_secs(60)));
    let mut lab = Lab::up(opts)
        .await
        .unwrap_or_else(|e| panic!("seed={}: lab up ({backend}): {e}", run.seed));
    let plan = faults::plan(
        run.seed,
        &lab.host_names(),
        &PlanOptions {
            steps: run.steps,
            min_hosts: MIN_HOSTS,
            store,
        },
    );
    for (i, s) in plan.iter().enumerate() {
        eprintln!("  plan {}: {s}", i + 1);
    }
    if let Err(e) = whole_within(&lab, Duration::from_secs(10)).await {
        run.fail(&lab, 0, "before any fault", &e);
    }

    let limit = DEADLINE.max(DEADLINE_PER_STEP * run.steps as u32);
    let deadline = t0 + limit;
    let mut survived = 0;
    for (i, step) in plan.iter().enumerate() {
        let n = i + 1;
        let left = deadline.saturating_duration_since(Instant::now());
        let started = Instant::now();
        match tokio::time::timeout(left, run_step(&mut lab, step)).await {
            Ok(Ok(r)) => {
                survived += 1;
                eprintln!(
                    "seed={} step {n}/{} [{backend}] ({step}): whole {:.2} s after the fault, step {:.1} s; \
                     {} pairs pinged, {} echoes, untouched: lost 0, slowest {:.1} ms{}",
                    run.seed,
                    run.steps,
                    r.recovered.as_secs_f64(),
                    started.elapsed().as_secs_f64(),
                    r.pairs,
                    r.sent,
                    r.untouched_max_rtt.as_secs_f64() * 1000.0,
                    if r.touched.is_empty() {
                        String::new()
                    } else {
                        format!("; touched: {}", r.touched.join(", "))
                    }
                );
            }
            Ok(Err(e)) => run.fail(&lab, n, &step.to_string(), &e),
            Err(_) => run.fail(
                &lab,
                n,
                &step.to_string(),
                &format!("hard deadline: the test ran past {limit:?}"),
            ),
        }
    }

    for h in lab.host_names() {
        let log = std::fs::read_to_string(lab.agent_log(&h)).unwrap_or_default();
        if log.contains("panicked") {
            run.fail(&lab, run.steps, "after the last step", &format!("{h}'s agent panicked"));
        }
    }
    eprintln!(
        "fault injection ({backend}): seed={}: {survived}/{} steps injected and survived in {:.1} s",
        run.seed,
        run.steps,
        t0.elapsed().as_secs_f64()
    );
    lab.down().expect("lab down");
}

struct StepReport {
    /// From the end of the fault (agents restarted, store back) until the lab was whole.
    recovered: Duration,
    pairs: usize,
    sent: u32,
    /// The slowest answer on a pair the fault must not touch.
    untouched_max_rtt: Duration,
    /// Losses on pairs the fault was allowed to cut: `h1-h3 12 lost, slowest 3 ms`.
    touched: Vec<String>,
}

fn err(what: &str) -> impl Fn(weft::lab::LabError) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// Everything [`Lab::violations`] checks, plus (etcd) one etcd lease per live host.
async fn violations(lab: &Lab) -> Result<Vec<String>, String> {
    let mut v = match tokio::time::timeout(Duration::from_secs(5), lab.violations()).await {
        Ok(r) => r.map_err(err("checking the lab"))?,
        Err(_) => vec!["the store did not answer within 5 s".to_string()],
    };
    if !lab.etcd_members().is_empty() {
        let out = lab.etcdctl(&["lease", "list"]).map_err(err("etcdctl lease list"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let found = text
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|_| text.starts_with("found"));
        if found != Some(lab.host_names().len()) {
            v.push(format!(
                "etcd holds {found:?} leases for {} live hosts: {}",
                lab.host_names().len(),
                text.trim()
            ));
        }
    }
    Ok(v)
}

/// Waits until the lab is whole: no violation; every agent follows the store (a canary lease
/// written now is programmed by all, and removed by all once deleted); no violation again; every
/// pair answering.
async fn whole_within(lab: &Lab, bound: Duration) -> Result<(), String> {
    let deadline = Instant::now() + bound;
    no_violations(lab, bound, deadline).await?;
    let canary = lab.put_canary().await.map_err(err("writing the canary lease"))?;
    let followed = canary_seen(lab, &canary, true, deadline).await;
    lab.delete_lease_of(&canary)
        .await
        .map_err(err("deleting the canary lease"))?;
    followed?;
    canary_seen(lab, &canary, false, deadline).await?;
    no_violations(lab, bound, deadline).await?;
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_secs(2));
    lab.wait_converged(left).await.map_err(err("ping matrix"))?;
    Ok(())
}

async fn no_violations(lab: &Lab, bound: Duration, deadline: Instant) -> Result<(), String> {
    loop {
        let v = violations(lab).await?;
        if v.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "not whole {bound:?} after the fault:\n    {}",
                v.join("\n    ")
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until every host has (`present`) or has not the canary's route and FDB entry.
async fn canary_seen(lab: &Lab, canary: &Lease, present: bool, deadline: Instant) -> Result<(), String> {
    let route = format!("{} via {} onlink", canary.subnet, canary.subnet.network());
    let fdb = format!("{} dst {} permanent", canary.vtep_mac, canary.public_ip);
    loop {
        let mut behind = Vec::new();
        for h in lab.host_names() {
            let v = lab.host_view(&h).map_err(err("reading kernel state"))?;
            if v.routes.contains(&route) != present || v.fdb.contains(&fdb) != present {
                behind.push(h);
            }
        }
        if behind.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let what = if present { "programmed" } else { "removed" };
            return Err(format!(
                "{} never {what} the canary lease {} (agents not following the store)",
                behind.join(", "),
                canary.subnet
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn log_len(lab: &Lab, host: &str) -> u64 {
    std::fs::metadata(lab.agent_log(host)).map(|m| m.len()).unwrap_or(0)
}

/// The host's agent log from byte `from` on.
fn log_since(lab: &Lab, host: &str, from: u64) -> String {
    let log = std::fs::read(lab.agent_log(host)).unwrap_or_default();
    String::from_utf8_lossy(log.get(from as usize..).unwrap_or_default()).into_owned()
}

/// One continuous pinger per unordered pair of live hosts (from the first to the second's
/// overlay address: the echo and its reply cover both directions).
fn start_pingers(lab: &Lab, leases: &BTreeMap<String, Lease>) -> Result<Vec<(String, String, Pinger)>, String> {
    let hosts = lab.host_names();
    let mut out = Vec::new();
    for (i, a) in hosts.iter().enumerate() {
        for b in &hosts[i + 1..] {
            let ns = lab.namespace(a).map_err(err("namespace"))?;
            let dst = leases
                .get(b)
                .ok_or_else(|| format!("{b} has no lease"))?
                .subnet
                .network();
            let p = Pinger::start(ns, dst, PING_INTERVAL, 1 << 16, Duration::from_secs(120))
                .map_err(err("starting a pinger"))?;
            out.push((a.clone(), b.clone(), p));
        }
    }
    Ok(out)
}

async fn run_step(lab: &mut Lab, step: &Step) -> Result<StepReport, String> {
    let fault = &step.fault;
    let before = lab.leases().await.map_err(err("reading leases"))?;
    // An agent started during a store outage, and where its log started.
    let mut restarted_log: Option<(String, u64)> = None;
    let mut pingers = start_pingers(lab, &before)?;
    tokio::time::sleep(Duration::from_millis(200)).await;

    if let Some(x) = &step.agent_down {
        lab.kill_agent(x, Signal::SIGKILL)
            .map_err(err(&format!("kill -9 {x}")))?;
    }
    match fault {
        Fault::KillAgent { host, down } => {
            lab.kill_agent(host, Signal::SIGKILL)
                .map_err(err(&format!("kill -9 {host}")))?;
            tokio::time::sleep(*down).await;
            lab.start_agent(host)
                .await
                .map_err(err(&format!("restarting {host}")))?;
        }
        Fault::StoreOutage { down, how, restart } => {
            let t = Instant::now();
            let outage = lab.stop_store(*how).map_err(err("stopping the store"))?;
            if let Some(h) = restart {
                // Early, so that the agent's whole start (and, with SQLite, the 5 s busy timeout
                // of its first store access) falls inside the outage.
                tokio::time::sleep(Duration::from_millis(500)).await;
                lab.kill_agent(h, Signal::SIGKILL)
                    .map_err(err(&format!("kill -9 {h}")))?;
                restarted_log = Some((h.clone(), log_len(lab, h)));
                lab.start_agent(h)
                    .await
                    .map_err(err(&format!("restarting {h} during the outage")))?;
            }
            tokio::time::sleep((t + *down).saturating_duration_since(Instant::now())).await;
            if let Some((h, from)) = &restarted_log {
                if log_since(lab, h, *from).contains(LEASE_REUSED) {
                    return Err(format!("{h}'s agent got its lease while the store was down"));
                }
            }
            lab.start_store(outage).map_err(err("starting the store"))?;
        }
        Fault::DeleteEntry { host, peer, entry } => {
            let lease = before.get(peer).ok_or_else(|| format!("{peer} has no lease"))?;
            lab.delete_peer_entry(host, *entry, lease)
                .map_err(err(&format!("deleting the {entry}")))?;
        }
        Fault::DeleteDevice { host } => lab.delete_device(host).map_err(err("deleting the device"))?,
        Fault::LinkFlap { host, down } => lab.flap_public_link(host, *down).map_err(err("flapping the link"))?,
        Fault::DeleteLease { host } => {
            lab.delete_lease(host).await.map_err(err("deleting the lease"))?;
        }
        Fault::RemoveHost { host } => {
            // Its pairs end here: their pingers stop before its namespace goes.
            let (gone, kept): (Vec<_>, Vec<_>) = pingers.into_iter().partition(|(a, b, _)| a == host || b == host);
            pingers = kept;
            for (_, _, p) in gone {
                let _ = p.stop();
            }
            lab.remove_host(host).await.map_err(err(&format!("removing {host}")))?;
        }
    }
    if let Some(x) = &step.agent_down {
        tokio::time::sleep(AGENT_DOWN).await;
        lab.start_agent(x).await.map_err(err(&format!("restarting {x}")))?;
    }
    let applied = Instant::now();
    whole_within(lab, fault.recovery_bound()).await?;
    let recovered = applied.elapsed();
    // A moment of steady state, still under pings.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut report = StepReport {
        recovered,
        pairs: pingers.len(),
        sent: 0,
        untouched_max_rtt: Duration::ZERO,
        touched: Vec::new(),
    };
    let mut losses = Vec::new();
    for (a, b, p) in pingers {
        let s: PingStats = p.stop().map_err(err(&format!("pinger {a} -> {b}")))?;
        report.sent += s.sent;
        if s.sent == 0 {
            losses.push(format!("{a} -> {b} sent nothing"));
        } else if fault.may_lose(&a, &b) {
            report.touched.push(format!(
                "{a}-{b} {} lost, slowest {:.0} ms",
                s.lost,
                s.max_rtt.as_secs_f64() * 1000.0
            ));
        } else if s.lost > 0 {
            losses.push(format!(
                "{a} -> {b} lost {} of {} echoes (longest gap {} × {PING_INTERVAL:?}, first lost seqs {:?}) \
                 though this fault must not touch that pair",
                s.lost,
                s.sent,
                s.longest_gap,
                &s.lost_seqs[..s.lost_seqs.len().min(10)]
            ));
        } else if s.max_rtt > UNTOUCHED_MAX_RTT {
            losses.push(format!(
                "{a} -> {b}: an echo took {:?} (over {UNTOUCHED_MAX_RTT:?}: held up, e.g. queued while a \
                 neighbour was resolved again) though this fault must not touch that pair",
                s.max_rtt
            ));
        } else {
            report.untouched_max_rtt = report.untouched_max_rtt.max(s.max_rtt);
        }
    }
    if !losses.is_empty() {
        return Err(losses.join("; "));
    }

    // The agent started during the outage took its lease back once the store was back (it could
    // not before: checked as the store came back). With the SQLite write lock, its first store
    // access (opening the database) waits out the 5 s busy timeout and fails, which it must
    // report and wait out, not exit on. (Wedged, SQLite itself keeps retrying its read locks
    // for about 10 s; an etcd client keeps trying to connect for 5 s before it gives up.)
    if let Some((h, from)) = &restarted_log {
        let log = log_since(lab, h, *from);
        let mut want = vec![LEASE_REUSED];
        if matches!(
            fault,
            Fault::StoreOutage {
                how: Outage::SqliteWriteLocked,
                ..
            }
        ) {
            want.extend(["store unavailable", "store reachable again"]);
        }
        if let Some(missing) = want.iter().find(|w| !log.contains(**w)) {
            return Err(format!(
                "{h}'s agent, started during the outage, never logged {missing:?}:\n{log}"
            ));
        }
    }

    let after = lab.leases().await.map_err(err("reading leases"))?;
    for (h, l) in &after {
        let Some(b) = before.get(h) else {
            return Err(format!("{h} appeared from nowhere"));
        };
        if l.subnet != b.subnet {
            return Err(format!("{h} moved from {} to {}", b.subnet, l.subnet));
        }
        let device_deleted = matches!(fault, Fault::DeleteDevice { host } if host == h);
        if l.vtep_mac != b.vtep_mac && !device_deleted {
            return Err(format!("{h}'s VTEP MAC changed from {} to {}", b.vtep_mac, l.vtep_mac));
        }
    }
    Ok(report)
}
