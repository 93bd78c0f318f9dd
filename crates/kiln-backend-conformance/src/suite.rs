//! The checks. Each takes a backend, panics with a message naming the model and the difference
//! on failure, and is turned into one `#[test]` per backend by [`crate::conformance_tests!`].

use crate::golden::{self, assert_close, golden_tolerance, Golden, BATCH_FP32};
use crate::repo_root;
use kiln_core::backend::{check_input_shape, Backend, LoadedModel};
use kiln_core::{DataType, ErrorCode, ModelConfig, Tensor};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A model directory of the repository: `examples/models/<name>` or
/// `tests/conformance/models/<name>`.
pub fn model_dir(name: &str) -> PathBuf {
    let root = repo_root();
    let example = root.join("examples/models").join(name);
    if example.is_dir() {
        example
    } else {
        root.join("tests/conformance/models").join(name)
    }
}

/// The configuration of a model directory.
pub fn config_of(dir: &Path) -> ModelConfig {
    let name = dir.file_name().unwrap().to_str().unwrap();
    ModelConfig::from_file(&dir.join("config.toml"), name).unwrap_or_else(|e| panic!("{e}"))
}

/// Loads version 1 of a repository model, panicking with the backend's message on failure.
pub fn load(backend: &dyn Backend, name: &str) -> (Arc<dyn LoadedModel>, ModelConfig, Golden) {
    let dir = model_dir(name);
    let config = config_of(&dir);
    let model = backend
        .load(&dir.join("1"), &config)
        .unwrap_or_else(|e| panic!("{}: loading {name}: {e}", backend.name()));
    (model, config, golden::read(&dir.join("expected.json")))
}

/// The golden inputs in the model's input order.
fn ordered_inputs(model: &dyn LoadedModel, g: &Golden) -> Vec<Tensor> {
    model
        .io()
        .inputs
        .iter()
        .map(|spec| {
            g.inputs
                .iter()
                .find(|t| t.name == spec.name)
                .unwrap_or_else(|| panic!("golden file has no input '{}'", spec.name))
                .clone()
        })
        .collect()
}

/// Runs `name`'s golden inputs and compares every served output with the golden file, through
/// both `execute` and a worker instance.
pub fn golden(backend: &dyn Backend, name: &str) {
    let (model, _, g) = load(backend, name);
    let inputs = ordered_inputs(model.as_ref(), &g);
    let mut runs = vec![("execute", model.execute(&inputs))];
    if let Some(instance) = model.create_instance() {
        let mut instance = instance.unwrap_or_else(|e| panic!("{name}: create_instance: {e}"));
        runs.push(("instance", instance.execute(&inputs)));
    }
    for (how, outputs) in runs {
        let outputs = outputs.unwrap_or_else(|e| panic!("{}: {name} ({how}): {e}", backend.name()));
        assert_eq!(
            outputs.len(),
            model.io().outputs.len(),
            "{name}: number of outputs"
        );
        for (got, spec) in outputs.iter().zip(&model.io().outputs) {
            let want = g.outputs.iter().find(|t| t.name == spec.name).unwrap();
            let ctx = format!("{} {name} ({how})", backend.name());
            assert_close(&ctx, got, want, golden_tolerance(want.dtype));
        }
    }
}

