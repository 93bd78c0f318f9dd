//! Triton's raw binary request: with `Inference-Header-Content-Length: 0` the whole body is the
//! raw bytes of the model's one input, whose name, type and shape come from the model's
//! configuration. When the model batches, the batch size is the number of whole rows the bytes
//! hold. Every output goes back as binary data, as Triton answers such a request.

use crate::request::WireRequest;
use bytes::Bytes;
use kiln_core::{DataType, Error, Result, Tensor, TensorSpec};

/// Decodes a raw binary request body for a model whose inputs are `inputs` and whose
/// `max_batch_size` is `max_batch_size` (0: the model does not batch). Errors are
/// [`kiln_core::ErrorCode::InvalidArgument`] and name the model's input.
pub fn decode_raw_request(
    body: Bytes,
    inputs: &[TensorSpec],
    max_batch_size: u32,
) -> Result<WireRequest> {
    let spec = match inputs {
        [one] => one,
        _ => {
            return Err(Error::invalid(format!(
                "raw binary request (inference-header-content-length 0): the model must have \
                 exactly one input to take the body as its data, it has {}",
                inputs.len()
            )))
        }
    };
    let name = &spec.name;
    let batched = max_batch_size > 0;
    let (shape, data) = if spec.data_type == DataType::Bytes {
        // the body is one element
        let mut shape: Vec<i64> = spec
            .dims
            .iter()
            .map(|&d| if d < 0 { 1 } else { d })
            .collect();
        if shape.iter().product::<i64>() != 1 {
            return Err(Error::invalid(format!(
                "raw binary request: input '{name}' is BYTES with dims {:?}; a raw body is one \
                 element, so the input must hold exactly one",
                spec.dims
            )));
        }
        if batched {
            shape.insert(0, 1);
        }
        let len = u32::try_from(body.len()).map_err(|_| {
            Error::invalid(format!(
                "raw binary request: input '{name}': an element holds at most 4 GiB"
            ))
        })?;
        let mut data = Vec::with_capacity(4 + body.len());
        data.extend_from_slice(&len.to_le_bytes());
        data.extend_from_slice(&body);
        (shape, Bytes::from(data))
    } else {
        let width = spec.data_type.size().unwrap_or(1);
        if !body.len().is_multiple_of(width) {
            return Err(Error::invalid(format!(
                "raw binary request: input '{name}': {} bytes is not a whole number of {} \
                 elements ({width} bytes each)",
                body.len(),
                spec.data_type
            )));
        }
        let elements = body.len() / width;
        (fixed_shape(spec, elements, batched)?, body)
    };
    let mut out = WireRequest::with_capacity(1, 0);
    out.binary_data_output = true;
    out.request.push_input(
        Tensor {
            name: name.clone(),
            dtype: spec.data_type,
            shape,
            data,
        },
        "raw binary request body",
    )?;
    Ok(out)
}

/// The shape of `elements` elements of `spec`: its dims, a batch dimension first when the
/// model batches (as many rows as the elements make), and one variable dim (if any) taking
/// what is left.
fn fixed_shape(spec: &TensorSpec, elements: usize, batched: bool) -> Result<Vec<i64>> {
    let name = &spec.name;
    let variable = spec.dims.iter().filter(|&&d| d < 0).count();
    let known: usize = spec
        .dims
        .iter()
        .filter(|&&d| d >= 0)
        .map(|&d| d as usize)
        .product();
    let unknown_ok = !batched && variable == 1;
    if (variable > 0 && !unknown_ok) || (known == 0 && elements > 0) {
        return Err(Error::invalid(format!(
            "raw binary request: input '{name}' has dims {:?}, which a raw body cannot fill \
             (its shape must follow from the byte count); send a JSON request instead",
            spec.dims
        )));
    }
    let fill = |dims: &[i64], free: i64| -> Vec<i64> {
        dims.iter().map(|&d| if d < 0 { free } else { d }).collect()
    };
    let mismatch = || {
        Error::invalid(format!(
            "raw binary request: input '{name}': {elements} elements do not fill dims {:?}{}",
            spec.dims,
            if batched { " in whole rows" } else { "" }
        ))
    };
    if !elements.is_multiple_of(known.max(1)) {
        return Err(mismatch());
    }
    let rest = (elements / known.max(1)) as i64;
    if batched {
        let mut shape = vec![rest];
        shape.extend_from_slice(&spec.dims);
        return Ok(shape);
    }
    if variable == 1 {
        return Ok(fill(&spec.dims, rest));
    }
    if rest != 1 {
        return Err(mismatch());
    }
    Ok(spec.dims.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dtype: DataType, dims: &[i64]) -> TensorSpec {
        TensorSpec {
            name: "x".into(),
            data_type: dtype,
            dims: dims.to_vec(),
            allow_ragged_batch: false,
        }
    }

    #[test]
    fn batched_rows_follow_from_the_byte_count() {
        let body = Bytes::from(vec![0u8; 3 * 4 * 4]);
        let r = decode_raw_request(body, &[spec(DataType::Fp32, &[4])], 8).unwrap();
        assert_eq!(r.request.inputs()[0].shape, vec![3, 4]);
        assert!(r.binary_data_output);
        let e = decode_raw_request(Bytes::from(vec![0u8; 20]), &[spec(DataType::Fp32, &[4])], 8)
            .unwrap_err();
        assert!(e.message.contains("input 'x'"), "{}", e.message);
    }

    #[test]
    fn unbatched_shapes_and_refusals() {
        let r = decode_raw_request(
            Bytes::from(vec![0u8; 6 * 8]),
            &[spec(DataType::Int64, &[2, -1])],
            0,
        )
        .unwrap();
        assert_eq!(r.request.inputs()[0].shape, vec![2, 3]);
        for (dims, len) in [(&[2, 3][..], 5 * 8), (&[-1, -1][..], 8)] {
            let e = decode_raw_request(
                Bytes::from(vec![0u8; len]),
                &[spec(DataType::Int64, dims)],
                0,
            )
            .unwrap_err();
            assert!(e.message.contains("input 'x'"), "{}", e.message);
        }
        let e = decode_raw_request(Bytes::from(vec![0u8; 7]), &[spec(DataType::Int64, &[1])], 0)
            .unwrap_err();
        assert!(e.message.contains("whole number"), "{}", e.message);
    }

    #[test]
    fn bytes_input_takes_the_body_as_one_element() {
        let body = Bytes::from_static(b"a\0\xffb");
        let r = decode_raw_request(body, &[spec(DataType::Bytes, &[1])], 4).unwrap();
        let t = &r.request.inputs()[0];
        assert_eq!(t.shape, vec![1, 1]);
        assert_eq!(t.byte_elements().unwrap(), vec![&b"a\0\xffb"[..]]);
    }

    #[test]
    fn models_with_several_inputs_are_refused() {
        let two = [spec(DataType::Fp32, &[1]), spec(DataType::Fp32, &[1])];
        let e = decode_raw_request(Bytes::new(), &two, 0).unwrap_err();
        assert!(e.message.contains("exactly one input"), "{}", e.message);
    }
}
