//! A loaded recsys model: live tables, MLPs, and the batched forward pass.

use crate::mlp::linear;
use crate::spec::{Activation, Hashing, Interaction, RecsysSpec};
use crate::weights::Linear;
use kiln_core::{
    DataType, DeltaAck, Error, LoadedModel, ModelIo, Result, SparseParameters, SparseTableInfo,
    Tensor,
};
use kiln_embed::{
    keys_from_i64, ApplyOutcome, Delta, EmbedCollector, EmbedError, LookupScratch, MultiHot, Table,
};
use std::cell::RefCell;
use std::sync::Arc;
use xxhash_rust::xxh3::xxh3_64;

/// Rows below which a batch is not split further across threads.
const MIN_ROWS_PER_THREAD: usize = 8;

/// One model version's compute plan and its (possibly shared) tables.
pub struct RecsysModel {
    pub(crate) io: ModelIo,
    pub(crate) spec: RecsysSpec,
    pub(crate) bottom: Vec<Linear>,
    pub(crate) top: Vec<Linear>,
    /// Per spec table.
    pub(crate) tables: Vec<Arc<Table>>,
    /// Pooled width of each sparse feature.
    pub(crate) widths: Vec<usize>,
    /// Index of each sparse feature's (first) input.
    pub(crate) input_index: Vec<usize>,
    pub(crate) z_width: usize,
    pub(crate) threads: usize,
    pub(crate) pool: Option<rayon::ThreadPool>,
    pub(crate) collector: EmbedCollector,
    pub(crate) describe: Vec<(String, String)>,
}

impl Drop for RecsysModel {
    fn drop(&mut self) {
        for t in &self.tables {
            // the last version using a table takes its metrics away
            if Arc::strong_count(t) == 1 {
                self.collector.remove(t.name());
            }
        }
    }
}

#[derive(Default)]
struct Scratch {
    a: Vec<f32>,
    b: Vec<f32>,
    z: Vec<f32>,
    pooled: Vec<f32>,
    keys: Vec<u64>,
    lookup: LookupScratch,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// A batch's inputs, decoded once and shared by the threads.
enum Ids<'a> {
    /// INT64 ids as keys (`-1` is `u64::MAX`, the padding).
    Keys(std::borrow::Cow<'a, [u64]>),
    /// BYTES ids, one slice per element (empty = padding).
    Strings(Vec<&'a [u8]>),
    /// Ragged INT64 ids: all values, ids per row, and each row's start (`rows + 1` entries).
    Ragged {
        values: std::borrow::Cow<'a, [u64]>,
        lengths: Vec<u32>,
        offsets: Vec<usize>,
    },
}

fn f32s(t: &Tensor) -> std::borrow::Cow<'_, [f32]> {
    match bytemuck::try_cast_slice::<u8, f32>(&t.data) {
        Ok(s) => std::borrow::Cow::Borrowed(s),
        Err(_) => std::borrow::Cow::Owned(
            t.data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        ),
    }
}

fn u64s(t: &Tensor) -> std::borrow::Cow<'_, [u64]> {
    match bytemuck::try_cast_slice::<u8, i64>(&t.data) {
        Ok(s) => std::borrow::Cow::Borrowed(keys_from_i64(s)),
        Err(_) => std::borrow::Cow::Owned(
            t.data
                .chunks_exact(8)
                .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
                .collect(),
        ),
    }
}

fn embed_err(table: &str, e: EmbedError) -> Error {
    Error::invalid(format!("table {table}: {e}"))
}

impl RecsysModel {
    /// The output width.
    fn out_dim(&self) -> usize {
        self.top.last().map(|l| l.outputs).unwrap_or(0)
    }

