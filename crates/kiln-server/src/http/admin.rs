//! Health, metadata, configuration, statistics and repository endpoints.

use crate::error::ApiError;
use crate::state::{caller, extensions, AppState, SERVER_NAME, SERVER_VERSION};
use crate::views;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use kiln_core::Error;
use kiln_runtime::check_model_name;
use serde_json::{json, Value};
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

pub async fn server_metadata(State(st): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({
        "name": SERVER_NAME,
        "version": SERVER_VERSION,
        "extensions": extensions(&st),
    }))
}

async fn metadata(st: &AppState, model: &str, version: &str) -> Api<Json<Value>> {
    let v = st.version(model, version)?;
    Ok(Json(views::model_metadata(&v, &st.serving_versions(model))))
}

pub async fn model_metadata(
    State(st): State<Arc<AppState>>,
    Path(m): Path<String>,
) -> Api<Json<Value>> {
    metadata(&st, &m, "").await
}

pub async fn model_metadata_v(
    State(st): State<Arc<AppState>>,
    Path((m, v)): Path<(String, String)>,
) -> Api<Json<Value>> {
    metadata(&st, &m, &v).await
}

fn ready_answer(st: &AppState, model: &str, version: &str) -> Response {
    match st.version(model, version) {
        Ok(_) if st.ready() => StatusCode::OK.into_response(),
        Ok(_) => ApiError(Error::unavailable("server is shutting down")).into_response(),
        Err(e) => ApiError(e).into_response(),
    }
}

pub async fn model_ready(State(st): State<Arc<AppState>>, Path(m): Path<String>) -> Response {
    ready_answer(&st, &m, "")
}

pub async fn model_ready_v(
    State(st): State<Arc<AppState>>,
    Path((m, v)): Path<(String, String)>,
) -> Response {
    ready_answer(&st, &m, &v)
}

pub async fn model_config(
    State(st): State<Arc<AppState>>,
    Path(m): Path<String>,
) -> Api<Json<Value>> {
    Ok(Json(views::model_config(st.version(&m, "")?.as_ref())))
}

pub async fn model_config_v(
    State(st): State<Arc<AppState>>,
    Path((m, v)): Path<(String, String)>,
) -> Api<Json<Value>> {
    Ok(Json(views::model_config(st.version(&m, &v)?.as_ref())))
}

fn stats_for(st: &AppState, model: Option<&str>, version: &str) -> Api<Json<Value>> {
    let list: Vec<Value> = match model {
        None => st
            .repo
            .serving()
            .iter()
            .map(|v| views::model_stats(v))
            .collect(),
        Some(m) if version.is_empty() => {
            check_model_name(m)?;
            st.version(m, "")?;
            st.repo
                .serving()
                .iter()
                .filter(|v| v.name == m)
                .map(|v| views::model_stats(v))
                .collect()
        }
        Some(m) => vec![views::model_stats(st.version(m, version)?.as_ref())],
    };
    Ok(Json(json!({ "model_stats": list })))
}

pub async fn all_stats(State(st): State<Arc<AppState>>) -> Api<Json<Value>> {
    stats_for(&st, None, "")
}

pub async fn model_stats(
    State(st): State<Arc<AppState>>,
    Path(m): Path<String>,
) -> Api<Json<Value>> {
    stats_for(&st, Some(&m), "")
}

pub async fn model_stats_v(
    State(st): State<Arc<AppState>>,
    Path((m, v)): Path<(String, String)>,
) -> Api<Json<Value>> {
    stats_for(&st, Some(&m), &v)
}

pub async fn repository_index(State(st): State<Arc<AppState>>) -> Json<Value> {
    Json(views::index(&st.repo.index()))
}

pub async fn load(
    State(st): State<Arc<AppState>>,
    who: Caller,
    Path(m): Path<String>,
) -> Api<StatusCode> {
    who.authorize(&st)?;
    let r = st.repo.load(&m).await;
    tracing::info!(caller = %who.shown(), model = %m.escape_debug(), ok = r.is_ok(), "repository load");
    r?;
    Ok(StatusCode::OK)
}

pub async fn unload(
    State(st): State<Arc<AppState>>,
    who: Caller,
    Path(m): Path<String>,
) -> Api<StatusCode> {
    who.authorize(&st)?;
    let r = st.repo.unload(&m).await;
    tracing::info!(caller = %who.shown(), model = %m.escape_debug(), ok = r.is_ok(), "repository unload");
    r?;
    Ok(StatusCode::OK)
}

pub async fn not_found(uri: Uri) -> ApiError {
    ApiError(Error::not_found(format!("no endpoint at '{}'", uri.path())))
}
