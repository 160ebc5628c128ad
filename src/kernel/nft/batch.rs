//! Many tables' work in one `nft` run: the requests of every network agent on a host that arrive
//! together become one listing and one transaction.
//!
//! Each `nft` process loads the kernel's ruleset cache before it does anything, so its cost grows
//! with the number of tables; one process per network and change meant hundreds of processes
//! at once on a host with 100 networks. [`run_batch`] lists the `ip` ruleset once (or one table,
//! when only one is asked about), decides each request against it as [`super::ensure`] would, and
//! applies all their commands in one transaction. If that fails, the requests are applied one by
//! one, so one table's error is that table's alone.
//!
//! A round of peers set updates only (peers joining or leaving) skips `nft` altogether: it goes
//! over nfnetlink ([`setelem`]), and to `nft` only if that fails.

use super::compare::canonical;
use super::setelem::{self, SetChange};
use super::{
    apply_commands, list_table, nft, objects, parse, peer_commands, peers_update, render, render::table_objects,
    to_value, Applied, FirewallSpec, COUNTER_VXLAN_DROPPED, SET_PEERS,
};
use crate::kernel::KernelError;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

/// One network's request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NftRequest {
    /// Make the table match the spec (see [`super::ensure`]); also reads its drop counter.
    Ensure(FirewallSpec),
    /// Add and remove peers set elements without reading the table (see
    /// [`super::update_peers`]).
    UpdatePeers {
        table: String,
        added: Vec<Ipv4Addr>,
        removed: Vec<Ipv4Addr>,
    },
    /// Delete the table if it exists.
    Remove(String),
}

impl NftRequest {
    pub fn table(&self) -> &str {
        match self {
            NftRequest::Ensure(spec) => &spec.table,
            NftRequest::UpdatePeers { table, .. } | NftRequest::Remove(table) => table,
        }
    }
}

/// What a request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NftOutcome {
    /// With the VXLAN drop counter's packets as listed before the change (0 for a new table).
    Ensured {
        applied: Applied,
        dropped: u64,
    },
    PeersUpdated,
    /// Whether there was a table to delete.
    Removed(bool),
}

/// Runs the requests, at most one per table at a time (a second request for a table waits for
/// the next round, so each is decided against the table as the first left it). Results are in
/// request order.
pub fn run_batch(requests: &[NftRequest]) -> Vec<Result<NftOutcome, KernelError>> {
    let mut results: Vec<Option<Result<NftOutcome, KernelError>>> = vec![None; requests.len()];
    let mut left: Vec<usize> = (0..requests.len()).collect();
    while !left.is_empty() {
        let mut seen = BTreeSet::new();
        let (round, later): (Vec<usize>, Vec<usize>) =
            left.into_iter().partition(|&i| seen.insert(requests[i].table()));
        let round_requests: Vec<&NftRequest> = round.iter().map(|&i| &requests[i]).collect();
        for (i, r) in round.into_iter().zip(run_round(&round_requests)) {
            results[i] = Some(r);
        }
        left = later;
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(super::nft_err("batch", "request was not run"))))
        .collect()
}

/// Requests for distinct tables: one listing (if any request needs one), one transaction.
fn run_round(requests: &[&NftRequest]) -> Vec<Result<NftOutcome, KernelError>> {
    if let Some(outcomes) = updates_over_netlink(requests) {
        return outcomes;
    }
    let listed: Vec<&str> = requests
        .iter()
        .filter(|r| !matches!(r, NftRequest::UpdatePeers { .. }))
        .map(|r| r.table())
        .collect();
    let started = std::time::Instant::now();
    let tables = match list(&listed) {
        Ok(t) => t,
        Err(e) => {
            return requests
                .iter()
                .map(|r| match r {
                    NftRequest::UpdatePeers { .. } => decide(r, &BTreeMap::new()).and_then(|(cmds, outcome)| {
                        apply_commands("update peers", cmds)?;
                        Ok(outcome)
                    }),
                    _ => Err(e.clone()),
                })
                .collect()
        }
    };
    let decided: Vec<Result<(Vec<Value>, NftOutcome), KernelError>> =
        requests.iter().map(|r| decide(r, &tables)).collect();
    let all: Vec<Value> = decided
        .iter()
        .filter_map(|d| d.as_ref().ok())
        .flat_map(|(cmds, _)| cmds.iter().cloned())
        .collect();
    let writers = decided
        .iter()
        .filter(|d| d.as_ref().is_ok_and(|(c, _)| !c.is_empty()))
        .count();
    let listed_in = started.elapsed();
    let commands = all.len();
    let failed = match all.is_empty() {
        true => None,
        false => apply_commands("batch", all).err(),
    };
    tracing::debug!(
        requests = requests.len(),
        listed = listed.len(),
        commands,
        list_ms = listed_in.as_millis() as u64,
        apply_ms = (started.elapsed() - listed_in).as_millis() as u64,
        "nft: round"
    );
    let Some(err) = failed else {
        return decided.into_iter().map(|d| d.map(|(_, o)| o)).collect();
    };
    if writers > 1 {
        tracing::warn!(error = %err, requests = writers, "nft: a combined transaction failed; applying its requests one by one");
    }
    // The transaction failed as a whole. With one writer the error is its own; with more, each
    // runs on its own, so the error goes to the right table and the others still land.
    decided
        .into_iter()
        .zip(requests)
        .map(|(d, r)| {
            let (cmds, outcome) = d?;
            match (cmds.is_empty(), writers) {
                (true, _) => {}
                (false, 1) => return Err(err.clone()),
                (false, _) => apply_commands(op(r), cmds)?,
            }
            Ok(outcome)
        })
        .collect()
}

