//! Model configuration: `<repo>/<model>/config.toml`, read with `deny_unknown_fields` so that a
//! typo is an error naming the file and field rather than a silently ignored setting.

pub use crate::classification::InputFormat;
use crate::dtype::DataType;
use crate::error::{Error, Result};
pub use crate::warmup::{WarmupData, WarmupInput, WarmupSample};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// One model's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Model name; defaults to the directory name. If set it must equal the directory name.
    #[serde(default)]
    pub name: Option<String>,
    /// Backend that serves the model (`tract`, `onnxruntime`, ...); `None` picks the server's
    /// default for the model file.
    #[serde(default)]
    pub backend: Option<String>,
    /// File inside each version directory; defaults to `model.onnx`.
    #[serde(default = "default_model_filename")]
    pub default_model_filename: String,
    /// Largest batch the scheduler forms. `0` disables batching: shapes are then full shapes
    /// and each request runs alone. With `> 0` the first dimension of every input and output is
    /// the batch dimension and `dims` leave it out.
    #[serde(default)]
    pub max_batch_size: u32,
    /// Which versions of the model are served.
    #[serde(default)]
    pub version_policy: VersionPolicy,
    /// Inputs; read from the model file when empty.
    #[serde(default)]
    pub input: Vec<TensorSpec>,
    /// Outputs; read from the model file when empty.
    #[serde(default)]
    pub output: Vec<TensorSpec>,
    /// Scheduler settings.
    #[serde(default)]
    pub dynamic_batching: DynamicBatching,
    /// Worker threads per version and the threads each may use for compute.
    #[serde(default)]
    pub instance_group: InstanceGroup,
    /// Run a batch through each new version before it takes traffic: the `[[model_warmup]]`
    /// samples when given, else one zero-filled row shaped by the model's inputs.
    #[serde(default = "yes")]
    pub warmup: bool,
    /// Explicit warm-up samples, `[[model_warmup]]` as in Triton; see [`crate::warmup`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub model_warmup: Vec<WarmupSample>,
    /// Refuse requests whose floating-point inputs hold NaN or an infinity (400 naming the
    /// input and the first such element) instead of computing with them.
    #[serde(default)]
    pub reject_non_finite_inputs: bool,
    /// Backend-specific settings (a table each backend reads with its own schema).
    #[serde(default)]
    pub parameters: toml::Table,
    /// Canary traffic: weight per version (`[traffic] "2" = 5, "1" = 95`) for requests that
    /// name no version. Empty: the highest serving version takes them all.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub traffic: BTreeMap<String, u32>,
    /// Automatic rollback of a canary version (opt-in); see [`RollbackPolicy`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_rollback: Option<RollbackPolicy>,
    /// The server's response cache for this model (`[response_cache] enable = true`).
    #[serde(default)]
    pub response_cache: ResponseCacheConfig,
    /// The steps of a pipeline (`backend = "pipeline"`), each a table the runtime reads with
    /// its own schema (`[[step]]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub step: Vec<toml::Table>,
    /// Who answers for the model (a person or on-call alias); exported as the `owner` label of
    /// `kiln_model_info`, which the alert rules copy onto every alert about the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The team the model's alerts are routed to (the `team` label of `kiln_model_info`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    /// Labels files of classification outputs: output name → file in the model directory,
    /// one label per line (Triton's `label_filename`); see [`crate::classification`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Image layout of inputs (`NCHW` or `NHWC`), reported in the model configuration.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub input_format: BTreeMap<String, InputFormat>,
    /// The lines of each `labels` file, read when the model loads.
    #[serde(skip)]
    pub label_data: BTreeMap<String, std::sync::Arc<[String]>>,
}

/// The name of the pseudo-backend of pipelines.
pub const PIPELINE_BACKEND: &str = "pipeline";

/// When a canary version's traffic weight drops to zero on its own: its failure rate or its
/// p99 latency exceeds the stable version's by a factor, over a window with enough requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackPolicy {
    /// Roll back when the canary's failure rate exceeds the stable version's times this (and
    /// is above zero).
    #[serde(default = "two")]
    pub failure_ratio: f64,
    /// Roll back when the canary's p99 latency exceeds the stable version's times this.
    #[serde(default = "two")]
    pub latency_ratio: f64,
    /// The window both are measured over, in seconds.
    #[serde(default = "thirty")]
    pub window_s: u64,
    /// Fewest requests each version must have answered in the window before it is judged.
    #[serde(default = "hundred")]
    pub min_requests: u64,
}

