//! Integration tests against the real kernel, each inside a fresh network namespace.
//! They need root; without it they skip, unless WEFT_REQUIRE_ROOT=1 makes that a failure.

use super::*;
use crate::planner::state::{FdbEntry, NeighEntry, RouteEntry, ROUTE_PROTO_WEFT};
use ipnet::Ipv4Net;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;

/// A network namespace `wk-<pid>-<n>` deleted on drop, also when the test panics.
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Netns {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!("wk-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
        sweep_stale();
        run("ip", &["netns", "add", &name]);
        Netns { name }
    }

    /// Runs `body` on a thread inside the namespace with its own current-thread runtime:
    /// netlink sockets opened there belong to the namespace. Panics propagate to the caller.
    fn run<F, Fut>(&self, body: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        let path = format!("/run/netns/{}", self.name);
        let thread = std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("open netns");
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(body());
        });
        if let Err(panic) = thread.join() {
            std::panic::resume_unwind(panic);
        }
    }
}

/// Deletes `wk-<pid>-*` namespaces whose test process died without running its guards
/// (killed by a timeout, say).
fn sweep_stale() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Ok(dir) = std::fs::read_dir("/run/netns") else {
            return;
        };
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let pid = name.strip_prefix("wk-").and_then(|r| r.split('-').next());
            if let Some(pid) = pid.and_then(|p| p.parse::<u32>().ok()) {
                if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                    let _ = Command::new("ip").args(["netns", "del", &name]).status();
                }
            }
        }
    });
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// `ip -n NS ARGS…`, which must succeed; returns stdout.
fn ip(ns: &str, args: &str) -> String {
    let mut v = vec!["-n", ns];
    v.extend(args.split_whitespace());
    run("ip", &v)
}

/// `bridge -n NS ARGS…`, which must succeed; returns stdout.
fn bridge(ns: &str, args: &str) -> String {
    let mut v = vec!["-n", ns];
    v.extend(args.split_whitespace());
    run("bridge", &v)
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().expect("spawn command");
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// False (with a note) when the tests cannot run; a failure if WEFT_REQUIRE_ROOT=1.
fn can_run() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var("WEFT_REQUIRE_ROOT").as_deref() != Ok("1"),
        "kernel tests need root and WEFT_REQUIRE_ROOT=1 is set"
    );
    eprintln!("skipping kernel integration test: not root");
    false
}

/// A namespace with the underlay: veth va (192.0.2.1/24, up) <-> vb (up).
fn underlay() -> Netns {
    let ns = Netns::new();
    ip(&ns.name, "link add va type veth peer name vb");
    ip(&ns.name, "addr add 192.0.2.1/24 dev va");
    ip(&ns.name, "link set va up");
    ip(&ns.name, "link set vb up");
    ns
}

const VX: &str = "weft.1";

fn spec(link: u32) -> VxlanSpec {
    VxlanSpec {
        name: VX.into(),
        vni: 1,
        local: "192.0.2.1".parse().unwrap(),
        link,
        port: 8472,
        mtu: 1450,
        learning: false,
        gbp: false,
    }
}

/// Connects and creates the VXLAN device on va, up, with 10.0.1.0/32: (kernel, va, vxlan).
async fn vxlan_up() -> (Kernel, u32, u32) {
    let k = Kernel::connect().await.unwrap();
    let va = k.link_by_name("va").await.unwrap().expect("va").index;
    let vx = k.create_vxlan(&spec(va)).await.unwrap().index;
    k.set_up(vx).await.unwrap();
    k.ensure_address(vx, "10.0.1.0/32".parse().unwrap()).await.unwrap();
    (k, va, vx)
}

fn mac(s: &str) -> Mac {
    s.parse().unwrap()
}

