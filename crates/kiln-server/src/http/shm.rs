//! Triton's system shared-memory endpoints: `v2/systemsharedmemory[/region/{name}]/status`,
//! `.../region/{name}/register` and `v2/systemsharedmemory[/region/{name}]/unregister`.

use super::admin::Caller;
use crate::error::{invalid, ApiError};
use crate::shm::RegionStatus;
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

type Api<T> = Result<T, ApiError>;

fn status_json(regions: Vec<RegionStatus>) -> Json<Value> {
    Json(Value::Array(
        regions
            .into_iter()
            .map(|r| {
                json!({"name": r.name, "key": r.key, "offset": r.offset, "byte_size": r.byte_size})
            })
            .collect(),
    ))
}

pub async fn status_all(State(st): State<Arc<AppState>>) -> Api<Json<Value>> {
    Ok(status_json(st.shm.status(None)?))
}

pub async fn status(State(st): State<Arc<AppState>>, Path(name): Path<String>) -> Api<Json<Value>> {
    Ok(status_json(st.shm.status(Some(&name))?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Register {
    key: String,
    #[serde(default)]
    offset: u64,
    byte_size: u64,
}

pub async fn register(
    State(st): State<Arc<AppState>>,
    who: Caller,
    Path(name): Path<String>,
    body: Bytes,
) -> Api<StatusCode> {
    who.authorize(&st)?;
    let r: Register = serde_json::from_slice(&body).map_err(|e| {
        invalid(format!(
            "shared memory region '{name}': the register request must be \
             {{\"key\": string, \"offset\": integer, \"byte_size\": integer}}: {e}"
        ))
    })?;
    st.shm.register(&name, &r.key, r.offset, r.byte_size)?;
    tracing::info!(caller = %who.shown(), region = %name.escape_debug(), key = %r.key.escape_debug(), offset = r.offset,
        byte_size = r.byte_size, "shared memory region registered");
    Ok(StatusCode::OK)
}

pub async fn unregister_all(State(st): State<Arc<AppState>>, who: Caller) -> Api<StatusCode> {
    who.authorize(&st)?;
    st.shm.unregister(None)?;
    tracing::info!(caller = %who.shown(), "every shared memory region unregistered");
    Ok(StatusCode::OK)
}

pub async fn unregister(
    State(st): State<Arc<AppState>>,
    who: Caller,
    Path(name): Path<String>,
) -> Api<StatusCode> {
    who.authorize(&st)?;
    st.shm.unregister(Some(&name))?;
    tracing::info!(caller = %who.shown(), region = %name.escape_debug(), "shared memory region unregistered");
    Ok(StatusCode::OK)
}
