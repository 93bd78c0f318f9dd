//! One engine call of ONNX Runtime, in process: the `ort` crate driven directly with the session
//! options of the raw-engine script (`../shared/peers/bench_ort.py`: intra-op and inter-op
//! threads 1, everything else ONNX Runtime's default) against Kiln's backend
//! (`OrtBackend::load`, `create_instance`, then `ModelInstance::execute`, what a scheduler
//! worker runs, conversions included), same model file, same inputs, same library; and Kiln's
//! path again with every input one byte off its allocation's alignment (`kiln-unaligned`), as a
//! binary tensor lies in a request body, which ONNX Runtime is given a copy of.
//!
//!   taskset -c 0 cargo bench -p kiln-backend-ort --bench engine_call [-- FILTER]
//!
//! Env: MODELS (examples, default `mlp ranker`), BATCHES (default `64 1`), ROUNDS (default 3),
//! KILN_ORT_LIBRARY / ORT_DYLIB_PATH (else the `onnxruntime` package of the project's Python),
//! EVICT_KIB (default 0: off): before every call, write a buffer of that many KiB, as a server's
//! network work between two batches evicts the engine's weights and buffers from the caches
//! (each call is then timed on its own, which adds the clock reads to every figure).
//!
//! Each model and batch runs two kinds of input: `normal`, the raw script's (floats standard
//! normal, ids 0), and `pa`, what perf_analyzer sends in `bench/ort/run.sh` (random bytes for
//! floats, zeros for the ranker, which it runs with `--input-data zero`). The variants of one
//! model, batch and input take turns within every round (criterion measures each in turn, then
//! the next round starts), and the summary at the end gives each variant's mean time per call and
//! its ratio to `direct` over all rounds.

use criterion::{BenchmarkId, Criterion};
use kiln_backend_ort::OrtBackend;
use kiln_core::backend::{Backend, LoadedModel, ModelInstance};
use kiln_core::{DataType, ModelConfig, Tensor};
use ort::session::Session;
use ort::value::TensorRef;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_string())
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn model_dir(model: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/models")
        .join(model)
}

/// The inputs of one call: `normal` floats N(0, 1) and ids 0 (the raw script), or `pa` random
/// bytes for floats (perf_analyzer's default), all zeros when `zeros` (its `--input-data zero`).
fn inputs(model: &dyn LoadedModel, rows: usize, kind: &str, zeros: bool) -> Vec<Tensor> {
    let mut state: u64 = 0x5eed;
    let mut next = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    model
        .io()
        .inputs
        .iter()
        .map(|spec| {
            let mut shape = vec![rows as i64];
            shape.extend(spec.dims.iter().map(|&d| d.max(1)));
            let n = shape.iter().product::<i64>() as usize;
            match spec.data_type {
                DataType::Fp32 => {
                    let v: Vec<f32> = (0..n)
                        .map(|_| match (kind, zeros) {
                            ("pa", true) => 0.0,
                            ("pa", false) => f32::from_bits(next() as u32),
                            _ => {
                                let u1 = ((next() >> 11) as f64 / (1u64 << 53) as f64).max(1e-300);
                                let u2 = (next() >> 11) as f64 / (1u64 << 53) as f64;
                                ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos())
                                    as f32
                            }
                        })
                        .collect();
                    Tensor::from_vec(&spec.name, shape, &v)
                }
                DataType::Int64 => Tensor::from_vec(&spec.name, shape, &vec![0i64; n]),
                other => panic!("input '{}': {other} not handled by this bench", spec.name),
            }
        })
        .collect()
}

/// A session as the raw script builds it: intra-op and inter-op threads 1, the rest default.
fn direct_session(env: &ort::environment::Environment, file: &Path) -> Session {
    Session::builder(env)
        .and_then(|b| b.with_intra_threads(1).map_err(Into::into))
        .and_then(|b| b.with_inter_threads(1).map_err(Into::into))
        .and_then(|mut b| b.commit_from_file(file))
        .expect("direct session")
}

