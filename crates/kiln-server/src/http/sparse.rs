//! `POST /admin/v1/models/{model}[/versions/{v}]/tables/{table}/deltas` (body: one binary delta,
//! `application/octet-stream`) and `GET /admin/v1/models/{model}[/versions/{v}]/tables`.

use crate::error::ApiError;
use crate::sparse;
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use serde_json::{json, Value};
use std::sync::Arc;

type Api<T> = Result<T, ApiError>;

fn token(h: &HeaderMap) -> Option<&str> {
    h.get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

async fn apply(
    st: Arc<AppState>,
    h: HeaderMap,
    model: String,
    version: String,
    table: String,
    body: Bytes,
) -> Api<Json<Value>> {
    sparse::authorize(&st, token(&h))?;
    // decoding and writing rows is CPU work: keep it off the I/O threads
    let st2 = st.clone();
    let (m, t) = (model.clone(), table.clone());
    let results =
        tokio::task::spawn_blocking(move || sparse::apply_delta(&st2, &m, &version, &t, &body))
            .await
            .map_err(|e| ApiError(kiln_core::Error::internal(format!("delta task: {e}"))))??;
    let versions: Vec<Value> = results
        .iter()
        .map(|(v, a)| {
            json!({
                "version": v.to_string(),
                "applied": a.applied,
                "rows": a.rows,
                "inserted": a.inserted,
                "removed": a.removed,
                "evicted": a.evicted,
                "last_sequence": a.last_sequence,
                "gap": a.gap.map(|(expected, got)| json!({"expected": expected, "got": got})),
            })
        })
        .collect();
    Ok(Json(
        json!({ "model": model, "table": table, "versions": versions }),
    ))
}

pub async fn delta(
    State(st): State<Arc<AppState>>,
    h: HeaderMap,
    Path((m, t)): Path<(String, String)>,
    body: Bytes,
) -> Api<Json<Value>> {
    apply(st, h, m, String::new(), t, body).await
}

pub async fn delta_v(
    State(st): State<Arc<AppState>>,
    h: HeaderMap,
    Path((m, v, t)): Path<(String, String, String)>,
    body: Bytes,
) -> Api<Json<Value>> {
    apply(st, h, m, v, t, body).await
}

fn tables_json(st: &AppState, h: &HeaderMap, m: &str, v: &str) -> Api<Json<Value>> {
    sparse::authorize(st, token(h))?;
    let tables: Vec<Value> = sparse::list_tables(st, m, v)?
        .into_iter()
        .map(|(v, t)| {
            json!({
                "version": v.to_string(),
                "name": t.name,
                "dim": t.dim,
                "rows": t.rows,
                "bytes": t.bytes,
                "sources": t.sources.iter().map(|(s, q)| json!({"source": s, "last_sequence": q})).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(Json(json!({ "model": m, "tables": tables })))
}

pub async fn tables(
    State(st): State<Arc<AppState>>,
    h: HeaderMap,
    Path(m): Path<String>,
) -> Api<Json<Value>> {
    tables_json(&st, &h, &m, "")
}

pub async fn tables_v(
    State(st): State<Arc<AppState>>,
    h: HeaderMap,
    Path((m, v)): Path<(String, String)>,
) -> Api<Json<Value>> {
    tables_json(&st, &h, &m, &v)
}
