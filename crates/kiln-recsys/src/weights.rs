//! Reading a recsys model's safetensors file: the MLPs (`bottom.{j}`, `top.{j}`, PyTorch
//! `nn.Linear` layout `[out, in]`) and embedding tables (`<table>.weight` `[rows, dim]`, row `r`
//! is the row of key `r`, or of `<table>.keys[r]` when that INT64 tensor is present).
//!
//! The file is memory-mapped; tensors are converted to f32 (F32, F16 and BF16 are accepted).

use kiln_core::{Error, Result};
use safetensors::{Dtype, SafeTensors};
use std::path::Path;

/// A fully connected layer, weights stored transposed (`[in, out]` row-major) so the GEMM reads
/// the right-hand side contiguously.
#[derive(Debug, Clone)]
pub struct Linear {
    /// Input width.
    pub inputs: usize,
    /// Output width.
    pub outputs: usize,
    /// `[inputs, outputs]`, row-major.
    pub weight_t: Vec<f32>,
    /// `[outputs]`.
    pub bias: Vec<f32>,
}

/// The mapped weights file.
pub struct WeightsFile {
    map: memmap2::Mmap,
    path: String,
}

fn corrupt(path: &str, m: impl std::fmt::Display) -> Error {
    Error::invalid(format!("weights {path}: {m}"))
}

impl WeightsFile {
    /// Maps and checks the header of `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let shown = path.display().to_string();
        let file = std::fs::File::open(path).map_err(|e| corrupt(&shown, e))?;
        // SAFETY: the file is only read; a model directory is not rewritten in place while it
        // loads (new weights arrive as a new version directory).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| corrupt(&shown, e))?;
        SafeTensors::deserialize(&map).map_err(|e| corrupt(&shown, e))?;
        Ok(WeightsFile { map, path: shown })
    }

    fn tensors(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.map).expect("checked in open")
    }

    /// Whether a tensor of this name exists.
    pub fn has(&self, name: &str) -> bool {
        self.tensors().tensor(name).is_ok()
    }

    /// A tensor's shape.
    pub fn shape(&self, name: &str) -> Result<Vec<usize>> {
        let st = self.tensors();
        let t = st
            .tensor(name)
            .map_err(|_| corrupt(&self.path, format!("tensor '{name}' is missing")))?;
        Ok(t.shape().to_vec())
    }

    /// A tensor as f32 with its shape.
    pub fn f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let st = self.tensors();
        let t = st
            .tensor(name)
            .map_err(|_| corrupt(&self.path, format!("tensor '{name}' is missing")))?;
        let shape = t.shape().to_vec();
        let data = t.data();
        let values = match t.dtype() {
            Dtype::F32 => data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => data
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => data
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            d => {
                return Err(corrupt(
                    &self.path,
                    format!("tensor '{name}' is {d:?}; F32, F16 or BF16 expected"),
                ))
            }
        };
        Ok((shape, values))
    }

    /// Raw view of an F32 tensor (no copy), for streaming large tables.
    pub fn f32_chunks<F: FnMut(&[f32]) -> Result<()>>(
        &self,
        name: &str,
        rows_per_chunk: usize,
        mut f: F,
    ) -> Result<Vec<usize>> {
        let st = self.tensors();
        let t = st
            .tensor(name)
            .map_err(|_| corrupt(&self.path, format!("tensor '{name}' is missing")))?;
        let shape = t.shape().to_vec();
        if shape.len() != 2 {
            return Err(corrupt(
                &self.path,
                format!("tensor '{name}' has shape {shape:?}; [rows, dim] expected"),
            ));
        }
        let row_elems = shape[1];
        let width = match t.dtype() {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
            d => {
                return Err(corrupt(
                    &self.path,
                    format!("tensor '{name}' is {d:?}; F32, F16 or BF16 expected"),
                ))
            }
        };
        let mut buf = Vec::with_capacity(rows_per_chunk * row_elems);
        for chunk in t.data().chunks(rows_per_chunk.max(1) * row_elems * width) {
            buf.clear();
            match t.dtype() {
                Dtype::F32 => buf.extend(
                    chunk
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                ),
                Dtype::F16 => buf.extend(
                    chunk
                        .chunks_exact(2)
                        .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
                ),
                _ => buf.extend(
                    chunk
                        .chunks_exact(2)
                        .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()),
                ),
            }
            f(&buf)?;
        }
        Ok(shape)
    }

    /// An INT64 tensor.
    pub fn i64(&self, name: &str) -> Result<Vec<i64>> {
        let st = self.tensors();
        let t = st
            .tensor(name)
            .map_err(|_| corrupt(&self.path, format!("tensor '{name}' is missing")))?;
        if t.dtype() != Dtype::I64 {
            return Err(corrupt(&self.path, format!("tensor '{name}' must be I64")));
        }
        Ok(t.data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
            .collect())
    }

    /// The layers `{prefix}.0`, `{prefix}.1`, ... (at least one).
    pub fn mlp(&self, prefix: &str) -> Result<Vec<Linear>> {
        let mut layers: Vec<Linear> = Vec::new();
        for j in 0.. {
            let w = format!("{prefix}.{j}.weight");
            if !self.has(&w) {
                break;
            }
            let (ws, wv) = self.f32(&w)?;
            let (bs, bv) = self.f32(&format!("{prefix}.{j}.bias"))?;
            if ws.len() != 2 || bs != [ws[0]] {
                return Err(corrupt(
                    &self.path,
                    format!("{prefix}.{j}: weight {ws:?} and bias {bs:?} do not form a layer [out, in] / [out]"),
                ));
            }
            let (outputs, inputs) = (ws[0], ws[1]);
            if let Some(prev) = layers.last() {
                if prev.outputs != inputs {
                    return Err(corrupt(
                        &self.path,
                        format!(
                            "{prefix}.{j} takes {inputs} inputs but {prefix}.{} gives {}",
                            j - 1,
                            prev.outputs
                        ),
                    ));
                }
            }
            let mut weight_t = vec![0.0f32; inputs * outputs];
            for o in 0..outputs {
                for i in 0..inputs {
                    weight_t[i * outputs + o] = wv[o * inputs + i];
                }
            }
            layers.push(Linear {
                inputs,
                outputs,
                weight_t,
                bias: bv,
            });
        }
        if layers.is_empty() {
            return Err(corrupt(
                &self.path,
                format!("no '{prefix}.0.weight': the {prefix} MLP is missing"),
            ));
        }
        Ok(layers)
    }
}
