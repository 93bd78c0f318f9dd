//! The engine interface: a [`Backend`] loads a model version directory into an immutable
//! [`LoadedModel`] that runs one batch at a time on a thread the scheduler owns.

use crate::config::{ModelConfig, TensorSpec};
use crate::error::Result;
use crate::tensor::Tensor;
use std::path::Path;
use std::sync::Arc;

/// Inputs and outputs a loaded model accepts and produces.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ModelIo {
    /// Inputs, in the model's order. Dims leave out the batch dimension when batching.
    pub inputs: Vec<TensorSpec>,
    /// Outputs, in the model's order. Dims leave out the batch dimension when batching.
    pub outputs: Vec<TensorSpec>,
}

/// An inference engine that turns model files into runnable models.
pub trait Backend: Send + Sync {
    /// The name `config.toml` uses to pick this backend (`tract`, `onnxruntime`, ...).
    fn name(&self) -> &'static str;

    /// Loads the version directory `dir` (holding `config.default_model_filename`).
    ///
    /// The returned model's [`LoadedModel::io`] is the config's inputs and outputs where given,
    /// otherwise those read from the model file; a mismatch between the two is a load error.
    fn load(&self, dir: &Path, config: &ModelConfig) -> Result<Arc<dyn LoadedModel>>;
}

/// A model ready to run. Immutable and shared by every instance of one model version.
pub trait LoadedModel: Send + Sync {
    /// Inputs and outputs.
    fn io(&self) -> &ModelIo;

