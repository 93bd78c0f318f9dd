//! Helpers of the deep trainer's tests: a seeded RNG, small recsys model directories with
//! random weights, and sample streams.
#![allow(dead_code)]

use std::path::Path;

use kiln_core::Tensor;
use kiln_learn::deep::{DeepConfig, DenseOptimizer};
use kiln_learn::optim::adagrad::AdaGrad;
use kiln_learn::optim::ftrl::FtrlParams;
use kiln_learn::Sample;
use safetensors::tensor::TensorView;
use safetensors::Dtype;

/// A splitmix64 stream.
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u = self.uniform().max(1e-300);
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * self.uniform()).cos()
    }
}

pub const DENSE: usize = 4;
pub const DIM: usize = 4;
pub const VOCAB: u64 = 100;
pub const FEATURES: usize = 3;
pub const MAX_IDS: usize = 3;

/// A recsys `config.toml` with `FEATURES` features `f{i}` over tables `t{i}` (`f1` mean
/// pooled), hash-initialized default rows and `extra` lines in `[parameters.table_defaults]`.
pub fn config_toml(interaction: &str, extra: &str) -> String {
    let mut s = format!(
        "backend = \"recsys\"\ndefault_model_filename = \"model.safetensors\"\nmax_batch_size = 4096\n\
         [instance_group]\ncount = 1\nthreads = 1\n\
         [parameters]\ninteraction = \"{interaction}\"\noutput = \"prob\"\ndense_input = \"dense\"\n\
         [parameters.table_defaults]\ndefault_row = \"hash\"\nhash_scale = 0.05\n{extra}\n"
    );
    for f in 0..FEATURES {
        let pooling = if f == 1 { "mean" } else { "sum" };
        s += &format!(
            "[[parameters.sparse]]\nname = \"f{f}\"\ntable = \"t{f}\"\nmax_ids = {MAX_IDS}\npooling = \"{pooling}\"\n"
        );
    }
    s
}

/// Writes `dir/config.toml` and `dir/1/model.safetensors`: MLPs `DENSE-hidden-DIM` and
/// `z-hidden-1` with random weights (scale `gain`) and tables of `rows` random rows.
pub fn write_model(
    dir: &Path,
    interaction: &str,
    extra: &str,
    seed: u64,
    (gain, hidden): (f64, usize),
    rows: u64,
) {
    let mut rng = Rng(seed);
    std::fs::create_dir_all(dir.join("1")).unwrap();
    std::fs::write(dir.join("config.toml"), config_toml(interaction, extra)).unwrap();
    let z = match interaction {
        "concat" => DIM + FEATURES * DIM,
        _ => DIM + (FEATURES + 1) * FEATURES / 2,
    };
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    for (prefix, dims) in [("bottom", [DENSE, hidden, DIM]), ("top", [z, hidden, 1])] {
        for j in 0..2 {
            let (i, o) = (dims[j], dims[j + 1]);
            let s = gain * (2.0 / (i + o) as f64).sqrt();
            let w = (0..i * o).map(|_| (rng.normal() * s) as f32).collect();
            tensors.push((format!("{prefix}.{j}.weight"), vec![o, i], w));
            let b = (0..o).map(|_| (rng.normal() * 0.1) as f32).collect();
            tensors.push((format!("{prefix}.{j}.bias"), vec![o], b));
        }
    }
    for f in 0..FEATURES {
        let n = rows as usize * DIM;
        let w = (0..n).map(|_| (rng.uniform() - 0.5) as f32 * 1.5).collect();
        tensors.push((format!("t{f}.weight"), vec![rows as usize, DIM], w));
    }
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((n, s, _), b)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("1/model.safetensors")).unwrap();
}

/// A tensor to add to a model file: name, data type, shape and little-endian bytes.
pub type RawTensor = (String, Dtype, Vec<usize>, Vec<u8>);

/// Rewrites the safetensors file at `path` with `extra` tensors after the ones it holds.
pub fn append_tensors(path: &Path, extra: Vec<RawTensor>) {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<RawTensor> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    tensors.extend(extra);
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

/// Serving scores what the trainer scores, row by row within 1e-5, and the scores are not all
/// the same (a model that ignores its inputs would pass the first check).
pub fn assert_serves_as_trained(served: &[f32], trained: &[f32]) {
    assert_eq!(served.len(), trained.len());
    for (i, (s, t)) in served.iter().zip(trained).enumerate() {
        assert!((s - t).abs() <= 1e-5, "row {i}: served {s}, trainer {t}");
    }
    assert!(trained.iter().any(|&p| (p - trained[0]).abs() > 1e-3));
}

/// The deep trainer with AdaGrad on the dense layers (lr 0.05) and the tables (lr 0.1), and
/// `wide` for the wide part.
pub fn adagrad_config(wide: FtrlParams) -> DeepConfig {
    DeepConfig {
        dense: DenseOptimizer::Adagrad(AdaGrad {
            lr: 0.05,
            ..AdaGrad::default()
        }),
        embedding: AdaGrad {
            lr: 0.1,
            ..AdaGrad::default()
        },
        wide,
        ..DeepConfig::default()
    }
}

/// A request to the test model: `dense` (`DENSE` values a row, rows in order) and each row's
/// ids of `f0..f{FEATURES}`, padded with -1 to `MAX_IDS`.
pub fn request_tensors(dense: &[f32], ids: &[Vec<Vec<i64>>]) -> Vec<Tensor> {
    let n = ids.len();
    let mut inputs = vec![Tensor::from_vec(
        "dense",
        vec![n as i64, DENSE as i64],
        dense,
    )];
    for f in 0..FEATURES {
        let mut padded = vec![-1i64; n * MAX_IDS];
        for (r, row) in ids.iter().enumerate() {
            padded[r * MAX_IDS..r * MAX_IDS + row[f].len()].copy_from_slice(&row[f]);
        }
        inputs.push(Tensor::from_vec(
            format!("f{f}"),
            vec![n as i64, MAX_IDS as i64],
            &padded,
        ));
    }
    inputs
}

/// `n` samples with dense N(0, 1) inputs and 0..=3 ids per feature (skewed towards small
/// ids); labels drawn later.
pub fn samples(rng: &mut Rng, n: usize, vocab: u64) -> Vec<Sample> {
    (0..n)
        .map(|i| Sample {
            id: format!("imp-{i}"),
            ts_ms: i as u64,
            label: false,
            keys: (0..FEATURES)
                .map(|_| {
                    let k = rng.next() % (MAX_IDS as u64 + 1);
                    (0..k)
                        .map(|_| (rng.uniform().powi(2) * vocab as f64) as u64)
                        .collect()
                })
                .collect(),
            dense: (0..DENSE).map(|_| rng.normal() as f32).collect(),
            seen_ms: 0,
        })
        .collect()
}
