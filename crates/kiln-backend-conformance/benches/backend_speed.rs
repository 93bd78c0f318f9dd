//! In-process speed of each backend through Kiln's own interface (`create_instance` then
//! `ModelInstance::execute`, i.e. what a scheduler worker does, conversions included), measured
//! the way `../shared/peers/peers.sh raw` measures onnxruntime's Python API: 0.5 s of warm-up,
//! then five 1 s windows; rows/s is their median, p50 / p99 are per call. Comparing the two
//! separates the backend's cost from the server's.
//!
//!   cargo bench -p kiln-backend-conformance --bench backend_speed [-- MODEL ...]
//!
//! MODEL: examples (default `mlp ranker`). Env: THREADS (onnxruntime intra-op threads, default 2,
//! as `peers.sh raw`), BATCHES (default `1 64`), BACKENDS (default `onnxruntime tract`), SPIN
//! (onnxruntime's `allow_spinning`, default its own default, true).

use kiln_backend_conformance::locate_ort_library;
use kiln_backend_conformance::suite::{config_of, model_dir};
use kiln_core::backend::Backend;
use kiln_core::{DataType, Tensor};
use std::time::{Duration, Instant};

fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_string())
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// `rows` rows for every input: floats in [-2, 2), integers 0 (valid indices), as `peers.sh raw`.
fn inputs(io: &kiln_core::backend::ModelIo, rows: usize) -> Vec<Tensor> {
    let mut state: u64 = 42;
    io.inputs
        .iter()
        .map(|spec| {
            let mut shape = vec![rows as i64];
            shape.extend(spec.dims.iter().map(|&d| d.max(1)));
            let n: i64 = shape.iter().product();
            match spec.data_type {
                DataType::Fp32 => {
                    let v: Vec<f32> = (0..n)
                        .map(|_| {
                            state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                            ((state >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
                        })
                        .collect();
                    Tensor::from_vec(&spec.name, shape, &v)
                }
                DataType::Int64 => Tensor::from_vec(&spec.name, shape, &vec![0i64; n as usize]),
                other => panic!("input '{}': {other} not handled by this bench", spec.name),
            }
        })
        .collect()
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
    let threads: u32 = std::env::var("THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(2);
    let batches: Vec<usize> = env_list("BATCHES", "1 64")
        .iter()
        .map(|b| b.parse().unwrap())
        .collect();
    for backend_name in env_list("BACKENDS", "onnxruntime tract") {
        let backend: Box<dyn Backend> = match backend_name.as_str() {
            "tract" => Box::new(kiln_backend_tract::TractBackend),
            "onnxruntime" => match locate_ort_library() {
                Ok(lib) => Box::new(kiln_backend_ort::OrtBackend::new(Some(lib))),
                Err(e) => {
                    eprintln!("skipping onnxruntime: {e}");
                    continue;
                }
            },
            other => panic!("unknown backend {other}"),
        };
        for m in &models {
            let dir = model_dir(m);
            let mut config = config_of(&dir);
            config.instance_group.threads = threads;
            if let (Ok(spin), "onnxruntime") = (std::env::var("SPIN"), backend_name.as_str()) {
                let spin = spin == "true" || spin == "1";
                config
                    .parameters
                    .insert("allow_spinning".into(), toml::Value::Boolean(spin));
            }
            let model = backend
                .load(&dir.join("1"), &config)
                .unwrap_or_else(|e| panic!("{m}: {e}"));
            let mut inst = model
                .create_instance()
                .expect("an instance")
                .expect("instance");
            println!("{backend_name} {m} (threads {threads}):");
            println!(
                "{:>6} {:>10} {:>9} {:>9} {:>9}",
                "batch", "rows/s", "calls/s", "p50_us", "p99_us"
            );
            for &b in &batches {
                let x = inputs(model.io(), b);
                let warm = Instant::now();
                while warm.elapsed() < Duration::from_millis(500) {
                    inst.execute(&x).unwrap();
                }
                let mut rates = Vec::new();
                let mut lats = Vec::new();
                for _ in 0..5 {
                    let (t0, mut n) = (Instant::now(), 0usize);
                    while t0.elapsed() < Duration::from_secs(1) {
                        let t = Instant::now();
                        inst.execute(&x).unwrap();
                        lats.push(t.elapsed());
                        n += 1;
                    }
                    rates.push((n * b) as f64 / t0.elapsed().as_secs_f64());
                }
                rates.sort_by(|a, b| a.partial_cmp(b).unwrap());
                lats.sort();
                let rps = rates[2];
                let p = |q: f64| {
                    lats[((lats.len() as f64 * q) as usize).min(lats.len() - 1)].as_secs_f64() * 1e6
                };
                println!(
                    "{b:>6} {rps:>10.0} {:>9.0} {:>9.1} {:>9.1}",
                    rps / b as f64,
                    p(0.5),
                    p(0.99)
                );
            }
        }
    }
}
