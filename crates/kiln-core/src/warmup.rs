//! Explicit warm-up samples of a model (`[[model_warmup]]` in `config.toml`), after Triton's
//! `model_warmup`: each sample names a batch size and, per input, the dims and the data (zeros,
//! random values or a file in the model's `warmup/` directory).
//!
//! ```toml
//! [[model_warmup]]
//! name = "one row"
//! batch_size = 1
//! [model_warmup.inputs.ids]
//! dims = [16]
//! data_type = "INT64"
//! zero_data = true
//! [model_warmup.inputs.text]
//! dims = [1]
//! input_data_file = "text.bin"   # <model>/warmup/text.bin, raw tensor bytes
//! ```

use crate::dtype::DataType;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One warm-up request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmupSample {
    /// Name used in messages.
    pub name: String,
    /// Rows of the request when the model batches (`max_batch_size > 0`); must be 0 or absent
    /// when it does not.
    #[serde(default)]
    pub batch_size: u32,
    /// How many times the sample is run.
    #[serde(default = "one")]
    pub count: u32,
    /// Every input of the model, by name.
    pub inputs: BTreeMap<String, WarmupInput>,
}

fn one() -> u32 {
    1
}

/// One input of a warm-up sample.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmupInput {
    /// Dimensions, without the batch dimension when the model batches; no `-1`.
    pub dims: Vec<i64>,
    /// Element type; the model's when absent (and checked against it when given).
    #[serde(default)]
    pub data_type: Option<DataType>,
    /// Zeros (BYTES: the string "0").
    #[serde(default, skip_serializing_if = "is_false")]
    pub zero_data: bool,
    /// Reproducible pseudo-random values: floats in [0, 1), integers in 0..16, BYTES as
    /// decimal strings of such integers.
    #[serde(default, skip_serializing_if = "is_false")]
    pub random_data: bool,
    /// A file in the model's `warmup/` directory holding the raw tensor bytes (little-endian
    /// elements; BYTES as 4-byte little-endian lengths each followed by the bytes).
    #[serde(default)]
    pub input_data_file: Option<String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Where a warm-up input's values come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WarmupData<'a> {
    /// Zeros.
    Zero,
    /// Pseudo-random values.
    Random,
    /// A file in the model's `warmup/` directory.
    File(&'a str),
}

impl WarmupInput {
    /// The data source (validation guarantees exactly one is set).
    pub fn data(&self) -> WarmupData<'_> {
        match (&self.input_data_file, self.random_data) {
            (Some(f), _) => WarmupData::File(f),
            (None, true) => WarmupData::Random,
            (None, false) => WarmupData::Zero,
        }
    }
}

/// Checks the samples of a config whose `max_batch_size` is `max_batch`; the error names the
/// field (`model_warmup[i]...`).
pub fn validate(samples: &[WarmupSample], max_batch: u32) -> Result<(), String> {
    for (i, s) in samples.iter().enumerate() {
        let at = format!("model_warmup[{i}]");
        if s.name.is_empty() {
            return Err(format!("{at}.name: must not be empty"));
        }
        if max_batch > 0 && (s.batch_size == 0 || s.batch_size > max_batch) {
            return Err(format!(
                "{at}.batch_size: {} is outside 1..=max_batch_size ({max_batch})",
                s.batch_size
            ));
        }
        if max_batch == 0 && s.batch_size > 0 {
            return Err(format!(
                "{at}.batch_size: must be 0 or absent when max_batch_size = 0 (dims are full shapes)"
            ));
        }
        if s.count == 0 {
            return Err(format!("{at}.count: must be at least 1"));
        }
        if s.inputs.is_empty() {
            return Err(format!("{at}.inputs: give every input of the model"));
        }
        for (name, input) in &s.inputs {
            let at = format!("{at}.inputs.{name}");
            if input.dims.iter().any(|&d| d < 0) {
                return Err(format!(
                    "{at}.dims: {:?} must be concrete (no -1)",
                    input.dims
                ));
            }
            let sources = usize::from(input.zero_data)
                + usize::from(input.random_data)
                + usize::from(input.input_data_file.is_some());
            if sources != 1 {
                return Err(format!(
                    "{at}: set exactly one of zero_data, random_data, input_data_file"
                ));
            }
            if let Some(f) = &input.input_data_file {
                let plain = std::path::Path::new(f)
                    .components()
                    .all(|c| matches!(c, std::path::Component::Normal(_)));
                if f.is_empty() || !plain {
                    return Err(format!(
                        "{at}.input_data_file: '{f}' must be a relative path inside the model's warmup/ directory"
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::ModelConfig;
    use crate::warmup::WarmupData;
    use crate::DataType;

    const SAMPLE: &str = r#"
        max_batch_size = 8
        [[model_warmup]]
        name = "two rows"
        batch_size = 2
        count = 3
        [model_warmup.inputs.x]
        dims = [4]
        data_type = "FP32"
        random_data = true
        [model_warmup.inputs.text]
        dims = [1]
        input_data_file = "text.bin"
    "#;

    #[test]
    fn samples_parse() {
        let c = ModelConfig::parse(SAMPLE, "m").unwrap();
        assert!(c.warmup);
        assert!(!c.reject_non_finite_inputs);
        let s = &c.model_warmup[0];
        assert_eq!((s.name.as_str(), s.batch_size, s.count), ("two rows", 2, 3));
        assert_eq!(s.inputs["x"].data(), WarmupData::Random);
        assert_eq!(s.inputs["x"].data_type, Some(DataType::Fp32));
        assert_eq!(s.inputs["text"].data(), WarmupData::File("text.bin"));
        let c = ModelConfig::parse("reject_non_finite_inputs = true\nwarmup = false", "m").unwrap();
        assert!(c.reject_non_finite_inputs && !c.warmup && c.model_warmup.is_empty());
    }

    #[test]
    fn bad_samples_name_the_field() {
        let cases = [
            (
                SAMPLE.replace("count = 3", "count = 0"),
                "model_warmup[0].count",
            ),
            (
                SAMPLE.replace("batch_size = 2", "batch_size = 9"),
                "model_warmup[0].batch_size",
            ),
            (
                SAMPLE.replace("dims = [4]", "dims = [-1]"),
                "model_warmup[0].inputs.x.dims",
            ),
            (
                SAMPLE.replace("random_data = true", "random_data = true\nzero_data = true"),
                "model_warmup[0].inputs.x",
            ),
            (
                SAMPLE.replace("\"text.bin\"", "\"../../etc/passwd\""),
                "model_warmup[0].inputs.text.input_data_file",
            ),
            (SAMPLE.replace("random_data", "random"), "random"),
            (
                SAMPLE.replace("max_batch_size = 8", "max_batch_size = 0"),
                "model_warmup[0].batch_size",
            ),
        ];
        for (text, needle) in cases {
            let e = ModelConfig::parse(&text, "m").unwrap_err();
            assert!(e.message.contains(needle), "{needle}: {e}");
        }
    }
}
