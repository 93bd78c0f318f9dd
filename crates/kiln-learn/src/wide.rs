//! The wide trainer: logistic regression on hashed features with FTRL-Proximal, for a
//! wide-only recsys model (every sparse feature `part = "wide"`, tables of dim 1).
//!
//! The model: `p = sigmoid(bias + sum over features of the summed weights of its keys)`. A
//! coordinate is a (table, key) pair; a key occurring `m` times in one sample (sum pooling)
//! has feature value `m`, so its gradient is `(p - y) * m`. The bias (`wide.bias`) is one more
//! FTRL coordinate with value 1 in every sample.
//!
//! Progressive validation: each sample is scored with the current weights, then learned,
//! before the next sample is scored, so the returned probabilities are honest predictions.
//!
//! Publishing: each table's rows are `[w | z | n]` in a [`ParamTable`]; deltas and served
//! snapshots carry `w` only. The bias is a dense weight, not a table row: it is read with
//! [`WideTrainer::bias`] and published by the runner as a new model version (the `wide.bias`
//! tensor), on the dense-weights cadence, not through the delta stream.
//!
//! # Throughput
//!
//! A batch is learned in two passes. First every key of the batch is listed with its table and
//! its hash (the samples' key lists, separate allocations, are prefetched a few samples ahead),
//! and every table makes room for all of them, so no slot moves during the batch. Then sample by
//! sample: while the keys of one sample are found or inserted (scoring), the table entries of
//! the key `PREFETCH_KEYS` further on in the batch are prefetched, so about a sample's worth
//! of cache misses is in flight at once; then the sample's distinct coordinates are gathered into
//! lanes and updated [`LANES`] at a time ([`ftrl::update_lanes`], vector square roots and
//! divisions, bit for bit the scalar result), and written back in place. No allocation per
//! sample (the lists are reused scratch; duplicates are found with a mark bit on the slot).
//! Samples stay strictly sequential: each is scored with every earlier sample learned.
//! `benches/ftrl.rs` measures it against a plain `HashMap<u64, [f64; 3]>` FTRL in the same run;
//! the figures are in [`crate::params`].

use std::path::Path;
use std::sync::Arc;

use kiln_embed::{Clock, SystemClock, TableConfig};
use kiln_recsys::spec::{Part, RecsysSpec};

use crate::error::{Error, Result};
use crate::optim::ftrl::{self, FtrlParams, LANES};
use crate::params::{prefetch, ParamTable, Slot};
use crate::sample::Sample;
use crate::trainer::{TableDelta, Trainer};

/// How many keys ahead of the one being learned the trainer prefetches table entries (about one
/// sample of 40 keys, 2 us: far more than a memory access takes, few enough lines to stay in
/// L1; 24 to 256 measured within 4% of each other).
const PREFETCH_KEYS: usize = 48;
/// How many samples ahead the trainer prefetches the samples' key lists when it hashes a batch.
const INPUT_AHEAD: usize = 8;

/// The file holding the bias and the FTRL settings in a saved state.
const STATE_FILE: &str = "wide.json";

/// One key of the batch being learned, with its table and hash.
#[derive(Debug, Clone, Copy)]
struct BatchKey {
    key: u64,
    hash: u64,
    table: u32,
}

/// One distinct coordinate of the sample being learned.
#[derive(Clone, Copy)]
struct Coord {
    table: u32,
    slot: Slot,
    count: f32,
}

/// FTRL-Proximal logistic regression over a wide-only model's tables.
#[derive(Debug)]
pub struct WideTrainer {
    ftrl: FtrlParams,
    tables: Vec<ParamTable>,
    /// For each sparse feature of the spec, in order, its index in `tables`.
    feature_table: Vec<u32>,
    /// The bias's `[w, z, n]`.
    bias: [f64; 3],
    coords: Vec<Coord>,
    /// Every key of the batch being learned, in order.
    keys: Vec<BatchKey>,
    /// Where each sample's keys end in `keys`.
    ends: Vec<usize>,
    /// Scratch: keys of the batch per table.
    per_table: Vec<usize>,
}

impl std::fmt::Debug for Coord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}x{}", self.table, self.slot, self.count)
    }
}

impl WideTrainer {
    /// A trainer with zero weights for `spec`, which must be wide-only, on the system clock.
    pub fn new(spec: &RecsysSpec, ftrl: FtrlParams) -> Result<Self> {
        Self::with_clock(spec, ftrl, Arc::new(SystemClock))
    }

