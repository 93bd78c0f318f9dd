//! The direct layout (keys are row numbers in `0..key_space`): same answers as the hashed
//! layout, writes outside the key space refused without changing anything, TTL and
//! tombstones, snapshots both ways, and the settings it refuses.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{config, delta, Rng};
use kiln_embed::{
    EmbedError, LookupScratch, ManualClock, MultiHot, Pooling, StorageType, Table, TableConfig,
};

const DIM: usize = 8;
const ROWS: u64 = 10_000;

fn direct_config() -> TableConfig {
    let mut c = config(DIM);
    c.key_space = Some(ROWS);
    c
}

fn fill(k: u64) -> f32 {
    (k % 1000) as f32 * 0.5
}

#[test]
fn lookups_match_the_hashed_layout() {
    let direct = Table::new(direct_config()).unwrap();
    let hashed = Table::new(config(DIM)).unwrap();
    let mut rng = Rng(3);
    let keys: Vec<u64> = (0..4_000).map(|_| rng.below(ROWS)).collect();
    for t in [&direct, &hashed] {
        t.apply(&delta("trainer", 1, DIM, &keys, fill)).unwrap();
    }
    assert_eq!(direct.len(), hashed.len());
    // ids over the whole range and past it (misses), with -1 padding
    let ids: Vec<u64> = (0..512 * 20)
        .map(|i| match i % 7 {
            0 => u64::MAX,
            1 => ROWS + rng.below(100),
            _ => rng.below(ROWS),
        })
        .collect();
    for pooling in [Pooling::Sum, Pooling::Mean, Pooling::Concat { k: 3 }] {
        let input = MultiHot::Padded {
            ids: &ids,
            width: 20,
            padding: Some(u64::MAX),
        };
        let n = 512 * pooling.output_width(DIM);
        let (mut a, mut b) = (vec![0f32; n], vec![0f32; n]);
        let mut scratch = LookupScratch::default();
        let sa = direct
            .lookup(&input, pooling, &mut a, &mut scratch)
            .unwrap();
        let sb = hashed
            .lookup(&input, pooling, &mut b, &mut scratch)
            .unwrap();
        assert_eq!(sa, sb, "{pooling:?}");
        assert!(sa.misses > 0);
        // integer halves: every sum is exact, so the order of summation cannot matter
        assert_eq!(a, b, "{pooling:?}");
    }
}

#[test]
fn keys_outside_the_key_space_are_refused_and_change_nothing() {
    let t = Table::new(direct_config()).unwrap();
    t.apply(&delta("trainer", 1, DIM, &[1, 2], fill)).unwrap();
    let err = t
        .apply(&delta("trainer", 2, DIM, &[3, ROWS, 4], fill))
        .unwrap_err();
    assert!(
        matches!(err, EmbedError::KeyOutOfRange { key, key_space, .. } if key == ROWS && key_space == ROWS),
        "{err}"
    );
    assert!(err.to_string().contains("key space"), "{err}");
    assert!(
        !t.contains(3) && !t.contains(4),
        "nothing of the refused delta applied"
    );
    assert_eq!(
        t.last_sequence("trainer"),
        Some(1),
        "the refused delta was not consumed"
    );
    t.apply(&delta("trainer", 2, DIM, &[3, 4], fill)).unwrap();
    assert!(t.upsert(&[u64::MAX], &[0.0; DIM], None).is_err());
    assert_eq!(t.len(), 4);
    // lookups of keys past the range are plain misses
    assert_eq!(t.get(ROWS + 5), None);
    assert!(!t.contains(u64::MAX));
}

#[test]
fn ttl_and_tombstones_free_fixed_slots_for_reuse() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let mut c = direct_config();
    c.ttl = Some(Duration::from_secs(60));
    c.journal_evictions = true;
    let t = Table::with_clock(c, clock.clone()).unwrap();
    t.apply(&delta("trainer", 1, DIM, &[10, 11, 12], fill))
        .unwrap();
    clock.advance(Duration::from_secs(50));
    t.apply(&delta("trainer", 2, DIM, &[12], |_| 9.0)).unwrap();
    clock.advance(Duration::from_secs(20));
    assert_eq!(t.maintain().expired, 2);
    assert_eq!(t.drain_evicted().len(), 2);
    assert!(!t.contains(10) && !t.contains(11) && t.contains(12));
    let mut d = delta("trainer", 3, DIM, &[10], |_| 7.0);
    d.tombstones = vec![12];
    t.apply(&d).unwrap();
    assert_eq!(t.get(10), Some(vec![7.0; DIM]));
    assert_eq!(t.get(12), None);
    assert_eq!(t.len(), 1);
}

#[test]
fn snapshots_restore_into_either_layout() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.snap");
    let mut c = direct_config();
    c.storage = StorageType::F16;
    let t = Table::new(c).unwrap();
    let keys: Vec<u64> = (0..ROWS).step_by(3).collect();
    t.apply(&delta("trainer", 1, DIM, &keys, fill)).unwrap();
    t.snapshot_to(&path).unwrap();
    let (d, _) = Table::restore(direct_config(), &path).unwrap();
    let (h, _) = Table::restore(config(DIM), &path).unwrap();
    for k in 0..ROWS {
        assert_eq!(d.get(k), t.get(k), "key {k}");
        assert_eq!(h.get(k), t.get(k), "key {k}");
    }
    assert_eq!(d.last_sequence("trainer"), Some(1));

    // a hashed table's keys do not fit a direct table of 10,000 rows
    let wide = Table::new(config(DIM)).unwrap();
    wide.apply(&delta("trainer", 1, DIM, &[5, 1 << 40], fill))
        .unwrap();
    wide.snapshot_to(&path).unwrap();
    let err = Table::restore(direct_config(), &path).unwrap_err();
    assert!(matches!(err, EmbedError::SnapshotMismatch { .. }), "{err}");
    assert!(err.to_string().contains("key space"), "{err}");
}

#[test]
fn settings_a_direct_table_refuses() {
    let mut c = direct_config();
    c.memory_cap_bytes = Some(1 << 20);
    let err = Table::new(c).unwrap_err();
    assert!(err.to_string().contains("memory cap"), "{err}");
    let mut c = direct_config();
    c.key_space = Some(0);
    assert!(Table::new(c).is_err());
    // more shards than keys: the empty shards hold nothing and still answer
    let mut c = config(DIM);
    c.shards = 64;
    c.key_space = Some(5);
    let t = Table::new(c).unwrap();
    t.upsert(&[0, 4], &[1.0; 2 * DIM], None).unwrap();
    assert_eq!(t.get(4), Some(vec![1.0; DIM]));
    assert_eq!(t.get(3), None);
    assert_eq!(t.get(63), None);
}

#[test]
fn a_large_direct_table_is_allocated_up_front_and_reads_zero_rows_as_missing() {
    let mut c = TableConfig::new("big", 64);
    c.key_space = Some(200_000);
    let t = Table::new(c).unwrap();
    assert!(t.heap_bytes() >= 200_000 * 64 * 4);
    assert!(t.is_empty());
    t.upsert(&[199_999], &[2.0; 64], None).unwrap();
    assert_eq!(t.get(199_999), Some(vec![2.0; 64]));
    assert_eq!(t.get(0), None);
}
