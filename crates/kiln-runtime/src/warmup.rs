//! Warm-up: requests run through a freshly loaded model before it takes traffic, so that lazily
//! built state is ready and a broken model fails its load instead of its first request.
//!
//! With `[[model_warmup]]` samples in `config.toml` (Triton's `model_warmup`), those run, each
//! `count` times. Otherwise one row shaped by the model's inputs runs: the dims the engine
//! derived from the graph, 1 for a dim that stays variable, zeros (BYTES: the string "0", which
//! a model parsing numbers accepts, unlike an empty string), and ragged inputs empty. A failure
//! fails the load with the shapes tried and how to give explicit ones.

use kiln_core::backend::{check_input_shape, LoadedModel};
use kiln_core::config::{WarmupData, WarmupSample};
use kiln_core::{DataType, Error, ModelConfig, Result, Tensor};
use std::path::Path;

/// What the load error says to do when the default warm-up fails.
const HINT: &str = "give the shapes and data to warm up with in config.toml as [[model_warmup]] \
                    samples (see the README), or set warmup = false";

/// Runs the warm-up of `model`, whose model directory (holding `config.toml` and the `warmup/`
/// data files) is `model_dir`.
pub fn warm_up(model: &dyn LoadedModel, config: &ModelConfig, model_dir: &Path) -> Result<()> {
    if config.model_warmup.is_empty() {
        let inputs = default_inputs(model, config);
        return model.execute(&inputs).map(|_| ()).map_err(|e| {
            Error::new(
                e.code,
                format!(
                    "with input shapes {}: {}; {HINT}",
                    shapes(&inputs),
                    e.message
                ),
            )
        });
    }
    for sample in &config.model_warmup {
        let inputs = sample_inputs(model, config, sample, model_dir).map_err(|e| {
            Error::invalid(format!("model_warmup '{}': {}", sample.name, e.message))
        })?;
        for _ in 0..sample.count {
            model.execute(&inputs).map_err(|e| {
                Error::new(
                    e.code,
                    format!(
                        "sample '{}' with input shapes {}: {}",
                        sample.name,
                        shapes(&inputs),
                        e.message
                    ),
                )
            })?;
        }
    }
    Ok(())
}

/// One row of zeros in the model's input shapes (variable dims as 1).
fn default_inputs(model: &dyn LoadedModel, config: &ModelConfig) -> Vec<Tensor> {
    model
        .io()
        .inputs
        .iter()
        .map(|spec| {
            let mut shape: Vec<i64> = spec.dims.iter().map(|&d| d.max(1)).collect();
            if config.max_batch_size > 0 {
                shape.insert(0, if spec.allow_ragged_batch { 0 } else { 1 });
            }
            filled(&spec.name, spec.data_type, shape, WarmupData::Zero, None)
        })
        .collect()
}

/// The inputs of one explicit sample, in the model's order, checked against the model.
fn sample_inputs(
    model: &dyn LoadedModel,
    config: &ModelConfig,
    sample: &WarmupSample,
    model_dir: &Path,
) -> Result<Vec<Tensor>> {
    let io = model.io();
    if let Some(extra) = sample
        .inputs
        .keys()
        .find(|k| !io.inputs.iter().any(|s| &&s.name == k))
    {
        return Err(Error::invalid(format!(
            "inputs.{extra}: the model has no input '{extra}'"
        )));
    }
    let batched = config.max_batch_size > 0;
    let mut out = Vec::with_capacity(io.inputs.len());
    for spec in &io.inputs {
        let given = sample.inputs.get(&spec.name).ok_or_else(|| {
            Error::invalid(format!(
                "inputs.{}: missing; give every input of the model",
                spec.name
            ))
        })?;
        if let Some(dt) = given.data_type {
            if dt != spec.data_type {
                return Err(Error::invalid(format!(
                    "inputs.{}.data_type: {dt} but the model's input is {}",
                    spec.name, spec.data_type
                )));
            }
        }
        let ragged = batched && spec.allow_ragged_batch;
        let mut shape = given.dims.clone();
        if batched && !ragged {
            shape.insert(0, i64::from(sample.batch_size));
        }
        if !ragged {
            check_input_shape(spec, &shape, batched)?;
        }
        let file = match given.data() {
            WarmupData::File(f) => {
                let path = model_dir.join("warmup").join(f);
                Some(std::fs::read(&path).map_err(|e| {
                    Error::invalid(format!(
                        "inputs.{}.input_data_file: warmup/{f}: {e}",
                        spec.name
                    ))
                })?)
            }
            _ => None,
        };
        let t = filled(&spec.name, spec.data_type, shape, given.data(), file);
        t.validate()
            .map_err(|e| Error::invalid(format!("inputs.{}: {}", spec.name, e.message)))?;
        out.push(t);
    }
    Ok(out)
}

