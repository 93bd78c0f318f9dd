//! Conversions between Kiln tensors (little-endian bytes) and tract tensors.

use kiln_core::{DataType, Error, Result, Tensor};
use tract_onnx::prelude::*;

/// The tract type of a Kiln data type.
pub fn tract_dtype(d: DataType) -> DatumType {
    match d {
        DataType::Bool => DatumType::Bool,
        DataType::Uint8 => DatumType::U8,
        DataType::Uint16 => DatumType::U16,
        DataType::Uint32 => DatumType::U32,
        DataType::Uint64 => DatumType::U64,
        DataType::Int8 => DatumType::I8,
        DataType::Int16 => DatumType::I16,
        DataType::Int32 => DatumType::I32,
        DataType::Int64 => DatumType::I64,
        DataType::Fp16 => DatumType::F16,
        DataType::Fp32 => DatumType::F32,
        DataType::Fp64 => DatumType::F64,
        DataType::Bytes => DatumType::String,
    }
}

/// The Kiln data type of a tract type, if the protocol has one.
pub fn kiln_dtype(d: DatumType) -> Option<DataType> {
    Some(match d {
        DatumType::Bool => DataType::Bool,
        DatumType::U8 => DataType::Uint8,
        DatumType::U16 => DataType::Uint16,
        DatumType::U32 => DataType::Uint32,
        DatumType::U64 => DataType::Uint64,
        DatumType::I8 => DataType::Int8,
        DatumType::I16 => DataType::Int16,
        DatumType::I32 => DataType::Int32,
        DatumType::I64 => DataType::Int64,
        DatumType::F16 => DataType::Fp16,
        DatumType::F32 => DataType::Fp32,
        DatumType::F64 => DataType::Fp64,
        DatumType::String => DataType::Bytes,
        _ => return None,
    })
}

/// Copies a Kiln tensor into a tract tensor.
pub fn to_tract(t: &Tensor) -> Result<tract_onnx::prelude::Tensor> {
    let shape: Vec<usize> = t.shape.iter().map(|&d| d.max(0) as usize).collect();
    let err = |e: TractError| Error::invalid(format!("input '{}': {e:#}", t.name));
    if t.dtype == DataType::Bytes {
        // tract holds string tensors as Rust `String`s: bytes that are not UTF-8 cannot reach
        // the model unchanged, so they are refused rather than replaced
        let strings: Vec<String> = t
            .byte_elements()?
            .into_iter()
            .enumerate()
            .map(|(i, b)| {
                String::from_utf8(b.to_vec()).map_err(|e| {
                    Error::invalid(format!(
                        "input '{}': element {i} is not valid UTF-8 (at byte {}); the tract \
                         backend holds BYTES elements as text, serve the model with \
                         onnxruntime for arbitrary bytes",
                        t.name,
                        e.utf8_error().valid_up_to()
                    ))
                })
            })
            .collect::<Result<_>>()?;
        let arr = tract_ndarray::ArrayD::from_shape_vec(shape, strings)
            .map_err(|e| Error::invalid(format!("input '{}': {e}", t.name)))?;
        return Ok(arr.into_tensor());
    }
    // SAFETY: every Kiln fixed-size dtype maps to a plain tract datum of the same width and
    // little-endian layout, and from_raw_dt checks the length against the shape.
    unsafe { tract_onnx::prelude::Tensor::from_raw_dt(tract_dtype(t.dtype), &shape, &t.data) }
        .map_err(err)
}

/// Copies a tract output into a Kiln tensor named `name`.
pub fn from_tract(name: &str, t: &tract_onnx::prelude::Tensor) -> Result<Tensor> {
    let dtype = kiln_dtype(t.datum_type()).ok_or_else(|| {
        Error::internal(format!(
            "output '{name}' has unsupported type {:?}",
            t.datum_type()
        ))
    })?;
    let shape: Vec<i64> = t.shape().iter().map(|&d| d as i64).collect();
    let data = if dtype == DataType::Bytes {
        let view = t
            .to_plain_array_view::<String>()
            .map_err(|e| Error::internal(format!("output '{name}': {e:#}")))?;
        let mut out = Vec::new();
        for s in view.iter() {
            out.extend_from_slice(&(s.len() as u32).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        out
    } else {
        t.as_bytes().to_vec()
    };
    Ok(Tensor {
        name: name.to_string(),
        dtype,
        shape,
        data: data.into(),
    })
}
