//! `POST /admin/v1/models/{model}[/versions/{v}]/tables/{table}/deltas` (body: one binary delta,
//! `application/octet-stream`), `GET /admin/v1/models/{model}[/versions/{v}]/tables` and
//! `GET /admin/v1/models/{model}[/versions/{v}]/tables/{table}/rows?keys=1,2,3`.

use super::admin::Caller;
use crate::error::{invalid, ApiError};
use crate::sparse;
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::Json;
use kiln_runtime::tables::VersionRows;
use kiln_runtime::{VersionDeltaAck, VersionTable};
use serde::{Deserialize, Serialize};
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

/// Most keys one rows request may read.
pub const MAX_ROW_KEYS: usize = 10_000;

/// The query of a rows request: `keys=1,2,3`.
#[derive(Deserialize)]
pub struct RowsQuery {
    keys: Option<String>,
}

/// A rows answer. Values serialize as f32, so they print as the table holds them.
#[derive(Serialize)]
pub struct RowsJson {
    model: String,
    version: String,
    table: String,
    dim: usize,
    rows: Vec<RowJson>,
}

#[derive(Serialize)]
struct RowJson {
    key: u64,
    values: Option<Vec<f32>>,
}

/// `keys`: 1 to [`MAX_ROW_KEYS`] comma-separated u64 keys.
fn parse_keys(q: Result<Query<RowsQuery>, QueryRejection>) -> Api<Vec<u64>> {
    let bad = |why: String| {
        invalid(format!(
            "keys: {why}; give 1 to {MAX_ROW_KEYS} comma-separated unsigned 64-bit keys, e.g. ?keys=1,2,3"
        ))
    };
    let text = match q {
        Ok(Query(RowsQuery { keys: Some(k) })) => k,
        Ok(_) => return Err(bad("missing".into())),
        Err(e) => return Err(bad(e.body_text())),
    };
    let keys = text
        .split(',')
        .map(|k| {
            let k = k.trim();
            k.parse::<u64>()
                .map_err(|_| bad(format!("'{}' is not a u64", k.escape_debug())))
        })
        .collect::<Api<Vec<u64>>>();
    match keys {
        _ if text.trim().is_empty() => Err(bad("empty".into())),
        Ok(k) if k.len() > MAX_ROW_KEYS => Err(bad(format!("{} keys", k.len()))),
        k => k,
    }
}

fn rows_json(
    st: &AppState,
    who: &Caller,
    (model, version, table): (String, String, String),
    q: Result<Query<RowsQuery>, QueryRejection>,
) -> Api<Json<RowsJson>> {
    who.authorize(st)?;
    let keys = parse_keys(q)?;
    let VersionRows { version, dim, rows } = sparse::rows(st, &model, &version, &table, &keys)?;
    let rows = keys
        .into_iter()
        .zip(rows)
        .map(|(key, values)| RowJson { key, values })
        .collect();
    Ok(Json(RowsJson {
        model,
        version: version.to_string(),
        table,
        dim,
        rows,
    }))
}

pub async fn rows(
    State(st): State<Arc<AppState>>,
    who: Caller,
    Path((m, t)): Path<(String, String)>,
    q: Result<Query<RowsQuery>, QueryRejection>,
) -> Api<Json<RowsJson>> {
    rows_json(&st, &who, (m, String::new(), t), q)
}

pub async fn rows_v(
    State(st): State<Arc<AppState>>,
    who: Caller,
    Path((m, v, t)): Path<(String, String, String)>,
    q: Result<Query<RowsQuery>, QueryRejection>,
) -> Api<Json<RowsJson>> {
    rows_json(&st, &who, (m, v, t), q)
}
