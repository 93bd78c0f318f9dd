//! The served model as the learner sees it: its `config.toml` `[parameters]` (the feature spec),
//! the table dims and dense width of its newest version's weights, and which event field feeds
//! each sparse input; checked against the learner's config.

use super::{LearnConfig, TrainerKind};
use crate::error::Result;
use kiln_core::ModelConfig;
use kiln_recsys::spec::{Part, RecsysSpec};
use kiln_recsys::weights::WeightsFile;
use std::path::{Path, PathBuf};

/// A served model, read and checked against a [`LearnConfig`].
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// The model's name (its directory name).
    pub name: String,
    /// `<model_dir>/config.toml`.
    pub config_path: PathBuf,
    /// The feature spec (`[parameters]`).
    pub spec: RecsysSpec,
    /// The newest version directory's number.
    pub version: u64,
    /// That version's weights file.
    pub weights_path: PathBuf,
    /// Row width of each spec table (`<table>.weight` `[rows, dim]`), in spec table order.
    pub table_dims: Vec<usize>,
    /// The dense input's width (`bottom.0.weight` `[out, in]`), when the model has a bottom MLP.
    pub dense_width: Option<usize>,
    /// The event field read for each sparse feature, in spec order (a crossed feature reads
    /// none: its entry is its own name, unused).
    pub fields: Vec<String>,
}

impl ModelInfo {
    /// Reads `cfg.model_dir` and checks `cfg`'s features and trainer against it.
    pub fn open(cfg: &LearnConfig) -> Result<ModelInfo> {
        let dir = &cfg.model_dir;
        let config_path = dir.join("config.toml");
        let shown = config_path.display().to_string();
        let name = dir
            .canonicalize()
            .ok()
            .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
            .ok_or_else(|| cfg.err("model_dir", format!("{} is not a directory", dir.display())))?;
        let mc = ModelConfig::from_file(&config_path, &name)
            .map_err(|e| cfg.err("model_dir", e.message))?;
        let spec = RecsysSpec::parse(&mc.parameters)
            .map_err(|e| cfg.err("model_dir", format!("{shown}: {}", e.message)))?;
        let (version, weights_path) =
            newest_version(dir, &mc.default_model_filename).ok_or_else(|| {
                cfg.err(
                    "model_dir",
                    format!(
                        "{}: no version directory holds {}",
                        dir.display(),
                        mc.default_model_filename
                    ),
                )
            })?;
        let wshown = weights_path.display().to_string();
        let weights =
            WeightsFile::open(&weights_path).map_err(|e| cfg.err("model_dir", e.message))?;
        let mut table_dims = Vec::new();
        for t in &spec.tables {
            let shape = weights
                .shape(&format!("{}.weight", t.name))
                .map_err(|e| cfg.err("model_dir", e.message))?;
            if shape.len() != 2 {
                return Err(cfg.err(
                    "model_dir",
                    format!("{wshown}: {}.weight is {shape:?}, not [rows, dim]", t.name),
                ));
            }
            table_dims.push(shape[1]);
        }
        let dense_width = if weights.has("bottom.0.weight") {
            let s = weights
                .shape("bottom.0.weight")
                .map_err(|e| cfg.err("model_dir", e.message))?;
            s.get(1).copied()
        } else {
            None
        };
        let fields = resolve_fields(cfg, &spec, &shown)?;
        let info = ModelInfo {
            name,
            config_path,
            spec,
            version,
            weights_path,
            table_dims,
            dense_width,
            fields,
        };
        info.check_trainer(cfg)?;
        Ok(info)
    }

    /// The event field feeding sparse input `input`.
    fn field_of(&self, input: usize) -> &str {
        &self.fields[input]
    }

    fn check_trainer(&self, cfg: &LearnConfig) -> Result<()> {
        let shown = self.config_path.display();
        for (i, f) in self.spec.sparse.iter().enumerate() {
            let dim = self.table_dims[f.table];
            let table = &self.spec.tables[f.table].name;
            let field = format!("features.{}", self.field_of(i));
            if f.part == Part::Wide && dim != 1 {
                return Err(cfg.err(
                    &field,
                    format!(
                        "sparse input '{}' of {shown} is wide, but its table '{table}' has dim {dim} (wide tables have dim 1)",
                        f.name
                    ),
                ));
            }
            if cfg.trainer.kind == TrainerKind::Ftrl && f.part != Part::Wide {
                return Err(cfg.err(
                    "trainer.kind",
                    format!(
                        "ftrl trains wide features only, but sparse input '{}' of {shown} has part = \"deep\"",
                        f.name
                    ),
                ));
            }
        }
        if cfg.trainer.kind == TrainerKind::Deep {
            if !self.spec.sparse.iter().any(|f| f.part == Part::Deep) {
                return Err(cfg.err(
                    "trainer.kind",
                    format!("deep needs deep features, but every sparse input of {shown} is wide (use ftrl)"),
                ));
            }
            if self.dense_width.is_none() {
                return Err(cfg.err(
                    "trainer.kind",
                    format!(
                        "deep needs the MLPs, but {} has no bottom.0.weight",
                        self.weights_path.display()
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The event field of each sparse input: the field mapped to it, else its own name. Every
/// mapped input must exist and be named once.
fn resolve_fields(cfg: &LearnConfig, spec: &RecsysSpec, shown: &str) -> Result<Vec<String>> {
    let mut fields: Vec<Option<String>> = vec![None; spec.sparse.len()];
    for (field, input) in &cfg.features.map {
        let Some(i) = spec.sparse.iter().position(|f| &f.name == input) else {
            let known: Vec<&str> = spec.sparse.iter().map(|f| f.name.as_str()).collect();
            return Err(cfg.err(
                &format!("features.{field}"),
                format!(
                    "'{input}' is not a sparse input of {shown} (it has {})",
                    known.join(", ")
                ),
            ));
        };
        if spec.sparse[i].is_cross() {
            let parts: Vec<&str> = spec.sparse[i]
                .cross
                .iter()
                .map(|&c| spec.sparse[c].name.as_str())
                .collect();
            return Err(cfg.err(
                &format!("features.{field}"),
                format!(
                    "sparse input '{input}' of {shown} is the cross of {}: it is computed from their fields and reads none",
                    parts.join(", ")
                ),
            ));
        }
        if let Some(other) = &fields[i] {
            return Err(cfg.err(
                &format!("features.{field}"),
                format!("sparse input '{input}' is already fed by event field '{other}'"),
            ));
        }
        fields[i] = Some(field.clone());
    }
    Ok(fields
        .into_iter()
        .zip(&spec.sparse)
        .map(|(f, s)| f.unwrap_or_else(|| s.name.clone()))
        .collect())
}

/// The highest-numbered version directory of `dir` holding `file`.
fn newest_version(dir: &Path, file: &str) -> Option<(u64, PathBuf)> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v: u64 = e.file_name().to_str()?.parse().ok()?;
            let p = e.path().join(file);
            p.is_file().then_some((v, p))
        })
        .max_by_key(|(v, _)| *v)
}
