//! `POST /v2/models/{m}[/versions/{v}]/infer`: JSON or binary tensors in, the same out.

use super::parts_body::PartsBody;
use crate::error::{invalid, ApiError};
use crate::state::AppState;
use axum::body::{Body, Bytes};
use axum::extract::{Extension, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use kiln_core::{Error, ErrorCode};
use std::sync::Arc;
use std::time::Instant;
use tracing::{field, Instrument, Span};

const HEADER_LEN: &str = "inference-header-content-length";

/// The largest request body accepted, in bytes.
#[derive(Clone, Copy)]
pub struct MaxBody(pub usize);

pub async fn infer(
    State(st): State<Arc<AppState>>,
    Extension(max): Extension<MaxBody>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    run(&st, max, &model, "", &headers, body).await
}

pub async fn infer_v(
    State(st): State<Arc<AppState>>,
    Extension(max): Extension<MaxBody>,
    Path((model, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    run(&st, max, &model, &version, &headers, body).await
}

async fn run(
    st: &AppState,
    max: MaxBody,
    model: &str,
    version: &str,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let received = Instant::now();
    // The request's span: the batch that computes it links to it. Disabled, and free, unless
    // a subscriber wants it (`--otlp-endpoint`, or a debug log filter).
    // Trace settings (`v2/trace/setting`) pick the requests that get one.
    let span = if crate::extensions::traced(st, model) {
        tracing::debug_span!(
            "request",
            protocol = "http",
            model,
            version,
            id = field::Empty
        )
    } else {
        tracing::Span::none()
    };
    let handled = handle(st, max, model, version, headers, body, received, &span);
    match handled.instrument(span.clone()).await {
        Ok(r) => r,
        Err(r) => r,
    }
}

/// The `Inference-Header-Content-Length` value: every copy of the header must parse and
/// agree, since a proxy and the server could otherwise split the body differently.
fn header_len(headers: &HeaderMap) -> Result<Option<usize>, ApiError> {
    let mut found: Option<usize> = None;
    for v in headers.get_all(HEADER_LEN) {
        let n = v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .ok_or_else(|| {
                invalid("header 'inference-header-content-length' must be a non-negative integer")
            })?;
        match found {
            Some(m) if m != n => {
                return Err(invalid(format!(
                    "header 'inference-header-content-length' is given more than once with \
                     different values ({m} and {n})"
                )))
            }
            _ => found = Some(n),
        }
    }
    Ok(found)
}

/// The declared `Content-Length`, when there is exactly one valid one.
fn content_length(headers: &HeaderMap) -> Option<usize> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<usize>().ok())
}

/// Reads the body, up to `max` bytes: 413 beyond it, 408 when it arrives too slowly.
async fn read_body(body: Body, max: usize) -> Result<Bytes, Response> {
    axum::body::to_bytes(body, max).await.map_err(|e| {
        let too_long = std::iter::successors(Some(&e as &(dyn std::error::Error + 'static)), |c| {
            c.source()
        })
        .any(|c| c.is::<http_body_util::LengthLimitError>());
        if too_long {
            ApiError(Error::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "request body too large: over the limit of {max} bytes (--max-request-bytes)"
                ),
            ))
            .into_response()
        } else if crate::body::is_too_slow(&e) {
            (
                StatusCode::REQUEST_TIMEOUT,
                [(header::CONTENT_TYPE, "application/json")],
                kiln_protocol::error_body(&e.to_string()),
            )
                .into_response()
        } else {
            invalid(format!("cannot read request body: {e}")).into_response()
        }
    })
}

/// Refuses what the path and headers already condemn (bad headers 400, unknown model 404, full
/// queue or spent budget 429) before the body is read; see `crate::admission` for the order.
#[allow(clippy::too_many_arguments)]
async fn handle(
    st: &AppState,
    max: MaxBody,
    model: &str,
    version: &str,
    headers: &HeaderMap,
    body: Body,
    received: Instant,
    span: &Span,
) -> Result<Response, Response> {
    let err = |e: Error| ApiError(e).into_response();
    let header_len = header_len(headers).map_err(IntoResponse::into_response)?;
    let served = st.version(model, version).map_err(err)?;
    let declared = content_length(headers);
    let mut ticket = st
        .admission
        .admit_with_slot(&served, declared)
        .map_err(err)?;
    // Triton's raw binary request: the body is the data of the model's one input
    let raw_input =
        (header_len == Some(0)).then(|| (served.io().inputs.clone(), served.config.max_batch_size));
    drop(served);
    // A body that is not all there within the grace gives its place back, so a slow client
    // cannot hold the queue: it is checked for room again when it is queued.
    let read = read_body(body, max.0);
    tokio::pin!(read);
    let body = match tokio::time::timeout(crate::admission::SLOT_GRACE, &mut read).await {
        Ok(body) => body?,
        Err(_) => {
            ticket.release_slot();
            read.await?
        }
    };
    if declared.is_none() {
        st.admission
            .add_bytes(&mut ticket, body.len())
            .map_err(err)?;
    }
    let req = match raw_input {
        Some((inputs, max_batch)) => {
            kiln_protocol::http::decode_raw_request(body, &inputs, max_batch)
        }
        None => kiln_protocol::decode_request(body, header_len),
    }
    .map_err(err)?;
    if let Some(id) = &req.request.id {
        span.record("id", id.as_str());
    }
    let id = req.request.id.clone();
    // the place held in the queue becomes this request's room there
    ticket.release_slot();
    let done = crate::infer::infer(st, model, version, req, received)
        .await
        .map_err(|e| {
            st.admission.note_late_refusal(&e);
            err(e)
        })?;
    let version = done.version.version.to_string();
    let encoded = kiln_protocol::encode_response_parts(
        &done.version.name,
        &version,
        id.as_deref(),
        &done.outputs,
    )
    .map_err(err)?;
    drop(ticket);
    let json_len = encoded.json_len;
    // a response that is one buffer (JSON, small outputs) goes out as one, as it always did
    let body = if encoded.tail.is_empty() {
        axum::body::Body::from(encoded.head)
    } else {
        axum::body::Body::new(PartsBody::new(encoded))
    };
    let mut resp = Response::new(body);
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
