//! Conversions between Kiln tensors (little-endian bytes) and OpenVINO tensors.
//!
//! Numeric inputs are copied once into a tensor OpenVINO allocates; outputs are copied once out
//! of the request's buffers. `BYTES` (OpenVINO's string tensors) are not served: models with
//! string inputs or outputs are refused at load (see the crate documentation).

use kiln_core::{DataType, Error, Result, Tensor};
use openvino::{ElementType, Shape, Tensor as OvTensor};

#[cfg(not(target_endian = "little"))]
compile_error!("the openvino backend assumes a little-endian target");

/// The Kiln data type of an OpenVINO element type, if the protocol has one.
pub fn kiln_dtype(t: ElementType) -> Option<DataType> {
    Some(match t {
        ElementType::Boolean => DataType::Bool,
        ElementType::U8 => DataType::Uint8,
        ElementType::U16 => DataType::Uint16,
        ElementType::U32 => DataType::Uint32,
        ElementType::U64 => DataType::Uint64,
        ElementType::I8 => DataType::Int8,
        ElementType::I16 => DataType::Int16,
        ElementType::I32 => DataType::Int32,
        ElementType::I64 => DataType::Int64,
        ElementType::F16 => DataType::Fp16,
        ElementType::F32 => DataType::Fp32,
        ElementType::F64 => DataType::Fp64,
        ElementType::String => DataType::Bytes,
        _ => return None,
    })
}

/// The OpenVINO element type of a Kiln data type.
pub fn ov_type(t: DataType) -> ElementType {
    match t {
        DataType::Bool => ElementType::Boolean,
        DataType::Uint8 => ElementType::U8,
        DataType::Uint16 => ElementType::U16,
        DataType::Uint32 => ElementType::U32,
        DataType::Uint64 => ElementType::U64,
        DataType::Int8 => ElementType::I8,
        DataType::Int16 => ElementType::I16,
        DataType::Int32 => ElementType::I32,
        DataType::Int64 => ElementType::I64,
        DataType::Fp16 => ElementType::F16,
        DataType::Fp32 => ElementType::F32,
        DataType::Fp64 => ElementType::F64,
        DataType::Bytes => ElementType::String,
    }
}

fn ov_err<'a>(what: &'a str, name: &'a str) -> impl Fn(openvino::InferenceError) -> Error + 'a {
    move |e| Error::internal(format!("{what} '{name}': {e}"))
}

/// Copies a Kiln input tensor (already validated against the model) into an OpenVINO tensor.
pub fn to_ov(t: &Tensor) -> Result<OvTensor> {
    let name = t.name.as_str();
    let shape = Shape::new(&t.shape).map_err(ov_err("input", name))?;
    if t.dtype == DataType::Bytes {
        return Err(Error::invalid(format!(
            "input '{name}': the openvino backend does not take BYTES tensors"
        )));
    }
    let mut tensor = OvTensor::new(ov_type(t.dtype), &shape).map_err(ov_err("input", name))?;
    let dst = tensor.get_raw_data_mut().map_err(ov_err("input", name))?;
    if dst.len() != t.data.len() {
        return Err(Error::invalid(format!(
            "input '{name}': {} bytes for shape {:?}, expected {}",
            t.data.len(),
            t.shape,
            dst.len()
        )));
    }
    if t.dtype == DataType::Bool {
        // any non-zero byte is true; OpenVINO's kernels expect 0 or 1
        for (d, &s) in dst.iter_mut().zip(t.data.iter()) {
            *d = u8::from(s != 0);
        }
    } else {
        dst.copy_from_slice(&t.data);
    }
    Ok(tensor)
}

/// Copies an OpenVINO output into a Kiln tensor named `name`; `scalar` when the model declares
/// it of rank 0 (the C API cannot report a shape of rank 0).
pub fn from_ov(name: &str, v: &OvTensor, scalar: bool) -> Result<Tensor> {
    let internal = |e: openvino::InferenceError| Error::internal(format!("output '{name}': {e}"));
    let ty = v.get_element_type().map_err(internal)?;
    let dtype = kiln_dtype(ty)
        .ok_or_else(|| Error::internal(format!("output '{name}' has unsupported type {ty:?}")))?;
    let shape = match scalar {
        true => Vec::new(),
        false => v.get_shape().map_err(internal)?.get_dimensions().to_vec(),
    };
    if dtype == DataType::Bytes {
        return Err(Error::internal(format!(
            "output '{name}': the openvino backend does not read BYTES tensors"
        )));
    }
    let data = v.get_raw_data().map_err(internal)?.to_vec();
    Ok(Tensor {
        name: name.to_string(),
        dtype,
        shape,
        data: data.into(),
    })
}

/// Refuses 64-bit integer input values outside the 32-bit range: OpenVINO's CPU plugin computes
/// 64-bit integers in 32 bits, so such a value would silently give a wrong answer.
pub fn check_int64_range(t: &Tensor) -> Result<()> {
    let bad = match t.dtype {
        DataType::Int64 => t
            .data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap_or_default()))
            .enumerate()
            .find(|(_, v)| i32::try_from(*v).is_err())
            .map(|(i, v)| (i, v.to_string())),
        DataType::Uint64 => t
            .data
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
            .enumerate()
            .find(|(_, v)| i32::try_from(*v).is_err())
            .map(|(i, v)| (i, v.to_string())),
        _ => None,
    };
    match bad {
        None => Ok(()),
        Some((i, v)) => Err(Error::invalid(format!(
            "input '{}': element {i} is {v}, outside the 32-bit range in which OpenVINO computes \
             64-bit integers; serve this model with backend = \"onnxruntime\" or \"tract\" for \
             64-bit values",
            t.name
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int64_values_beyond_32_bits_are_refused() {
        let ok = Tensor::from_vec("ids", vec![3], &[0i64, i32::MAX as i64, i32::MIN as i64]);
        assert!(check_int64_range(&ok).is_ok());
        let wide = Tensor::from_vec("ids", vec![2], &[1i64, 1 << 40]);
        let e = check_int64_range(&wide).unwrap_err();
        assert!(
            e.message.contains("'ids'") && e.message.contains("1099511627776"),
            "{e}"
        );
        let u = Tensor::from_vec("u", vec![1], &[u64::MAX]);
        assert!(check_int64_range(&u).is_err());
        let f = Tensor::from_vec("f", vec![1], &[1e30f64]);
        assert!(check_int64_range(&f).is_ok());
    }
}
