//! Dense layers on the `gemm` crate.
//!
//! Why `gemm`: it is a pure-Rust BLAS-like kernel library (the one candle uses) with run-time
//! CPU dispatch (FMA/AVX2, and AVX-512 on CPUs that have it), packing and cache blocking, so the
//! build needs no system BLAS and the binary runs on any x86-64. Each call here runs on one
//! thread: the model splits a batch into row ranges, one per thread, and every thread runs the
//! whole forward pass of its rows, so layers need no synchronisation between them.

use crate::weights::Linear;

/// `out[rows, outputs] = x[rows, inputs] . W^T + b`, then ReLU if `relu`.
pub fn linear(layer: &Linear, x: &[f32], rows: usize, out: &mut [f32], relu: bool) {
    let (k, n) = (layer.inputs, layer.outputs);
    debug_assert_eq!(x.len(), rows * k);
    debug_assert_eq!(out.len(), rows * n);
    if rows == 0 {
        return;
    }
    for row in out.chunks_exact_mut(n) {
        row.copy_from_slice(&layer.bias);
    }
    // SAFETY: the pointers cover `rows * k`, `k * n` and `rows * n` elements with the strides
    // given (row-major, unit column stride), checked by the assertions above and by the
    // slices' lengths the callers size from the same layer widths.
    assert!(x.len() >= rows * k && out.len() >= rows * n && layer.weight_t.len() == k * n);
    unsafe {
        gemm::gemm(
            rows,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            true,
            x.as_ptr(),
            1,
            k as isize,
            layer.weight_t.as_ptr(),
            1,
            n as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
    if relu {
        for v in out.iter_mut() {
            *v = v.max(0.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_naive() {
        let (rows, k, n) = (5, 7, 3);
        let w: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.37).sin()).collect();
        let layer = Linear {
            inputs: k,
            outputs: n,
            weight_t: w.clone(),
            bias: vec![0.5, -0.25, 0.0],
        };
        let x: Vec<f32> = (0..rows * k).map(|i| (i as f32 * 0.11).cos()).collect();
        let mut out = vec![0.0; rows * n];
        linear(&layer, &x, rows, &mut out, false);
        for r in 0..rows {
            for o in 0..n {
                let mut s = layer.bias[o];
                for i in 0..k {
                    s += x[r * k + i] * w[i * n + o];
                }
                assert!((out[r * n + o] - s).abs() < 1e-5);
            }
        }
        linear(&layer, &x, rows, &mut out, true);
        assert!(out.iter().all(|&v| v >= 0.0));
    }
}
