//! One mini-batch: gather and pool the rows, the forward pass, the backward pass, the
//! optimizers; and the [`Trainer`] implementation.

use std::path::Path;

use super::{DeepTrainer, DenseOptimizer};
use crate::error::Result;
use crate::optim::adam::AdamStep;
use crate::sample::Sample;
use crate::trainer::{TableDelta, Trainer};

#[inline]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

impl DeepTrainer {
    /// Gathers the batch's rows and runs the forward pass; returns the probabilities. With
    /// `observe`, keys without a row are counted by the admission filter.
    pub(super) fn forward(&mut self, batch: &[Sample], observe: bool) -> Vec<f32> {
        let DeepTrainer {
            scratch: s,
            tables,
            net,
            features,
            wide,
            ..
        } = self;
        let rows = batch.len();
        s.plan.build(tables.len(), features, batch);
        for (t, store) in tables.iter_mut().enumerate() {
            let counts = &s.plan.counts[t];
            store.gather(&s.plan.keys[t], counts, observe);
        }
        let din = net.bottom[0].inputs;
        s.dense.clear();
        s.dense.resize(rows * din, 0.0);
        for (r, sample) in batch.iter().enumerate() {
            let n = sample.dense.len().min(din);
            s.dense[r * din..r * din + n].copy_from_slice(&sample.dense[..n]);
        }
        let gathered: Vec<&[f32]> = tables.iter().map(|t| &t.rows[..]).collect();
        let strides: Vec<usize> = tables.iter().map(|t| 2 * t.dim).collect();
        s.plan.pool(features, &gathered, &strides, &mut s.pooled);
        s.logits.clear();
        s.logits
            .extend_from_slice(net.forward(&s.dense, &s.pooled, rows, &mut s.tape));
        wide.score(batch, &mut s.logits);
        s.logits.iter().map(|&l| sigmoid(l)).collect()
    }

    /// Learns the batch whose forward pass just ran (`probs` its probabilities).
    fn learn(&mut self, batch: &[Sample], probs: &[f32]) {
        let DeepTrainer {
            scratch: s,
            tables,
            net,
            grads,
            opt1,
            opt2,
            features,
            config,
            step,
            wide,
            ..
        } = self;
        wide.learn(batch, probs);
        let rows = batch.len();
        let inv = 1.0 / rows as f32;
        s.dlogit.clear();
        s.dlogit.extend(
            batch
                .iter()
                .zip(probs)
                .map(|(x, &p)| (p - if x.label { 1.0 } else { 0.0 }) * inv),
        );
        s.dpooled.resize(s.pooled.len(), 0.0);
        net.backward(
            &s.dense,
            &s.pooled,
            &s.dlogit,
            &mut s.tape,
            grads,
            &mut s.dpooled,
        );
        let dims: Vec<usize> = tables.iter().map(|t| t.dim).collect();
        s.row_grads.resize_with(tables.len(), Vec::new);
        s.plan.unpool(features, &s.dpooled, &dims, &mut s.row_grads);
        *step += 1;
        let at: Option<AdamStep> = match config.dense {
            DenseOptimizer::Adam(a) => Some(a.at(*step)),
            DenseOptimizer::Adagrad(_) => None,
        };
        let layers = net.bottom.iter_mut().chain(net.top.iter_mut());
        let gl = grads.bottom.iter().chain(grads.top.iter());
        let m1 = opt1.bottom.iter_mut().chain(opt1.top.iter_mut());
        let m2 = opt2.bottom.iter_mut().chain(opt2.top.iter_mut());
        for (((w, g), m), v) in layers.zip(gl).zip(m1).zip(m2) {
            match (config.dense, at) {
                (DenseOptimizer::Adam(a), Some(at)) => {
                    a.step(at, &mut w.w_t, &mut m.w_t, &mut v.w_t, &g.w_t);
                    a.step(at, &mut w.b, &mut m.b, &mut v.b, &g.b);
                }
                (DenseOptimizer::Adagrad(a), _) => {
                    a.step(&mut w.w_t, &mut m.w_t, &g.w_t);
                    a.step(&mut w.b, &mut m.b, &g.b);
                }
                (DenseOptimizer::Adam(_), None) => unreachable!("adam steps are computed above"),
            }
        }
        for (t, store) in tables.iter_mut().enumerate() {
            if let Err(e) = store.update(&s.plan.keys[t], &s.row_grads[t], &config.embedding) {
                tracing::warn!(table = %store.name, error = %e, "embedding rows not written");
            }
        }
    }

    /// Expires rows past the TTL in every table now; returns how many went.
    pub fn maintain(&mut self) -> usize {
        self.last_maintain_ms = self.clock.now_ms();
        self.tables.iter_mut().map(|t| t.maintain()).sum::<usize>() + self.wide.maintain()
    }
}

impl Trainer for DeepTrainer {
    fn train(&mut self, batch: &[Sample]) -> Vec<f32> {
        if batch.is_empty() {
            return Vec::new();
        }
        let probs = self.forward(batch, true);
        self.learn(batch, &probs);
        probs
    }

    fn drain_deltas(&mut self) -> Vec<TableDelta> {
        let now = self.clock.now_ms();
        if now.saturating_sub(self.last_maintain_ms) >= self.config.maintain_every_ms {
            self.maintain();
        }
        let mut out: Vec<TableDelta> = self
            .tables
            .iter_mut()
            .filter_map(|t| {
                let (keys, values, tombstones) = t.drain();
                (!keys.is_empty() || !tombstones.is_empty()).then(|| TableDelta {
                    table: t.name.clone(),
                    dim: t.dim,
                    keys,
                    values,
                    tombstones,
                })
            })
            .collect();
        out.extend(self.wide.drain());
        out
    }

    fn rows(&self, table: &str, keys: &[u64]) -> Option<Vec<Option<Vec<f32>>>> {
        match self.tables.iter().find(|t| t.name == table) {
            Some(t) => Some(keys.iter().map(|&k| t.served_row(k)).collect()),
            None => self.wide.rows(table, keys),
        }
    }

    fn save(&self, dir: &Path) -> Result<()> {
        self.save_to(dir)
    }

    fn load(&mut self, dir: &Path) -> Result<()> {
        self.load_from(dir)
    }

    fn snapshot_served(&self, dir: &Path) -> Result<()> {
        for t in &self.tables {
            t.snapshot_served(&dir.join(format!("{}.snap", t.name)))?;
        }
        self.wide.snapshot_served(dir)
    }
}
