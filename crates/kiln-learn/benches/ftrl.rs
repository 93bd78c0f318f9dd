//! FTRL training throughput, in samples per second, of `WideTrainer::train` against a plain
//! `std::collections::HashMap<u64, [f64; 3]>` FTRL (the same score-then-learn logic, SipHash,
//! one entry per key), in the same run.
//!
//! Workload: a wide-only model of 40 single-id features sharing one table; feature `f` draws
//! its key uniformly from its own 25,000 ids, so samples come from a 1M-key space. Labels come
//! from a planted model. Batches of 256 samples; a pool of 256 batches (65,536 samples) is
//! generated up front and cycled through. Before measuring, both learners see every key, so
//! the tables hold all 1M rows and the measurement is of steady-state updates, not inserts.
//!
//! Criterion reports each variant; a last line prints both in samples/s and the ratio, the
//! medians of five (`KILN_FTRL_BENCH_PASSES`) alternating timed passes over the pool, in this
//! run, by the wall clock and per CPU second of the benchmark's thread (when other processes
//! share the core, the wall-clock figure drops by their share; the CPU-time one much less).
//! Run it on one core: `taskset -c 0 cargo bench -p kiln-learn --no-default-features --bench
//! ftrl` (`-- --bench nothing` skips the criterion part; `KILN_FTRL_BENCH_IDS=250` for 10k keys).

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kiln_embed::mix64;
use kiln_learn::optim::ftrl::{self, FtrlParams};
use kiln_learn::wide::WideTrainer;
use kiln_learn::{Sample, Trainer};
use kiln_recsys::spec::RecsysSpec;

const FEATURES: usize = 40;
const BATCH: usize = 256;
const POOL: usize = 256;
const PARAMS: FtrlParams = FtrlParams {
    alpha: 0.05,
    beta: 1.0,
    l1: 1.0,
    l2: 1.0,
};

fn spec() -> RecsysSpec {
    let mut s = String::new();
    for f in 0..FEATURES {
        s += &format!(
            "[[sparse]]\nname = \"f{f}\"\ntable = \"wide\"\nmax_ids = 1\npart = \"wide\"\n"
        );
    }
    RecsysSpec::parse(&toml::from_str(&s).unwrap()).unwrap()
}

/// Ids per feature: 25,000 (1M keys in all), or `KILN_FTRL_BENCH_IDS`.
fn ids_per_feature() -> u64 {
    std::env::var("KILN_FTRL_BENCH_IDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(25_000)
}

fn key(f: usize, id: u64) -> u64 {
    mix64((f as u64) << 32 | id)
}

fn batches() -> Vec<Vec<Sample>> {
    let mut state = 1u64;
    let mut next = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(state)
    };
    (0..POOL)
        .map(|_| {
            (0..BATCH)
                .map(|_| {
                    let ids: Vec<u64> = (0..FEATURES).map(|_| next() % ids_per_feature()).collect();
                    // planted: a few features matter, by the parity of their id
                    let logit: f64 = ids[..4]
                        .iter()
                        .map(|&i| if i % 2 == 0 { 0.8 } else { -0.8 })
                        .sum();
                    let u = (next() >> 11) as f64 / (1u64 << 53) as f64;
                    Sample {
                        id: String::new(),
                        ts_ms: 0,
                        label: u < ftrl::sigmoid(logit),
                        keys: ids
                            .iter()
                            .enumerate()
                            .map(|(f, &i)| vec![key(f, i)])
                            .collect(),
                        dense: vec![],
                        seen_ms: 0,
                    }
                })
                .collect()
        })
        .collect()
}

/// The baseline: FTRL over a `HashMap<u64, [w, z, n]>`, score then learn per sample.
#[derive(Default)]
struct MapFtrl {
    rows: HashMap<u64, [f64; 3]>,
    bias: [f64; 3],
    scratch: Vec<u64>,
}

