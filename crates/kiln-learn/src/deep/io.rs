//! Files: the served model the trainer starts from, the weights file it publishes, and its
//! checkpoints.
//!
//! A checkpoint directory holds `deep.safetensors` (the MLPs in serving's layout, the
//! optimizer moments as `opt1.<layer>` / `opt2.<layer>` in the same layout, the step count
//! `step` and each table's live keys `<table>.keys`) and `<table>.train.snap` per table (a
//! kiln-embed snapshot of the `[w | accumulator]` rows with their update times, so TTLs carry
//! over); a Wide & Deep model's wide tables likewise (`[w | z | n]` rows) and the bias's FTRL
//! state as `wide.bias.ftrl`. The admission filter's counts are not kept: after a restore, keys without a row are
//! counted from zero again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use kiln_core::ModelConfig;
use kiln_recsys::spec::RecsysSpec;
use kiln_recsys::weights::WeightsFile;
use safetensors::tensor::TensorView;
use safetensors::Dtype;

use super::net::{Layer, Net};
use super::{wide, DeepTrainer};
use crate::error::{Error, Result};

/// The checkpoint's dense file.
pub(super) const DENSE_FILE: &str = "deep.safetensors";

/// Tensors to write: name, dtype, shape, little-endian bytes.
#[derive(Default)]
struct Tensors(Vec<(String, Dtype, Vec<usize>, Vec<u8>)>);

impl Tensors {
    fn f32(&mut self, name: String, shape: Vec<usize>, values: &[f32]) {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.0.push((name, Dtype::F32, shape, bytes));
    }

    fn i64(&mut self, name: String, values: &[u64]) {
        let bytes = values
            .iter()
            .flat_map(|&v| (v as i64).to_le_bytes())
            .collect();
        self.0.push((name, Dtype::I64, vec![values.len()], bytes));
    }

    /// A layer in PyTorch's `[out, in]` layout: `<prefix>.weight` and `<prefix>.bias`.
    fn layer(&mut self, prefix: &str, l: &Layer<f32>) {
        let mut w = vec![0.0f32; l.inputs * l.outputs];
        for i in 0..l.inputs {
            for o in 0..l.outputs {
                w[o * l.inputs + i] = l.w_t[i * l.outputs + o];
            }
        }
        self.f32(format!("{prefix}.weight"), vec![l.outputs, l.inputs], &w);
        self.f32(format!("{prefix}.bias"), vec![l.outputs], &l.b);
    }

    fn net(&mut self, prefix: &str, net: &Net<f32>) {
        for (j, l) in net.bottom.iter().enumerate() {
            self.layer(&format!("{prefix}bottom.{j}"), l);
        }
        for (j, l) in net.top.iter().enumerate() {
            self.layer(&format!("{prefix}top.{j}"), l);
        }
    }