/// A round of peers set updates only (peers joining or leaving, the common case) is sent over
/// netlink by [`setelem`], without an `nft` run. None if the round holds anything else, or if
/// that failed: then `nft` runs the round as usual and its answer decides.
fn updates_over_netlink(requests: &[&NftRequest]) -> Option<Vec<Result<NftOutcome, KernelError>>> {
    let changes = requests
        .iter()
        .map(|r| match r {
            NftRequest::UpdatePeers { table, added, removed } => Some(SetChange {
                table,
                set: SET_PEERS,
                added,
                removed,
            }),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()?;
    match setelem::apply(&changes) {
        Ok(()) => Some(vec![Ok(NftOutcome::PeersUpdated); requests.len()]),
        Err(e) => {
            tracing::debug!(error = %e, "nft: set update over netlink failed; running nft");
            None
        }
    }
}

fn op(r: &NftRequest) -> &'static str {
    match r {
        NftRequest::Ensure(_) => "ensure table",
        NftRequest::UpdatePeers { .. } => "update peers",
        NftRequest::Remove(_) => "delete table",
    }
}

/// The commands a request needs against the listed tables, and what they will have done.
fn decide(r: &NftRequest, tables: &BTreeMap<String, Vec<Value>>) -> Result<(Vec<Value>, NftOutcome), KernelError> {
    match r {
        NftRequest::Ensure(spec) => {
            let Some(have_objs) = tables.get(&spec.table) else {
                let cmds = commands(&to_value(&render(spec)));
                return Ok((cmds, ensured(Applied::Created, 0)));
            };
            let dropped = listed_counter(have_objs, COUNTER_VXLAN_DROPPED);
            let want_objs: Vec<Value> = table_objects(spec).iter().map(to_value).collect();
            let (have, want) = (canonical(have_objs), canonical(&want_objs));
            if have == want {
                return Ok((Vec::new(), ensured(Applied::Unchanged, dropped)));
            }
            if have.objects == want.objects && have.rules == want.rules {
                let cmds = commands(&peers_update(&spec.table, &spec.peers));
                return Ok((cmds, ensured(Applied::PeersUpdated, dropped)));
            }
            let mut batch = to_value(&render(spec));
            for old in have_objs.iter().filter_map(|o| o.get("counter")) {
                super::carry_counter(&mut batch, old);
            }
            Ok((commands(&batch), ensured(Applied::Rewritten, dropped)))
        }
        NftRequest::UpdatePeers { table, added, removed } => {
            Ok((peer_commands(table, added, removed), NftOutcome::PeersUpdated))
        }
        NftRequest::Remove(table) => {
            if !tables.contains_key(table) {
                return Ok((Vec::new(), NftOutcome::Removed(false)));
            }
            // add + delete: succeeds even if the table vanished since we looked.
            let t = json!({"family": "ip", "name": table});
            Ok((
                vec![json!({"add": {"table": t}}), json!({"delete": {"table": t}})],
                NftOutcome::Removed(true),
            ))
        }
    }
}

fn ensured(applied: Applied, dropped: u64) -> NftOutcome {
    NftOutcome::Ensured { applied, dropped }
}

fn commands(batch: &Value) -> Vec<Value> {
    objects(batch).to_vec()
}

/// The listed objects of the named tables (absent: no such table). One table is listed alone;
/// more take one listing of the whole `ip` ruleset (about 4 ms per table of ours with nft
/// 1.0.6; `list tables` costs as much, it loads the same cache).
fn list(names: &[&str]) -> Result<BTreeMap<String, Vec<Value>>, KernelError> {
    let mut tables = BTreeMap::new();
    match names {
        [] => {}
        [one] => {
            if let Some(objs) = list_table(one)? {
                tables.insert(one.to_string(), objs);
            }
        }
        _ => {
            let v = parse(
                "list ruleset",
                &nft("list ruleset", &["-j", "list", "ruleset", "ip"], None)?,
            )?;
            let wanted: BTreeSet<&str> = names.iter().copied().collect();
            for obj in objects(&v) {
                if let Some(t) = table_of(obj).filter(|t| wanted.contains(t)) {
                    tables.entry(t.to_string()).or_insert_with(Vec::new).push(obj.clone());
                }
            }
        }
    }
    Ok(tables)
}

/// The `ip` table (weft's family, see `render::FAMILY`) a listed object belongs to (`{"table": {"name"}}`, `{"rule": {"table"}}`, …).
fn table_of(obj: &Value) -> Option<&str> {
    let (kind, body) = obj.as_object()?.iter().next()?;
    if body.get("family")?.as_str()? != "ip" {
        return None;
    }
    let key = if kind == "table" { "name" } else { "table" };
    body.get(key)?.as_str()
}

/// Packets of a named counter in a table's listing (0 if absent).
fn listed_counter(objs: &[Value], name: &str) -> u64 {
    objs.iter()
        .filter_map(|o| o.get("counter"))
        .find(|c| c.get("name").and_then(Value::as_str) == Some(name))
        .and_then(|c| c.get("packets")?.as_u64())
        .unwrap_or(0)
}
