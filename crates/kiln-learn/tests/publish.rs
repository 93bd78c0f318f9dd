//! The publisher on its own: batching by time and by rows, epochs and sequence numbers across
//! a restart, and the journal replay after a crash.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_learn::checkpoint::CheckpointDir;
use kiln_learn::journal::Journal;
use kiln_learn::metrics::LearnMetrics;
use kiln_learn::publish::{PublishPolicy, Publisher};
use kiln_learn::sink::{Batch, Sink, SinkStatus};
use kiln_learn::{Sample, TableDelta, Trainer};
use parking_lot::Mutex;

/// A trainer over one dim-1 table: learning a sample adds its label to each key's row.
#[derive(Default, Clone)]
struct Counting {
    rows: BTreeMap<u64, f32>,
    dirty: Vec<u64>,
    removed: Vec<u64>,
}

impl Trainer for Counting {
    fn train(&mut self, batch: &[Sample]) -> Vec<f32> {
        for s in batch {
            for k in s.keys.iter().flatten() {
                *self.rows.entry(*k).or_default() += if s.label { 1.0 } else { -1.0 };
                self.dirty.push(*k);
            }
        }
        vec![0.5; batch.len()]
    }
    fn drain_deltas(&mut self) -> Vec<TableDelta> {
        let mut keys = std::mem::take(&mut self.dirty);
        keys.sort_unstable();
        keys.dedup();
        let values = keys.iter().map(|k| self.rows[k]).collect();
        vec![TableDelta {
            table: "t".into(),
            dim: 1,
            keys,
            values,
            tombstones: std::mem::take(&mut self.removed),
        }]
    }
    fn rows(&self, table: &str, keys: &[u64]) -> Option<Vec<Option<Vec<f32>>>> {
        (table == "t").then(|| {
            keys.iter()
                .map(|k| self.rows.get(k).map(|v| vec![*v]))
                .collect()
        })
    }
    fn save(&self, dir: &Path) -> kiln_learn::Result<()> {
        let text = serde_json::to_string(&self.rows).expect("json");
        std::fs::write(dir.join("rows.json"), text).map_err(|e| kiln_learn::Error::io(dir, e))
    }
    fn load(&mut self, dir: &Path) -> kiln_learn::Result<()> {
        let text = std::fs::read_to_string(dir.join("rows.json"))
            .map_err(|e| kiln_learn::Error::io(dir, e))?;
        self.rows = serde_json::from_str(&text).expect("json");
        Ok(())
    }
    fn snapshot_served(&self, _dir: &Path) -> kiln_learn::Result<()> {
        Ok(())
    }
}

/// A sink that keeps what it is sent.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<Batch>>>);

impl Sink for Capture {
    fn name(&self) -> String {
        "capture".into()
    }
    fn send(&mut self, batch: Batch) -> kiln_learn::Result<()> {
        self.0.lock().push(batch);
        Ok(())
    }
    fn status(&self) -> SinkStatus {
        SinkStatus {
            acked: self.0.lock().last().map_or(0, |b| b.number),
            ..SinkStatus::default()
        }
    }
    fn flush(&mut self, _timeout: Duration) -> bool {
        true
    }
}

fn sample(ts_ms: u64, label: bool, keys: &[u64]) -> Sample {
    Sample {
        id: format!("imp-{ts_ms}"),
        ts_ms,
        label,
        keys: vec![keys.to_vec()],
        dense: Vec::new(),
        seen_ms: ts_ms,
    }
}

fn publisher(dir: &CheckpointDir, epoch: u64, policy: PublishPolicy, sink: Capture) -> Publisher {
    let journal = Journal::create(&dir.journal_path(), 0, &Default::default()).expect("journal");
    Publisher::new(
        "learner",
        epoch,
        HashMap::from([("t".to_string(), 1)]),
        policy,
        journal,
        Box::new(sink),
        Arc::new(LearnMetrics::default()),
    )
}

#[test]
fn publishes_when_enough_rows_are_touched_or_the_interval_passes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = CheckpointDir::open(tmp.path()).expect("open");
    let policy = PublishPolicy {
        interval: Duration::from_secs(3600),
        max_rows: 4,
    };
    let mut p = publisher(&dir, 1, policy, Capture::default());
    let now = Instant::now();
    assert!(!p.due(now), "nothing touched, nothing due");
    p.note_learned(&[sample(5, true, &[1, 2, 3])]);
    assert!(!p.due(now), "3 of 4 rows");
    p.note_learned(&[sample(7, true, &[4])]);
    assert!(p.due(now), "4 rows touched");

    let mut p = publisher(
        &dir,
        1,
        PublishPolicy {
            interval: Duration::from_millis(200),
            max_rows: 1000,
        },
        Capture::default(),
    );
    let now = Instant::now();
    p.note_learned(&[sample(5, true, &[1])]);
    assert!(!p.due(now));
    assert!(
        p.due(now + Duration::from_millis(250)),
        "the interval passed"
    );
    assert_eq!(
        p.until_due(now + Duration::from_millis(250)),
        Duration::ZERO
    );
}

