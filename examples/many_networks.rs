//! Scale of networks (issue 8, part 6): a 3-host lab whose agents serve N named L3 networks
//! (default 100), all created at once while the agents run. Measures the time until every host
//! has every network's device and a route to every other host in every network's table, the
//! agents' resident memory, and the kernel objects per host.
//!
//! `cargo build --release --example many_networks --bin weft --bin weft-agent && sudo ./target/release/examples/many_networks [NETWORKS]` (default 100)

use anyhow::{bail, Context, Result};
use std::time::{Duration, Instant};
use weft::lab::{rss_kb, Lab, LabOptions};
use weft::network::admin;

const NAME: &str = "wmn";

fn count(lab: &Lab, host: &str, argv: &[&str]) -> Result<usize> {
    let out = lab.exec(host, argv)?;
    if !out.status.success() {
        bail!("{argv:?} on {host}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count())
}

/// VXLAN devices, and weft's unicast routes in all tables, on `host`.
fn devices_and_routes(lab: &Lab, host: &str) -> Result<(usize, usize)> {
    let devices = count(lab, host, &["ip", "-o", "link", "show", "type", "vxlan"])?;
    let routes = count(
        lab,
        host,
        &[
            "ip", "-4", "route", "show", "table", "all", "proto", "87", "type", "unicast",
        ],
    )?;
    Ok((devices, routes))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let n: u32 = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(100);
    let _ = weft::lab::down(NAME);
    let bin = std::env::current_exe()?
        .parent()
        .and_then(|p| p.parent())
        .context("exe dir")?
        .join("weft");
    let opts = LabOptions::new(NAME, 3)
        .weft_bin(&bin)
        .wait(Some(Duration::from_secs(60)));
    let lab = Lab::up(opts).await?;
    let hosts = lab.host_names();
    let rss_before: Vec<u64> = hosts.iter().filter_map(|h| lab.agent_pid(h)).map(rss_kb).collect();
    let store = lab.store()?;

    let t0 = Instant::now();
    for i in 0..n {
        let cfg = format!(
            r#"{{"Network":"10.{}.0.0/16","Backend":{{"Type":"vxlan","VNI":{}}}}}"#,
            i + 1,
            1000 + i
        );
        admin::create(store.as_ref(), lab.prefix(), &format!("n{i}"), &cfg).await?;
    }
    let created = t0.elapsed();
    // Converged: on every host, every named network's device, and a weft route (proto 87) to
    // each other host in every network's table (plus the default network's two).
    let want_routes = (hosts.len() - 1) * (n as usize + 1);
    let deadline = Instant::now()
        + Duration::from_secs(
            std::env::var("WEFT_BENCH_TIMEOUT")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(300),
        );
    loop {
        let mut done = true;
        for h in &hosts {
            let (devices, routes) = devices_and_routes(&lab, h)?;
            if devices < n as usize + 1 || routes < want_routes {
                done = false;
            }
        }
        if done {
            break;
        }
        if Instant::now() > deadline {
            for h in &hosts {
                let (devices, routes) = devices_and_routes(&lab, h)?;
                eprintln!(
                    "{h}: {devices} devices, {routes} routes (want {} and {want_routes})",
                    n + 1
                );
            }
            bail!("not converged in time; agent logs were in {}", lab.dir().display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let converged = t0.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_after: Vec<u64> = hosts.iter().filter_map(|h| lab.agent_pid(h)).map(rss_kb).collect();

    println!(
        "{n} named networks on a 3-host lab, created in {:.0} ms",
        created.as_secs_f64() * 1000.0
    );
    println!(
        "converged (every device, every route on every host) {:.2} s after the first create",
        converged.as_secs_f64()
    );
    println!("agent RSS before: {rss_before:?} KB, after: {rss_after:?} KB");
    println!("| host | vxlan devices | weft routes (all tables) | unreachable routes | rules | permanent neighbours | fdb entries | nft tables |");
    println!("|---|---|---|---|---|---|---|---|");
    for h in &hosts {
        let (devices, routes) = devices_and_routes(&lab, h)?;
        let unreachable = count(
            &lab,
            h,
            &["ip", "-4", "route", "show", "table", "all", "type", "unreachable"],
        )?;
        let rules = count(&lab, h, &["ip", "-4", "rule", "show", "proto", "87"])?;
        let neighs = count(&lab, h, &["ip", "-4", "neigh", "show", "nud", "permanent"])?;
        let fdbs = count(&lab, h, &["bridge", "fdb", "show", "self"])?;
        let tables = count(&lab, h, &["nft", "list", "tables"])?;
        println!("| {h} | {devices} | {routes} | {unreachable} | {rules} | {neighs} | {fdbs} | {tables} |");
    }
    // WEFT_BENCH_LOGS=DIR keeps the agents' logs (the lab's directory goes with `down`).
    if let Ok(keep) = std::env::var("WEFT_BENCH_LOGS") {
        std::fs::create_dir_all(&keep)?;
        for h in &hosts {
            std::fs::copy(lab.agent_log(h), std::path::Path::new(&keep).join(format!("{h}.log")))?;
        }
    }
    lab.down()?;
    Ok(())
}
