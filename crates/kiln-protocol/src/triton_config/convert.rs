//! Triton's `ModelConfig` message into Kiln's [`ModelConfig`]: the model, its tensors and what
//! it is served by; scheduling settings are in [`super::scheduling`].

use super::scheduling;
use crate::inference as pb;
use kiln_core::classification::InputFormat;
use kiln_core::{
    DataType, Error, ModelConfig, Result, TensorSpec, VersionPolicy, PIPELINE_BACKEND,
};
use std::fmt::Display;

/// Triton's platform of ONNX models served by ONNX Runtime.
const ONNX_PLATFORM: &str = "onnxruntime_onnx";
/// Triton's platform of ensembles (Kiln's pipelines).
const ENSEMBLE: &str = "ensemble";
/// The platform (and backend) name of Triton's OpenVINO backend: ONNX and OpenVINO IR models.
const OPENVINO: &str = "openvino";
/// Backends a `config.pbtxt` may name: Triton's ONNX Runtime and OpenVINO backends, and Kiln's
/// pure-Rust ONNX engine.
const BACKENDS: [&str; 3] = ["onnxruntime", "tract", OPENVINO];

/// The error about `field` of `file`.
pub(super) fn refuse(file: &str, field: &str, why: impl Display) -> Error {
    Error::invalid(format!("{file}: {field}: {why}"))
}

/// The error about a setting Kiln does not implement.
pub(super) fn unsupported(file: &str, field: &str, why: &str) -> Error {
    refuse(file, field, format!("not supported by Kiln ({why})"))
}

/// Converts a parsed `config.pbtxt` (named `file` in errors) of the model in directory
/// `model_name`, then checks the result as a `config.toml` is checked. Kiln's defaults fill
/// what the file leaves out.
pub fn to_kiln(c: &pb::ModelConfig, file: &str, model_name: &str) -> Result<ModelConfig> {
    refuse_unimplemented(c, file)?;
    let mut k = ModelConfig::default_for(model_name);
    if !c.name.is_empty() && c.name != model_name {
        return Err(refuse(
            file,
            "name",
            format!(
                "'{}' differs from the directory name '{model_name}'",
                c.name
            ),
        ));
    }
    let ensemble = is_ensemble(c, file)?;
    k.backend = if ensemble {
        Some(PIPELINE_BACKEND.to_string())
    } else {
        backend(c, file)?
    };
    k.max_batch_size = u32::try_from(c.max_batch_size)
        .map_err(|_| refuse(file, "max_batch_size", "must not be negative"))?;
    k.version_policy = version_policy(c.version_policy.as_ref(), file)?;
    k.input = c
        .input
        .iter()
        .enumerate()
        .map(|(i, t)| input(t, &format!("input[{i}]"), file))
        .collect::<Result<_>>()?;
    k.output = c
        .output
        .iter()
        .enumerate()
        .map(|(i, t)| output(t, &format!("output[{i}]"), file))
        .collect::<Result<_>>()?;
    // the classification extension's labels, and the image layout clients read back
    for (i, t) in c.input.iter().enumerate() {
        let format = match t.format {
            0 => continue,
            1 => InputFormat::Nhwc,
            2 => InputFormat::Nchw,
            other => {
                return Err(refuse(
                    file,
                    &format!("input[{i}].format"),
                    format!("{other} is not FORMAT_NONE, FORMAT_NHWC or FORMAT_NCHW"),
                ))
            }
        };
        k.input_format.insert(t.name.clone(), format);
    }
    for t in c.output.iter().filter(|t| !t.label_filename.is_empty()) {
        k.labels.insert(t.name.clone(), t.label_filename.clone());
    }
    if let Some(db) = &c.dynamic_batching {
        k.dynamic_batching = scheduling::dynamic_batching(db, c.max_batch_size, file)?;
    }
    k.instance_group = scheduling::instance_groups(&c.instance_group, file)?;
    if !c.default_model_filename.is_empty() {
        k.default_model_filename = c.default_model_filename.clone();
    }
    k.parameters = c
        .parameters
        .iter()
        .map(|(key, p)| (key.clone(), parameter(&p.string_value)))
        .collect();
    k.model_warmup = scheduling::warmup(&c.model_warmup, file)?;
    k.response_cache.enable = c.response_cache.is_some_and(|r| r.enable);
    if ensemble {
        scheduling::ensemble(c, &mut k, file)?;
    }
    checked(&k, file, model_name)
}

/// A parameter's value as the backends read `[parameters]`: Triton writes every value as a
/// string, so an integer or `true` / `false` becomes that TOML value; anything else stays a
/// string.
fn parameter(v: &str) -> toml::Value {
    if let Ok(i) = v.parse::<i64>() {
        return toml::Value::Integer(i);
    }
    match v {
        "true" => toml::Value::Boolean(true),
        "false" => toml::Value::Boolean(false),
        _ => toml::Value::String(v.to_string()),
    }
}

