//! The built-in tensor operations of pipelines (`topk`, `gather`, `repeat`, `concat`, `slice`,
//! `reshape`): pure functions on [`Tensor`]s, and their load-time shape inference
//! ([`topk_shape`] and the other `_shape` functions, where -1 is a dimension not known before
//! run time).
//!
//! The operations move raw little-endian elements by their width, so they take any fixed-width
//! dtype; `BYTES` tensors (elements of varying length) are refused, except by [`reshape`],
//! which only renames the shape. `slice` and `reshape` share the input's buffer where the
//! result is contiguous in it. Output tensors carry an empty name: the executor names them.
//!
//! Errors are `InvalidArgument` and name the op's port (`indices: element 3 is 1200, outside
//! 0..1000`): the data are the caller's.

use bytes::{Bytes, BytesMut};
use kiln_core::{DataType, Error, Result, Tensor};
use std::cmp::Reverse;
use std::collections::BinaryHeap;

mod shape;
#[cfg(test)]
mod tests;

pub use shape::{concat_shape, gather_shape, repeat_shape, reshape_shape, slice_shape, topk_shape};

/// The element width of `t`, checking its data length against its shape; `BYTES` is refused.
fn width(t: &Tensor, port: &str) -> Result<usize> {
    let Some(w) = t.dtype.size() else {
        return Err(Error::invalid(format!(
            "{port}: BYTES tensors are not supported by this operation"
        )));
    };
    let n = kiln_core::tensor::element_count(&t.shape, port)?;
    if t.data.len() != n * w {
        return Err(Error::invalid(format!(
            "{port}: {} bytes of data for shape {:?} of {}; {} expected",
            t.data.len(),
            t.shape,
            t.dtype,
            n * w
        )));
    }
    Ok(w)
}

/// The product of `dims` (concrete, checked by [`width`]).
fn product(dims: &[i64]) -> usize {
    dims.iter().map(|&d| d as usize).product()
}

fn tensor(dtype: DataType, shape: Vec<i64>, data: Bytes) -> Tensor {
    Tensor {
        name: String::new(),
        dtype,
        shape,
        data,
    }
}

/// The values of an INT64 or INT32 index tensor, as i64.
fn index_values(t: &Tensor, port: &str) -> Result<Vec<i64>> {
    width(t, port)?;
    match t.dtype {
        DataType::Int64 => t.to_vec::<i64>(),
        DataType::Int32 => Ok(t.to_vec::<i32>()?.into_iter().map(i64::from).collect()),
        d => Err(Error::invalid(format!(
            "{port}: {d}; INT64 or INT32 expected"
        ))),
    }
}

/// The scores of a `topk` input as f64 (exact for FP16, FP32 and FP64).
fn scores(t: &Tensor) -> Result<Vec<f64>> {
    width(t, "input")?;
    Ok(match t.dtype {
        DataType::Fp32 => t.to_vec::<f32>()?.into_iter().map(f64::from).collect(),
        DataType::Fp64 => t.to_vec::<f64>()?,
        DataType::Fp16 => t
            .to_vec::<half::f16>()?
            .into_iter()
            .map(f64::from)
            .collect(),
        d => {
            return Err(Error::invalid(format!(
                "input: topk takes FP32, FP16 or FP64, got {d}"
            )))
        }
    })
}

/// The positions of the `k` best of `row` in rank order (descending by score, NaN last, ties
/// by the lower position first: a total order); `k <= row.len()`.
///
/// Each score becomes an integer key in that order (the score's bits mapped
/// to an unsigned order, NaN lowest, -0 as +0; then the position, lower first), so selection
/// and sorting compare integers in one contiguous array instead of looking scores up.
pub(crate) fn top_positions<T: Copy + Into<f64>>(row: &[T], k: usize, out: &mut Vec<usize>) {
    out.clear();
    if k == 0 {
        return;
    }
    if k >= row.len() {
        let mut keys: Vec<(u64, u32)> = row
            .iter()
            .enumerate()
            .map(|(i, &v)| (order_key(v.into()), !(i as u32)))
            .collect();
        keys.sort_unstable_by(|a, b| b.cmp(a));
        out.extend(keys.iter().map(|&(_, i)| !i as usize));
        return;
    }
    // one pass keeping the k best in a min-heap: past the first k, most scores only meet the
    // heap's minimum and go
    let mut heap: BinaryHeap<Reverse<(u64, u32)>> = BinaryHeap::with_capacity(k + 1);
    for (i, &v) in row.iter().enumerate() {
        let key = (order_key(v.into()), !(i as u32));
        if heap.len() < k {
            heap.push(Reverse(key));
        } else if let Some(mut least) = heap.peek_mut() {
            if key > least.0 {
                *least = Reverse(key);
            }
        }
    }
    let mut keys: Vec<(u64, u32)> = heap.into_iter().map(|Reverse(x)| x).collect();
    keys.sort_unstable_by(|a, b| b.cmp(a));
    out.extend(keys.iter().map(|&(_, i)| !i as usize));
}

