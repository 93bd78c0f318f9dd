//! The learner's metrics port: `GET /metrics` (OpenMetrics text) and
//! `GET /admin/v1/models/{model}/tables/{table}/rows?keys=1,2,3`, which returns the trainer's
//! served values as `{"model": .., "table": .., "dim": .., "rows": [{"key": 1, "values":
//! [..]}, {"key": 2, "values": null}]}` (null: the trainer has no such row), the JSON the
//! server's rows endpoint returns, so an operator can compare a replica with the trainer. With
//! an admin token the rows endpoint requires `Authorization: Bearer <token>`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use parking_lot::Mutex;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use serde_json::json;

use crate::error::{Error, Result};
use crate::trainer::Trainer;

/// The trainer, shared between the learner loop and the rows endpoint.
pub type SharedTrainer = Arc<Mutex<dyn Trainer>>;

/// What the metrics port serves.
pub struct RowsService {
    /// The served model's name.
    pub model: String,
    /// The trainer.
    pub trainer: SharedTrainer,
    /// Elements per row of each served table.
    pub dims: std::collections::HashMap<String, usize>,
    /// The metrics.
    pub registry: Arc<Registry>,
    /// Required as `Authorization: Bearer <token>` by the rows endpoint when set.
    pub token: Option<String>,
}

#[derive(Deserialize)]
struct KeysQuery {
    keys: Option<String>,
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(json!({ "error": msg.into() }))).into_response()
}

async fn metrics(State(s): State<Arc<RowsService>>) -> Response {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &s.registry) {
        return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

async fn rows(
    State(s): State<Arc<RowsService>>,
    headers: HeaderMap,
    Path((model, table)): Path<(String, String)>,
    Query(q): Query<KeysQuery>,
) -> Response {
    if let Some(want) = &s.token {
        let got = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim());
        if got != Some(want.as_str()) {
            return error(
                StatusCode::UNAUTHORIZED,
                "admin token required: send 'Authorization: Bearer <token>'",
            );
        }
    }
    if model != s.model {
        return error(
            StatusCode::NOT_FOUND,
            format!(
                "model '{model}' is not the one this learner trains ('{}')",
                s.model
            ),
        );
    }
    let keys = match parse_keys(q.keys.as_deref().unwrap_or("")) {
        Ok(k) => k,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let trainer = s.trainer.clone();
    let t = table.clone();
    let k = keys.clone();
    let got = tokio::task::spawn_blocking(move || trainer.lock().rows(&t, &k)).await;
    let Ok(Some(found)) = got else {
        return error(
            StatusCode::NOT_FOUND,
            format!("model '{model}' has no table '{table}'"),
        );
    };
    let dim = s
        .dims
        .get(&table)
        .copied()
        .unwrap_or_else(|| found.iter().flatten().map(Vec::len).next().unwrap_or(0));
    let rows: Vec<Row> = keys
        .iter()
        .zip(found)
        .map(|(&key, values)| Row { key, values })
        .collect();
    Json(Rows {
        model,
        table,
        dim,
        rows,
    })
    .into_response()
}

/// The response body; values serialize as f32 (shortest round trip), as the server's do, so
/// the two answers compare as text.
#[derive(serde::Serialize)]
struct Rows {
    model: String,
    table: String,
    dim: usize,
    rows: Vec<Row>,
}

#[derive(serde::Serialize)]
struct Row {
    key: u64,
    values: Option<Vec<f32>>,
}

/// Parses `1,2,3` (at most 10,000 keys).
pub fn parse_keys(s: &str) -> std::result::Result<Vec<u64>, String> {
    let keys: Vec<u64> = s
        .split(',')
        .filter(|k| !k.trim().is_empty())
        .map(|k| {
            k.trim()
                .parse::<u64>()
                .map_err(|_| format!("keys: '{k}' is not an unsigned 64-bit integer"))
        })
        .collect::<std::result::Result<_, _>>()?;
    if keys.is_empty() {
        return Err("keys: give ?keys=1,2,3".into());
    }
    if keys.len() > 10_000 {
        return Err(format!("keys: {} keys, at most 10000", keys.len()));
    }
    Ok(keys)
}

/// The router of the metrics port.
pub fn router(service: RowsService) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/admin/v1/models/{model}/tables/{table}/rows", get(rows))
        .with_state(Arc::new(service))
}

/// Binds `addr` and serves the metrics port until `shutdown` resolves; returns the bound
/// address and the server task.
pub async fn serve(
    addr: SocketAddr,
    service: RowsService,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::config("learn.toml", "metrics.addr", format!("{addr}: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::config("learn.toml", "metrics.addr", e.to_string()))?;
    let app = router(service);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "metrics port failed");
        }
    });
    Ok((bound, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_and_bad_ones_are_named() {
        assert_eq!(parse_keys("1, 2,3").expect("keys"), vec![1, 2, 3]);
        assert!(parse_keys("").is_err());
        assert!(parse_keys("1,x").expect_err("bad key").contains("'x'"));
    }
}
