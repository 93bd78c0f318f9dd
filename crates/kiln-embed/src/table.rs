//! The table: shards behind reader-writer locks, a writer gate, inserts, removals, eviction.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::admission::AdmissionFilter;
use crate::buf::Region;
use crate::config::{Clock, SystemClock, TableConfig};
use crate::error::{EmbedError, Result};
use crate::hash::mix64;
use crate::metrics::EmbedMetrics;
use crate::shard::Shard;

/// Bytes accounted per row beyond its elements: key, tick and timestamp (20), two index
/// buckets at the maximum load factor of 1/2 (32), rounded up.
pub(crate) const ROW_OVERHEAD_BYTES: u64 = 56;

/// A shard lock on its own cache lines, so readers of neighbouring shards do not contend.
#[repr(align(128))]
pub(crate) struct PaddedShard(pub(crate) RwLock<Shard>);

/// State only writers touch, behind one mutex: writers are serialized (there is typically
/// one delta stream per table), readers never take it.
pub(crate) struct WriterState {
    /// Last applied sequence number per delta source.
    pub(crate) sources: HashMap<String, u64>,
    /// Next update tick; ticks order rows by last update for cap eviction.
    pub(crate) next_tick: u64,
    /// Live rows (mirrored into the metrics).
    pub(crate) rows: u64,
    /// Keys evicted since the last [`Table::drain_evicted`] (when journaling).
    pub(crate) journal: Vec<u64>,
}

/// Counts from [`Table::upsert`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UpsertReport {
    /// New rows inserted.
    pub inserted: usize,
    /// Existing rows overwritten.
    pub updated: usize,
    /// New rows refused by the admission filter.
    pub rejected: usize,
    /// Rows evicted because the inserts crossed the memory cap.
    pub evicted: usize,
}

/// Counts from [`Table::maintain`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MaintainReport {
    /// Rows removed by the TTL.
    pub expired: usize,
    /// Rows removed by the memory cap.
    pub capped: usize,
}

/// An embedding table: u64 key -> `dim` floats. See the crate docs for the design.
pub struct Table {
    pub(crate) config: TableConfig,
    pub(crate) shards: Box<[PaddedShard]>,
    pub(crate) shard_mask: usize,
    pub(crate) writer: Mutex<WriterState>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) metrics: Arc<EmbedMetrics>,
    pub(crate) row_cost: u64,
    /// Low key bits that choose the shard of a direct table (`None`: hashed).
    pub(crate) direct_shift: Option<u32>,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("config", &self.config)
            .field("rows", &self.len())
            .finish()
    }
}

impl Table {
    /// An empty table on the system clock.
    pub fn new(config: TableConfig) -> Result<Self> {
        Self::with_clock(config, Arc::new(SystemClock))
    }

    /// An empty table reading time from `clock`.
    pub fn with_clock(config: TableConfig, clock: Arc<dyn Clock>) -> Result<Self> {
        config.validate()?;
        let direct_shift = config.key_space.map(|_| config.shards.trailing_zeros());
        let shards = match config.key_space {
            Some(r) => {
                // shard s holds the keys k with k % shards == s, in slots 0..ceil((r - s) / shards)
                let n = config.shards as u64;
                let slots = |s: usize| r.saturating_sub(s as u64).div_ceil(n) as usize;
                let row_bytes = config.dim * config.storage.size();
                let region = Region::zeroed(r as usize * row_bytes);
                let mut offset = 0;
                (0..config.shards)
                    .map(|s| {
                        let shard = Shard::new_direct(
                            config.dim,
                            config.storage,
                            slots(s),
                            config.shards.trailing_zeros(),
                            &region,
                            offset,
                        );
                        offset += slots(s) * row_bytes;
                        PaddedShard(RwLock::new(shard))
                    })
                    .collect()
            }
            None => (0..config.shards)
                .map(|_| {
                    PaddedShard(RwLock::new(Shard::new(
                        config.dim,
                        config.storage,
                        config.initial_rows.div_ceil(config.shards),
                    )))
                })
                .collect(),
        };
        let row_cost = (config.dim * config.storage.size()) as u64 + ROW_OVERHEAD_BYTES;
        Ok(Table {
            shard_mask: config.shards - 1,
            shards,
            writer: Mutex::new(WriterState {
                sources: HashMap::new(),
                next_tick: 1,
                rows: 0,
                journal: Vec::new(),
            }),
            clock,
            metrics: Arc::new(EmbedMetrics::new(config.name.clone())),
            row_cost,
            direct_shift,
            config,
        })
    }

    /// The table's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Elements per row.
    pub fn dim(&self) -> usize {
        self.config.dim
    }

    /// The configuration.
    pub fn config(&self) -> &TableConfig {
        &self.config
    }

    /// The table's metrics (shared, so a collector can hold them).
    pub fn metrics(&self) -> &Arc<EmbedMetrics> {
        &self.metrics
    }

    /// Live rows.
    pub fn len(&self) -> usize {
        self.metrics.rows.load(Relaxed) as usize
    }

    /// Whether the table has no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of one row's elements.
    pub(crate) fn row_bytes(&self) -> u64 {
        (self.config.dim * self.config.storage.size()) as u64
    }

