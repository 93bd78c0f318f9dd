//! In-process speed of OpenVINO against ONNX Runtime and tract, each through Kiln's backend
//! interface (`create_instance` then `ModelInstance::execute`: what a scheduler worker does,
//! conversions included), on the same model files and threads.
//!
//!   cargo bench -p kiln-backend-openvino --bench engines [-- MODEL ...]
//!
//! MODEL: examples (default `mlp ranker`). Env: THREADS (each engine's threads, default 1),
//! BATCHES (default `1 64`), BACKENDS (default `openvino onnxruntime tract`), ROUNDS (default 5).
//! For each model and batch the backends take turns: 0.5 s of warm-up each, then ROUNDS rounds
//! in which each runs a 1 s window; rows/s is the median of its windows, so a change of load
//! during the run touches every backend alike. Ratios are against onnxruntime in the same run.

use kiln_backend_conformance::locate_ort_library;
use kiln_backend_conformance::suite::{config_of, model_dir};
use kiln_core::backend::{Backend, ModelInstance};
use kiln_core::{DataType, Tensor};
use std::time::{Duration, Instant};

fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_string())
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `rows` rows for every input: floats in [-2, 2), ids in [0, 1000).
fn inputs(io: &kiln_core::backend::ModelIo, rows: usize) -> Vec<Tensor> {
    let mut state: u64 = 42;
    let mut next = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
        state >> 40
    };
    io.inputs
        .iter()
        .map(|spec| {
            let mut shape = vec![rows as i64];
            shape.extend(spec.dims.iter().map(|&d| d.max(1)));
            let n = shape.iter().product::<i64>() as usize;
            match spec.data_type {
                DataType::Fp32 => {
                    let v: Vec<f32> = (0..n)
                        .map(|_| (next() as f32 / (1u64 << 24) as f32) * 4.0 - 2.0)
                        .collect();
                    Tensor::from_vec(&spec.name, shape, &v)
                }
                DataType::Int64 => {
                    let v: Vec<i64> = (0..n).map(|_| (next() % 1000) as i64).collect();
                    Tensor::from_vec(&spec.name, shape, &v)
                }
                other => panic!("input '{}': {other} not handled by this bench", spec.name),
            }
        })
        .collect()
}

fn backend(name: &str) -> Option<Box<dyn Backend>> {
    let ov_library = || kiln_testkit::openvino_library_path();
    Some(match name {
        "tract" => Box::new(kiln_backend_tract::TractBackend),
        "onnxruntime" => match locate_ort_library() {
            Ok(lib) => Box::new(kiln_backend_ort::OrtBackend::new(Some(lib))),
            Err(e) => {
                eprintln!("skipping onnxruntime: {e}");
                return None;
            }
        },
        "openvino" => match ov_library() {
            Ok(lib) => Box::new(kiln_backend_openvino::OpenVinoBackend::new(Some(lib))),
            Err(e) => {
                eprintln!("skipping openvino: {e}");
                return None;
            }
        },
        other => panic!("unknown backend {other}"),
    })
}

/// Calls of `inst` on `x` in a window of `d`.
fn window(inst: &mut dyn ModelInstance, x: &[Tensor], d: Duration) -> usize {
    let (t0, mut n) = (Instant::now(), 0usize);
    while t0.elapsed() < d {
        inst.execute(x).unwrap();
        n += 1;
    }
    n
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let models = if args.is_empty() {
        vec!["mlp".to_string(), "ranker".to_string()]
    } else {
        args
    };
    let threads = env_num("THREADS", 1) as u32;
    let rounds = env_num("ROUNDS", 5);
    let batches: Vec<usize> = env_list("BATCHES", "1 64")
        .iter()
        .map(|b| b.parse().unwrap())
        .collect();
    let backends: Vec<(String, Box<dyn Backend>)> =
        env_list("BACKENDS", "openvino onnxruntime tract")
            .into_iter()
            .filter_map(|n| backend(&n).map(|b| (n, b)))
            .collect();
    println!("threads {threads}, {rounds} rounds of 1 s per backend, median rows/s");
    println!(
        "{:<8} {:>6} {:<12} {:>12} {:>10} {:>9}",
        "model", "batch", "backend", "rows/s", "us/call", "vs ort"
    );
    for m in &models {
        let dir = model_dir(m);
        let mut config = config_of(&dir);
        config.backend = None;
        config.instance_group.threads = threads;
        let mut insts: Vec<(&str, Box<dyn ModelInstance>, kiln_core::backend::ModelIo)> = backends
            .iter()
            .map(|(name, b)| {
                let model = b
                    .load(&dir.join("1"), &config)
                    .unwrap_or_else(|e| panic!("{name} {m}: {e}"));
                let inst = model.create_instance().expect("an instance").unwrap();
                (name.as_str(), inst, model.io().clone())
            })
            .collect();
        for &batch in &batches {
            let xs: Vec<Vec<Tensor>> = insts.iter().map(|(_, _, io)| inputs(io, batch)).collect();
            for ((_, inst, _), x) in insts.iter_mut().zip(&xs) {
                window(inst.as_mut(), x, Duration::from_millis(500));
            }
            let mut rates = vec![Vec::new(); insts.len()];
            for _ in 0..rounds {
                for (i, ((_, inst, _), x)) in insts.iter_mut().zip(&xs).enumerate() {
                    let t0 = Instant::now();
                    let n = window(inst.as_mut(), x, Duration::from_secs(1));
                    rates[i].push((n * batch) as f64 / t0.elapsed().as_secs_f64());
                }
            }
            let medians: Vec<f64> = rates.into_iter().map(median).collect();
            let ort = insts
                .iter()
                .position(|(n, _, _)| *n == "onnxruntime")
                .map(|i| medians[i]);
            for ((name, _, _), rate) in insts.iter().zip(&medians) {
                let ratio = ort.map_or("-".to_string(), |o| format!("{:.2}x", rate / o));
                println!(
                    "{m:<8} {batch:>6} {name:<12} {rate:>12.0} {:>10.1} {ratio:>9}",
                    1e6 * batch as f64 / rate
                );
            }
        }
    }
}