    /// Computes rows `r0..r0 + out.len() / out_dim` into `out`.
    fn forward_rows(
        &self,
        dense: &[f32],
        ids: &[Ids<'_>],
        r0: usize,
        out: &mut [f32],
        s: &mut Scratch,
    ) -> Result<()> {
        let out_dim = self.out_dim();
        let rows = out.len() / out_dim;
        let dense_dim = self.bottom[0].inputs;
        let max_w = self
            .bottom
            .iter()
            .chain(&self.top)
            .map(|l| l.outputs)
            .max()
            .unwrap_or(0)
            .max(self.z_width);
        s.a.resize(rows * max_w, 0.0);
        s.b.resize(rows * max_w, 0.0);
        s.z.resize(rows * self.z_width, 0.0);

        // bottom MLP, ReLU after every layer
        let x = &dense[r0 * dense_dim..(r0 + rows) * dense_dim];
        let mut cur_w = dense_dim;
        for (j, layer) in self.bottom.iter().enumerate() {
            let (src, dst) = if j % 2 == 0 {
                (&s.b, &mut s.a)
            } else {
                (&s.a, &mut s.b)
            };
            let input = if j == 0 { x } else { &src[..rows * cur_w] };
            linear(layer, input, rows, &mut dst[..rows * layer.outputs], true);
            cur_w = layer.outputs;
        }
        let bottom_out = if self.bottom.len() % 2 == 1 {
            &s.a[..rows * cur_w]
        } else {
            &s.b[..rows * cur_w]
        };
        let bw = cur_w;

        // sparse lookups, pooled into z next to the bottom output
        let pooled_total: usize = self.widths.iter().sum();
        s.pooled.resize(rows * pooled_total, 0.0);
        let mut off = 0;
        for (f, feat) in self.spec.sparse.iter().enumerate() {
            let w = self.widths[f];
            let table = &self.tables[feat.table];
            let k = feat.max_ids;
            let range = r0 * k..(r0 + rows) * k;
            let (hashed, pooled, lookup) = (&mut s.keys, &mut s.pooled, &mut s.lookup);
            // the keys of this row range (hashed into the scratch buffer when the config asks)
            let mut hash_ints = |ids: &[u64]| {
                hashed.clear();
                hashed.extend(ids.iter().map(|&id| hash_key(id, feat.hash, feat.buckets)));
            };
            let plain = feat.hash == Hashing::None && feat.buckets.is_none();
            let input = match &ids[f] {
                Ids::Ragged {
                    values,
                    lengths,
                    offsets,
                } => {
                    let vals = &values[offsets[r0]..offsets[r0 + rows]];
                    if !plain {
                        hash_ints(vals);
                    }
                    MultiHot::Ragged {
                        values: if plain { vals } else { &hashed[..] },
                        lengths: &lengths[r0..r0 + rows],
                        padding: Some(u64::MAX),
                    }
                }
                Ids::Keys(all) => {
                    if !plain {
                        hash_ints(&all[range.clone()]);
                    }
                    MultiHot::Padded {
                        ids: if plain { &all[range] } else { &hashed[..] },
                        width: k,
                        padding: Some(u64::MAX),
                    }
                }
                Ids::Strings(all) => {
                    hashed.clear();
                    hashed.extend(all[range].iter().map(|b| {
                        if b.is_empty() {
                            return u64::MAX;
                        }
                        let key = xxh3_64(b);
                        feat.buckets.map_or(key, |n| key % n)
                    }));
                    MultiHot::Padded {
                        ids: &hashed[..],
                        width: k,
                        padding: Some(u64::MAX),
                    }
                }
            };
            let dst = &mut pooled[off * rows..(off + w) * rows];
            table
                .lookup(&input, feat.pooling, dst, lookup)
                .map_err(|e| embed_err(&feat.name, e))?;
            off += w;
        }

        // interaction
        let zw = self.z_width;
        match self.spec.interaction {
            Interaction::Concat => {
                for r in 0..rows {
                    let z = &mut s.z[r * zw..(r + 1) * zw];
                    z[..bw].copy_from_slice(&bottom_out[r * bw..(r + 1) * bw]);
                    let mut at = bw;
                    let mut off = 0;
                    for &w in &self.widths {
                        let p = &s.pooled[off * rows + r * w..off * rows + (r + 1) * w];
                        z[at..at + w].copy_from_slice(p);
                        at += w;
                        off += w;
                    }
                }
            }
            Interaction::Dot => {
                // all vectors have width bw (checked at load)
                let n = self.widths.len() + 1;
                let vec_of = |r: usize, i: usize| -> &[f32] {
                    if i == 0 {
                        &bottom_out[r * bw..(r + 1) * bw]
                    } else {
                        let off = (i - 1) * bw * rows;
                        &s.pooled[off + r * bw..off + (r + 1) * bw]
                    }
                };
                let mut z = std::mem::take(&mut s.z);
                for r in 0..rows {
                    let zr = &mut z[r * zw..(r + 1) * zw];
                    zr[..bw].copy_from_slice(vec_of(r, 0));
                    let mut at = bw;
                    for a in 1..n {
                        let va = vec_of(r, a);
                        for b in 0..a {
                            zr[at] = dot(va, vec_of(r, b));
                            at += 1;
                        }
                    }
                }
                s.z = z;
            }
        }

        // top MLP: ReLU between layers, activation on the output
        let last = self.top.len() - 1;
        let mut cur_w = zw;
        for (j, layer) in self.top.iter().enumerate() {
            let relu = j != last;
            if j == last {
                let src: &[f32] = if j == 0 {
                    &s.z[..rows * cur_w]
                } else if j % 2 == 1 {
                    &s.a[..rows * cur_w]
                } else {
                    &s.b[..rows * cur_w]
                };
                linear(layer, src, rows, out, false);
            } else if j == 0 {
                linear(
                    layer,
                    &s.z[..rows * cur_w],
                    rows,
                    &mut s.a[..rows * layer.outputs],
                    relu,
                );
            } else if j % 2 == 1 {
                linear(
                    layer,
                    &s.a[..rows * cur_w],
                    rows,
                    &mut s.b[..rows * layer.outputs],
                    relu,
                );
            } else {
                linear(
                    layer,
                    &s.b[..rows * cur_w],
                    rows,
                    &mut s.a[..rows * layer.outputs],
                    relu,
                );
            }
            cur_w = layer.outputs;
        }
        if self.spec.activation == Activation::Sigmoid {
            for v in out.iter_mut() {
                *v = 1.0 / (1.0 + (-*v).exp());
            }
        }
        Ok(())
    }

    /// Decodes every feature's ids, checking ragged values against their lengths.
    fn decode_ids<'a>(&self, inputs: &'a [Tensor], rows: usize) -> Result<Vec<Ids<'a>>> {
        self.spec
            .sparse
            .iter()
            .enumerate()
            .map(|(f, feat)| {
                let t = &inputs[self.input_index[f]];
                if feat.ragged {
                    let lt = &inputs[self.input_index[f] + 1];
                    let mut lengths = Vec::with_capacity(rows);
                    let mut offsets = Vec::with_capacity(rows + 1);
                    offsets.push(0usize);
                    for b in lt.data.chunks_exact(4) {
                        let l = i32::from_le_bytes(b.try_into().expect("4 bytes"));
                        if l < 0 || l as usize > feat.max_ids {
                            return Err(Error::invalid(format!(
                                "input '{}': length {l} is outside 0..={}",
                                lt.name, feat.max_ids
                            )));
                        }
                        lengths.push(l as u32);
                        offsets.push(offsets.last().copied().unwrap_or(0) + l as usize);
                    }
                    let values = u64s(t);
                    let total = offsets.last().copied().unwrap_or(0);
                    if total != values.len() {
                        return Err(Error::invalid(format!(
                            "input '{}': lengths add up to {total} but {} values were given",
                            t.name,
                            values.len()
                        )));
                    }
                    return Ok(Ids::Ragged {
                        values,
                        lengths,
                        offsets,
                    });
                }
                Ok(match feat.data_type {
                    DataType::Bytes => Ids::Strings(t.byte_elements().map_err(|_| {
                        Error::invalid(format!("input '{}': malformed BYTES elements", t.name))
                    })?),
                    _ => Ids::Keys(u64s(t)),
                })
            })
            .collect()
    }
}