    /// Bytes accounted per row against the memory cap: `dim * element size + 56`.
    pub fn row_cost_bytes(&self) -> u64 {
        self.row_cost
    }

    /// Bytes actually allocated by the shards (capacity, including free slots).
    pub fn heap_bytes(&self) -> usize {
        self.shards.iter().map(|s| s.0.read().heap_bytes()).sum()
    }

    /// The hash a key is found by and its shard: the mixed key and high bits of it (hashed),
    /// or the key itself and its low bits (direct).
    #[inline(always)]
    pub(crate) fn route(&self, key: u64) -> (u64, usize) {
        if self.direct_shift.is_some() {
            (key, key as usize & self.shard_mask)
        } else {
            let h = mix64(key);
            (h, (h >> 40) as usize & self.shard_mask)
        }
    }

    /// Whether `key` has a row.
    pub fn contains(&self, key: u64) -> bool {
        let (h, s) = self.route(key);
        self.shards[s].0.read().find(key, h).is_some()
    }

    /// Copies the row of `key` into `out` (`dim` floats); returns false, leaving `out`
    /// untouched, when the key is missing.
    pub fn get_into(&self, key: u64, out: &mut [f32]) -> Result<bool> {
        if out.len() != self.config.dim {
            return Err(EmbedError::OutputSize {
                expected: self.config.dim,
                got: out.len(),
            });
        }
        let (h, s) = self.route(key);
        let shard = self.shards[s].0.read();
        Ok(match shard.find(key, h) {
            Some(slot) => {
                shard.copy_row(slot, out);
                true
            }
            None => false,
        })
    }

    /// The row of `key`, if present.
    pub fn get(&self, key: u64) -> Option<Vec<f32>> {
        let mut v = vec![0.0; self.config.dim];
        self.get_into(key, &mut v).ok()?.then_some(v)
    }

    /// Calls `f(key, row)` for every row, shard by shard, in no particular order, under each
    /// shard's read lock (writers wait for the shard being read, lookups do not). For a
    /// trainer that keeps its state elsewhere and reads a restored snapshot back.
    pub fn for_each_row(&self, mut f: impl FnMut(u64, &[f32])) {
        let mut row = vec![0.0; self.config.dim];
        for shard in self.shards.iter() {
            let shard = shard.0.read();
            for slot in 0..shard.slots() {
                if let Some((key, _, _)) = shard.slot_meta(slot) {
                    shard.copy_row(slot as u32, &mut row);
                    f(key, &row);
                }
            }
        }
    }

    /// Writes rows (`values` holds `keys.len() * dim` floats, row-major). Existing keys are
    /// overwritten; new keys are inserted unless `filter` is given and does not admit them.
    /// This is the trainer-side write path; servers take rows through [`Table::apply`].
    pub fn upsert(
        &self,
        keys: &[u64],
        values: &[f32],
        filter: Option<&AdmissionFilter>,
    ) -> Result<UpsertReport> {
        self.check_rows(keys, values)?;
        let mut w = self.writer.lock();
        let mut report = self.write_rows(&mut w, keys, values, filter);
        report.evicted = self.enforce_cap_locked(&mut w);
        Ok(report)
    }

    /// Removes keys; returns how many were present.
    pub fn remove(&self, keys: &[u64]) -> usize {
        let mut w = self.writer.lock();
        self.remove_locked(&mut w, keys)
    }

    pub(crate) fn check_rows(&self, keys: &[u64], values: &[f32]) -> Result<()> {
        if keys.len().checked_mul(self.config.dim) != Some(values.len()) {
            return Err(EmbedError::DimMismatch {
                table: self.config.name.clone(),
                dim: self.config.dim,
                rows: keys.len(),
                values: values.len(),
            });
        }
        self.check_keys(keys)
    }

    /// Refuses keys outside a direct table's key space.
    pub(crate) fn check_keys(&self, keys: &[u64]) -> Result<()> {
        if let Some(r) = self.config.key_space {
            if let Some(&key) = keys.iter().find(|&&k| k >= r) {
                return Err(EmbedError::KeyOutOfRange {
                    table: self.config.name.clone(),
                    key,
                    key_space: r,
                });
            }
        }
        Ok(())
    }

    /// Keys' positions grouped by shard: `(order, starts)` with shard `s` owning
    /// `order[starts[s]..starts[s + 1]]`, positions ascending within a shard.
    fn group_by_shard(&self, keys: &[u64]) -> (Vec<u32>, Vec<usize>) {
        let mut starts = vec![0usize; self.shards.len() + 1];
        let shard_ids: Vec<u32> = keys.iter().map(|&k| self.route(k).1 as u32).collect();
        for &s in &shard_ids {
            starts[s as usize + 1] += 1;
        }
        for i in 1..starts.len() {
            starts[i] += starts[i - 1];
        }
        let mut fill = starts.clone();
        let mut order = vec![0u32; keys.len()];
        for (pos, &s) in shard_ids.iter().enumerate() {
            order[fill[s as usize]] = pos as u32;
            fill[s as usize] += 1;
        }
        (order, starts)
    }

