//! Conversions between the gRPC messages of [`crate::inference`] and Kiln's types.

use crate::inference::model_infer_request::InferInputTensor;
use crate::inference::model_infer_response::InferOutputTensor;
use crate::inference::{self as pb, infer_parameter::ParameterChoice};
use crate::request::{
    count_mismatch, input_elements, parse_dtype, Delivery, RequestedOutput, WireRequest,
};
use crate::shm::ShmRef;
use bytes::Bytes;
use kiln_core::tensor::Element;
use kiln_core::{DataType, Error, Result, Tensor};
use std::collections::HashMap;
use std::fmt::Display;

pub(crate) mod json;
#[cfg(test)]
mod tests;

/// Converts a gRPC `ModelInferRequest` into a [`WireRequest`].
///
/// Input data come either from `raw_input_contents` (one entry per input, in input order; the
/// tensors share those buffers without copying) or from each input's typed `contents`
/// (`fp32_contents`, `int64_contents`, `bytes_contents`, ...; FP16 only raw). Mixing the two
/// forms is an error, as in Triton. The `priority` and `timeout` parameters are read from
/// `int64_param` or `uint64_param`.
pub fn request_from_grpc(req: pb::ModelInferRequest) -> Result<WireRequest> {
    // Inputs in shared memory have no entry in raw_input_contents (as tritonclient sends them).
    let model = req.model_name.clone();
    let mut shm = Vec::with_capacity(req.inputs.len());
    for input in &req.inputs {
        shm.push(shm_param(
            &input.parameters,
            &format!("input '{}'", input.name),
        )?);
    }
    let in_body = shm.iter().filter(|s| s.is_none()).count();
    let use_raw = !req.raw_input_contents.is_empty();
    if use_raw && req.raw_input_contents.len() != in_body {
        return Err(Error::invalid(format!(
            "raw_input_contents has {} entries for {in_body} inputs{}",
            req.raw_input_contents.len(),
            if in_body == req.inputs.len() {
                String::new()
            } else {
                format!(" not in shared memory (of {})", req.inputs.len())
            }
        )));
    }
    let mut out = WireRequest::with_capacity(req.inputs.len(), req.outputs.len());
    let mut raw = req.raw_input_contents.into_iter();
    for (input, shm) in req.inputs.into_iter().zip(shm) {
        if out.request.inputs().iter().any(|x| x.name == input.name) {
            return Err(Error::invalid(format!(
                "input '{}' appears twice",
                input.name
            )));
        }
        match shm {
            Some(r) => {
                if input.contents.as_ref().is_some_and(has_contents) {
                    return Err(Error::invalid(format!(
                        "input '{}': has parameters.shared_memory_region and also contents; \
                         send it one way",
                        input.name
                    )));
                }
                let i = out.request.push_unfilled(Tensor {
                    dtype: parse_dtype(&input.datatype, &input.name)?,
                    name: input.name,
                    shape: input.shape,
                    data: Bytes::new(),
                });
                out.shm_inputs.push((i, r));
            }
            None => {
                let (t, what) =
                    decode_input(input, &model, if use_raw { raw.next() } else { None })?;
                // the one length check of the input's data
                out.request.push_input(t, what)?;
            }
        }
    }

    for o in req.outputs {
        let classification = uint_param(&o.parameters, "classification")
            .map_err(|e| Error::invalid(format!("output '{}': {}", o.name, e.message)))?
            .filter(|&n| n != 0)
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX));
        if out.outputs.iter().any(|r| r.name == o.name) {
            return Err(Error::invalid(format!(
                "output '{}' is requested twice",
                o.name
            )));
        }
        let shared_memory = shm_param(&o.parameters, &format!("output '{}'", o.name))?;
        out.outputs.push(RequestedOutput {
            name: o.name,
            binary_data: None,
            shared_memory,
            classification,
        });
    }
    out.request.id = Some(req.id).filter(|s| !s.is_empty());
    out.request.parameters = req
        .parameters
        .iter()
        .filter_map(|(k, p)| {
            let text = match p.parameter_choice.as_ref()? {
                ParameterChoice::BoolParam(v) => v.to_string(),
                ParameterChoice::Int64Param(v) => v.to_string(),
                ParameterChoice::Uint64Param(v) => v.to_string(),
                ParameterChoice::DoubleParam(v) => v.to_string(),
                ParameterChoice::StringParam(v) => v.clone(),
            };
            Some((k.clone(), text))
        })
        .collect();
    out.request.priority = uint_param(&req.parameters, "priority")?.filter(|&p| p != 0);
    out.request.timeout = uint_param(&req.parameters, "timeout")?
        .filter(|&t| t != 0)
        .map(std::time::Duration::from_micros);
    Ok(out)
}

