//! The ONNX Runtime backend: ONNX models on ONNX Runtime's CPU, CUDA and TensorRT execution
//! providers, the engine Triton serves ONNX models with.
//!
//! The ONNX Runtime shared library is loaded at run time (ort's `load-dynamic`): nothing is
//! linked or downloaded at build time, and a binary without the library still serves its tract
//! models; only loading a model that asks for this backend fails, with a message saying how to
//! get the library ([`library`] describes where it is looked for).
//!
//! Per-model settings live in the `[parameters]` table of `config.toml` ([`settings`]). Inputs
//! and outputs come from the session's metadata when the config omits them and are checked
//! against it when given; the batch dimension is the model's symbolic first dimension.

mod convert;
pub mod library;
mod model;
mod providers;
pub mod settings;

use crate::convert::kiln_dtype;
use crate::library::{LibraryError, Source};
use crate::model::{build_session, OrtModel, Recipe, Shared};
use crate::settings::{OrtSettings, ProviderSpec};
use kiln_core::backend::{Backend, LoadedModel};
use kiln_core::{Error, ModelConfig, Result};
use kiln_onnx::{pin_derived_dims, resolve, FileTensor, GraphFacts};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A session input or output as the file declares it.
fn file_tensor(o: &ort::value::Outlet) -> FileTensor {
    use ort::value::ValueType;
    let (dtype, dims) = match o.dtype() {
        ValueType::Tensor { ty, shape, .. } => (
            kiln_dtype(*ty).ok_or_else(|| format!("tensor of {ty}")),
            shape.iter().map(|&d| if d < 0 { -1 } else { d }).collect(),
        ),
        other => (Err(format!("{other}")), Vec::new()),
    };
    FileTensor {
        name: o.name().to_string(),
        dtype,
        dims,
    }
}

/// Loads ONNX models with ONNX Runtime. Cheap to create: the library is loaded on first use.
#[derive(Debug, Clone, Default)]
pub struct OrtBackend {
    /// The library the caller gave and where it came from, tried before `ORT_DYLIB_PATH`.
    library: Option<(PathBuf, Source)>,
}

impl OrtBackend {
    /// A backend that loads the library at `library` (`--ort-library`), else the one
    /// `ORT_DYLIB_PATH` names.
    pub fn new(library: Option<PathBuf>) -> Self {
        OrtBackend {
            library: library.map(|p| (p, Source::Explicit)),
        }
    }

    /// A backend that loads the library at `path`, which the caller found as `how` says (e.g.
    /// "the onnxruntime package of the Python that was asked"; the phrase appears in messages).
    pub fn found(path: PathBuf, how: impl Into<String>) -> Self {
        OrtBackend {
            library: Some((path, Source::Found(how.into()))),
        }
    }

    fn given(&self) -> Option<(&Path, Source)> {
        self.library
            .as_ref()
            .map(|(p, source)| (p.as_path(), source.clone()))
    }

    /// Loads the library now (once per process) and reports where it came from, or why it
    /// cannot be used (the message says how to provide one).
    pub fn probe(&self) -> std::result::Result<PathBuf, String> {
        library::runtime(self.given())
            .map(|rt| rt.path.clone())
            .map_err(|e| e.with_hint())
    }

    /// Whether the library can be loaded; see [`OrtBackend::probe`].
    pub fn is_available(&self) -> bool {
        self.probe().is_ok()
    }
}

