//! A batch's sparse side: the distinct keys of each table, each sample's ids as indices into
//! them, pooling of gathered rows (as serving's `kiln_embed::Table::lookup` pools) and the
//! pooling's backward pass, which sums each key's gradient over the batch.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use kiln_embed::Pooling;

use super::net::Real;
use crate::sample::Sample;

/// Hashes a u64 key with `kiln_embed::mix64` (keys are already hashed ids; SipHash's
/// resistance to chosen keys costs a tenth of a training step here).
#[derive(Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = kiln_embed::mix64(self.0 ^ b as u64);
        }
    }
    fn write_u64(&mut self, k: u64) {
        self.0 = kiln_embed::mix64(k);
    }
}

/// A map keyed by table keys.
pub type KeyMap<V> = HashMap<u64, V, BuildHasherDefault<KeyHasher>>;
/// A set of table keys.
pub type KeySet = HashSet<u64, BuildHasherDefault<KeyHasher>>;

/// Ids above this are padding in serving (an INT64 -1); a sample never pools them.
const PADDING: u64 = u64::MAX;

/// One sparse feature as the batch sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FeatureShape {
    /// Index of the feature's table.
    pub table: usize,
    /// The table's row width.
    pub dim: usize,
    /// Ids a sample may have (serving's `max_ids`); later ones are dropped.
    pub max_ids: usize,
    /// Sum, mean or concat.
    pub pooling: Pooling,
}

impl FeatureShape {
    /// The pooled width.
    pub fn width(&self) -> usize {
        self.pooling.output_width(self.dim)
    }
}

/// The distinct keys of a batch per table, and every feature's ids per sample.
#[derive(Debug, Default)]
pub struct Plan {
    /// Per table, its distinct keys in order of first occurrence.
    pub keys: Vec<Vec<u64>>,
    /// Per table, how many times each of `keys` occurs in the batch.
    pub counts: Vec<Vec<u32>>,
    index: Vec<KeyMap<u32>>,
    /// Per feature, `offsets[r]..offsets[r + 1]` indexes `ids` for sample `r`.
    offsets: Vec<Vec<u32>>,
    /// Per feature, indices into that feature's table's `keys`.
    ids: Vec<Vec<u32>>,
    /// Per feature, the index of its keys in a sample's `keys` (none: the feature's own).
    inputs: Vec<usize>,
    rows: usize,
}

impl Plan {
    /// Reads feature `f`'s keys from a sample's `keys[inputs[f]]` (a model whose wide features,
    /// which the plan does not pool, sit between its deep ones).
    pub fn set_inputs(&mut self, inputs: Vec<usize>) {
        self.inputs = inputs;
    }

    /// Rebuilds the plan for `batch` (`tables` tables; `features` in spec order).
    pub fn build(&mut self, tables: usize, features: &[FeatureShape], batch: &[Sample]) {
        self.rows = batch.len();
        self.keys.resize_with(tables, Vec::new);
        self.counts.resize_with(tables, Vec::new);
        self.index.resize_with(tables, KeyMap::default);
        self.offsets.resize_with(features.len(), Vec::new);
        self.ids.resize_with(features.len(), Vec::new);
        for t in 0..tables {
            self.keys[t].clear();
            self.counts[t].clear();
            self.index[t].clear();
        }
        for (f, feat) in features.iter().enumerate() {
            let (offsets, ids) = (&mut self.offsets[f], &mut self.ids[f]);
            offsets.clear();
            ids.clear();
            offsets.push(0);
            let t = feat.table;
            let (keys, index, counts) =
                (&mut self.keys[t], &mut self.index[t], &mut self.counts[t]);
            let cap = match feat.pooling {
                Pooling::Concat { k } => k.min(feat.max_ids),
                _ => feat.max_ids,
            };
            let input = self.inputs.get(f).copied().unwrap_or(f);
            for s in batch {
                let sample_keys = s.keys.get(input).map_or(&[][..], |k| &k[..]);
                let mut n = 0;
                for &key in sample_keys.iter().take(feat.max_ids) {
                    if key == PADDING || n == cap {
                        continue;
                    }
                    let i = *index.entry(key).or_insert_with(|| {
                        keys.push(key);
                        counts.push(0);
                        (keys.len() - 1) as u32
                    });
                    counts[i as usize] += 1;
                    ids.push(i);
                    n += 1;
                }
                offsets.push(ids.len() as u32);
            }
        }
    }

    /// Samples in the batch.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Pools into `out` (`[rows, sum of widths]`): `rows[t]` holds table `t`'s rows for its
    /// `keys`, `stride` apart, the first `dim` elements of each being the served values.
    pub fn pool<T: Real>(
        &self,
        features: &[FeatureShape],
        rows: &[&[T]],
        strides: &[usize],
        out: &mut Vec<T>,
    ) {
        let pw: usize = features.iter().map(FeatureShape::width).sum();
        out.clear();
        out.resize(self.rows * pw, T::ZERO);
        let mut off = 0;
        for (f, feat) in features.iter().enumerate() {
            let (d, st, src) = (feat.dim, strides[feat.table], rows[feat.table]);
            for r in 0..self.rows {
                let ids = self.sample_ids(f, r);
                let o = &mut out[r * pw + off..r * pw + off + feat.width()];
                for (rank, &i) in ids.iter().enumerate() {
                    let row = &src[i as usize * st..i as usize * st + d];
                    let dst = match feat.pooling {
                        Pooling::Concat { .. } => &mut o[rank * d..(rank + 1) * d],
                        _ => &mut o[..],
                    };
                    for (x, &v) in dst.iter_mut().zip(row) {
                        *x += v;
                    }
                }
                if feat.pooling == Pooling::Mean && ids.len() > 1 {
                    let inv = T::ONE / T::of(ids.len() as f64);
                    o.iter_mut().for_each(|x| *x = *x * inv);
                }
            }
            off += feat.width();
        }
    }

    /// The backward pass of [`Plan::pool`]: adds each key's gradient, summed over the batch,
    /// into `grads[t]` (`[keys[t].len(), dim]`, zeroed here first).
    pub fn unpool<T: Real>(
        &self,
        features: &[FeatureShape],
        dpooled: &[T],
        dims: &[usize],
        grads: &mut [Vec<T>],
    ) {
        for (t, g) in grads.iter_mut().enumerate() {
            g.clear();
            g.resize(self.keys[t].len() * dims[t], T::ZERO);
        }
        let pw: usize = features.iter().map(FeatureShape::width).sum();
        let mut off = 0;
        for (f, feat) in features.iter().enumerate() {
            let (d, g) = (feat.dim, &mut grads[feat.table]);
            for r in 0..self.rows {
                let ids = self.sample_ids(f, r);
                let dp = &dpooled[r * pw + off..r * pw + off + feat.width()];
                let scale = match feat.pooling {
                    Pooling::Mean if ids.len() > 1 => T::ONE / T::of(ids.len() as f64),
                    _ => T::ONE,
                };
                for (rank, &i) in ids.iter().enumerate() {
                    let src = match feat.pooling {
                        Pooling::Concat { .. } => &dp[rank * d..(rank + 1) * d],
                        _ => dp,
                    };
                    let dst = &mut g[i as usize * d..(i as usize + 1) * d];
                    for (x, &v) in dst.iter_mut().zip(src) {
                        *x += v * scale;
                    }
                }
            }
            off += feat.width();
        }
    }

    fn sample_ids(&self, f: usize, r: usize) -> &[u32] {
        let o = &self.offsets[f];
        &self.ids[f][o[r] as usize..o[r + 1] as usize]
    }
}
