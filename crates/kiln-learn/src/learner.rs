//! The learner loop, on a thread of its own: events from the feed, joined into samples,
//! learned (scored first: progressive validation), published, checkpointed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::checkpoint::{CheckpointDir, CheckpointState, PartitionState};
use crate::config::{LearnConfig, ModelInfo};
use crate::error::Result;
use crate::eval::Evaluator;
use crate::event::{parse_line, Event};
use crate::featurize::Featurizer;
use crate::feed::{Feed, RawEvent};
use crate::join::JoinState;
use crate::metrics::LearnMetrics;
use crate::positions::ReadPositions;
use crate::publish::Publisher;
use crate::sample::Sample;
use crate::snapshot::{write_dense_version, DenseTensor, Snapshots};
use crate::trainer::Trainer;
use crate::trainers::AnyTrainer;

/// Events asked of the feed at once.
const READ_BATCH: usize = 4096;
/// How often progress (samples, AUC, log loss) is logged.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// Samples learned at once (then a publish may be due by its row count).
const LEARN_CHUNK: usize = 256;
/// How long a final flush waits for the destinations.
const FINAL_FLUSH: Duration = Duration::from_secs(10);

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Everything the loop owns.
pub struct Learner {
    /// The configuration.
    pub config: LearnConfig,
    /// The served model.
    pub model: ModelInfo,
    /// The trainer (shared with the rows endpoint).
    pub trainer: Arc<Mutex<AnyTrainer>>,
    /// Events in.
    pub feed: Box<dyn Feed>,
    /// Deltas out.
    pub publisher: Publisher,
    /// Checkpoints (none without `checkpoint.dir`).
    pub checkpoints: Option<CheckpointDir>,
    /// What the restored checkpoint says was consumed, per partition.
    pub restored: BTreeMap<String, PartitionState>,
    /// The number of the restored checkpoint (0: none).
    pub checkpoint_number: u64,
    /// The epoch.
    pub epoch: u64,
    /// Snapshots for late replicas (Kafka publishing with `snapshot_dir`).
    pub snapshots: Option<Snapshots>,
    /// Metrics.
    pub metrics: Arc<LearnMetrics>,
    /// Set to stop (SIGTERM).
    pub stop: Arc<AtomicBool>,
    /// Samples learned before the restored checkpoint.
    pub samples_before: u64,
    /// The batch the pending snapshot waits for.
    pub pending_batch: Option<u64>,
    /// When progress was last logged.
    pub last_log: Instant,
    /// The dense tensors last written as a model version.
    pub last_dense: Option<Vec<DenseTensor>>,
}

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    /// Samples learned in this run.
    pub samples: u64,
    /// The run's epoch.
    pub epoch: u64,
    /// Publishes.
    pub batches: u64,
    /// Whether the source ended (else the run was stopped).
    pub source_ended: bool,
}

impl Learner {
    /// Runs until the source ends or `stop` is set; checkpoints on the way out.
    pub fn run(mut self) -> Result<Summary> {
        let mut featurizer = Featurizer::new(&self.model, &self.config.features);
        let mut joiner = JoinState::new(&self.config.join, &self.config.labels);
        let mut held = ReadPositions::default();
        let mut eval = Evaluator::new(10_000);
        let mut learned = 0u64;
        let ckpt_every = Duration::from_secs(self.config.checkpoint.interval_s);
        let snap_every = Duration::from_secs(self.config.publish.snapshot_interval_s);
        let dense_every = self
            .config
            .publish
            .dense_version_interval_s
            .map(Duration::from_secs);
        let (mut last_ckpt, mut last_snap, mut last_dense, mut last_tick) = (
            Instant::now(),
            Instant::now(),
            Instant::now(),
            Instant::now(),
        );
        let mut source_ended = false;
        let mut samples: Vec<Sample> = Vec::new();
        while !self.stop.load(Ordering::SeqCst) {
            let wait = self
                .publisher
                .until_due(Instant::now())
                .clamp(Duration::from_millis(1), Duration::from_millis(100));
            let Some(events) = self.feed.next_batch(READ_BATCH, wait)? else {
                source_ended = true;
                break;
            };
            let now = now_ms();
            for ev in &events {
                self.consume(
                    ev,
                    now,
                    &mut featurizer,
                    &mut joiner,
                    &mut held,
                    &mut samples,
                );
                if samples.len() >= LEARN_CHUNK {
                    learned += self.learn(&mut samples, &mut eval);
                    self.publish_if_due()?;
                }
            }
            // the watermark moves on with idle time from the last event: only once one came
            if joiner.stats().watermark_ms > 0 {
                samples.extend(joiner.expire(now_ms()));
            }
            learned += self.learn(&mut samples, &mut eval);
            self.publish_if_due()?;
            let t = Instant::now();
            if t.duration_since(last_tick) >= Duration::from_secs(1) {
                last_tick = t;
                self.tick(&joiner, &eval, &featurizer, last_ckpt);
                self.trainer.lock().maintain();
            }
            if let Some(every) = dense_every.filter(|e| t.duration_since(last_dense) >= *e) {
                last_dense = t;
                self.dense_version(every)?;
            }
            self.snapshot(snap_every, &mut last_snap)?;
            if self.checkpoints.is_some() && t.duration_since(last_ckpt) >= ckpt_every {
                self.checkpoint(&joiner, &held, learned)?;
                last_ckpt = Instant::now();
            }
        }
        if source_ended {
            // the files are read: every window closes now
            samples.extend(joiner.flush());
            learned += self.learn(&mut samples, &mut eval);
        }
        self.publisher
            .publish(&mut *self.trainer.lock(), now_ms())?;
        if !self.publisher.flush(FINAL_FLUSH) {
            tracing::warn!("stopping with deltas not yet acknowledged by every destination; the journal republishes them at the next start");
        }
        // a snapshot waiting for its batch completes now that everything is acknowledged
        if self.pending_batch.is_some() {
            self.snapshot(Duration::MAX, &mut last_snap)?;
        }
        if self.checkpoints.is_some() {
            self.checkpoint(&joiner, &held, learned)?;
        }
        self.tick(&joiner, &eval, &featurizer, Instant::now());
        let batches = self.publisher.batches();
        self.feed.close(Duration::from_secs(10));
        Ok(Summary {
            samples: learned,
            epoch: self.epoch,
            batches,
            source_ended,
        })
    }

