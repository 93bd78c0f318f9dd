//! The OpenVINO backend: ONNX models (`model.onnx`) and OpenVINO IR (`model.xml` with its
//! `model.bin`) on OpenVINO's CPU plugin, or the GPU and AUTO devices where the library has them.
//!
//! The OpenVINO C library is loaded at run time (the `openvino` crate's `runtime-linking`):
//! nothing is linked or downloaded at build time, and a binary without the library still serves
//! its other models; only loading a model that asks for this backend fails, with a message
//! saying how to get the library ([`library`] describes where it is looked for).
//!
//! Per-model settings live in the `[parameters]` table of `config.toml` ([`settings`]). Inputs
//! and outputs come from the model file when the config omits them and are checked against it
//! when given; the batch dimension is the model's dynamic first dimension. For ONNX files the
//! same load-time analysis as the ONNX Runtime backend applies (input dims the weights pin,
//! `Gather` indices checked against the table), so both serve the same dims and refuse the
//! same requests; IR files carry no ONNX graph, and OpenVINO checks their shapes alone.

mod convert;
pub mod library;
mod model;
pub mod settings;

use crate::convert::kiln_dtype;
use crate::library::{LibraryError, Runtime, Source};
use crate::model::{OvModel, Shared};
use crate::settings::OvSettings;
use kiln_core::backend::{Backend, LoadedModel};
use kiln_core::{DataType, Error, ModelConfig, Result};
use kiln_onnx::{pin_derived_dims, resolve, FileTensor, GraphFacts};
use openvino::{Core, DeviceType, Model, Node, PropertyKey, RwPropertyKey};
use parking_lot::Mutex;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Devices that stand for others and are not listed by `AVAILABLE_DEVICES`.
const VIRTUAL_DEVICES: [&str; 4] = ["AUTO", "MULTI", "HETERO", "BATCH"];

/// Loads ONNX and IR models with OpenVINO. Cheap to create: the library is loaded on first use.
#[derive(Debug, Clone, Default)]
pub struct OpenVinoBackend {
    /// The library the caller gave and where it came from.
    library: Option<(PathBuf, Source)>,
}

impl OpenVinoBackend {
    /// A backend that loads the library at `library` (`--openvino-library`); without one,
    /// loading a model fails with a message saying how to provide it.
    pub fn new(library: Option<PathBuf>) -> Self {
        OpenVinoBackend {
            library: library.map(|p| (p, Source::Explicit)),
        }
    }

    /// A backend that loads the library at `path`, which the caller found as `how` says (e.g.
    /// "the openvino package of the Python that was asked"; the phrase appears in messages).
    pub fn found(path: PathBuf, how: impl Into<String>) -> Self {
        OpenVinoBackend {
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
            .map(|rt| rt.path)
            .map_err(|e| e.with_hint())
    }

    /// Whether the library can be loaded; see [`OpenVinoBackend::probe`].
    pub fn is_available(&self) -> bool {
        self.probe().is_ok()
    }
}

/// The model file of `dir`: `default_model_filename`, or `model.xml` when that is left at its
/// default `model.onnx` and only an IR file is there (Triton's OpenVINO backend's name).
fn model_file(dir: &Path, config: &ModelConfig) -> Result<PathBuf> {
    let path = dir.join(&config.default_model_filename);
    if path.is_file() {
        return Ok(path);
    }
    let xml = dir.join("model.xml");
    if config.default_model_filename == "model.onnx" && xml.is_file() {
        return Ok(xml);
    }
    Err(Error::invalid(format!(
        "model file {} not found",
        path.display()
    )))
}

/// `message` on one line: OpenVINO's messages span several, with trailing blank lines.
pub(crate) fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Whether `path` is OpenVINO IR (read with its `.bin` weights) rather than a file a frontend
/// reads alone (ONNX).
fn is_ir(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("xml"))
}

