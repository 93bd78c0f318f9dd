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
//! Per sample: the next sample's entries are prefetched (where each key's probe starts), every key
//! is found or inserted once (scoring), then each distinct coordinate is updated in place. No
//! allocation per sample (the coordinate list is reused scratch, duplicates are found with a
//! mark bit on the slot). `benches/ftrl.rs` measures it against a plain
//! `HashMap<u64, [f64; 3]>` FTRL in the same run; the figures are in [`crate::params`].

use std::path::Path;
use std::sync::Arc;

use kiln_embed::{Clock, SystemClock, TableConfig};
use kiln_recsys::spec::{Part, RecsysSpec};

use crate::error::{Error, Result};
use crate::optim::ftrl::{self, FtrlParams};
use crate::params::{ParamTable, Slot};
use crate::sample::Sample;
use crate::trainer::{TableDelta, Trainer};

/// The file holding the bias and the FTRL settings in a saved state.
const STATE_FILE: &str = "wide.json";

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

    /// Scores one sample (inserting admitted new keys), then learns it; returns the score.
    /// The entries of `next`'s keys are prefetched feature by feature meanwhile, so their
    /// cache misses overlap this sample's work a few at a time.
    #[inline]
    fn learn_one(&mut self, sample: &Sample, next: Option<&Sample>) -> f64 {
        let mut logit = self.bias[0];
        self.coords.clear();
        for (f, (keys, &t)) in sample.keys.iter().zip(&self.feature_table).enumerate() {
            let table = &mut self.tables[t as usize];
            if let Some(ahead) = next.and_then(|n| n.keys.get(f)) {
                for &k in ahead {
                    table.prefetch(k);
                }
            }
            for &k in keys {
                let Some(slot) = table.find_or_insert(k) else {
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
        }
        let p = ftrl::sigmoid(logit);
        let err = p - if sample.label { 1.0 } else { 0.0 };
        for c in &self.coords {
            let table = &mut self.tables[c.table as usize];
            ftrl::update_row(&self.ftrl, table.row_mut(c.slot), &[err * c.count as f64]);
            table.touch(c.slot);
            table.unmark(c.slot);
        }
        ftrl::update_row(&self.ftrl, &mut self.bias, &[err]);
        p
    }

    fn table_index(&self, name: &str) -> Option<&ParamTable> {
        self.tables.iter().find(|t| t.name() == name)
    }
}

impl Trainer for WideTrainer {
    fn train(&mut self, batch: &[Sample]) -> Vec<f32> {
        // room for every key of the batch, so no slot moves while a sample holds it
        let mut per_table = vec![0usize; self.tables.len()];
        for s in batch {
            for (keys, &t) in s.keys.iter().zip(&self.feature_table) {
                per_table[t as usize] += keys.len();
            }
        }
        for (t, n) in self.tables.iter_mut().zip(per_table) {
            t.tick();
            t.reserve(n);
        }
        let mut probs = Vec::with_capacity(batch.len());
        for (i, sample) in batch.iter().enumerate() {
            probs.push(self.learn_one(sample, batch.get(i + 1)) as f32);
        }
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
