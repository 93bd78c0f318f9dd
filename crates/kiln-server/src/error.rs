//! The one place where a [`kiln_core::Error`] becomes an HTTP response or a gRPC status.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use kiln_core::{Error, ErrorCode};

/// An error answered over HTTP as Triton does: the mapped status and `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (
            status,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            kiln_protocol::error_body(&self.0.message),
        )
            .into_response()
    }
}

/// The gRPC status for an error.
pub fn to_status(e: Error) -> tonic::Status {
    tonic::Status::new(tonic::Code::from_i32(e.code.grpc_code()), e.message)
}

/// Shorthand for a 400 error.
pub fn invalid(msg: impl Into<String>) -> ApiError {
    ApiError(Error::new(ErrorCode::InvalidArgument, msg))
}
