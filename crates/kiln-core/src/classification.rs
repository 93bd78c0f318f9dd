//! Triton's classification extension: an output requested with `parameters.classification = n`
//! comes back as a `BYTES` tensor of the top `n` classes of each batch row instead of its data,
//! each element `"<value>:<index>"`, or `"<value>:<index>:<label>"` when the model has a labels
//! file for the output (`[labels]` in `config.toml`, Triton's `label_filename`: one label per
//! line, line `i` naming class `i`).
//!
//! Also the image input layout a model declares (`[input_format]`, Triton's input `format`),
//! which image clients read from the model configuration to lay out their pixels.

use crate::config::ModelConfig;
use crate::dtype::DataType;
use crate::error::{Error, Result};
use crate::tensor::{Element, Tensor};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::path::{Component, Path};
use std::sync::Arc;

/// The layout of an image input (Triton's `ModelInput.format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InputFormat {
    /// Channels, height, width (`FORMAT_NCHW`).
    #[serde(rename = "NCHW")]
    Nchw,
    /// Height, width, channels (`FORMAT_NHWC`).
    #[serde(rename = "NHWC")]
    Nhwc,
}

/// Checks that `[labels]` and `[input_format]` name listed tensors (when the configuration
/// lists them) and that label files stay inside the model directory.
pub(crate) fn validate(c: &ModelConfig) -> std::result::Result<(), String> {
    for (output, file) in &c.labels {
        if !c.output.is_empty() && !c.output.iter().any(|s| &s.name == output) {
            return Err(format!("labels.{output}: not an output of the model"));
        }
        let path = Path::new(file);
        if file.is_empty() || !path.components().all(|p| matches!(p, Component::Normal(_))) {
            return Err(format!(
                "labels.{output}: '{file}' must be a file name inside the model directory"
            ));
        }
    }
    for input in c.input_format.keys() {
        if !c.input.is_empty() && !c.input.iter().any(|s| &s.name == input) {
            return Err(format!("input_format.{input}: not an input of the model"));
        }
    }
    Ok(())
}

/// Reads the labels files `c.labels` names from the model directory `dir` into
/// `c.label_data`; errors name the file as `<model>/<file>`.
pub fn read_labels(c: &mut ModelConfig, dir: &Path) -> Result<()> {
    let mut data = std::collections::BTreeMap::new();
    for (output, file) in &c.labels {
        let shown = format!("{}/{file}", c.model_name());
        let text = std::fs::read_to_string(dir.join(file))
            .map_err(|e| Error::invalid(format!("labels.{output}: {shown}: {e}")))?;
        let lines: Vec<String> = text
            .lines()
            .map(|l| l.trim_end_matches('\r').to_string())
            .collect();
        data.insert(output.clone(), Arc::from(lines));
    }
    c.label_data = data;
    Ok(())
}

/// A value compared as its own type: integers exactly, floats with NaN below everything.
#[derive(Clone, Copy)]
enum Num {
    Int(i128),
    Float(f64),
}

impl Num {
    fn order(&self, other: &Num) -> Ordering {
        let f = |x: f64| if x.is_nan() { f64::NEG_INFINITY } else { x };
        match (self, other) {
            (Num::Int(a), Num::Int(b)) => a.cmp(b),
            (Num::Float(a), Num::Float(b)) => f(*a).total_cmp(&f(*b)),
            _ => Ordering::Equal,
        }
    }

    /// As Triton prints it (C++ `std::to_string`: integers plainly, floats with six decimals).
    fn text(&self) -> String {
        match self {
            Num::Int(v) => v.to_string(),
            Num::Float(v) => format!("{v:.6}"),
        }
    }
}

fn values<T: Element>(t: &Tensor, f: impl Fn(T) -> Num) -> Result<Vec<Num>> {
    Ok(t.to_vec::<T>()?.into_iter().map(f).collect())
}

