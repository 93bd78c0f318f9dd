//! Request validation before anything is queued: names, types and shapes against the
//! model, inputs put in model order, and non-finite floats refused where the model asks.

use super::ServedVersion;
use kiln_core::backend::check_input_shape;
use kiln_core::DataType;
use kiln_core::{texts, Error, Result, Tensor};

impl ServedVersion {
    /// Checks names, types and shapes against the model and puts inputs in model order.
    /// Returns the inputs and the request's rows (1 when the model does not batch). The data
    /// lengths are not checked again: [`InferRequest`] checked them.
    pub(super) fn validate(&self, mut given: Vec<Tensor>) -> Result<(Vec<Tensor>, usize)> {
        let io = self.io();
        let max_batch = self.config.max_batch_size as usize;
        let mut ordered = Vec::with_capacity(io.inputs.len());
        let mut rows: Option<usize> = None;
        for spec in &io.inputs {
            let pos = given
                .iter()
                .position(|t| t.name == spec.name)
                .ok_or_else(|| {
                    let mut named: Vec<&str> = ordered
                        .iter()
                        .chain(&given)
                        .map(|t: &Tensor| t.name.as_str())
                        .collect();
                    named.sort_unstable();
                    let missing: Vec<&str> = io
                        .inputs
                        .iter()
                        .map(|s| s.name.as_str())
                        .filter(|n| !named.contains(n))
                        .collect();
                    let n = io.inputs.len();
                    Error::invalid(texts::input_count(&self.name, n, n, &named, &missing))
                })?;
            let t = given.swap_remove(pos);
            if t.dtype != spec.data_type {
                return Err(Error::invalid(texts::input_datatype(
                    &t.name,
                    &self.name,
                    t.dtype.as_str(),
                    spec.data_type.as_str(),
                )));
            }
            if max_batch > 0 && spec.allow_ragged_batch {
                // ragged: a 1-D tensor of any length; the batch size comes from the other inputs
                if t.shape.len() != 1 {
                    return Err(Error::invalid(format!(
                        "input '{}': ragged input must be 1-D, got shape {:?}",
                        t.name, t.shape
                    )));
                }
            } else if max_batch > 0 {
                let r = match t.shape.first() {
                    Some(&r) if r >= 1 => r as usize,
                    _ => {
                        return Err(Error::invalid(format!(
                            "input '{}': shape {:?} needs a batch dimension of at least 1",
                            t.name, t.shape
                        )))
                    }
                };
                if r > max_batch {
                    return Err(Error::invalid(format!(
                        "input '{}': batch size {r} exceeds max_batch_size {max_batch} of model '{}'",
                        t.name, self.name
                    )));
                }
                if let Some(prev) = rows {
                    if prev != r {
                        return Err(Error::invalid(format!(
                            "input '{}': batch size {r} differs from the other inputs' {prev}",
                            t.name
                        )));
                    }
                }
                rows = Some(r);
            }
            // the spec's dims are the engine's (derived from the graph where the file leaves
            // a dim free), so a request the graph cannot compute is refused here
            check_input_shape(spec, &t.shape, max_batch > 0).map_err(|_| {
                let batched = max_batch > 0;
                Error::invalid(texts::input_shape(
                    &t.name,
                    &self.name,
                    &spec.client_shape(batched),
                    &t.shape,
                    batched,
                ))
            })?;
            if self.config.reject_non_finite_inputs {
                check_finite(&t, &self.name)?;
            }
            ordered.push(t);
        }
        if let Some(extra) = given.first() {
            let dup = ordered.iter().any(|t| t.name == extra.name);
            return Err(Error::invalid(if dup {
                format!("input '{}' is given more than once", extra.name)
            } else {
                format!(
                    "input '{}' is not an input of model '{}'",
                    extra.name, self.name
                )
            }));
        }
        if max_batch > 0 && rows.is_none() && !ordered.is_empty() {
            return Err(Error::invalid(format!(
                "model '{}': every input is ragged, so no input gives the batch size",
                self.name
            )));
        }
        Ok((ordered, rows.unwrap_or(1)))
    }
}

/// Refuses a floating-point input holding NaN or an infinity (`reject_non_finite_inputs`),
/// naming the input, the first such element's flat index and its value.
fn check_finite(t: &Tensor, model: &str) -> Result<()> {
    // (element width, exponent mask, mantissa mask, sign bit) of the IEEE 754 encodings
    let (width, exp, man, sign): (usize, u64, u64, u64) = match t.dtype {
        DataType::Fp16 => (2, 0x7c00, 0x03ff, 0x8000),
        DataType::Fp32 => (4, 0x7f80_0000, 0x007f_ffff, 0x8000_0000),
        DataType::Fp64 => (8, 0x7ff0 << 48, (1 << 52) - 1, 1 << 63),
        _ => return Ok(()),
    };
    let bad = t.data.chunks_exact(width).enumerate().find_map(|(i, b)| {
        let mut le = [0u8; 8];
        le[..width].copy_from_slice(b);
        let bits = u64::from_le_bytes(le);
        (bits & exp == exp).then_some((i, bits))
    });
    match bad {
        None => Ok(()),
        Some((i, bits)) => {
            let what = if bits & man != 0 {
                "NaN"
            } else if bits & sign != 0 {
                "-Infinity"
            } else {
                "Infinity"
            };
            Err(Error::invalid(format!(
                "input '{}': element {i} is {what}, and model '{model}' refuses non-finite \
                 inputs (reject_non_finite_inputs)",
                t.name
            )))
        }
    }
}
