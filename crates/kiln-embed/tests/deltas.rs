//! Sequencing, validation and the binary encoding of deltas; metrics.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{config, delta};
use kiln_embed::{
    ApplyOutcome, Delta, EmbedCollector, EmbedError, GapPolicy, ManualClock, SequenceGap,
    StorageType, Table,
};

const DIM: usize = 4;

fn row(t: &Table, k: u64) -> Option<f32> {
    t.get(k).map(|r| r[0])
}

#[test]
fn duplicates_and_replays_change_nothing() {
    let t = Table::new(config(DIM)).unwrap();
    assert!(matches!(
        t.apply(&delta("a", 1, DIM, &[1, 2], |_| 1.0)).unwrap(),
        ApplyOutcome::Applied {
            rows: 2,
            inserted: 2,
            ..
        }
    ));
    assert!(matches!(
        t.apply(&delta("a", 2, DIM, &[1], |_| 2.0)).unwrap(),
        ApplyOutcome::Applied { .. }
    ));
    // Same sequence again with other content, and an older one: both ignored.
    assert_eq!(
        t.apply(&delta("a", 2, DIM, &[1, 3], |_| 9.0)).unwrap(),
        ApplyOutcome::Duplicate { last_applied: 2 }
    );
    assert_eq!(
        t.apply(&delta("a", 1, DIM, &[2], |_| 9.0)).unwrap(),
        ApplyOutcome::Duplicate { last_applied: 2 }
    );
    assert_eq!(row(&t, 1), Some(2.0));
    assert_eq!(row(&t, 2), Some(1.0));
    assert_eq!(row(&t, 3), None);
    let m = t.metrics().snapshot();
    assert_eq!(
        (m.deltas_applied, m.deltas_duplicate, m.deltas_rejected()),
        (2, 2, 2)
    );
    assert_eq!(m.last_sequence, 2);
    assert_eq!(m.rows, 2);
}

#[test]
fn sources_are_sequenced_independently() {
    let t = Table::new(config(DIM)).unwrap();
    t.apply(&delta("a", 1, DIM, &[1], |_| 1.0)).unwrap();
    t.apply(&delta("b", 1, DIM, &[2], |_| 2.0)).unwrap();
    t.apply(&delta("a", 2, DIM, &[3], |_| 3.0)).unwrap();
    assert_eq!(
        t.sources(),
        vec![("a".to_string(), 2), ("b".to_string(), 1)]
    );
}

#[test]
fn gap_is_refused_and_table_unchanged() {
    let t = Table::new(config(DIM)).unwrap();
    t.apply(&delta("a", 1, DIM, &[1], |_| 1.0)).unwrap();
    let err = t.apply(&delta("a", 3, DIM, &[1, 2], |_| 3.0)).unwrap_err();
    match &err {
        EmbedError::SequenceGap {
            source_id,
            expected,
            got,
            ..
        } => {
            assert_eq!((source_id.as_str(), *expected, *got), ("a", 2, 3));
        }
        e => panic!("expected a gap, got {e}"),
    }
    assert!(err.to_string().contains("expected 2, got 3"), "{err}");
    assert_eq!(row(&t, 1), Some(1.0));
    assert_eq!(row(&t, 2), None);
    assert_eq!(t.last_sequence("a"), Some(1));
    // Filling the gap and resending works.
    t.apply(&delta("a", 2, DIM, &[1], |_| 2.0)).unwrap();
    t.apply(&delta("a", 3, DIM, &[1, 2], |_| 3.0)).unwrap();
    assert_eq!(row(&t, 2), Some(3.0));
    assert_eq!(t.metrics().snapshot().deltas_gap, 1);
}

#[test]
fn gap_applied_and_reported_when_configured() {
    let mut c = config(DIM);
    c.gap_policy = GapPolicy::ApplyAndReport;
    let t = Table::new(c).unwrap();
    // A server that joins late sees the trainer's stream from seq 41.
    match t.apply(&delta("a", 41, DIM, &[1], |_| 1.0)).unwrap() {
        ApplyOutcome::Applied { gap, .. } => assert_eq!(
            gap,
            Some(SequenceGap {
                expected: 1,
                got: 41
            })
        ),
        o => panic!("{o:?}"),
    }
    assert!(matches!(
        t.apply(&delta("a", 42, DIM, &[1], |_| 2.0)).unwrap(),
        ApplyOutcome::Applied { gap: None, .. }
    ));
    // reset_source resynchronizes explicitly.
    t.reset_source("b", 10);
    assert!(matches!(
        t.apply(&delta("b", 10, DIM, &[2], |_| 1.0)).unwrap(),
        ApplyOutcome::Duplicate { .. }
    ));
    assert!(matches!(
        t.apply(&delta("b", 11, DIM, &[2], |_| 1.0)).unwrap(),
        ApplyOutcome::Applied { gap: None, .. }
    ));
}

