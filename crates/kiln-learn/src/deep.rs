//! The deep trainer: backpropagation through the DLRM-style models the recsys backend serves
//! (bottom MLP, pooled embeddings, concat or dot interaction, top MLP, sigmoid), in
//! mini-batches, starting from the served model's parameters.
//!
//! - The forward pass is serving's ([`net`]: the same layer order, activations and `gemm` calls
//!   as `kiln_recsys::mlp`; pooling as `kiln_embed::Table::lookup`), so a model written by
//!   [`DeepTrainer::write_weights`] serves exactly what the trainer scores.
//! - Loss: log loss of `sigmoid(logit)`, averaged over the batch (PyTorch's
//!   `BCEWithLogitsLoss`). The MLPs learn with Adam or AdaGrad ([`DenseOptimizer`]), embedding
//!   rows with sparse AdaGrad (only the rows a batch touches).
//! - Embedding rows live in trainer-side `kiln_embed::Table`s of rows `[w | accumulator]`; a key
//!   without a row pools the served default row, and gets a row once the admission filter has
//!   seen it `min_count` times. Rows expire by the model's TTL (`ttl_s`) and memory cap, and
//!   are then published as tombstones.
//! - Progressive validation: [`crate::Trainer::train`] returns each sample's probability before the
//!   batch is learned.
//!
//! - Wide & Deep: a model with wide features (`part = "wide"`, dim-1 tables) and `wide.bias`
//!   has one logit, the top MLP's output plus the wide sum, as the recsys backend computes it.
//!   The wide rows learn by FTRL-Proximal per coordinate on the gradient of that joint logit
//!   (`wide`), the deep part as above; both parts' rows are published as deltas.

pub mod batch;
mod io;
pub mod net;
mod step;
mod store;
mod wide;

use std::path::Path;
use std::sync::Arc;

use kiln_embed::{AdmissionFilter, Clock, SystemClock};
use kiln_recsys::spec::{Interaction, Layout, Part, RecsysSpec};
use kiln_recsys::weights::{Linear, WeightsFile};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::optim::ftrl::FtrlParams;
use crate::optim::{adagrad::AdaGrad, adam::Adam};
use crate::sample::Sample;
use batch::{FeatureShape, Plan};
use net::{Layer, Net, Tape};
use store::EmbStore;
use wide::WideHead;

/// The MLPs' optimizer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DenseOptimizer {
    /// Adam.
    Adam(Adam),
    /// AdaGrad.
    Adagrad(AdaGrad),
}

/// Admission of new embedding rows.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Admission {
    /// Times a key must be seen before it gets a row (0 or 1: on first sight).
    pub min_count: u32,
    /// Counters per row of the count-min sketch (per table).
    pub width: usize,
    /// Rows of the sketch.
    pub depth: usize,
}

impl Default for Admission {
    fn default() -> Self {
        Admission {
            min_count: 1,
            width: 1 << 18,
            depth: 4,
        }
    }
}

/// The deep trainer's settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeepConfig {
    /// The MLPs' optimizer.
    pub dense: DenseOptimizer,
    /// Sparse AdaGrad of the embedding rows.
    pub embedding: AdaGrad,
    /// Admission of new rows.
    pub admission: Admission,
    /// Least time between two TTL sweeps of the tables (run from `drain_deltas`), ms.
    pub maintain_every_ms: u64,
    /// FTRL-Proximal of the wide part (Wide & Deep models only).
    #[serde(with = "FtrlDef")]
    pub wide: FtrlParams,
}

/// [`FtrlParams`] as serde sees it.
#[derive(Serialize, Deserialize)]
#[serde(remote = "FtrlParams", deny_unknown_fields)]
struct FtrlDef {
    alpha: f64,
    beta: f64,
    l1: f64,
    l2: f64,
}

impl Default for DeepConfig {
    /// Adam (lr 0.001) for the MLPs, AdaGrad (lr 0.01) for the rows, rows on first sight,
    /// FTRL's defaults for the wide part.
    fn default() -> Self {
        DeepConfig {
            dense: DenseOptimizer::Adam(Adam::default()),
            embedding: AdaGrad::default(),
            admission: Admission::default(),
            maintain_every_ms: 10_000,
            wide: FtrlParams::default(),
        }
    }
}

