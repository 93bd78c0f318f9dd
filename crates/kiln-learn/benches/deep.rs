//! Deep training throughput: `DeepTrainer::train` on `examples/models/dlrm_small` (dense 13,
//! bottom 13-64-16, four tables of 1000 x 16 with 4 ids per feature and sum pooling, concat,
//! top 80-64-32-1), batches of 256, Adam (lr 0.001) on the MLPs and sparse AdaGrad (lr 0.01)
//! on the rows. One thread (the GEMMs run unparallelized). `bench/learn/deep.sh` runs it next
//! to the same training in PyTorch (`bench/learn/torch_deep.py`) and prints the ratio.
//!
//! `DEEP_BENCH_MODEL=DIR` benches another model directory (four sparse features of up to four
//! ids, 13 dense inputs).
//!
//! Inputs: 64 batches drawn once (ids uniform in 0..1000, dense N(0, 1), labels 1 with
//! probability 1/2), cycled.

use std::path::{Path, PathBuf};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kiln_learn::deep::{DeepConfig, DeepTrainer};
use kiln_learn::{Sample, Trainer};

const BATCH: usize = 256;
const POOL: usize = 64;

fn batches() -> Vec<Vec<Sample>> {
    let mut state = 0x5eed_u64;
    let mut next = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut unit = move || (next() >> 11) as f64 / (1u64 << 53) as f64;
    (0..POOL)
        .map(|b| {
            (0..BATCH)
                .map(|i| Sample {
                    id: format!("imp-{b}-{i}"),
                    ts_ms: 0,
                    label: unit() < 0.5,
                    keys: (0..4)
                        .map(|_| (0..4).map(|_| (unit() * 1000.0) as u64).collect())
                        .collect(),
                    dense: (0..13)
                        .map(|_| {
                            let u = unit().max(1e-300);
                            ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * unit()).cos()) as f32
                        })
                        .collect(),
                    seen_ms: 0,
                })
                .collect()
        })
        .collect()
}

fn train(c: &mut Criterion) {
    let dir = std::env::var_os("DEEP_BENCH_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/models/dlrm_small")
        });
    let mut trainer = DeepTrainer::open(&dir, DeepConfig::default()).expect("dlrm_small loads");
    let batches = batches();
    let mut g = c.benchmark_group("deep_train");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.sample_size(50);
    let mut i = 0;
    g.bench_function("dlrm_small_batch256", |b| {
        b.iter(|| {
            i = (i + 1) % POOL;
            trainer.train(&batches[i])
        })
    });
    g.finish();
}

criterion_group!(benches, train);
criterion_main!(benches);