/// One call of the direct session on `x`, outputs copied out as the Python binding does.
fn direct_call(session: &mut Session, x: &[(String, Vec<i64>, Vec<u8>, DataType)]) -> usize {
    let values: Vec<(String, ort::session::SessionInputValue<'_>)> = x
        .iter()
        .map(|(name, shape, data, dtype)| {
            let v: ort::session::SessionInputValue<'_> = match dtype {
                DataType::Fp32 => {
                    // SAFETY: the bytes were written from f32 values; the Vec<u8> is the
                    // allocation of a Vec<f32> view below, so it is aligned (checked).
                    let (h, body, t) = unsafe { data.align_to::<f32>() };
                    assert!(h.is_empty() && t.is_empty());
                    TensorRef::from_array_view((shape.clone(), body))
                        .unwrap()
                        .into()
                }
                DataType::Int64 => {
                    // SAFETY: as above, for i64.
                    let (h, body, t) = unsafe { data.align_to::<i64>() };
                    assert!(h.is_empty() && t.is_empty());
                    TensorRef::from_array_view((shape.clone(), body))
                        .unwrap()
                        .into()
                }
                other => panic!("{other} not handled"),
            };
            (name.clone(), v)
        })
        .collect();
    let out = session.run(values).expect("direct run");
    let mut total = 0;
    for (_, v) in out.iter() {
        let (_, data) = v.try_extract_tensor::<f32>().expect("f32 output");
        total += data.to_vec().len();
    }
    total
}

/// The direct session's inputs: each Kiln tensor's bytes in an allocation aligned for 8 bytes.
fn direct_inputs(x: &[Tensor]) -> Vec<(String, Vec<i64>, Vec<u8>, DataType)> {
    x.iter()
        .map(|t| {
            let words: Vec<u64> = t
                .data
                .chunks(8)
                .map(|c| {
                    let mut b = [0u8; 8];
                    b[..c.len()].copy_from_slice(c);
                    u64::from_le_bytes(b)
                })
                .collect();
            let mut bytes = Vec::with_capacity(words.len() * 8);
            bytes.extend(words.iter().flat_map(|w| w.to_le_bytes()));
            bytes.truncate(t.data.len());
            (t.name.clone(), t.shape.clone(), bytes, t.dtype)
        })
        .collect()
}

/// The CPU time this thread has used: wall-clock time loses whatever share of the core other
/// processes take, CPU time much less.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// `x` with every tensor's bytes one byte past an allocation's start, as a binary tensor lies
/// in an HTTP or gRPC request: ONNX Runtime is then given a copy (`convert::to_ort`).
fn unaligned(x: &[Tensor]) -> Vec<Tensor> {
    x.iter()
        .map(|t| {
            let mut raw = vec![0u8];
            raw.extend_from_slice(&t.data);
            let mut u = t.clone();
            u.data = raw.into();
            u.data = u.data.slice(1..);
            u
        })
        .collect()
}

/// Wall-clock time, CPU time and calls of each variant, per model/batch and input.
type Totals = RefCell<BTreeMap<(String, String), BTreeMap<String, (Duration, Duration, u64)>>>;

/// Writes every cache line of `buf`, evicting what the caches held (the network thread's work
/// between two batches does the same to a server's engine call).
fn evict(buf: &mut [u8]) {
    for i in (0..buf.len()).step_by(64) {
        buf[i] = buf[i].wrapping_add(1);
    }
    std::hint::black_box(&*buf);
}

/// Times `iters` calls of `f`, adds them to `totals` and returns the wall-clock time. With a
/// non-empty `scratch`, the caches are evicted before every call, outside the timing.
fn timed(
    totals: &Totals,
    key: (&str, &str, &str),
    iters: u64,
    scratch: &mut [u8],
    mut f: impl FnMut(),
) -> Duration {
    let (mut wall, mut cpu) = (Duration::ZERO, Duration::ZERO);
    if scratch.is_empty() {
        let (c0, t0) = (thread_cpu(), Instant::now());
        for _ in 0..iters {
            f();
        }
        (wall, cpu) = (t0.elapsed(), thread_cpu() - c0);
    } else {
        for _ in 0..iters {
            evict(scratch);
            let (c0, t0) = (thread_cpu(), Instant::now());
            f();
            wall += t0.elapsed();
            cpu += thread_cpu() - c0;
        }
    }
    let mut t = totals.borrow_mut();
    let e = t
        .entry((key.0.to_string(), key.1.to_string()))
        .or_default()
        .entry(key.2.to_string())
        .or_default();
    e.0 += wall;
    e.1 += cpu;
    e.2 += iters;
    wall
}

