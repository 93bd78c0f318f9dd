//! Admin HTTP endpoint of a running cache: Prometheus `/metrics`, `GET /stats`, `POST /refresh`,
//! `POST /warmup` (start) and `GET /warmup` (progress), plus the client side used by the CLI.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::error::{DatacacheError, Result};
use crate::metrics::StatsSnapshot;
use crate::service::{CacheService, RefreshReport};
use crate::warmup::{warmup, Selection, WarmupReport};

/// What `GET /stats` answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatsResponse {
    /// Source URL (no credentials).
    pub source: String,
    /// Metadata generation.
    pub generation: u64,
    /// Files in the metadata.
    pub files: u64,
    /// Bytes in the metadata.
    pub bytes: u64,
    /// Age of the metadata in seconds.
    pub metadata_age_secs: u64,
    /// Counters.
    pub stats: StatsSnapshot,
    /// Warm-up progress.
    pub warmup: WarmupStatus,
}

/// Body of `POST /warmup`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WarmupRequest {
    /// Which files.
    pub selection: Selection,
    /// Concurrent fetches.
    pub threads: usize,
}

/// What `GET /warmup` answers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WarmupStatus {
    /// Whether a warm-up is running.
    pub running: bool,
    /// Files planned.
    pub planned_files: u64,
    /// Bytes planned.
    pub planned_bytes: u64,
    /// Files done so far.
    pub done: u64,
    /// Files failed so far.
    pub failed: u64,
    /// Files skipped so far.
    pub skipped: u64,
    /// Bytes processed so far.
    pub bytes: u64,
    /// Report of the last finished warm-up.
    pub last: Option<WarmupReport>,
}

fn warmup_status(svc: &CacheService) -> WarmupStatus {
    let p = &svc.warmup;
    WarmupStatus {
        running: p.running.load(Ordering::Relaxed),
        planned_files: p.planned_files.load(Ordering::Relaxed),
        planned_bytes: p.planned_bytes.load(Ordering::Relaxed),
        done: p.done.load(Ordering::Relaxed),
        failed: p.failed.load(Ordering::Relaxed),
        skipped: p.skipped.load(Ordering::Relaxed),
        bytes: p.bytes.load(Ordering::Relaxed),
        last: p.last.lock().clone(),
    }
}

/// Builds the stats answer.
pub fn stats(svc: &CacheService) -> StatsResponse {
    svc.data.update_tier_metrics();
    let (generation, tree) = svc.meta.current();
    StatsResponse {
        source: svc.config.source.spec.display(),
        generation,
        files: tree.file_count(),
        bytes: tree.total_bytes(),
        metadata_age_secs: svc.meta.age().as_secs(),
        stats: svc.metrics.snapshot(),
        warmup: warmup_status(svc),
    }
}

/// The admin router.
pub fn router(svc: Arc<CacheService>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route(
            "/stats",
            get(|State(s): State<Arc<CacheService>>| async move { Json(stats(&s)) }),
        )
        .route("/refresh", axum::routing::post(refresh_handler))
        .route(
            "/warmup",
            get(|State(s): State<Arc<CacheService>>| async move { Json(warmup_status(&s)) })
                .post(warmup_handler),
        )
        .with_state(svc)
}

async fn metrics_handler(State(svc): State<Arc<CacheService>>) -> Response {
    svc.data.update_tier_metrics();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        svc.metrics.encode(),
    )
        .into_response()
}

async fn refresh_handler(State(svc): State<Arc<CacheService>>) -> Response {
    match svc.refresh().await {
        Ok(r) => Json(r).into_response(),
        Err(e) => (StatusCode::BAD_GATEWAY, format!("refresh failed: {e}")).into_response(),
    }
}

async fn warmup_handler(
    State(svc): State<Arc<CacheService>>,
    Json(req): Json<WarmupRequest>,
) -> Response {
    if svc.warmup.running.swap(true, Ordering::SeqCst) {
        return (StatusCode::CONFLICT, "a warm-up is already running").into_response();
    }
    let s = svc.clone();
    tokio::spawn(async move {
        let (_, tree) = s.meta.current();
        warmup(
            &s.data,
            &tree,
            &req.selection,
            req.threads.max(1),
            &s.warmup,
            false,
        )
        .await;
    });
    (StatusCode::ACCEPTED, Json(warmup_status(&svc))).into_response()
}

/// Serves the admin router on `addr` until `shutdown` resolves; returns the bound address.
pub async fn serve(
    svc: Arc<CacheService>,
    addr: SocketAddr,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| DatacacheError::io(addr.to_string(), e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| DatacacheError::io(addr.to_string(), e))?;
    let app = router(svc);
    let h = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::warn!(error = %e, "admin server stopped");
        }
    });
    tracing::info!(addr = %bound, "admin endpoint listening (/metrics, /stats, /refresh, /warmup)");
    Ok((bound, h))
}

/// What a running daemon writes to `<cache-dir>/daemon.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DaemonInfo {
    /// Process id.
    pub pid: u32,
    /// Admin endpoint base URL (`http://127.0.0.1:port`), if enabled.
    pub admin: Option<String>,
    /// Mount point.
    pub mountpoint: String,
    /// Source URL (no credentials).
    pub source: String,
}

/// Reads `<cache-dir>/daemon.json` if a daemon wrote one.
pub fn read_daemon_info(cache_dir: &Path) -> Option<DaemonInfo> {
    let s = std::fs::read_to_string(cache_dir.join("daemon.json")).ok()?;
    serde_json::from_str(&s).ok()
}

fn client_err(url: &str, e: impl std::fmt::Display) -> DatacacheError {
    DatacacheError::Admin {
        url: url.to_string(),
        reason: e.to_string(),
    }
}

async fn call<T: serde::de::DeserializeOwned>(
    req: reqwest::RequestBuilder,
    url: &str,
) -> Result<T> {
    let resp = req.send().await.map_err(|e| client_err(url, e))?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.text().await.unwrap_or_default();
        return Err(client_err(url, format!("{status}: {body}")));
    }
    resp.json().await.map_err(|e| client_err(url, e))
}

/// `GET {base}/stats`.
pub async fn fetch_stats(base: &str) -> Result<StatsResponse> {
    let url = format!("{base}/stats");
    call(reqwest::Client::new().get(&url), &url).await
}

/// `POST {base}/refresh`.
pub async fn request_refresh(base: &str) -> Result<RefreshReport> {
    let url = format!("{base}/refresh");
    call(reqwest::Client::new().post(&url), &url).await
}

/// `POST {base}/warmup`.
pub async fn start_warmup(base: &str, req: &WarmupRequest) -> Result<WarmupStatus> {
    let url = format!("{base}/warmup");
    call(reqwest::Client::new().post(&url).json(req), &url).await
}

/// `GET {base}/warmup`.
pub async fn warmup_progress(base: &str) -> Result<WarmupStatus> {
    let url = format!("{base}/warmup");
    call(reqwest::Client::new().get(&url), &url).await
}
