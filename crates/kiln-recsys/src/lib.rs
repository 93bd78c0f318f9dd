//! Kiln's native recommendation model family (`backend = "recsys"`).
//!
//! A model is its `config.toml` [`spec`] plus one safetensors file ([`weights`]): sparse
//! features, each an INT64 `[N, max_ids]` (or BYTES) input whose ids are looked up in an
//! embedding table from `kiln-embed` and pooled; a dense FP32 `[N, D]` input through a bottom
//! MLP; an interaction (concat, or DLRM pairwise dot products); a top MLP and an output
//! activation. The MLPs ([`mlp`]) run on the kernel chosen per model at load ([`dense`]): the
//! `gemm` crate, or Intel MKL ([`mkl`], loaded at run time from the path in
//! [`RecsysOptions`]) in fp32 on pre-packed weights or in bf16, or this crate's AVX512_BF16
//! kernel in bf16 ([`dense::avx512_bf16`]), after the model's `precision` parameter; a batch
//! is split into row ranges, one per instance thread, each running the whole forward pass
//! (MKL, and the AVX512_BF16 kernel, run on that thread). Features marked
//! `part = "wide"` add their summed dim-1 rows straight to the logit ([`wide`]): a model of
//! wide features only is a logistic regression, one with both parts is Wide & Deep.
//!
//! Tables are live: [`kiln_core::SparseParameters::apply_delta`] applies sequenced deltas
//! while batches run, and the next batch sees them. Dense weights change by loading a new
//! version through the repository. A new version whose weights file has no tensor for a table
//! shares the live table of the version it replaces (deltas applied so far are kept); one that
//! has it starts from the file.
//!
//! Modules: [`spec`] (the config), [`weights`] (the safetensors file), [`features`] (raw ids to
//! table keys, the one definition of feature hashing), [`tables`] (the live-table registry and
//! the sparse control plane), [`wide`] (the wide part's checks), [`dense`], [`mkl`], [`mlp`] and
//! [`model`] (the CPU forward pass).

#![warn(missing_docs)]

pub mod dense;
pub mod features;
pub mod mkl;
pub mod mlp;
pub mod model;
pub mod spec;
pub mod tables;
pub mod weights;
pub mod wide;

use dense::{DenseEnv, DenseLayer};
use kiln_core::{Backend, DataType, Error, LoadedModel, ModelConfig, ModelIo, Result, TensorSpec};
use kiln_embed::{EmbedCollector, Pooling};
use model::RecsysModel;
use spec::{Interaction, Part, RecsysSpec};
use std::path::{Path, PathBuf};
use std::sync::Arc;
pub use tables::TableRegistry;
use weights::WeightsFile;

/// The `recsys` backend. Its [`TableRegistry`] keeps the live tables of loaded models, so a
/// new version can share them, and the Prometheus collector of their metrics; a registry can be
/// shared with another backend ([`RecsysBackend::with_tables`]). What runs the dense layers
/// is set by [`RecsysOptions`].
pub struct RecsysBackend {
    tables: Arc<TableRegistry>,
    dense: DenseEnv,
}

impl Default for RecsysBackend {
    fn default() -> Self {
        Self::with_options(RecsysOptions::default())
    }
}

/// What the backend may use under the dense layers.
#[derive(Debug, Clone, Default)]
pub struct RecsysOptions {
    /// `libmkl_rt.so*` to load; `None`: no MKL, every model runs on the `gemm` crate.
    pub mkl_library: Option<PathBuf>,
    /// Why `mkl_library` is `None` (for the log; e.g. where it was looked for).
    pub mkl_missing: Option<String>,
    /// Whether MKL computes bf16 natively on this CPU; `None`: detected
    /// ([`dense::detect_cpu_bf16`]: AMX, or AVX512_BF16 on Intel). `Some` overrides the
    /// detection (`Some(false)` runs as on a CPU without any bf16 units: neither MKL bf16 nor
    /// the `avx512_bf16` kernel, which otherwise runs wherever the CPU has AVX512_BF16).
    pub cpu_bf16: Option<bool>,
}

impl RecsysBackend {
    /// A backend with no tables yet, on the `gemm` crate.
    pub fn new() -> Self {
        Self::default()
    }

