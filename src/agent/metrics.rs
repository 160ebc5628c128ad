//! Prometheus metrics, in the OpenMetrics text format at `/metrics`. Names follow Prometheus
//! conventions: `weft_` prefix, units in names, `_total` on counters.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: String,
}

/// A metric's labels: the network's (none for the default network, `network="NAME"` for a
/// named one), then the metric's own.
pub type Labels = Vec<(String, String)>;

type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

fn reconcile_histogram() -> Histogram {
    // 100 µs … ~3 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

/// Every metric of the process, one series per network: what `/metrics` encodes.
pub struct MetricsRegistry {
    registry: Registry,
    leases: Family<Labels, Gauge>,
    peers_programmed: Family<Labels, Gauge>,
    leases_rejected: Family<Labels, Counter>,
    kernel_operations: Family<Labels, Counter>,
    reconcile_duration: HistogramFamily,
    reconciles: Family<Labels, Counter>,
    store_errors: Family<Labels, Counter>,
    watch_restarts: Family<Labels, Counter>,
    lease_expiry: Family<Labels, Gauge<f64, AtomicU64>>,
    vxlan_dropped: Family<Labels, Counter>,
    endpoints: Family<Labels, Gauge>,
    endpoint_problems: Family<Labels, Gauge>,
    endpoint_events: Family<Labels, Counter>,
    cni_requests: Family<Labels, Counter>,
    /// Host-wide, not per network.
    forward_drops: Gauge,
}

impl Default for MetricsRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl MetricsRegistry {
    pub fn new() -> MetricsRegistry {
        let mut r = Registry::with_prefix("weft");
        let m = MetricsRegistry {
            registry: Registry::default(),
            leases: Family::default(),
            peers_programmed: Family::default(),
            leases_rejected: Family::default(),
            kernel_operations: Family::default(),
            reconcile_duration: Family::new_with_constructor(reconcile_histogram),
            reconciles: Family::default(),
            store_errors: Family::default(),
            watch_restarts: Family::default(),
            lease_expiry: Family::default(),
            vxlan_dropped: Family::default(),
            endpoints: Family::default(),
            endpoint_problems: Family::default(),
            endpoint_events: Family::default(),
            cni_requests: Family::default(),
            forward_drops: Gauge::default(),
        };
        r.register(
            "leases",
            "Leases in the store for this network, valid or not",
            m.leases.clone(),
        );
        r.register(
            "peers_programmed",
            "Peers whose route, neighbour and FDB entries are in the kernel",
            m.peers_programmed.clone(),
        );
        r.register(
            "leases_rejected",
            "Leases refused (each lease revision counted once), by reason",
            m.leases_rejected.clone(),
        );
        r.register(
            "kernel_operations",
            "Kernel changes made, by object kind, action and result",
            m.kernel_operations.clone(),
        );
        r.register_with_unit(
            "reconcile_duration",
            "Time to compare the kernel with the store and apply the difference",
            Unit::Seconds,
            m.reconcile_duration.clone(),
        );
        r.register("reconciles", "Reconciles run, by result", m.reconciles.clone());
        r.register("store_errors", "Store requests that failed", m.store_errors.clone());
        r.register(
            "store_watch_restarts",
            "Times the store watch was re-established",
            m.watch_restarts.clone(),
        );
        r.register_with_unit(
            "lease_expiry",
            "Time until this host's lease expires",
            Unit::Seconds,
            m.lease_expiry.clone(),
        );
        r.register(
            "vxlan_dropped_packets",
            "VXLAN packets dropped because they did not come from a peer",
            m.vxlan_dropped.clone(),
        );
        r.register(
            "endpoints",
            "Endpoints of an L2 network programmed on this host, by where they are (local, remote)",
            m.endpoints.clone(),
        );
        r.register(
            "endpoint_problems",
            "Endpoints of an L2 network flagged now, by kind (duplicate_ip, duplicate_mac, frozen)",
            m.endpoint_problems.clone(),
        );
        r.register(
            "endpoint_events",
            "Endpoint events in an L2 network, by event (moved, duplicate_mac, frozen, thawed, rejected)",
            m.endpoint_events.clone(),
        );
        r.register(
            "cni_requests",
            "weft-cni requests answered by an L2 network's agent, by op (ADD, DEL, CHECK) and result (ok, refused, retry)",
            m.cni_requests.clone(),
        );
        r.register(
            "forward_drops",
            "This host's subnets that another firewall's forward chain drops by default with no rule \
             accepting them, chain by chain (pods there may not reach other hosts; /status forward_drops)",
            m.forward_drops.clone(),
        );
        let build: Family<BuildLabels, Gauge> = Family::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_string(),
            })
            .set(1);
        r.register("build_info", "weft build information", build);
        MetricsRegistry { registry: r, ..m }
    }

    /// What the forward check found (`agent::forward_check`): how many (chain, subnet) pairs.
    pub fn set_forward_drops(&self, n: usize) {
        self.forward_drops.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The metrics of network `name`: unlabelled for the default network (as with one network
    /// only), labelled `network="NAME"` for a named one.
    pub fn network(self: &Arc<Self>, name: &str) -> Metrics {
        let base: Labels = if name == crate::network::DEFAULT_NETWORK {
            Vec::new()
        } else {
            vec![("network".into(), name.into())]
        };
        Metrics {
            leases: self.leases.get_or_create(&base).clone(),
            peers_programmed: self.peers_programmed.get_or_create(&base).clone(),
            reconcile_duration: self.reconcile_duration.get_or_create(&base).clone(),
            store_errors: self.store_errors.get_or_create(&base).clone(),
            watch_restarts: self.watch_restarts.get_or_create(&base).clone(),
            lease_expiry: self.lease_expiry.get_or_create(&base).clone(),
            vxlan_dropped: self.vxlan_dropped.get_or_create(&base).clone(),
            base,
            labelled: Mutex::new(HashSet::new()),
            registry: self.clone(),
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        // The default network's series have no labels: `weft_leases 3`, not `weft_leases{} 3`.
        out.replace("{} ", " ")
    }
}

/// One network's metrics, as its agent updates them.
pub struct Metrics {
    base: Labels,
    pub leases: Gauge,
    pub peers_programmed: Gauge,
    pub reconcile_duration: Histogram,
    pub store_errors: Counter,
    pub watch_restarts: Counter,
    pub lease_expiry: Gauge<f64, AtomicU64>,
    /// Mirrors the nft counter of VXLAN packets dropped for not coming from a peer.
    pub vxlan_dropped: Counter,
    /// Label sets this network created in the families with labels of their own.
    labelled: Mutex<HashSet<(&'static str, Labels)>>,
    registry: Arc<MetricsRegistry>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// The default network's metrics in a registry of their own (tests, tools).
    pub fn new() -> Metrics {
        Arc::new(MetricsRegistry::new()).network(crate::network::DEFAULT_NETWORK)
    }

    fn labels(&self, family: &'static str, more: &[(&str, &str)]) -> Labels {
        let mut l = self.base.clone();
        l.extend(more.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        if let Ok(mut seen) = self.labelled.lock() {
            seen.insert((family, l.clone()));
        }
        l
    }

    pub fn kernel_op(&self, kind: &str, action: &str, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        let l = self.labels(
            "kernel_operations",
            &[("kind", kind), ("action", action), ("result", result)],
        );
        self.registry.kernel_operations.get_or_create(&l).inc();
    }

    pub fn rejected(&self, reason: &str) {
        let l = self.labels("leases_rejected", &[("reason", reason)]);
        self.registry.leases_rejected.get_or_create(&l).inc();
    }

    pub fn reconciled(&self, ok: bool, seconds: f64) {
        self.reconcile_duration.observe(seconds);
        let result = if ok { "ok" } else { "error" };
        let l = self.labels("reconciles", &[("result", result)]);
        self.registry.reconciles.get_or_create(&l).inc();
    }

    /// Sets an L2 network's endpoint gauge for `place` (`local` or `remote`).
    pub fn set_endpoints(&self, place: &str, n: usize) {
        let l = self.labels("endpoints", &[("place", place)]);
        self.registry.endpoints.get_or_create(&l).set(n as i64);
    }

    /// Sets the number of endpoints flagged `kind` now.
    pub fn set_endpoint_problems(&self, kind: &str, n: usize) {
        let l = self.labels("endpoint_problems", &[("kind", kind)]);
        self.registry.endpoint_problems.get_or_create(&l).set(n as i64);
    }

    /// Counts one endpoint event (`moved`, `duplicate_mac`, `frozen`, `thawed`, `rejected`).
    pub fn endpoint_event(&self, event: &str) {
        let l = self.labels("endpoint_events", &[("event", event)]);
        self.registry.endpoint_events.get_or_create(&l).inc();
    }

    /// Counts one weft-cni request (`op` ADD, DEL, CHECK; `result` ok, refused, retry).
    pub fn cni_request(&self, op: &str, result: &str) {
        let l = self.labels("cni_requests", &[("op", op), ("result", result)]);
        self.registry.cni_requests.get_or_create(&l).inc();
    }

    /// Adds VXLAN datagrams the filter dropped since its counters were last read.
    pub fn add_vxlan_dropped(&self, n: u64) {
        if n > 0 {
            self.vxlan_dropped.inc_by(n);
        }
    }

    /// Removes every series of this network from `/metrics` (the network was deleted).
    pub fn forget(&self) {
        let r = &self.registry;
        for f in [&r.leases, &r.peers_programmed] {
            f.remove(&self.base);
        }
        for f in [&r.store_errors, &r.watch_restarts, &r.vxlan_dropped] {
            f.remove(&self.base);
        }
        r.reconcile_duration.remove(&self.base);
        r.lease_expiry.remove(&self.base);
        let seen = self.labelled.lock().map(|s| s.clone()).unwrap_or_default();
        for (family, l) in seen {
            match family {
                "kernel_operations" => r.kernel_operations.remove(&l),
                "leases_rejected" => r.leases_rejected.remove(&l),
                "endpoints" => r.endpoints.remove(&l),
                "endpoint_problems" => r.endpoint_problems.remove(&l),
                "endpoint_events" => r.endpoint_events.remove(&l),
                "cni_requests" => r.cni_requests.remove(&l),
                _ => r.reconciles.remove(&l),
            };
        }
    }

    /// The OpenMetrics text exposition of the whole registry.
    pub fn encode(&self) -> String {
        self.registry.encode()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        let m = Metrics::new();
        m.kernel_op("route", "ensure", true);
        m.rejected("bad_json");
        m.reconciled(true, 0.002);
        let text = m.encode();
        for name in [
            "weft_leases ",
            "weft_peers_programmed ",
            "weft_leases_rejected_total{reason=\"bad_json\"} 1",
            "weft_kernel_operations_total{kind=\"route\",action=\"ensure\",result=\"ok\"} 1",
            "weft_reconcile_duration_seconds_count 1",
            "weft_reconciles_total{result=\"ok\"} 1",
            "weft_store_errors_total 0",
            "weft_store_watch_restarts_total 0",
            "weft_lease_expiry_seconds ",
            "weft_build_info{version=",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn named_networks_are_labelled_and_forgotten() {
        let r = Arc::new(MetricsRegistry::new());
        let d = r.network("default");
        let a = r.network("tenant-a");
        d.leases.set(3);
        a.leases.set(2);
        a.kernel_op("route", "ensure", true);
        a.reconciled(true, 0.001);
        a.set_endpoints("remote", 2);
        a.set_endpoint_problems("frozen", 1);
        a.endpoint_event("moved");
        a.cni_request("ADD", "ok");
        let text = r.encode();
        for want in [
            "weft_leases 3\n",
            "weft_leases{network=\"tenant-a\"} 2\n",
            "weft_kernel_operations_total{network=\"tenant-a\",kind=\"route\",action=\"ensure\",result=\"ok\"} 1",
            "weft_reconciles_total{network=\"tenant-a\",result=\"ok\"} 1",
            "weft_reconcile_duration_seconds_count{network=\"tenant-a\"} 1",
            "weft_reconcile_duration_seconds_count 0",
            "weft_endpoints{network=\"tenant-a\",place=\"remote\"} 2",
            "weft_endpoint_problems{network=\"tenant-a\",kind=\"frozen\"} 1",
            "weft_endpoint_events_total{network=\"tenant-a\",event=\"moved\"} 1",
            "weft_cni_requests_total{network=\"tenant-a\",op=\"ADD\",result=\"ok\"} 1",
        ] {
            assert!(text.contains(want), "{want} missing from\n{text}");
        }
        assert!(!text.contains("{}"), "{text}");
        a.forget();
        let text = r.encode();
        assert!(!text.contains("tenant-a"), "{text}");
        assert!(text.contains("weft_leases 3\n"), "{text}");
    }
}