    fn publish_if_due(&mut self) -> Result<()> {
        if self.publisher.due(Instant::now()) {
            self.publisher
                .publish(&mut *self.trainer.lock(), now_ms())?;
        }
        Ok(())
    }

    fn consume(
        &mut self,
        ev: &RawEvent,
        now: u64,
        featurizer: &mut Featurizer,
        joiner: &mut JoinState,
        held: &mut ReadPositions,
        out: &mut Vec<Sample>,
    ) {
        held.read(&ev.partition, ev.position);
        let restored = self.restored.get(&ev.partition);
        if restored.is_some_and(|p| p.consumed(ev.pos())) {
            self.metrics.replay_skipped.inc();
            return;
        }
        // before the restored checkpoint's end, only the events its joiner held get here
        let readmitted = restored.is_some_and(|p| ev.pos() < p.end);
        let event = match parse_line(&ev.bytes) {
            Ok(e) => e,
            Err(e) => {
                self.malformed(e.kind.reason(), &e.message, ev);
                return;
            }
        };
        match event {
            Event::Impression(imp) => match featurizer.featurize(&imp, now) {
                Ok(sample) if readmitted => {
                    out.extend(joiner.readmit_impression(sample, ev.position, now))
                }
                Ok(sample) => out.extend(joiner.insert_impression(sample, ev.position, now)),
                Err(e) => self.malformed(e.kind.reason(), &e.message, ev),
            },
            Event::Action(a) => out.extend(joiner.insert_action(&a, ev.position, now)),
        }
        // windows close as the watermark passes them, event by event: closing them once per
        // read batch would learn a batch's positives before its earlier negatives, and the
        // progressive validation would score samples out of event-time order
        out.extend(joiner.expire(now));
    }

    fn malformed(&self, reason: &str, message: &str, ev: &RawEvent) {
        self.metrics.malformed(reason);
        static LOGGED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = LOGGED.fetch_add(1, Ordering::Relaxed);
        // sampled: the first 10, then one in 1000
        if n < 10 || n.is_multiple_of(1000) {
            tracing::warn!(partition = %ev.partition, pos = ev.pos(), reason, message, skipped = n + 1, "malformed event skipped");
        }
    }

    fn learn(&mut self, samples: &mut Vec<Sample>, eval: &mut Evaluator) -> u64 {
        if samples.is_empty() {
            return 0;
        }
        let probs = self.trainer.lock().train(samples);
        eval.observe_all(&probs, samples.iter().map(|s| s.label));
        self.publisher.note_learned(samples);
        let pos = samples.iter().filter(|s| s.label).count() as u64;
        self.metrics.samples.inc_by(samples.len() as u64);
        self.metrics.positives.inc_by(pos);
        self.metrics.negatives.inc_by(samples.len() as u64 - pos);
        let n = samples.len() as u64;
        samples.clear();
        n
    }