    /// A backend with no tables yet and these options. A library that fails to load is
    /// logged (warning) and leaves the `gemm` path.
    pub fn with_options(options: RecsysOptions) -> Self {
        let mkl = match &options.mkl_library {
            Some(path) => mkl::Mkl::load(path).map(Arc::new).map_err(|e| {
                tracing::warn!(error = %e, "recsys: MKL not loaded; models run on the gemm crate");
                e.to_string()
            }),
            None => Err(options
                .mkl_missing
                .clone()
                .unwrap_or_else(|| "no MKL library given".to_string())),
        };
        if let Ok(m) = &mkl {
            tracing::info!(library = %m.path().display(), version = m.version_number(), threading = m.threading(), "recsys: MKL loaded");
        }
        let cpu_bf16 = match options.cpu_bf16 {
            None => dense::detect_cpu_bf16(),
            Some(true) => Ok("native bf16 (set by configuration)".to_string()),
            Some(false) => Err("no native bf16 (set by configuration)".to_string()),
        };
        let avx512_bf16 = match (options.cpu_bf16, dense::avx512_bf16::available()) {
            (Some(false), _) => Err("no native bf16 (set by configuration)".to_string()),
            (_, true) => Ok(()),
            (_, false) => Err("the CPU has no AVX512_BF16".to_string()),
        };
        Self {
            tables: Arc::default(),
            dense: DenseEnv {
                mkl,
                cpu_bf16,
                avx512_bf16,
            },
        }
    }

    /// A backend sharing the live tables of `tables`.
    pub fn with_tables(tables: Arc<TableRegistry>) -> Self {
        Self {
            tables,
            ..Self::default()
        }
    }

    /// What the dense layers may use (MKL, native bf16).
    pub fn dense_env(&self) -> &DenseEnv {
        &self.dense
    }

    /// The live tables.
    pub fn tables(&self) -> &Arc<TableRegistry> {
        &self.tables
    }

    /// The collector of every table's metrics (`kiln_embed_*`); register it once.
    pub fn collector(&self) -> &EmbedCollector {
        self.tables.collector()
    }
}

fn spec_of(name: &str, data_type: DataType, dims: Vec<i64>) -> TensorSpec {
    TensorSpec {
        name: name.to_string(),
        data_type,
        dims,
        allow_ragged_batch: false,
    }
}

