//! Pipeline operations on the recommend example's sizes: `retrieve` (top 1000 of the 100,000
//! items of `examples/models/recommend/1/items.safetensors`, one query) and `topk` (100 of
//! 1000 and 1000 of 100,000 scores), each beside a baseline measured in the same run: the
//! straightforward way (a dot-product loop, or a full sort of the scores). And a search after a
//! delta rewriting 64 present rows (patched into the dense copy) beside one after a delta that
//! adds or removes a row (the copy rebuilt from the table, as every delta once did).
//!
//!   cargo bench -p kiln-runtime --bench retrieve

use criterion::{criterion_group, criterion_main, Criterion};
use kiln_core::{SparseParameters, Tensor};
use kiln_embed::Delta;
use kiln_runtime::pipeline::ops::topk;
use kiln_runtime::pipeline::retrieve::{ItemIndex, ItemTables};
use std::hint::black_box;
use std::path::Path;

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/models/recommend/1");
    let index = ItemIndex::load(&dir, "items", "recommend").expect("examples/models/recommend");
    let dim = index.dim();
    let query = Tensor::from_vec("query", vec![1, dim as i64], &values(dim, 1));
    c.bench_function("retrieve 1000 of 100k, ids+scores", |b| {
        b.iter(|| black_box(index.search(&query, 1000, false).unwrap()))
    });
    c.bench_function("retrieve 1000 of 100k, with embeddings", |b| {
        b.iter(|| black_box(index.search(&query, 1000, true).unwrap()))
    });
    let q8 = Tensor::from_vec("query", vec![8, dim as i64], &values(8 * dim, 2));
    c.bench_function("retrieve 1000 of 100k, 8 queries", |b| {
        b.iter(|| black_box(index.search(&q8, 1000, false).unwrap()))
    });
    // baseline: a dot product per item over a row-major copy of the table, then a full sort
    let items = values(100_000 * dim, 9);
    let q = values(dim, 1);
    c.bench_function("baseline retrieve: dot loop + full sort", |b| {
        b.iter(|| {
            let mut scored: Vec<(f32, usize)> = items
                .chunks_exact(dim)
                .enumerate()
                .map(|(i, row)| (row.iter().zip(&q).map(|(a, b)| a * b).sum::<f32>(), i))
                .collect();
            scored.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            scored.truncate(1000);
            black_box(scored)
        })
    });
    let big = Tensor::from_vec("s", vec![100_000], &values(100_000, 3));
    let raw = values(100_000, 3);
    c.bench_function("baseline topk: full sort of 100k", |b| {
        b.iter(|| {
            let mut idx: Vec<usize> = (0..raw.len()).collect();
            idx.sort_unstable_by(|&a, &b| raw[b].total_cmp(&raw[a]).then(a.cmp(&b)));
            idx.truncate(1000);
            black_box(idx)
        })
    });
    c.bench_function("topk 1000 of 100k", |b| {
        b.iter(|| black_box(topk(&big, 1000).unwrap()))
    });
    let small = Tensor::from_vec("s", vec![1000], &values(1000, 4));
    c.bench_function("topk 100 of 1000", |b| {
        b.iter(|| black_box(topk(&small, 100).unwrap()))
    });

    let tables = ItemTables(vec![index.clone()]);
    let mut seq = 0u64;
    let mut apply = |keys: Vec<u64>, tombstones: Vec<u64>| {
        seq += 1;
        let delta = Delta {
            source: "bench".into(),
            seq,
            dim,
            values: values(keys.len() * dim, seq),
            keys,
            tombstones,
            ..Default::default()
        };
        tables.apply_delta("items", &delta.encode()).unwrap();
    };
    // keys of the file's rows are 0..100k; u64::MAX is never one of them
    c.bench_function("delta of 64 rewritten rows, then retrieve (patched)", |b| {
        b.iter(|| {
            apply((0..64).map(|i| (i * 1543) % 100_000).collect(), vec![]);
            black_box(index.search(&query, 1000, false).unwrap())
        })
    });
    let mut added = false;
    c.bench_function(
        "baseline: delta adding or removing a row, then retrieve (rebuilt)",
        |b| {
            b.iter(|| {
                if added {
                    apply(vec![], vec![u64::MAX]);
                } else {
                    apply(vec![u64::MAX], vec![]);
                }
                added = !added;
                black_box(index.search(&query, 1000, false).unwrap())
            })
        },
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
