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
mod raw;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_parts;
#[cfg(test)]
mod tests_strict;

pub use crate::request::{InferRequest, RequestedOutput, WireRequest};
pub use decode::{decode_request, parse_json_object};
pub use encode::{encode_response, encode_response_parts, error_body, EncodedResponse};
pub use raw::decode_raw_request;

/// The header that gives the length of the JSON part of a body with binary tensors.
pub const HEADER_CONTENT_LENGTH: &str = "inference-header-content-length";

/// A serde_json error's message without the ` at line L column C` suffix it ends with, in
/// the protocol's terms: the Rust types serde names (`i64`, `u64`, ...) are said as JSON says
/// them.
pub(crate) fn json_error_message(e: &serde_json::Error) -> String {
    let s = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let m = s.strip_suffix(&suffix).unwrap_or(&s);
    protocol_terms(m)
}

/// Rewrites serde's names of Rust types in `msg` into JSON terms.
pub(crate) fn protocol_terms(msg: &str) -> String {
    const TERMS: &[(&str, &str)] = &[
        ("expected i64", "expected an integer"),
        ("expected i32", "expected an integer"),
        ("expected u64", "expected a non-negative integer"),
        ("expected u32", "expected a non-negative integer"),
        ("expected usize", "expected a non-negative integer"),
        ("expected f64", "expected a number"),
        ("expected f32", "expected a number"),
        ("expected a sequence", "expected an array"),
        ("expected a map", "expected an object"),
        ("invalid type: sequence", "invalid type: array"),
        ("invalid type: map", "invalid type: object"),
        ("invalid type: unit value", "invalid type: null"),
    ];
    let mut out = msg.to_string();
    for (from, to) in TERMS {
        if out.contains(from) {
            out = out.replace(from, to);
        }
    }
    out
}

/// `T` read only from a JSON object. serde's derived structs also accept an array of their
/// fields in order (so `[]` would decode as an empty request), and name the Rust struct when
/// they refuse other values; this accepts objects alone, and says so in JSON terms.
pub struct JsonObject<T>(pub T);

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for JsonObject<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Objects<T>(std::marker::PhantomData<T>);
        impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for Objects<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(Objects(std::marker::PhantomData))
            .map(JsonObject)
    }
}