/// A tensor of `shape` with zeros, pseudo-random values or the file's bytes.
fn filled(
    name: &str,
    dtype: DataType,
    shape: Vec<i64>,
    data: WarmupData<'_>,
    file: Option<Vec<u8>>,
) -> Tensor {
    let n: usize = shape.iter().map(|&d| d.max(0) as usize).product();
    if let Some(bytes) = file {
        return Tensor {
            name: name.to_string(),
            dtype,
            shape,
            data: bytes.into(),
        };
    }
    // a fixed linear congruential sequence: reproducible, no dependency
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        state >> 33
    };
    let random = data == WarmupData::Random;
    if dtype == DataType::Bytes {
        let values: Vec<String> = (0..n)
            .map(|_| {
                if random {
                    (next() % 16).to_string()
                } else {
                    "0".into()
                }
            })
            .collect();
        return Tensor::from_strings(name, shape, &values);
    }
    let width = dtype.size().unwrap_or(1);
    let mut bytes = vec![0u8; n * width];
    if random {
        for chunk in bytes.chunks_exact_mut(width) {
            let r = next();
            match dtype {
                DataType::Fp16 => {
                    chunk.copy_from_slice(&half_bits((r % 1024) as f32 / 1024.0).to_le_bytes())
                }
                DataType::Fp32 => chunk
                    .copy_from_slice(&((r % (1 << 24)) as f32 / (1 << 24) as f32).to_le_bytes()),
                DataType::Fp64 => chunk
                    .copy_from_slice(&((r % (1 << 31)) as f64 / (1u64 << 31) as f64).to_le_bytes()),
                DataType::Bool => chunk[0] = (r % 2) as u8,
                // integers in 0..16, little-endian, whatever the width
                _ => chunk[0] = (r % 16) as u8,
            }
        }
    }
    Tensor {
        name: name.to_string(),
        dtype,
        shape,
        data: bytes.into(),
    }
}

/// The FP16 bits of `x`, a multiple of 1/1024 in [0, 1) (exact in FP16).
fn half_bits(x: f32) -> u16 {
    if x == 0.0 {
        return 0;
    }
    let bits = x.to_bits();
    // x >= 2^-10 is a normal FP16 number: rebias the exponent, keep the top 10 mantissa bits
    let exp = ((bits >> 23) & 0xff) - 127 + 15;
    let man = (bits >> 13) & 0x3ff;
    ((exp << 10) | man) as u16
}

