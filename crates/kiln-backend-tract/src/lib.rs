//! The tract backend: pure-Rust ONNX inference on the CPU, Kiln's embedded default.
//!
//! A model is parsed once, its inputs pinned to the configured types with one symbolic batch
//! dimension shared by every input, then optimized once; the resulting plan serves every batch
//! size and is shared by all instances of the version. Each instance keeps its own tract
//! execution state so that scratch buffers are reused from one batch to the next.
//!
//! tract runs one batch on the calling thread: `instance_group.threads` has no effect here
//! (tract's multithreaded matmul gave no gain on the small MLPs it is meant for); scale with
//! `instance_group.count` instead.

mod convert;
mod derive;

use convert::{from_tract, kiln_dtype, to_tract, tract_dtype};
use kiln_core::backend::{Backend, LoadedModel, ModelInstance, ModelIo};
use kiln_core::config::{ModelConfig, TensorSpec};
use kiln_core::gather::{check_index_bounds, IndexBound};
use kiln_core::{Error, Result, Tensor};
use std::path::Path;
use std::sync::Arc;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

/// Loads ONNX models with tract.
#[derive(Debug, Default, Clone, Copy)]
pub struct TractBackend;

impl Backend for TractBackend {
    fn name(&self) -> &'static str {
        "tract"
    }

    fn load(&self, dir: &Path, config: &ModelConfig) -> Result<Arc<dyn LoadedModel>> {
        let path = dir.join(&config.default_model_filename);
        if !path.is_file() {
            return Err(Error::invalid(format!(
                "model file {} not found",
                path.display()
            )));
        }
        let fail = |stage: &str, e: TractError| {
            Error::invalid(format!("{}: {stage}: {e:#}", path.display()))
        };
        let mut model = tract_onnx::onnx()
            .model_for_path(&path)
            .map_err(|e| fail("cannot parse onnx", e))?;
        let batched = config.max_batch_size > 0;
        let mut inputs = pin_inputs(&mut model, config, batched).map_err(|e| match e {
            Pin::Config(m) => Error::invalid(format!("{}: {m}", path.display())),
            Pin::Tract(e) => fail("cannot set input facts", e),
        })?;
        pin_derived_dims(&mut model, &mut inputs, batched)
            .map_err(|e| fail("cannot derive the input dims", e))?;
        let output_names: Vec<String> = model
            .output_outlets()
            .map_err(|e| fail("outputs", e))?
            .iter()
            .map(|o| {
                model
                    .outlet_label(*o)
                    .map(str::to_string)
                    .unwrap_or_else(|| model.node(o.node).name.clone())
            })
            .collect();
        let typed = model
            .into_optimized()
            .map_err(|e| fail("cannot type and optimize the graph", e))?;
        let mut model_outputs = Vec::with_capacity(output_names.len());
        for (i, name) in output_names.iter().enumerate() {
            let fact = typed.output_fact(i).map_err(|e| fail("outputs", e))?;
            let dtype = kiln_dtype(fact.datum_type).ok_or_else(|| {
                Error::invalid(format!(
                    "{}: output '{name}' has unsupported type {:?}",
                    path.display(),
                    fact.datum_type
                ))
            })?;
            let mut dims: Vec<i64> = fact
                .shape
                .iter()
                .map(|d| d.as_i64().unwrap_or(-1))
                .collect();
            if batched {
                if dims.is_empty() {
                    return Err(Error::invalid(format!(
                        "{}: output '{name}' is a scalar but max_batch_size > 0 needs a batch dimension",
                        path.display()
                    )));
                }
                dims.remove(0);
            }
            model_outputs.push(TensorSpec {
                name: name.clone(),
                data_type: dtype,
                dims,
                allow_ragged_batch: false,
            });
        }
        let (outputs, output_index) =
            kiln_core::backend::select_outputs(&model_outputs, &config.output)
                .map_err(|m| Error::invalid(format!("{}: {m}", path.display())))?;
        let plan = typed
            .into_runnable()
            .map_err(|e| fail("cannot build the execution plan", e))?;
        tracing::debug!(path = %path.display(), "tract model loaded");
        // tract panics on an index outside its table, so every batch is checked against these
        // bounds before it runs. The file was just loaded, so the read fails only for a file
        // too large to analyse (or replaced meanwhile): such a model serves without the check,
        // and an index outside a table fails its batch through the worker's panic guard.
        let index_bounds = kiln_onnx::GraphFacts::read(&path)
            .map(|g| g.index_bounds())
            .unwrap_or_else(|why| {
                tracing::warn!(path = %path.display(), %why,
                    "gather inputs not analysed: indices are not checked before compute");
                Vec::new()
            });
        Ok(Arc::new(TractModel(Arc::new(Inner {
            index_bounds,
            plan,
            io: ModelIo { inputs, outputs },
            output_index,
        }))))
    }
}

