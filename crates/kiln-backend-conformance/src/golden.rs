//! Golden files (`expected.json` next to each test model) and tolerant tensor comparison.
//!
//! Format: `{"inputs": [T...], "outputs": [T...]}` with `T = {"name", "datatype", "shape",
//! "data": [flat values]}`; BOOL as true/false, BYTES as UTF-8 strings, floats as numbers.

use half::f16;
use kiln_core::{DataType, Tensor};
use serde_json::Value;
use std::path::Path;

/// How far a float may be from the reference: `|a - b| <= abs + rel * |b|`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    /// Absolute part.
    pub abs: f64,
    /// Relative part.
    pub rel: f64,
}

/// Against the golden outputs (computed by onnxruntime's Python package): different engines
/// may sum in another order. tract was measured within 1.2e-7 of onnxruntime on the MLP.
pub const GOLDEN_FP32: Tolerance = Tolerance {
    abs: 1e-5,
    rel: 1e-5,
};
/// FP16 has 11 significant bits.
pub const GOLDEN_FP16: Tolerance = Tolerance {
    abs: 1e-3,
    rel: 1e-3,
};
/// FP64 keeps about 16 digits.
pub const GOLDEN_FP64: Tolerance = Tolerance {
    abs: 1e-12,
    rel: 1e-12,
};
/// A batch against its rows run one by one on the same engine: kernels may pick another
/// blocking for another batch size, so allow rounding-level differences only.
pub const BATCH_FP32: Tolerance = Tolerance {
    abs: 1e-6,
    rel: 1e-6,
};

/// The golden tolerance for a data type (exact for integers, BOOL and BYTES).
pub fn golden_tolerance(d: DataType) -> Tolerance {
    match d {
        DataType::Fp16 => GOLDEN_FP16,
        DataType::Fp32 => GOLDEN_FP32,
        DataType::Fp64 => GOLDEN_FP64,
        _ => Tolerance { abs: 0.0, rel: 0.0 },
    }
}

/// Inputs and expected outputs of one model.
#[derive(Debug, Clone)]
pub struct Golden {
    /// Input tensors, in file order.
    pub inputs: Vec<Tensor>,
    /// Expected outputs, every output of the model file.
    pub outputs: Vec<Tensor>,
}

/// Reads `path` (an `expected.json`).
pub fn read(path: &Path) -> Golden {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let doc: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let list = |key: &str| -> Vec<Tensor> {
        doc[key]
            .as_array()
            .unwrap_or_else(|| panic!("{}: no '{key}' list", path.display()))
            .iter()
            .map(|t| tensor(t).unwrap_or_else(|e| panic!("{}: {key}: {e}", path.display())))
            .collect()
    };
    Golden {
        inputs: list("inputs"),
        outputs: list("outputs"),
    }
}

/// A tensor from its JSON form.
pub fn tensor(t: &Value) -> Result<Tensor, String> {
    let name = t["name"]
        .as_str()
        .ok_or("tensor without a name")?
        .to_string();
    let dtype: DataType = t["datatype"]
        .as_str()
        .ok_or("tensor without a datatype")?
        .parse()
        .map_err(|e| format!("{name}: {e}"))?;
    let shape: Vec<i64> = t["shape"]
        .as_array()
        .ok_or("tensor without a shape")?
        .iter()
        .map(|d| {
            d.as_i64()
                .ok_or_else(|| format!("{name}: bad dimension {d}"))
        })
        .collect::<Result<_, _>>()?;
    let data = t["data"]
        .as_array()
        .ok_or_else(|| format!("{name}: no data"))?;
    let bad = |v: &Value| format!("{name}: value {v} is not {dtype}");
    macro_rules! ints {
        ($t:ty, $get:ident) => {{
            let v: Vec<$t> = data
                .iter()
                .map(|v| {
                    v.$get()
                        .and_then(|x| <$t>::try_from(x).ok())
                        .ok_or_else(|| bad(v))
                })
                .collect::<Result<_, _>>()?;
            Tensor::from_vec(name, shape, &v)
        }};
    }
    let floats = || -> Result<Vec<f64>, String> {
        data.iter()
            .map(|v| v.as_f64().ok_or_else(|| bad(v)))
            .collect()
    };
    Ok(match dtype {
        DataType::Bool => {
            let v: Vec<bool> = data
                .iter()
                .map(|v| v.as_bool().ok_or_else(|| bad(v)))
                .collect::<Result<_, _>>()?;
            Tensor::from_vec(name, shape, &v)
        }
        DataType::Uint8 => ints!(u8, as_u64),
        DataType::Uint16 => ints!(u16, as_u64),
        DataType::Uint32 => ints!(u32, as_u64),
        DataType::Uint64 => ints!(u64, as_u64),
        DataType::Int8 => ints!(i8, as_i64),
        DataType::Int16 => ints!(i16, as_i64),
        DataType::Int32 => ints!(i32, as_i64),
        DataType::Int64 => ints!(i64, as_i64),
        DataType::Fp16 => {
            let v: Vec<f16> = floats()?.into_iter().map(f16::from_f64).collect();
            Tensor::from_vec(name, shape, &v)
        }
        DataType::Fp32 => {
            let v: Vec<f32> = floats()?.into_iter().map(|x| x as f32).collect();
            Tensor::from_vec(name, shape, &v)
        }
        DataType::Fp64 => {
            let v = floats()?;
            Tensor::from_vec(name, shape, &v)
        }
        DataType::Bytes => {
            let v: Vec<&str> = data
                .iter()
                .map(|v| v.as_str().ok_or_else(|| bad(v)))
                .collect::<Result<_, _>>()?;
            Tensor::from_strings(name, shape, &v)
        }
    })
}

/// Every element as f64 (floats and integers below 2^53; used for floats only).
fn as_f64(t: &Tensor) -> Vec<f64> {
    match t.dtype {
        DataType::Fp16 => t
            .to_vec::<f16>()
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect(),
        DataType::Fp32 => t
            .to_vec::<f32>()
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect(),
        DataType::Fp64 => t.to_vec::<f64>().unwrap(),
        _ => unreachable!("as_f64 on {}", t.dtype),
    }
}

/// Panics, naming `context` and the first differing element, unless `got` matches `want`:
/// same name, type and shape; floats within `tol`; everything else bit for bit.
pub fn assert_close(context: &str, got: &Tensor, want: &Tensor, tol: Tolerance) {
    assert_eq!(got.name, want.name, "{context}: output name");
    assert_eq!(got.dtype, want.dtype, "{context}: '{}' datatype", want.name);
    assert_eq!(got.shape, want.shape, "{context}: '{}' shape", want.name);
    match want.dtype {
        DataType::Fp16 | DataType::Fp32 | DataType::Fp64 => {
            let (g, w) = (as_f64(got), as_f64(want));
            for (i, (a, b)) in g.iter().zip(&w).enumerate() {
                let ok = (a - b).abs() <= tol.abs + tol.rel * b.abs() || (a.is_nan() && b.is_nan());
                assert!(
                    ok,
                    "{context}: '{}'[{i}] = {a}, expected {b} (tolerance {tol:?})",
                    want.name
                );
            }
        }
        DataType::Bytes => {
            assert_eq!(
                got.byte_elements().unwrap(),
                want.byte_elements().unwrap(),
                "{context}: '{}'",
                want.name
            )
        }
        _ => assert_eq!(got.data, want.data, "{context}: '{}' data", want.name),
    }
}
