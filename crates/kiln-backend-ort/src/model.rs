//! A loaded ONNX Runtime model: how its sessions are built, and the sessions themselves.
//!
//! `Session::run` needs `&mut`, so every scheduler instance owns a session of its own
//! ([`LoadedModel::create_instance`]); all of them live in the process's one environment. The
//! session built at load time (which the warm-up runs through) becomes the first instance's.

use crate::convert::{from_ort, to_ort};
use crate::library::Runtime;
use crate::providers;
use crate::settings::{OptimizationLevel, OrtSettings, ProviderSpec};
use kiln_core::backend::{LoadedModel, ModelInstance, ModelIo};
use kiln_core::gather::{check_index_bounds, IndexBound};
use kiln_core::{Error, Result, Tensor};
use ort::error::ErrorCode;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{Session, SessionInputValue};
use parking_lot::Mutex;
use std::path::PathBuf;
use std::sync::Arc;

/// Everything needed to build one more session of the model.
pub struct Recipe {
    /// The process's ONNX Runtime.
    pub runtime: Arc<Runtime>,
    /// The model file.
    pub path: PathBuf,
    /// The model's settings.
    pub settings: OrtSettings,
    /// The providers that turned out usable at load time, in order.
    pub providers: Vec<ProviderSpec>,
}

impl Recipe {
    /// Builds a session with `self.providers`.
    pub fn build(&self) -> std::result::Result<Session, String> {
        build_session(&self.runtime, &self.path, &self.settings, &self.providers)
    }
}

/// Builds one session of `path` with the given providers (each one failing the build if it
/// cannot be registered).
pub fn build_session(
    runtime: &Runtime,
    path: &std::path::Path,
    settings: &OrtSettings,
    providers: &[ProviderSpec],
) -> std::result::Result<Session, String> {
    let level = match settings.optimization {
        OptimizationLevel::Disable => GraphOptimizationLevel::Disable,
        OptimizationLevel::Basic => GraphOptimizationLevel::Level1,
        OptimizationLevel::Extended => GraphOptimizationLevel::Level2,
        OptimizationLevel::All => GraphOptimizationLevel::All,
    };
    let dispatch: Vec<_> = providers.iter().map(providers::dispatch).collect();
    let mut builder = Session::builder(&runtime.env)
        .and_then(|b| b.with_optimization_level(level).map_err(Into::into))
        .and_then(|b| {
            b.with_intra_threads(settings.intra_op_threads)
                .map_err(Into::into)
        })
        .and_then(|b| {
            b.with_inter_threads(settings.inter_op_threads)
                .map_err(Into::into)
        })
        .and_then(|b| {
            b.with_parallel_execution(settings.inter_op_threads > 1)
                .map_err(Into::into)
        })
        .and_then(|b| {
            b.with_intra_op_spinning(settings.allow_spinning)
                .map_err(Into::into)
        })
        .and_then(|b| {
            b.with_inter_op_spinning(settings.allow_spinning)
                .map_err(Into::into)
        })
        .and_then(|b| b.with_execution_providers(&dispatch).map_err(Into::into))
        .map_err(|e: ort::Error| format!("session options: {e}"))?;
    builder.commit_from_file(path).map_err(|e| e.to_string())
}

/// State shared by the model and its instances.
pub struct Shared {
    /// Served inputs and outputs.
    pub io: ModelIo,
    /// For each served output, its index among the session's outputs.
    pub output_index: Vec<usize>,
    /// Inputs that index a table through a Gather, checked before every run.
    pub index_bounds: Vec<IndexBound>,
    /// How to build more sessions.
    pub recipe: Recipe,
    /// Facts for the model's metadata.
    pub describe: Vec<(String, String)>,
}

impl Shared {
    fn run(&self, session: &mut Session, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        check_index_bounds(&self.index_bounds, inputs)?;
        let values = inputs
            .iter()
            .map(to_ort)
            .collect::<Result<Vec<SessionInputValue<'_>>>>()?;
        let outputs = session.run(values.as_slice()).map_err(|e| run_error(&e))?;
        self.output_index
            .iter()
            .zip(&self.io.outputs)
            .map(|(&i, spec)| from_ort(&spec.name, &outputs[i]))
            .collect()
    }

    fn new_session(&self) -> Result<Session> {
        self.recipe.build().map_err(|e| {
            Error::internal(format!(
                "{}: cannot create another onnxruntime session: {e}",
                self.recipe.path.display()
            ))
        })
    }
}

/// The error of a failed run: 400 where ONNX Runtime says the request's data is at fault
/// (its INVALID_ARGUMENT status, such as "indices element out of data bounds", or an
/// out-of-bounds / out-of-range message from a kernel), else 500.
fn run_error(e: &ort::Error) -> Error {
    let message = e.message();
    let lower = message.to_ascii_lowercase();
    let data = e.code() == ErrorCode::InvalidArgument
        || [
            "out of bounds",
            "out of range",
            "out-of-range",
            // a width the graph fixes but the file and the served dims leave free
            "dimension mismatch",
        ]
        .iter()
        .any(|m| lower.contains(m));
    if data {
        Error::invalid(format!("onnxruntime refused the input data: {message}"))
    } else {
        Error::internal(format!("onnxruntime execution failed: {message}"))
    }
}

/// A model loaded into ONNX Runtime.
pub struct OrtModel {
    shared: Arc<Shared>,
    /// The session built at load time, until an instance takes it; `execute` runs on it (and
    /// builds another if it was taken).
    spare: Mutex<Option<Session>>,
}

impl OrtModel {
    /// Wraps the load-time session.
    pub fn new(shared: Shared, session: Session) -> Self {
        OrtModel {
            shared: Arc::new(shared),
            spare: Mutex::new(Some(session)),
        }
    }
}

impl LoadedModel for OrtModel {
    fn io(&self) -> &ModelIo {
        &self.shared.io
    }

    fn check_inputs(&self, inputs: &[Tensor]) -> Result<()> {
        check_index_bounds(&self.shared.index_bounds, inputs)
    }

    fn execute(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        let mut spare = self.spare.lock();
        let session = match spare.as_mut() {
            Some(s) => s,
            None => spare.insert(self.shared.new_session()?),
        };
        self.shared.run(session, inputs)
    }

    fn create_instance(&self) -> Option<Result<Box<dyn ModelInstance>>> {
        let session = match self.spare.lock().take() {
            Some(s) => Ok(s),
            None => self.shared.new_session(),
        };
        Some(session.map(|session| {
            Box::new(OrtInstance {
                shared: self.shared.clone(),
                session,
            }) as Box<dyn ModelInstance>
        }))
    }

    fn describe(&self) -> Vec<(String, String)> {
        self.shared.describe.clone()
    }
}

/// One worker's own session.
struct OrtInstance {
    shared: Arc<Shared>,
    session: Session,
}

impl ModelInstance for OrtInstance {
    fn execute(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        self.shared.run(&mut self.session, inputs)
    }
}