#[test]
fn links_and_vxlan() {
    if !can_run() {
        return;
    }
    let ns = underlay();
    let name = ns.name.clone();
    ns.run(move || async move {
        let k = Kernel::connect().await.unwrap();
        let va = k.link_by_name("va").await.unwrap().expect("va");
        assert_eq!(va.kind.as_deref(), Some("veth"));
        assert!(va.up && va.running && va.vxlan.is_none() && va.mac.is_some());

        let vx = k.create_vxlan(&spec(va.index)).await.unwrap();
        let want = VxlanInfo {
            vni: 1,
            local: Some("192.0.2.1".parse().unwrap()),
            link: Some(va.index),
            port: 8472,
            learning: false,
            gbp: false,
        };
        assert_eq!(vx.vxlan.as_ref(), Some(&want));
        assert_eq!(
            (vx.name.as_str(), vx.mtu, vx.kind.as_deref()),
            (VX, 1450, Some("vxlan"))
        );
        assert!(!vx.up && !vx.running);
        assert!(vx.mac.is_some_and(|m| m.is_valid_unicast()));
        let shown = ip(&name, "-d link show weft.1");
        assert!(shown.contains("vxlan id 1 local 192.0.2.1 dev va"), "{shown}");
        assert!(
            shown.contains("dstport 8472") && shown.contains("nolearning"),
            "{shown}"
        );
        assert!(shown.contains(&vx.mac.unwrap().to_string()), "{shown}");
        assert_eq!(k.link_by_index(vx.index).await.unwrap(), Some(vx.clone()));
        assert!(k.links().await.unwrap().contains(&vx));

        k.set_up(vx.index).await.unwrap();
        k.set_mtu(vx.index, 1400).await.unwrap();
        let vx2 = k.link_by_index(vx.index).await.unwrap().unwrap();
        assert!(vx2.up && vx2.running && vx2.mtu == 1400);

        let err = k.create_vxlan(&spec(va.index)).await.unwrap_err();
        assert_eq!(err.errno(), Some(libc::EEXIST));
        assert!(err.to_string().contains("File exists"), "{err}");

        // learning and gbp read back when set.
        let s = VxlanSpec {
            name: "weft.2".into(),
            vni: 2,
            learning: true,
            gbp: true,
            ..spec(va.index)
        };
        let v2 = k.create_vxlan(&s).await.unwrap().vxlan.unwrap();
        assert!(v2.learning && v2.gbp && v2.vni == 2);

        k.delete_link(vx.index).await.unwrap();
        k.delete_link(vx.index).await.unwrap();
        assert_eq!(k.link_by_name(VX).await.unwrap(), None);
        assert_eq!(k.link_by_index(vx.index).await.unwrap(), None);
        assert!(matches!(k.set_up(vx.index).await, Err(KernelError::NoSuchLink(_))));
    });
}

#[test]
fn addresses() {
    if !can_run() {
        return;
    }
    let ns = underlay();
    let name = ns.name.clone();
    ns.run(move || async move {
        let (k, va, vx) = vxlan_up().await;
        let a: Ipv4Net = "10.0.7.0/32".parse().unwrap();
        let addr = IpAddr::V4(a.addr());
        k.ensure_address(vx, a).await.unwrap();
        k.ensure_address(vx, a).await.unwrap();
        assert!(k.addresses(Some(vx)).await.unwrap().contains(&(vx, addr, 32)));
        let all = k.addresses(None).await.unwrap();
        assert!(all.contains(&(vx, addr, 32)));
        assert!(all.contains(&(va, "192.0.2.1".parse().unwrap(), 24)));
        assert!(k.addresses(Some(va)).await.unwrap().iter().all(|x| x.0 == va));
        let shown = ip(&name, "addr show dev weft.1");
        assert!(shown.contains("inet 10.0.7.0/32"), "{shown}");

        k.remove_address(vx, a).await.unwrap();
        k.remove_address(vx, a).await.unwrap();
        let left = k.addresses(Some(vx)).await.unwrap();
        assert!(!left.iter().any(|x| x.1 == addr), "{left:?}");
    });
}

