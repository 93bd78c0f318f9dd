//! The impression-action join, as plain state driven by its owner with an injected `now`
//! (no clock, no thread, no channel inside), so every rule below is tested without a broker.
//!
//! - **Time** is event time: the watermark is the largest `ts_ms` seen (each clamped to the
//!   `now` of its arrival, so a producer's clock far ahead cannot close every window), and,
//!   while no event arrives, it moves on with `now` from the last arrival, so a quiet stream
//!   still closes windows. Out-of-order timestamps are fine: only the watermark closes.
//! - An impression waits until the watermark reaches `ts_ms + window_ms`. A positive action
//!   (`[labels] positive`) in its window makes it a **positive**, emitted at once; it closes
//!   as a **negative** when its window does ([`JoinState::expire`]). Other actions are
//!   ignored (counted). A positive action timed after the window is **late**.
//! - A closed impression is remembered (id only) for one more window, so a later positive
//!   action counts as **duplicate** (after a positive) or **late** (after a negative), not
//!   as an orphan.
//! - A positive action whose impression has not arrived is held `orphan_hold_ms` of event
//!   time; the impression then joins it at once (positive). Unclaimed, it counts as an
//!   **orphan**. An impression whose window already closed when it arrives is dropped
//!   (**late impression**); a repeated impression id is dropped (**duplicate impression**).
//! - **Memory** is counted exactly (ids, keys, dense, and a per-entry map overhead; see
//!   [`JoinState::impression_bytes`]). Above `memory_cap_bytes`, closed-id records go first,
//!   then held actions (orphans), then the oldest impressions close early as negatives
//!   (**capped**).

mod queue;

use crate::config::{JoinConfig, LabelsConfig};
use crate::event::Action;
use crate::sample::Sample;
use crate::source::Position;
use queue::{entry_overhead, IdQueue};
use std::mem::size_of;

/// What the joiner counted. Negatives include the capped ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JoinStats {
    /// Impressions accepted into the join.
    pub impressions: u64,
    /// Positive samples emitted.
    pub positives: u64,
    /// Negative samples emitted (window closed, capped, or flushed).
    pub negatives: u64,
    /// Negatives closed early by the memory cap.
    pub capped: u64,
    /// Positive actions after their impression's window.
    pub late_actions: u64,
    /// Positive actions whose impression never came.
    pub orphan_actions: u64,
    /// Positive actions for an impression already positive (or already held).
    pub duplicate_actions: u64,
    /// Actions that are not positive.
    pub ignored_actions: u64,
    /// Positive actions that arrived before their impression and were joined when it came.
    pub early_actions: u64,
    /// Impressions whose window had closed when they arrived (dropped).
    pub late_impressions: u64,
    /// Impressions whose id was pending or recently closed (dropped).
    pub duplicate_impressions: u64,
    /// Impressions waiting now.
    pub pending: u64,
    /// Positive actions waiting for their impression now.
    pub held_actions: u64,
    /// Bytes held now.
    pub memory_bytes: u64,
    /// The watermark (event time, ms).
    pub watermark_ms: u64,
}

/// An impression waiting for its window to close (its id lives in the queue).
#[derive(Debug)]
struct Pending {
    sample: Sample,
    pos: Position,
}

/// A positive action waiting for its impression.
#[derive(Debug)]
struct Held {
    ts_ms: u64,
    pos: Position,
}

/// The join state.
#[derive(Debug)]
pub struct JoinState {
    window_ms: u64,
    cap: u64,
    hold_ms: u64,
    positive: Vec<String>,
    /// Waiting impressions, due at their `ts_ms`.
    pending: IdQueue<Pending>,
    /// Held actions, due at `ts_ms + hold_ms`.
    held: IdQueue<Held>,
    /// Closed impressions (`true`: positive), forgotten at close watermark + window.
    closed: IdQueue<bool>,
    watermark: u64,
    /// The watermark at the last event, and the latest `now` seen.
    base: (u64, u64),
    /// Whether any event came yet.
    seen: bool,
    stats: JoinStats,
}

impl JoinState {
    /// A join with `[join]` and `[labels]` settings.
    pub fn new(join: &JoinConfig, labels: &LabelsConfig) -> Self {
        JoinState {
            window_ms: join.window_ms.max(1),
            cap: join.memory_cap_bytes,
            hold_ms: join.orphan_hold_ms,
            positive: labels.positive.clone(),
            pending: IdQueue::default(),
            held: IdQueue::default(),
            closed: IdQueue::default(),
            watermark: 0,
            base: (0, 0),
            seen: false,
            stats: JoinStats::default(),
        }
    }