/// Replaces the free input dims that the graph fixes with their values ([`derive`]), in the
/// model's input facts and in the served specs.
fn pin_derived_dims(
    model: &mut InferenceModel,
    specs: &mut [TensorSpec],
    batched: bool,
) -> TractResult<()> {
    let batch = model.symbols.sym("N");
    let pinned = derive::pin_graph_dims(model, &batch)?;
    for (spec, pins) in specs.iter_mut().zip(pinned) {
        for (axis, value) in pins {
            let Some(j) = axis.checked_sub(usize::from(batched)) else {
                continue;
            };
            if let Some(d) = spec.dims.get_mut(j) {
                if *d < 0 {
                    tracing::debug!(input = %spec.name, axis = j, value, "input dim fixed by the graph");
                    *d = value;
                }
            }
        }
    }
    Ok(())
}

enum Pin {
    Config(String),
    Tract(TractError),
}

/// Sets every input's type and shape from the config (or the file), with the batch dimension as
/// one symbol shared by all inputs, and returns the resolved input specs.
fn pin_inputs(
    model: &mut InferenceModel,
    config: &ModelConfig,
    batched: bool,
) -> Result<Vec<TensorSpec>, Pin> {
    let n_inputs = model.input_outlets().map_err(Pin::Tract)?.len();
    let batch = model.symbols.sym("N");
    let mut specs = Vec::with_capacity(n_inputs);
    let mut seen = 0;
    for i in 0..n_inputs {
        let outlet = model.input_outlets().map_err(Pin::Tract)?[i];
        let name = model.node(outlet.node).name.clone();
        let fact = model.input_fact(i).map_err(Pin::Tract)?.clone();
        let configured = config.input.iter().find(|s| s.name == name);
        if configured.is_some() {
            seen += 1;
        } else if !config.input.is_empty() {
            return Err(Pin::Config(format!(
                "input '{name}' of the model file is missing from config.toml [[input]]"
            )));
        }
        let dtype = match configured {
            Some(s) => s.data_type,
            None => {
                let dt = fact.datum_type.concretize().ok_or_else(|| {
                    Pin::Config(format!(
                        "input '{name}': the model file gives no type; set it in config.toml"
                    ))
                })?;
                kiln_dtype(dt).ok_or_else(|| {
                    Pin::Config(format!("input '{name}': unsupported type {dt:?}"))
                })?
            }
        };
        let file_dims: Vec<Option<TDim>> = match fact.shape.concretize() {
            Some(d) => d.into_iter().map(Some).collect(),
            None => {
                let dims: Vec<Option<TDim>> = fact.shape.dims().map(|d| d.concretize()).collect();
                if !fact.shape.is_open() {
                    dims
                } else {
                    match configured {
                        Some(_) => Vec::new(),
                        None => {
                            return Err(Pin::Config(format!(
                            "input '{name}': the model file gives no rank; set dims in config.toml"
                        )))
                        }
                    }
                }
            }
        };
        let own: Vec<Option<TDim>> = match configured {
            Some(s) => s
                .dims
                .iter()
                .map(|&d| (d >= 0).then(|| TDim::from(d)))
                .collect(),
            None => {
                let skip = usize::from(batched).min(file_dims.len());
                file_dims[skip..].to_vec()
            }
        };
        if batched && configured.is_none() && file_dims.is_empty() {
            return Err(Pin::Config(format!(
                "input '{name}' is a scalar but max_batch_size > 0 needs a batch dimension"
            )));
        }
        let mut tract_dims: Vec<TDim> = Vec::with_capacity(own.len() + 1);
        if batched {
            tract_dims.push(batch.clone().into());
        }
        let mut spec_dims = Vec::with_capacity(own.len());
        for (j, d) in own.into_iter().enumerate() {
            match d {
                Some(d) if d.as_i64().is_some() => {
                    spec_dims.push(d.as_i64().unwrap());
                    tract_dims.push(d);
                }
                Some(sym) => {
                    spec_dims.push(-1);
                    tract_dims.push(sym);
                }
                None => {
                    spec_dims.push(-1);
                    tract_dims.push(model.symbols.sym(&format!("{name}_{j}")).into());
                }
            }
        }
        let dt = tract_dtype(dtype);
        model
            .set_input_fact(i, InferenceFact::dt_shape(dt, tract_dims))
            .map_err(Pin::Tract)?;
        specs.push(TensorSpec {
            name,
            data_type: dtype,
            dims: spec_dims,
            allow_ragged_batch: false,
        });
    }
    if seen != config.input.len() {
        let unknown: Vec<&str> = config
            .input
            .iter()
            .filter(|s| !specs.iter().any(|m| m.name == s.name))
            .map(|s| s.name.as_str())
            .collect();
        return Err(Pin::Config(format!(
            "config.toml [[input]] names {unknown:?}, which the model file does not have"
        )));
    }
    Ok(specs)
}