/// Trains a DLRM-style recsys model (see the module docs).
pub struct DeepTrainer {
    spec: RecsysSpec,
    config: DeepConfig,
    net: Net<f32>,
    grads: Net<f32>,
    /// Adam's first moments, or AdaGrad's accumulators.
    opt1: Net<f32>,
    /// Adam's second moments (unused by AdaGrad).
    opt2: Net<f32>,
    step: u64,
    features: Vec<FeatureShape>,
    tables: Vec<EmbStore>,
    wide: WideHead,
    clock: Arc<dyn Clock>,
    last_maintain_ms: u64,
    scratch: Scratch,
}

#[derive(Default)]
struct Scratch {
    plan: Plan,
    tape: Tape<f32>,
    dense: Vec<f32>,
    pooled: Vec<f32>,
    dpooled: Vec<f32>,
    dlogit: Vec<f32>,
    logits: Vec<f32>,
    row_grads: Vec<Vec<f32>>,
}

fn model_err(file: &str, field: &str, e: impl std::fmt::Display) -> Error {
    Error::config(file, field, e.to_string())
}

fn layer_of(l: &Linear) -> Layer<f32> {
    Layer {
        inputs: l.inputs,
        outputs: l.outputs,
        w_t: l.weight_t.clone(),
        b: l.bias.clone(),
    }
}

impl DeepTrainer {
    /// A trainer of the model in `model_dir` (its `config.toml` and the weights file of its
    /// highest numbered version).
    pub fn open(model_dir: &Path, config: DeepConfig) -> Result<Self> {
        let (spec, weights) = io::open_model(model_dir)?;
        Self::new(spec, &weights, config)
    }

    /// A trainer starting from `weights` (the served model's parameters), on the system clock.
    pub fn new(spec: RecsysSpec, weights: &WeightsFile, config: DeepConfig) -> Result<Self> {
        Self::with_clock(spec, weights, config, Arc::new(SystemClock))
    }