#[test]
fn routes() {
    if !can_run() {
        return;
    }
    let ns = underlay();
    let name = ns.name.clone();
    ns.run(move || async move {
        let (k, va, vx) = vxlan_up().await;
        assert_eq!(k.default_route_oif().await.unwrap(), None);
        ip(&name, "route add default via 192.0.2.254 dev va");
        assert_eq!(k.default_route_oif().await.unwrap(), Some(va));

        let r = RouteEntry {
            dst: "10.0.2.0/24".parse().unwrap(),
            gateway: "10.0.2.0".parse().unwrap(),
            oif: vx,
            onlink: true,
            protocol: ROUTE_PROTO_WEFT,
            metric: 0,
        };
        k.ensure_route(&r).await.unwrap();
        k.ensure_route(&r).await.unwrap();
        assert_eq!(k.routes(vx).await.unwrap(), vec![r]);
        let shown = ip(&name, "route show dev weft.1");
        assert!(shown.contains("10.0.2.0/24 via 10.0.2.0 proto 87 onlink"), "{shown}");

        // Somebody else's route on the device is reported too, with its protocol.
        ip(&name, "route add 10.0.3.0/24 dev weft.1 proto boot");
        let other = RouteEntry {
            dst: "10.0.3.0/24".parse().unwrap(),
            gateway: Ipv4Addr::UNSPECIFIED,
            oif: vx,
            onlink: false,
            protocol: 3,
            metric: 0,
        };
        assert_eq!(k.routes(vx).await.unwrap(), vec![r, other]);
        assert!(!k.routes(va).await.unwrap().iter().any(|x| x.oif != va));

        // Replace moves the gateway; deleting the old one is then a no-op.
        let r2 = RouteEntry {
            gateway: "10.0.2.1".parse().unwrap(),
            ..r
        };
        k.ensure_route(&r2).await.unwrap();
        assert_eq!(k.routes(vx).await.unwrap(), vec![r2, other]);
        k.remove_route(&r).await.unwrap();
        assert_eq!(k.routes(vx).await.unwrap(), vec![r2, other]);
        k.remove_route(&r2).await.unwrap();
        k.remove_route(&r2).await.unwrap();
        k.remove_route(&other).await.unwrap();
        assert_eq!(k.routes(vx).await.unwrap(), vec![]);

        // Metrics tell routes to one destination apart: ours (metric 7) goes beside an older
        // metric-0 one instead of replacing it, and removing the metric-0 one (a delete without
        // a metric matches the lowest first) leaves ours, as `Observed::apply` assumes.
        let old = r;
        let ours = RouteEntry { metric: 7, ..r };
        k.ensure_route(&old).await.unwrap();
        k.ensure_route(&ours).await.unwrap();
        assert_eq!(k.routes(vx).await.unwrap(), vec![old, ours]);
        assert!(ip(&name, "route show dev weft.1").contains("10.0.2.0/24 via 10.0.2.0 proto 87 metric 7 onlink"));
        k.remove_route(&old).await.unwrap();
        assert_eq!(k.routes(vx).await.unwrap(), vec![ours]);
        k.remove_route(&ours).await.unwrap();
        assert_eq!(k.routes(vx).await.unwrap(), vec![]);

        let bad = RouteEntry {
            oif: 999_999,
            dst: "10.0.9.0/24".parse().unwrap(),
            ..r
        };
        let err = k.ensure_route(&bad).await.unwrap_err().to_string();
        assert!(
            err.starts_with("netlink add route on 10.0.9.0/24 via 10.0.2.0 dev 999999"),
            "{err}"
        );
        assert!(err.ends_with("No such device"), "{err}");
    });
}

#[test]
fn a_named_networks_table_rules_and_unreachable_route() {
    if !can_run() {
        return;
    }
    let ns = underlay();
    let name = ns.name.clone();
    ns.run(move || async move {
        let (main, _va, vx) = vxlan_up().await;
        let t = main.with_table(100_000_001);
        assert_eq!((main.table(), t.table()), (254, 100_000_001));
        let r = RouteEntry {
            dst: "10.0.2.0/24".parse().unwrap(),
            gateway: "10.0.2.0".parse().unwrap(),
            oif: vx,
            onlink: true,
            protocol: ROUTE_PROTO_WEFT,
            metric: 0,
        };
        t.ensure_route(&r).await.unwrap();
        // The table's routes are its handle's only.
        assert_eq!(t.routes(vx).await.unwrap(), vec![r]);
        assert_eq!(main.routes(vx).await.unwrap(), vec![]);
        assert!(ip(&name, "route show table 100000001").contains("10.0.2.0/24 via 10.0.2.0 dev weft.1 proto 87 onlink"));

        let net: Ipv4Net = "10.0.0.0/16".parse().unwrap();
        t.ensure_unreachable(net, ROUTE_PROTO_WEFT).await.unwrap();
        t.ensure_unreachable(net, ROUTE_PROTO_WEFT).await.unwrap();
        assert_eq!(t.unreachable_routes(ROUTE_PROTO_WEFT).await.unwrap(), vec![net]);
        assert_eq!(main.unreachable_routes(ROUTE_PROTO_WEFT).await.unwrap(), vec![]);
        assert_eq!(t.routes(vx).await.unwrap(), vec![r], "unreachable is not a peer route");

        let rules = crate::agent::isolation::wanted_rules("weft.1", 100_000_001, Some("10.0.1.0/24".parse().unwrap()));
        for rule in &rules {
            main.ensure_rule(rule).await.unwrap();
            main.ensure_rule(rule).await.unwrap();
        }
        let mut have = main.weft_rules().await.unwrap();
        have.sort();
        assert_eq!(have, rules.iter().cloned().collect::<Vec<_>>());
        let shown = ip(&name, "rule show");
        assert!(shown.contains("1000:\tfrom 10.0.1.0/24 lookup 100000001 proto 87"), "{shown}");
        assert!(shown.contains("1000:\tfrom all oif weft.1 lookup 100000001 proto 87"), "{shown}");
        // Somebody else's rule is not ours.
        ip(&name, "rule add from 10.9.0.0/16 lookup 100 priority 500");
        assert_eq!(main.weft_rules().await.unwrap().len(), 3);
        for rule in &rules {
            main.remove_rule(rule).await.unwrap();
            main.remove_rule(rule).await.unwrap();
        }
        assert_eq!(main.weft_rules().await.unwrap(), vec![]);
        assert!(ip(&name, "rule show").contains("from 10.9.0.0/16 lookup 100"));

        // Flushing the named table empties it; the main table is never flushed.
        assert_eq!(t.flush_table().await.unwrap(), 2);
        assert_eq!(ip(&name, "route show table 100000001").trim(), "");
        ip(&name, "route add 10.7.0.0/16 dev weft.1");
        assert_eq!(main.flush_table().await.unwrap(), 0);
        assert!(ip(&name, "route show").contains("10.7.0.0/16"));
    });
}