/// An input or output as the model declares it.
fn file_tensor(node: &Node) -> std::result::Result<FileTensor, String> {
    let name = node.get_name().map_err(|e| format!("tensor name: {e}"))?;
    let ty = node
        .get_element_type()
        .map_err(|e| format!("'{name}': {e}"))?;
    let shape = node
        .get_partial_shape()
        .map_err(|e| format!("'{name}': {e}"))?;
    let rank = shape.get_rank();
    if rank.get_min() != rank.get_max() || rank.get_max() < 0 {
        return Err(format!(
            "'{name}' has a dynamic rank; Kiln needs the rank of every input and output"
        ));
    }
    let dims = shape
        .get_dimensions()
        .iter()
        .map(|d| match d.is_dynamic() {
            true => -1,
            false => d.get_min(),
        })
        .collect();
    Ok(FileTensor {
        name,
        dtype: kiln_dtype(ty).ok_or_else(|| format!("tensor of {ty:?}")),
        dims,
    })
}

/// The model's inputs and outputs as the file declares them.
fn file_io(model: &Model) -> std::result::Result<(Vec<FileTensor>, Vec<FileTensor>), String> {
    let n_in = model.get_inputs_len().map_err(|e| e.to_string())?;
    let n_out = model.get_outputs_len().map_err(|e| e.to_string())?;
    let inputs = (0..n_in)
        .map(|i| {
            let node = model.get_input_by_index(i).map_err(|e| e.to_string())?;
            file_tensor(&node)
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let outputs = (0..n_out)
        .map(|i| {
            let node = model.get_output_by_index(i).map_err(|e| e.to_string())?;
            file_tensor(&node)
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok((inputs, outputs))
}

/// Checks the device against those the library reports, then sets the model's properties on it.
fn configure_device(core: &mut Core, settings: &OvSettings) -> std::result::Result<(), String> {
    let family = settings.device_family();
    if !VIRTUAL_DEVICES.contains(&family) {
        let available: Vec<String> = core
            .available_devices()
            .map_err(|e| format!("cannot list devices: {e}"))?
            .iter()
            .map(|d| d.as_ref().to_string())
            .collect();
        let present = available
            .iter()
            .any(|d| d == &settings.device || d.split('.').next() == Some(family));
        if !present {
            return Err(format!(
                "parameters.device: '{}' is not available (the library reports {available:?})",
                settings.device
            ));
        }
    }
    // a virtual device takes the performance hint; the rest goes to the CPU plugin it may pick
    let virtual_device = VIRTUAL_DEVICES.contains(&family);
    let device = DeviceType::from(settings.device.as_str());
    let target = match virtual_device {
        true => DeviceType::CPU,
        false => DeviceType::from(settings.device.as_str()),
    };
    let mut set = |on: &DeviceType, key: RwPropertyKey, name: &str, value: String| {
        core.set_property(on, &key, &value).map_err(|e| {
            format!(
                "parameters.{name}: device '{}' refuses {value}: {e}",
                on.as_ref()
            )
        })
    };
    set(
        &device,
        RwPropertyKey::HintPerformanceMode,
        "performance_hint",
        settings.hint.as_ov().to_string(),
    )?;
    set(
        &target,
        RwPropertyKey::HintInferencePrecision,
        "inference_precision",
        settings.precision.as_ov().to_string(),
    )?;
    if let Some(n) = settings.num_streams {
        set(
            &target,
            RwPropertyKey::NumStreams,
            "num_streams",
            n.to_string(),
        )?;
    }
    if family == "CPU" || virtual_device {
        set(
            &target,
            RwPropertyKey::InferenceNumThreads,
            "threads",
            (settings.threads * settings.num_streams.unwrap_or(1)).to_string(),
        )?;
    }
    Ok(())
}

impl Backend for OpenVinoBackend {
    fn name(&self) -> &'static str {
        "openvino"
    }

    fn load(&self, dir: &Path, config: &ModelConfig) -> Result<Arc<dyn LoadedModel>> {
        let settings = OvSettings::from_config(config)?;
        let path = model_file(dir, config)?;
        let runtime: Runtime = library::runtime(self.given()).map_err(|e: LibraryError| {
            Error::unavailable(format!("{}: {}", path.display(), e.with_hint()))
        })?;
        let at = |m: String| Error::invalid(format!("{}: {}", path.display(), one_line(&m)));
        let mut core = Core::new().map_err(|e| Error::internal(format!("openvino core: {e:?}")))?;
        let file = path.to_string_lossy();
        let ir = is_ir(&path);
        let model = if ir {
            let weights = path.with_extension("bin");
            if !weights.is_file() {
                return Err(at(format!(
                    "the IR weights {} are missing",
                    weights.display()
                )));
            }
            core.read_model_from_file(&file, &weights.to_string_lossy())
        } else {
            core.read_model_from_file(&file, "")
        }
        .map_err(|e| at(format!("openvino cannot read the model: {e}")))?;

        let (mut inputs, outputs) = file_io(&model).map_err(at)?;
        let facts = (!ir)
            .then(|| {
                GraphFacts::read(&path)
                    .inspect_err(|why| {
                        tracing::debug!(path = %path.display(), %why,
                            "graph not analysed: input dims and gather indices are left to openvino")
                    })
                    .ok()
            })
            .flatten();
        let batched = config.max_batch_size > 0;
        pin_derived_dims(facts.as_ref(), &mut inputs, batched);
        let (io, output_index) = resolve(&inputs, &outputs, config).map_err(at)?;
        let mut tensors = io.inputs.iter().chain(&io.outputs);
        if let Some(t) = tensors.find(|t| t.data_type == DataType::Bytes) {
            return Err(at(format!(
                "'{}' is a BYTES (string) tensor, which the openvino backend does not serve: \
                 OpenVINO's CPU plugin frees the buffers of string tensors it passes through \
                 (the process aborts); serve this model with backend = \"onnxruntime\" or \"tract\"",
                t.name
            )));
        }

        configure_device(&mut core, &settings).map_err(at)?;
        let device = DeviceType::from(settings.device.as_str());
        let mut compiled = core.compile_model(&model, device).map_err(|e| {
            at(format!(
                "openvino cannot compile the model for {}: {e}",
                settings.device
            ))
        })?;
        let read = |key: RwPropertyKey| {
            compiled
                .get_property(&PropertyKey::Rw(key))
                .map(|v| v.into_owned())
                .unwrap_or_else(|_| "unknown".to_string())
        };
        let describe = vec![
            ("engine".to_string(), "openvino".to_string()),
            ("device".to_string(), settings.device.clone()),
            (
                "model_format".to_string(),
                if ir { "ir" } else { "onnx" }.to_string(),
            ),
            (
                "inference_precision".to_string(),
                read(RwPropertyKey::HintInferencePrecision),
            ),
            (
                "performance_hint".to_string(),
                read(RwPropertyKey::HintPerformanceMode),
            ),
            ("num_streams".to_string(), read(RwPropertyKey::NumStreams)),
            (
                "threads".to_string(),
                read(RwPropertyKey::InferenceNumThreads),
            ),
            (
                "openvino_library".to_string(),
                runtime.path.display().to_string(),
            ),
            ("openvino_version".to_string(), runtime.version.clone()),
        ];
        let request = compiled
            .create_infer_request()
            .map_err(|e| at(format!("openvino cannot create an inference request: {e}")))?;
        tracing::debug!(path = %path.display(), device = %settings.device, "openvino model loaded");
        let shared = Shared {
            io,
            output_index,
            index_bounds: facts
                .as_ref()
                .map(GraphFacts::index_bounds)
                .unwrap_or_default(),
            batched,
            compiled: Mutex::new(compiled),
            _core: Mutex::new(core),
            path,
            describe,
        };
        Ok(Arc::new(OvModel::new(shared, request)))
    }
}