/// Runs all rows at once, then each row alone, and checks the rows agree.
pub fn batched_equals_one_by_one(backend: &dyn Backend, name: &str, inputs: Option<Vec<Tensor>>) {
    let (model, config, g) = load(backend, name);
    assert!(config.max_batch_size > 0, "{name} is not batched");
    let inputs = inputs.unwrap_or_else(|| ordered_inputs(model.as_ref(), &g));
    let rows = inputs[0].rows();
    let batched = model
        .execute(&inputs)
        .unwrap_or_else(|e| panic!("{name}: batch of {rows}: {e}"));
    let ones = vec![1; rows];
    let split_in: Vec<Vec<Tensor>> = inputs
        .iter()
        .map(|t| t.split_rows(&ones).unwrap())
        .collect();
    let split_out: Vec<Vec<Tensor>> = batched
        .iter()
        .map(|t| t.split_rows(&ones).unwrap())
        .collect();
    for r in 0..rows {
        let one: Vec<Tensor> = split_in.iter().map(|parts| parts[r].clone()).collect();
        let single = model
            .execute(&one)
            .unwrap_or_else(|e| panic!("{name}: row {r} alone: {e}"));
        for (o, got) in single.iter().enumerate() {
            let want = &split_out[o][r];
            let tol = if want.dtype == DataType::Fp32 {
                BATCH_FP32
            } else {
                golden_tolerance(want.dtype)
            };
            assert_close(
                &format!(
                    "{} {name} row {r} alone vs in a batch of {rows}",
                    backend.name()
                ),
                got,
                want,
                tol,
            );
        }
    }
}

/// A batch of `rows` random MLP rows (`x` FP32 [rows, 256]).
pub fn mlp_rows(rows: usize) -> Vec<Tensor> {
    // a fixed linear congruential sequence: reproducible without a random-number dependency
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let values: Vec<f32> = (0..rows * 256)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect();
    vec![Tensor::from_vec("x", vec![rows as i64, 256], &values)]
}

/// Inputs and outputs read from the file when the config names none (the `dtypes` model).
pub fn io_from_file(backend: &dyn Backend) {
    let (model, _, g) = load(backend, "dtypes");
    let io = model.io();
    assert_eq!(
        io.inputs.len(),
        12,
        "{}: dtypes inputs {:?}",
        backend.name(),
        io.inputs
    );
    for (spec, want) in io.inputs.iter().zip(&g.inputs) {
        assert_eq!(
            (&spec.name, spec.data_type),
            (&want.name, want.dtype),
            "{}",
            backend.name()
        );
        assert_eq!(
            spec.dims,
            vec![3],
            "{}: '{}' dims without the batch dimension",
            backend.name(),
            spec.name
        );
    }
    let names: Vec<&str> = io.outputs.iter().map(|s| s.name.as_str()).collect();
    let want: Vec<&str> = g.outputs.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        want,
        "{}: outputs in the file's order",
        backend.name()
    );
    // multi_io: variable non-batch dimension, served outputs in the config's order
    let (model, _, _) = load(backend, "multi_io");
    let seq = model.io().inputs.iter().find(|s| s.name == "seq").unwrap();
    assert_eq!(seq.dims, vec![-1], "{}: variable dimension", backend.name());
    let names: Vec<&str> = model.io().outputs.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["mixed", "scaled", "seq_mean"], "{}", backend.name());
}

/// A copy of repository model `name` (version 1) in a scratch directory, with `config` as its
/// config.toml and `file` (when given) instead of its model.onnx. Returns the directory guard,
/// the version directory and the parsed config.
pub fn scratch_model(
    name: &str,
    config: &str,
    file: Option<&[u8]>,
) -> (tempfile::TempDir, PathBuf, ModelConfig) {
    let tmp = tempfile::tempdir().unwrap();
    let vdir = tmp.path().join(name).join("1");
    std::fs::create_dir_all(&vdir).unwrap();
    match file {
        Some(bytes) => std::fs::write(vdir.join("model.onnx"), bytes).unwrap(),
        None => {
            std::fs::copy(
                model_dir(name).join("1/model.onnx"),
                vdir.join("model.onnx"),
            )
            .unwrap();
        }
    }
    let config = ModelConfig::parse(config, name).unwrap_or_else(|e| panic!("{config}: {e}"));
    (tmp, vdir, config)
}

fn scratch_mlp(config: &str, file: Option<&[u8]>) -> (tempfile::TempDir, PathBuf, ModelConfig) {
    scratch_model("mlp", config, file)
}

