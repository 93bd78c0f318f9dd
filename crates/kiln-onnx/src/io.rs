//! Resolving a model's inputs and outputs: read from the engine's view of the file when
//! `config.toml` omits them, checked against it when given. Messages follow the tract backend's.

use kiln_core::backend::ModelIo;
use kiln_core::config::{ModelConfig, TensorSpec};

/// An input or output as the model file declares it (each engine reads it from its own view
/// of the file).
#[derive(Debug, Clone, PartialEq)]
pub struct FileTensor {
    /// Name in the graph.
    pub name: String,
    /// Element type, or a description of an unsupported one.
    pub dtype: Result<kiln_core::DataType, String>,
    /// Full dimensions, batch included; `-1` where symbolic or unknown.
    pub dims: Vec<i64>,
}

/// The served inputs and outputs, and for each served output its index among the file's.
pub fn resolve(
    inputs: &[FileTensor],
    outputs: &[FileTensor],
    config: &ModelConfig,
) -> Result<(ModelIo, Vec<usize>), String> {
    let max_batch = config.max_batch_size as i64;
    let model_inputs = inputs
        .iter()
        .map(|t| file_spec("input", t, max_batch))
        .collect::<Result<Vec<_>, _>>()?;
    let model_outputs = outputs
        .iter()
        .map(|t| file_spec("output", t, max_batch))
        .collect::<Result<Vec<_>, _>>()?;
    let inputs = select_inputs(&model_inputs, &config.input)?;
    let (outputs, index) = kiln_core::backend::select_outputs(&model_outputs, &config.output)?;
    Ok((ModelIo { inputs, outputs }, index))
}

/// The spec of a file tensor, with the batch dimension removed when batching.
fn file_spec(kind: &str, t: &FileTensor, max_batch: i64) -> Result<TensorSpec, String> {
    let name = &t.name;
    let dtype = t
        .dtype
        .clone()
        .map_err(|ty| format!("{kind} '{name}' has unsupported type {ty}"))?;
    let mut dims = t.dims.clone();
    if max_batch > 0 {
        match dims.first() {
            None => {
                return Err(format!(
                    "{kind} '{name}' is a scalar but max_batch_size > 0 needs a batch dimension"
                ))
            }
            Some(&d) if d >= 0 && !(d == 1 && max_batch == 1) => {
                return Err(format!(
                "{kind} '{name}': the model file fixes the first dimension to {d}, so it cannot \
                     be batched up to max_batch_size {max_batch}; export it with a symbolic batch \
                     dimension or set max_batch_size = 0"
            ))
            }
            Some(_) => {
                dims.remove(0);
            }
        }
    }
    Ok(TensorSpec {
        name: name.clone(),
        data_type: dtype,
        dims,
        allow_ragged_batch: false,
    })
}