/// The table key of an INT64 id (`-1`, i.e. `u64::MAX`, stays the padding id).
#[inline]
fn hash_key(id: u64, h: Hashing, buckets: Option<u64>) -> u64 {
    if id == u64::MAX {
        return u64::MAX;
    }
    let key = match h {
        Hashing::None => id,
        Hashing::Xxh3 => xxh3_64(&id.to_le_bytes()),
    };
    buckets.map_or(key, |b| key % b)
}

#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    // eight partial sums so the compiler vectorizes without reassociating one accumulator
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

impl LoadedModel for RecsysModel {
    fn io(&self) -> &ModelIo {
        &self.io
    }

    fn execute(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        let rows = inputs.first().map(|t| t.rows()).unwrap_or(0);
        for (t, spec) in inputs.iter().zip(&self.io.inputs) {
            if !spec.allow_ragged_batch && t.rows() != rows {
                return Err(Error::invalid(format!(
                    "input '{}' has {} rows, '{}' has {rows}",
                    spec.name,
                    t.rows(),
                    self.io.inputs[0].name
                )));
            }
        }
        let dense = f32s(&inputs[0]);
        let ids = self.decode_ids(inputs, rows)?;
        let out_dim = self.out_dim();
        let mut out = vec![0.0f32; rows * out_dim];
        let parts = (rows / MIN_ROWS_PER_THREAD).clamp(1, self.threads);
        let per = rows.div_ceil(parts).max(1);
        let run = |r0: usize, o: &mut [f32]| -> Result<()> {
            SCRATCH.with(|s| self.forward_rows(&dense, &ids, r0, o, &mut s.borrow_mut()))
        };
        match (&self.pool, parts) {
            (Some(pool), p) if p > 1 => {
                let errors = parking_lot::Mutex::new(None);
                let mut chunks = out.chunks_mut(per * out_dim).enumerate();
                let first = chunks.next();
                pool.in_place_scope(|scope| {
                    for (i, o) in chunks {
                        let (run, errors) = (&run, &errors);
                        scope.spawn(move |_| {
                            if let Err(e) = run(i * per, o) {
                                *errors.lock() = Some(e);
                            }
                        });
                    }
                    if let Some((_, o)) = first {
                        if let Err(e) = run(0, o) {
                            *errors.lock() = Some(e);
                        }
                    }
                });
                if let Some(e) = errors.into_inner() {
                    return Err(e);
                }
            }
            _ => run(0, &mut out)?,
        }
        Ok(vec![Tensor::from_vec(
            self.spec.output.clone(),
            vec![rows as i64, out_dim as i64],
            &out,
        )])
    }