fn main() {
    let mut c = Criterion::default()
        .configure_from_args()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20);
    let library = match kiln_testkit::ort_library_path() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("skipping: {e}");
            return;
        }
    };
    let backend = OrtBackend::new(Some(library));
    if let Err(e) = backend.probe() {
        eprintln!("skipping: {e}");
        return;
    }
    let runtime = kiln_backend_ort::library::runtime(None).expect("onnxruntime already loaded");
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let evict_kib: usize = std::env::var("EVICT_KIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut scratch = vec![0u8; evict_kib * 1024];
    let totals: Totals = RefCell::new(BTreeMap::new());
    let mut order = Vec::new();
    for model in env_list("MODELS", "mlp ranker") {
        let dir = model_dir(&model);
        let text = std::fs::read_to_string(dir.join("config.toml")).expect("config.toml");
        let config = ModelConfig::parse(&text, &model).expect("config");
        let loaded: Arc<dyn LoadedModel> = backend.load(&dir.join("1"), &config).expect("load");
        let mut instance: Box<dyn ModelInstance> = loaded
            .create_instance()
            .expect("an instance per worker")
            .expect("instance");
        let file = dir.join("1/model.onnx");
        let mut direct = direct_session(&runtime.env, &file);
        for batch in env_list("BATCHES", "64 1") {
            let rows: usize = batch.parse().expect("BATCHES: numbers");
            let case = format!("{model}/{rows}");
            for input in ["normal", "pa"] {
                let x = inputs(loaded.as_ref(), rows, input, model == "ranker");
                let dx = direct_inputs(&x);
                let ux = unaligned(&x);
                order.push((case.clone(), input.to_string()));
                for round in 0..rounds {
                    let mut g = c.benchmark_group(format!("{case}/{input}"));
                    g.bench_function(BenchmarkId::new("direct", round), |b| {
                        b.iter_custom(|iters| {
                            timed(
                                &totals,
                                (&case, input, "direct"),
                                iters,
                                &mut scratch,
                                || {
                                    std::hint::black_box(direct_call(&mut direct, &dx));
                                },
                            )
                        })
                    });
                    g.bench_function(BenchmarkId::new("kiln", round), |b| {
                        b.iter_custom(|iters| {
                            timed(&totals, (&case, input, "kiln"), iters, &mut scratch, || {
                                std::hint::black_box(instance.execute(&x).expect("kiln run"));
                            })
                        })
                    });
                    g.bench_function(BenchmarkId::new("kiln-unaligned", round), |b| {
                        b.iter_custom(|iters| {
                            let key = (case.as_str(), input, "kiln-unaligned");
                            timed(&totals, key, iters, &mut scratch, || {
                                std::hint::black_box(instance.execute(&ux).expect("kiln run"));
                            })
                        })
                    });
                    g.finish();
                }
            }
        }
    }
    println!(
        "\nper call over all rounds (warm-up included): wall-clock mean / CPU mean, and direct's \
         CPU time over the variant's (above 1: faster than direct)"
    );
    for key in order {
        let t = totals.borrow();
        let Some(variants) = t.get(&key) else {
            continue;
        };
        let mean = |v: &str| {
            variants.get(v).map(|(wall, cpu, n)| {
                let n = (*n).max(1) as f64;
                (wall.as_secs_f64() * 1e6 / n, cpu.as_secs_f64() * 1e6 / n)
            })
        };
        let base = mean("direct").map(|m| m.1);
        let cells: Vec<String> = variants
            .keys()
            .map(|v| {
                let (wall, cpu) = mean(v).unwrap_or((f64::NAN, f64::NAN));
                let ratio = base.map(|b| b / cpu).unwrap_or(f64::NAN);
                format!("{v} {wall:.1} / {cpu:.1} us ({ratio:.3}x)")
            })
            .collect();
        println!("  {} {}: {}", key.0, key.1, cells.join(", "));
    }
    c.final_summary();
}