impl Backend for RecsysBackend {
    fn name(&self) -> &'static str {
        "recsys"
    }

    fn load(&self, dir: &Path, config: &ModelConfig) -> Result<Arc<dyn LoadedModel>> {
        let model = config.model_name().to_string();
        let spec = RecsysSpec::parse(&config.parameters)?;
        if config.max_batch_size == 0 {
            return Err(Error::invalid(
                "recsys models are batched: set max_batch_size > 0",
            ));
        }
        let path = dir.join(&config.default_model_filename);
        if !path.is_file() {
            return Err(Error::invalid(format!(
                "weights file {} not found",
                path.display()
            )));
        }
        let weights = WeightsFile::open(&path)?;
        let (bottom, top) = wide::mlps(&spec, &weights)?;
        let (kernel, reason) = if bottom.is_empty() && top.is_empty() {
            (dense::Kernel::Gemm, "no MLPs (wide only)".to_string())
        } else {
            self.dense.choose(spec.precision)?
        };
        tracing::info!(model = %model, path = kernel.name(), reason = %reason, "recsys: dense layers");
        let bottom: Vec<DenseLayer> = bottom
            .into_iter()
            .map(|l| DenseLayer::new(l, &kernel))
            .collect();
        let top: Vec<DenseLayer> = top
            .into_iter()
            .map(|l| DenseLayer::new(l, &kernel))
            .collect();
        let mut tables = self.tables.open_all(&model, &spec.tables, &weights)?;
        let out_dim = top.last().map_or(1, |l| l.outputs);
        let wide = wide::load(&spec, &weights, &tables, out_dim)?;
        let deep: Vec<usize> = (0..spec.sparse.len())
            .filter(|&i| spec.sparse[i].part == Part::Deep)
            .collect();
        let bw = bottom.last().map(|l| l.outputs).unwrap_or(0);
        let widths: Vec<usize> = deep
            .iter()
            .map(|&i| {
                let f = &spec.sparse[i];
                f.pooling.output_width(tables.get(f.table).dim())
            })
            .collect();
        let z_width = match spec.interaction {
            _ if deep.is_empty() => 0,
            Interaction::Concat => bw + widths.iter().sum::<usize>(),
            Interaction::Dot => {
                if let Some((&i, w)) = deep.iter().zip(&widths).find(|(_, &w)| w != bw) {
                    return Err(Error::invalid(format!(
                        "interaction dot: feature '{}' pools to {w} values but the bottom MLP gives {bw}; all must be equal",
                        spec.sparse[i].name
                    )));
                }
                let n = widths.len() + 1;
                bw + n * (n - 1) / 2
            }
        };
        if let Some(top0) = top.first().filter(|t| t.inputs != z_width) {
            return Err(Error::invalid(format!(
                "top.0 takes {} inputs but the {:?} interaction gives {z_width} (bottom {bw} + {} deep sparse features)",
                top0.inputs,
                spec.interaction,
                widths.len()
            )));
        }
        let mut inputs = Vec::new();
        if let Some(dense) = &spec.dense_input {
            inputs.push(spec_of(
                dense,
                DataType::Fp32,
                vec![bottom[0].inputs as i64],
            ));
        }
        let mut input_index = Vec::new();
        for f in &spec.sparse {
            input_index.push(inputs.len());
            if f.is_cross() {
                // computed from its components' inputs: no input of its own
                continue;
            }
            if f.ragged {
                let mut values = spec_of(&format!("{}_values", f.name), DataType::Int64, vec![]);
                values.allow_ragged_batch = true;
                inputs.push(values);
                inputs.push(spec_of(
                    &format!("{}_lengths", f.name),
                    DataType::Int32,
                    vec![],
                ));
            } else {
                inputs.push(spec_of(&f.name, f.data_type, vec![f.max_ids as i64]));
            }
        }
        let rows_input = inputs
            .iter()
            .position(|t| !t.allow_ragged_batch)
            .unwrap_or(0);
        let io = ModelIo {
            inputs,
            outputs: vec![spec_of(&spec.output, DataType::Fp32, vec![out_dim as i64])],
        };
        check_declared(&config.input, &io.inputs, "input")?;
        check_declared(&config.output, &io.outputs, "output")?;
        let threads = config.instance_group.threads.max(1) as usize;
        let pool = if threads > 1 {
            Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads - 1)
                    .thread_name(move |i| format!("kiln-recsys-{i}"))
                    .build()
                    .map_err(|e| Error::internal(format!("thread pool: {e}")))?,
            )
        } else {
            None
        };
        let pooling = |p: Pooling| match p {
            Pooling::Sum => "sum".to_string(),
            Pooling::Mean => "mean".to_string(),
            Pooling::Concat { k } => format!("concat{k}"),
        };
        let interaction = if deep.is_empty() {
            "none (wide only)".to_string()
        } else {
            format!("{:?}", spec.interaction).to_lowercase()
        };
        let mut describe = vec![
            ("interaction".to_string(), interaction),
            ("tables".to_string(), tables.tables().len().to_string()),
            (
                "table_rows".to_string(),
                tables
                    .tables()
                    .iter()
                    .map(|t| t.len())
                    .sum::<usize>()
                    .to_string(),
            ),
            (
                "pooling".to_string(),
                spec.sparse
                    .first()
                    .map(|f| pooling(f.pooling))
                    .unwrap_or_default(),
            ),
            ("threads".to_string(), threads.to_string()),
            ("gemm".to_string(), kernel.name().to_string()),
            ("gemm_reason".to_string(), reason),
        ];
        if !wide.features.is_empty() {
            describe.push(("wide_features".to_string(), wide.features.len().to_string()));
        }
        tables.publish_metrics();
        Ok(Arc::new(RecsysModel {
            io,
            spec,
            bottom,
            top,
            tables,
            deep,
            widths,
            wide,
            input_index,
            rows_input,
            out_dim,
            z_width,
            threads,
            pool,
            describe,
        }))
    }
}

fn check_declared(declared: &[TensorSpec], actual: &[TensorSpec], what: &str) -> Result<()> {
    if declared.is_empty() {
        return Ok(());
    }
    if declared != actual {
        return Err(Error::invalid(format!(
            "config.toml [[{what}]] {declared:?} does not match the model's {what}s {actual:?}"
        )));
    }
    Ok(())
}
