//! The pod side of [`Lab`]: pod namespaces on each host, the `NAME-outside` namespace, and what
//! `check` probes from the pods.

use super::check::{PodProbe, ProbeKind};
use super::cluster::Lab;
use super::pods::{self, PodInfo};
use super::{agent, netns, state, topology, LabError, Result};
use crate::lease::Lease;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// How long a new pod waits for its host's agent to write `subnet.env` (the agent writes it as
/// soon as it holds a lease, well under a second in the lab).
const SUBNET_ENV_WAIT: Duration = Duration::from_secs(20);

/// Up to this many pods in all, `check` probes every pod from every pod on other hosts; past it,
/// each pod probes the first pod of every other host (enough to prove each path once).
const FULL_POD_MATRIX: usize = 32;

impl Lab {
    /// The host's pods (empty without pods or for an unknown host).
    pub fn pods(&self, host: &str) -> Vec<PodInfo> {
        self.state.host(host).map(|h| h.pods.clone()).unwrap_or_default()
    }

    /// `NAME-outside`'s address, if the lab has one (it does whenever it has pods).
    pub fn outside_ip(&self) -> Option<Ipv4Addr> {
        self.state.outside
    }

    /// `NAME-outside`'s namespace name.
    pub fn outside_namespace(&self) -> String {
        topology::outside_ns(&self.state.name)
    }

    /// Makes `NAME-outside` beyond the router (recorded first, so `down` finds it).
    pub(super) fn create_outside(&mut self) -> Result<()> {
        let ip = topology::host_ip(topology::outside_subnet(), 0);
        self.state.outside = Some(ip);
        self.state.save(&self.dir)?;
        netns::create_outside(&self.state.name)?;
        Ok(())
    }

    /// Whether the host's agent runs with `--ip-masq` from its next start on (a running agent
    /// keeps its flags: restart it with `kill_agent` + `start_agent`).
    pub fn set_ip_masq(&mut self, host: &str, on: bool) -> Result<()> {
        self.host_state(host)?;
        if let Some(h) = self.state.host_mut(host) {
            h.ip_masq = on;
        }
        self.state.save(&self.dir)
    }

    /// Adds `count` pods to a host: each a namespace `NAME-hI-pJ` wired by `weft-cni` ADD run in
    /// the host's namespace. Waits (bounded) for the host's `subnet.env` first.
    pub async fn add_pods(&mut self, host: &str, count: u32) -> Result<Vec<PodInfo>> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let plan = self.host(host)?.clone();
        let subnet_file = self.subnet_file(host);
        let deadline = Instant::now() + SUBNET_ENV_WAIT;
        while !subnet_file.exists() {
            if let Some(pid) = self.host_state(host)?.agent_pid.filter(|p| !agent::alive(*p)) {
                let log = self.agent_log(host);
                return Err(LabError::AgentExited {
                    host: format!("{host} (pid {pid})"),
                    tail: state::tail(&log, 20),
                    log,
                });
            }
            if Instant::now() >= deadline {
                return Err(LabError::Timeout {
                    what: format!("{host}'s subnet.env"),
                    after: SUBNET_ENV_WAIT,
                    detail: format!("{} was not written; is the agent running?", subnet_file.display()),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let cni = pods::cni_bin(&agent::weft_bin(self.weft_bin.as_deref())?);
        let host_dir = state::host_dir(&self.dir, host);
        let first = self.host_state(host)?.pods.len() as u32 + 1;
        let mut added = Vec::new();
        for j in first..first + count {
            let ns = topology::pod_ns(&self.state.name, host, j);
            netns::add_namespaces(std::slice::from_ref(&ns))?;
            let ip = pods::add(&self.state.name, &cni, &plan, &host_dir, &ns)?;
            let pod = PodInfo { namespace: ns, ip };
            if let Some(h) = self.state.host_mut(host) {
                h.pods.push(pod.clone());
            }
            self.state.save(&self.dir)?;
            added.push(pod);
        }
        Ok(added)
    }

    /// What `check` probes from the pods (all unanswered until probed).
    pub(super) fn pod_probes(&self, leases: &BTreeMap<String, Lease>) -> Vec<PodProbe> {
        let hosts = &self.state.hosts;
        let total: usize = hosts.iter().map(|h| h.pods.len()).sum();
        let mut v = Vec::new();
        let probe = |kind, from: &PodInfo, to: String, ip| PodProbe {
            kind,
            from: from.namespace.clone(),
            to,
            ip,
            answered: false,
        };
        for a in hosts {
            for p in &a.pods {
                for b in hosts.iter().filter(|b| b.plan.name != a.plan.name) {
                    let targets = if total <= FULL_POD_MATRIX {
                        &b.pods[..]
                    } else {
                        &b.pods[..b.pods.len().min(1)]
                    };
                    for q in targets {
                        v.push(probe(ProbeKind::PodToPod, p, short_pod_name(&self.state.name, q), q.ip));
                    }
                }
                for b in hosts {
                    if let Some(l) = leases.get(&b.plan.name) {
                        v.push(probe(ProbeKind::PodToHost, p, b.plan.name.clone(), l.subnet.network()));
                    }
                }
                if let Some(ip) = self.state.outside {
                    v.push(probe(ProbeKind::PodToOutside, p, "outside".into(), ip));
                }
            }
        }
        v
    }
}

/// `NAME-h2-p1` → `h2-p1`.
fn short_pod_name(lab: &str, pod: &PodInfo) -> String {
    pod.namespace
        .strip_prefix(lab)
        .and_then(|s| s.strip_prefix('-'))
        .unwrap_or(&pod.namespace)
        .to_string()
}