impl Backend for OrtBackend {
    fn name(&self) -> &'static str {
        "onnxruntime"
    }

    fn load(&self, dir: &Path, config: &ModelConfig) -> Result<Arc<dyn LoadedModel>> {
        let path = dir.join(&config.default_model_filename);
        let settings = OrtSettings::from_config(config)?;
        if !path.is_file() {
            return Err(Error::invalid(format!(
                "model file {} not found",
                path.display()
            )));
        }
        let runtime = library::runtime(self.given()).map_err(|e: LibraryError| {
            Error::unavailable(format!("{}: {}", path.display(), e.with_hint()))
        })?;
        let at = |m: String| Error::invalid(format!("{}: {m}", path.display()));

        let mut usable = Vec::new();
        let mut skipped: Vec<(String, String)> = Vec::new();
        for spec in &settings.providers {
            match providers::unavailable_reason(spec) {
                None => usable.push(spec.clone()),
                Some(why) if settings.allow_cpu_fallback => {
                    tracing::warn!(model = config.model_name(), provider = spec.kind(), reason = %why,
                        "execution provider unavailable, falling back");
                    skipped.push((spec.kind().to_string(), why));
                }
                Some(why) => {
                    return Err(at(format!(
                        "parameters.execution_providers: {} is not available: {why}; set \
                         parameters.allow_cpu_fallback = true to run on the cpu instead",
                        spec.kind()
                    )))
                }
            }
        }
        if usable.is_empty() {
            usable.push(ProviderSpec::Cpu);
        }
        let gpu = usable.iter().any(|p| *p != ProviderSpec::Cpu);
        let session = match build_session(&runtime, &path, &settings, &usable) {
            Ok(s) => s,
            Err(e) if gpu && settings.allow_cpu_fallback => {
                let kinds: Vec<&str> = usable
                    .iter()
                    .filter(|p| **p != ProviderSpec::Cpu)
                    .map(|p| p.kind())
                    .collect();
                tracing::warn!(model = config.model_name(), providers = ?kinds, reason = %e,
                    "session creation with gpu providers failed, falling back to the cpu");
                skipped.extend(kinds.iter().map(|k| (k.to_string(), e.clone())));
                usable = vec![ProviderSpec::Cpu];
                build_session(&runtime, &path, &settings, &usable)
                    .map_err(|e| at(format!("onnxruntime cannot load the model: {e}")))?
            }
            Err(e) => return Err(at(format!("onnxruntime cannot load the model: {e}"))),
        };

        let mut inputs: Vec<FileTensor> = session.inputs().iter().map(file_tensor).collect();
        // One read of the graph for both load-time analyses (dims it pins, indices it bounds).
        let graph = GraphFacts::read(&path)
            .inspect_err(|why| {
                tracing::debug!(path = %path.display(), %why,
                    "graph not analysed: input dims and gather indices are left to onnxruntime")
            })
            .ok();
        pin_derived_dims(graph.as_ref(), &mut inputs, config.max_batch_size > 0);
        let outputs: Vec<FileTensor> = session.outputs().iter().map(file_tensor).collect();
        let (io, output_index) = resolve(&inputs, &outputs, config).map_err(at)?;

        let provider = providers::describe(&usable, &skipped);
        let describe = vec![
            ("engine".to_string(), "onnxruntime".to_string()),
            ("execution_provider".to_string(), provider.clone()),
            (
                "graph_optimization_level".to_string(),
                format!("{:?}", settings.optimization).to_lowercase(),
            ),
            (
                "intra_op_threads".to_string(),
                settings.intra_op_threads.to_string(),
            ),
            (
                "inter_op_threads".to_string(),
                settings.inter_op_threads.to_string(),
            ),
            (
                "allow_spinning".to_string(),
                settings.allow_spinning.to_string(),
            ),
            (
                "onnxruntime_library".to_string(),
                runtime.path.display().to_string(),
            ),
        ];
        tracing::debug!(path = %path.display(), execution_provider = %provider, "onnxruntime model loaded");
        let index_bounds = graph
            .as_ref()
            .map(GraphFacts::index_bounds)
            .unwrap_or_default();
        let shared = Shared {
            io,
            output_index,
            index_bounds,
            recipe: Recipe {
                runtime,
                path,
                settings,
                providers: usable,
            },
            describe,
        };
        Ok(Arc::new(OrtModel::new(shared, session)))
    }
}