/// Builds a gRPC `ModelInferResponse` carrying the outputs in `raw_output_contents`, as
/// Triton answers. The output buffers are shared, not copied. An output already written to
/// shared memory has an empty raw entry, so that raw entries and outputs stay in step (as
/// Triton keeps them).
pub fn response_to_grpc(
    model_name: &str,
    model_version: &str,
    id: Option<&str>,
    outputs: &[(Tensor, Delivery)],
) -> pb::ModelInferResponse {
    pb::ModelInferResponse {
        model_name: model_name.to_string(),
        model_version: model_version.to_string(),
        id: id.unwrap_or_default().to_string(),
        parameters: HashMap::new(),
        outputs: outputs
            .iter()
            .map(|(t, _)| InferOutputTensor {
                name: t.name.clone(),
                datatype: t.dtype.as_str().to_string(),
                shape: t.shape.clone(),
                parameters: HashMap::new(),
                contents: None,
            })
            .collect(),
        raw_output_contents: outputs
            .iter()
            .map(|(t, d)| match d {
                Delivery::SharedMemory(_) => Bytes::new(),
                _ => t.data.clone(),
            })
            .collect(),
    }
}

/// Decodes one input from its raw bytes (`raw`) or its typed contents; returns it with the
/// name of the field its data came from, for the length check when it enters the request.
fn decode_input(
    input: InferInputTensor,
    model: &str,
    raw: Option<Bytes>,
) -> Result<(Tensor, &'static str)> {
    let InferInputTensor {
        name,
        datatype,
        shape,
        contents,
        ..
    } = input;
    let dtype = parse_dtype(&datatype, &name)?;
    let expected = input_elements(&shape, &name)?;
    let (data, what) = match raw {
        Some(data) => {
            if contents.as_ref().is_some_and(has_contents) {
                return Err(Error::invalid(kiln_core::texts::contents_with_raw(
                    &name, model,
                )));
            }
            (data, "raw_input_contents")
        }
        None => {
            let c = contents.unwrap_or_default();
            let (data, got, field) = typed_data(&c, dtype, &name)?;
            if got != expected {
                let e = count_mismatch(&name, &shape, expected, got);
                return Err(Error::invalid(format!("{} in contents.{field}", e.message)));
            }
            (Bytes::from(data), "contents")
        }
    };
    Ok((
        Tensor {
            name,
            dtype,
            shape,
            data,
        },
        what,
    ))
}

/// True if any typed field of `c` holds data.
fn has_contents(c: &pb::InferTensorContents) -> bool {
    !(c.bool_contents.is_empty()
        && c.int_contents.is_empty()
        && c.int64_contents.is_empty()
        && c.uint_contents.is_empty()
        && c.uint64_contents.is_empty()
        && c.fp32_contents.is_empty()
        && c.fp64_contents.is_empty()
        && c.bytes_contents.is_empty())
}