/// Runs Kiln's own checks of a configuration (those of `config.toml`) on the converted one.
fn checked(k: &ModelConfig, file: &str, model_name: &str) -> Result<ModelConfig> {
    let text = toml::to_string(k).map_err(|e| Error::internal(format!("{file}: {e}")))?;
    ModelConfig::parse(&text, model_name)
        .map_err(|e| Error::invalid(format!("{file}: {}", e.message)))
}

/// Whether the model is an ensemble: `platform: "ensemble"` with `ensemble_scheduling`.
fn is_ensemble(c: &pb::ModelConfig, file: &str) -> Result<bool> {
    match (c.platform == ENSEMBLE, c.ensemble_scheduling.is_some()) {
        (true, true) => Ok(true),
        (false, false) => Ok(false),
        (true, false) => Err(refuse(
            file,
            "ensemble_scheduling",
            "an ensemble (platform \"ensemble\") needs its steps",
        )),
        (false, true) => Err(refuse(
            file,
            "ensemble_scheduling",
            "only an ensemble (platform \"ensemble\") has steps",
        )),
    }
}

/// The Kiln backend of `platform` / `backend`; `None` (the server's default engine for the
/// model file) when neither is given.
fn backend(c: &pb::ModelConfig, file: &str) -> Result<Option<String>> {
    if !c.runtime.is_empty() {
        return Err(unsupported(
            file,
            "runtime",
            "backends are built into Kiln, not loaded from a library",
        ));
    }
    let from_platform = match c.platform.as_str() {
        "" => None,
        ONNX_PLATFORM => Some("onnxruntime"),
        OPENVINO => Some(OPENVINO),
        other => {
            return Err(unsupported(
                file,
                "platform",
                &format!(
                    "'{other}': Kiln serves \"{ONNX_PLATFORM}\", \"{OPENVINO}\" and \"{ENSEMBLE}\" models"
                ),
            ))
        }
    };
    let from_backend = match c.backend.as_str() {
        "" => None,
        b if BACKENDS.contains(&b) => Some(b),
        other => {
            return Err(unsupported(
                file,
                "backend",
                &format!(
                    "'{other}': Kiln serves models with \"onnxruntime\", \"openvino\" or \"tract\""
                ),
            ))
        }
    };
    match (from_platform, from_backend) {
        (Some(p), Some(b)) if p != b => Err(refuse(
            file,
            "backend",
            format!(
                "'{b}' contradicts platform \"{}\" (served by \"{p}\")",
                c.platform
            ),
        )),
        (p, b) => Ok(b.or(p).map(str::to_string)),
    }
}

/// Settings of Triton's `ModelConfig` that Kiln does not implement: refused when set.
fn refuse_unimplemented(c: &pb::ModelConfig, file: &str) -> Result<()> {
    let set: [(&str, bool, &str); 9] = [
        (
            "sequence_batching",
            c.sequence_batching.is_some(),
            "stateful sequence models are not served",
        ),
        (
            "model_transaction_policy.decoupled",
            c.model_transaction_policy.is_some_and(|p| p.decoupled),
            "every request gets exactly one response",
        ),
        (
            "batch_input",
            !c.batch_input.is_empty(),
            "the batcher computes no inputs",
        ),
        (
            "batch_output",
            !c.batch_output.is_empty(),
            "the batcher scatters no outputs",
        ),
        (
            "cc_model_filenames",
            !c.cc_model_filenames.is_empty(),
            "no GPU: use default_model_filename",
        ),
        (
            "metric_tags",
            !c.metric_tags.is_empty(),
            "metrics carry the model and version labels only",
        ),
        (
            "model_operations",
            c.model_operations.is_some(),
            "custom operation libraries are not loaded",
        ),
        (
            "model_repository_agents",
            c.model_repository_agents.is_some(),
            "repository agents are not run",
        ),
        (
            "model_metrics",
            c.model_metrics.is_some(),
            "per-model metric settings are not taken",
        ),
    ];
    if let Some((field, _, why)) = set.iter().find(|(_, is_set, _)| *is_set) {
        return Err(unsupported(file, field, why));
    }
    if let Some(o) = &c.optimization {
        optimization(o, file)?;
    }
    Ok(())
}

/// Accepts an `optimization` whose settings change nothing on a CPU (pinned host buffers,
/// which only stage GPU copies, and defaults); refuses the others by name.
fn optimization(o: &pb::ModelOptimizationPolicy, file: &str) -> Result<()> {
    let set: [(&str, bool, &str); 6] = [
        (
            "optimization.execution_accelerators",
            o.execution_accelerators.as_ref().is_some_and(|a| {
                !a.gpu_execution_accelerator.is_empty() || !a.cpu_execution_accelerator.is_empty()
            }),
            "execution accelerators are chosen with the onnxruntime backend's parameters",
        ),
        (
            "optimization.cuda",
            o.cuda.is_some(),
            "no GPU in this build",
        ),
        (
            "optimization.graph",
            o.graph.is_some_and(|g| g.level != 0),
            "graph optimization levels are not set per model",
        ),
        (
            "optimization.priority",
            o.priority != 0,
            "models are not prioritised against each other",
        ),
        (
            "optimization.gather_kernel_buffer_threshold",
            o.gather_kernel_buffer_threshold != 0,
            "no GPU gather kernel",
        ),
        (
            "optimization.eager_batching",
            o.eager_batching,
            "the batcher's policy is set by dynamic_batching",
        ),
    ];
    match set.iter().find(|(_, is_set, _)| *is_set) {
        Some((field, _, why)) => Err(unsupported(file, field, why)),
        None => Ok(()),
    }
}

