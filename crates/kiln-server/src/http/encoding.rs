//! Request `Content-Encoding`s the server cannot undo are refused before the body is read:
//! 415 with Triton's error body naming the header and what is accepted, where the
//! decompression layer alone answers an empty 415.

use axum::extract::Request;
use axum::http::header::{CONTENT_ENCODING, CONTENT_TYPE};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// The codings request bodies may carry (`identity` is no coding).
const ACCEPTED: [&str; 3] = ["gzip", "deflate", "identity"];

/// Passes a request on unless its `Content-Encoding` names a coding outside [`ACCEPTED`].
pub async fn refuse_unknown_encodings(req: Request, next: Next) -> Response {
    for value in req.headers().get_all(CONTENT_ENCODING) {
        let Ok(text) = value.to_str() else {
            return refused("a value that is not ASCII");
        };
        for coding in text.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            if !ACCEPTED.iter().any(|a| a.eq_ignore_ascii_case(coding)) {
                return refused(&format!("'{coding}'"));
            }
        }
    }
    next.run(req).await
}

fn refused(what: &str) -> Response {
    let message = format!(
        "header 'Content-Encoding': {what} is not supported; request bodies may be {}",
        ACCEPTED.join(", ")
    );
    (
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        [(CONTENT_TYPE, "application/json")],
        kiln_protocol::error_body(&message),
    )
        .into_response()
}
