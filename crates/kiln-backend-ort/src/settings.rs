//! The per-model settings of the ONNX Runtime backend: the `[parameters]` table of a model's
//! `config.toml`, read with `deny_unknown_fields` so that a misspelt key is an error naming it.
//!
//! ```toml
//! backend = "onnxruntime"
//! [parameters]
//! graph_optimization_level = "all"      # disable | basic | extended | all
//! intra_op_threads = 2                  # default: instance_group.threads
//! inter_op_threads = 1                  # > 1 runs independent branches in parallel
//! allow_cpu_fallback = true             # an unavailable provider falls back instead of failing
//! allow_spinning = true                 # pool threads spin before sleeping (the ORT default)
//! execution_providers = [
//!   { kind = "tensorrt", device_id = 0, fp16 = true, cache_dir = "/var/cache/kiln/trt" },
//!   { kind = "cuda", device_id = 0 },
//!   { kind = "cpu" },
//! ]
//! ```

use kiln_core::{Error, ModelConfig, Result};
use serde::Deserialize;
use std::path::PathBuf;

/// How much ONNX Runtime rewrites the graph before running it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizationLevel {
    /// No rewrites.
    Disable,
    /// Constant folding and redundant node removal (ORT level 1).
    Basic,
    /// Also complex fusions such as GEMM + activation (ORT level 2).
    Extended,
    /// Everything, layout optimizations included (the ORT default).
    #[default]
    All,
}

/// One execution provider, in the order of preference of `execution_providers`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum ProviderSpec {
    /// ONNX Runtime's own CPU kernels (always available).
    Cpu,
    /// NVIDIA CUDA (needs a GPU build of onnxruntime, e.g. the `onnxruntime-gpu` wheel).
    Cuda {
        /// CUDA device ordinal.
        #[serde(default)]
        device_id: i32,
        /// Upper bound of the provider's memory arena in bytes; unlimited when absent.
        #[serde(default)]
        memory_limit_bytes: Option<usize>,
    },
    /// NVIDIA TensorRT (needs a GPU build of onnxruntime and TensorRT libraries).
    Tensorrt {
        /// CUDA device ordinal.
        #[serde(default)]
        device_id: i32,
        /// Let TensorRT pick FP16 kernels.
        #[serde(default)]
        fp16: bool,
        /// Directory for built engines and timing caches; building an engine takes minutes, so
        /// set this in production. No cache when absent.
        #[serde(default)]
        cache_dir: Option<PathBuf>,
        /// Largest workspace TensorRT may use, in bytes; the provider's default when absent.
        #[serde(default)]
        max_workspace_bytes: Option<usize>,
    },
}

impl ProviderSpec {
    /// The short name used in config files and in the model's metadata.
    pub fn kind(&self) -> &'static str {
        match self {
            ProviderSpec::Cpu => "cpu",
            ProviderSpec::Cuda { .. } => "cuda",
            ProviderSpec::Tensorrt { .. } => "tensorrt",
        }
    }
}

/// The `[parameters]` table as this backend reads it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawParameters {
    #[serde(default)]
    graph_optimization_level: OptimizationLevel,
    #[serde(default)]
    intra_op_threads: Option<usize>,
    #[serde(default)]
    inter_op_threads: Option<usize>,
    #[serde(default)]
    execution_providers: Option<Vec<ProviderSpec>>,
    #[serde(default)]
    allow_cpu_fallback: bool,
    #[serde(default)]
    allow_spinning: Option<bool>,
}

/// Resolved settings of one model, defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct OrtSettings {
    /// Graph optimization level.
    pub optimization: OptimizationLevel,
    /// Threads one instance uses inside an operator (`intra_op_threads`, else
    /// `instance_group.threads`).
    pub intra_op_threads: usize,
    /// Threads one instance uses across independent operators; `> 1` turns on ORT's parallel
    /// execution mode.
    pub inter_op_threads: usize,
    /// Providers in order of preference; never empty (`[cpu]` by default).
    pub providers: Vec<ProviderSpec>,
    /// Whether an unavailable provider is skipped (and reported) instead of failing the load.
    pub allow_cpu_fallback: bool,
    /// Whether ONNX Runtime's pool threads spin while waiting for work (its default) instead of
    /// sleeping at once: lower latency on idle cores, but cycles taken from the server's network
    /// threads when cores are scarce.
    pub allow_spinning: bool,
}

