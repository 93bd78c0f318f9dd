//! Decoding of HTTP inference request bodies.

use super::data::parse_data;
use super::{json_error_message, JsonObject};
use crate::request::{count_mismatch, input_elements, parse_dtype, RequestedOutput, WireRequest};
use crate::shm::ShmRef;
use bytes::Bytes;
use kiln_core::{Error, Result, Tensor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::time::Duration;

/// The JSON part of a request. Unknown fields are ignored, as Triton does.
#[derive(Deserialize)]
struct RequestJson<'a> {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    #[serde(default, borrow)]
    inputs: Vec<JsonObject<InputJson<'a>>>,
    #[serde(default)]
    outputs: Vec<JsonObject<OutputJson>>,
}

/// One input; `data` stays unparsed text until the datatype is known.
#[derive(Deserialize)]
struct InputJson<'a> {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    shape: Option<Vec<i64>>,
    #[serde(default)]
    datatype: Option<String>,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
}

/// One requested output.
#[derive(Deserialize)]
struct OutputJson {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
}

/// Decodes an HTTP inference request body.
///
/// `json_header_len` is the value of the `Inference-Header-Content-Length` header: when given,
/// the first that many bytes are the JSON request and the rest is the concatenation of the
/// binary inputs, in input order, each sized by its `parameters.binary_data_size`. Binary
/// inputs are zero-copy slices of `body`. Every error is an
/// [`InvalidArgument`](kiln_core::ErrorCode::InvalidArgument) whose message names the
/// offending field.
pub fn decode_request(body: Bytes, json_header_len: Option<usize>) -> Result<WireRequest> {
    let json_len = match json_header_len {
        Some(n) if n > body.len() => {
            return Err(Error::invalid(format!(
                "inference-header-content-length {n} exceeds the body length {}",
                body.len()
            )))
        }
        Some(n) => n,
        None => body.len(),
    };
    let req: RequestJson<'_> = parse_json_object(&body[..json_len])?;

    let params = req.parameters.unwrap_or_default();
    let mut out = WireRequest::with_capacity(req.inputs.len(), req.outputs.len());
    out.request.id = req.id;
    out.request.priority = uint_param(&params, "priority")?.filter(|&p| p != 0);
    out.request.timeout = uint_param(&params, "timeout")?
        .filter(|&t| t != 0)
        .map(Duration::from_micros);
    out.binary_data_output = bool_param(&params, "binary_data_output")?.unwrap_or(false);
    out.request.parameters = text_params(&params)?;

    let mut offset = json_len;
    for (i, JsonObject(input)) in req.inputs.into_iter().enumerate() {
        let (tensor, source) =
            decode_input(i, input, &body, &mut offset, json_header_len.is_some())?;
        if out.request.inputs().iter().any(|t| t.name == tensor.name) {
            return Err(Error::invalid(format!(
                "input '{}' appears twice",
                tensor.name
            )));
        }
        match source {
            // the one length check of the input's data
            Source::Body(what) => out.request.push_input(tensor, what)?,
            Source::Shm(r) => {
                let i = out.request.push_unfilled(tensor);
                out.shm_inputs.push((i, r));
            }
        }
    }
    if offset != body.len() {
        return Err(Error::invalid(format!(
            "binary data: {} bytes follow the last binary input",
            body.len() - offset
        )));
    }

    for (i, JsonObject(o)) in req.outputs.into_iter().enumerate() {
        let name = o
            .name
            .ok_or_else(|| Error::invalid(format!("outputs[{i}]: missing 'name'")))?;
        let params = o.parameters.unwrap_or_default();
        let what = format!("output '{name}'");
        let classification = uint_param(&params, "classification")
            .map_err(|e| Error::invalid(format!("{what}: {}", e.message)))?
            .filter(|&n| n != 0)
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX));
        let binary_data = bool_param(&params, "binary_data")
            .map_err(|e| Error::invalid(format!("{what}: {}", e.message)))?;
        let shared_memory = shm_param(&params, &what)?;
        if out.outputs.iter().any(|r| r.name == name) {
            return Err(Error::invalid(format!("{what} is requested twice")));
        }
        out.outputs.push(RequestedOutput {
            name,
            binary_data,
            shared_memory,
            classification,
        });
    }
    Ok(out)
}

/// Parses `json` as one JSON object into `T` (a top-level array or scalar is refused). Errors
/// are [`InvalidArgument`](kiln_core::ErrorCode::InvalidArgument) naming the line, column and
/// field, in JSON terms.
pub fn parse_json_object<'a, T: Deserialize<'a>>(json: &'a [u8]) -> Result<T> {
    let mut de = serde_json::Deserializer::from_slice(json);
    let JsonObject(v) = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        // Segments the parser had not named yet show as `?`; they add nothing to the message.
        let path = e.path().to_string();
        let at = match path.trim_end_matches(".?") {
            "." | "?" | "" => String::new(),
            p => format!("{p}: "),
        };
        let inner = e.into_inner();
        Error::invalid(format!(
            "malformed json at line {} column {}: {at}{}",
            inner.line(),
            inner.column(),
            json_error_message(&inner)
        ))
    })?;
    de.end().map_err(|e| {
        Error::invalid(format!(
            "malformed json at line {} column {}: {}",
            e.line(),
            e.column(),
            json_error_message(&e)
        ))
    })?;
    Ok(v)
}