    fn tick(&mut self, joiner: &JoinState, eval: &Evaluator, _f: &Featurizer, last_ckpt: Instant) {
        let r = eval.report();
        if let Some(auc) = r.auc {
            self.metrics.set_quality("cumulative", auc, r.log_loss);
        }
        if let Some(auc) = r.window_auc {
            self.metrics.set_quality("windowed", auc, r.window_log_loss);
        }
        let j = joiner.stats();
        let m = &self.metrics;
        m.joiner_bytes.set(j.memory_bytes as i64);
        m.joiner_open.set(j.pending as i64);
        set_counter(&m.closed_at_cap, j.capped);
        set_counter(&m.late_actions, j.late_actions);
        set_counter(&m.orphan_actions, j.orphan_actions);
        for (p, lag) in self.feed.lag() {
            self.metrics.set_lag(&p, lag);
        }
        self.metrics
            .checkpoint_age
            .set(last_ckpt.elapsed().as_secs_f64());
        let sink = self.publisher.status();
        if self.last_log.elapsed() >= LOG_EVERY {
            self.last_log = Instant::now();
            tracing::info!(
                samples = r.samples,
                positives = r.positives,
                auc = ?r.auc,
                log_loss = r.log_loss,
                window_auc = ?r.window_auc,
                window_log_loss = r.window_log_loss,
                joiner_open = j.pending,
                deltas_queued = sink.queued,
                "progressive validation"
            );
        }
    }

    fn dense_version(&mut self, _every: Duration) -> Result<()> {
        let repo = match &self.config.publish.model_repository_dir {
            Some(r) => r.clone(),
            None => self
                .model
                .config_path
                .parent()
                .and_then(|d| d.parent())
                .map(|p| p.to_path_buf())
                .unwrap_or_default(),
        };
        let scratch = std::env::temp_dir();
        let tensors = self.trainer.lock().dense_tensors(&self.model, &scratch)?;
        if self.last_dense.as_ref() == Some(&tensors) {
            return Ok(()); // unchanged: no new version
        }
        let file = self
            .model
            .weights_path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model.safetensors".into());
        let dir = write_dense_version(&repo, &self.model.name, &file, &tensors)?;
        self.metrics.dense_versions.inc();
        self.last_dense = Some(tensors.clone());
        tracing::info!(dir = %dir.display(), tensors = tensors.len(), "dense weights written as a new model version");
        Ok(())
    }

    /// Starts a snapshot right after a publish when one is due, and finishes the pending one
    /// once its batch is acknowledged.
    fn snapshot(&mut self, every: Duration, last: &mut Instant) -> Result<()> {
        let Some(snaps) = self.snapshots.as_mut() else {
            return Ok(());
        };
        if snaps.pending() {
            // the batch the pending snapshot waits for is the one it was begun after
            if let Some(batch) = self.pending_batch {
                if let Some(pos) = self.publisher.positions_after(batch) {
                    if let Some(dir) = snaps.finish(&pos, now_ms())? {
                        self.metrics.snapshots.inc();
                        tracing::info!(dir = %dir.display(), "snapshot for late replicas written");
                    }
                    self.pending_batch = None;
                }
            }
            return Ok(());
        }
        if last.elapsed() < every || self.publisher.batches() == 0 {
            return Ok(());
        }
        *last = Instant::now();
        // the snapshot must equal the published state: publish what is pending first
        self.publisher
            .publish(&mut *self.trainer.lock(), now_ms())?;
        let batch = self.publisher.batches();
        let seqs = self.publisher.sequences().clone();
        let source = self.publisher.source().to_string();
        snaps.begin(&*self.trainer.lock(), batch, &source, &seqs)?;
        self.pending_batch = Some(batch);
        Ok(())
    }

    fn checkpoint(&mut self, joiner: &JoinState, held: &ReadPositions, learned: u64) -> Result<()> {
        let Some(dir) = self.checkpoints.clone() else {
            return Ok(());
        };
        // nothing may sit between the joiner and the servers: publish what is pending
        self.publisher
            .publish(&mut *self.trainer.lock(), now_ms())?;
        let mut partitions = held.state(joiner.held_positions());
        // what the restored checkpoint said about positions not read again yet still holds
        for (k, old) in &self.restored {
            match partitions.get_mut(k) {
                Some(new) => new.merge_restored(old),
                None => {
                    partitions.insert(k.clone(), old.clone());
                }
            }
        }
        self.checkpoint_number += 1;
        let state = CheckpointState {
            model: self.model.name.clone(),
            learner: self.config.name.clone(),
            epoch: self.epoch,
            number: self.checkpoint_number,
            created_ms: now_ms(),
            samples: self.samples_before + learned,
            partitions,
        };
        let started = Instant::now();
        let path = dir.write(&state, &*self.trainer.lock())?;
        self.publisher.rotate_journal()?;
        let resume: BTreeMap<String, u64> = state
            .partitions
            .iter()
            .map(|(k, v)| (k.clone(), v.resume))
            .collect();
        self.feed.commit(&resume)?;
        self.metrics.checkpoints.inc();
        self.metrics.checkpoint_age.set(0.0);
        tracing::info!(path = %path.display(), ms = started.elapsed().as_millis() as u64,
            samples = state.samples, "checkpoint written");
        Ok(())
    }
}

/// Moves a counter up to `total` (the joiner keeps its own totals).
fn set_counter(c: &prometheus_client::metrics::counter::Counter, total: u64) {
    let now = c.get();
    if total > now {
        c.inc_by(total - now);
    }
}