    fn describe(&self) -> Vec<(String, String)> {
        self.describe.clone()
    }

    fn sparse(&self) -> Option<&dyn SparseParameters> {
        Some(self)
    }
}

impl SparseParameters for RecsysModel {
    fn tables(&self) -> Vec<SparseTableInfo> {
        self.spec
            .tables
            .iter()
            .zip(&self.tables)
            .map(|(spec, t)| SparseTableInfo {
                name: spec.name.clone(),
                dim: t.dim(),
                rows: t.len() as u64,
                bytes: t.heap_bytes() as u64,
                sources: t.sources(),
            })
            .collect()
    }

    fn apply_delta(&self, table: &str, encoded: &[u8]) -> Result<DeltaAck> {
        let Some(i) = self.spec.tables.iter().position(|t| t.name == table) else {
            return Err(Error::not_found(format!(
                "table '{table}' is not a table of this model (tables: {:?})",
                self.spec.tables.iter().map(|t| &t.name).collect::<Vec<_>>()
            )));
        };
        let t = &self.tables[i];
        let mut delta =
            Delta::decode(encoded).map_err(|e| Error::invalid(format!("delta: {e}")))?;
        if !delta.table.is_empty() && delta.table != table && delta.table != t.name() {
            return Err(Error::invalid(format!(
                "delta: it is for table '{}', sent to table '{table}'",
                delta.table
            )));
        }
        delta.table.clear();
        let outcome = t.apply(&delta).map_err(|e| embed_err(table, e))?;
        let last_sequence = t.last_sequence(&delta.source).unwrap_or(0);
        Ok(match outcome {
            ApplyOutcome::Applied {
                rows,
                inserted,
                removed,
                evicted,
                gap,
            } => DeltaAck {
                applied: true,
                rows: rows as u64,
                inserted: inserted as u64,
                removed: removed as u64,
                evicted: evicted as u64,
                last_sequence,
                gap: gap.map(|g| (g.expected, g.got)),
            },
            ApplyOutcome::Duplicate { last_applied } => DeltaAck {
                applied: false,
                last_sequence: last_applied,
                ..Default::default()
            },
        })
    }
}