/// Loads `vdir` expecting an error that mentions every needle; returns the message.
pub fn expect_load_error(
    backend: &dyn Backend,
    what: &str,
    vdir: &Path,
    config: &ModelConfig,
    needles: &[&str],
) -> String {
    let err = match backend.load(vdir, config) {
        Ok(_) => panic!("{}: {what}: loaded, expected an error", backend.name()),
        Err(e) => e.to_string(),
    };
    for n in needles {
        assert!(
            err.contains(n),
            "{}: {what}: error does not mention {n:?}: {err}",
            backend.name()
        );
    }
    assert_eq!(err, err.trim(), "{what}: message has stray whitespace");
    err
}

/// A corrupt or missing model file is a load error naming the file.
pub fn errors_bad_file(backend: &dyn Backend) {
    let (_tmp, vdir, config) =
        scratch_mlp("max_batch_size = 8", Some(b"this is not an onnx model"));
    let file = vdir.join("model.onnx").display().to_string();
    expect_load_error(backend, "corrupt file", &vdir, &config, &[&file]);
    let (_tmp2, vdir, config) = scratch_mlp("max_batch_size = 8", None);
    std::fs::remove_file(vdir.join("model.onnx")).unwrap();
    expect_load_error(backend, "missing file", &vdir, &config, &["model.onnx"]);
}

/// A config that disagrees with the file is a load error naming the tensor.
pub fn errors_config_mismatch(backend: &dyn Backend) {
    let input = |name: &str, dtype: &str, dims: &str| {
        format!("[[input]]\nname = \"{name}\"\ndata_type = \"{dtype}\"\ndims = {dims}\n")
    };
    let output = |name: &str, dtype: &str, dims: &str| {
        format!("[[output]]\nname = \"{name}\"\ndata_type = \"{dtype}\"\ndims = {dims}\n")
    };
    let cases = [
        (
            "unknown input",
            input("x", "FP32", "[256]") + &input("z", "FP32", "[4]"),
            "\"z\"",
        ),
        ("unknown output", output("w", "FP32", "[1]"), "'w'"),
        ("output type", output("y", "INT32", "[1]"), "INT32"),
        ("output dims", output("y", "FP32", "[2]"), "'y'"),
        ("output rank", output("y", "FP32", "[1, 1]"), "'y'"),
    ];
    for (what, extra, needle) in cases {
        let (_tmp, vdir, config) = scratch_mlp(&format!("max_batch_size = 8\n{extra}"), None);
        let file = vdir.join("model.onnx").display().to_string();
        expect_load_error(backend, what, &vdir, &config, &[needle, &file]);
    }
}

/// `pinned`: input widths the file leaves symbolic but the weights fix (x: 4 through a
/// `MatMul`, z: 5 through a `Gemm`). The served dims are the derived ones (metadata shows them,
/// also when config.toml says -1), a request of another width is an invalid-argument error
/// naming the input and both shapes, and the engine itself never answers one.
pub fn derived_dims(backend: &dyn Backend) {
    let b = backend.name();
    let want = [("x", vec![4]), ("z", vec![5])];
    let check = |model: &dyn LoadedModel, how: &str| {
        for (name, dims) in &want {
            let spec = model.io().inputs.iter().find(|s| s.name == *name).unwrap();
            assert_eq!(&spec.dims, dims, "{b}: '{name}' dims ({how})");
        }
    };
    let (model, _, _) = load(backend, "pinned");
    check(model.as_ref(), "read from the file");
    let rows = |name: &str, width: usize| {
        Tensor::from_vec(name, vec![2, width as i64], &vec![0.5f32; 2 * width])
    };
    for (x, z) in [(3, 5), (5, 5), (4, 4), (4, 6)] {
        let inputs = [rows("x", x), rows("z", z)];
        let refused: Vec<String> = model
            .io()
            .inputs
            .iter()
            .zip(&inputs)
            .filter_map(|(spec, t)| check_input_shape(spec, &t.shape, true).err())
            .map(|e| {
                assert_eq!(e.code, ErrorCode::InvalidArgument, "{b}: {e}");
                e.message
            })
            .collect();
        let (name, given, served) = if x != 4 {
            ("'x'", format!("[2, {x}]"), "[-1, 4]")
        } else {
            ("'z'", format!("[2, {z}]"), "[-1, 5]")
        };
        assert_eq!(refused.len(), 1, "{b}: x {x}, z {z}: {refused:?}");
        for needle in [name, given.as_str(), served] {
            assert!(
                refused[0].contains(needle),
                "{b}: {needle} in {}",
                refused[0]
            );
        }
        if let Ok(out) = model.execute(&inputs) {
            panic!("{b}: x {x}, z {z}: the engine computed {out:?} past the tensor");
        }
    }
    let config = "max_batch_size = 8\n[[input]]\nname = \"x\"\ndata_type = \"FP32\"\ndims = [-1]\n\
                  [[input]]\nname = \"z\"\ndata_type = \"FP32\"\ndims = [-1]\n";
    let (_tmp, vdir, config) = scratch_model("pinned", config, None);
    let model = backend
        .load(&vdir, &config)
        .unwrap_or_else(|e| panic!("{b}: pinned with dims = [-1]: {e}"));
    check(model.as_ref(), "config.toml says -1");
}