impl OrtSettings {
    /// Reads the settings from `config.parameters`; errors name the offending key.
    pub fn from_config(config: &ModelConfig) -> Result<Self> {
        let raw: RawParameters = config.parameters_as()?;
        let zero = |name: &str| Error::invalid(format!("parameters.{name}: must be at least 1"));
        if raw.intra_op_threads == Some(0) {
            return Err(zero("intra_op_threads"));
        }
        if raw.inter_op_threads == Some(0) {
            return Err(zero("inter_op_threads"));
        }
        let providers = match raw.execution_providers {
            Some(p) if p.is_empty() => {
                return Err(Error::invalid(
                    "parameters.execution_providers: list at least one provider (e.g. [{ kind = \"cpu\" }])",
                ))
            }
            Some(p) => p,
            None => vec![ProviderSpec::Cpu],
        };
        Ok(OrtSettings {
            optimization: raw.graph_optimization_level,
            intra_op_threads: raw
                .intra_op_threads
                .unwrap_or(config.instance_group.threads.max(1) as usize),
            inter_op_threads: raw.inter_op_threads.unwrap_or(1),
            providers,
            allow_cpu_fallback: raw.allow_cpu_fallback,
            allow_spinning: raw.allow_spinning.unwrap_or(true),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<OrtSettings> {
        OrtSettings::from_config(&ModelConfig::parse(text, "m")?)
    }

    #[test]
    fn defaults_follow_the_instance_group() {
        let s = parse("[instance_group]\nthreads = 3").unwrap();
        assert_eq!(s.intra_op_threads, 3);
        assert_eq!(s.inter_op_threads, 1);
        assert_eq!(s.optimization, OptimizationLevel::All);
        assert_eq!(s.providers, vec![ProviderSpec::Cpu]);
        assert!(!s.allow_cpu_fallback);
        assert!(s.allow_spinning);
    }

    #[test]
    fn full_table() {
        let s = parse(
            r#"
            [parameters]
            graph_optimization_level = "extended"
            intra_op_threads = 2
            inter_op_threads = 2
            allow_cpu_fallback = true
            allow_spinning = false
            execution_providers = [
              { kind = "tensorrt", device_id = 1, fp16 = true, cache_dir = "/tmp/trt" },
              { kind = "cuda", device_id = 1 },
              { kind = "cpu" },
            ]
            "#,
        )
        .unwrap();
        assert_eq!(s.optimization, OptimizationLevel::Extended);
        assert!(!s.allow_spinning);
        assert_eq!(s.intra_op_threads, 2);
        assert_eq!(s.providers.len(), 3);
        assert_eq!(
            s.providers[0],
            ProviderSpec::Tensorrt {
                device_id: 1,
                fp16: true,
                cache_dir: Some("/tmp/trt".into()),
                max_workspace_bytes: None
            }
        );
        assert_eq!(s.providers[1].kind(), "cuda");
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse("[parameters]\nintra_op_thread = 2").unwrap_err();
        assert!(e.message.contains("intra_op_thread"), "{e}");
        let e = parse("[parameters]\ngraph_optimization_level = \"fast\"").unwrap_err();
        assert!(e.message.contains("graph_optimization_level"), "{e}");
        let e = parse("[parameters]\nexecution_providers = [{ kind = \"cuda\", device = 0 }]")
            .unwrap_err();
        assert!(
            e.message.contains("execution_providers") && e.message.contains("device"),
            "{e}"
        );
        let e = parse("[parameters]\nexecution_providers = [{ kind = \"tpu\" }]").unwrap_err();
        assert!(e.message.contains("tpu"), "{e}");
        let e = parse("[parameters]\nexecution_providers = []").unwrap_err();
        assert!(e.message.contains("execution_providers"), "{e}");
        let e = parse("[parameters]\ninter_op_threads = 0").unwrap_err();
        assert!(e.message.contains("inter_op_threads"), "{e}");
    }
}
