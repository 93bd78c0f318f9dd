//! The trainer a `learn.toml` names, behind one type the learner loop drives, with what the
//! loop needs beyond [`Trainer`]: periodic maintenance (TTL, memory cap) and the dense
//! tensors of a new model version.

use std::path::Path;

use crate::config::{DenseOptimizer, EmbeddingOptimizer, LearnConfig, ModelInfo, TrainerKind};
use crate::deep::{self, DeepTrainer};
use crate::error::{Error, Result};
use crate::optim::ftrl::FtrlParams;
use crate::optim::{adagrad::AdaGrad, adam::Adam};
use crate::sample::Sample;
use crate::snapshot::DenseTensor;
use crate::trainer::{TableDelta, Trainer};
use crate::wide::WideTrainer;

/// The wide (FTRL) or the deep trainer.
pub enum AnyTrainer {
    /// FTRL-Proximal logistic regression.
    Wide(Box<WideTrainer>),
    /// DLRM backpropagation, in mini-batches of at most the given size.
    Deep(Box<DeepTrainer>, usize),
}

impl AnyTrainer {
    /// The trainer `config` asks for, starting from `model`'s parameters (deep) or zeros (wide).
    pub fn build(config: &LearnConfig, model: &ModelInfo) -> Result<AnyTrainer> {
        Ok(match config.trainer.kind {
            TrainerKind::Ftrl => AnyTrainer::Wide(Box::new(WideTrainer::new(
                &model.spec,
                ftrl_params(config),
            )?)),
            TrainerKind::Deep => AnyTrainer::Deep(
                Box::new(DeepTrainer::open(&config.model_dir, deep_config(config)?)?),
                config.trainer.deep.batch_size.max(1),
            ),
        })
    }

    /// Expires rows past their TTL or memory cap (tombstones for the next publish).
    pub fn maintain(&mut self) -> usize {
        match self {
            AnyTrainer::Wide(t) => t.maintain(),
            AnyTrainer::Deep(t, _) => t.maintain(),
        }
    }

    /// The dense tensors of a served model version (no tables): the wide bias, or the deep
    /// model's MLPs (and its wide bias when it has one).
    pub fn dense_tensors(&self, model: &ModelInfo, scratch: &Path) -> Result<Vec<DenseTensor>> {
        match self {
            AnyTrainer::Wide(t) => Ok(vec![("wide.bias".into(), vec![1], vec![t.bias()])]),
            AnyTrainer::Deep(t, _) => {
                let path = scratch.join("weights.safetensors");
                t.write_weights(&path)?;
                let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
                let _ = std::fs::remove_file(&path);
                let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| {
                    Error::Checkpoint {
                        path: path.clone(),
                        reason: e.to_string(),
                    }
                })?;
                let tables: Vec<String> = model
                    .spec
                    .tables
                    .iter()
                    .map(|t| format!("{}.", t.name))
                    .collect();
                let mut out = Vec::new();
                for (name, view) in st.tensors() {
                    if tables.iter().any(|p| name.starts_with(p))
                        || view.dtype() != safetensors::Dtype::F32
                    {
                        continue;
                    }
                    let values = view
                        .data()
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect();
                    out.push((name, view.shape().to_vec(), values));
                }
                out.sort_by(|a, b| a.0.cmp(&b.0));
                Ok(out)
            }
        }
    }

    fn inner(&self) -> &dyn Trainer {
        match self {
            AnyTrainer::Wide(t) => t.as_ref(),
            AnyTrainer::Deep(t, _) => t.as_ref(),
        }
    }

    fn inner_mut(&mut self) -> &mut dyn Trainer {
        match self {
            AnyTrainer::Wide(t) => t.as_mut(),
            AnyTrainer::Deep(t, _) => t.as_mut(),
        }
    }
}

/// `[trainer.ftrl]`: the wide trainer's optimizer, and the deep trainer's for the wide part of
/// a Wide & Deep model.
fn ftrl_params(config: &LearnConfig) -> FtrlParams {
    let f = &config.trainer.ftrl;
    FtrlParams {
        alpha: f.alpha,
        beta: f.beta,
        l1: f.l1,
        l2: f.l2,
    }
}

/// `[trainer.deep]` (and `[trainer.ftrl]` for a wide part) as the deep trainer's settings.
fn deep_config(config: &LearnConfig) -> Result<deep::DeepConfig> {
    let d = &config.trainer.deep;
    if d.embedding_optimizer == EmbeddingOptimizer::Ftrl {
        return Err(Error::config(
            config.file.clone(),
            "trainer.deep.embedding_optimizer",
            "the deep trainer learns embedding rows with AdaGrad; \"ftrl\" is for wide models",
        ));
    }
    let dense = match d.optimizer {
        DenseOptimizer::Adam => deep::DenseOptimizer::Adam(Adam {
            lr: d.lr,
            ..Adam::default()
        }),
        DenseOptimizer::Adagrad => deep::DenseOptimizer::Adagrad(AdaGrad {
            lr: d.lr,
            ..AdaGrad::default()
        }),
    };
    Ok(deep::DeepConfig {
        dense,
        embedding: AdaGrad {
            lr: d.embedding_lr,
            ..AdaGrad::default()
        },
        admission: deep::Admission {
            min_count: d.admission_min_count,
            ..deep::Admission::default()
        },
        wide: ftrl_params(config),
        ..deep::DeepConfig::default()
    })
}

impl Trainer for AnyTrainer {
    fn train(&mut self, batch: &[Sample]) -> Vec<f32> {
        match self {
            AnyTrainer::Wide(t) => t.train(batch),
            // the loop hands over whatever the join emitted; the deep trainer steps once per
            // `trainer.deep.batch_size` samples, each mini-batch scored before it is learned
            AnyTrainer::Deep(t, size) => {
                let mut probs = Vec::with_capacity(batch.len());
                for chunk in batch.chunks(*size) {
                    probs.extend(t.train(chunk));
                }
                probs
            }
        }
    }

    fn drain_deltas(&mut self) -> Vec<TableDelta> {
        self.inner_mut().drain_deltas()
    }

    fn rows(&self, table: &str, keys: &[u64]) -> Option<Vec<Option<Vec<f32>>>> {
        self.inner().rows(table, keys)
    }

    fn save(&self, dir: &Path) -> Result<()> {
        self.inner().save(dir)
    }

    fn load(&mut self, dir: &Path) -> Result<()> {
        self.inner_mut().load(dir)
    }

    fn snapshot_served(&self, dir: &Path) -> Result<()> {
        self.inner().snapshot_served(dir)
    }
}
