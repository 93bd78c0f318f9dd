//! The trainer's copy of one embedding table: a `kiln_embed::Table` of dim `2 * d` whose rows
//! are `[embedding | AdaGrad accumulator]`, so a row and its optimizer state are read and
//! written in one probe, the frequency admission filter for new rows, TTL and memory-cap
//! expiry with tombstones, and the keys changed since the last drain.
//!
//! Why a `kiln_embed::Table` rather than a trainer-only map: it already has the TTL by last
//! update, the memory cap, the eviction journal and checksummed snapshots that the server side
//! uses, with the same accounting; the trainer is its only writer, so its shard locks are
//! uncontended. Measured (perf, `benches/deep.rs`: dlrm_small, batches of 256, one thread), the
//! table's reads and writes (`get_into`, `upsert`) take about a tenth of a training step, so
//! a trainer-only map could gain at most that. The set of live keys is kept beside it (the
//! table has no iteration), for `write_weights`, served snapshots and checkpoints.

use std::path::Path;
use std::sync::Arc;

use kiln_embed::{AdmissionFilter, Clock, DefaultRow, StorageType, Table, TableConfig};
use kiln_recsys::spec::{Layout, TableSpec};

use super::batch::KeySet;
use crate::error::{Error, Result};
use crate::optim::adagrad::AdaGrad;

/// Rows copied per write when loading or snapshotting.
const CHUNK: usize = 4096;

/// One trainer-side table.
pub(crate) struct EmbStore {
    /// The served table's name.
    pub name: String,
    /// The served row width `d`.
    pub dim: usize,
    table: Table,
    served: TableConfig,
    /// Direct layout: keys are row numbers below this.
    key_space: Option<u64>,
    filter: Option<AdmissionFilter>,
    initial_accumulator: f32,
    live: KeySet,
    touched: KeySet,
    tombstones: KeySet,
    /// This batch's rows `[keys, 2 * dim]` and whether each key had a row.
    pub rows: Vec<f32>,
    present: Vec<bool>,
    write_keys: Vec<u64>,
}

fn table_err(name: &str) -> impl Fn(kiln_embed::EmbedError) -> Error + '_ {
    move |source| Error::Table {
        table: name.to_string(),
        source,
    }
}

impl EmbStore {
    /// An empty store for `spec` with rows of `dim`, on `clock`.
    pub fn new(
        spec: &TableSpec,
        dim: usize,
        key_space: Option<u64>,
        filter: Option<AdmissionFilter>,
        initial_accumulator: f32,
        clock: Arc<dyn Clock>,
    ) -> Result<Self> {
        let mut served = spec.config.clone();
        served.name = spec.name.clone();
        served.dim = dim;
        served.key_space = None;
        let mut config = served.clone();
        config.dim = 2 * dim;
        config.storage = StorageType::F32;
        config.journal_evictions = true;
        config.gap_policy = kiln_embed::GapPolicy::ApplyAndReport;
        // the same number of rows as a served table under the same cap
        if let Some(cap) = served.memory_cap_bytes {
            let served_row = (dim * served.storage.size()) as u64 + 56;
            config.memory_cap_bytes = Some(cap / served_row * (8 * dim as u64 + 56));
        }
        let table = Table::with_clock(config, clock).map_err(table_err(&spec.name))?;
        Ok(EmbStore {
            name: spec.name.clone(),
            dim,
            table,
            served,
            key_space: key_space.filter(|_| spec.layout == Layout::Direct),
            filter,
            initial_accumulator,
            live: KeySet::default(),
            touched: KeySet::default(),
            tombstones: KeySet::default(),
            rows: Vec::new(),
            present: Vec::new(),
            write_keys: Vec::new(),
        })
    }

    /// Inserts rows of served values (`keys.len() * dim`), with fresh accumulators.
    pub fn insert_served(&mut self, keys: &[u64], values: &[f32]) -> Result<()> {
        let d = self.dim;
        let mut buf = Vec::with_capacity(CHUNK * 2 * d);
        for (ks, vs) in keys.chunks(CHUNK).zip(values.chunks(CHUNK * d)) {
            buf.clear();
            for v in vs.chunks_exact(d) {
                buf.extend_from_slice(v);
                buf.extend(std::iter::repeat_n(self.initial_accumulator, d));
            }
            self.table
                .upsert(ks, &buf, None)
                .map_err(table_err(&self.name))?;
            self.live.extend(ks);
        }
        Ok(())
    }

    /// Reads the rows of `keys` into [`EmbStore::rows`]; a key without a row gets the
    /// table's default row (what serving pools for it) and a fresh accumulator, and with
    /// `observe` is counted `counts` times by the admission filter.
    pub fn gather(&mut self, keys: &[u64], counts: &[u32], observe: bool) {
        let d2 = 2 * self.dim;
        self.rows.resize(keys.len() * d2, 0.0);
        self.present.clear();
        for ((&key, &n), row) in keys.iter().zip(counts).zip(self.rows.chunks_exact_mut(d2)) {
            let found = self.table.get_into(key, row).unwrap_or(false);
            self.present.push(found);
            if found {
                continue;
            }
            match self.served.default_row {
                DefaultRow::Zeros => row[..self.dim].fill(0.0),
                DefaultRow::HashInit { .. } => {
                    row[..self.dim].copy_from_slice(&self.table.default_row(key)[..self.dim])
                }
            }
            row[self.dim..].fill(self.initial_accumulator);
            if let Some(f) = self.filter.as_ref().filter(|_| observe) {
                for _ in 0..n {
                    f.observe(key);
                }
            }
        }
    }