impl MapFtrl {
    fn train(&mut self, batch: &[Sample]) -> Vec<f32> {
        let mut probs = Vec::with_capacity(batch.len());
        for s in batch {
            self.scratch.clear();
            self.scratch.extend(s.keys.iter().flatten());
            let mut logit = self.bias[0];
            for k in &self.scratch {
                logit += self.rows.get(k).map_or(0.0, |r| r[0]);
            }
            let p = ftrl::sigmoid(logit);
            let err = p - if s.label { 1.0 } else { 0.0 };
            for &k in &self.scratch {
                ftrl::update_row(&PARAMS, self.rows.entry(k).or_default(), &[err]);
            }
            ftrl::update_row(&PARAMS, &mut self.bias, &[err]);
            probs.push(p as f32);
        }
        probs
    }
}

/// Every key once, so the tables are full before anything is measured.
fn warm(wide: &mut WideTrainer, map: &mut MapFtrl) {
    let all: Vec<Sample> = (0..ids_per_feature())
        .map(|id| Sample {
            id: String::new(),
            ts_ms: 0,
            label: id % 3 == 0,
            keys: (0..FEATURES).map(|f| vec![key(f, id)]).collect(),
            dense: vec![],
            seen_ms: 0,
        })
        .collect();
    for b in all.chunks(BATCH) {
        wide.train(b);
        map.train(b);
    }
    wide.drain_deltas();
}

/// Samples per second of `f` over the pool: by the wall clock, and by the CPU time of this
/// thread (which time slices taken by other processes on the same core do not inflate).
fn samples_per_sec(mut f: impl FnMut(&[Sample]), pool: &[Vec<Sample>]) -> (f64, f64) {
    let (started, cpu) = (Instant::now(), thread_cpu_secs());
    for b in pool {
        f(b);
    }
    let n = (pool.len() * BATCH) as f64;
    (
        n / started.elapsed().as_secs_f64(),
        n / (thread_cpu_secs() - cpu),
    )
}

/// CPU seconds this thread has run.
fn thread_cpu_secs() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

/// Alternating timed passes: 5, or `KILN_FTRL_BENCH_PASSES`.
fn passes() -> usize {
    std::env::var("KILN_FTRL_BENCH_PASSES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
}

fn bench(c: &mut Criterion) {
    let pool = batches();
    let mut wide = WideTrainer::new(&spec(), PARAMS).unwrap();
    let mut map = MapFtrl::default();
    warm(&mut wide, &mut map);

    let mut g = c.benchmark_group("ftrl_train");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(5));
    let mut i = 0;
    g.bench_function("wide_trainer", |b| {
        b.iter(|| {
            i = (i + 1) % POOL;
            black_box(wide.train(&pool[i]))
        })
    });
    g.bench_function("hashmap_f64", |b| {
        b.iter(|| {
            i = (i + 1) % POOL;
            black_box(map.train(&pool[i]))
        })
    });
    g.finish();

    // Alternating timed passes over the pool, each learner in turn, a drain before each pass
    // of the trainer (so touched-key tracking is paid as in a run that publishes); the
    // medians and their ratio are printed.
    let (mut ours, mut base, mut drain_ms, mut rows) = (vec![], vec![], vec![], 0);
    for _ in 0..passes() {
        let started = Instant::now();
        rows = wide
            .drain_deltas()
            .iter()
            .map(|d| d.keys.len())
            .sum::<usize>();
        drain_ms.push(started.elapsed().as_secs_f64() * 1e3);
        ours.push(samples_per_sec(|b| _ = black_box(wide.train(b)), &pool));
        base.push(samples_per_sec(|b| _ = black_box(map.train(b)), &pool));
    }
    let wall = |v: &[(f64, f64)]| median(v.iter().map(|p| p.0).collect());
    let cpu = |v: &[(f64, f64)]| median(v.iter().map(|p| p.1).collect());
    let n = ours.len();
    println!(
        "ftrl_train: WideTrainer {:.0} samples/s, HashMap<u64,[f64;3]> {:.0} samples/s, ratio {:.2}x ({FEATURES} features, {} keys, batch {BATCH}, medians of {n} alternating passes); per CPU second of the thread: {:.0} and {:.0}, ratio {:.2}x; drain of {rows} rows {:.1} ms",
        wall(&ours),
        wall(&base),
        wall(&ours) / wall(&base),
        FEATURES as u64 * ids_per_feature(),
        cpu(&ours),
        cpu(&base),
        cpu(&ours) / cpu(&base),
        median(drain_ms),
    );
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

criterion_group!(benches, bench);
criterion_main!(benches);
