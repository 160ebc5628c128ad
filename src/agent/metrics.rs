//! Prometheus metrics, in the OpenMetrics text format at `/metrics`. Names follow Prometheus
//! conventions: `weft_` prefix, units in names, `_total` on counters.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub kind: String,
    pub action: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: String,
}

pub struct Metrics {
    registry: Registry,
    pub leases: Gauge,
    pub peers_programmed: Gauge,
    pub leases_rejected: Family<ReasonLabel, Counter>,
    pub kernel_operations: Family<OpLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub reconciles: Family<ResultLabel, Counter>,
    pub store_errors: Counter,
    pub watch_restarts: Counter,
    pub lease_expiry: Gauge<f64, AtomicU64>,
    /// Mirrors the nft counter of VXLAN packets dropped for not coming from a peer.
    pub vxlan_dropped: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("weft");
        let mut m = Metrics {
            registry: Registry::default(),
            leases: Gauge::default(),
            peers_programmed: Gauge::default(),
            leases_rejected: Family::default(),
            kernel_operations: Family::default(),
            // 100 µs … ~3 s.
            reconcile_duration: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            reconciles: Family::default(),
            store_errors: Counter::default(),
            watch_restarts: Counter::default(),
            lease_expiry: Gauge::default(),
            vxlan_dropped: Counter::default(),
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
        let build: Family<BuildLabels, Gauge> = Family::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_string(),
            })
            .set(1);
        r.register("build_info", "weft build information", build);
        m.registry = r;
        m
    }

    pub fn kernel_op(&self, kind: &str, action: &str, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.kernel_operations
            .get_or_create(&OpLabels {
                kind: kind.into(),
                action: action.into(),
                result: result.into(),
            })
            .inc();
    }

    pub fn rejected(&self, reason: &str) {
        self.leases_rejected
            .get_or_create(&ReasonLabel { reason: reason.into() })
            .inc();
    }

    pub fn reconciled(&self, ok: bool, seconds: f64) {
        self.reconcile_duration.observe(seconds);
        let result = if ok { "ok" } else { "error" };
        self.reconciles
            .get_or_create(&ResultLabel { result: result.into() })
            .inc();
    }

    /// Brings the dropped-VXLAN counter up to the kernel's count (which only grows, except
    /// when the table is recreated from scratch).
    pub fn set_vxlan_dropped(&self, kernel_count: u64) {
        let have = self.vxlan_dropped.get();
        if kernel_count > have {
            self.vxlan_dropped.inc_by(kernel_count - have);
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
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
}
