//! `POST /admin/v1/models/{model}[/versions/{v}]/tables/{table}/deltas` (body: one binary delta,
//! `application/octet-stream`) and `GET /admin/v1/models/{model}[/versions/{v}]/tables`.

use super::admin::Caller;
use crate::error::ApiError;
use crate::sparse;
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::Json;
use kiln_runtime::{VersionDeltaAck, VersionTable};
use serde_json::{json, Value};
use std::sync::Arc;

type Api<T> = Result<T, ApiError>;

async fn apply(
    st: Arc<AppState>,
    who: Caller,
    model: String,
    version: String,
    table: String,
    body: Bytes,
) -> Api<Json<Value>> {
    who.authorize(&st)?;
    // decoding and writing rows is CPU work: keep it off the I/O threads
    let st2 = st.clone();
    let (m, t) = (model.clone(), table.clone());
    let from = who.addr;
    let results = tokio::task::spawn_blocking(move || {
        sparse::apply_delta(&st2, from, &m, &version, &t, &body)
    })
    .await
    .map_err(|e| ApiError(kiln_core::Error::internal(format!("delta task: {e}"))))??;
    let versions: Vec<Value> = results
        .iter()
        .map(|VersionDeltaAck { version, ack: a }| {
            json!({
                "version": version.to_string(),
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
    who: Caller,
    Path((m, t)): Path<(String, String)>,
    body: Bytes,
) -> Api<Json<Value>> {
    apply(st, who, m, String::new(), t, body).await
}

pub async fn delta_v(
    State(st): State<Arc<AppState>>,
    who: Caller,
    Path((m, v, t)): Path<(String, String, String)>,
    body: Bytes,
) -> Api<Json<Value>> {
    apply(st, who, m, v, t, body).await
}

fn tables_json(st: &AppState, who: &Caller, m: &str, v: &str) -> Api<Json<Value>> {
    who.authorize(st)?;
    let tables: Vec<Value> = sparse::tables(st, m, v)?
        .into_iter()
        .map(|VersionTable { version, table: t }| {
            json!({
                "version": version.to_string(),
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
    who: Caller,
    Path(m): Path<String>,
) -> Api<Json<Value>> {
    tables_json(&st, &who, &m, "")
}

pub async fn tables_v(
    State(st): State<Arc<AppState>>,
    who: Caller,
    Path((m, v)): Path<(String, String)>,
) -> Api<Json<Value>> {
    tables_json(&st, &who, &m, &v)
}
