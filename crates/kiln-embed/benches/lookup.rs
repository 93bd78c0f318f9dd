//! Lookup + sum pooling throughput, in keys per second, of a `kiln_embed::Table` against a
//! plain `std::collections::HashMap<u64, Vec<f32>>` holding the same rows, in the same run.
//!
//! Workload: dim 64, f32 rows, tables of 1M rows (10M as well with `KILN_EMBED_BENCH_10M=1`,
//! ~6 GB of memory for both structures). Each iteration pools one batch of 512 samples x 20
//! ids (10,240 keys, like one sparse feature of a DLRM batch) with sum pooling into a reused
//! output buffer. Keys are drawn uniformly from the table, or Zipf-distributed (exponent 1.05,
//! ranks scattered over the key space); a pool of 64 batches is generated up front and cycled
//! through, so key generation is not measured and consecutive batches touch different rows.
//! All keys are present (no misses).
//!
//! Variants: `kiln` (one thread, hashed layout), `kiln_2threads` (the batch split in two
//! halves on two scoped threads, each with its own scratch; includes the thread spawn cost),
//! the same two for the direct layout (`key_space = rows`: keys are row numbers, as for ids
//! bucketized into the table), and `hashmap`
//! (SipHash `HashMap::get` per key and an in-order sum, one thread). Throughput is reported
//! as elements = keys per iteration.

use std::collections::HashMap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kiln_embed::{mix64, LookupScratch, MultiHot, Pooling, Table, TableConfig};

const DIM: usize = 64;
const BATCH: usize = 512;
const IDS: usize = 20;
const POOL: usize = 64;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.0)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn build(rows: u64) -> (Table, Table, HashMap<u64, Vec<f32>>) {
    let mut cfg = TableConfig::new("bench", DIM);
    cfg.initial_rows = rows as usize;
    let table = Table::new(cfg.clone()).unwrap();
    cfg.key_space = Some(rows);
    let direct = Table::new(cfg).unwrap();
    let mut map = HashMap::with_capacity(rows as usize);
    let chunk = 16_384u64;
    let mut start = 0;
    while start < rows {
        let keys: Vec<u64> = (start..(start + chunk).min(rows)).collect();
        let values: Vec<f32> = keys
            .iter()
            .flat_map(|&k| (0..DIM).map(move |j| ((k + j as u64) % 97) as f32 * 0.01))
            .collect();
        table.upsert(&keys, &values, None).unwrap();
        direct.upsert(&keys, &values, None).unwrap();
        for (k, row) in keys.iter().zip(values.chunks_exact(DIM)) {
            map.insert(*k, row.to_vec());
        }
        start += chunk;
    }
    (table, direct, map)
}

fn uniform_keys(rows: u64, n: usize) -> Vec<u64> {
    let mut rng = Rng(1);
    (0..n).map(|_| rng.next() % rows).collect()
}

/// Zipf(1.05) ranks by inverse CDF, then rank -> key through a bijection of [0, rows).
fn zipf_keys(rows: u64, n: usize) -> Vec<u64> {
    let mut cdf = Vec::with_capacity(rows as usize);
    let mut acc = 0.0f64;
    for r in 1..=rows {
        acc += (r as f64).powf(-1.05);
        cdf.push(acc);
    }
    let mut rng = Rng(2);
    // Multiplying by an odd constant mod 2^k and rejecting out-of-range values is a cheap
    // permutation: scatter hot ranks across the key space.
    let bits = 64 - (rows - 1).leading_zeros();
    let scatter = |mut x: u64| loop {
        x = x
            .wrapping_mul(0x9e37_79b9_7f4a_7c15 | 1)
            .wrapping_add(12345)
            & ((1u64 << bits) - 1);
        if x < rows {
            return x;
        }
    };
    (0..n)
        .map(|_| {
            let u = rng.unit() * acc;
            let rank = cdf.partition_point(|&c| c < u) as u64;
            scatter(rank.min(rows - 1))
        })
        .collect()
}

fn hashmap_sum(map: &HashMap<u64, Vec<f32>>, ids: &[u64], out: &mut [f32]) {
    out.fill(0.0);
    for (sample, o) in ids.chunks_exact(IDS).zip(out.chunks_exact_mut(DIM)) {
        for k in sample {
            if let Some(row) = map.get(k) {
                o.iter_mut().zip(row).for_each(|(a, b)| *a += *b);
            }
        }
    }
}

fn bench_rows(c: &mut Criterion, rows: u64, label: &str) {
    let (table, direct, map) = build(rows);
    let keys_per_batch = BATCH * IDS;
    for (dist, keys) in [
        ("uniform", uniform_keys(rows, POOL * keys_per_batch)),
        ("zipf", zipf_keys(rows, POOL * keys_per_batch)),
    ] {
        let mut g = c.benchmark_group(format!("lookup_sum_dim64/{label}"));
        g.throughput(Throughput::Elements(keys_per_batch as u64));
        g.sample_size(20);
        g.warm_up_time(std::time::Duration::from_secs(1));
        g.measurement_time(std::time::Duration::from_secs(4));
        let batches: Vec<&[u64]> = keys.chunks_exact(keys_per_batch).collect();
        let mut out = vec![0f32; BATCH * DIM];

        for (name, table) in [("kiln", &table), ("kiln_direct", &direct)] {
            let mut scratch = LookupScratch::default();
            let mut i = 0;
            g.bench_function(BenchmarkId::new(name, dist), |b| {
                b.iter(|| {
                    let ids = batches[i % POOL];
                    i += 1;
                    let input = MultiHot::Padded {
                        ids,
                        width: IDS,
                        padding: None,
                    };
                    table
                        .lookup(&input, Pooling::Sum, &mut out, &mut scratch)
                        .unwrap();
                    black_box(&out);
                })
            });

            let mut scratches = [LookupScratch::default(), LookupScratch::default()];
            let mut i = 0;
            g.bench_function(BenchmarkId::new(format!("{name}_2threads"), dist), |b| {
                b.iter(|| {
                    let ids = batches[i % POOL];
                    i += 1;
                    let (ids_a, ids_b) = ids.split_at(ids.len() / 2);
                    let half = out.len() / 2;
                    let (out_a, out_b) = out.split_at_mut(half);
                    let [sa, sb] = &mut scratches;
                    std::thread::scope(|s| {
                        s.spawn(|| {
                            let input = MultiHot::Padded {
                                ids: ids_b,
                                width: IDS,
                                padding: None,
                            };
                            table.lookup(&input, Pooling::Sum, out_b, sb).unwrap();
                        });
                        let input = MultiHot::Padded {
                            ids: ids_a,
                            width: IDS,
                            padding: None,
                        };
                        table.lookup(&input, Pooling::Sum, out_a, sa).unwrap();
                    });
                    black_box(&out);
                })
            });
        }
        let mut i = 0;
        g.bench_function(BenchmarkId::new("hashmap", dist), |b| {
            b.iter(|| {
                let ids = batches[i % POOL];
                i += 1;
                hashmap_sum(&map, ids, &mut out);
                black_box(&out);
            })
        });
        g.finish();
    }
}

fn lookup(c: &mut Criterion) {
    bench_rows(c, 1_000_000, "1M");
    if std::env::var_os("KILN_EMBED_BENCH_10M").is_some_and(|v| v == "1") {
        bench_rows(c, 10_000_000, "10M");
    }
}

criterion_group!(benches, lookup);
criterion_main!(benches);