/// The top `count` classes of output `t`, per batch row when `batched` (the first dimension
/// is the batch) else over the whole tensor: a `BYTES` tensor of the same name shaped
/// `[rows, k]` (`[k]` unbatched), `k` = `count` or fewer when a row has fewer elements.
/// Classes are ordered by value, highest first, ties by index; `labels[i]` names class `i`.
pub fn classify(
    t: &Tensor,
    batched: bool,
    count: usize,
    labels: Option<&[String]>,
) -> Result<Tensor> {
    let v = match t.dtype {
        DataType::Uint8 => values(t, |x: u8| Num::Int(x.into()))?,
        DataType::Uint16 => values(t, |x: u16| Num::Int(x.into()))?,
        DataType::Uint32 => values(t, |x: u32| Num::Int(x.into()))?,
        DataType::Uint64 => values(t, |x: u64| Num::Int(x.into()))?,
        DataType::Int8 => values(t, |x: i8| Num::Int(x.into()))?,
        DataType::Int16 => values(t, |x: i16| Num::Int(x.into()))?,
        DataType::Int32 => values(t, |x: i32| Num::Int(x.into()))?,
        DataType::Int64 => values(t, |x: i64| Num::Int(x.into()))?,
        DataType::Fp16 => values(t, |x: half::f16| Num::Float(x.into()))?,
        DataType::Fp32 => values(t, |x: f32| Num::Float(x.into()))?,
        DataType::Fp64 => values(t, Num::Float)?,
        other => {
            return Err(Error::invalid(format!(
                "output '{}': classification needs a numeric output, not {other}",
                t.name
            )))
        }
    };
    let rows = if batched { t.rows() } else { 1 };
    let per_row = v.len().checked_div(rows).unwrap_or(0);
    let k = count.min(per_row);
    let mut out = Vec::with_capacity(rows * k);
    let mut order: Vec<usize> = Vec::with_capacity(per_row);
    for row in v.chunks(per_row.max(1)).take(rows) {
        order.clear();
        order.extend(0..row.len());
        // stable: equal values keep index order
        order.sort_by(|&a, &b| row[b].order(&row[a]));
        for &i in &order[..k] {
            let mut s = format!("{}:{i}", row[i].text());
            if let Some(label) = labels.and_then(|l| l.get(i)) {
                s.push(':');
                s.push_str(label);
            }
            out.push(s);
        }
    }
    let shape = if batched {
        vec![rows as i64, k as i64]
    } else {
        vec![k as i64]
    };
    Ok(Tensor::from_strings(t.name.clone(), shape, &out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(t: &Tensor) -> Vec<String> {
        t.byte_elements()
            .unwrap()
            .iter()
            .map(|b| String::from_utf8(b.to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn top_classes_per_row_with_labels() {
        let t = Tensor::from_vec(
            "p",
            vec![2, 4],
            &[1.0f32, 5.0, 10.0, 4.0, 0.5, 0.25, 0.5, 0.75],
        );
        let labels: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let c = classify(&t, true, 2, Some(&labels)).unwrap();
        assert_eq!(c.dtype, DataType::Bytes);
        assert_eq!(c.shape, vec![2, 2]);
        // index 3 has no label line
        assert_eq!(
            strings(&c),
            [
                "10.000000:2:c",
                "5.000000:1:b",
                "0.750000:3",
                "0.500000:0:a"
            ]
        );
    }

    #[test]
    fn unbatched_integers_and_count_above_the_row() {
        let t = Tensor::from_vec("p", vec![3], &[7i32, -2, 9]);
        let c = classify(&t, false, 5, None).unwrap();
        assert_eq!(c.shape, vec![3]);
        assert_eq!(strings(&c), ["9:2", "7:0", "-2:1"]);
    }

    #[test]
    fn nan_sorts_last_and_bytes_are_refused() {
        let t = Tensor::from_vec("p", vec![1, 3], &[f64::NAN, 1.0, -1.0]);
        let c = classify(&t, true, 3, None).unwrap();
        assert_eq!(strings(&c), ["1.000000:1", "-1.000000:2", "NaN:0"]);
        let b = Tensor::from_strings("s", vec![1], &["x"]);
        let e = classify(&b, false, 1, None).unwrap_err();
        assert!(
            e.message
                .contains("output 's': classification needs a numeric output"),
            "{e}"
        );
    }
}