    /// [`WideTrainer::new`] reading time (row TTLs) from `clock`.
    pub fn with_clock(spec: &RecsysSpec, ftrl: FtrlParams, clock: Arc<dyn Clock>) -> Result<Self> {
        ftrl.validate()
            .map_err(|e| Error::config("learn.toml", "optimizer.ftrl", e))?;
        let mut tables: Vec<ParamTable> = Vec::new();
        let mut spec_to_ours = vec![None; spec.tables.len()];
        let mut feature_table = Vec::with_capacity(spec.sparse.len());
        for (i, f) in spec.sparse.iter().enumerate() {
            if f.part != Part::Wide {
                return Err(Error::config(
                    "config.toml",
                    format!("parameters.sparse[{i}].part"),
                    format!(
                        "feature '{}' is part = \"deep\"; the FTRL trainer learns wide-only models",
                        f.name
                    ),
                ));
            }
            let ours = match spec_to_ours[f.table] {
                Some(t) => t,
                None => {
                    let t = &spec.tables[f.table];
                    let config = TableConfig {
                        name: t.name.clone(),
                        dim: 1,
                        ..t.config.clone()
                    };
                    tables.push(ParamTable::with_clock(config, 3, clock.clone())?);
                    spec_to_ours[f.table] = Some(tables.len() as u32 - 1);
                    tables.len() as u32 - 1
                }
            };
            feature_table.push(ours);
        }
        Ok(WideTrainer {
            ftrl,
            tables,
            feature_table,
            bias: [0.0; 3],
            coords: Vec::with_capacity(64),
            keys: Vec::new(),
            ends: Vec::new(),
            per_table: Vec::new(),
        })
    }

    /// The FTRL settings.
    pub fn params(&self) -> &FtrlParams {
        &self.ftrl
    }

    /// The bias weight (`wide.bias`), for the runner to publish in a new model version (it is
    /// a dense weight: deltas carry table rows only).
    pub fn bias(&self) -> f32 {
        self.bias[0] as f32
    }

    /// The trainer's tables, one per served wide table.
    pub fn tables(&self) -> &[ParamTable] {
        &self.tables
    }

    /// The tables, to set admission filters.
    pub fn tables_mut(&mut self) -> &mut [ParamTable] {
        &mut self.tables
    }

    /// Removes rows past their tables' TTL or memory cap (tombstones for the next drain);
    /// returns how many. Call it periodically.
    pub fn maintain(&mut self) -> usize {
        self.tables.iter_mut().map(|t| t.maintain()).sum()
    }

    /// The probability the current weights give `sample`, learning nothing.
    pub fn predict(&self, sample: &Sample) -> f32 {
        let mut logit = self.bias[0];
        for (keys, &t) in sample.keys.iter().zip(&self.feature_table) {
            let table = &self.tables[t as usize];
            for &k in keys {
                if let Some(s) = table.find(k) {
                    logit += table.row(s)[0] as f64;
                }
            }
        }
        ftrl::sigmoid(logit) as f32
    }

    /// Scores the sample whose keys are `keys` (from [`WideTrainer::gather`]; inserting
    /// admitted new keys), then learns it; returns the score. While it walks the keys, it
    /// prefetches the entries of the key [`PREFETCH_KEYS`] further on in the batch (`ahead`), so
    /// a sample's worth of cache misses is in flight at any time.
    #[inline]
    fn learn_one(&mut self, label: bool, keys: &[BatchKey], ahead: &[BatchKey]) -> f64 {
        let mut logit = self.bias[0];
        self.coords.clear();
        for (i, e) in keys.iter().enumerate() {
            if let Some(a) = ahead.get(i) {
                self.tables[a.table as usize].prefetch_hashed(a.hash);
            }
            let t = e.table;
            let table = &mut self.tables[t as usize];
            let Some(slot) = table.find_or_insert_hashed(e.key, e.hash) else {
                continue; // not admitted: weight 0, nothing to learn
            };
            logit += table.row(slot)[0] as f64;
            if table.mark(slot) {
                if let Some(c) = self
                    .coords
                    .iter_mut()
                    .find(|c| c.table == t && c.slot == slot)
                {
                    c.count += 1.0;
                }
            } else {
                self.coords.push(Coord {
                    table: t,
                    slot,
                    count: 1.0,
                });
            }
        }
        let p = ftrl::sigmoid(logit);
        let err = p - if label { 1.0 } else { 0.0 };
        // the rows' `[w, z, n]` in lanes, updated LANES coordinates at a time
        let (mut w, mut z, mut n) = ([0.0; LANES], [0.0; LANES], [0.0; LANES]);
        let mut g = [0.0; LANES];
        for chunk in self.coords.chunks(LANES) {
            for (i, c) in chunk.iter().enumerate() {
                let row = self.tables[c.table as usize].row(c.slot);
                (w[i], z[i], n[i]) = (row[0], row[1], row[2]);
                g[i] = err * c.count as f64;
            }
            ftrl::update_lanes(&self.ftrl, &mut w, &mut z, &mut n, &g);
            for (i, c) in chunk.iter().enumerate() {
                let table = &mut self.tables[c.table as usize];
                table.row_mut(c.slot)[..3].copy_from_slice(&[w[i], z[i], n[i]]);
                table.touch(c.slot);
                table.unmark(c.slot);
            }
        }
        ftrl::update_row(&self.ftrl, &mut self.bias, &[err]);
        p
    }

