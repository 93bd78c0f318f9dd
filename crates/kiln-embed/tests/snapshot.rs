//! Snapshot round trips, restore semantics and refusal of damaged files.

mod common;

use std::sync::Arc;

use common::{config, delta, Rng};
use kiln_embed::{ApplyOutcome, EmbedError, StorageType, Table, TableConfig};

const DIM: usize = 16;

fn filled(storage: StorageType, n: u64) -> Table {
    let mut c = config(DIM);
    c.storage = storage;
    let t = Table::new(c).unwrap();
    let mut rng = Rng(5);
    let keys: Vec<u64> = (0..n).map(|_| rng.next_u64()).collect();
    let values: Vec<f32> = (0..keys.len() * DIM)
        .map(|i| (i % 1000) as f32 * 0.25 - 100.0)
        .collect();
    let mut d = delta("trainer", 1, DIM, &keys, |_| 0.0);
    d.values = values;
    t.apply(&d).unwrap();
    t.apply(&delta("other", 1, DIM, &[1, 2, 3], |k| k as f32))
        .unwrap();
    t.remove(&[2]);
    t
}

fn same_rows(a: &Table, b: &Table, keys: impl Iterator<Item = u64>) {
    for k in keys {
        assert_eq!(a.get(k), b.get(k), "key {k}");
    }
}

fn round_trip(storage: StorageType, restore_as: StorageType) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.snap");
    let t = filled(storage, 5000);
    let info = t.snapshot_to(&path).unwrap();
    assert_eq!(info.rows, 5002);
    assert_eq!(
        info.sources,
        vec![("other".to_string(), 1), ("trainer".to_string(), 1)]
    );
    assert!(!dir.path().join("t.snap.tmp").exists());
    let mut c = config(DIM);
    c.storage = restore_as;
    let (r, rinfo) = Table::restore(c, &path).unwrap();
    assert_eq!(rinfo.rows, 5002);
    assert_eq!(rinfo.bytes, std::fs::metadata(&path).unwrap().len());
    assert_eq!(r.len(), t.len());
    assert_eq!(r.metrics().snapshot().rows, 5002);
    assert_eq!(r.sources(), t.sources());
    let mut rng = Rng(5);
    let keys: Vec<u64> = (0..5000).map(|_| rng.next_u64()).chain([1, 2, 3]).collect();
    // The values written are exact in half precision, so every conversion is lossless.
    same_rows(&t, &r, keys.iter().copied());
    assert!(!r.contains(2));
    // Sequencing survives the restore.
    assert!(matches!(
        r.apply(&delta("trainer", 1, DIM, &[9], |_| 1.0)).unwrap(),
        ApplyOutcome::Duplicate { .. }
    ));
    assert!(r.apply(&delta("trainer", 3, DIM, &[9], |_| 1.0)).is_err());
    assert!(matches!(
        r.apply(&delta("trainer", 2, DIM, &[9], |_| 1.0)).unwrap(),
        ApplyOutcome::Applied { .. }
    ));
}

#[test]
fn round_trip_f32() {
    round_trip(StorageType::F32, StorageType::F32);
}

#[test]
fn round_trip_f16() {
    round_trip(StorageType::F16, StorageType::F16);
}

#[test]
fn round_trip_converts_element_type() {
    round_trip(StorageType::F32, StorageType::F16);
    round_trip(StorageType::F16, StorageType::F32);
}

#[test]
fn restore_or_new_starts_empty_then_restores() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.snap");
    let (t, info) = Table::restore_or_new(config(DIM), &path).unwrap();
    assert!(info.is_none() && t.is_empty());
    filled(StorageType::F32, 10).snapshot_to(&path).unwrap();
    let (t, info) = Table::restore_or_new(config(DIM), &path).unwrap();
    assert_eq!((t.len(), info.unwrap().rows), (12, 12));
    std::fs::write(&path, b"garbage").unwrap();
    assert!(matches!(
        Table::restore_or_new(config(DIM), &path),
        Err(EmbedError::CorruptSnapshot { .. })
    ));
}

#[test]
fn empty_table_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.snap");
    Table::new(config(DIM)).unwrap().snapshot_to(&path).unwrap();
    let (r, info) = Table::restore(config(DIM), &path).unwrap();
    assert_eq!((r.len(), info.rows), (0, 0));
}

fn corrupt_message(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.snap");
    std::fs::write(&path, bytes).unwrap();
    match Table::restore(config(DIM), &path) {
        Err(e @ EmbedError::CorruptSnapshot { .. }) => e.to_string(),
        Err(e) => panic!("expected a corrupt-snapshot error, got {e}"),
        Ok(_) => panic!("a damaged snapshot was accepted"),
    }
}

#[test]
fn damaged_snapshots_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.snap");
    filled(StorageType::F32, 300).snapshot_to(&path).unwrap();
    let good = std::fs::read(&path).unwrap();

    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x01;
    let m = corrupt_message(&flipped);
    assert!(
        m.contains("checksum mismatch") && m.contains("bad.snap"),
        "{m}"
    );

    let mut crc = good.clone();
    *crc.last_mut().unwrap() ^= 0xff;
    assert!(corrupt_message(&crc).contains("checksum mismatch"));

    let m = corrupt_message(&good[..good.len() - 100]);
    assert!(m.contains("header promises"), "{m}");
    assert!(corrupt_message(&good[..10]).contains("truncated"));
    assert!(corrupt_message(b"").contains("truncated"));

    let mut magic = good.clone();
    magic[..8].copy_from_slice(b"NOTASNAP");
    assert!(corrupt_message(&magic).contains("bad magic"));

    let mut rows = good.clone();
    rows[20] = rows[20].wrapping_add(1); // row count
    assert!(corrupt_message(&rows).contains("header promises"));
}

#[test]
fn mismatched_dim_and_missing_file_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.snap");
    filled(StorageType::F32, 10).snapshot_to(&path).unwrap();
    let e = Table::restore(TableConfig::new("wide", DIM * 2), &path).unwrap_err();
    assert!(matches!(e, EmbedError::SnapshotMismatch { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("snapshot dim is 16, table dim is 32"),
        "{e}"
    );
    let e = Table::restore(config(DIM), &dir.path().join("missing.snap")).unwrap_err();
    assert!(matches!(e, EmbedError::Io { .. }), "{e}");
    let e = filled(StorageType::F32, 10)
        .snapshot_to(&dir.path().join("no/such/dir/t.snap"))
        .unwrap_err();
    assert!(e.to_string().contains("no/such/dir/t.snap.tmp"), "{e}");
}

#[test]
fn snapshot_while_lookups_and_deltas_run_is_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("live.snap");
    let t = Arc::new(Table::new(config(DIM)).unwrap());
    let keys: Vec<u64> = (0..2000).collect();
    t.apply(&delta("a", 1, DIM, &keys, |_| 1.0)).unwrap();
    let writer = {
        let t = t.clone();
        std::thread::spawn(move || {
            for seq in 2..300u64 {
                let keys: Vec<u64> = (0..2000).collect();
                t.apply(&delta("a", seq, DIM, &keys, |_| seq as f32))
                    .unwrap();
            }
        })
    };
    let info = t.snapshot_to(&path).unwrap();
    writer.join().unwrap();
    let (r, _) = Table::restore(config(DIM), &path).unwrap();
    // Every row carries the value of the sequence number the snapshot recorded.
    let seq = info.sources[0].1;
    for k in 0..2000 {
        assert_eq!(
            r.get(k).unwrap(),
            vec![seq as f32; DIM],
            "key {k} at seq {seq}"
        );
    }
}
