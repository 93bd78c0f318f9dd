//! The publisher: changed rows out of the trainer as sequenced kiln-embed deltas.
//!
//! - **When**: every `interval` while rows change, or as soon as `max_rows` rows were touched,
//!   whichever comes first. Touched rows are counted as the keys of the samples learned since
//!   the last publish (an upper bound of the distinct rows, known without asking the trainer).
//! - **What**: one [`Delta`] per table per publish: the rows whose served values changed and
//!   the tombstones of rows that expired, `table` set.
//! - **Who**: source `<name>@<epoch>`. The epoch is kept in the checkpoint directory and
//!   incremented, durably, at every start before anything is published
//!   ([`crate::checkpoint::CheckpointDir::next_epoch`]); each table's sequence numbers start at
//!   1 in every epoch. A restarted learner therefore never reuses a `(source, seq)` pair:
//!   servers tell its deltas from the ones its previous life sent by the source name, and
//!   drop a resent one by its sequence number.
//! - **`created_ms`**: the event time of the oldest sample learned into the delta, so a
//!   server's `kiln_embed_delta_lag_seconds` is the event-to-serving freshness.
//! - **Journal**: the keys of every delta are appended to the [`Journal`] and synced before
//!   the delta is handed to the sink (see [`crate::journal`] for the replay after a crash).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_embed::Delta;

use crate::error::Result;
use crate::journal::{Journal, JournalKeys};
use crate::metrics::LearnMetrics;
use crate::sample::Sample;
use crate::sink::{Batch, Sink, SinkStatus};
use crate::trainer::{TableDelta, Trainer};

/// When to publish.
#[derive(Clone, Copy, Debug)]
pub struct PublishPolicy {
    /// Publish at least this often while rows change.
    pub interval: Duration,
    /// Publish once this many rows were touched.
    pub max_rows: usize,
}

/// Turns the trainer's changed rows into deltas, journals them and hands them to a sink.
pub struct Publisher {
    source: String,
    dims: HashMap<String, usize>,
    seqs: HashMap<String, u64>,
    batch: u64,
    policy: PublishPolicy,
    journal: Journal,
    sink: Box<dyn Sink>,
    metrics: Arc<LearnMetrics>,
    last: Instant,
    touched: usize,
    oldest_event_ms: Option<u64>,
    seen_ms: Vec<u64>,
}

impl Publisher {
    /// A publisher of source `<name>@<epoch>` for tables of `dims` (name -> elements per row).
    pub fn new(
        name: &str,
        epoch: u64,
        dims: HashMap<String, usize>,
        policy: PublishPolicy,
        journal: Journal,
        sink: Box<dyn Sink>,
        metrics: Arc<LearnMetrics>,
    ) -> Publisher {
        metrics.epoch.set(epoch as i64);
        Publisher {
            source: format!("{name}@{epoch}"),
            dims,
            seqs: HashMap::new(),
            batch: 0,
            policy,
            journal,
            sink,
            metrics,
            last: Instant::now(),
            touched: 0,
            oldest_event_ms: None,
            seen_ms: Vec::new(),
        }
    }

    /// The delta source name, `<name>@<epoch>`.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The number of the last publish (0: none yet).
    pub fn batches(&self) -> u64 {
        self.batch
    }

    /// Records that `samples` were learned: their keys count as touched rows, their event
    /// times date the next deltas.
    pub fn note_learned(&mut self, samples: &[Sample]) {
        for s in samples {
            self.touched += s.keys.iter().map(Vec::len).sum::<usize>();
            self.oldest_event_ms = Some(self.oldest_event_ms.map_or(s.ts_ms, |o| o.min(s.ts_ms)));
            self.seen_ms.push(s.seen_ms);
        }
    }

    /// Whether a publish is due at `now`: rows were touched and either `max_rows` of them or
    /// `interval` since the last publish.
    pub fn due(&self, now: Instant) -> bool {
        self.touched > 0
            && (self.touched >= self.policy.max_rows
                || now.duration_since(self.last) >= self.policy.interval)
    }

    /// How long until a publish is due by time alone (zero when it is).
    pub fn until_due(&self, now: Instant) -> Duration {
        (self.last + self.policy.interval).saturating_duration_since(now)
    }

