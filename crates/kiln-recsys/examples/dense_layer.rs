//! One dense layer (with ReLU) on the `gemm` crate and on the `avx512_bf16` kernel, alternated on
//! the calling thread: time per call and GFLOP/s, two runs of each (each >= 0.5 s).
//!
//! ```text
//! cargo run --release -p kiln-recsys --example dense_layer -- ROWS INPUTS OUTPUTS
//! taskset -c 1 .../examples/dense_layer 256 1728 1024     # the reference model's first top layer
//! ```

use kiln_recsys::dense::{avx512_bf16, DenseLayer, Kernel};
use kiln_recsys::weights::Linear;
use std::time::Instant;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("usage: dense_layer ROWS INPUTS OUTPUTS"))
        .collect();
    let [rows, k, n] = args[..] else {
        panic!("usage: dense_layer ROWS INPUTS OUTPUTS");
    };
    let layer = Linear {
        inputs: k,
        outputs: n,
        weight_t: (0..k * n)
            .map(|i| ((i % 97) as f32 - 48.0) / 480.0)
            .collect(),
        bias: vec![0.1; n],
    };
    let x: Vec<f32> = (0..rows * k)
        .map(|i| ((i % 89) as f32 - 44.0) / 44.0)
        .collect();
    let mut out = vec![0f32; rows * n];
    let mut x16 = Vec::new();
    let mut kernels = vec![Kernel::Gemm];
    if avx512_bf16::available() {
        kernels.push(Kernel::Avx512Bf16);
    } else {
        eprintln!("the CPU has no AVX512_BF16: gemm crate only");
    }
    for _ in 0..2 {
        for kernel in &kernels {
            let dense = DenseLayer::new(layer.clone(), kernel);
            for _ in 0..3 {
                dense.forward(&x, rows, &mut out, true, &mut x16);
            }
            let t = Instant::now();
            let mut calls = 0u32;
            while t.elapsed().as_secs_f64() < 0.5 {
                dense.forward(&x, rows, &mut out, true, &mut x16);
                calls += 1;
            }
            let s = t.elapsed().as_secs_f64() / f64::from(calls);
            println!(
                "{rows} x {k} x {n} {}: {:.1} us/call, {:.1} GFLOP/s",
                kernel.name(),
                s * 1e6,
                2.0 * (rows * k * n) as f64 / s / 1e9
            );
        }
    }
}
