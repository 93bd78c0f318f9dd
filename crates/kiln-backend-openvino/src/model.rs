//! A model compiled by OpenVINO, and the inference requests that run it.
//!
//! One compiled model serves every instance; each scheduler instance owns an inference request
//! of its own ([`LoadedModel::create_instance`]), and the request created at load time (which the
//! warm-up runs through) serves [`LoadedModel::execute`].

use crate::convert::{check_int64_range, from_ov, to_ov};
use crate::one_line;
use kiln_core::backend::{check_input_shape, LoadedModel, ModelInstance, ModelIo};
use kiln_core::gather::{check_index_bounds, IndexBound};
use kiln_core::{Error, Result, Tensor};
use openvino::{CompiledModel, Core, InferRequest, InferenceError, InferenceErrorKind};
use parking_lot::Mutex;
use std::path::PathBuf;
use std::sync::Arc;

/// State shared by the model and its instances.
pub struct Shared {
    /// Served inputs and outputs.
    pub io: ModelIo,
    /// For each served output, its index among the compiled model's outputs.
    pub output_index: Vec<usize>,
    /// Inputs that index a table through a Gather, checked before every run.
    pub index_bounds: Vec<IndexBound>,
    /// Whether the first dimension is the batch dimension.
    pub batched: bool,
    /// The compiled model; OpenVINO's handle is not `Sync`, and only creating a request needs it.
    pub compiled: Mutex<CompiledModel>,
    /// The core that compiled the model, kept for as long as the model (its device plugins).
    pub _core: Mutex<Core>,
    /// The model file, for messages.
    pub path: PathBuf,
    /// Facts for the model's metadata.
    pub describe: Vec<(String, String)>,
}

impl Shared {
    /// The checks of one request's inputs before they reach the engine.
    fn check(&self, inputs: &[Tensor]) -> Result<()> {
        check_index_bounds(&self.index_bounds, inputs)?;
        inputs.iter().try_for_each(check_int64_range)
    }

    fn run(&self, request: &mut InferRequest, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        self.check(inputs)?;
        if inputs.len() != self.io.inputs.len() {
            return Err(Error::invalid(format!(
                "expected {} inputs, got {}",
                self.io.inputs.len(),
                inputs.len()
            )));
        }
        for (i, (spec, t)) in self.io.inputs.iter().zip(inputs).enumerate() {
            // the served dims (those the graph pins included) bound what reaches the engine
            check_input_shape(spec, &t.shape, self.batched)?;
            let tensor = to_ov(t)?;
            request
                .set_input_tensor_by_index(i, &tensor)
                .map_err(|e| Error::internal(format!("input '{}': {e}", t.name)))?;
        }
        request.infer().map_err(|e| run_error(&e))?;
        self.output_index
            .iter()
            .zip(&self.io.outputs)
            .map(|(&i, spec)| {
                let t = request
                    .get_output_tensor_by_index(i)
                    .map_err(|e| Error::internal(format!("output '{}': {e}", spec.name)))?;
                from_ov(&spec.name, &t, !self.batched && spec.dims.is_empty())
            })
            .collect()
    }

    fn new_request(&self) -> Result<InferRequest> {
        self.compiled.lock().create_infer_request().map_err(|e| {
            Error::internal(format!(
                "{}: cannot create another openvino inference request: {e}",
                self.path.display()
            ))
        })
    }
}

/// The error of a failed run: 400 where OpenVINO says the request's data is at fault (a shape
/// its kernels cannot take, an index out of bounds), else 500.
fn run_error(e: &InferenceError) -> Error {
    let message = e.message.clone().unwrap_or_default();
    let lower = message.to_ascii_lowercase();
    let data = matches!(
        e.kind,
        InferenceErrorKind::OutOfBounds | InferenceErrorKind::ParameterMismatch
    ) || [
        "out of bounds",
        "out of range",
        "incompatible",
        "shape inference",
        "dimension mismatch",
    ]
    .iter()
    .any(|m| lower.contains(m));
    if data {
        Error::invalid(format!(
            "openvino refused the input data: {}",
            one_line(&e.to_string())
        ))
    } else {
        Error::internal(format!(
            "openvino execution failed: {}",
            one_line(&e.to_string())
        ))
    }
}

/// A model compiled by OpenVINO.
pub struct OvModel {
    shared: Arc<Shared>,
    /// The request created at load time, until an instance takes it; `execute` runs on it (and
    /// creates another if it was taken).
    spare: Mutex<Option<InferRequest>>,
}

impl OvModel {
    /// Wraps the compiled model and its first request.
    pub fn new(shared: Shared, request: InferRequest) -> Self {
        OvModel {
            shared: Arc::new(shared),
            spare: Mutex::new(Some(request)),
        }
    }
}

impl LoadedModel for OvModel {
    fn io(&self) -> &ModelIo {
        &self.shared.io
    }

    fn check_inputs(&self, inputs: &[Tensor]) -> Result<()> {
        self.shared.check(inputs)
    }

    fn execute(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        let mut spare = self.spare.lock();
        let request = match spare.as_mut() {
            Some(r) => r,
            None => spare.insert(self.shared.new_request()?),
        };
        self.shared.run(request, inputs)
    }

    fn create_instance(&self) -> Option<Result<Box<dyn ModelInstance>>> {
        let request = match self.spare.lock().take() {
            Some(r) => Ok(r),
            None => self.shared.new_request(),
        };
        Some(request.map(|request| {
            Box::new(OvInstance {
                shared: self.shared.clone(),
                request,
            }) as Box<dyn ModelInstance>
        }))
    }

    fn describe(&self) -> Vec<(String, String)> {
        self.shared.describe.clone()
    }
}

/// One worker's own inference request.
struct OvInstance {
    shared: Arc<Shared>,
    request: InferRequest,
}

impl ModelInstance for OvInstance {
    fn execute(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        self.shared.run(&mut self.request, inputs)
    }
}
