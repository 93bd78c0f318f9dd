//! Lookups running while deltas apply never see a torn row: every row written has all its
//! elements equal, so a mix of an old and a new row shows up as unequal elements.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::{config, delta, Rng};
use kiln_embed::{LookupScratch, MultiHot, Pooling, StorageType, Table};

const DIM: usize = 64;
const KEYS: u64 = 2000;

fn run(storage: StorageType, direct: bool) {
    let mut cfg = config(DIM);
    cfg.storage = storage;
    cfg.shards = 16;
    cfg.key_space = direct.then_some(KEYS);
    let table = Arc::new(Table::new(cfg).unwrap());
    let all: Vec<u64> = (0..KEYS).collect();
    table
        .apply(&delta("trainer", 1, DIM, &all, |_| 1.0))
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..3)
        .map(|t| {
            let (table, stop) = (table.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut rng = Rng(t);
                let mut scratch = LookupScratch::default();
                let (mut checked, mut out) = (0u64, vec![0f32; 256 * DIM]);
                while !stop.load(Ordering::Relaxed) || checked == 0 {
                    let keys: Vec<u64> = (0..256).map(|_| rng.below(KEYS + 100)).collect();
                    table.gather(&keys, &mut out, &mut scratch).unwrap();
                    for row in out.chunks_exact(DIM) {
                        assert!(row.iter().all(|&x| x == row[0]), "torn row: {row:?}");
                    }
                    // Concat keeps rows apart: each part must be a whole row too.
                    let input = MultiHot::Padded {
                        ids: &keys,
                        width: 8,
                        padding: None,
                    };
                    let mut cat = vec![0f32; 32 * 8 * DIM];
                    table
                        .lookup(&input, Pooling::Concat { k: 8 }, &mut cat, &mut scratch)
                        .unwrap();
                    for row in cat.chunks_exact(DIM) {
                        assert!(
                            row.iter().all(|&x| x == row[0]),
                            "torn row in concat: {row:?}"
                        );
                    }
                    checked += 1;
                }
                checked
            })
        })
        .collect();
    let mut rng = Rng(99);
    let mut out = vec![0f32; DIM];
    for seq in 2..=1500u64 {
        let keys: Vec<u64> = (0..64).map(|_| rng.below(KEYS)).collect();
        let mut d = delta("trainer", seq, DIM, &keys, |_| (seq % 2000) as f32);
        d.tombstones = vec![rng.below(KEYS)];
        d.tombstones.retain(|t| !keys.contains(t));
        table.apply(&d).unwrap();
        // The next lookup after an acknowledged delta sees it.
        assert!(table.get_into(keys[0], &mut out).unwrap());
        assert_eq!(out[0], (seq % 2000) as f32);
        if let Some(&t) = d.tombstones.first() {
            assert!(!table.contains(t));
        }
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        assert!(r.join().unwrap() > 0);
    }
    assert_eq!(table.last_sequence("trainer"), Some(1500));
}

#[test]
fn no_torn_rows_f32() {
    run(StorageType::F32, false);
}

#[test]
fn no_torn_rows_f16() {
    run(StorageType::F16, false);
}

#[test]
fn no_torn_rows_direct_f32() {
    run(StorageType::F32, true);
}

#[test]
fn no_torn_rows_direct_f16() {
    run(StorageType::F16, true);
}
