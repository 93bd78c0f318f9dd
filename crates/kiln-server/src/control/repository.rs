//! The repository extension as Triton implements it: the index of every model in the
//! repository, load with a `config` override and `file:<version>/<name>` model files, unload
//! with `unload_dependents`, and load and unload refused unless the server runs in the explicit
//! model-control mode. The front ends unpack their requests into [`Param`]s.

use crate::state::AppState;
use kiln_core::{texts, Error, Result};
use kiln_protocol::inference as pb;
use kiln_runtime::{ControlMode, LoadRequest, VersionState};
use std::hash::{DefaultHasher, Hash, Hasher};

/// A parameter of a load or unload request.
#[derive(Debug, Clone)]
pub enum Param {
    /// `bool_param` / a JSON boolean.
    Bool(bool),
    /// `int64_param` / a JSON integer (no parameter Kiln reads is one).
    Int,
    /// `string_param` / a JSON string (over HTTP, a file's base64 text).
    Str(String),
    /// `bytes_param`: a file's bytes over gRPC.
    Bytes(Vec<u8>),
}

impl Param {
    fn kind(&self) -> &'static str {
        match self {
            Param::Bool(_) => "bool",
            Param::Int => "int",
            Param::Str(_) => "string",
            Param::Bytes(_) => "bytes",
        }
    }
}

/// The repository index: every model of the repository and every known version with its
/// state (only the serving ones when `ready_only`). A model never loaded has no version and
/// no state, as in Triton's index.
pub fn index(st: &AppState, ready_only: bool) -> pb::RepositoryIndexResponse {
    let models = st
        .repo
        .index_all()
        .into_iter()
        .filter(|e| !ready_only || e.state == VersionState::Ready)
        .map(|e| pb::repository_index_response::ModelIndex {
            name: e.name,
            version: e.version.map(|v| v.to_string()).unwrap_or_default(),
            state: e.state.as_str().into(),
            reason: e.reason,
        })
        .collect();
    pb::RepositoryIndexResponse { models }
}

/// Refuses load and unload outside the explicit model-control mode, with Triton's error.
fn check_control(st: &AppState) -> Result<()> {
    match st.repo.control_mode() {
        ControlMode::Explicit => Ok(()),
        ControlMode::None | ControlMode::Poll(_) => {
            Err(Error::unavailable(texts::CONTROL_DISABLED))
        }
    }
}

/// Loads or reloads `model` with the request's parameters: `config` (Triton's JSON model
/// configuration, used instead of the model's file) and `file:<version>/<name>` (model files,
/// base64 text over HTTP, bytes over gRPC; they need `config`, as in Triton). Everything is
/// checked before anything is written or loaded, so a refused request changes nothing.
pub async fn load(st: &AppState, model: &str, params: Vec<(String, Param)>) -> Result<()> {
    check_control(st)?;
    kiln_runtime::check_model_name(model)?;
    let mut req = LoadRequest::default();
    for (name, value) in params {
        if name == "config" {
            let Param::Str(text) = value else {
                return Err(Error::invalid(texts::unrecognized_load_parameter(
                    &name,
                    value.kind(),
                )));
            };
            let config = kiln_protocol::load_config::read_json(&text, model)
                .map_err(|e| Error::invalid(texts::invalid_config_override(model, &e.message)))?;
            let mut h = DefaultHasher::new();
            text.hash(&mut h);
            req.config = Some((config, h.finish()));
        } else if let Some(path) = name.strip_prefix("file:") {
            let bytes = match value {
                Param::Bytes(b) => b,
                Param::Str(text) => base64_decode(&text).ok_or_else(|| {
                    Error::invalid(format!(
                        "load parameter '{}': not base64 text",
                        name.escape_debug()
                    ))
                })?,
                other => {
                    return Err(Error::invalid(texts::unrecognized_load_parameter(
                        &name,
                        other.kind(),
                    )))
                }
            };
            req.files.push((path.to_string(), bytes));
        } else {
            return Err(Error::invalid(texts::unrecognized_load_parameter(
                &name,
                value.kind(),
            )));
        }
    }
    if !req.files.is_empty() && req.config.is_none() {
        return Err(Error::invalid(format!(
            "failed to load '{model}': 'file:' parameters need the 'config' parameter too"
        )));
    }
    st.repo.load_with(model, req).await
}

/// Unloads `model`; `unload_dependents` (a boolean parameter) unloads the member models of a
/// pipeline with it.
pub async fn unload(st: &AppState, model: &str, params: Vec<(String, Param)>) -> Result<()> {
    check_control(st)?;
    let mut dependents = false;
    for (name, value) in params {
        match (name.as_str(), value) {
            ("unload_dependents", Param::Bool(b)) => dependents = b,
            (_, value) => {
                return Err(Error::invalid(format!(
                    "Unrecognized unload parameter '{}' with type '{}'",
                    name.escape_debug(),
                    value.kind()
                )))
            }
        }
    }
    st.repo.unload_with(model, dependents).await
}

/// Standard base64 (RFC 4648, padding optional, whitespace ignored); `None` if malformed.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let digits: Vec<u8> = text.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let digits = digits
        .strip_suffix(b"==")
        .or_else(|| digits.strip_suffix(b"="))
        .unwrap_or(&digits);
    if digits.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= value(c)? << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::base64_decode;

    #[test]
    fn base64() {
        assert_eq!(base64_decode("").unwrap(), b"");
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("aGVsbG8").unwrap(), b"hello");
        assert_eq!(base64_decode("aGVs\nbG8h").unwrap(), b"hell\x6f!");
        assert_eq!(base64_decode("/+8=").unwrap(), vec![0xff, 0xef]);
        assert!(base64_decode("a").is_none());
        assert!(base64_decode("aGV*").is_none());
    }
}
