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

/// The cause of an [`Error`]: any error, shared so that one batch failure can answer every
/// request of the batch.
pub type Source = std::sync::Arc<dyn std::error::Error + Send + Sync + 'static>;

/// An error with a kind and a lowercase message that names what went wrong.
///
/// `Display` shows the message only: it is what clients get. The cause, when there is one,
/// stays reachable through [`std::error::Error::source`] and is shown by [`Error::report`],
/// which is what logs use.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    /// How the server reports this error to clients.
    pub code: ErrorCode,
    /// A message naming the offending field, model or file.
    pub message: String,
    /// What caused it (an engine's, the operating system's or a library's error), if any.
    #[source]
    pub source: Option<Source>,
}

impl Error {
    /// An error of `code` with `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Error {
            code,
            message: message.into(),
            source: None,
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
    /// This error with `cause` as its source; the message is unchanged.
    pub fn with_source(mut self, cause: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(std::sync::Arc::new(cause));
        self
    }
    /// This error with `prefix: ` in front of its message, keeping its code and source.
    pub fn prefixed(mut self, prefix: impl std::fmt::Display) -> Self {
        self.message = format!("{prefix}: {}", self.message);
        self
    }
    /// The message followed by its chain of causes (`message: cause: cause`), for logs.
    pub fn report(&self) -> Report<'_> {
        Report(self)
    }
}

/// An [`Error`] shown with its causes; see [`Error::report`].
pub struct Report<'a>(&'a Error);

impl std::fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.message)?;
        let mut cause = std::error::Error::source(self.0);
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}

/// Result with the shared [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cause_is_kept_and_reported_but_not_shown_to_clients() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = Error::internal("cannot load model 'm'")
            .with_source(io)
            .prefixed("version 1");
        let fanned_out = e.clone();
        assert_eq!(fanned_out.to_string(), "version 1: cannot load model 'm'");
        assert_eq!(
            fanned_out.report().to_string(),
            "version 1: cannot load model 'm': no such file"
        );
        assert_eq!(
            std::error::Error::source(&fanned_out).map(|c| c.to_string()),
            Some("no such file".into())
        );
        assert_eq!(fanned_out.code, ErrorCode::Internal);
    }
}