    /// Lists every key of `batch` with its table and hash, in order, into `self.keys`, and
    /// where each sample's keys end into `self.ends`; makes room in every table for all of
    /// them, so no slot moves while the batch is learned.
    fn gather(&mut self, batch: &[Sample]) {
        self.keys.clear();
        self.ends.clear();
        self.per_table.clear();
        self.per_table.resize(self.tables.len(), 0);
        for (i, s) in batch.iter().enumerate() {
            // the samples' key lists are separate allocations, likely out of the cache:
            // prefetch the list of lists of the sample 2 * INPUT_AHEAD on, and the lists of
            // the sample INPUT_AHEAD on (its list of lists arrived meanwhile)
            if let Some(a) = batch.get(i + 2 * INPUT_AHEAD) {
                let bytes = std::mem::size_of_val(a.keys.as_slice());
                for off in (0..bytes).step_by(64) {
                    prefetch(a.keys.as_ptr().cast::<u8>().wrapping_add(off));
                }
            }
            if let Some(a) = batch.get(i + INPUT_AHEAD) {
                for keys in &a.keys {
                    prefetch(keys.as_ptr());
                }
            }
            for (keys, &t) in s.keys.iter().zip(&self.feature_table) {
                self.per_table[t as usize] += keys.len();
                self.keys.extend(keys.iter().map(|&key| BatchKey {
                    key,
                    hash: ParamTable::hash(key),
                    table: t,
                }));
            }
            self.ends.push(self.keys.len());
        }
        for (t, &n) in self.tables.iter_mut().zip(&self.per_table) {
            t.tick();
            t.reserve(n);
        }
    }

    fn table_index(&self, name: &str) -> Option<&ParamTable> {
        self.tables.iter().find(|t| t.name() == name)
    }
}

impl Trainer for WideTrainer {
    fn train(&mut self, batch: &[Sample]) -> Vec<f32> {
        self.gather(batch);
        let keys = std::mem::take(&mut self.keys);
        let d = PREFETCH_KEYS;
        for e in &keys[..d.min(keys.len())] {
            self.tables[e.table as usize].prefetch_hashed(e.hash);
        }
        let mut probs = Vec::with_capacity(batch.len());
        let mut start = 0;
        for (i, sample) in batch.iter().enumerate() {
            let end = self.ends[i];
            let ahead = keys
                .get(start + d..(end + d).min(keys.len()))
                .unwrap_or(&[]);
            probs.push(self.learn_one(sample.label, &keys[start..end], ahead) as f32);
            start = end;
        }
        self.keys = keys;
        probs
    }

    fn drain_deltas(&mut self) -> Vec<TableDelta> {
        self.tables
            .iter_mut()
            .map(|t| t.drain())
            .filter(|d| !d.keys.is_empty() || !d.tombstones.is_empty())
            .collect()
    }

    fn rows(&self, table: &str, keys: &[u64]) -> Option<Vec<Option<Vec<f32>>>> {
        let t = self.table_index(table)?;
        Some(keys.iter().map(|&k| t.served(k)).collect())
    }

    fn save(&self, dir: &Path) -> Result<()> {
        for t in &self.tables {
            t.snapshot_to(&dir.join(format!("{}.snap", t.name())))?;
        }
        let state = serde_json::json!({
            "bias": { "w": self.bias[0], "z": self.bias[1], "n": self.bias[2] },
            "ftrl": { "alpha": self.ftrl.alpha, "beta": self.ftrl.beta, "l1": self.ftrl.l1, "l2": self.ftrl.l2 },
            "tables": self.tables.iter().map(|t| t.name()).collect::<Vec<_>>(),
        });
        let path = dir.join(STATE_FILE);
        std::fs::write(&path, state.to_string()).map_err(|e| Error::io(path, e))
    }

    fn load(&mut self, dir: &Path) -> Result<()> {
        let path = dir.join(STATE_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let bad = |reason: String| Error::Checkpoint {
            path: path.clone(),
            reason,
        };
        let state: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let mut bias = [0.0; 3];
        for (i, field) in ["w", "z", "n"].iter().enumerate() {
            bias[i] = state["bias"][field]
                .as_f64()
                .ok_or_else(|| bad(format!("bias.{field} is missing or not a number")))?;
        }
        let names: Vec<&str> = self.tables.iter().map(|t| t.name()).collect();
        if state["tables"] != serde_json::json!(names) {
            return Err(bad(format!(
                "tables {} were saved, this model has {names:?}",
                state["tables"]
            )));
        }
        // every table read and checked before any is replaced: a refused state changes nothing
        let mut read = Vec::with_capacity(self.tables.len());
        for t in &self.tables {
            read.push(t.read_snapshot(&dir.join(format!("{}.snap", t.name())))?.0);
        }
        for (t, table) in self.tables.iter_mut().zip(&read) {
            t.replace_rows(table);
        }
        self.bias = bias;
        Ok(())
    }

    fn snapshot_served(&self, dir: &Path) -> Result<()> {
        for t in &self.tables {
            t.served_snapshot(&dir.join(format!("{}.snap", t.name())))?;
        }
        Ok(())
    }
}