/// An unsigned key ordered as the score: NaN below everything, -0 equal to +0.
fn order_key(v: f64) -> u64 {
    if v.is_nan() {
        return 0;
    }
    let bits = (v + 0.0).to_bits(); // -0 + 0 = +0
                                    // negative: every bit flipped; otherwise the sign bit set (no branch on the sign, which
                                    // random scores would mispredict half the time)
    let negative = ((bits as i64) >> 63) as u64;
    bits ^ (negative | 1 << 63)
}

/// The `k` largest values along the last axis of `input` (FP32, FP16 or FP64) and their
/// positions: `(indices INT64 [..., k], values [..., k])`, descending, ties by the lower index
/// first, NaN last. `values` has the input's dtype. `k` larger than the last dimension is an
/// error.
pub fn topk(input: &Tensor, k: usize) -> Result<(Tensor, Tensor)> {
    let values = scores(input)?;
    let Some((&n, lead)) = input.shape.split_last() else {
        return Err(Error::invalid("input: topk needs at least one dimension"));
    };
    let n = n as usize;
    if k > n {
        return Err(Error::invalid(format!(
            "input: k = {k} is larger than the last dimension ({n}) of shape {:?}",
            input.shape
        )));
    }
    let w = input.dtype.size().expect("checked by scores");
    let rows = product(lead);
    let mut indices = Vec::with_capacity(rows * k);
    let mut picked = BytesMut::with_capacity(rows * k * w);
    let mut order = Vec::with_capacity(n);
    for r in 0..rows {
        top_positions(&values[r * n..(r + 1) * n], k, &mut order);
        for &p in &order {
            indices.push(p as i64);
            let at = (r * n + p) * w;
            picked.extend_from_slice(&input.data[at..at + w]);
        }
    }
    let mut shape = lead.to_vec();
    shape.push(k as i64);
    let ix = Tensor::from_vec("", shape.clone(), &indices);
    Ok((ix, tensor(input.dtype, shape, picked.freeze())))
}

/// `numpy.take(data, indices, axis)`: the output's shape is `data[..axis] + indices.shape +
/// data[axis + 1..]`. `indices` is INT64 or INT32; an index outside `0..data.shape[axis]` is an
/// error naming it.
pub fn gather(data: &Tensor, indices: &Tensor, axis: usize) -> Result<Tensor> {
    let w = width(data, "data")?;
    let ix = index_values(indices, "indices")?;
    if axis >= data.shape.len() {
        return Err(Error::invalid(format!(
            "data: axis {axis} is out of range for shape {:?}",
            data.shape
        )));
    }
    let dim = data.shape[axis];
    if let Some((i, &bad)) = ix.iter().enumerate().find(|(_, &v)| v < 0 || v >= dim) {
        return Err(Error::invalid(format!(
            "indices: element {i} is {bad}, outside 0..{dim}"
        )));
    }
    let outer = product(&data.shape[..axis]);
    let inner = product(&data.shape[axis + 1..]) * w;
    let mut out = BytesMut::with_capacity(outer * ix.len() * inner);
    for o in 0..outer {
        for &i in &ix {
            let at = (o * dim as usize + i as usize) * inner;
            out.extend_from_slice(&data.data[at..at + inner]);
        }
    }
    let mut shape = data.shape[..axis].to_vec();
    shape.extend_from_slice(&indices.shape);
    shape.extend_from_slice(&data.shape[axis + 1..]);
    Ok(tensor(data.dtype, shape, out.freeze()))
}

/// Tiles the single row of `input` (`[1, ...]`) `times` times: `[times, ...]`.
pub fn repeat(input: &Tensor, times: usize) -> Result<Tensor> {
    width(input, "input")?;
    if input.shape.first() != Some(&1) {
        return Err(Error::invalid(format!(
            "input: repeat takes one row ([1, ...]), got shape {:?}",
            input.shape
        )));
    }
    let mut shape = input.shape.clone();
    shape[0] = times as i64;
    let data = if times == 1 {
        input.data.clone()
    } else {
        let mut out = BytesMut::with_capacity(input.data.len() * times);
        for _ in 0..times {
            out.extend_from_slice(&input.data);
        }
        out.freeze()
    };
    Ok(tensor(input.dtype, shape, data))
}