#[test]
fn wrong_dim_is_refused() {
    let t = Table::new(config(DIM)).unwrap();
    let err = t.apply(&delta("a", 1, DIM + 1, &[1], |_| 1.0)).unwrap_err();
    assert!(
        matches!(err, EmbedError::DimMismatch { dim: 4, .. }),
        "{err}"
    );
    let mut d = delta("a", 1, DIM, &[1, 2], |_| 1.0);
    d.values.pop();
    assert!(matches!(
        t.apply(&d).unwrap_err(),
        EmbedError::DimMismatch { .. }
    ));
    let mut d = delta("a", 1, DIM, &[1], |_| 1.0);
    d.table = "other".into();
    let e = t.apply(&d).unwrap_err();
    assert!(matches!(e, EmbedError::WrongTable { .. }), "{e}");
    assert_eq!(
        e.to_string(),
        "delta for table \"other\" sent to table \"t\""
    );
    d.table = "t".into();
    assert!(t.apply(&d).is_ok());
    t.remove(&[1]);
    assert!(t.is_empty());
    assert_eq!(t.last_sequence("a"), Some(1));
    assert_eq!(t.metrics().snapshot().deltas_invalid, 3);
}

#[test]
fn tombstones_remove_rows() {
    let t = Table::new(config(DIM)).unwrap();
    t.apply(&delta("a", 1, DIM, &[1, 2, 3], |_| 1.0)).unwrap();
    let mut d = delta("a", 2, DIM, &[4], |_| 1.0);
    d.tombstones = vec![2, 3, 77];
    assert!(matches!(
        t.apply(&d).unwrap(),
        ApplyOutcome::Applied { removed: 2, .. }
    ));
    assert!(t.contains(1) && !t.contains(2) && !t.contains(3) && t.contains(4));
    assert_eq!(t.len(), 2);
    assert_eq!(t.metrics().snapshot().delta_tombstones, 2);
}

#[test]
fn encoding_round_trips() {
    let d = Delta {
        source: "trainer-7".into(),
        table: "user_id".into(),
        seq: 123_456_789_012,
        created_ms: 1_700_000_000_123,
        dim: 3,
        keys: vec![0, u64::MAX, 42],
        values: vec![1.0, -2.5, 0.125, 3.0, 4.0, 5.0, -0.0, 1e-3, 7.75],
        tombstones: vec![9, 10],
    };
    let bytes = d.encode();
    assert_eq!(&bytes[..4], b"KEDL");
    assert_eq!(bytes.len(), 40 + 9 + 7 + 24 + 36 + 16 + 4);
    assert_eq!(Delta::decode(&bytes).unwrap(), d);
    // f16: values rounded to half precision, everything else exact.
    let half = Delta::decode(&d.encode_as(StorageType::F16)).unwrap();
    assert_eq!(half.keys, d.keys);
    for (a, b) in half.values.iter().zip(&d.values) {
        assert!((a - b).abs() <= b.abs() * 1e-3, "{a} vs {b}");
    }
}

#[test]
fn damaged_encodings_are_refused() {
    let d = delta("a", 1, DIM, &[1, 2], |k| k as f32);
    let good = d.encode();
    let mut flipped = good.clone();
    flipped[50] ^= 0x10;
    let e = Delta::decode(&flipped).unwrap_err();
    assert!(e.to_string().contains("checksum mismatch"), "{e}");
    let e = Delta::decode(&good[..good.len() - 9]).unwrap_err();
    assert!(matches!(e, EmbedError::Delta(_)), "{e}");
    let e = Delta::decode(b"nope").unwrap_err();
    assert!(e.to_string().contains("shorter"), "{e}");
    let mut magic = good.clone();
    magic[0] = b'X';
    assert!(Delta::decode(&magic)
        .unwrap_err()
        .to_string()
        .contains("bad magic"));
}

