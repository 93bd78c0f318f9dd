//! A loaded recsys model and its batched forward pass.
//!
//! A batch's sparse ids are decoded once ([`FeatureIds::decode`]); the rows are then split into
//! ranges, one per thread, and each range runs the stages in turn: lookups and pooling of every
//! deep sparse feature, the bottom MLP over the dense input, the interaction, the top MLP, the
//! wide sum (each wide feature's summed dim-1 rows and `wide.bias` added to the logit) and the
//! output activation. A wide-only model runs the wide sum alone.

use crate::dense::DenseLayer;
use crate::features::FeatureIds;
use crate::mlp::MlpScratch;
use crate::spec::{Activation, Interaction, RecsysSpec};
use crate::tables::{embed_err, ModelTables};
use crate::wide::WidePart;
use bytes::Bytes;
use kiln_core::{DataType, Error, LoadedModel, ModelIo, Result, SparseParameters, Tensor};
use kiln_embed::{LookupScratch, Pooling};
use std::borrow::Cow;
use std::cell::RefCell;

/// Rows below which a batch is not split further across threads.
const MIN_ROWS_PER_THREAD: usize = 8;

/// One model version's compute plan and its (possibly shared) tables.
pub struct RecsysModel {
    pub(crate) io: ModelIo,
    pub(crate) spec: RecsysSpec,
    pub(crate) bottom: Vec<DenseLayer>,
    pub(crate) top: Vec<DenseLayer>,
    /// Per spec table.
    pub(crate) tables: ModelTables,
    /// Indices of the deep sparse features (interaction, top MLP), in spec order.
    pub(crate) deep: Vec<usize>,
    /// Pooled width of each deep sparse feature.
    pub(crate) widths: Vec<usize>,
    /// The wide features and bias, added to the logit.
    pub(crate) wide: WidePart,
    /// Index of each sparse feature's (first) input.
    pub(crate) input_index: Vec<usize>,
    /// The input whose first dimension is the batch's row count.
    pub(crate) rows_input: usize,
    /// Output width (1 for a model with a wide part).
    pub(crate) out_dim: usize,
    pub(crate) z_width: usize,
    pub(crate) threads: usize,
    pub(crate) pool: Option<rayon::ThreadPool>,
    pub(crate) describe: Vec<(String, String)>,
}

/// A thread's buffers, reused across batches.
#[derive(Default)]
struct Scratch {
    mlp: MlpScratch,
    z: Vec<f32>,
    pooled: Vec<f32>,
    wide: Vec<f32>,
    keys: Vec<u64>,
    lookup: LookupScratch,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

fn f32s(t: &Tensor) -> Cow<'_, [f32]> {
    match bytemuck::try_cast_slice::<u8, f32>(&t.data) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => Cow::Owned(
            t.data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        ),
    }
}

/// An FP32 output tensor owning `values` (no copy on little-endian targets).
fn f32_tensor(name: String, shape: Vec<i64>, values: Vec<f32>) -> Tensor {
    /// A `Vec<f32>` seen as its little-endian bytes.
    struct F32Bytes(Vec<f32>);
    impl AsRef<[u8]> for F32Bytes {
        fn as_ref(&self) -> &[u8] {
            bytemuck::cast_slice(&self.0)
        }
    }
    if cfg!(target_endian = "little") {
        Tensor {
            name,
            dtype: DataType::Fp32,
            shape,
            data: Bytes::from_owner(F32Bytes(values)),
        }
    } else {
        Tensor::from_vec(name, shape, &values)
    }
}

impl RecsysModel {
    /// The output width.
    fn out_dim(&self) -> usize {
        self.out_dim
    }