/// Checks every backend must pass; the names of the generated tests.
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        #[test]
        fn golden_mlp() {
            if let Some(b) = $make {
                $crate::suite::golden(&b, "mlp")
            }
        }
        #[test]
        fn golden_ranker() {
            if let Some(b) = $make {
                $crate::suite::golden(&b, "ranker")
            }
        }
        #[test]
        fn golden_dtypes() {
            if let Some(b) = $make {
                $crate::suite::golden(&b, "dtypes")
            }
        }
        #[test]
        fn golden_strings() {
            if let Some(b) = $make {
                $crate::suite::golden(&b, "strings")
            }
        }
        #[test]
        fn golden_multi_io() {
            if let Some(b) = $make {
                $crate::suite::golden(&b, "multi_io")
            }
        }
        #[test]
        fn golden_unbatched_fixed_shapes() {
            if let Some(b) = $make {
                $crate::suite::golden(&b, "fixed")
            }
        }
        #[test]
        fn golden_pinned() {
            if let Some(b) = $make {
                $crate::suite::golden(&b, "pinned")
            }
        }
        #[test]
        fn derived_dims_are_served_and_checked() {
            if let Some(b) = $make {
                $crate::suite::derived_dims(&b)
            }
        }
        #[test]
        fn io_read_from_file() {
            if let Some(b) = $make {
                $crate::suite::io_from_file(&b)
            }
        }
        #[test]
        fn batched_equals_one_by_one_mlp_64() {
            if let Some(b) = $make {
                $crate::suite::batched_equals_one_by_one(
                    &b,
                    "mlp",
                    Some($crate::suite::mlp_rows(64)),
                )
            }
        }
        #[test]
        fn batched_equals_one_by_one_ranker() {
            if let Some(b) = $make {
                $crate::suite::batched_equals_one_by_one(&b, "ranker", None)
            }
        }
        #[test]
        fn batched_equals_one_by_one_dtypes() {
            if let Some(b) = $make {
                $crate::suite::batched_equals_one_by_one(&b, "dtypes", None)
            }
        }
        #[test]
        fn batched_equals_one_by_one_strings() {
            if let Some(b) = $make {
                $crate::suite::batched_equals_one_by_one(&b, "strings", None)
            }
        }
        #[test]
        fn batched_equals_one_by_one_multi_io() {
            if let Some(b) = $make {
                $crate::suite::batched_equals_one_by_one(&b, "multi_io", None)
            }
        }
        #[test]
        fn errors_bad_file() {
            if let Some(b) = $make {
                $crate::suite::errors_bad_file(&b)
            }
        }
        #[test]
        fn errors_config_mismatch() {
            if let Some(b) = $make {
                $crate::suite::errors_config_mismatch(&b)
            }
        }
    };
}