    pub(crate) fn write_rows(
        &self,
        w: &mut WriterState,
        keys: &[u64],
        values: &[f32],
        filter: Option<&AdmissionFilter>,
    ) -> UpsertReport {
        let dim = self.config.dim;
        let secs = (self.clock.now_ms() / 1000).min(u32::MAX as u64) as u32;
        let (order, starts) = self.group_by_shard(keys);
        let mut report = UpsertReport::default();
        // Ticks follow input order (a later row in a batch is newer), whatever the shard order.
        let base_tick = w.next_tick;
        w.next_tick += keys.len() as u64;
        for (s, shard) in self.shards.iter().enumerate() {
            let group = &order[starts[s]..starts[s + 1]];
            if group.is_empty() {
                continue;
            }
            let mut shard = shard.0.write();
            for &pos in group {
                let pos = pos as usize;
                let (key, h) = (keys[pos], self.route(keys[pos]).0);
                if let Some(f) = filter {
                    if shard.find(key, h).is_none() && !f.admits(key) {
                        report.rejected += 1;
                        continue;
                    }
                }
                let tick = base_tick + pos as u64;
                if shard.upsert(key, h, &values[pos * dim..(pos + 1) * dim], tick, secs) {
                    report.inserted += 1;
                } else {
                    report.updated += 1;
                }
            }
        }
        w.rows += report.inserted as u64;
        self.metrics
            .admission_rejected
            .fetch_add(report.rejected as u64, Relaxed);
        self.publish_rows(w);
        report
    }

    pub(crate) fn remove_locked(&self, w: &mut WriterState, keys: &[u64]) -> usize {
        let (order, starts) = self.group_by_shard(keys);
        let mut removed = 0;
        for (s, shard) in self.shards.iter().enumerate() {
            let group = &order[starts[s]..starts[s + 1]];
            if group.is_empty() {
                continue;
            }
            let mut shard = shard.0.write();
            for &pos in group {
                let key = keys[pos as usize];
                removed += shard.remove(key, self.route(key).0) as usize;
            }
        }
        w.rows -= removed as u64;
        self.publish_rows(w);
        removed
    }

    fn publish_rows(&self, w: &WriterState) {
        self.metrics.rows.store(w.rows, Relaxed);
        self.metrics.bytes.store(w.rows * self.row_cost, Relaxed);
    }

    /// Evicts rows past the TTL, then enforces the memory cap. Call it periodically.
    pub fn maintain(&self) -> MaintainReport {
        let mut w = self.writer.lock();
        let expired = self.evict_expired_locked(&mut w);
        let capped = self.enforce_cap_locked(&mut w);
        MaintainReport { expired, capped }
    }

    /// Takes the keys evicted (by TTL or cap) since the last call, for publishing as
    /// tombstones. Empty unless [`TableConfig::journal_evictions`] is set.
    pub fn drain_evicted(&self) -> Vec<u64> {
        std::mem::take(&mut self.writer.lock().journal)
    }

    fn evict_expired_locked(&self, w: &mut WriterState) -> usize {
        let Some(ttl) = self.config.ttl else { return 0 };
        let now = self.clock.now_ms() / 1000;
        let ttl = ttl.as_secs();
        self.evict_locked(w, |_, secs| now.saturating_sub(secs as u64) > ttl, true)
    }

    pub(crate) fn enforce_cap_locked(&self, w: &mut WriterState) -> usize {
        let Some(cap) = self.config.memory_cap_bytes else {
            return 0;
        };
        let max_rows = cap / self.row_cost;
        if w.rows <= max_rows {
            return 0;
        }
        let target = (max_rows as f64 * self.config.evict_to) as u64;
        let n = (w.rows - target) as usize;
        // Least recently updated first: find the n-th smallest tick (ticks are unique).
        let mut ticks = Vec::with_capacity(w.rows as usize);
        for shard in self.shards.iter() {
            let shard = shard.0.read();
            ticks.extend((0..shard.slots()).filter_map(|s| shard.slot_meta(s).map(|m| m.1)));
        }
        let (_, &mut threshold, _) = ticks.select_nth_unstable(n - 1);
        drop(ticks);
        let evicted = self.evict_locked(w, |tick, _| tick <= threshold, false);
        tracing::info!(table = %self.config.name, evicted, rows = w.rows, cap_bytes = cap, "evicted rows to the memory cap");
        evicted
    }

    fn evict_locked(
        &self,
        w: &mut WriterState,
        pred: impl Fn(u64, u32) -> bool,
        ttl: bool,
    ) -> usize {
        let mut removed = Vec::new();
        let mut n = 0;
        for shard in self.shards.iter() {
            n += shard.0.write().evict_where(&pred, &mut removed);
        }
        w.rows -= n as u64;
        if self.config.journal_evictions {
            w.journal.extend_from_slice(&removed);
        }
        let counter = if ttl {
            &self.metrics.evicted_ttl
        } else {
            &self.metrics.evicted_cap
        };
        counter.fetch_add(n as u64, Relaxed);
        self.publish_rows(w);
        n
    }
}
