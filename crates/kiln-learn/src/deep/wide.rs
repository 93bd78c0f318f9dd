//! The wide part of a Wide & Deep model in the deep trainer: the dim-1 tables of the features
//! with `part = "wide"` and `wide.bias`, whose weights add to the top MLP's logit (as the recsys
//! backend's wide sum adds them), learned by FTRL-Proximal per coordinate on the gradient of
//! that joint logit.
//!
//! - Scoring adds, to each sample's deep logit, `wide.bias` and then each wide feature's summed
//!   weights, in spec order and in f32, as serving does; a key without a row weighs 0 (wide
//!   tables have zero default rows).
//! - Learning: a coordinate's gradient is the log-loss gradient of the joint logit, `p - y`,
//!   times the key's count in the sample, summed over the mini-batch (every sample of a batch
//!   is scored before any is learned; at batch 1 this is the wide trainer's per-sample FTRL).
//!   The bias is one more coordinate, of value 1 in every sample. The rows are the wide
//!   trainer's [`ParamTable`]s of `[w | z | n]` and the update is [`ftrl::update_row`].
//! - The rows start from the served weights: a served weight `w` becomes the state
//!   `n = 0, z = -sign(w) (|w| (beta / alpha + l2) + l1)`, whose FTRL weight is `w`.
//! - Publishing: table rows as deltas (their `w`), `wide.bias` as a dense tensor of the next
//!   model version (deltas carry table rows only), as the wide trainer publishes them.

use std::path::Path;
use std::sync::Arc;

use kiln_embed::{AdmissionFilter, Clock, DefaultRow, TableConfig};
use kiln_recsys::spec::{Layout, Part, RecsysSpec};
use kiln_recsys::weights::WeightsFile;

use super::batch::KeyMap;
use crate::error::{Error, Result};
use crate::optim::ftrl::{self, FtrlParams};
use crate::params::ParamTable;
use crate::sample::Sample;
use crate::trainer::TableDelta;

/// The served tensor of the bias.
pub(super) const BIAS: &str = kiln_recsys::wide::BIAS;
/// The bias's `[w, z, n]` in a checkpoint's dense file.
pub(super) const BIAS_STATE: &str = "wide.bias.ftrl";

/// Ids above this are padding in serving (an INT64 -1); a sample never pools them.
const PADDING: u64 = u64::MAX;

/// A wide table's served rows: its name, keys ascending and their weights.
pub(crate) type ServedRows = (String, Vec<u64>, Vec<f32>);

/// One wide feature.
struct WideFeature {
    /// Its index in the spec's `sparse` (and in a sample's `keys`).
    input: usize,
    /// Its table in [`WideHead::tables`].
    table: usize,
    max_ids: usize,
}

/// The wide tables and bias, with their FTRL state.
pub(crate) struct WideHead {
    ftrl: FtrlParams,
    tables: Vec<ParamTable>,
    features: Vec<WideFeature>,
    /// `wide.bias`'s `[w, z, n]`, when the model has a bias (a wide feature or the tensor).
    bias: Option<[f32; 3]>,
    /// Scratch: each coordinate's summed gradient, per table.
    grads: Vec<KeyMap<f64>>,
}

/// The FTRL state whose weight (at `n = 0`) is `w`.
fn state_of(p: &FtrlParams, w: f32) -> [f32; 3] {
    if w == 0.0 {
        return [0.0; 3];
    }
    let w64 = w as f64;
    let z = -(w64.abs() * (p.beta / p.alpha + p.l2) + p.l1).copysign(w64);
    [w, z as f32, 0.0]
}