    /// Drains the trainer's changed rows and publishes them (nothing when none changed).
    /// Returns the number of deltas sent.
    pub fn publish(&mut self, trainer: &mut dyn Trainer, now_ms: u64) -> Result<usize> {
        let deltas = trainer.drain_deltas();
        let created = self.oldest_event_ms.take().unwrap_or(now_ms);
        let n = self.send(deltas, created)?;
        let seen = std::mem::take(&mut self.seen_ms);
        if n > 0 {
            for s in seen {
                let secs = now_ms.saturating_sub(s) as f64 / 1000.0;
                self.metrics.event_to_publish.observe(secs);
            }
        }
        self.touched = 0;
        self.last = Instant::now();
        Ok(n)
    }

    /// Publishes the trainer's current values of `keys` (tombstones for the rows it does not
    /// have): after a restart, the keys the journal says may hold newer values on the servers
    /// than the restored checkpoint.
    pub fn republish(
        &mut self,
        trainer: &dyn Trainer,
        keys: &JournalKeys,
        now_ms: u64,
    ) -> Result<usize> {
        let mut deltas = Vec::new();
        for (table, keys) in keys {
            let Some(&dim) = self.dims.get(table) else {
                tracing::warn!(
                    table,
                    "journal names a table the model does not have; skipped"
                );
                continue;
            };
            let keys: Vec<u64> = keys.iter().copied().collect();
            let Some(rows) = trainer.rows(table, &keys) else {
                continue;
            };
            let mut d = TableDelta {
                table: table.clone(),
                dim,
                ..TableDelta::default()
            };
            for (k, row) in keys.iter().zip(rows) {
                match row {
                    Some(v) if v.len() == dim => {
                        d.keys.push(*k);
                        d.values.extend_from_slice(&v);
                    }
                    _ => d.tombstones.push(*k),
                }
            }
            deltas.push(d);
        }
        let n = self.send(deltas, now_ms)?;
        tracing::info!(source = %self.source, deltas = n,
            keys = keys.values().map(|k| k.len()).sum::<usize>(),
            "republished the journal's keys with the restored values");
        Ok(n)
    }

    fn send(&mut self, deltas: Vec<TableDelta>, created_ms: u64) -> Result<usize> {
        let deltas: Vec<TableDelta> = deltas
            .into_iter()
            .filter(|d| !d.keys.is_empty() || !d.tombstones.is_empty())
            .collect();
        if deltas.is_empty() {
            return Ok(0);
        }
        self.batch += 1;
        let mut out = Vec::with_capacity(deltas.len());
        let mut journal = Vec::with_capacity(deltas.len());
        let mut rows = 0u64;
        for d in deltas {
            let seq = self.seqs.entry(d.table.clone()).or_insert(0);
            *seq += 1;
            let mut keys = d.keys.clone();
            keys.extend_from_slice(&d.tombstones);
            rows += keys.len() as u64;
            let dim = self.dims.get(&d.table).copied().unwrap_or(d.dim);
            out.push(Arc::new(Delta {
                source: self.source.clone(),
                table: d.table,
                seq: *seq,
                created_ms,
                dim,
                keys: d.keys,
                values: d.values,
                tombstones: d.tombstones,
            }));
            journal.push(keys);
        }
        let records: Vec<(&str, Vec<u64>)> = out
            .iter()
            .zip(journal)
            .map(|(d, k)| (d.table.as_str(), k))
            .collect();
        self.journal.append(self.batch, &records)?;
        let n = out.len();
        self.sink.send(Batch {
            number: self.batch,
            deltas: out,
        })?;
        self.metrics.deltas_published.inc_by(n as u64);
        self.metrics.rows_published.inc_by(rows);
        Ok(n)
    }

    /// How far delivery has got.
    pub fn status(&self) -> SinkStatus {
        let s = self.sink.status();
        self.metrics.sink_queued.set(s.queued as i64);
        s
    }

    /// The delivery positions right after batch `batch`, once it is acknowledged everywhere.
    pub fn positions_after(&self, batch: u64) -> Option<std::collections::BTreeMap<i32, i64>> {
        self.sink.positions_after(batch)
    }

    /// Each table's last sequence number in this epoch.
    pub fn sequences(&self) -> &HashMap<String, u64> {
        &self.seqs
    }

    /// Waits up to `timeout` for every delta sent to be acknowledged everywhere.
    pub fn flush(&mut self, timeout: Duration) -> bool {
        self.sink.flush(timeout)
    }

    /// After a checkpoint: drops from the journal the keys of deltas acknowledged everywhere.
    pub fn rotate_journal(&mut self) -> Result<()> {
        let acked = self.sink.status().acked;
        self.journal.rotate(acked)
    }
}