#[test]
fn neighs() {
    if !can_run() {
        return;
    }
    let ns = underlay();
    let name = ns.name.clone();
    ns.run(move || async move {
        let (k, va, vx) = vxlan_up().await;
        let n = NeighEntry {
            ip: "10.0.2.0".parse().unwrap(),
            mac: mac("02:00:00:00:00:02"),
        };
        k.ensure_neigh(vx, &n).await.unwrap();
        k.ensure_neigh(vx, &n).await.unwrap();
        // Not ours: not permanent, or on another device.
        ip(
            &name,
            "neigh add 10.0.5.5 lladdr 02:00:00:00:00:55 dev weft.1 nud reachable",
        );
        ip(
            &name,
            "neigh add 192.0.2.7 lladdr 02:00:00:00:00:07 dev va nud permanent",
        );
        assert_eq!(k.neighs(vx).await.unwrap(), vec![n]);
        let shown = ip(&name, "neigh show dev weft.1");
        assert!(shown.contains("10.0.2.0 lladdr 02:00:00:00:00:02 PERMANENT"), "{shown}");
        assert_eq!(k.neighs(va).await.unwrap().len(), 1);

        let n2 = NeighEntry {
            mac: mac("02:00:00:00:00:03"),
            ..n
        };
        k.ensure_neigh(vx, &n2).await.unwrap();
        assert_eq!(k.neighs(vx).await.unwrap(), vec![n2]);
        k.remove_neigh(vx, &n2).await.unwrap();
        k.remove_neigh(vx, &n2).await.unwrap();
        assert_eq!(k.neighs(vx).await.unwrap(), vec![]);
        assert!(!ip(&name, "neigh show dev weft.1").contains("10.0.2.0"));
    });
}

