//! The MLPs of a recsys model, and the `gemm` crate's f32 kernel.
//!
//! Each layer runs on the kernel chosen for its model ([`crate::dense`]): the `gemm` crate
//! (below), or MKL on weights packed at load. Each call runs on one thread: the model splits a
//! batch into row ranges, one per thread, and every thread runs the whole forward pass of its
//! rows, so layers need no synchronisation between them (MKL runs sequentially, see
//! [`crate::mkl`]).
//!
//! Why `gemm` as the kernel without MKL: it is a pure-Rust BLAS-like kernel library (the one
//! candle uses) with run-time CPU dispatch (FMA/AVX2, and AVX-512 on CPUs that have it),
//! packing and cache blocking, so the build needs no system BLAS and the binary runs on any
//! x86-64.
//!
//! An MLP ([`MlpScratch::run`], [`MlpScratch::run_into`]) alternates between two activation
//! buffers: layer `j` reads the one layer `j - 1` wrote and writes the other.

use crate::dense::{bias_relu, DenseLayer};
use crate::weights::Linear;

/// `out[rows, n] = x[rows, k] . w[k, n]` on the `gemm` crate, one thread.
pub fn gemm_f32(w: &[f32], k: usize, n: usize, x: &[f32], rows: usize, out: &mut [f32]) {
    // SAFETY: the pointers cover `rows * k`, `k * n` and `rows * n` elements with the strides
    // given (row-major, unit column stride), checked here.
    assert!(x.len() >= rows * k && out.len() >= rows * n && w.len() == k * n);
    if rows == 0 {
        return;
    }
    unsafe {
        gemm::gemm(
            rows,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            1,
            n as isize,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// `out[rows, outputs] = x[rows, inputs] . W^T + b`, then ReLU if `relu`, on the `gemm` crate.
pub fn linear(layer: &Linear, x: &[f32], rows: usize, out: &mut [f32], relu: bool) {
    let (k, n) = (layer.inputs, layer.outputs);
    debug_assert_eq!(x.len(), rows * k);
    debug_assert_eq!(out.len(), rows * n);
    gemm_f32(&layer.weight_t, k, n, x, rows, out);
    bias_relu(&mut out[..rows * n], &layer.bias, relu);
}

/// The two activation buffers of a thread's MLPs, grown to the widest layer seen, and the
/// bf16 copy of a layer's input (bf16 kernel only).
#[derive(Default)]
pub struct MlpScratch {
    a: Vec<f32>,
    b: Vec<f32>,
    x16: Vec<u16>,
}

/// Where the current activations are.
#[derive(Clone, Copy)]
enum At {
    Input,
    A,
    B,
}

impl MlpScratch {
    /// Runs `layers` on `x` (`[rows, layers[0].inputs]`) with ReLU after every layer; the
    /// output (`[rows, last.outputs]`) stays in the scratch.
    pub fn run<'s>(&'s mut self, layers: &[DenseLayer], x: &'s [f32], rows: usize) -> &'s [f32] {
        let mut at = At::Input;
        for layer in layers {
            at = self.layer(layer, x, rows, at);
        }
        let width = layers.last().map_or(0, |l| l.outputs);
        &self.activations(x, at)[..rows * width]
    }

    /// Runs `layers` on `x` with ReLU between layers and none after the last, which writes
    /// `out` (`[rows, last.outputs]`).
    pub fn run_into(&mut self, layers: &[DenseLayer], x: &[f32], rows: usize, out: &mut [f32]) {
        let Some((last, hidden)) = layers.split_last() else {
            return;
        };
        let mut at = At::Input;
        for layer in hidden {
            at = self.layer(layer, x, rows, at);
        }
        let Self { a, b, x16 } = self;
        let src = match at {
            At::Input => x,
            At::A => &a[..],
            At::B => &b[..],
        };
        last.forward(&src[..rows * last.inputs], rows, out, false, x16);
    }

    /// One hidden layer (with ReLU) from the activations at `at` into the other buffer.
    fn layer(&mut self, layer: &DenseLayer, x: &[f32], rows: usize, at: At) -> At {
        let Self { a, b, x16 } = self;
        let (src, dst, next) = match at {
            At::Input => (x, a, At::A),
            At::A => (&a[..], b, At::B),
            At::B => (&b[..], a, At::A),
        };
        let n = rows * layer.outputs;
        if dst.len() < n {
            dst.resize(n, 0.0);
        }
        layer.forward(&src[..rows * layer.inputs], rows, &mut dst[..n], true, x16);
        next
    }

    fn activations<'s>(&'s self, x: &'s [f32], at: At) -> &'s [f32] {
        match at {
            At::Input => x,
            At::A => &self.a,
            At::B => &self.b,
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

    fn layer(inputs: usize, outputs: usize, seed: f32) -> Linear {
        Linear {
            inputs,
            outputs,
            weight_t: (0..inputs * outputs)
                .map(|i| (i as f32 * seed).sin())
                .collect(),
            bias: (0..outputs)
                .map(|o| (o as f32 * seed).cos() * 0.1)
                .collect(),
        }
    }

    #[test]
    fn scratch_runs_layer_by_layer() {
        let layers = [layer(6, 5, 0.3), layer(5, 4, 0.7), layer(4, 3, 1.1)];
        let rows = 4;
        let x: Vec<f32> = (0..rows * 6).map(|i| (i as f32 * 0.13).cos()).collect();
        // layer by layer into fresh buffers
        let mut want = x.clone();
        let mut hidden = Vec::new();
        for (j, l) in layers.iter().enumerate() {
            let mut out = vec![0.0; rows * l.outputs];
            linear(l, &want, rows, &mut out, true);
            want = out;
            if j + 1 == layers.len() - 1 {
                hidden = want.clone();
            }
        }
        let mut logits = vec![0.0; rows * 3];
        linear(&layers[2], &hidden, rows, &mut logits, false);

        let dense: Vec<DenseLayer> = layers
            .iter()
            .map(|l| DenseLayer::new(l.clone(), &crate::dense::Kernel::Gemm))
            .collect();
        let mut s = MlpScratch::default();
        for n in 1..=layers.len() {
            let got = s.run(&dense[..n], &x, rows);
            assert_eq!(got.len(), rows * layers[n - 1].outputs);
        }
        assert_eq!(s.run(&dense, &x, rows), &want[..]);
        let mut out = vec![0.0; rows * 3];
        s.run_into(&dense, &x, rows, &mut out);
        assert_eq!(out, logits);
        // one layer: straight from the input
        let mut out = vec![0.0; rows * 5];
        s.run_into(&dense[..1], &x, rows, &mut out);
        let mut one = vec![0.0; rows * 5];
        linear(&layers[0], &x, rows, &mut one, false);
        assert_eq!(out, one);
    }
}
