//! The HTTP front end (KServe v2 REST plus Triton's extensions), split by API area.

mod admin;
mod encoding;
mod extensions;
mod infer;
mod parts_body;
mod rollout;
mod shm;
mod sparse;

use crate::state::AppState;
use axum::extract::DefaultBodyLimit;
use axum::http::{Extensions, HeaderMap, StatusCode, Version};
use axum::routing::{get, post};
use axum::Router;
use std::sync::Arc;
use tower_http::compression::predicate::{DefaultPredicate, Predicate};
use tower_http::compression::CompressionLayer;
use tower_http::decompression::RequestDecompressionLayer;

/// The HTTP routes. `max_body` bounds request bodies, counted after any `Content-Encoding` is
/// undone (413 beyond it).
pub fn router(state: Arc<AppState>, max_body: usize) -> Router {
    Router::new()
        .route("/v2/health/live", get(admin::live))
        .route("/v2/health/ready", get(admin::ready))
        .route("/v2", get(admin::server_metadata))
        .route("/v2/models/stats", get(admin::all_stats))
        .route("/v2/models/{model}", get(admin::model_metadata))
        .route(
            "/v2/models/{model}/versions/{version}",
            get(admin::model_metadata),
        )
        .route("/v2/models/{model}/ready", get(admin::model_ready))
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(admin::model_ready),
        )
        .route("/v2/models/{model}/config", get(admin::model_config))
        .route(
            "/v2/models/{model}/versions/{version}/config",
            get(admin::model_config),
        )
        .route("/v2/models/{model}/stats", get(admin::model_stats))
        .route(
            "/v2/models/{model}/versions/{version}/stats",
            get(admin::model_stats),
        )
        // successful inference answers are compressed as `Accept-Encoding` asks; like
        // Triton, no other answer is (tritonclient's aio client inflates only those)
        .merge(
            Router::new()
                .route("/v2/models/{model}/infer", post(infer::infer))
                .route(
                    "/v2/models/{model}/versions/{version}/infer",
                    post(infer::infer_v),
                )
                .layer(CompressionLayer::new().compress_when(
                    DefaultPredicate::new().and(
                        |status: StatusCode, _: Version, _: &HeaderMap, _: &Extensions| {
                            status.is_success()
                        },
                    ),
                )),
        )
        .route("/v2/repository/index", post(admin::repository_index))
        .route("/v2/systemsharedmemory/status", get(shm::status_all))
        .route(
            "/v2/systemsharedmemory/region/{name}/status",
            get(shm::status),
        )
        .route(
            "/v2/systemsharedmemory/region/{name}/register",
            post(shm::register),
        )
        .route(
            "/v2/systemsharedmemory/unregister",
            post(shm::unregister_all),
        )
        .route(
            "/v2/systemsharedmemory/region/{name}/unregister",
            post(shm::unregister),
        )
        .route("/admin/v1/models/{model}/tables", get(sparse::tables))
        .route(
            "/admin/v1/models/{model}/versions/{version}/tables",
            get(sparse::tables_v),
        )
        .route(
            "/admin/v1/models/{model}/tables/{table}/deltas",
            post(sparse::delta),
        )
        .route(
            "/admin/v1/models/{model}/versions/{version}/tables/{table}/deltas",
            post(sparse::delta_v),
        )
        .route(
            "/admin/v1/models/{model}/tables/{table}/rows",
            get(sparse::rows),
        )
        .route(
            "/admin/v1/models/{model}/versions/{version}/tables/{table}/rows",
            get(sparse::rows_v),
        )
        .route(
            "/admin/v1/models/{model}/traffic",
            get(rollout::get).put(rollout::set),
        )
        .route("/v2/repository/models/{model}/load", post(admin::load))
        .route("/v2/repository/models/{model}/unload", post(admin::unload))
        .merge(extensions::routes())
        .fallback(admin::not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::Extension(infer::MaxBody(max_body)))
        // `Content-Encoding: gzip | deflate` bodies are inflated as they are read, so the body
        // limit above counts inflated bytes and a compression bomb stops at `max_body`
        .layer(RequestDecompressionLayer::new())
        .layer(axum::middleware::from_fn(encoding::refuse_unknown_encodings))
        .with_state(state)
}