#[test]
fn lag_and_prometheus_metrics() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let t = Table::with_clock(config(DIM), clock.clone()).unwrap();
    let mut d = delta("a", 1, DIM, &[1, 2], |_| 1.0);
    d.created_ms = 1_000_000 - 2_500;
    t.apply(&d).unwrap();
    assert_eq!(t.metrics().snapshot().lag_seconds, 2.5);
    clock.advance(Duration::from_secs(1));

    // two lookup calls: the latency histogram counts calls, whatever their size
    let mut out = vec![0f32; 3 * DIM];
    let mut scratch = kiln_embed::LookupScratch::default();
    t.gather(&[1, 2, 9], &mut out, &mut scratch).unwrap();
    t.gather(&[1], &mut out[..DIM], &mut scratch).unwrap();
    let h = t.metrics().snapshot().lookup_seconds;
    assert_eq!(h.count(), 2);
    assert!(h.sum_seconds > 0.0);

    let collector = EmbedCollector::default();
    collector.add(t.metrics().clone());
    let t2 = Table::new(kiln_embed::TableConfig::new("other", 8)).unwrap();
    collector.add(t2.metrics().clone());
    let mut registry = prometheus_client::registry::Registry::default();
    collector.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for needle in [
        "kiln_embed_table_rows{table=\"t\"} 2",
        "kiln_embed_table_memory_bytes{table=\"t\"}",
        "kiln_embed_deltas_applied_total{table=\"t\"} 1",
        "kiln_embed_deltas_rejected_total{table=\"t\",reason=\"gap\"} 0",
        "kiln_embed_delta_last_sequence{table=\"t\"} 1",
        "kiln_embed_delta_lag_seconds{table=\"t\"} 2.5",
        "kiln_embed_table_rows{table=\"other\"} 0",
        "kiln_embed_lookup_misses_total{table=\"other\"} 0",
        "# TYPE kiln_embed_lookup_duration_seconds histogram",
        "kiln_embed_lookup_duration_seconds_count{table=\"t\"} 2",
        "kiln_embed_lookup_duration_seconds_bucket{le=\"+Inf\",table=\"t\"} 2",
        "kiln_embed_lookup_duration_seconds_count{table=\"other\"} 0",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    assert_eq!(
        text.matches("# TYPE kiln_embed_table_rows gauge").count(),
        1,
        "{text}"
    );
}

#[test]
fn non_finite_values_are_refused_unless_the_table_allows_them() {
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let t = Table::new(config(DIM)).unwrap();
        let mut d = delta("a", 1, DIM, &[7, 8, 9], |_| 1.0);
        d.values[DIM + 2] = bad; // key 8, element 2
        let e = t.apply(&d).unwrap_err();
        assert!(
            matches!(
                e,
                EmbedError::NonFinite {
                    key: 8,
                    element: 2,
                    ..
                }
            ),
            "{e:?}"
        );
        let m = e.to_string();
        assert!(m.contains("table t") && m.contains("key 8"), "{m}");
        // nothing applied, and the sequence number is still due
        assert_eq!((t.get(7), t.last_sequence("a")), (None, None));
        assert_eq!(t.metrics().snapshot().deltas_invalid, 1);
        // f16-encoded deltas carry them too
        let decoded = Delta::decode(&d.encode_as(StorageType::F16)).unwrap();
        assert!(matches!(
            t.apply(&decoded),
            Err(EmbedError::NonFinite { key: 8, .. })
        ));
    }
    // a finite value that f16 storage cannot hold becomes infinite there: refused too
    let mut c = config(DIM);
    c.storage = StorageType::F16;
    let t = Table::new(c).unwrap();
    let e = t.apply(&delta("a", 1, DIM, &[5], |_| 1e6)).unwrap_err();
    assert!(
        matches!(
            e,
            EmbedError::NonFinite {
                key: 5,
                element: 0,
                ..
            }
        ),
        "{e:?}"
    );

    let mut c = config(DIM);
    c.allow_non_finite = true;
    let t = Table::new(c).unwrap();
    let mut d = delta("a", 1, DIM, &[7], |_| 1.0);
    d.values[0] = f32::NAN;
    assert!(matches!(
        t.apply(&d).unwrap(),
        ApplyOutcome::Applied { rows: 1, .. }
    ));
    assert!(t.get(7).unwrap()[0].is_nan());
}
