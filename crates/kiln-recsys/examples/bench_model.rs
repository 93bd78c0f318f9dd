//! Whole-model throughput of a recsys model in process: loads a model directory (as
//! `examples/gen_dlrm.py` writes it) through the backend and calls it on batches of B rows,
//! the same workload as the PyTorch / ONNX Runtime peer (`peers/recsys/bench_recsys.py`): per
//! batch size a pool of max(16384, 4B) rows (dense N(0,1), ids uniform in [0, R), fixed seed),
//! called on consecutive slices so large tables are read from memory, not a warm cache.
//!
//! ```text
//! cargo run --release -p kiln-recsys --example bench_model -- MODEL_DIR [--threads 2] [--batches 1,64,512,4096]
//!     [--mkl-library PATH/libmkl_rt.so.3] [--precision fp32|bf16|auto] [--cpu-bf16]
//! ```
//! Without `--mkl-library` the MLPs run on the `gemm` crate; with it, on MKL (fp32 packed, or
//! bf16 with `--precision bf16`; the model's `precision` parameter is replaced).
//! Prints one markdown row per batch size: median rows/s over 7 runs (each >= 0.4 s and >= 3
//! calls), the min-max of the runs, and per-call p50 / p99 latency.

use kiln_core::{Backend, ModelConfig, Tensor};
use kiln_recsys::{RecsysBackend, RecsysOptions};
use std::path::PathBuf;
use std::time::{Duration, Instant};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        kiln_embed::mix64(self.0)
    }
    fn unit(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f32 {
        let (u, v) = (self.unit(), self.unit());
        ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(
        args.next()
            .expect("usage: bench_model MODEL_DIR [--threads N] [--batches 1,64]"),
    );
    let mut threads = 2u32;
    let mut batches = vec![1usize, 64, 512, 4096];
    let mut options = RecsysOptions::default();
    let mut precision = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--threads" => threads = args.next().unwrap().parse().unwrap(),
            "--batches" => {
                batches = args
                    .next()
                    .unwrap()
                    .split(',')
                    .map(|b| b.trim().parse().unwrap())
                    .collect()
            }
            "--mkl-library" => options.mkl_library = Some(args.next().unwrap().into()),
            "--precision" => precision = Some(args.next().unwrap()),
            // declares native bf16 (MKL's bf16 path on a CPU where auto would not pick it)
            "--cpu-bf16" => options.cpu_bf16 = Some(true),
            o => panic!("unknown argument {o}"),
        }
    }
    let name = dir.file_name().unwrap().to_string_lossy().to_string();
    let mut config = ModelConfig::from_file(&dir.join("config.toml"), &name).expect("config");
    config.instance_group.threads = threads;
    if let Some(p) = precision {
        config
            .parameters
            .insert("precision".into(), toml::Value::String(p));
    }
    let version = dir.join("1");
    let t0 = Instant::now();
    let backend = RecsysBackend::with_options(options);
    let model = backend.load(&version, &config).expect("load");
    eprintln!(
        "loaded {} in {:.1} s",
        dir.display(),
        t0.elapsed().as_secs_f64()
    );
    let kernel = model
        .describe()
        .into_iter()
        .find(|(k, _)| k == "gemm")
        .map(|(_, v)| v)
        .unwrap_or_default();
    let io = model.io().clone();
    let dense_dim = io.inputs[0].dims[0] as usize;
    let rows_per_table: u64 = model
        .sparse()
        .map(|s| s.tables()[0].rows)
        .expect("a recsys model");

    println!("| engine | batch | rows/s (median) | rows/s min-max | p50 ms | p99 ms |");
    println!("|---|---|---|---|---|---|");
    for &b in &batches {
        let pool_rows = (4 * b).max(16_384);
        let mut rng = Rng(42 + b as u64);
        let dense: Vec<f32> = (0..pool_rows * dense_dim).map(|_| rng.normal()).collect();
        let sparse: Vec<Vec<i64>> = io.inputs[1..]
            .iter()
            .map(|s| {
                let k = s.dims[0] as usize;
                (0..pool_rows * k)
                    .map(|_| (rng.next() % rows_per_table) as i64)
                    .collect()
            })
            .collect();
        let batch_at = |i: usize| -> Vec<Tensor> {
            let r0 = (i * b) % (pool_rows - b + 1);
            let mut t = vec![Tensor::from_vec(
                io.inputs[0].name.clone(),
                vec![b as i64, dense_dim as i64],
                &dense[r0 * dense_dim..(r0 + b) * dense_dim],
            )];
            for (spec, ids) in io.inputs[1..].iter().zip(&sparse) {
                let k = spec.dims[0] as usize;
                t.push(Tensor::from_vec(
                    spec.name.clone(),
                    vec![b as i64, k as i64],
                    &ids[r0 * k..(r0 + b) * k],
                ));
            }
            t
        };
        // inputs are built outside the timed calls
        let prepared: Vec<Vec<Tensor>> = (0..(pool_rows / b).max(1)).map(batch_at).collect();
        // warm-up
        for inputs in prepared.iter().take(3) {
            model.execute(inputs).expect("execute");
        }
        let mut rates = Vec::new();
        let mut lat = Vec::new();
        let mut i = 0;
        for _ in 0..7 {
            let start = Instant::now();
            let mut calls = 0;
            while calls < 3 || start.elapsed() < Duration::from_millis(400) {
                let t = Instant::now();
                model
                    .execute(&prepared[i % prepared.len()])
                    .expect("execute");
                lat.push(t.elapsed().as_secs_f64() * 1e3);
                i += 1;
                calls += 1;
            }
            rates.push((calls * b) as f64 / start.elapsed().as_secs_f64());
        }
        rates.sort_by(|a, b| a.total_cmp(b));
        lat.sort_by(|a, b| a.total_cmp(b));
        let q = |p: f64| lat[((lat.len() as f64 - 1.0) * p).round() as usize];
        println!(
            "| kiln recsys {kernel} ({threads} threads) | {b} | {:.0} | {:.0}-{:.0} | {:.3} | {:.3} |",
            rates[3],
            rates[0],
            rates[6],
            q(0.5),
            q(0.99)
        );
    }
}