    /// Writes the file through `<path>.tmp` and a rename.
    fn write(&self, path: &Path, format: &str) -> Result<()> {
        let views = self
            .0
            .iter()
            .map(|(n, d, s, b)| {
                TensorView::new(*d, s.clone(), b)
                    .map(|v| (n.clone(), v))
                    .map_err(|e| io_err(path, e))
            })
            .collect::<Result<Vec<_>>>()?;
        let meta = HashMap::from([("format".to_string(), format.to_string())]);
        let tmp = PathBuf::from(format!("{}.tmp", path.display()));
        safetensors::serialize_to_file(views, Some(meta), &tmp).map_err(|e| io_err(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    }
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::io(path, std::io::Error::other(e.to_string()))
}

fn ckpt_err(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::Checkpoint {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// The spec and weights of the model in `dir`: its `config.toml` and the weights file of its
/// highest numbered version.
pub(super) fn open_model(dir: &Path) -> Result<(RecsysSpec, WeightsFile)> {
    let cfg_path = dir.join("config.toml");
    let shown = cfg_path.display().to_string();
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let config = ModelConfig::from_file(&cfg_path, name)
        .map_err(|e| Error::config(&shown, "config.toml", e.to_string()))?;
    let spec = RecsysSpec::parse(&config.parameters)
        .map_err(|e| Error::config(&shown, "parameters", e.to_string()))?;
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let version = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .filter(|v| {
            dir.join(v.to_string())
                .join(&config.default_model_filename)
                .is_file()
        })
        .max()
        .ok_or_else(|| {
            Error::config(
                &shown,
                "default_model_filename",
                format!(
                    "no version directory holds {}",
                    config.default_model_filename
                ),
            )
        })?;
    let path = dir
        .join(version.to_string())
        .join(&config.default_model_filename);
    let weights = WeightsFile::open(&path)
        .map_err(|e| Error::config(path.display().to_string(), "weights", e.to_string()))?;
    Ok((spec, weights))
}

fn read_layers(w: &WeightsFile, path: &Path, prefix: &str, into: &mut [Layer<f32>]) -> Result<()> {
    let layers = w.mlp(prefix).map_err(|e| ckpt_err(path, e))?;
    if layers.len() != into.len() {
        return Err(ckpt_err(
            path,
            format!(
                "{prefix}: {} layers, the model has {}",
                layers.len(),
                into.len()
            ),
        ));
    }
    for (j, (l, dst)) in layers.into_iter().zip(into.iter_mut()).enumerate() {
        if (l.inputs, l.outputs) != (dst.inputs, dst.outputs) {
            return Err(ckpt_err(
                path,
                format!("{prefix}.{j}: shape differs from the model's"),
            ));
        }
        dst.w_t = l.weight_t;
        dst.b = l.bias;
    }
    Ok(())
}

impl DeepTrainer {
    /// Writes the served model's weights file: the MLPs (`bottom.{j}` / `top.{j}`, `.weight`
    /// `[out, in]` and `.bias`), `wide.bias` when the model has one, and every table (`<table>.weight` `[rows, dim]` with its keys
    /// `<table>.keys`; a direct-layout table as rows `0..R` without keys), what the recsys
    /// backend loads as a new model version.
    pub fn write_weights(&self, path: &Path) -> Result<()> {
        let mut t = Tensors::default();
        t.net("", &self.net);
        for s in &self.tables {
            let (values, keys) = s.served_tensor();
            let n = values.len() / s.dim;
            t.f32(format!("{}.weight", s.name), vec![n, s.dim], &values);
            if let Some(k) = keys {
                t.i64(format!("{}.keys", s.name), &k);
            }
        }
        for (name, keys, values) in self.wide.served()? {
            t.f32(format!("{name}.weight"), vec![keys.len(), 1], &values);
            t.i64(format!("{name}.keys"), &keys);
        }
        if let Some(b) = self.wide.bias() {
            t.f32(wide::BIAS.into(), vec![1], &[b]);
        }
        t.write(path, "dlrm-ref-v1")
    }

    /// 0 for Adam, 1 for AdaGrad: whose moments `opt1` and `opt2` hold.
    fn optimizer_code(&self) -> u64 {
        match self.config.dense {
            super::DenseOptimizer::Adam(_) => 0,
            super::DenseOptimizer::Adagrad(_) => 1,
        }
    }

    /// [`crate::Trainer::save`].
    pub(super) fn save_to(&self, dir: &Path) -> Result<()> {
        let mut t = Tensors::default();
        t.net("", &self.net);
        t.net("opt1.", &self.opt1);
        t.net("opt2.", &self.opt2);
        t.i64("step".into(), &[self.step]);
        t.i64("optimizer".into(), &[self.optimizer_code()]);
        for s in &self.tables {
            t.i64(format!("{}.keys", s.name), &s.keys());
            s.save(&dir.join(format!("{}.train.snap", s.name)))?;
        }
        self.wide.save(dir)?;
        if let Some(b) = self.wide.bias_state() {
            t.f32(wide::BIAS_STATE.into(), vec![3], &b);
        }
        t.write(&dir.join(DENSE_FILE), "kiln-learn-deep-v1")
    }

    /// [`crate::Trainer::load`].
    pub(super) fn load_from(&mut self, dir: &Path) -> Result<()> {
        let path = dir.join(DENSE_FILE);
        let w = WeightsFile::open(&path).map_err(|e| ckpt_err(&path, e))?;
        let mut net = self.net.clone();
        let (mut opt1, mut opt2) = (self.opt1.clone(), self.opt2.clone());
        for (prefix, n) in [("", &mut net), ("opt1.", &mut opt1), ("opt2.", &mut opt2)] {
            read_layers(&w, &path, &format!("{prefix}bottom"), &mut n.bottom)?;
            read_layers(&w, &path, &format!("{prefix}top"), &mut n.top)?;
        }
        let step = w.i64("step").map_err(|e| ckpt_err(&path, e))?;
        let code = w.i64("optimizer").map_err(|e| ckpt_err(&path, e))?;
        if code.first().copied() != Some(self.optimizer_code() as i64) {
            return Err(ckpt_err(
                &path,
                "the MLPs' optimizer (adam or adagrad) differs from the configured one",
            ));
        }
        let mut keys = Vec::new();
        for s in &self.tables {
            let k = w
                .i64(&format!("{}.keys", s.name))
                .map_err(|e| ckpt_err(&path, e))?;
            keys.push(k.into_iter().map(|k| k as u64).collect::<Vec<_>>());
        }
        // every table is read before any is replaced: a failed load changes nothing
        let restored = self
            .tables
            .iter()
            .zip(keys)
            .map(|(s, k)| {
                let snap = dir.join(format!("{}.train.snap", s.name));
                s.restore(&snap, k, self.clock.clone())
            })
            .collect::<Result<Vec<_>>>()?;
        let bias = match w.has(wide::BIAS_STATE) {
            true => Some(w.f32(wide::BIAS_STATE).map_err(|e| ckpt_err(&path, e))?.1),
            false => None,
        };
        let wide = self.wide.read(dir, bias)?;
        for (s, r) in self.tables.iter_mut().zip(restored) {
            s.install(r);
        }
        self.wide.install(wide);
        self.net = net;
        self.opt1 = opt1;
        self.opt2 = opt2;
        self.step = step.first().copied().unwrap_or(0).max(0) as u64;
        Ok(())
    }
}