/// `x [1, 4], ids [1, 16]` for messages.
fn shapes(inputs: &[Tensor]) -> String {
    inputs
        .iter()
        .map(|t| format!("{} {:?}", t.name, t.shape))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_core::backend::ModelIo;
    use kiln_core::TensorSpec;
    use parking_lot::Mutex;

    /// A model that records what it runs and refuses what `accept` refuses.
    struct Fake {
        io: ModelIo,
        seen: Mutex<Vec<Vec<Tensor>>>,
        accept: fn(&[Tensor]) -> std::result::Result<(), String>,
    }

    impl LoadedModel for Fake {
        fn io(&self) -> &ModelIo {
            &self.io
        }
        fn execute(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
            self.seen.lock().push(inputs.to_vec());
            (self.accept)(inputs).map_err(Error::internal)?;
            Ok(Vec::new())
        }
    }

    fn spec(name: &str, data_type: DataType, dims: &[i64]) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            data_type,
            dims: dims.to_vec(),
            allow_ragged_batch: false,
        }
    }

    fn fake(
        inputs: Vec<TensorSpec>,
        accept: fn(&[Tensor]) -> std::result::Result<(), String>,
    ) -> Fake {
        Fake {
            io: ModelIo {
                inputs,
                outputs: Vec::new(),
            },
            seen: Mutex::new(Vec::new()),
            accept,
        }
    }

    fn parses(inputs: &[Tensor]) -> std::result::Result<(), String> {
        for t in inputs.iter().filter(|t| t.dtype == DataType::Bytes) {
            for e in t.byte_elements().map_err(|e| e.message)? {
                std::str::from_utf8(e)
                    .ok()
                    .and_then(|s| s.parse::<f32>().ok())
                    .ok_or_else(|| format!("cannot parse {e:?}"))?;
            }
        }
        Ok(())
    }

    fn even_width(inputs: &[Tensor]) -> std::result::Result<(), String> {
        match inputs[0].shape.last() {
            Some(w) if w % 2 == 0 => Ok(()),
            _ => Err("reshape: width must be even".into()),
        }
    }

    #[test]
    fn default_warm_up_sends_bytes_that_parse() {
        let m = fake(vec![spec("text", DataType::Bytes, &[2])], parses);
        let config = ModelConfig::parse("max_batch_size = 4", "m").unwrap();
        warm_up(&m, &config, Path::new("/nonexistent")).unwrap();
        let seen = m.seen.lock();
        assert_eq!(seen[0][0].shape, vec![1, 2]);
        assert_eq!(seen[0][0].byte_elements().unwrap(), vec![b"0", b"0"]);
    }

    #[test]
    fn failed_default_warm_up_names_the_shapes_and_the_fix() {
        let m = fake(
            vec![
                spec("x", DataType::Fp32, &[-1]),
                spec("z", DataType::Fp32, &[5]),
            ],
            even_width,
        );
        let config = ModelConfig::parse("max_batch_size = 4", "m").unwrap();
        let e = warm_up(&m, &config, Path::new("/nonexistent")).unwrap_err();
        for needle in [
            "x [1, 1], z [1, 5]",
            "must be even",
            "[[model_warmup]]",
            "warmup = false",
        ] {
            assert!(e.message.contains(needle), "{needle} in {e}");
        }
    }

    #[test]
    fn samples_run_with_their_shapes_data_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("warmup")).unwrap();
        let text = Tensor::from_strings("text", vec![2, 1], &["1.5", "2"]);
        std::fs::write(dir.path().join("warmup/text.bin"), &text.data).unwrap();
        let m = fake(
            vec![
                spec("x", DataType::Fp32, &[-1]),
                spec("text", DataType::Bytes, &[1]),
            ],
            |i| even_width(i).and(parses(i)),
        );
        let config = ModelConfig::parse(
            r#"
            max_batch_size = 4
            [[model_warmup]]
            name = "a"
            batch_size = 2
            count = 3
            [model_warmup.inputs.x]
            dims = [6]
            random_data = true
            [model_warmup.inputs.text]
            dims = [1]
            input_data_file = "text.bin"
            [[model_warmup]]
            name = "b"
            batch_size = 1
            [model_warmup.inputs.x]
            dims = [2]
            zero_data = true
            [model_warmup.inputs.text]
            dims = [1]
            random_data = true
            "#,
            "m",
        )
        .unwrap();
        warm_up(&m, &config, dir.path()).unwrap();
        let seen = m.seen.lock();
        assert_eq!(seen.len(), 4);
        assert_eq!(seen[0][0].shape, vec![2, 6]);
        let x = seen[0][0].to_vec::<f32>().unwrap();
        assert!(x.iter().all(|v| (0.0..1.0).contains(v)), "{x:?}");
        assert!(x.iter().any(|&v| v != x[0]), "{x:?}");
        assert_eq!(seen[0][1].data, text.data);
        assert_eq!(seen[3][0].shape, vec![1, 2]);
        assert_eq!(seen[3][0].to_vec::<f32>().unwrap(), vec![0.0, 0.0]);
    }

    #[test]
    fn bad_samples_are_named() {
        let m = fake(vec![spec("x", DataType::Fp32, &[4])], |_| Ok(()));
        let cases = [
            ("dims = [3]\nzero_data = true", "[-1, 4]"),
            (
                "dims = [4]\ndata_type = \"INT64\"\nzero_data = true",
                "INT64",
            ),
            (
                "dims = [4]\ninput_data_file = \"missing.bin\"",
                "warmup/missing.bin",
            ),
        ];
        for (input, needle) in cases {
            let text = format!(
                "max_batch_size = 4\n[[model_warmup]]\nname = \"s\"\nbatch_size = 1\n\
                 [model_warmup.inputs.x]\n{input}\n"
            );
            let config = ModelConfig::parse(&text, "m").unwrap();
            let e = warm_up(&m, &config, Path::new("/nonexistent")).unwrap_err();
            assert!(e.message.contains("model_warmup 's'"), "{e}");
            assert!(e.message.contains(needle), "{needle} in {e}");
        }
        let text = "max_batch_size = 4\n[[model_warmup]]\nname = \"s\"\nbatch_size = 1\n\
                    [model_warmup.inputs.y]\ndims = [4]\nzero_data = true\n";
        let e = warm_up(&m, &ModelConfig::parse(text, "m").unwrap(), Path::new("/")).unwrap_err();
        assert!(e.message.contains("no input 'y'"), "{e}");
    }
}