    /// Applies sparse AdaGrad with `grads` (`[keys, dim]`) to the gathered rows and writes
    /// back every row that exists or is admitted.
    pub fn update(&mut self, keys: &[u64], grads: &[f32], opt: &AdaGrad) -> Result<()> {
        let (d, d2) = (self.dim, 2 * self.dim);
        self.write_keys.clear();
        let mut inserted = Vec::new();
        for (u, &key) in keys.iter().enumerate() {
            if self.key_space.is_some_and(|r| key >= r) {
                continue;
            }
            let present = self.present[u];
            if !present && self.filter.as_ref().is_some_and(|f| !f.admits(key)) {
                continue;
            }
            let w = self.write_keys.len();
            if w != u {
                self.rows.copy_within(u * d2..(u + 1) * d2, w * d2);
            }
            opt.step_row(
                &mut self.rows[w * d2..(w + 1) * d2],
                &grads[u * d..(u + 1) * d],
            );
            self.write_keys.push(key);
            if !present {
                inserted.push(key);
            }
        }
        let n = self.write_keys.len();
        self.table
            .upsert(&self.write_keys, &self.rows[..n * d2], None)
            .map_err(table_err(&self.name))?;
        self.touched.extend(&self.write_keys);
        self.live.extend(inserted);
        self.take_evicted();
        Ok(())
    }

    fn take_evicted(&mut self) {
        for key in self.table.drain_evicted() {
            self.live.remove(&key);
            self.tombstones.insert(key);
        }
    }

    /// Expires rows past the TTL (and over the cap); returns how many went.
    pub fn maintain(&mut self) -> usize {
        let r = self.table.maintain();
        self.take_evicted();
        r.expired + r.capped
    }

    /// The served values of the rows changed since the last drain (keys ascending) and the
    /// keys removed since then that have no row now.
    pub fn drain(&mut self) -> (Vec<u64>, Vec<f32>, Vec<u64>) {
        let mut keys: Vec<u64> = self
            .touched
            .drain()
            .filter(|k| self.live.contains(k))
            .collect();
        keys.sort_unstable();
        let mut tombs: Vec<u64> = self
            .tombstones
            .drain()
            .filter(|k| !self.live.contains(k))
            .collect();
        tombs.sort_unstable();
        let values = self.served_rows(&keys);
        (keys, values, tombs)
    }

    /// The served values of `keys` (all present), `[keys, dim]`.
    fn served_rows(&self, keys: &[u64]) -> Vec<f32> {
        let d = self.dim;
        let mut row = vec![0.0; 2 * d];
        let mut out = Vec::with_capacity(keys.len() * d);
        for &k in keys {
            if !self.table.get_into(k, &mut row).unwrap_or(false) {
                row[..d].fill(0.0);
            }
            out.extend_from_slice(&row[..d]);
        }
        out
    }

    /// The served row of `key`, if it has one.
    pub fn served_row(&self, key: u64) -> Option<Vec<f32>> {
        self.table.get(key).map(|mut r| {
            r.truncate(self.dim);
            r
        })
    }

    /// Every live key, ascending.
    pub fn keys(&self) -> Vec<u64> {
        let mut k: Vec<u64> = self.live.iter().copied().collect();
        k.sort_unstable();
        k
    }

    /// The served table as safetensors data: `(weight [n, dim], keys)`; a direct table
    /// writes rows `0..key_space` (default rows where it has none) and no keys.
    pub fn served_tensor(&self) -> (Vec<f32>, Option<Vec<u64>>) {
        match self.key_space {
            Some(r) => {
                let d = self.dim;
                let mut out = Vec::with_capacity(r as usize * d);
                for k in 0..r {
                    match self.served_row(k) {
                        Some(row) => out.extend_from_slice(&row),
                        None => out.extend_from_slice(&self.table.default_row(k)[..d]),
                    }
                }
                (out, None)
            }
            None => {
                let keys = self.keys();
                (self.served_rows(&keys), Some(keys))
            }
        }
    }

    /// Writes the served values as a kiln-embed snapshot at `path`.
    pub fn snapshot_served(&self, path: &Path) -> Result<()> {
        let served = Table::new(self.served.clone()).map_err(table_err(&self.name))?;
        let keys = self.keys();
        for ks in keys.chunks(CHUNK) {
            served
                .upsert(ks, &self.served_rows(ks), None)
                .map_err(table_err(&self.name))?;
        }
        served.snapshot_to(path).map_err(table_err(&self.name))?;
        Ok(())
    }

    /// Writes the full rows (values and accumulators, with their update times) to `path`.
    pub fn save(&self, path: &Path) -> Result<()> {
        self.table
            .snapshot_to(path)
            .map_err(table_err(&self.name))?;
        Ok(())
    }

    /// Reads the rows [`EmbStore::save`] wrote (`keys` are its live keys), for
    /// [`EmbStore::install`].
    pub fn restore(&self, path: &Path, keys: Vec<u64>, clock: Arc<dyn Clock>) -> Result<Restored> {
        let config = self.table.config().clone();
        let (table, info) =
            Table::restore_with_clock(config, path, clock).map_err(table_err(&self.name))?;
        if info.rows != keys.len() as u64 {
            return Err(Error::Checkpoint {
                path: path.to_path_buf(),
                reason: format!(
                    "table {}: {} rows in the snapshot, {} keys in the checkpoint",
                    self.name,
                    info.rows,
                    keys.len()
                ),
            });
        }
        Ok(Restored(table, keys.into_iter().collect()))
    }

    /// Replaces the rows with restored ones.
    pub fn install(&mut self, Restored(table, live): Restored) {
        self.table = table;
        self.live = live;
        self.touched.clear();
        self.tombstones.clear();
    }
}

/// A table read back from a checkpoint and its live keys.
pub(crate) struct Restored(Table, KeySet);