struct Inner {
    plan: Arc<TypedSimplePlan>,
    io: ModelIo,
    output_index: Vec<usize>,
    /// Inputs that index a table through a Gather, checked before every run: tract panics on
    /// an index outside the table.
    index_bounds: Vec<IndexBound>,
}

impl Inner {
    fn run(&self, state: &mut TypedSimpleState, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        check_index_bounds(&self.index_bounds, inputs)?;
        let values = inputs
            .iter()
            .map(|t| to_tract(t).map(TValue::from))
            .collect::<Result<TVec<_>>>()?;
        let outputs = state
            .run(values)
            .map_err(|e| Error::internal(format!("tract execution failed: {e:#}")))?;
        self.output_index
            .iter()
            .zip(&self.io.outputs)
            .map(|(&i, spec)| from_tract(&spec.name, &outputs[i]))
            .collect()
    }
}

/// A loaded tract model: the optimized plan shared by every instance.
pub struct TractModel(Arc<Inner>);

impl LoadedModel for TractModel {
    fn io(&self) -> &ModelIo {
        &self.0.io
    }

    fn check_inputs(&self, inputs: &[Tensor]) -> Result<()> {
        check_index_bounds(&self.0.index_bounds, inputs)
    }

    fn execute(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        let mut state = self
            .0
            .plan
            .spawn()
            .map_err(|e| Error::internal(format!("tract state: {e:#}")))?;
        self.0.run(&mut state, inputs)
    }

    fn create_instance(&self) -> Option<Result<Box<dyn ModelInstance>>> {
        Some(
            self.0
                .plan
                .spawn()
                .map(|state| {
                    Box::new(TractInstance {
                        inner: self.0.clone(),
                        state,
                    }) as Box<dyn ModelInstance>
                })
                .map_err(|e| Error::internal(format!("tract state: {e:#}"))),
        )
    }

    fn describe(&self) -> Vec<(String, String)> {
        vec![("engine".into(), "tract".into())]
    }
}

/// One worker's tract state, reused from batch to batch.
struct TractInstance {
    inner: Arc<Inner>,
    state: TypedSimpleState,
}

impl ModelInstance for TractInstance {
    fn execute(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        self.inner.run(&mut self.state, inputs)
    }
}
