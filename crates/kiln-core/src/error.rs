//! The error kinds every layer shares, and their one mapping to HTTP status and gRPC code.

/// What kind of failure an error is; the server maps it to HTTP and gRPC in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The request is malformed or does not match the model (HTTP 400, gRPC INVALID_ARGUMENT).
    InvalidArgument,
    /// The model, version or endpoint does not exist (HTTP 404, gRPC NOT_FOUND).
    NotFound,
    /// The model exists but is not ready to serve (HTTP 503, gRPC UNAVAILABLE).
    Unavailable,
    /// The queue is full; the client should back off (HTTP 429, gRPC RESOURCE_EXHAUSTED).
    Overloaded,
    /// The request's timeout passed before it was computed (HTTP 504, gRPC DEADLINE_EXCEEDED).
    Timeout,
    /// The request body is larger than the server accepts (HTTP 413, gRPC RESOURCE_EXHAUSTED).
    PayloadTooLarge,
    /// The caller lacks the token the endpoint requires (HTTP 401, gRPC UNAUTHENTICATED).
    Unauthenticated,
    /// The request was cancelled, e.g. the server is shutting down (HTTP 503, gRPC CANCELLED).
    Cancelled,
    /// The operation is not supported by this model or backend (HTTP 400, gRPC UNIMPLEMENTED).
    Unsupported,
    /// A failure inside the server or the backend (HTTP 500, gRPC INTERNAL).
    Internal,
}

impl ErrorCode {
    /// The HTTP status code for this kind.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidArgument | ErrorCode::Unsupported => 400,
            ErrorCode::Unauthenticated => 401,
            ErrorCode::NotFound => 404,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::Overloaded => 429,
            ErrorCode::Internal => 500,
            ErrorCode::Unavailable | ErrorCode::Cancelled => 503,
            ErrorCode::Timeout => 504,
        }
    }

    /// The gRPC status code number for this kind (`tonic::Code` values).
    pub fn grpc_code(self) -> i32 {
        match self {
            ErrorCode::Cancelled => 1,
            ErrorCode::InvalidArgument => 3,
            ErrorCode::Timeout => 4,
            ErrorCode::NotFound => 5,
            ErrorCode::Overloaded | ErrorCode::PayloadTooLarge => 8,
            ErrorCode::Unsupported => 12,
            ErrorCode::Internal => 13,
            ErrorCode::Unavailable => 14,
            ErrorCode::Unauthenticated => 16,
        }
    }

    /// A short label used for the `reason` of failure metrics.
    pub fn as_label(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Timeout => "timeout",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::Internal => "internal",
        }
    }
}

/// An error with a kind and a lowercase message that names what went wrong.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    /// How the server reports this error to clients.
    pub code: ErrorCode,
    /// A message naming the offending field, model or file.
    pub message: String,
}

impl Error {
    /// An error of `code` with `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Error {
            code,
            message: message.into(),
        }
    }
    /// A 400 / INVALID_ARGUMENT error.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }
    /// A 404 / NOT_FOUND error.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }
    /// A 500 / INTERNAL error.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
    /// A 503 / UNAVAILABLE error.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }
}

/// Result with the shared [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