/// Where a decoded input's data came from.
enum Source {
    /// The body: binary data (`binary_data_size`) or JSON `data`, named for errors.
    Body(&'static str),
    /// A shared-memory region; the tensor's data are empty until read from it.
    Shm(ShmRef),
}

/// Decodes input number `i`, taking its binary data (if any) from `body` at `*offset`. An
/// input in shared memory comes back with empty data and where its data are. The data's
/// length is checked against the shape when the input enters the request.
fn decode_input(
    i: usize,
    input: InputJson<'_>,
    body: &Bytes,
    offset: &mut usize,
    has_binary_part: bool,
) -> Result<(Tensor, Source)> {
    let name = input
        .name
        .ok_or_else(|| Error::invalid(format!("inputs[{i}]: missing 'name'")))?;
    let shape = input
        .shape
        .ok_or_else(|| Error::invalid(format!("input '{name}': missing 'shape'")))?;
    let datatype = input
        .datatype
        .ok_or_else(|| Error::invalid(format!("input '{name}': missing 'datatype'")))?;
    let dtype = parse_dtype(&datatype, &name)?;
    let expected = input_elements(&shape, &name)?;
    let params = input.parameters.unwrap_or_default();
    let binary_size = uint_param(&params, "binary_data_size")
        .map_err(|e| Error::invalid(format!("input '{name}': {}", e.message)))?;
    if let Some(r) = shm_param(&params, &format!("input '{name}'"))? {
        if input.data.is_some() || binary_size.is_some() {
            return Err(Error::invalid(format!(
                "input '{name}': has parameters.shared_memory_region and also 'data' or \
                 parameters.binary_data_size; send it one way"
            )));
        }
        let t = Tensor {
            name,
            dtype,
            shape,
            data: Bytes::new(),
        };
        return Ok((t, Source::Shm(r)));
    }

    let (data, what) = match (binary_size, input.data) {
        (Some(_), Some(_)) => {
            return Err(Error::invalid(format!(
                "input '{name}': has both 'data' and parameters.binary_data_size"
            )))
        }
        (None, None) => {
            return Err(Error::invalid(format!(
                "input '{name}': has neither 'data' nor parameters.binary_data_size"
            )))
        }
        (Some(size), None) => {
            if !has_binary_part {
                return Err(Error::invalid(format!(
                    "input '{name}': parameters.binary_data_size is set but the request has no \
                     inference-header-content-length header"
                )));
            }
            let remain = body.len() - *offset;
            let size = usize::try_from(size)
                .ok()
                .filter(|&s| s <= remain)
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "input '{name}': binary_data_size {size} runs past the end of the body \
                     ({remain} bytes remain)"
                    ))
                })?;
            let data = body.slice(*offset..*offset + size);
            *offset += size;
            (data, "binary_data_size")
        }
        (None, Some(raw)) => {
            let (data, got) = parse_data(raw, &name, dtype, expected)?;
            if got != expected {
                return Err(count_mismatch(&name, &shape, expected, got));
            }
            (Bytes::from(data), "data")
        }
    };
    Ok((
        Tensor {
            name,
            dtype,
            shape,
            data,
        },
        Source::Body(what),
    ))
}

/// The shared-memory parameters of the input or output `what`, if it has them.
fn shm_param(params: &Map<String, Value>, what: &str) -> Result<Option<ShmRef>> {
    let named = |e: Error| Error::invalid(format!("{what}: {}", e.message));
    ShmRef::from_params(
        what,
        |key| match params.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(named(Error::invalid(format!(
                "parameters.{key}: expected a string, got {v}"
            )))),
        },
        |key| uint_param(params, key).map_err(named),
    )
}

/// Reads the unsigned integer parameter `key`; errors name it.
fn uint_param(params: &Map<String, Value>, key: &str) -> Result<Option<u64>> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            Error::invalid(format!(
                "parameters.{key}: expected an unsigned integer, got {v}"
            ))
        }),
    }
}

/// The request-level parameters as text: strings as they are, numbers and booleans in their
/// JSON spelling; `null` dropped. Objects and arrays are refused, naming the parameter.
fn text_params(params: &Map<String, Value>) -> Result<std::collections::BTreeMap<String, String>> {
    let mut out = std::collections::BTreeMap::new();
    for (k, v) in params {
        let text = match v {
            Value::Null => continue,
            Value::String(s) => s.clone(),
            Value::Bool(_) | Value::Number(_) => v.to_string(),
            Value::Array(_) | Value::Object(_) => {
                return Err(Error::invalid(format!(
                    "parameters.{k}: expected a string, number or boolean"
                )))
            }
        };
        out.insert(k.clone(), text);
    }
    Ok(out)
}

/// Reads the boolean parameter `key`; errors name it.
fn bool_param(params: &Map<String, Value>, key: &str) -> Result<Option<bool>> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_bool().map(Some).ok_or_else(|| {
            Error::invalid(format!("parameters.{key}: expected true or false, got {v}"))
        }),
    }
}