fn version_policy(p: Option<&pb::ModelVersionPolicy>, file: &str) -> Result<VersionPolicy> {
    use pb::model_version_policy::PolicyChoice;
    let none = VersionPolicy {
        latest: None,
        all: None,
        specific: None,
    };
    Ok(match p.and_then(|p| p.policy_choice.as_ref()) {
        None => VersionPolicy::default(),
        Some(PolicyChoice::Latest(l)) => {
            if l.num_versions == 0 {
                return Err(refuse(
                    file,
                    "version_policy.latest.num_versions",
                    "must be at least 1",
                ));
            }
            VersionPolicy {
                latest: Some(l.num_versions),
                ..none
            }
        }
        Some(PolicyChoice::All(_)) => VersionPolicy {
            all: Some(true),
            ..none
        },
        Some(PolicyChoice::Specific(s)) => VersionPolicy {
            specific: Some(
                s.versions
                    .iter()
                    .map(|&v| u64::try_from(v))
                    .collect::<std::result::Result<_, _>>()
                    .map_err(|_| {
                        refuse(
                            file,
                            "version_policy.specific.versions",
                            format!("{:?} has a negative version", s.versions),
                        )
                    })?,
            ),
            ..none
        },
    })
}

/// Kiln's data type of Triton's `DataType` enum value.
pub(super) fn data_type(v: i32, field: &str, file: &str) -> Result<DataType> {
    if let Some(d) = DataType::ALL
        .into_iter()
        .find(|d| d.triton_config_enum() == v)
    {
        return Ok(d);
    }
    Err(match pb::DataType::try_from(v) {
        Ok(pb::DataType::TypeInvalid) => refuse(file, field, "must be set (TYPE_FP32, ...)"),
        Ok(t) => unsupported(
            file,
            field,
            &format!("{} tensors are not served", t.as_str_name()),
        ),
        Err(_) => refuse(file, field, format!("{v} is not a data type")),
    })
}

/// A `reshape` is accepted only when it changes nothing (the shape equals `dims`).
fn reshape(r: Option<&pb::ModelTensorReshape>, dims: &[i64], at: &str, file: &str) -> Result<()> {
    match r {
        Some(r) if r.shape != dims => Err(unsupported(
            file,
            &format!("{at}.reshape"),
            &format!(
                "reshaping {dims:?} to {:?}: give the shape the model takes in dims",
                r.shape
            ),
        )),
        _ => Ok(()),
    }
}

fn input(t: &pb::ModelInput, at: &str, file: &str) -> Result<TensorSpec> {
    let flags: [(&str, bool, &str); 3] = [
        (
            "is_shape_tensor",
            t.is_shape_tensor,
            "shape tensors are TensorRT's",
        ),
        (
            "optional",
            t.optional,
            "every input of a request is required",
        ),
        (
            "is_non_linear_format_io",
            t.is_non_linear_format_io,
            "tensors are linear",
        ),
    ];
    if let Some((field, _, why)) = flags.iter().find(|(_, set, _)| *set) {
        return Err(unsupported(file, &format!("{at}.{field}"), why));
    }
    reshape(t.reshape.as_ref(), &t.dims, at, file)?;
    Ok(TensorSpec {
        name: t.name.clone(),
        data_type: data_type(t.data_type, &format!("{at}.data_type"), file)?,
        dims: t.dims.clone(),
        allow_ragged_batch: t.allow_ragged_batch,
    })
}

fn output(t: &pb::ModelOutput, at: &str, file: &str) -> Result<TensorSpec> {
    let flags: [(&str, bool, &str); 2] = [
        (
            "is_shape_tensor",
            t.is_shape_tensor,
            "shape tensors are TensorRT's",
        ),
        (
            "is_non_linear_format_io",
            t.is_non_linear_format_io,
            "tensors are linear",
        ),
    ];
    if let Some((field, _, why)) = flags.iter().find(|(_, set, _)| *set) {
        return Err(unsupported(file, &format!("{at}.{field}"), why));
    }
    reshape(t.reshape.as_ref(), &t.dims, at, file)?;
    Ok(TensorSpec {
        name: t.name.clone(),
        data_type: data_type(t.data_type, &format!("{at}.data_type"), file)?,
        dims: t.dims.clone(),
        allow_ragged_batch: false,
    })
}
