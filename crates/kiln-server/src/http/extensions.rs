//! Triton's logging (`v2/logging`), trace (`v2[/models/{m}]/trace/setting`) and CUDA
//! shared-memory (`v2/cudasharedmemory/...`) endpoints. Changes need the admin token, as every
//! state-changing endpoint does; reading does not.

use super::admin::Caller;
use crate::error::{invalid, ApiError};
use crate::extensions::{
    check_log_settings, cuda_region_unknown, cuda_register_refused, parse_trace_field,
    trace_entries, LogSettings, Trace, TraceFields,
};
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use std::sync::Arc;

type Api<T> = Result<T, ApiError>;

/// The extensions' routes, merged into the main router.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v2/logging", get(log_get).post(log_set))
        .route("/v2/trace/setting", get(trace_get).post(trace_set))
        .route(
            "/v2/models/{model}/trace/setting",
            get(model_trace_get).post(model_trace_set),
        )
        .route("/v2/cudasharedmemory/status", get(cuda_status_all))
        .route(
            "/v2/cudasharedmemory/region/{name}/status",
            get(cuda_status),
        )
        .route(
            "/v2/cudasharedmemory/region/{name}/register",
            post(cuda_register),
        )
        .route("/v2/cudasharedmemory/unregister", post(cuda_unregister_all))
        .route(
            "/v2/cudasharedmemory/region/{name}/unregister",
            post(cuda_unregister),
        )
}

fn log_json(s: &LogSettings) -> Json<Value> {
    Json(json!({
        "log_file": s.log_file,
        "log_info": s.log_info,
        "log_warning": s.log_warning,
        "log_error": s.log_error,
        "log_verbose_level": s.log_verbose_level,
        "log_format": s.log_format,
    }))
}

fn object(body: &[u8], what: &str) -> Api<Map<String, Value>> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(invalid(format!(
            "{what}: the request body must be a JSON object"
        ))),
        Err(e) => Err(invalid(format!("{what}: malformed JSON: {e}"))),
    }
}

async fn log_get(State(st): State<Arc<AppState>>) -> Api<Json<Value>> {
    Ok(log_json(&st.extensions.log()?.get()))
}

async fn log_set(State(st): State<Arc<AppState>>, who: Caller, body: Bytes) -> Api<Json<Value>> {
    who.authorize(&st)?;
    let log = st.extensions.log()?;
    let mut s = log.get();
    for (k, v) in object(&body, "log settings")? {
        let wrong = |want: &str| invalid(format!("{k}: expected {want}, got {v}"));
        match k.as_str() {
            "log_file" => s.log_file = v.as_str().ok_or_else(|| wrong("a string"))?.into(),
            "log_format" => s.log_format = v.as_str().ok_or_else(|| wrong("a string"))?.into(),
            "log_info" => s.log_info = v.as_bool().ok_or_else(|| wrong("true or false"))?,
            "log_warning" => s.log_warning = v.as_bool().ok_or_else(|| wrong("true or false"))?,
            "log_error" => s.log_error = v.as_bool().ok_or_else(|| wrong("true or false"))?,
            "log_verbose_level" => {
                s.log_verbose_level = v
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| wrong("a whole number"))?
            }
            _ => return Err(invalid(format!("unknown log setting '{k}'"))),
        }
    }
    check_log_settings(&s)?;
    log.set(&s)
        .map_err(|e| ApiError(kiln_core::Error::new(kiln_core::ErrorCode::Internal, e)))?;
    tracing::info!(caller = %who.shown(), ?s, "log settings changed");
    Ok(log_json(&log.get()))
}

fn trace_json(t: &Trace) -> Json<Value> {
    let mut m = Map::new();
    for (k, v) in trace_entries(t) {
        // the level is a list, every other setting one string, as Triton renders them
        let v = if k == "trace_level" {
            json!(v)
        } else {
            json!(v.into_iter().next().unwrap_or_default())
        };
        m.insert(k.to_string(), v);
    }
    Json(Value::Object(m))
}

async fn trace_get(State(st): State<Arc<AppState>>) -> Json<Value> {
    trace_json(&st.extensions.trace.get(None))
}

async fn model_trace_get(
    State(st): State<Arc<AppState>>,
    Path(model): Path<String>,
) -> Api<Json<Value>> {
    st.version(&model, "")?;
    Ok(trace_json(&st.extensions.trace.get(Some(&model))))
}

async fn trace_set(State(st): State<Arc<AppState>>, who: Caller, body: Bytes) -> Api<Json<Value>> {
    update_trace(&st, &who, None, &body)
}

async fn model_trace_set(
    State(st): State<Arc<AppState>>,
    who: Caller,
    Path(model): Path<String>,
    body: Bytes,
) -> Api<Json<Value>> {
    update_trace(&st, &who, Some(&model), &body)
}

fn update_trace(st: &AppState, who: &Caller, model: Option<&str>, body: &[u8]) -> Api<Json<Value>> {
    who.authorize(st)?;
    if let Some(m) = model {
        st.version(m, "")?;
    }
    let (mut set, mut clear) = (TraceFields::default(), TraceFields::default());
    for (k, v) in object(body, "trace settings")? {
        let values: Vec<String> = match v {
            Value::Null => {
                // a placeholder value of the right kind marks the field as cleared
                let placeholder = if k == "trace_level" { "OFF" } else { "1" };
                parse_trace_field(&mut clear, &k, &[placeholder.to_string()])?;
                continue;
            }
            Value::String(s) => vec![s],
            Value::Number(n) => vec![n.to_string()],
            Value::Array(a) => a
                .into_iter()
                .map(|x| match x {
                    Value::String(s) => Ok(s),
                    other => Err(invalid(format!("{k}: expected strings, got {other}"))),
                })
                .collect::<Api<_>>()?,
            other => return Err(invalid(format!("{k}: expected a string, got {other}"))),
        };
        parse_trace_field(&mut set, &k, &values)?;
    }
    let t = st.extensions.trace.update(model, set, clear);
    tracing::info!(caller = %who.shown(), model = model.unwrap_or(""), ?t, "trace settings changed");
    Ok(trace_json(&t))
}

async fn cuda_status_all() -> Json<Value> {
    Json(json!([]))
}

async fn cuda_status(Path(name): Path<String>) -> ApiError {
    ApiError(cuda_region_unknown(&name))
}

async fn cuda_register(
    State(st): State<Arc<AppState>>,
    who: Caller,
    Path(name): Path<String>,
) -> Api<StatusCode> {
    who.authorize(&st)?;
    Err(ApiError(cuda_register_refused(&name)))
}

async fn cuda_unregister_all(State(st): State<Arc<AppState>>, who: Caller) -> Api<StatusCode> {
    who.authorize(&st)?;
    Ok(StatusCode::OK)
}

async fn cuda_unregister(
    State(st): State<Arc<AppState>>,
    who: Caller,
    Path(_name): Path<String>,
) -> Api<StatusCode> {
    who.authorize(&st)?;
    Ok(StatusCode::OK)
}
