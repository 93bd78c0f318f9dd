//! Property tests: pooled lookups against a naive implementation over a `HashMap`.

mod common;

use std::collections::HashMap;

use common::config;
use kiln_embed::{keys_from_i64, DefaultRow, LookupScratch, MultiHot, Pooling, StorageType, Table};
use proptest::prelude::*;

const PAD: u64 = u64::MAX;

/// The obvious implementation: per sample, in order, skip padding, fetch or default, pool.
fn naive(
    rows: &HashMap<u64, Vec<f32>>,
    default: &dyn Fn(u64) -> Vec<f32>,
    samples: &[Vec<u64>],
    pooling: Pooling,
    dim: usize,
) -> Vec<f32> {
    let mut out = Vec::new();
    for s in samples {
        let ids: Vec<u64> = s.iter().copied().filter(|&k| k != PAD).collect();
        let fetch = |k: u64| rows.get(&k).cloned().unwrap_or_else(|| default(k));
        match pooling {
            Pooling::Sum | Pooling::Mean => {
                let mut acc = vec![0f32; dim];
                for &k in &ids {
                    acc.iter_mut().zip(fetch(k)).for_each(|(a, v)| *a += v);
                }
                if pooling == Pooling::Mean && !ids.is_empty() {
                    acc.iter_mut().for_each(|a| *a /= ids.len() as f32);
                }
                out.extend(acc);
            }
            Pooling::Concat { k } => {
                for i in 0..k {
                    match ids.get(i) {
                        Some(&id) => out.extend(fetch(id)),
                        None => out.extend(std::iter::repeat_n(0.0, dim)),
                    }
                }
            }
        }
    }
    out
}

fn pooling() -> impl Strategy<Value = Pooling> {
    prop_oneof![
        Just(Pooling::Sum),
        Just(Pooling::Mean),
        (1usize..5).prop_map(|k| Pooling::Concat { k })
    ]
}

fn close(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| (x - y).abs() <= 1e-4 * (1.0 + x.abs().max(y.abs())))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Integer-valued rows make every sum exact, so results must be identical whatever the
    /// summation order; mean is compared with a tolerance.
    #[test]
    fn padded_pooling_matches_naive(
        dim in 1usize..20,
        stored in prop::collection::vec(0u64..40, 0..40),
        samples in prop::collection::vec(prop::collection::vec(prop_oneof![3 => 0u64..60, 1 => Just(PAD)], 5), 0..12),
        pooling in pooling(),
        half in any::<bool>(),
        hash_default in any::<bool>(),
        shards in prop_oneof![Just(1usize), Just(4), Just(64)],
        direct in any::<bool>(),
    ) {
        let mut c = config(dim);
        c.shards = shards;
        // direct layout over keys 0..50: looked-up ids 50..60 are outside it and miss
        c.key_space = direct.then_some(50);
        c.storage = if half { StorageType::F16 } else { StorageType::F32 };
        if hash_default {
            c.default_row = DefaultRow::HashInit { seed: 7, scale: 0.5 };
        }
        let t = Table::new(c).unwrap();
        let mut model = HashMap::new();
        for &k in &stored {
            let row: Vec<f32> = (0..dim).map(|j| ((k * 31 + j as u64) % 17) as f32 - 8.0).collect();
            t.upsert(&[k], &row, None).unwrap();
            model.insert(k, row);
        }
        let default = |k: u64| t.default_row(k);
        let expected = naive(&model, &default, &samples, pooling, dim);
        let flat: Vec<u64> = samples.iter().flatten().copied().collect();
        let mut out = vec![f32::NAN; expected.len()];
        let mut scratch = LookupScratch::default();
        let stats = t.lookup(&MultiHot::Padded { ids: &flat, width: 5, padding: Some(PAD) }, pooling, &mut out, &mut scratch).unwrap();
        if pooling == Pooling::Mean || hash_default {
            prop_assert!(close(&out, &expected), "{:?} vs {:?}", out, expected);
        } else {
            prop_assert_eq!(&out, &expected);
        }
        let looked_up: usize = samples.iter().map(|s| {
            let n = s.iter().filter(|&&k| k != PAD).count();
            match pooling { Pooling::Concat { k } => n.min(k), _ => n }
        }).sum();
        prop_assert_eq!(stats.keys, looked_up);

        // The ragged form of the same ids gives the same output, bit for bit.
        let lengths: Vec<u32> = samples.iter().map(|s| s.len() as u32).collect();
        let mut ragged = vec![f32::NAN; expected.len()];
        t.lookup(&MultiHot::Ragged { values: &flat, lengths: &lengths, padding: Some(PAD) }, pooling, &mut ragged, &mut scratch).unwrap();
        prop_assert_eq!(out.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), ragged.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
    }

    /// With arbitrary float rows, a batch equals its samples looked up one by one, bit for bit,
    /// and stays within rounding of the naive in-order sum.
    #[test]
    fn batched_equals_one_by_one(
        dim in 1usize..40,
        values in prop::collection::vec(-10.0f32..10.0, 50),
        lengths in prop::collection::vec(0u32..9, 1..10),
        ids in prop::collection::vec(0u64..70, 80),
        pooling in pooling(),
    ) {
        let t = Table::new(config(dim)).unwrap();
        let mut model = HashMap::new();
        for k in 0..50u64 {
            let row: Vec<f32> = (0..dim).map(|j| values[(k as usize + j) % 50] * (1.0 + j as f32 * 0.01)).collect();
            t.upsert(&[k], &row, None).unwrap();
            model.insert(k, row);
        }
        let total: usize = lengths.iter().map(|&l| l as usize).sum();
        let flat: Vec<u64> = (0..total).map(|i| ids[i % ids.len()]).collect();
        let w = pooling.output_width(dim);
        let mut batch = vec![0f32; lengths.len() * w];
        let mut scratch = LookupScratch::default();
        t.lookup(&MultiHot::Ragged { values: &flat, lengths: &lengths, padding: None }, pooling, &mut batch, &mut scratch).unwrap();
        let mut off = 0;
        let mut samples = Vec::new();
        for (i, &len) in lengths.iter().enumerate() {
            let one = &flat[off..off + len as usize];
            samples.push(one.to_vec());
            let mut single = vec![0f32; w];
            t.lookup(&MultiHot::Ragged { values: one, lengths: &[len], padding: None }, pooling, &mut single, &mut scratch).unwrap();
            prop_assert_eq!(single.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), batch[i * w..(i + 1) * w].iter().map(|x| x.to_bits()).collect::<Vec<_>>());
            off += len as usize;
        }
        let expected = naive(&model, &|_| vec![0.0; dim], &samples, pooling, dim);
        prop_assert!(close(&batch, &expected), "{:?} vs {:?}", batch, expected);
    }
}