#[test]
fn one_delta_per_table_per_publish_numbered_from_one_per_epoch_and_dated_by_the_oldest_event() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = CheckpointDir::open(tmp.path()).expect("open");
    let policy = PublishPolicy {
        interval: Duration::from_millis(1),
        max_rows: 1,
    };
    let sink = Capture::default();
    let mut trainer = Counting::default();
    let epoch = dir.next_epoch().expect("epoch");
    let mut p = publisher(&dir, epoch, policy, sink.clone());
    for round in 0..3u64 {
        let batch = [
            sample(100 + round, true, &[1, 2]),
            sample(90 + round, false, &[2, 3]),
        ];
        trainer.train(&batch);
        p.note_learned(&batch);
        assert_eq!(p.publish(&mut trainer, 1_000).expect("publish"), 1);
    }
    assert_eq!(
        p.publish(&mut trainer, 1_000).expect("publish"),
        0,
        "nothing changed"
    );
    let sent = sink.0.lock().clone();
    assert_eq!(sent.len(), 3);
    for (i, b) in sent.iter().enumerate() {
        assert_eq!(b.number, i as u64 + 1);
        assert_eq!(b.deltas.len(), 1);
        let d = &b.deltas[0];
        assert_eq!(
            (d.source.as_str(), d.seq, d.table.as_str()),
            ("learner@1", i as u64 + 1, "t")
        );
        assert_eq!(d.created_ms, 90 + i as u64, "the oldest event time");
        assert_eq!(d.keys, vec![1, 2, 3]);
    }

    // a restart: a new epoch, sequence numbers from 1 again
    let epoch = dir.next_epoch().expect("epoch");
    assert_eq!(epoch, 2);
    let sink2 = Capture::default();
    let mut p = publisher(&dir, epoch, policy, sink2.clone());
    let batch = [sample(200, true, &[9])];
    trainer.train(&batch);
    p.note_learned(&batch);
    p.publish(&mut trainer, 1_000).expect("publish");
    let d = &sink2.0.lock()[0].deltas[0];
    assert_eq!((d.source.as_str(), d.seq), ("learner@2", 1));
}

#[test]
fn after_a_crash_the_journal_keys_are_republished_with_the_restored_values_or_tombstones() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = CheckpointDir::open(tmp.path()).expect("open");
    let policy = PublishPolicy {
        interval: Duration::from_millis(1),
        max_rows: 1,
    };
    let mut trainer = Counting::default();
    let sink = Capture::default();
    let mut p = publisher(&dir, dir.next_epoch().expect("epoch"), policy, sink.clone());
    let first = [sample(1, true, &[1, 2])];
    trainer.train(&first);
    p.note_learned(&first);
    p.publish(&mut trainer, 10).expect("publish");
    // checkpoint: the trainer's state, then the journal keeps only unacknowledged keys
    let checkpointed = trainer.clone();
    p.rotate_journal().expect("rotate");
    // after the checkpoint: key 2 changes, key 7 is new; both reach the servers, then kill -9
    let later = [sample(2, true, &[2, 7])];
    trainer.train(&later);
    p.note_learned(&later);
    p.publish(&mut trainer, 20).expect("publish");
    drop(p);

    // restart: restore the checkpoint, republish what the journal names
    let keys = Journal::recover(&dir.journal_path()).expect("recover");
    assert_eq!(keys["t"].iter().copied().collect::<Vec<_>>(), vec![2, 7]);
    let mut restored = checkpointed.clone();
    let epoch = dir.next_epoch().expect("epoch");
    let journal = Journal::create(&dir.journal_path(), 1, &keys).expect("journal");
    let sink2 = Capture::default();
    let mut p = Publisher::new(
        "learner",
        epoch,
        HashMap::from([("t".to_string(), 1)]),
        policy,
        journal,
        Box::new(sink2.clone()),
        Arc::new(LearnMetrics::default()),
    );
    p.republish(&restored, &keys, 30).expect("republish");
    let b = sink2.0.lock()[0].clone();
    let d = &b.deltas[0];
    assert_eq!((d.source.as_str(), d.seq), ("learner@2", 1));
    assert_eq!(d.keys, vec![2], "key 2 goes back to its checkpointed value");
    assert_eq!(d.values, vec![checkpointed.rows[&2]]);
    assert_eq!(d.tombstones, vec![7], "key 7 is not in the checkpoint");

    // a second crash before the next checkpoint republishes the same keys again
    let again = Journal::recover(&dir.journal_path()).expect("recover");
    assert_eq!(again, keys);
    // and the replayed servers' state equals the restored trainer's
    let mut served: BTreeMap<u64, f32> = BTreeMap::new();
    for batch in sink.0.lock().iter().chain(sink2.0.lock().iter()) {
        for d in &batch.deltas {
            for k in &d.tombstones {
                served.remove(k);
            }
            for (k, v) in d.keys.iter().zip(&d.values) {
                served.insert(*k, *v);
            }
        }
    }
    restored.dirty.clear();
    assert_eq!(served, restored.rows);
}