impl WideHead {
    /// The wide part of `spec` starting from `weights`; empty when the model has none. The
    /// wide tables must be hashed, with zero default rows, and not shared with deep features.
    pub fn new(
        spec: &RecsysSpec,
        weights: &WeightsFile,
        ftrl: FtrlParams,
        admission: Option<(usize, usize, u32)>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self> {
        ftrl.validate()
            .map_err(|e| Error::config("learn config", "trainer.ftrl", e))?;
        let file = "model weights";
        let mut ours: Vec<Option<usize>> = vec![None; spec.tables.len()];
        let mut tables: Vec<ParamTable> = Vec::new();
        let mut features = Vec::new();
        for (i, f) in spec.sparse.iter().enumerate() {
            if f.part != Part::Wide {
                continue;
            }
            let field = format!("parameters.sparse.{}", f.name);
            let ts = &spec.tables[f.table];
            if spec
                .sparse
                .iter()
                .any(|g| g.part == Part::Deep && g.table == f.table)
            {
                return Err(Error::config(
                    "config.toml",
                    field,
                    format!("table '{}' is used by deep features too", ts.name),
                ));
            }
            let table = match ours[f.table] {
                Some(t) => t,
                None => {
                    let table_field = format!("parameters.tables.{}", ts.name);
                    if ts.layout != Layout::Hashed {
                        return Err(Error::config(
                            "config.toml",
                            table_field,
                            "a wide table the deep trainer learns needs layout = \"hashed\"",
                        ));
                    }
                    if ts.config.default_row != DefaultRow::Zeros {
                        return Err(Error::config(
                            "config.toml",
                            table_field,
                            "a wide table needs default_row = \"zeros\" (an unseen key weighs 0)",
                        ));
                    }
                    let config = TableConfig {
                        name: ts.name.clone(),
                        dim: 1,
                        ..ts.config.clone()
                    };
                    let mut t = ParamTable::with_clock(config, 3, clock.clone())?;
                    load_rows(&mut t, weights, &ftrl, file)?;
                    if let Some((width, depth, n)) = admission {
                        t.set_filter(Some(AdmissionFilter::new(width, depth, n).map_err(
                            |e| Error::config("learn config", "admission", e.to_string()),
                        )?));
                    }
                    tables.push(t);
                    ours[f.table] = Some(tables.len() - 1);
                    tables.len() - 1
                }
            };
            features.push(WideFeature {
                input: i,
                table,
                max_ids: f.max_ids,
            });
        }
        let bias = if weights.has(BIAS) {
            let (shape, v) = weights
                .f32(BIAS)
                .map_err(|e| Error::config(file, BIAS, e.to_string()))?;
            if shape != [1] {
                return Err(Error::config(
                    file,
                    BIAS,
                    format!("shape {shape:?}, [1] expected"),
                ));
            }
            Some(state_of(&ftrl, v[0]))
        } else {
            (!features.is_empty()).then_some([0.0; 3])
        };
        Ok(WideHead {
            ftrl,
            grads: (0..tables.len()).map(|_| KeyMap::default()).collect(),
            tables,
            features,
            bias,
        })
    }

    /// Whether the model has no wide part (nothing to add, nothing to learn).
    pub fn is_empty(&self) -> bool {
        self.features.is_empty() && self.bias.is_none()
    }

    /// The bias weight (`wide.bias`), when the model has one.
    pub fn bias(&self) -> Option<f32> {
        self.bias.map(|b| b[0])
    }

    /// Adds the wide part to the deep logits `logits` (`[batch.len()]`).
    pub fn score(&self, batch: &[Sample], logits: &mut [f32]) {
        if self.is_empty() {
            return;
        }
        for (s, l) in batch.iter().zip(logits.iter_mut()) {
            if let Some(b) = &self.bias {
                *l += b[0];
            }
            for f in &self.features {
                let table = &self.tables[f.table];
                let mut sum = 0.0f32;
                for &k in Self::keys(s, f) {
                    if let Some(slot) = table.find(k) {
                        sum += table.row(slot)[0];
                    }
                }
                *l += sum;
            }
        }
    }

    fn keys<'s>(s: &'s Sample, f: &WideFeature) -> impl Iterator<Item = &'s u64> {
        s.keys
            .get(f.input)
            .map_or(&[][..], |k| &k[..])
            .iter()
            .take(f.max_ids)
            .filter(|&&k| k != PADDING)
    }

    /// Learns the batch whose probabilities were `probs`: one FTRL step per coordinate by its
    /// gradient summed over the batch.
    pub fn learn(&mut self, batch: &[Sample], probs: &[f32]) {
        if self.is_empty() {
            return;
        }
        let mut bias_grad = 0.0f64;
        for (s, &p) in batch.iter().zip(probs) {
            let err = p as f64 - if s.label { 1.0 } else { 0.0 };
            bias_grad += err;
            for f in &self.features {
                let g = &mut self.grads[f.table];
                for &k in Self::keys(s, f) {
                    *g.entry(k).or_insert(0.0) += err;
                }
            }
        }
        for (table, grads) in self.tables.iter_mut().zip(self.grads.iter_mut()) {
            table.tick();
            for (k, g) in grads.drain() {
                let Some(slot) = table.find_or_insert(k) else {
                    continue; // not admitted: weight 0, nothing to learn
                };
                ftrl::update_row(&self.ftrl, &mut table.row_mut(slot)[..3], &[g]);
                table.touch(slot);
            }
        }
        if let Some(b) = &mut self.bias {
            ftrl::update_row(&self.ftrl, b, &[bias_grad]);
        }
    }

    /// Rows past their TTL or memory cap removed (tombstones for the next drain).
    pub fn maintain(&mut self) -> usize {
        self.tables.iter_mut().map(|t| t.maintain()).sum()
    }

    /// The rows changed since the last drain, per table.
    pub fn drain(&mut self) -> impl Iterator<Item = TableDelta> + '_ {
        self.tables
            .iter_mut()
            .map(|t| t.drain())
            .filter(|d| !d.keys.is_empty() || !d.tombstones.is_empty())
    }

    /// The served values of `keys` in `table`; `None` when it is not a wide table.
    pub fn rows(&self, table: &str, keys: &[u64]) -> Option<Vec<Option<Vec<f32>>>> {
        let t = self.tables.iter().find(|t| t.name() == table)?;
        Some(keys.iter().map(|&k| t.served(k)).collect())
    }

    /// Every table's served rows.
    pub fn served(&self) -> Result<Vec<ServedRows>> {
        let mut out = Vec::with_capacity(self.tables.len());
        for t in &self.tables {
            let mut rows = Vec::with_capacity(t.len());
            t.served_table()?.for_each_row(|k, r| rows.push((k, r[0])));
            rows.sort_unstable_by_key(|r| r.0);
            let (keys, values) = rows.into_iter().unzip();
            out.push((t.name().to_string(), keys, values));
        }
        Ok(out)
    }

    /// The bias's FTRL state, for a checkpoint.
    pub fn bias_state(&self) -> Option<[f32; 3]> {
        self.bias
    }

    /// Writes every table's full rows to `dir/<table>.train.snap`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        for t in &self.tables {
            t.snapshot_to(&dir.join(format!("{}.train.snap", t.name())))?;
        }
        Ok(())
    }

    /// Reads what [`WideHead::save`] wrote (and the bias state `bias`, from the dense file),
    /// changing nothing: [`WideHead::install`] applies it.
    pub fn read(&self, dir: &Path, bias: Option<Vec<f32>>) -> Result<Restored> {
        let path = dir.join(super::io::DENSE_FILE);
        let bias = match (self.bias, bias) {
            (None, _) => None,
            (Some(_), Some(b)) if b.len() == 3 => Some([b[0], b[1], b[2]]),
            (Some(_), _) => {
                return Err(Error::Checkpoint {
                    path,
                    reason: format!("{BIAS_STATE}: missing or not [w, z, n]"),
                })
            }
        };
        let mut tables = Vec::with_capacity(self.tables.len());
        for t in &self.tables {
            let snap = dir.join(format!("{}.train.snap", t.name()));
            tables.push(t.read_snapshot(&snap)?.0);
        }
        Ok(Restored(tables, bias))
    }

    /// Replaces the rows and the bias with restored ones.
    pub fn install(&mut self, Restored(tables, bias): Restored) {
        for (t, r) in self.tables.iter_mut().zip(&tables) {
            t.replace_rows(r);
        }
        if bias.is_some() {
            self.bias = bias;
        }
    }

    /// Writes every table's served rows as a kiln-embed snapshot `dir/<table>.snap`.
    pub fn snapshot_served(&self, dir: &Path) -> Result<()> {
        for t in &self.tables {
            t.served_snapshot(&dir.join(format!("{}.snap", t.name())))?;
        }
        Ok(())
    }
}

