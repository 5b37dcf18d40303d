//! The HTTP endpoint: `/metrics` (served by the collection thread), `/healthz` (the main loop
//! beats) and `/readyz` (the first state serves). The probes read atomics: nothing a scrape
//! does can delay them. Its connections are bounded and timed out (`conns`).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use prometheus_client::registry::Registry;
use tracing::warn;

use super::{
    conns::{self, ConnStats},
    scrape::Scraper,
};
use crate::clock::unix_now;

/// Liveness and readiness as the HTTP endpoint reports them.
#[derive(Debug, Default)]
pub struct Health {
    /// Set once the data plane is loaded and the first state (IPAM, snapshot or pinned) serves.
    pub ready: AtomicBool,
    /// Last time the agent's main loop ran, in seconds since the Unix epoch.
    pub heartbeat: AtomicU64,
}

impl Health {
    pub fn beat(&self) {
        self.heartbeat
            .store(unix_now().as_secs(), Ordering::Relaxed);
    }

    /// How long since the main loop last beat.
    pub fn stale_for(&self) -> Duration {
        let beat = self.heartbeat.load(Ordering::Relaxed);
        Duration::from_secs(unix_now().as_secs().saturating_sub(beat))
    }
}

/// The main loop beats at least this often; older means it is stuck.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Clone)]
struct HttpState {
    scraper: Arc<Scraper>,
    health: Arc<Health>,
}

async fn metrics(State(s): State<HttpState>) -> Response {
    match s.scraper.scrape().await {
        Ok(text) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => {
            warn!(error = %e, "metrics collection");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

async fn healthz(State(s): State<HttpState>) -> impl IntoResponse {
    let stale = s.health.stale_for();
    if stale > HEARTBEAT_TIMEOUT {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("main loop stuck for {}s\n", stale.as_secs()),
        )
    } else {
        (StatusCode::OK, "ok\n".to_owned())
    }
}

async fn readyz(State(s): State<HttpState>) -> impl IntoResponse {
    if s.health.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    }
}

/// Serves the endpoint until the task is dropped; collections of `registry` run on a thread
/// of their own, which ends with it.
pub async fn serve(
    addr: SocketAddr,
    registry: Registry,
    health: Arc<Health>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics endpoint to {addr}"))?;
    serve_on(listener, registry, health).await
}

/// As [`serve`], on a bound listener.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    mut registry: Registry,
    health: Arc<Health>,
) -> anyhow::Result<()> {
    let stats = Arc::new(ConnStats::default());
    conns::register(&mut registry, stats.clone());
    let scraper =
        Scraper::spawn(Arc::new(registry)).context("starting the metrics collection thread")?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(HttpState {
            scraper: Arc::new(scraper),
            health,
        });
    conns::accept(listener, app, stats).await;
    Err(anyhow::anyhow!("the metrics endpoint stopped accepting"))
}