#[test]
fn int64_ids_with_minus_one_padding() {
    let t = Table::new(config(2)).unwrap();
    t.upsert(&[1, 2], &[1.0, 2.0, 10.0, 20.0], None).unwrap();
    let ids: Vec<i64> = vec![1, 2, -1, 2, -1, -1];
    let mut out = vec![0f32; 4];
    let input = MultiHot::Padded {
        ids: keys_from_i64(&ids),
        width: 3,
        padding: Some(u64::MAX),
    };
    t.lookup(
        &input,
        Pooling::Mean,
        &mut out,
        &mut LookupScratch::default(),
    )
    .unwrap();
    assert_eq!(out, vec![5.5, 11.0, 10.0, 20.0]);
}

#[test]
fn bad_inputs_are_refused() {
    let t = Table::new(config(2)).unwrap();
    let mut s = LookupScratch::default();
    let mut out = vec![0f32; 4];
    let e = t.lookup(
        &MultiHot::Padded {
            ids: &[1, 2, 3],
            width: 2,
            padding: None,
        },
        Pooling::Sum,
        &mut out,
        &mut s,
    );
    assert!(e.unwrap_err().to_string().contains("do not divide"));
    let e = t.lookup(
        &MultiHot::Ragged {
            values: &[1, 2, 3],
            lengths: &[1, 1],
            padding: None,
        },
        Pooling::Sum,
        &mut out,
        &mut s,
    );
    assert!(e.unwrap_err().to_string().contains("lengths sum to 2"));
    let e = t.lookup(
        &MultiHot::Padded {
            ids: &[1, 2],
            width: 2,
            padding: None,
        },
        Pooling::Sum,
        &mut out,
        &mut s,
    );
    assert!(e.unwrap_err().to_string().contains("expected 2"));
    assert_eq!(t.metrics().snapshot().lookup_batches, 0);
}

#[test]
fn lookups_never_insert_and_count_misses() {
    let t = Table::new(config(2)).unwrap();
    t.upsert(&[1], &[1.0, 1.0], None).unwrap();
    let mut out = vec![0f32; 6];
    let stats = t
        .gather(&[1, 5, 6], &mut out, &mut LookupScratch::default())
        .unwrap();
    assert_eq!((stats.keys, stats.misses), (3, 2));
    assert_eq!(out, vec![1.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
    assert_eq!(t.len(), 1);
    let m = t.metrics().snapshot();
    assert_eq!((m.lookup_keys, m.misses, m.lookup_batches), (3, 2, 1));
}

#[test]
fn hash_init_default_is_deterministic_and_bounded() {
    let mut c = config(8);
    c.default_row = DefaultRow::HashInit {
        seed: 42,
        scale: 0.125,
    };
    let a = Table::new(c.clone()).unwrap();
    c.shards = 1;
    let b = Table::new(c).unwrap();
    let (mut oa, mut ob) = (vec![0f32; 16], vec![0f32; 16]);
    a.gather(&[3, 4], &mut oa, &mut LookupScratch::default())
        .unwrap();
    b.gather(&[3, 4], &mut ob, &mut LookupScratch::default())
        .unwrap();
    assert_eq!(oa, ob);
    assert_ne!(oa[..8], oa[8..]);
    assert!(oa.iter().all(|x| x.abs() <= 0.125 && *x != 0.0));
    assert_eq!(oa[..8], a.default_row(3)[..]);
}
