//! What one store change costs the agent's pure path at 10,000 peers (issue 6, §3): selecting
//! the peers from the parsed leases, and planning against the kept view of the kernel.
//!
//! `cargo bench --bench planner`

use criterion::{criterion_group, criterion_main, Criterion};
use ipnet::Ipv4Net;
use std::hint::black_box;
use std::net::Ipv4Addr;
use weft::config::NetworkConfig;
use weft::lease::{lease_key, vxlan_lease_value};
use weft::mac::Mac;
use weft::planner::peers::{select_parsed, Host, ParsedLease};
use weft::planner::state::Observed;
use weft::planner::{peer_entries, plan, Devices};
use weft::store::Entry;

const PEERS: u32 = 10_000;
const DEV: u32 = 7;

fn lease(i: u32) -> ParsedLease {
    let subnet = Ipv4Net::new(Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 1, 0)) + (i << 8)), 24).unwrap();
    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 1)) + i);
    let b = i.to_be_bytes();
    let mac = Mac([0x02, 0xee, b[0], b[1], b[2], b[3]]);
    ParsedLease::new(Entry {
        key: lease_key("/coreos.com/network", subnet),
        value: vxlan_lease_value(ip, 1, mac),
        create_revision: i64::from(i) + 1,
        mod_revision: i64::from(i) + 1,
        expires_at: None,
    })
}

fn one_change(c: &mut Criterion) {
    let cfg = NetworkConfig::parse(r#"{"Network":"10.0.0.0/8","SubnetLen":24,"Backend":{"Type":"vxlan"}}"#).unwrap();
    let host = Host {
        public_ip: Ipv4Addr::new(192, 0, 2, 1),
        subnet: Some("10.255.255.0/24".parse().unwrap()),
    };
    let leases: Vec<ParsedLease> = (0..PEERS).map(lease).collect();
    let devices = Devices::vxlan_only(DEV);
    // The view: every peer's entries in place, as after the initial sync.
    let mut view = Observed::default();
    for p in select_parsed(&cfg, &host, &leases).peers {
        let e = peer_entries(&p, devices);
        view.neighs.extend(e.neigh);
        view.fdbs.extend(e.fdb);
        view.routes.insert(e.route);
    }
    let mut more = leases.clone();
    more.push(lease(PEERS));

    c.bench_function("parse one lease", |b| b.iter(|| lease(black_box(PEERS))));
    c.bench_function("select 10k peers", |b| {
        b.iter(|| select_parsed(&cfg, &host, black_box(&more)))
    });
    let set = select_parsed(&cfg, &host, &more);
    c.bench_function("plan one added peer against a 30k-entry view", |b| {
        b.iter(|| {
            let ops = plan(cfg.network, devices, black_box(&set.peers), &view);
            assert_eq!(ops.len(), 3);
            ops
        })
    });
}

criterion_group!(benches, one_change);
criterion_main!(benches);
