//! Publishing the agent's state for `/status`, `/healthz` and the gauges in `/metrics`.

use super::status::{self, DeviceStatus, IfaceStatus, LeaseStatus, NetworkStatus, Status, StoreStatus};
use super::Agent;
use std::time::SystemTime;

impl Agent {
    pub(super) fn publish(&self) {
        let now = SystemTime::now();
        let m = &self.shared.metrics;
        m.leases.set(self.leases.len() as i64);
        let expiry = self
            .own
            .as_ref()
            .and_then(|o| o.expires_at)
            .map(|t| t.duration_since(now).map(|d| d.as_secs_f64()).unwrap_or(0.0))
            .unwrap_or(0.0);
        m.lease_expiry.set(expiry);

        let status = Status {
            source: "agent".into(),
            name: (!self.net.is_default()).then(|| self.net.name.clone()),
            store: StoreStatus {
                describe: self.store.describe(),
                last_ok_ms: self.store_ok_at.map(status::unix_ms),
                last_error: self.store_error.clone(),
            },
            network: self.config.as_ref().map(|c| NetworkStatus {
                name: self.net.name.clone(),
                network: c.network.to_string(),
                subnet_len: c.subnet_len,
                vni: c.backend.vni,
                port: c.backend.port,
            }),
            config_error: self.config_error.clone(),
            iface: self.iface.as_ref().map(|i| IfaceStatus {
                name: i.name.clone(),
                local_ip: i.local_ip.to_string(),
                public_ip: i.public_ip.to_string(),
                mtu: i.mtu,
            }),
            device: self.device.as_ref().map(|d| DeviceStatus {
                name: d.name.clone(),
                index: d.index,
                mtu: d.mtu,
                mac: d.mac.map(|m| m.to_string()),
                up: d.up,
            }),
            lease: self.own.as_ref().map(|o| LeaseStatus {
                subnet: o.subnet.to_string(),
                key: o.key.clone(),
                expires_at_ms: o.expires_at.map(status::unix_ms),
            }),
            lease_error: self.lease_error.clone(),
            peers: Default::default(),
            last_reconcile: self.last_reconcile.clone(),
            converged_once: self.converged_once,
            vxlan_filter: self.firewall.status(),
            ..Status::default()
        };
        self.shared.set_status(status);
    }
}
