//! Dense layers on the `gemm` crate.
//!
//! Why `gemm`: it is a pure-Rust BLAS-like kernel library (the one candle uses) with run-time
//! CPU dispatch (FMA/AVX2, and AVX-512 on CPUs that have it), packing and cache blocking, so the
//! build needs no system BLAS and the binary runs on any x86-64. Each call here runs on one
//! thread: the model splits a batch into row ranges, one per thread, and every thread runs the
//! whole forward pass of its rows, so layers need no synchronisation between them.
//!
//! An MLP ([`MlpScratch::run`], [`MlpScratch::run_into`]) alternates between two activation
//! buffers: layer `j` reads the one layer `j - 1` wrote and writes the other.

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

/// The two activation buffers of a thread's MLPs, grown to the widest layer seen.
#[derive(Default)]
pub struct MlpScratch {
    a: Vec<f32>,
    b: Vec<f32>,
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
    pub fn run<'s>(&'s mut self, layers: &[Linear], x: &'s [f32], rows: usize) -> &'s [f32] {
        let mut at = At::Input;
        for layer in layers {
            at = self.layer(layer, x, rows, at);
        }
        let width = layers.last().map_or(0, |l| l.outputs);
        &self.activations(x, at)[..rows * width]
    }

    /// Runs `layers` on `x` with ReLU between layers and none after the last, which writes
    /// `out` (`[rows, last.outputs]`).
    pub fn run_into(&mut self, layers: &[Linear], x: &[f32], rows: usize, out: &mut [f32]) {
        let Some((last, hidden)) = layers.split_last() else {
            return;
        };
        let mut at = At::Input;
        for layer in hidden {
            at = self.layer(layer, x, rows, at);
        }
        let src = &self.activations(x, at)[..rows * last.inputs];
        linear(last, src, rows, out, false);
    }

    /// One hidden layer (with ReLU) from the activations at `at` into the other buffer.
    fn layer(&mut self, layer: &Linear, x: &[f32], rows: usize, at: At) -> At {
        let Self { a, b } = self;
        let (src, dst, next) = match at {
            At::Input => (x, a, At::A),
            At::A => (&a[..], b, At::B),
            At::B => (&b[..], a, At::A),
        };
        let n = rows * layer.outputs;
        if dst.len() < n {
            dst.resize(n, 0.0);
        }
        linear(
            layer,
            &src[..rows * layer.inputs],
            rows,
            &mut dst[..n],
            true,
        );
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

        let mut s = MlpScratch::default();
        for n in 1..=layers.len() {
            let got = s.run(&layers[..n], &x, rows);
            assert_eq!(got.len(), rows * layers[n - 1].outputs);
        }
        assert_eq!(s.run(&layers, &x, rows), &want[..]);
        let mut out = vec![0.0; rows * 3];
        s.run_into(&layers, &x, rows, &mut out);
        assert_eq!(out, logits);
        // one layer: straight from the input
        let mut out = vec![0.0; rows * 5];
        s.run_into(&layers[..1], &x, rows, &mut out);
        let mut one = vec![0.0; rows * 5];
        linear(&layers[0], &x, rows, &mut one, false);
        assert_eq!(out, one);
    }
}