    /// Runs one batch. Inputs are in [`ModelIo::inputs`] order and already checked against it;
    /// outputs must be in [`ModelIo::outputs`] order. Blocking; never called on an async runtime.
    fn execute(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>>;

    /// Checks one request's inputs (in [`ModelIo::inputs`] order, already checked against it)
    /// for values the engine would fail or misbehave on, such as ids outside the table a
    /// `Gather` reads (see [`crate::gather`]). Cheap; runs before the request is queued, and
    /// again on each request of a batch the engine panicked on, to tell a data error (400)
    /// from an engine fault (500). The default accepts everything.
    fn check_inputs(&self, inputs: &[Tensor]) -> Result<()> {
        let _ = inputs;
        Ok(())
    }

    /// Creates the per-instance state of one worker thread, for engines whose sessions need
    /// `&mut` or thread-local scratch. `None` (the default) means instances share `self` and
    /// call [`LoadedModel::execute`].
    fn create_instance(&self) -> Option<Result<Box<dyn ModelInstance>>> {
        None
    }

    /// Backend-specific facts shown in the model's metadata (e.g. the execution provider).
    fn describe(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    /// The model's online-updatable sparse parameters (embedding tables), if it has any.
    fn sparse(&self) -> Option<&dyn SparseParameters> {
        None
    }
}

/// Embedding tables of a live model that take sequenced deltas while it serves.
pub trait SparseParameters: Send + Sync {
    /// The tables, in the model's order.
    fn tables(&self) -> Vec<SparseTableInfo>;

    /// Applies one encoded delta (the embedding store's binary delta format) to `table`. The
    /// next batch executed after this returns sees the change.
    fn apply_delta(&self, table: &str, encoded: &[u8]) -> Result<DeltaAck>;

    /// Sets the last applied sequence number of `source` on `table`, so that the next delta
    /// it accepts from that source is `seq + 1`: what restoring a live table from a snapshot
    /// written elsewhere needs. The default refuses with `Unsupported`.
    fn reset_source(&self, table: &str, source: &str, seq: u64) -> Result<()> {
        let _ = (source, seq);
        Err(crate::Error::new(
            crate::ErrorCode::Unsupported,
            format!("table '{table}' cannot have its delta sequence numbers set"),
        ))
    }

    /// The rows of `keys` in `table`, in order: `None` for a key without a row (the default
    /// row a lookup would use is not materialized). The default refuses with `Unsupported`.
    fn rows(&self, table: &str, keys: &[u64]) -> Result<Vec<Option<Vec<f32>>>> {
        let _ = keys;
        Err(crate::Error::new(
            crate::ErrorCode::Unsupported,
            format!("table '{table}' cannot be read row by row"),
        ))
    }
}

/// What a table holds, for the admin API.
#[derive(Debug, Clone, PartialEq)]
pub struct SparseTableInfo {
    /// Table name.
    pub name: String,
    /// Elements per row.
    pub dim: usize,
    /// Live rows.
    pub rows: u64,
    /// Bytes allocated by the table.
    pub bytes: u64,
    /// Last applied sequence number per delta source.
    pub sources: Vec<(String, u64)>,
}

/// The outcome of one applied delta.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeltaAck {
    /// False when the sequence number was already applied (a replay; nothing changed).
    pub applied: bool,
    /// Rows written.
    pub rows: u64,
    /// Of those, new rows.
    pub inserted: u64,
    /// Rows removed by tombstones.
    pub removed: u64,
    /// Rows evicted by the memory cap.
    pub evicted: u64,
    /// The source's last applied sequence number after this call.
    pub last_sequence: u64,
    /// `(expected, got)` when the delta skipped sequence numbers and was applied anyway.
    pub gap: Option<(u64, u64)>,
}

/// The state one worker thread runs batches with.
pub trait ModelInstance: Send {
    /// Runs one batch; see [`LoadedModel::execute`].
    fn execute(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>>;
}

/// An instance that calls the shared model directly.
pub struct SharedInstance(pub Arc<dyn LoadedModel>);

impl ModelInstance for SharedInstance {
    fn execute(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        self.0.execute(inputs)
    }
}

/// Whether a model file's dims and a config's dims agree (`-1` on either side matches anything).
pub fn dims_compatible(file: &[i64], config: &[i64]) -> bool {
    file.len() == config.len()
        && file
            .iter()
            .zip(config)
            .all(|(&a, &b)| a == -1 || b == -1 || a == b)
}

/// The served outputs of a model file: the config's `[[output]]` list (each checked against the
/// file by name, datatype and dims) or, when the config lists none, every output of the file.
/// Returns the specs and, for each, its index among the file's outputs. Shared by the backends
/// that read outputs from a model file.
pub fn select_outputs(
    model: &[TensorSpec],
    configured: &[TensorSpec],
) -> std::result::Result<(Vec<TensorSpec>, Vec<usize>), String> {
    if configured.is_empty() {
        return Ok((model.to_vec(), (0..model.len()).collect()));
    }
    let mut specs = Vec::with_capacity(configured.len());
    let mut index = Vec::with_capacity(configured.len());
    for c in configured {
        let (i, m) = model
            .iter()
            .enumerate()
            .find(|(_, m)| m.name == c.name)
            .ok_or_else(|| {
                format!(
                    "config.toml [[output]] '{}' is not an output of the model file",
                    c.name
                )
            })?;
        if m.data_type != c.data_type {
            return Err(format!(
                "output '{}': config.toml says {} but the model file produces {}",
                c.name, c.data_type, m.data_type
            ));
        }
        if !dims_compatible(&m.dims, &c.dims) {
            return Err(format!(
                "output '{}': config.toml dims {:?} do not match the model file's {:?}",
                c.name, c.dims, m.dims
            ));
        }
        specs.push(c.clone());
        index.push(i);
    }
    Ok((specs, index))
}

/// Checks a request's input shape against the served spec (whose dims may have been derived by
/// the engine from the graph, not only read from the file or config). With `batched` the first
/// dimension is the batch and is not compared. The error is an invalid-argument error (HTTP
/// 400) naming the input, the shape given and the model's (batch shown as `-1`).
pub fn check_input_shape(spec: &TensorSpec, shape: &[i64], batched: bool) -> Result<()> {
    let dims = if batched {
        shape.get(1..).unwrap_or_default()
    } else {
        shape
    };
    let ok = (!batched || !shape.is_empty())
        && dims.len() == spec.dims.len()
        && dims
            .iter()
            .zip(&spec.dims)
            .all(|(&g, &want)| want == -1 || g == want);
    if ok {
        return Ok(());
    }
    Err(crate::error::Error::invalid(format!(
        "input '{}': shape {shape:?} does not match the model's {:?}",
        spec.name,
        spec.client_shape(batched)
    )))
}
