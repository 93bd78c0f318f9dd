//! Memory cap, TTL, eviction tombstones and the admission filter.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{config, delta};
use kiln_embed::{AdmissionFilter, ApplyOutcome, ManualClock, Table, UpsertReport};

const DIM: usize = 8;

fn rows(keys: &[u64]) -> Vec<f32> {
    keys.iter()
        .flat_map(|&k| std::iter::repeat_n(k as f32, DIM))
        .collect()
}

#[test]
fn cap_evicts_least_recently_updated_to_80_percent() {
    let mut c = config(DIM);
    c.memory_cap_bytes = Some(0);
    let row_cost = Table::new(c.clone()).unwrap().row_cost_bytes();
    c.memory_cap_bytes = Some(100 * row_cost);
    c.journal_evictions = true;
    let t = Table::new(c).unwrap();
    let first: Vec<u64> = (0..100).collect();
    assert_eq!(t.upsert(&first, &rows(&first), None).unwrap().evicted, 0);
    assert_eq!(t.len(), 100);
    // Refresh keys 0..10 so they are the most recently updated of the first hundred.
    let fresh: Vec<u64> = (0..10).collect();
    t.upsert(&fresh, &rows(&fresh), None).unwrap();
    // One more row crosses the cap: down to 80 rows, i.e. 21 of the oldest go.
    let report = t.upsert(&[1000], &rows(&[1000]), None).unwrap();
    assert_eq!(
        report,
        UpsertReport {
            inserted: 1,
            updated: 0,
            rejected: 0,
            evicted: 21
        }
    );
    assert_eq!(t.len(), 80);
    assert!(t.metrics().snapshot().bytes <= 100 * row_cost * 8 / 10);
    for k in (0..10).chain([1000]).chain(31..100) {
        assert!(t.contains(k), "key {k} should stay");
    }
    for k in 10..31 {
        assert!(!t.contains(k), "key {k} should be evicted");
    }
    let mut evicted = t.drain_evicted();
    evicted.sort();
    assert_eq!(evicted, (10..31).collect::<Vec<_>>());
    assert!(t.drain_evicted().is_empty());
    assert_eq!(t.metrics().snapshot().evicted_cap, 21);
    // Evicted rows read as the default row.
    assert_eq!(t.get(15), None);
}

#[test]
fn cap_applies_to_deltas_on_the_server() {
    let mut c = config(DIM);
    c.memory_cap_bytes = Some(0);
    let row_cost = Table::new(c.clone()).unwrap().row_cost_bytes();
    c.memory_cap_bytes = Some(50 * row_cost);
    let t = Table::new(c).unwrap();
    let keys: Vec<u64> = (0..60).collect();
    match t.apply(&delta("a", 1, DIM, &keys, |k| k as f32)).unwrap() {
        ApplyOutcome::Applied { evicted, .. } => assert_eq!(evicted, 20),
        o => panic!("{o:?}"),
    }
    assert_eq!(t.len(), 40);
    // Within one delta, later rows are newer: the first 20 went.
    assert!(!t.contains(19) && t.contains(20) && t.contains(59));
}

#[test]
fn ttl_expires_rows_not_updated_recently_and_tombstones_reach_the_server() {
    let clock = Arc::new(ManualClock::new(1_000_000_000));
    let mut c = config(DIM);
    c.ttl = Some(Duration::from_secs(60));
    c.journal_evictions = true;
    let trainer = Table::with_clock(c, clock.clone()).unwrap();
    let server = Table::new(config(DIM)).unwrap();
    let keys: Vec<u64> = (0..20).collect();
    trainer.upsert(&keys, &rows(&keys), None).unwrap();
    server
        .apply(&delta("trainer", 1, DIM, &keys, |k| k as f32))
        .unwrap();
    clock.advance(Duration::from_secs(45));
    trainer.upsert(&keys[..5], &rows(&keys[..5]), None).unwrap();
    assert_eq!(trainer.maintain().expired, 0);
    clock.advance(Duration::from_secs(30));
    let report = trainer.maintain();
    assert_eq!((report.expired, report.capped), (15, 0));
    assert_eq!(trainer.len(), 5);
    assert_eq!(trainer.metrics().snapshot().evicted_ttl, 15);
    // The trainer publishes its evictions as tombstones.
    let mut d = delta("trainer", 2, DIM, &[], |_| 0.0);
    d.tombstones = trainer.drain_evicted();
    assert_eq!(d.tombstones.len(), 15);
    server.apply(&d).unwrap();
    assert_eq!(server.len(), 5);
    for k in 0..20 {
        assert_eq!(server.contains(k), k < 5);
    }
}

#[test]
fn admission_filter_holds_back_rare_keys() {
    let f = AdmissionFilter::new(1 << 12, 4, 3).unwrap();
    let t = Table::new(config(DIM)).unwrap();
    // Existing rows are always updated, whatever the filter says.
    t.upsert(&[7], &rows(&[7]), None).unwrap();
    for round in 1..=3u32 {
        assert_eq!(f.observe(1), round);
        let r = t.upsert(&[1, 7], &rows(&[1, 7]), Some(&f)).unwrap();
        if round < 3 {
            assert_eq!(
                (r.inserted, r.updated, r.rejected),
                (0, 1, 1),
                "round {round}"
            );
            assert!(!t.contains(1));
        } else {
            assert_eq!((r.inserted, r.updated, r.rejected), (1, 1, 0));
        }
    }
    assert!(t.contains(1));
    assert_eq!(t.metrics().snapshot().admission_rejected, 2);
    // Counts never fall below the truth; decay halves them.
    for k in 100..1100u64 {
        for _ in 0..(k % 4) {
            f.observe(k);
        }
    }
    for k in 100..1100u64 {
        assert!(f.estimate(k) >= (k % 4) as u32);
    }
    assert_eq!(f.estimate(1), 3);
    f.decay();
    assert_eq!(f.estimate(1), 1);
    assert!(!f.admits(1));
    assert!(AdmissionFilter::new(0, 4, 1).is_err());
}