    /// The counters, with the current sizes.
    pub fn stats(&self) -> JoinStats {
        JoinStats {
            pending: self.pending.len() as u64,
            held_actions: self.held.len() as u64,
            memory_bytes: self.memory_bytes(),
            watermark_ms: self.watermark,
            ..self.stats
        }
    }

    /// Bytes held: impressions, held actions and closed-id records.
    pub fn memory_bytes(&self) -> u64 {
        self.pending.bytes() + self.held.bytes() + self.closed.bytes()
    }

    /// The bytes a waiting impression costs: its id twice (both maps), its keys and dense
    /// values (by capacity), and the per-entry overhead.
    pub fn impression_bytes(sample: &Sample) -> u64 {
        (entry_overhead::<Pending>() + 2 * sample.id.len() + heap_bytes(sample)) as u64
    }

    /// The bytes a held action or a closed-id record with id `id` costs.
    pub fn id_bytes(id: &str, held: bool) -> u64 {
        let overhead = if held {
            entry_overhead::<Held>()
        } else {
            entry_overhead::<bool>()
        };
        (overhead + 2 * id.len()) as u64
    }

    /// The positions of the events the joiner holds (waiting impressions, held actions), for
    /// a checkpoint that rebuilds the join by reading them again.
    pub fn held_positions(&self) -> impl Iterator<Item = Position> + '_ {
        self.pending
            .values()
            .map(|p| p.pos)
            .chain(self.held.values().map(|h| h.pos))
    }

    fn observe(&mut self, ts_ms: u64, now_ms: u64) {
        self.watermark = self.watermark.max(ts_ms.min(now_ms));
        self.base = (self.watermark, self.base.1.max(now_ms));
        self.seen = true;
    }

    /// Adds an impression (`imp` from the featurizer, read at `pos`). Returns the samples it
    /// completes: itself, positive, when its action came first, and negatives closed by the
    /// memory cap.
    pub fn insert_impression(&mut self, imp: Sample, pos: Position, now_ms: u64) -> Vec<Sample> {
        self.admit_impression(imp, pos, now_ms, false)
    }

    /// Adds an impression this joiner held before a restart, read again from the position a
    /// checkpoint recorded ([`JoinState::held_positions`]). It is admitted even when the
    /// watermark has passed its window: on replay, events of another partition (actions
    /// timed after it) may be read before it and move the watermark on, and dropping it as
    /// late would lose a sample the previous run had accepted. Its window then closes at the
    /// next [`JoinState::expire`], as a positive when its action is held.
    pub fn readmit_impression(&mut self, imp: Sample, pos: Position, now_ms: u64) -> Vec<Sample> {
        self.admit_impression(imp, pos, now_ms, true)
    }

    fn admit_impression(
        &mut self,
        imp: Sample,
        pos: Position,
        now_ms: u64,
        readmitted: bool,
    ) -> Vec<Sample> {
        self.observe(imp.ts_ms, now_ms);
        let mut out = Vec::new();
        if self.pending.contains(&imp.id) || self.closed.contains(&imp.id) {
            self.stats.duplicate_impressions += 1;
            return out;
        }
        let deadline = imp.ts_ms.saturating_add(self.window_ms);
        let early = self.held.remove(&imp.id);
        if deadline <= self.watermark && !readmitted {
            self.stats.late_impressions += 1;
            if early.is_some() {
                self.stats.late_actions += 1;
            }
            return out;
        }
        self.stats.impressions += 1;
        match early {
            Some((_, _, held)) if held.ts_ms < deadline => {
                self.stats.early_actions += 1;
                self.emit(imp, true, &mut out);
            }
            early => {
                if early.is_some() {
                    self.stats.late_actions += 1;
                }
                let mut sample = imp;
                let id = std::mem::take(&mut sample.id).into_boxed_str();
                let heap = heap_bytes(&sample);
                let ts = sample.ts_ms;
                self.pending.insert(id, ts, Pending { sample, pos }, heap);
            }
        }
        self.enforce_cap(&mut out);
        out
    }

    /// Adds an action read at `pos`. Returns the samples it completes: its impression's
    /// positive when this is the first positive action in the impression's window, and
    /// negatives closed by the memory cap when the action is held.
    pub fn insert_action(
        &mut self,
        action: &Action<'_>,
        pos: Position,
        now_ms: u64,
    ) -> Vec<Sample> {
        self.observe(action.ts_ms, now_ms);
        if !self.positive.iter().any(|p| *p == action.action) {
            self.stats.ignored_actions += 1;
            return Vec::new();
        }
        let id: &str = &action.id;
        if let Some((ts, _)) = self.pending.get(id) {
            if action.ts_ms >= ts.saturating_add(self.window_ms) {
                self.stats.late_actions += 1;
                return Vec::new();
            }
            let (id, _, p) = self.pending.remove(id).expect("pending");
            let mut sample = p.sample;
            sample.id = id.into();
            let mut out = Vec::with_capacity(1);
            self.emit(sample, true, &mut out);
            return out;
        }
        if let Some((_, &positive)) = self.closed.get(id) {
            if positive {
                self.stats.duplicate_actions += 1;
            } else {
                self.stats.late_actions += 1;
            }
            return Vec::new();
        }
        if self.held.contains(id) {
            self.stats.duplicate_actions += 1;
            return Vec::new();
        }
        if self.hold_ms == 0 {
            self.stats.orphan_actions += 1;
            return Vec::new();
        }
        let due = action.ts_ms.saturating_add(self.hold_ms);
        self.held.insert(
            id.into(),
            due,
            Held {
                ts_ms: action.ts_ms,
                pos,
            },
            0,
        );
        let mut out = Vec::new();
        self.enforce_cap(&mut out);
        out
    }

    /// Closes what the watermark (moved on with `now` while idle) has passed: impressions
    /// whose window ended (negatives), held actions
    /// (orphans) and closed-id records.
    /// Before the first event there is no event time to move on from: nothing happens.
    pub fn expire(&mut self, now_ms: u64) -> Vec<Sample> {
        if !self.seen {
            return Vec::new();
        }
        let idle = now_ms.saturating_sub(self.base.1);
        self.watermark = self.watermark.max(self.base.0.saturating_add(idle));
        let mut out = Vec::new();
        if let Some(at) = self.watermark.checked_sub(self.window_ms) {
            while let Some((id, _, p)) = self.pending.pop_due(at) {
                let mut sample = p.sample;
                sample.id = id.into();
                self.emit(sample, false, &mut out);
            }
        }
        while self.held.pop_due(self.watermark).is_some() {
            self.stats.orphan_actions += 1;
        }
        while self.closed.pop_due(self.watermark).is_some() {}
        out
    }

    /// Closes every waiting impression as a negative (the input has ended); held actions
    /// count as orphans.
    pub fn flush(&mut self) -> Vec<Sample> {
        let mut out = Vec::new();
        while let Some((id, _, p)) = self.pending.pop_due(u64::MAX) {
            let mut sample = p.sample;
            sample.id = id.into();
            self.emit(sample, false, &mut out);
        }
        while self.held.pop_due(u64::MAX).is_some() {
            self.stats.orphan_actions += 1;
        }
        out
    }

    /// Labels and emits `sample`, remembering its id for one more window.
    fn emit(&mut self, mut sample: Sample, label: bool, out: &mut Vec<Sample>) {
        sample.label = label;
        if label {
            self.stats.positives += 1;
        } else {
            self.stats.negatives += 1;
        }
        let forget = self.watermark.saturating_add(self.window_ms);
        self.closed
            .insert(sample.id.as_str().into(), forget, label, 0);
        out.push(sample);
    }

    /// Frees memory down to the cap: closed-id records, then held actions, then the oldest
    /// impressions (negatives, not remembered).
    fn enforce_cap(&mut self, out: &mut Vec<Sample>) {
        while self.memory_bytes() > self.cap {
            if self.closed.pop_due(u64::MAX).is_some() {
                continue;
            }
            if self.held.pop_due(u64::MAX).is_some() {
                self.stats.orphan_actions += 1;
                continue;
            }
            let Some((id, _, p)) = self.pending.pop_due(u64::MAX) else {
                break;
            };
            let mut sample = p.sample;
            sample.id = id.into();
            sample.label = false;
            self.stats.negatives += 1;
            self.stats.capped += 1;
            out.push(sample);
        }
    }
}

/// Heap bytes of a sample's keys and dense values (its id is counted apart).
fn heap_bytes(s: &Sample) -> usize {
    s.keys.capacity() * size_of::<Vec<u64>>()
        + s.keys
            .iter()
            .map(|k| k.capacity() * size_of::<u64>())
            .sum::<usize>()
        + s.dense.capacity() * size_of::<f32>()
}
