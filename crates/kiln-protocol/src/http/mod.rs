//! The HTTP/REST inference bodies of the KServe v2 protocol with Triton's binary tensor
//! extension.
//!
//! A request body is JSON, optionally followed by the raw bytes of binary inputs; the
//! `Inference-Header-Content-Length` header then gives the length of the JSON part, and each
//! binary input carries `parameters.binary_data_size`. Responses use the same layout for
//! outputs the client asked to receive as binary data.

mod data;
mod decode;
mod encode;
#[cfg(test)]
mod tests;

pub use crate::request::{InferRequest, RequestedOutput};
pub use decode::decode_request;
pub use encode::{encode_response, error_body};

/// The header that gives the length of the JSON part of a body with binary tensors.
pub const HEADER_CONTENT_LENGTH: &str = "inference-header-content-length";

/// A serde_json error's message without the ` at line L column C` suffix it ends with.
pub(crate) fn json_error_message(e: &serde_json::Error) -> String {
    let s = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    match s.strip_suffix(&suffix) {
        Some(m) => m.to_string(),
        None => s,
    }
}
