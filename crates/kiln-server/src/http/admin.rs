//! Health, metadata, configuration, statistics and repository endpoints: thin adapters over
//! [`crate::control`], which builds each answer as its protobuf message; HTTP sends that
//! message as JSON.

use crate::control;
use crate::control::repository::Param;
use crate::error::ApiError;
use crate::state::{caller, AppState};
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, Uri};
use axum::Json;
use bytes::Bytes;
use kiln_core::Error;
use kiln_protocol::inference as pb;
use serde::Deserialize;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

type Api<T> = Result<T, ApiError>;

/// Who calls a state-changing endpoint: the peer address (when the listener records it) and
/// the `Authorization` header.
pub struct Caller {
    /// The peer's address, for the audit log.
    pub addr: Option<SocketAddr>,
    /// The `Authorization` header, if any (and valid text).
    pub credential: Option<String>,
}

impl Caller {
    /// Checks the caller's credential with [`AppState::authorize`].
    pub fn authorize(&self, st: &AppState) -> Result<(), ApiError> {
        st.authorize(self.credential.as_deref()).map_err(ApiError)
    }

    /// The address as logs show it.
    pub fn shown(&self) -> String {
        caller(self.addr)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Caller {
            addr: parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0),
            credential: parts
                .headers
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .map(String::from),
        })
    }
}

pub async fn live() -> StatusCode {
    StatusCode::OK
}

pub async fn ready(State(st): State<Arc<AppState>>) -> StatusCode {
    if st.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// A model route's path: `/v2/models/{model}` or `/v2/models/{model}/versions/{version}`
/// (no version: the latest).
#[derive(Deserialize)]
pub struct ModelPath {
    model: String,
    #[serde(default)]
    version: String,
}

pub async fn server_metadata(State(st): State<Arc<AppState>>) -> Json<pb::ServerMetadataResponse> {
    Json(control::server_metadata(&st))
}

pub async fn model_metadata(
    State(st): State<Arc<AppState>>,
    Path(p): Path<ModelPath>,
) -> Api<Json<pb::ModelMetadataResponse>> {
    Ok(Json(control::model_metadata(&st, &p.model, &p.version)?))
}

pub async fn model_ready(
    State(st): State<Arc<AppState>>,
    Path(p): Path<ModelPath>,
) -> Api<StatusCode> {
    control::model_ready(&st, &p.model, &p.version)?;
    Ok(StatusCode::OK)
}

/// Triton's model configuration: the protobuf message as JSON.
pub async fn model_config(
    State(st): State<Arc<AppState>>,
    Path(p): Path<ModelPath>,
) -> Api<Json<pb::ModelConfig>> {
    Ok(Json(control::model_config(&st, &p.model, &p.version)?))
}

pub async fn all_stats(State(st): State<Arc<AppState>>) -> Api<Json<pb::ModelStatisticsResponse>> {
    Ok(Json(control::model_statistics(&st, "", "")?))
}

pub async fn model_stats(
    State(st): State<Arc<AppState>>,
    Path(p): Path<ModelPath>,
) -> Api<Json<pb::ModelStatisticsResponse>> {
    Ok(Json(control::model_statistics(&st, &p.model, &p.version)?))
}

/// The body of `POST /v2/repository/index`; an empty body lists every version.
#[derive(Deserialize, Default)]
struct IndexRequest {
    /// Only the versions that serve.
    #[serde(default)]
    ready: bool,
}

/// The repository index as Triton's HTTP API returns it: a JSON array of the index entries; a
/// model never loaded shows its name only.
pub async fn repository_index(
    State(st): State<Arc<AppState>>,
    body: Bytes,
) -> Api<Json<Vec<serde_json::Value>>> {
    let req: IndexRequest = if body.iter().all(u8::is_ascii_whitespace) {
        IndexRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError(Error::invalid(format!(
                "repository index request: {e} (expected {{\"ready\": true|false}})"
            )))
        })?
    };
    let rows = control::repository_index(&st, req.ready)
        .models
        .into_iter()
        .map(|m| {
            let mut v = serde_json::to_value(m).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                if o.get("state").and_then(|s| s.as_str()) == Some("") {
                    o.remove("state");
                }
            }
            v
        })
        .collect();
    Ok(Json(rows))
}

/// The body of a repository load or unload request: `{"parameters": {...}}`, or empty.
#[derive(Deserialize, Default)]
struct ControlRequest {
    #[serde(default)]
    parameters: serde_json::Map<String, serde_json::Value>,
}

/// The parameters of a load or unload body; a value that is not a boolean, an integer or a
/// string is refused naming the parameter.
fn control_params(body: &[u8], what: &str) -> Result<Vec<(String, Param)>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    let req: ControlRequest = serde_json::from_slice(body).map_err(|e| {
        ApiError(Error::invalid(format!(
            "repository {what} request: {e} (expected {{\"parameters\": {{...}}}})"
        )))
    })?;
    req.parameters
        .into_iter()
        .map(|(k, v)| {
            let p = match v {
                serde_json::Value::Bool(b) => Param::Bool(b),
                serde_json::Value::String(s) => Param::Str(s),
                serde_json::Value::Number(n) if n.is_i64() => Param::Int,
                other => {
                    return Err(ApiError(Error::invalid(format!(
                        "repository {what} request: parameter '{}' must be a boolean, an \
                         integer or a string, got {other}",
                        k.escape_debug()
                    ))))
                }
            };
            Ok((k, p))
        })
        .collect()
}

pub async fn load(
    State(st): State<Arc<AppState>>,
    who: Caller,
    Path(m): Path<String>,
    body: Bytes,
) -> Api<StatusCode> {
    who.authorize(&st)?;
    let params = control_params(&body, "load")?;
    let r = control::repository::load(&st, &m, params).await;
    tracing::info!(caller = %who.shown(), model = %m.escape_debug(), ok = r.is_ok(), "repository load");
    r?;
    Ok(StatusCode::OK)
}

pub async fn unload(
    State(st): State<Arc<AppState>>,
    who: Caller,
    Path(m): Path<String>,
    body: Bytes,
) -> Api<StatusCode> {
    who.authorize(&st)?;
    let params = control_params(&body, "unload")?;
    let r = control::repository::unload(&st, &m, params).await;
    tracing::info!(caller = %who.shown(), model = %m.escape_debug(), ok = r.is_ok(), "repository unload");
    r?;
    Ok(StatusCode::OK)
}

pub async fn not_found(uri: Uri) -> ApiError {
    ApiError(Error::not_found(format!("no endpoint at '{}'", uri.path())))
}