/// Little-endian bytes, element count and source field name of typed contents for `dtype`.
fn typed_data(
    c: &pb::InferTensorContents,
    dtype: DataType,
    name: &str,
) -> Result<(Vec<u8>, usize, &'static str)> {
    Ok(match dtype {
        DataType::Bool => {
            let v: Vec<u8> = c.bool_contents.iter().map(|&b| b as u8).collect();
            (v, c.bool_contents.len(), "bool_contents")
        }
        DataType::Uint8 => (
            narrow::<u32, u8>(&c.uint_contents, name)?,
            c.uint_contents.len(),
            "uint_contents",
        ),
        DataType::Uint16 => (
            narrow::<u32, u16>(&c.uint_contents, name)?,
            c.uint_contents.len(),
            "uint_contents",
        ),
        DataType::Uint32 => (
            narrow::<u32, u32>(&c.uint_contents, name)?,
            c.uint_contents.len(),
            "uint_contents",
        ),
        DataType::Uint64 => (
            le(&c.uint64_contents),
            c.uint64_contents.len(),
            "uint64_contents",
        ),
        DataType::Int8 => (
            narrow::<i32, i8>(&c.int_contents, name)?,
            c.int_contents.len(),
            "int_contents",
        ),
        DataType::Int16 => (
            narrow::<i32, i16>(&c.int_contents, name)?,
            c.int_contents.len(),
            "int_contents",
        ),
        DataType::Int32 => (
            narrow::<i32, i32>(&c.int_contents, name)?,
            c.int_contents.len(),
            "int_contents",
        ),
        DataType::Int64 => (
            le(&c.int64_contents),
            c.int64_contents.len(),
            "int64_contents",
        ),
        DataType::Fp32 => (le(&c.fp32_contents), c.fp32_contents.len(), "fp32_contents"),
        DataType::Fp64 => (le(&c.fp64_contents), c.fp64_contents.len(), "fp64_contents"),
        DataType::Fp16 => {
            return Err(Error::invalid(format!(
                "input '{name}': FP16 data must be sent in raw_input_contents"
            )))
        }
        DataType::Bytes => {
            let total: usize = c.bytes_contents.iter().map(|b| 4 + b.len()).sum();
            let mut v = Vec::with_capacity(total);
            for b in &c.bytes_contents {
                let len = u32::try_from(b.len()).map_err(|_| {
                    Error::invalid(format!(
                        "input '{name}': an element of {} bytes is too long",
                        b.len()
                    ))
                })?;
                v.extend_from_slice(&len.to_le_bytes());
                v.extend_from_slice(b);
            }
            (v, c.bytes_contents.len(), "bytes_contents")
        }
    })
}

/// Little-endian bytes of `values`.
fn le<T: Element>(values: &[T]) -> Vec<u8> {
    let mut out = Vec::with_capacity(std::mem::size_of_val(values));
    for &v in values {
        v.put_le(&mut out);
    }
    out
}

/// Little-endian bytes of `values` narrowed to `T`; a value out of `T`'s range is an error.
fn narrow<S, T>(values: &[S], name: &str) -> Result<Vec<u8>>
where
    S: Copy + Display,
    T: Element + TryFrom<S>,
{
    let mut out = Vec::with_capacity(values.len() * std::mem::size_of::<T>());
    for &v in values {
        let x = T::try_from(v).map_err(|_| {
            Error::invalid(format!(
                "input '{name}': value {v} is out of range for {}",
                T::DTYPE
            ))
        })?;
        x.put_le(&mut out);
    }
    Ok(out)
}

/// Reads the unsigned integer parameter `key` from `int64_param` (non-negative) or
/// `uint64_param`; errors name it.
/// The shared-memory parameters of the input or output `what`, if it has them.
fn shm_param(params: &HashMap<String, pb::InferParameter>, what: &str) -> Result<Option<ShmRef>> {
    let named = |e: Error| Error::invalid(format!("{what}: {}", e.message));
    ShmRef::from_params(
        what,
        |key| match params.get(key).and_then(|p| p.parameter_choice.as_ref()) {
            None => Ok(None),
            Some(ParameterChoice::StringParam(s)) => Ok(Some(s.clone())),
            Some(_) => Err(named(Error::invalid(format!(
                "parameters.{key}: expected a string_param"
            )))),
        },
        |key| uint_param(params, key).map_err(named),
    )
}

fn uint_param(params: &HashMap<String, pb::InferParameter>, key: &str) -> Result<Option<u64>> {
    let Some(p) = params.get(key) else {
        return Ok(None);
    };
    match &p.parameter_choice {
        Some(ParameterChoice::Uint64Param(v)) => Ok(Some(*v)),
        Some(ParameterChoice::Int64Param(v)) if *v >= 0 => Ok(Some(*v as u64)),
        None => Ok(None),
        Some(other) => {
            let got = match other {
                ParameterChoice::BoolParam(v) => format!("bool_param {v}"),
                ParameterChoice::Int64Param(v) => format!("int64_param {v}"),
                ParameterChoice::StringParam(v) => format!("string_param {v:?}"),
                ParameterChoice::DoubleParam(v) => format!("double_param {v}"),
                ParameterChoice::Uint64Param(v) => format!("uint64_param {v}"),
            };
            Err(Error::invalid(format!(
                "parameters.{key}: expected a non-negative int64_param or uint64_param, got {got}"
            )))
        }
    }
}
