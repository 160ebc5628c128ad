//! The agent's HTTP endpoint (`--healthz-addr`): `/healthz`, `/readyz`, `/metrics`, `/status`.

use super::metrics::Metrics;
use super::status::{Failing, PeerReport, PeerStatus, Status};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tracing::{error, info};

/// State shared between the agent loop (writer) and the HTTP handlers (readers).
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

    pub fn set_peers(&self, report: Arc<PeerReport>) {
        if let Ok(mut lazy) = self.peers.lock() {
            *lazy = LazyPeers {
                report: Some(report),
                rendered: None,
            };
        }
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

async fn healthz(State(s): State<Arc<Shared>>) -> Response {
    verdict(s.status().health(SystemTime::now()))
}

async fn readyz(State(s): State<Arc<Shared>>) -> Response {
    verdict(s.status().readiness())
}

async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
        .into_response()
}

async fn status(State(s): State<Arc<Shared>>) -> Json<Status> {
    Json(s.full_status())
}

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .with_state(shared)
}

/// Binds `addr` now (so a bad address is a start-up error) and serves in the background.
pub async fn serve(addr: SocketAddr, shared: Arc<Shared>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    info!(addr = %addr, "serving /healthz, /readyz, /metrics and /status");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(shared)).await {
            error!(error = %e, "HTTP endpoint stopped");
        }
    });
    Ok(())
}
