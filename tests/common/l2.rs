//! L2 networks in a lab: endpoints, an agent's view of a network, its metrics.

use super::weft_ok;
use std::net::Ipv4Addr;
use std::time::Duration;
use weft::agent::status::Status;
use weft::lab::endpoints::LabEndpoint;
use weft::lab::Lab;
use weft::mac::Mac;

/// Endpoint `n` of an L2 network on 10.70.0.0/16 (or any /16 whose first octets are `net`):
/// MAC 02:00:0a:46:00:n, IP net.0.(10+n).
pub fn endpoint(n: u32, net: [u8; 2]) -> LabEndpoint {
    LabEndpoint {
        n,
        mac: Mac([0x02, 0, net[0], net[1], 0, n as u8]),
        ip: Ipv4Addr::new(net[0], net[1], 0, 10 + n as u8),
        prefix_len: 16,
        mtu: 1400,
    }
}

/// `weft endpoint add NET --host HOST_IP --mac MAC --ip IP`: `e` registered on `host`.
pub fn register(lab: &Lab, net: &str, e: &LabEndpoint, host: &str) {
    let hip = lab.underlay_ip(host).unwrap().to_string();
    let (mac, ip) = (e.mac.to_string(), e.ip.to_string());
    weft_ok(
        lab,
        &["endpoint", "add", net, "--host", &hip, "--mac", &mac, "--ip", &ip],
    );
}

/// Network `net`'s status on `host`, from its agent.
pub fn network_status(lab: &Lab, host: &str, net: &str) -> Option<Status> {
    let ns = lab.namespace(host).ok()?.to_string();
    let addr = "127.0.0.1:9102".parse().ok()?;
    let (code, body) = weft::lab::probe::http_get(&ns, addr, "/status", Duration::from_secs(2)).ok()??;
    if code != 200 {
        return None;
    }
    let st: Status = serde_json::from_str(&body).ok()?;
    st.networks.into_iter().find(|n| n.name.as_deref() == Some(net))
}

/// The host agent's `/metrics`.
pub fn metrics(lab: &Lab, host: &str) -> String {
    let ns = lab.namespace(host).unwrap().to_string();
    let addr = "127.0.0.1:9102".parse().unwrap();
    weft::lab::probe::http_get(&ns, addr, "/metrics", Duration::from_secs(2))
        .unwrap()
        .unwrap()
        .1
}

/// One ping from endpoint `from` to `to`, answered within a second.
pub fn ping(lab: &Lab, from: &LabEndpoint, to: Ipv4Addr) -> bool {
    let to = to.to_string();
    from.exec(lab, &["ping", "-n", "-q", "-c", "1", "-W", "1", &to])
        .map(|o| o.status.success())
        .unwrap_or(false)
}