/// Wide tables and the bias read back from a checkpoint.
pub(crate) struct Restored(Vec<kiln_embed::Table>, Option<[f32; 3]>);

/// Inserts the served rows (`<table>.weight` `[rows, 1]`, keys `<table>.keys` or row numbers)
/// of `t` that weigh something, as FTRL states of that weight.
fn load_rows(t: &mut ParamTable, weights: &WeightsFile, p: &FtrlParams, file: &str) -> Result<()> {
    let tensor = format!("{}.weight", t.name());
    let field = |e: kiln_core::Error| Error::config(file, &tensor, e.to_string());
    let (shape, values) = weights.f32(&tensor).map_err(field)?;
    if shape.len() != 2 || shape[1] != 1 {
        return Err(Error::config(
            file,
            &tensor,
            format!("shape {shape:?}, [rows, 1] expected (a wide table)"),
        ));
    }
    let keys_name = format!("{}.keys", t.name());
    let keys: Vec<u64> = match weights.has(&keys_name) {
        true => weights
            .i64(&keys_name)
            .map_err(field)?
            .into_iter()
            .map(|k| k as u64)
            .collect(),
        false => (0..values.len() as u64).collect(),
    };
    if keys.len() != values.len() {
        return Err(Error::config(
            file,
            &tensor,
            format!("{} rows, {} keys", values.len(), keys.len()),
        ));
    }
    t.reserve(values.iter().filter(|&&w| w != 0.0).count());
    for (&k, &w) in keys.iter().zip(&values) {
        if w == 0.0 {
            continue;
        }
        if let Some(slot) = t.find_or_insert(k) {
            t.row_mut(slot)[..3].copy_from_slice(&state_of(p, w));
        }
    }
    Ok(())
}