#[test]
fn fdbs() {
    if !can_run() {
        return;
    }
    let ns = underlay();
    let name = ns.name.clone();
    ns.run(move || async move {
        let (k, _va, vx) = vxlan_up().await;
        let f = FdbEntry {
            mac: mac("02:00:00:00:00:02"),
            dst: "192.0.2.2".parse().unwrap(),
        };
        k.ensure_fdb(vx, &f).await.unwrap();
        k.ensure_fdb(vx, &f).await.unwrap();
        // Not ours: not permanent (`static` is NUD_NOARP alone), the all-zeros default dst.
        bridge(&name, "fdb add 02:00:00:00:00:44 dev weft.1 dst 192.0.2.4 self dynamic");
        bridge(&name, "fdb add 02:00:00:00:00:45 dev weft.1 dst 192.0.2.5 self static");
        bridge(
            &name,
            "fdb append 00:00:00:00:00:00 dev weft.1 dst 192.0.2.9 self permanent",
        );
        assert_eq!(k.fdbs(vx).await.unwrap(), vec![f]);
        let shown = bridge(&name, "fdb show dev weft.1");
        assert!(
            shown.contains("02:00:00:00:00:02 dst 192.0.2.2 self permanent"),
            "{shown}"
        );

        let f2 = FdbEntry {
            dst: "192.0.2.3".parse().unwrap(),
            ..f
        };
        k.ensure_fdb(vx, &f2).await.unwrap();
        assert_eq!(k.fdbs(vx).await.unwrap(), vec![f2]);
        k.remove_fdb(vx, &f).await.unwrap(); // old dst: already gone
        assert_eq!(k.fdbs(vx).await.unwrap(), vec![f2]);
        k.remove_fdb(vx, &f2).await.unwrap();
        k.remove_fdb(vx, &f2).await.unwrap();
        assert_eq!(k.fdbs(vx).await.unwrap(), vec![]);
        // iproute2's default state is NUD_PERMANENT|NUD_NOARP: permanent too.
        bridge(&name, "fdb add 02:00:00:00:00:46 dev weft.1 dst 192.0.2.6 self");
        let f3 = FdbEntry {
            mac: mac("02:00:00:00:00:46"),
            dst: "192.0.2.6".parse().unwrap(),
        };
        assert_eq!(k.fdbs(vx).await.unwrap(), vec![f3]);
        k.remove_fdb(vx, &f3).await.unwrap();
        assert_eq!(k.fdbs(vx).await.unwrap(), vec![]);
        assert!(!bridge(&name, "fdb show dev weft.1").contains("02:00:00:00:00:02"));
    });
}

/// Kernel behaviour the agent relies on (checked on 6.18): the underlay going down leaves the
/// VXLAN device and its entries alone; the VXLAN device going down flushes its routes and ARP
/// entries but keeps its FDB; deleting the underlay deletes the VXLAN device.
#[test]
fn underlay_and_vxlan_down() {
    if !can_run() {
        return;
    }
    let ns = underlay();
    let name = ns.name.clone();
    ns.run(move || async move {
        let (k, va, vx) = vxlan_up().await;
        let r = RouteEntry {
            dst: "10.0.2.0/24".parse().unwrap(),
            gateway: "10.0.2.0".parse().unwrap(),
            oif: vx,
            onlink: true,
            protocol: ROUTE_PROTO_WEFT,
            metric: 0,
        };
        let n = NeighEntry {
            ip: r.gateway,
            mac: mac("02:00:00:00:00:02"),
        };
        let f = FdbEntry {
            mac: n.mac,
            dst: "192.0.2.2".parse().unwrap(),
        };
        let program = || async {
            k.ensure_route(&r).await.unwrap();
            k.ensure_neigh(vx, &n).await.unwrap();
            k.ensure_fdb(vx, &f).await.unwrap();
        };
        program().await;

        ip(&name, "link set va down");
        let l = k.link_by_index(vx).await.unwrap().unwrap();
        assert!(l.up && l.running, "{l:?}");
        assert_eq!(k.routes(vx).await.unwrap(), vec![r]);
        assert_eq!(k.neighs(vx).await.unwrap(), vec![n]);
        assert_eq!(k.fdbs(vx).await.unwrap(), vec![f]);
        ip(&name, "link set va up");

        ip(&name, "link set weft.1 down");
        assert_eq!(k.routes(vx).await.unwrap(), vec![]);
        assert_eq!(k.neighs(vx).await.unwrap(), vec![]);
        assert_eq!(k.fdbs(vx).await.unwrap(), vec![f]);
        k.set_up(vx).await.unwrap();
        program().await;

        k.delete_link(va).await.unwrap();
        assert_eq!(k.link_by_index(vx).await.unwrap(), None);
    });
}