/// The inputs in the file's order: the config's specs (checked against the file) or the file's.
fn select_inputs(
    model: &[TensorSpec],
    configured: &[TensorSpec],
) -> Result<Vec<TensorSpec>, String> {
    if configured.is_empty() {
        return Ok(model.to_vec());
    }
    let unknown: Vec<&str> = configured
        .iter()
        .filter(|c| !model.iter().any(|m| m.name == c.name))
        .map(|c| c.name.as_str())
        .collect();
    if !unknown.is_empty() {
        return Err(format!(
            "config.toml [[input]] names {unknown:?}, which the model file does not have"
        ));
    }
    let mut specs = Vec::with_capacity(model.len());
    for m in model {
        let c = configured
            .iter()
            .find(|c| c.name == m.name)
            .ok_or_else(|| {
                format!(
                    "input '{}' of the model file is missing from config.toml [[input]]",
                    m.name
                )
            })?;
        if m.data_type != c.data_type {
            return Err(format!(
                "input '{}': config.toml says {} but the model file expects {}",
                c.name, c.data_type, m.data_type
            ));
        }
        if !kiln_core::backend::dims_compatible(&m.dims, &c.dims) {
            return Err(format!(
                "input '{}': config.toml dims {:?} do not match the model file's {:?}",
                c.name, c.dims, m.dims
            ));
        }
        // a dim the config leaves variable takes the file's (or the graph's) value
        let mut spec = c.clone();
        for (d, &m) in spec.dims.iter_mut().zip(&m.dims) {
            if *d < 0 {
                *d = m;
            }
        }
        specs.push(spec);
    }
    Ok(specs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_core::DataType;

    fn t(name: &str, dtype: DataType, dims: &[i64]) -> FileTensor {
        FileTensor {
            name: name.into(),
            dtype: Ok(dtype),
            dims: dims.to_vec(),
        }
    }

    fn config(text: &str) -> ModelConfig {
        ModelConfig::parse(text, "m").unwrap()
    }

    #[test]
    fn reads_the_file_and_strips_the_batch_dimension() {
        let (io, idx) = resolve(
            &[
                t("a", DataType::Fp32, &[-1, 4]),
                t("b", DataType::Int64, &[-1, -1]),
            ],
            &[
                t("y", DataType::Fp32, &[-1, 1]),
                t("z", DataType::Bool, &[-1]),
            ],
            &config("max_batch_size = 8"),
        )
        .unwrap();
        assert_eq!(io.inputs[1].dims, vec![-1]);
        assert_eq!(io.outputs[1].dims, Vec::<i64>::new());
        assert_eq!(idx, vec![0, 1]);
    }

    #[test]
    fn config_is_checked_against_the_file() {
        let inputs = [t("x", DataType::Fp32, &[-1, 4])];
        let outputs = [
            t("y", DataType::Fp32, &[-1, 1]),
            t("z", DataType::Int64, &[-1, 2]),
        ];
        let base = "max_batch_size = 8\n";
        let ok = config(&format!(
            "{base}[[output]]\nname = \"z\"\ndata_type = \"INT64\"\ndims = [2]"
        ));
        let (io, idx) = resolve(&inputs, &outputs, &ok).unwrap();
        assert_eq!((io.outputs.len(), idx), (1, vec![1]));
        let cases = [
            (
                "[[input]]\nname = \"x\"\ndata_type = \"FP64\"\ndims = [4]",
                "FP64",
            ),
            (
                "[[input]]\nname = \"x\"\ndata_type = \"FP32\"\ndims = [5]",
                "dims",
            ),
            (
                "[[input]]\nname = \"q\"\ndata_type = \"FP32\"\ndims = [4]",
                "\"q\"",
            ),
            (
                "[[output]]\nname = \"w\"\ndata_type = \"FP32\"\ndims = [1]",
                "'w'",
            ),
            (
                "[[output]]\nname = \"y\"\ndata_type = \"INT32\"\ndims = [1]",
                "INT32",
            ),
        ];
        for (extra, needle) in cases {
            let e = resolve(&inputs, &outputs, &config(&format!("{base}{extra}"))).unwrap_err();
            assert!(e.contains(needle), "{extra}: {e}");
        }
    }

    #[test]
    fn fixed_batch_and_scalars_are_refused_when_batching() {
        let e = resolve(
            &[t("x", DataType::Fp32, &[2, 4])],
            &[],
            &config("max_batch_size = 8"),
        )
        .unwrap_err();
        assert!(e.contains("first dimension"), "{e}");
        let e = resolve(
            &[t("x", DataType::Fp32, &[])],
            &[],
            &config("max_batch_size = 8"),
        )
        .unwrap_err();
        assert!(e.contains("scalar"), "{e}");
        assert!(resolve(
            &[t("x", DataType::Fp32, &[1, 4])],
            &[],
            &config("max_batch_size = 1")
        )
        .is_ok());
        assert!(resolve(&[t("x", DataType::Fp32, &[2, 4])], &[], &config("")).is_ok());
        let bad = FileTensor {
            name: "s".into(),
            dtype: Err("tensor of bf16".into()),
            dims: vec![-1],
        };
        let e = resolve(&[bad], &[], &config("")).unwrap_err();
        assert!(e.contains("unsupported type"), "{e}");
    }
}