fn two() -> f64 {
    2.0
}
fn thirty() -> u64 {
    30
}
fn hundred() -> u64 {
    100
}

/// Per-model response cache setting.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseCacheConfig {
    /// Answer repeated requests (same inputs, same version) from the server's response cache.
    #[serde(default)]
    pub enable: bool,
}

fn default_model_filename() -> String {
    "model.onnx".into()
}
fn yes() -> bool {
    true
}

/// A model input or output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    /// Tensor name as the model file names it.
    pub name: String,
    /// Element type.
    pub data_type: DataType,
    /// Dimensions, without the batch dimension when batching; `-1` is variable.
    pub dims: Vec<i64>,
    /// A ragged input (Triton's `allow_ragged_batch`): each request sends a 1-D tensor whose
    /// length need not be its batch size (e.g. the values of variable-length id lists, with
    /// their lengths in another input); batching concatenates them.
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_ragged_batch: bool,
}

impl TensorSpec {
    /// The shape clients are shown (model metadata, shape errors): a batching model's tensors
    /// lead with a variable (`-1`) batch dimension.
    pub fn client_shape(&self, batched: bool) -> Vec<i64> {
        batched
            .then_some(-1)
            .into_iter()
            .chain(self.dims.iter().copied())
            .collect()
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Which versions of a model are served (`latest = n`, `all = true` or `specific = [..]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionPolicy {
    /// Serve the `n` highest-numbered versions.
    #[serde(default)]
    pub latest: Option<u32>,
    /// Serve every version present.
    #[serde(default)]
    pub all: Option<bool>,
    /// Serve exactly these versions.
    #[serde(default)]
    pub specific: Option<Vec<u64>>,
}

impl Default for VersionPolicy {
    fn default() -> Self {
        VersionPolicy {
            latest: Some(1),
            all: None,
            specific: None,
        }
    }
}

impl VersionPolicy {
    /// Chooses the versions to serve out of `available` (any order); the result is ascending.
    pub fn select(&self, available: &[u64]) -> Vec<u64> {
        let mut v: Vec<u64> = available.to_vec();
        v.sort_unstable();
        v.dedup();
        if self.all == Some(true) {
            return v;
        }
        if let Some(spec) = &self.specific {
            return v.into_iter().filter(|x| spec.contains(x)).collect();
        }
        let n = self.latest.unwrap_or(1) as usize;
        let skip = v.len().saturating_sub(n);
        v.into_iter().skip(skip).collect()
    }

    fn validate(&self) -> std::result::Result<(), String> {
        let set =
            self.latest.is_some() as u8 + self.all.is_some() as u8 + self.specific.is_some() as u8;
        if set != 1 {
            return Err("version_policy: set exactly one of latest, all, specific".into());
        }
        if self.latest == Some(0) {
            return Err("version_policy.latest: must be at least 1".into());
        }
        if self.all == Some(false) {
            return Err("version_policy.all: use latest or specific instead of all = false".into());
        }
        Ok(())
    }
}

/// Scheduler settings of a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DynamicBatching {
    /// How long the scheduler may hold the first request of a batch waiting for more, in
    /// microseconds. `0` batches only what is already queued.
    #[serde(default)]
    pub max_queue_delay_us: u64,
    /// Batch sizes the scheduler prefers to form when enough requests are queued.
    #[serde(default)]
    pub preferred_batch_sizes: Vec<u32>,
    /// Most requests waiting in the queue; one more is refused as overloaded.
    #[serde(default = "default_queue_size")]
    pub max_queue_size: usize,
    /// Timeout for requests that set none, in milliseconds; `0` means none.
    #[serde(default)]
    pub default_timeout_ms: u64,
    /// Number of priority levels; level 1 is served first.
    #[serde(default = "one")]
    pub priority_levels: u32,
    /// Priority of requests that set none (1..=priority_levels); defaults to the lowest.
    #[serde(default)]
    pub default_priority: Option<u32>,
}

fn default_queue_size() -> usize {
    1024
}
fn one() -> u32 {
    1
}

impl Default for DynamicBatching {
    fn default() -> Self {
        DynamicBatching {
            max_queue_delay_us: 0,
            preferred_batch_sizes: Vec::new(),
            max_queue_size: default_queue_size(),
            default_timeout_ms: 0,
            priority_levels: 1,
            default_priority: None,
        }
    }
}

/// Execution instances of a model version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceGroup {
    /// Worker threads, each running one batch at a time on the shared loaded model.
    #[serde(default = "one")]
    pub count: u32,
    /// Threads each instance's backend may use inside one batch.
    #[serde(default = "one")]
    pub threads: u32,
}

impl Default for InstanceGroup {
    fn default() -> Self {
        InstanceGroup {
            count: 1,
            threads: 1,
        }
    }
}

impl ModelConfig {
    /// A configuration with every default, for models without a `config.toml`.
    pub fn default_for(name: &str) -> Self {
        let mut c: ModelConfig = toml::from_str("").expect("empty config parses");
        c.name = Some(name.to_string());
        c
    }

    /// Reads and validates `path`; errors name the file and the field.
    pub fn from_file(path: &Path, model_name: &str) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::invalid(format!("{}: {e}", path.display())))?;
        Self::parse(&text, model_name)
            .map_err(|e| Error::invalid(format!("{}: {}", path.display(), e.message)))
    }

    /// `[parameters]` read as a backend's own settings type `T`; an error names the offending
    /// key as `parameters.<path>` (e.g. `parameters.threads: invalid type: ...`).
    pub fn parameters_as<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        let value = toml::Value::Table(self.parameters.clone());
        serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner().to_string();
            let inner = inner.trim().replace('\n', " ");
            if path == "." || path.is_empty() {
                Error::invalid(format!("parameters: {inner}"))
            } else {
                Error::invalid(format!("parameters.{path}: {inner}"))
            }
        })
    }

    /// Parses and validates TOML text for the model `model_name`.
    pub fn parse(text: &str, model_name: &str) -> Result<Self> {
        let mut c: ModelConfig = toml::from_str(text)
            .map_err(|e| Error::invalid(e.to_string().trim().replace('\n', " ")))?;
        match &c.name {
            Some(n) if n != model_name => {
                return Err(Error::invalid(format!(
                    "name: '{n}' differs from the directory name '{model_name}'"
                )))
            }
            _ => c.name = Some(model_name.to_string()),
        }
        c.validate().map_err(Error::invalid)?;
        Ok(c)
    }

    /// The model name.
    pub fn model_name(&self) -> &str {
        self.name.as_deref().unwrap_or_default()
    }

    /// Priority given to requests that set none.
    pub fn default_priority(&self) -> u32 {
        self.dynamic_batching
            .default_priority
            .unwrap_or(self.dynamic_batching.priority_levels)
    }

    /// Whether this is a pipeline (`backend = "pipeline"`).
    pub fn is_pipeline(&self) -> bool {
        self.backend.as_deref() == Some(PIPELINE_BACKEND)
    }

    /// The `[traffic]` weights by version number (checked by [`ModelConfig::parse`]).
    pub fn traffic_weights(&self) -> BTreeMap<u64, u32> {
        self.traffic
            .iter()
            .filter_map(|(v, w)| v.parse().ok().map(|v| (v, *w)))
            .collect()
    }

    fn validate_routing(&self) -> std::result::Result<(), String> {
        for v in self.traffic.keys() {
            if v.parse::<u64>().is_err() {
                return Err(format!("traffic.{v}: a key must be a version number"));
            }
        }
        if !self.traffic.is_empty() && self.traffic.values().all(|&w| w == 0) {
            return Err("traffic: at least one version needs a weight above 0".into());
        }
        if let Some(r) = &self.traffic_rollback {
            for (field, x) in [
                ("failure_ratio", r.failure_ratio),
                ("latency_ratio", r.latency_ratio),
            ] {
                if !(x.is_finite() && x >= 1.0) {
                    return Err(format!("traffic_rollback.{field}: {x} must be at least 1"));
                }
            }
            if r.window_s == 0 {
                return Err("traffic_rollback.window_s: must be at least 1".into());
            }
            if r.min_requests == 0 {
                return Err("traffic_rollback.min_requests: must be at least 1".into());
            }
        }
        Ok(())
    }

    fn validate(&self) -> std::result::Result<(), String> {
        self.version_policy.validate()?;
        let db = &self.dynamic_batching;
        if db.max_queue_size == 0 {
            return Err("dynamic_batching.max_queue_size: must be at least 1".into());
        }
        if db.priority_levels == 0 {
            return Err("dynamic_batching.priority_levels: must be at least 1".into());
        }
        if let Some(p) = db.default_priority {
            if p == 0 || p > db.priority_levels {
                return Err(format!(
                    "dynamic_batching.default_priority: {p} is outside 1..={}",
                    db.priority_levels
                ));
            }
        }
        for &p in &db.preferred_batch_sizes {
            if p == 0 || p > self.max_batch_size {
                return Err(format!(
                    "dynamic_batching.preferred_batch_sizes: {p} is outside 1..=max_batch_size ({})",
                    self.max_batch_size
                ));
            }
        }
        if self.instance_group.count == 0 {
            return Err("instance_group.count: must be at least 1".into());
        }
        if self.instance_group.threads == 0 {
            return Err("instance_group.threads: must be at least 1".into());
        }
        crate::warmup::validate(&self.model_warmup, self.max_batch_size)?;
        self.validate_routing()?;
        crate::classification::validate(self)?;
        let pipeline = self.backend.as_deref() == Some(PIPELINE_BACKEND);
        if pipeline && self.step.is_empty() {
            return Err("step: a pipeline needs at least one [[step]]".into());
        }
        if !pipeline && !self.step.is_empty() {
            return Err(format!(
                "step: only pipelines (backend = \"{PIPELINE_BACKEND}\") have steps"
            ));
        }
        for (kind, specs) in [("input", &self.input), ("output", &self.output)] {
            for (i, s) in specs.iter().enumerate() {
                if s.name.is_empty() {
                    return Err(format!("{kind}[{i}].name: must not be empty"));
                }
                if s.dims.iter().any(|&d| d < -1) {
                    return Err(format!(
                        "{kind}[{i}].dims: {:?} has a dimension below -1",
                        s.dims
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_full_config() {
        let c = ModelConfig::parse("", "m").unwrap();
        assert_eq!(c.max_batch_size, 0);
        assert_eq!(c.version_policy.select(&[3, 1, 2]), vec![3]);
        let c = ModelConfig::parse(
            r#"
            max_batch_size = 64
            version_policy = { specific = [1, 3] }
            [[input]]
            name = "x"
            data_type = "FP32"
            dims = [256]
            [dynamic_batching]
            max_queue_delay_us = 100
            preferred_batch_sizes = [32, 64]
            "#,
            "m",
        )
        .unwrap();
        assert_eq!(c.input[0].data_type, DataType::Fp32);
        assert_eq!(c.version_policy.select(&[1, 2, 3]), vec![1, 3]);
    }

    #[test]
    fn unknown_field_is_named() {
        let e = ModelConfig::parse("max_batch_sise = 4", "m").unwrap_err();
        assert!(e.message.contains("max_batch_sise"), "{e}");
        let e =
            ModelConfig::parse("[dynamic_batching]\npreferred_batch_sizes = [8]", "m").unwrap_err();
        assert!(e.message.contains("preferred_batch_sizes"), "{e}");
        let e = ModelConfig::parse("version_policy = { latest = 1, all = true }", "m").unwrap_err();
        assert!(e.message.contains("version_policy"), "{e}");
    }

    #[test]
    fn version_policies() {
        let p = VersionPolicy {
            latest: Some(2),
            all: None,
            specific: None,
        };
        assert_eq!(p.select(&[1, 5, 3]), vec![3, 5]);
        let p = VersionPolicy {
            latest: None,
            all: Some(true),
            specific: None,
        };
        assert_eq!(p.select(&[2, 1]), vec![1, 2]);
    }
}