/// Waits for an event matching `want`, skipping others.
async fn expect_event(rx: &mut mpsc::Receiver<KernelEvent>, want: impl Fn(&KernelEvent) -> bool) -> KernelEvent {
    let wait = async {
        loop {
            match rx.recv().await {
                Some(e) if want(&e) => return e,
                Some(_) => {}
                None => panic!("monitor closed"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), wait)
        .await
        .expect("no matching event within 5s")
}

#[test]
fn monitor_events() {
    if !can_run() {
        return;
    }
    let ns = underlay();
    let name = ns.name.clone();
    ns.run(move || async move {
        let k = Kernel::connect().await.unwrap();
        let va = k.link_by_name("va").await.unwrap().unwrap().index;
        let mut rx = monitor().unwrap();
        ip(&name, "link add d0 type veth peer name d1");
        let d0 = k.link_by_name("d0").await.unwrap().unwrap().index;
        expect_event(&mut rx, |e| {
            *e == KernelEvent::Link {
                index: d0,
                deleted: false,
            }
        })
        .await;
        ip(&name, "link del d0");
        expect_event(&mut rx, |e| {
            *e == KernelEvent::Link {
                index: d0,
                deleted: true,
            }
        })
        .await;

        // Route and neighbour events say which entry changed, so the agent can tell the echo of
        // its own operation from somebody else's change.
        let route = RouteEntry {
            dst: "10.0.4.0/24".parse().unwrap(),
            gateway: Ipv4Addr::new(192, 0, 2, 4),
            oif: va,
            onlink: false,
            protocol: 3, // boot, `ip route add`'s default
            metric: 0,
        };
        let route_event = |deleted| KernelEvent::Route {
            oif: Some(va),
            change: Some(Change::Route {
                table: 254,
                entry: route,
                deleted,
            }),
        };
        ip(&name, "route add 10.0.4.0/24 via 192.0.2.4 dev va");
        expect_event(&mut rx, |e| *e == route_event(false)).await;
        ip(&name, "route del 10.0.4.0/24 via 192.0.2.4 dev va");
        expect_event(&mut rx, |e| *e == route_event(true)).await;

        ip(&name, "addr add 192.0.2.77/24 dev va");
        expect_event(&mut rx, |e| *e == KernelEvent::Address { index: va }).await;
        ip(
            &name,
            "neigh add 192.0.2.8 lladdr 02:00:00:00:00:08 dev va nud permanent",
        );
        let neigh = NeighEntry {
            ip: Ipv4Addr::new(192, 0, 2, 8),
            mac: Mac([2, 0, 0, 0, 0, 8]),
        };
        expect_event(&mut rx, |e| {
            *e == KernelEvent::Neigh {
                index: va,
                change: Some(Change::Neigh {
                    index: va,
                    entry: neigh,
                    permanent: true,
                    deleted: false,
                }),
            }
        })
        .await;

        // A consumer that falls more than the queue behind gets an Overrun, not a stall.
        for i in 0..5_000u32 {
            let [_, _, a, b] = i.to_be_bytes();
            let n = NeighEntry {
                ip: Ipv4Addr::new(10, 0, a, b),
                mac: Mac([2, 0, 0, 0, a, b]),
            };
            k.ensure_neigh(va, &n).await.unwrap();
        }
        expect_event(&mut rx, |e| *e == KernelEvent::Overrun).await;
    });
}

/// 10,000 peers: 30,000 ensure requests, then one dump per kind. Ignored by default (slow in
/// debug builds); run with `cargo test --lib kernel -- --ignored`.
#[test]
#[ignore]
fn ten_thousand_peers() {
    if !can_run() {
        return;
    }
    let ns = underlay();
    ns.run(move || async move {
        let (k, _va, vx) = vxlan_up().await;
        let t = std::time::Instant::now();
        for i in 0..10_000u32 {
            let [_, _, a, b] = i.to_be_bytes();
            let gw = Ipv4Addr::new(10, 1, a, b);
            let m = Mac([2, 0, 0, 0, a, b]);
            let r = RouteEntry {
                dst: Ipv4Net::new(Ipv4Addr::new(10, 100 + a, b, 0), 24).unwrap(),
                gateway: gw,
                oif: vx,
                onlink: true,
                protocol: ROUTE_PROTO_WEFT,
                metric: 0,
            };
            k.ensure_neigh(vx, &NeighEntry { ip: gw, mac: m }).await.unwrap();
            k.ensure_fdb(
                vx,
                &FdbEntry {
                    mac: m,
                    dst: Ipv4Addr::new(198, 51, a, b),
                },
            )
            .await
            .unwrap();
            k.ensure_route(&r).await.unwrap();
        }
        let ensured = t.elapsed();
        let t = std::time::Instant::now();
        assert_eq!(k.neighs(vx).await.unwrap().len(), 10_000);
        assert_eq!(k.fdbs(vx).await.unwrap().len(), 10_000);
        assert_eq!(k.routes(vx).await.unwrap().len(), 10_000);
        eprintln!("30,000 ensures in {ensured:?}; 3 dumps in {:?}", t.elapsed());
    });
}