    /// [`DeepTrainer::new`] with the clock the tables' TTL reads.
    pub fn with_clock(
        spec: RecsysSpec,
        weights: &WeightsFile,
        config: DeepConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self> {
        let file = "model weights";
        let bottom: Vec<_> = weights
            .mlp("bottom")
            .map_err(|e| model_err(file, "bottom", e))?
            .iter()
            .map(layer_of)
            .collect();
        let top: Vec<_> = weights
            .mlp("top")
            .map_err(|e| model_err(file, "top", e))?
            .iter()
            .map(layer_of)
            .collect();
        if top.last().map(|l| l.outputs) != Some(1) {
            return Err(Error::config(
                file,
                "top",
                "the last top layer must have one output",
            ));
        }
        let mut tables = Vec::new();
        let mut dims = Vec::new();
        // the deep features' tables, in spec order; `store_of[t]` is spec table t's store
        let mut store_of = vec![None; spec.tables.len()];
        for (t, ts) in spec.tables.iter().enumerate() {
            if !spec
                .sparse
                .iter()
                .any(|f| f.part == Part::Deep && f.table == t)
            {
                continue;
            }
            let tensor = format!("{}.weight", ts.name);
            let field = |e| model_err(file, &tensor, e);
            let shape = weights.shape(&tensor).map_err(field)?;
            if shape.len() != 2 || shape[1] == 0 {
                return Err(Error::config(
                    file,
                    &tensor,
                    format!("shape {shape:?}, [rows, dim] expected"),
                ));
            }
            let (rows, dim) = (shape[0], shape[1]);
            let filter = match config.admission.min_count {
                0 | 1 => None,
                n => Some(
                    AdmissionFilter::new(config.admission.width, config.admission.depth, n)
                        .map_err(|e| Error::config("learn config", "admission", e.to_string()))?,
                ),
            };
            let key_space = (ts.layout == Layout::Direct).then_some(rows as u64);
            let mut store = EmbStore::new(
                ts,
                dim,
                key_space,
                filter,
                config.embedding.initial_accumulator,
                clock.clone(),
            )?;
            let keys: Vec<u64> = match weights.has(&format!("{}.keys", ts.name)) {
                true => weights
                    .i64(&format!("{}.keys", ts.name))
                    .map_err(field)?
                    .into_iter()
                    .map(|k| k as u64)
                    .collect(),
                false => (0..rows as u64).collect(),
            };
            if keys.len() != rows {
                return Err(Error::config(
                    file,
                    &tensor,
                    format!("{rows} rows, {} keys", keys.len()),
                ));
            }
            // streamed a chunk at a time: a large table is never copied whole
            let mut next = 0;
            let mut failed = None;
            weights
                .f32_chunks(&tensor, 16_384, |chunk| {
                    let n = chunk.len() / dim;
                    if let Err(e) = store.insert_served(&keys[next..next + n], chunk) {
                        failed = Some(e);
                    }
                    next += n;
                    Ok(())
                })
                .map_err(field)?;
            if let Some(e) = failed {
                return Err(e);
            }
            store_of[t] = Some(tables.len());
            tables.push(store);
            dims.push(dim);
        }
        let deep: Vec<usize> = (0..spec.sparse.len())
            .filter(|&i| spec.sparse[i].part == Part::Deep)
            .collect();
        let features: Vec<FeatureShape> = deep
            .iter()
            .map(|&i| {
                let f = &spec.sparse[i];
                let table = store_of[f.table].expect("a deep feature's table has a store");
                FeatureShape {
                    table,
                    dim: dims[table],
                    max_ids: f.max_ids,
                    pooling: f.pooling,
                }
            })
            .collect();
        let net = Net {
            bottom,
            top,
            interaction: spec.interaction,
            widths: features.iter().map(FeatureShape::width).collect(),
        };
        let bw = net.bottom_width();
        if spec.interaction == Interaction::Dot {
            let deep_features = deep.iter().map(|&i| &spec.sparse[i]);
            if let Some((f, w)) = deep_features.zip(&net.widths).find(|(_, &w)| w != bw) {
                return Err(Error::config(
                    "config.toml",
                    format!("parameters.sparse.{}", f.name),
                    format!("interaction dot: pools to {w} values, the bottom MLP gives {bw}"),
                ));
            }
        }
        if net.top[0].inputs != net.z_width() {
            return Err(Error::config(
                file,
                "top.0.weight",
                format!(
                    "takes {} inputs, the interaction gives {}",
                    net.top[0].inputs,
                    net.z_width()
                ),
            ));
        }
        let admission = match config.admission.min_count {
            0 | 1 => None,
            n => Some((config.admission.width, config.admission.depth, n)),
        };
        let wide = WideHead::new(&spec, weights, config.wide, admission, clock.clone())?;
        let mut scratch = Scratch::default();
        scratch.plan.set_inputs(deep);
        let mut trainer = DeepTrainer {
            grads: net.zeros_like(),
            opt1: net.zeros_like(),
            opt2: net.zeros_like(),
            net,
            spec,
            config,
            step: 0,
            features,
            tables,
            wide,
            last_maintain_ms: clock.now_ms(),
            clock,
            scratch,
        };
        trainer.reset_optimizer();
        Ok(trainer)
    }

    fn reset_optimizer(&mut self) {
        let init = match self.config.dense {
            DenseOptimizer::Adam(_) => 0.0,
            DenseOptimizer::Adagrad(a) => a.initial_accumulator,
        };
        for l in self.opt1.bottom.iter_mut().chain(self.opt1.top.iter_mut()) {
            l.w_t.fill(init);
            l.b.fill(init);
        }
        self.step = 0;
    }

    /// The model's spec.
    pub fn spec(&self) -> &RecsysSpec {
        &self.spec
    }

    /// The dense network (weights stored `[in, out]`).
    pub fn net(&self) -> &Net<f32> {
        &self.net
    }

    /// The wide part's bias (`wide.bias`), when the model has one.
    pub fn wide_bias(&self) -> Option<f32> {
        self.wide.bias()
    }

    /// Batches learned so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// Scores `batch` without learning (and without counting its keys for admission).
    pub fn predict(&mut self, batch: &[Sample]) -> Vec<f32> {
        self.forward(batch, false)
    }
}
