//! `POST /v2/models/{m}[/versions/{v}]/infer`: JSON or binary tensors in, the same out.

use crate::error::{invalid, ApiError};
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use kiln_core::{Error, ErrorCode};
use std::sync::Arc;
use std::time::Instant;

const HEADER_LEN: &str = "inference-header-content-length";

pub async fn infer(
    State(st): State<Arc<AppState>>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    run(&st, &model, "", &headers, body).await
}

pub async fn infer_v(
    State(st): State<Arc<AppState>>,
    Path((model, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    run(&st, &model, &version, &headers, body).await
}

async fn run(
    st: &AppState,
    model: &str,
    version: &str,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let received = Instant::now();
    match handle(st, model, version, headers, body, received).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn handle(
    st: &AppState,
    model: &str,
    version: &str,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    received: Instant,
) -> Result<Response, ApiError> {
    let body = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError(Error::new(
                ErrorCode::PayloadTooLarge,
                format!("request body too large: {}", r.body_text()),
            ))
        } else {
            invalid(format!("cannot read request body: {}", r.body_text()))
        }
    })?;
    let header_len = match headers.get(HEADER_LEN) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .ok_or_else(|| {
                    invalid(
                        "header 'inference-header-content-length' must be a non-negative integer",
                    )
                })?,
        ),
    };
    let req = kiln_protocol::decode_request(body, header_len)?;
    let id = req.id.clone();
    let done = crate::infer::infer(st, model, version, req, received).await?;
    let version = done.version.version.to_string();
    let (body, json_len) =
        kiln_protocol::encode_response(&done.version.name, &version, id.as_deref(), &done.outputs)?;
    let mut resp = Response::new(axum::body::Body::from(body));
    let h = resp.headers_mut();
    match json_len {
        Some(n) => {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            h.insert(HEADER_LEN, HeaderValue::from(n));
        }
        None => {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
    }
    Ok(resp)
}
