//! The per-model settings of the OpenVINO backend: the `[parameters]` table of a model's
//! `config.toml`, read with `deny_unknown_fields` so that a misspelt key is an error naming it.
//!
//! ```toml
//! backend = "openvino"
//! [parameters]
//! device = "CPU"                  # CPU | GPU | GPU.0 | AUTO ...: a device the library reports
//! inference_precision = "f32"     # f32 (default) | bf16
//! performance_hint = "latency"    # latency | throughput
//! num_streams = 1                 # streams of the compiled model; default: instance_group.count
//!                                 # (latency), OpenVINO's choice (throughput)
//! threads = 2                     # threads per stream; default: instance_group.threads
//! ```

use kiln_core::{Error, ModelConfig, Result};
use serde::Deserialize;

/// The precision the device computes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// 32-bit floats.
    F32,
    /// bfloat16 where the CPU has AVX-512-BF16 or AMX (OpenVINO keeps f32 elsewhere).
    Bf16,
}

impl Precision {
    /// The value of OpenVINO's `INFERENCE_PRECISION_HINT`.
    pub fn as_ov(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }
}

/// What the compiled model is tuned for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PerformanceHint {
    /// One request at a time as fast as possible.
    Latency,
    /// Many requests in parallel.
    Throughput,
}

impl PerformanceHint {
    /// The value of OpenVINO's `PERFORMANCE_HINT`.
    pub fn as_ov(self) -> &'static str {
        match self {
            PerformanceHint::Latency => "LATENCY",
            PerformanceHint::Throughput => "THROUGHPUT",
        }
    }
}

/// The `[parameters]` table as this backend reads it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawParameters {
    #[serde(default)]
    device: Option<String>,
    #[serde(default)]
    inference_precision: Option<Precision>,
    #[serde(default)]
    performance_hint: Option<PerformanceHint>,
    #[serde(default)]
    num_streams: Option<u32>,
    #[serde(default)]
    threads: Option<u32>,
}

/// Resolved settings of one model, defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct OvSettings {
    /// The OpenVINO device name (`CPU` by default).
    pub device: String,
    /// `INFERENCE_PRECISION_HINT`; `f32` unless set: OpenVINO's CPU plugin would otherwise pick
    /// bf16 on CPUs with AVX-512-BF16 or AMX, and answer differently from the other backends.
    pub precision: Precision,
    /// `PERFORMANCE_HINT` (`latency` by default: the scheduler forms the batches).
    pub hint: PerformanceHint,
    /// `NUM_STREAMS`: `num_streams`, else one per instance (`instance_group.count`) under the
    /// latency hint, so that every instance's request runs at once; `None` lets the throughput
    /// hint decide.
    pub num_streams: Option<u32>,
    /// Threads per stream (`threads`, else `instance_group.threads`); OpenVINO's
    /// `INFERENCE_NUM_THREADS` is this times the streams.
    pub threads: u32,
}

impl OvSettings {
    /// Reads the settings from `config.parameters`; errors name the offending key.
    pub fn from_config(config: &ModelConfig) -> Result<Self> {
        let raw: RawParameters = config.parameters_as()?;
        let zero = |name: &str| Error::invalid(format!("parameters.{name}: must be at least 1"));
        if raw.threads == Some(0) {
            return Err(zero("threads"));
        }
        if raw.num_streams == Some(0) {
            return Err(zero("num_streams"));
        }
        let hint = raw.performance_hint.unwrap_or(PerformanceHint::Latency);
        let device = match raw.device {
            None => "CPU".to_string(),
            Some(d) if d.trim().is_empty() || d.contains(char::is_whitespace) => {
                return Err(Error::invalid(format!(
                    "parameters.device: '{d}' is not a device name (CPU, GPU, AUTO, ...)"
                )))
            }
            Some(d) => d.to_ascii_uppercase(),
        };
        Ok(OvSettings {
            device,
            precision: raw.inference_precision.unwrap_or(Precision::F32),
            hint,
            num_streams: raw.num_streams.or(match hint {
                PerformanceHint::Latency => Some(config.instance_group.count.max(1)),
                PerformanceHint::Throughput => None,
            }),
            threads: raw.threads.unwrap_or(config.instance_group.threads.max(1)),
        })
    }

    /// The device's base name (`GPU` of `GPU.1`), as `AVAILABLE_DEVICES` lists families.
    pub fn device_family(&self) -> &str {
        self.device.split(['.', ':']).next().unwrap_or(&self.device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<OvSettings> {
        OvSettings::from_config(&ModelConfig::parse(text, "m")?)
    }

    #[test]
    fn defaults_follow_the_instance_group() {
        let s = parse("[instance_group]\nthreads = 3\ncount = 2").unwrap();
        assert_eq!(s.device, "CPU");
        assert_eq!(s.threads, 3);
        assert_eq!(s.precision, Precision::F32);
        assert_eq!(s.hint, PerformanceHint::Latency);
        assert_eq!(s.num_streams, Some(2));
        let s = parse("[parameters]\nperformance_hint = \"throughput\"").unwrap();
        assert_eq!(s.num_streams, None);
    }

    #[test]
    fn full_table() {
        let s = parse(
            "[parameters]\ndevice = \"gpu.1\"\ninference_precision = \"bf16\"\n\
             performance_hint = \"throughput\"\nnum_streams = 2\nthreads = 4",
        )
        .unwrap();
        assert_eq!((s.device.as_str(), s.device_family()), ("GPU.1", "GPU"));
        assert_eq!(s.precision, Precision::Bf16);
        assert_eq!(s.hint.as_ov(), "THROUGHPUT");
        assert_eq!((s.num_streams, s.threads), (Some(2), 4));
    }

    #[test]
    fn errors_name_the_field() {
        for (text, needle) in [
            ("device = \"\"", "device"),
            ("inference_precision = \"f16\"", "inference_precision"),
            ("performance_hint = \"fast\"", "performance_hint"),
            ("num_streams = 0", "num_streams"),
            ("threads = 0", "threads"),
            ("thread = 2", "thread"),
        ] {
            let e = parse(&format!("[parameters]\n{text}")).unwrap_err();
            assert!(e.message.contains(needle), "{text}: {e}");
        }
    }
}
