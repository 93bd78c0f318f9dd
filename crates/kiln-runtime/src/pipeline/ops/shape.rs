//! Shape inference of the built-in ops, for checking a pipeline when it loads: shapes are
//! `[i64]` with -1 for a dimension known only at run time. Each function returns the output
//! shape, or an `InvalidArgument` error when the shapes can already be seen to disagree.

use kiln_core::{Error, Result};

/// `axis` (negative counts from the end) as a position in `0..rank`.
pub(super) fn normalize_axis(axis: i64, rank: usize, port: &str) -> Result<usize> {
    let at = if axis < 0 { axis + rank as i64 } else { axis };
    if at < 0 || at >= rank as i64 {
        return Err(Error::invalid(format!(
            "{port}: axis {axis} is out of range for rank {rank}"
        )));
    }
    Ok(at as usize)
}

/// The bounds `lo..hi` of a slice of a dimension of `dim` elements (see [`super::slice`]).
pub(super) fn slice_bounds(dim: i64, start: i64, end: Option<i64>) -> (i64, i64) {
    let clamp = |v: i64| if v < 0 { (v + dim).max(0) } else { v.min(dim) };
    let lo = clamp(start);
    let hi = end.map_or(dim, clamp).max(lo);
    (lo, hi)
}

fn known(shape: &[i64]) -> Option<i64> {
    shape
        .iter()
        .try_fold(1i64, |n, &d| if d < 0 { None } else { n.checked_mul(d) })
}

fn check_axis(shape: &[i64], axis: usize, port: &str) -> Result<()> {
    if axis >= shape.len() {
        return Err(Error::invalid(format!(
            "{port}: axis {axis} is out of range for shape {shape:?}"
        )));
    }
    Ok(())
}

/// The shape of both outputs of [`super::topk`] (`indices` and `values`): `input[..-1] + [k]`.
pub fn topk_shape(input: &[i64], k: usize) -> Result<Vec<i64>> {
    let Some((&n, lead)) = input.split_last() else {
        return Err(Error::invalid("input: topk needs at least one dimension"));
    };
    if n >= 0 && k as i64 > n {
        return Err(Error::invalid(format!(
            "input: k = {k} is larger than the last dimension ({n}) of shape {input:?}"
        )));
    }
    let mut out = lead.to_vec();
    out.push(k as i64);
    Ok(out)
}

/// The shape of [`super::gather`]'s output: `data[..axis] + indices + data[axis + 1..]`.
pub fn gather_shape(data: &[i64], indices: &[i64], axis: usize) -> Result<Vec<i64>> {
    check_axis(data, axis, "data")?;
    let mut out = data[..axis].to_vec();
    out.extend_from_slice(indices);
    out.extend_from_slice(&data[axis + 1..]);
    Ok(out)
}

/// The shape of [`super::repeat`]'s output: `[times] + input[1..]`; `times` is -1 when it comes
/// from a `like` tensor whose first dimension is not known.
pub fn repeat_shape(input: &[i64], times: i64) -> Result<Vec<i64>> {
    match input.first() {
        Some(&1) | Some(&-1) => {}
        _ => {
            return Err(Error::invalid(format!(
                "input: repeat takes one row ([1, ...]), got shape {input:?}"
            )))
        }
    }
    let mut out = input.to_vec();
    out[0] = if times < 0 { -1 } else { times };
    Ok(out)
}

/// The shape of [`super::concat`]'s output. Inputs must share rank and, where both are known,
/// every dimension but `axis`; the `axis` dimension is the sum, -1 if any is unknown.
pub fn concat_shape<S: AsRef<[i64]>>(inputs: &[S], axis: i64) -> Result<Vec<i64>> {
    let Some(first) = inputs.first() else {
        return Err(Error::invalid("concat needs at least one input"));
    };
    let first = first.as_ref();
    let rank = first.len();
    let axis = normalize_axis(axis, rank, "input_0")?;
    let mut out = first.to_vec();
    for (i, s) in inputs.iter().enumerate().skip(1) {
        let s = s.as_ref();
        if s.len() != rank {
            return Err(Error::invalid(format!(
                "input_{i}: shape {s:?} has rank {}, input_0's {first:?} has {rank}",
                s.len()
            )));
        }
        for d in 0..rank {
            if d == axis {
                out[d] = if out[d] < 0 || s[d] < 0 {
                    -1
                } else {
                    out[d] + s[d]
                };
            } else if out[d] < 0 {
                out[d] = s[d];
            } else if s[d] >= 0 && s[d] != out[d] {
                return Err(Error::invalid(format!(
                    "input_{i}: shape {s:?} does not match input_0's {first:?} outside axis {axis}"
                )));
            }
        }
    }
    Ok(out)
}

/// The shape of [`super::slice`]'s output: the `axis` dimension becomes the slice's length
/// (-1 when the dimension is not known).
pub fn slice_shape(input: &[i64], axis: usize, start: i64, end: Option<i64>) -> Result<Vec<i64>> {
    check_axis(input, axis, "input")?;
    let mut out = input.to_vec();
    if input[axis] >= 0 {
        let (lo, hi) = slice_bounds(input[axis], start, end);
        out[axis] = hi - lo;
    }
    Ok(out)
}

/// The shape of [`super::reshape`]'s output: `shape` with its -1 inferred when `input` is
/// known. At most one -1; no other negative dimension; the element counts must agree.
pub fn reshape_shape(input: &[i64], shape: &[i64]) -> Result<Vec<i64>> {
    if let Some(&d) = shape.iter().find(|&&d| d < -1) {
        return Err(Error::invalid(format!(
            "shape: {shape:?} has the dimension {d}; only -1 (inferred) may be negative"
        )));
    }
    let inferred = shape.iter().filter(|&&d| d == -1).count();
    if inferred > 1 {
        return Err(Error::invalid(format!(
            "shape: {shape:?} has more than one -1"
        )));
    }
    let rest = shape
        .iter()
        .filter(|&&d| d >= 0)
        .try_fold(1i64, |n, &d| n.checked_mul(d))
        .ok_or_else(|| Error::invalid(format!("shape: {shape:?} is too large")))?;
    let mut out = shape.to_vec();
    match (known(input), inferred) {
        (Some(n), 1) => {
            if rest == 0 || n % rest != 0 {
                return Err(Error::invalid(format!(
                    "shape: cannot reshape {input:?} ({n} elements) to {shape:?}"
                )));
            }
            let at = shape.iter().position(|&d| d == -1).expect("one -1");
            out[at] = n / rest;
        }
        (Some(n), _) if n != rest => {
            return Err(Error::invalid(format!(
                "shape: cannot reshape {input:?} ({n} elements) to {shape:?} ({rest} elements)"
            )));
        }
        (None, 0) => {
            // the known part of the input must divide the target's element count
            let part: i64 = input.iter().filter(|&&d| d >= 0).product();
            if part != 0 && rest % part != 0 || part == 0 && rest != 0 {
                return Err(Error::invalid(format!(
                    "shape: cannot reshape {input:?} to {shape:?} ({rest} elements)"
                )));
            }
        }
        _ => {}
    }
    Ok(out)
}
