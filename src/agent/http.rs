//! The agent's HTTP endpoint (`--healthz-addr`): `/healthz`, `/readyz`, `/metrics`, `/status`,
//! over every network the agent serves.

use super::metrics::{Metrics, MetricsRegistry};
use super::status::{Failing, ForwardDrop, PeerReport, PeerStatus, RefusedNetwork, Status};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tracing::{error, info};

/// One network's state, shared between its agent loop (writer) and the HTTP handlers (readers).
#[derive(Default)]
pub struct Shared {
    pub status: Mutex<Status>,
    pub metrics: Metrics,
    /// The peers as last planned, rendered into `Status::peers` only when `/status` asks: with
    /// 10,000 peers that is the largest thing the agent would otherwise build at every change.
    peers: Mutex<LazyPeers>,
}

#[derive(Default)]
struct LazyPeers {
    report: Option<Arc<PeerReport>>,
    rendered: Option<Arc<Vec<PeerStatus>>>,
}

impl Shared {
    pub fn new(metrics: Metrics) -> Shared {
        Shared {
            status: Mutex::new(Status::default()),
            metrics,
            peers: Mutex::default(),
        }
    }

    /// The status without the per-peer list (all that `/healthz` and `/readyz` need).
    pub fn status(&self) -> Status {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The status with the per-peer list, rendered once per report.
    pub fn full_status(&self) -> Status {
        let mut st = self.status();
        if let Ok(mut lazy) = self.peers.lock() {
            if lazy.rendered.is_none() {
                lazy.rendered = lazy.report.as_ref().map(|r| Arc::new(r.render()));
            }
            if let Some(rendered) = &lazy.rendered {
                st.peers = rendered.clone();
            }
        }
        st
    }

    pub fn set_status(&self, status: Status) {
        if let Ok(mut s) = self.status.lock() {
            *s = status;
        }
    }

    /// Forgets the peer report (until the next `set_peers`), releasing its hold on the set.
    pub fn clear_peers(&self) {
        if let Ok(mut lazy) = self.peers.lock() {
            *lazy = LazyPeers::default();
        }
    }

    pub fn set_peers(&self, report: Arc<PeerReport>) {
        if let Ok(mut lazy) = self.peers.lock() {
            *lazy = LazyPeers {
                report: Some(report),
                rendered: None,
            };
        }
    }
}

/// Every served network's [`Shared`], and the networks refused: what the handlers read.
pub struct Hub {
    pub metrics: Arc<MetricsRegistry>,
    networks: Mutex<BTreeMap<String, Arc<Shared>>>,
    refused: Mutex<Vec<RefusedNetwork>>,
    forward_drops: Mutex<Vec<ForwardDrop>>,
}

impl Hub {
    pub fn new(metrics: Arc<MetricsRegistry>) -> Hub {
        Hub {
            metrics,
            networks: Mutex::new(BTreeMap::new()),
            refused: Mutex::new(Vec::new()),
            forward_drops: Mutex::new(Vec::new()),
        }
    }

    /// A network being served (`default` or a name), with state of its own.
    pub fn add(&self, name: &str) -> Arc<Shared> {
        let shared = Arc::new(Shared::new(self.metrics.network(name)));
        if let Ok(mut n) = self.networks.lock() {
            n.insert(name.to_string(), shared.clone());
        }
        shared
    }

    /// A network no longer served: out of `/status`, its series out of `/metrics`.
    pub fn remove(&self, name: &str) {
        let gone = self.networks.lock().ok().and_then(|mut n| n.remove(name));
        if let Some(s) = gone {
            s.metrics.forget();
        }
    }

    pub fn set_refused(&self, refused: Vec<RefusedNetwork>) {
        if let Ok(mut r) = self.refused.lock() {
            *r = refused;
        }
    }

    pub fn set_forward_drops(&self, drops: Vec<ForwardDrop>) {
        if let Ok(mut d) = self.forward_drops.lock() {
            *d = drops;
        }
    }

    /// The default network's status, with the named networks' in `networks`; with the
    /// per-peer lists if `peers`.
    pub fn status(&self, peers: bool) -> Status {
        let status_of = |s: &Shared| if peers { s.full_status() } else { s.status() };
        let nets = self.networks.lock().map(|n| n.clone()).unwrap_or_default();
        let mut top = match nets.get(crate::network::DEFAULT_NETWORK) {
            Some(d) => status_of(d),
            None => Status {
                source: "agent".into(),
                default_not_served: true,
                ..Status::default()
            },
        };
        top.networks = nets
            .iter()
            .filter(|(name, _)| name.as_str() != crate::network::DEFAULT_NETWORK)
            .map(|(_, s)| status_of(s))
            .collect();
        top.refused_networks = self.refused.lock().map(|r| r.clone()).unwrap_or_default();
        top.forward_drops = self.forward_drops.lock().map(|d| d.clone()).unwrap_or_default();
        top
    }
}

#[derive(Serialize)]
struct Verdict {
    status: &'static str,
    failing: Vec<Failing>,
}

fn verdict(failing: Vec<Failing>) -> Response {
    let code = if failing.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let status = if failing.is_empty() { "ok" } else { "failing" };
    (code, Json(Verdict { status, failing })).into_response()
}

async fn healthz(State(s): State<Arc<Hub>>) -> Response {
    verdict(s.status(false).health(SystemTime::now()))
}

async fn readyz(State(s): State<Arc<Hub>>) -> Response {
    verdict(s.status(false).readiness())
}

async fn metrics(State(s): State<Arc<Hub>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
        .into_response()
}

async fn status(State(s): State<Arc<Hub>>) -> Json<Status> {
    Json(s.status(true))
}

pub fn router(shared: Arc<Hub>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .with_state(shared)
}

/// Binds `addr` now (so a bad address is a start-up error) and serves in the background.
pub async fn serve(addr: SocketAddr, shared: Arc<Hub>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    info!(addr = %addr, "serving /healthz, /readyz, /metrics and /status");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(shared)).await {
            error!(error = %e, "HTTP endpoint stopped");
        }
    });
    Ok(())
}