    /// Computes rows `r0..r0 + out.len() / out_dim` into `out`.
    fn forward_rows(
        &self,
        dense: &[f32],
        ids: &[FeatureIds<'_>],
        r0: usize,
        out: &mut [f32],
        s: &mut Scratch,
    ) -> Result<()> {
        let rows = out.len() / self.out_dim();
        let Scratch {
            mlp,
            z,
            pooled,
            wide,
            keys,
            lookup,
        } = s;
        if self.deep.is_empty() {
            out.fill(0.0);
        } else {
            let dense_dim = self.bottom[0].inputs;
            let x = &dense[r0 * dense_dim..(r0 + rows) * dense_dim];
            let bottom = mlp.run(&self.bottom, x, rows);
            self.lookup_and_pool(ids, r0, rows, pooled, keys, lookup)?;
            self.interact(bottom, pooled, rows, z);
            mlp.run_into(&self.top, z, rows, out);
        }
        if !self.wide.is_empty() {
            self.add_wide(ids, r0, out, wide, keys, lookup)?;
        }
        if self.spec.activation == Activation::Sigmoid {
            for v in out.iter_mut() {
                *v = 1.0 / (1.0 + (-*v).exp());
            }
        }
        Ok(())
    }

    /// Adds the wide part to the logits `out` (`[rows]`, one output): `wide.bias` and, for each
    /// wide feature, the sum of its rows' (dim-1) weights.
    fn add_wide(
        &self,
        ids: &[FeatureIds<'_>],
        r0: usize,
        out: &mut [f32],
        sum: &mut Vec<f32>,
        keys: &mut Vec<u64>,
        lookup: &mut LookupScratch,
    ) -> Result<()> {
        let rows = out.len();
        if let Some(b) = self.wide.bias {
            out.iter_mut().for_each(|v| *v += b);
        }
        sum.resize(rows, 0.0);
        for &f in &self.wide.features {
            let feat = &self.spec.sparse[f];
            let input = ids[f].keys(feat, r0, rows, keys);
            self.tables
                .get(feat.table)
                .lookup(&input, Pooling::Sum, sum, lookup)
                .map_err(|e| embed_err(&feat.name, e))?;
            out.iter_mut().zip(sum.iter()).for_each(|(v, w)| *v += w);
        }
        Ok(())
    }

    /// Looks up and pools every deep sparse feature of rows `r0..r0 + rows` into `pooled`,
    /// feature after feature, each `[rows, width]`.
    fn lookup_and_pool(
        &self,
        ids: &[FeatureIds<'_>],
        r0: usize,
        rows: usize,
        pooled: &mut Vec<f32>,
        keys: &mut Vec<u64>,
        lookup: &mut LookupScratch,
    ) -> Result<()> {
        let pooled_total: usize = self.widths.iter().sum();
        pooled.resize(rows * pooled_total, 0.0);
        let mut off = 0;
        for (&f, &w) in self.deep.iter().zip(&self.widths) {
            let feat = &self.spec.sparse[f];
            let input = ids[f].keys(feat, r0, rows, keys);
            let dst = &mut pooled[off * rows..(off + w) * rows];
            self.tables
                .get(feat.table)
                .lookup(&input, feat.pooling, dst, lookup)
                .map_err(|e| embed_err(&feat.name, e))?;
            off += w;
        }
        Ok(())
    }

    /// Writes the top MLP's input `z` (`[rows, z_width]`) from the bottom MLP's output and the
    /// pooled features.
    fn interact(&self, bottom: &[f32], pooled: &[f32], rows: usize, z: &mut Vec<f32>) {
        let zw = self.z_width;
        z.resize(rows * zw, 0.0);
        let bw = self.bottom.last().map_or(0, |l| l.outputs);
        match self.spec.interaction {
            Interaction::Concat => {
                for r in 0..rows {
                    let z = &mut z[r * zw..(r + 1) * zw];
                    z[..bw].copy_from_slice(&bottom[r * bw..(r + 1) * bw]);
                    let mut at = bw;
                    let mut off = 0;
                    for &w in &self.widths {
                        let p = &pooled[off * rows + r * w..off * rows + (r + 1) * w];
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
                        &bottom[r * bw..(r + 1) * bw]
                    } else {
                        let off = (i - 1) * bw * rows;
                        &pooled[off + r * bw..off + (r + 1) * bw]
                    }
                };
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
            }
        }
    }

    /// Decodes every feature's ids, checking ragged values against their lengths, then computes
    /// the crossed features' keys from their components' ids.
    fn decode_ids<'a>(&self, inputs: &'a [Tensor], rows: usize) -> Result<Vec<FeatureIds<'a>>> {
        let sparse = &self.spec.sparse;
        let mut ids = sparse
            .iter()
            .zip(&self.input_index)
            .map(|(feat, &i)| {
                if feat.is_cross() {
                    return Ok(FeatureIds::Crossed(Vec::new()));
                }
                let lengths = feat.ragged.then(|| &inputs[i + 1]);
                FeatureIds::decode(feat, &inputs[i], lengths)
            })
            .collect::<Result<Vec<_>>>()?;
        for (f, feat) in sparse.iter().enumerate().filter(|(_, f)| f.is_cross()) {
            let components: Vec<_> = feat.cross.iter().map(|&c| (&sparse[c], &ids[c])).collect();
            ids[f] = FeatureIds::crossed(feat, &components, rows);
        }
        Ok(ids)
    }
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
        let rows = inputs.get(self.rows_input).map(|t| t.rows()).unwrap_or(0);
        for (t, spec) in inputs.iter().zip(&self.io.inputs) {
            if !spec.allow_ragged_batch && t.rows() != rows {
                return Err(Error::invalid(format!(
                    "input '{}' has {} rows, '{}' has {rows}",
                    spec.name,
                    t.rows(),
                    self.io.inputs[self.rows_input].name
                )));
            }
        }
        let dense = match self.spec.dense_input {
            Some(_) => f32s(&inputs[0]),
            None => Cow::Borrowed(&[][..]),
        };
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
        Ok(vec![f32_tensor(
            self.spec.output.clone(),
            vec![rows as i64, out_dim as i64],
            out,
        )])
    }

    fn describe(&self) -> Vec<(String, String)> {
        self.describe.clone()
    }

    fn sparse(&self) -> Option<&dyn SparseParameters> {
        Some(&self.tables)
    }
}