/// `numpy.concatenate(inputs, axis)`; a negative `axis` counts from the end. The inputs must
/// share dtype, rank and every dimension but `axis`; errors name the port (`input_1`).
pub fn concat(inputs: &[&Tensor], axis: i64) -> Result<Tensor> {
    let Some(first) = inputs.first() else {
        return Err(Error::invalid("concat needs at least one input"));
    };
    let rank = first.shape.len();
    let axis = shape::normalize_axis(axis, rank, "input_0")?;
    let w = width(first, "input_0")?;
    for (i, t) in inputs.iter().enumerate().skip(1) {
        let port = format!("input_{i}");
        width(t, &port)?;
        if t.dtype != first.dtype {
            return Err(Error::invalid(format!(
                "{port}: dtype {} differs from input_0's {}",
                t.dtype, first.dtype
            )));
        }
        let same =
            t.shape.len() == rank && (0..rank).all(|d| d == axis || t.shape[d] == first.shape[d]);
        if !same {
            return Err(Error::invalid(format!(
                "{port}: shape {:?} does not match input_0's {:?} outside axis {axis}",
                t.shape, first.shape
            )));
        }
    }
    if inputs.len() == 1 {
        return Ok(tensor(first.dtype, first.shape.clone(), first.data.clone()));
    }
    let outer = product(&first.shape[..axis]);
    let inner = product(&first.shape[axis + 1..]) * w;
    let total: usize = inputs.iter().map(|t| t.data.len()).sum();
    let mut out = BytesMut::with_capacity(total);
    for o in 0..outer {
        for t in inputs {
            let chunk = t.shape[axis] as usize * inner;
            out.extend_from_slice(&t.data[o * chunk..(o + 1) * chunk]);
        }
    }
    let mut shape = first.shape.clone();
    shape[axis] = inputs.iter().map(|t| t.shape[axis]).sum();
    Ok(tensor(first.dtype, shape, out.freeze()))
}

/// Elements `start..end` of `input` along `axis` (`end` exclusive, default the dimension).
/// Negative bounds count from the end of the dimension; both clamp to `0..=dim`, and an `end`
/// before `start` gives an empty slice. Shares the input's buffer when the slice is contiguous
/// in it (axis 0, or every leading dimension 1).
pub fn slice(input: &Tensor, axis: usize, start: i64, end: Option<i64>) -> Result<Tensor> {
    let w = width(input, "input")?;
    if axis >= input.shape.len() {
        return Err(Error::invalid(format!(
            "input: axis {axis} is out of range for shape {:?}",
            input.shape
        )));
    }
    let dim = input.shape[axis];
    let (lo, hi) = shape::slice_bounds(dim, start, end);
    let mut shape = input.shape.clone();
    shape[axis] = hi - lo;
    let outer = product(&input.shape[..axis]);
    let inner = product(&input.shape[axis + 1..]) * w;
    let (lo, hi, dim) = (lo as usize, hi as usize, dim as usize);
    let data = if outer == 0 {
        Bytes::new()
    } else if outer == 1 {
        input.data.slice(lo * inner..hi * inner)
    } else if lo == 0 && hi == dim {
        input.data.clone()
    } else {
        let mut out = BytesMut::with_capacity(outer * (hi - lo) * inner);
        for o in 0..outer {
            let base = o * dim * inner;
            out.extend_from_slice(&input.data[base + lo * inner..base + hi * inner]);
        }
        out.freeze()
    };
    Ok(tensor(input.dtype, shape, data))
}

/// `input` with a new `shape` (one -1 allowed, inferred; 0 is a zero dimension), sharing its
/// buffer. Takes any dtype, `BYTES` included.
pub fn reshape(input: &Tensor, shape: &[i64]) -> Result<Tensor> {
    let n = kiln_core::tensor::element_count(&input.shape, "input")?;
    if let Some(w) = input.dtype.size() {
        if input.data.len() != n * w {
            return Err(Error::invalid(format!(
                "input: {} bytes of data for shape {:?} of {}; {} expected",
                input.data.len(),
                input.shape,
                input.dtype,
                n * w
            )));
        }
    }
    let out = reshape_shape(&input.shape, shape)?;
    Ok(tensor(input.dtype, out, input.data.clone()))
}
