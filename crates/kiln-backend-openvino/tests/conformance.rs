//! The shared backend conformance suite against the OpenVINO backend, on the ONNX files.
//! Skipped (with a message) where the library is absent, unless `CI` is set.
//!
//! Every check of `kiln_backend_conformance::conformance_tests!` runs here, by name, except
//! those that OpenVINO 2026.4's CPU plugin cannot pass, replaced by tests of what the backend
//! does instead: string tensors (refused at load: the plugin aborts the process on them), 64-bit
//! integers (the plugin computes them in 32 bits: values beyond that range are refused with a
//! 400 instead of answered wrongly) and FP64 arithmetic (computed in FP32).

mod common;

use common::openvino_backend;
use kiln_backend_conformance::golden::{self, assert_close, golden_tolerance};
use kiln_backend_conformance::suite::{self, model_dir};
use kiln_core::backend::Backend;
use kiln_core::{DataType, ErrorCode, Tensor};

macro_rules! check {
    ($($name:ident => $body:expr;)*) => {$(
        #[test]
        fn $name() {
            if let Some(b) = openvino_backend() {
                let run: &dyn Fn(&dyn Backend) = &$body;
                run(&b)
            }
        }
    )*};
}

check! {
    golden_mlp => |b| suite::golden(b, "mlp");
    golden_multi_io => |b| suite::golden(b, "multi_io");
    golden_unbatched_fixed_shapes => |b| suite::golden(b, "fixed");
    golden_pinned => |b| suite::golden(b, "pinned");
    derived_dims_are_served_and_checked => |b| suite::derived_dims(b);
    io_read_from_file => |b| suite::io_from_file(b);
    batched_equals_one_by_one_mlp_64 =>
        |b| suite::batched_equals_one_by_one(b, "mlp", Some(suite::mlp_rows(64)));
    batched_equals_one_by_one_ranker =>
        |b| suite::batched_equals_one_by_one(b, "ranker", Some(ranker_rows_within_32_bits()));
    batched_equals_one_by_one_multi_io =>
        |b| suite::batched_equals_one_by_one(b, "multi_io", None);
    errors_bad_file => |b| suite::errors_bad_file(b);
    errors_config_mismatch => |b| suite::errors_config_mismatch(b);
}

/// The ranker's golden rows whose ids fit in 32 bits (rows 0 and 1), in the model's order.
fn ranker_rows_within_32_bits() -> Vec<Tensor> {
    let g = golden::read(&model_dir("ranker").join("expected.json"));
    let mut inputs: Vec<Tensor> = g.inputs.iter().map(|t| first_rows(t, 2)).collect();
    inputs.sort_by_key(|t| t.name != "ids");
    inputs
}

fn first_rows(t: &Tensor, n: usize) -> Tensor {
    let rows = t.rows();
    t.split_rows(&[n, rows - n]).unwrap().remove(0)
}

/// The ranker's golden rows whose ids fit in 32 bits match the golden outputs; the rows with
/// ids beyond are refused with an invalid-argument error naming the input, before the engine.
#[test]
fn golden_ranker_within_32_bits_and_wider_ids_refused() {
    let Some(b) = openvino_backend() else { return };
    let (model, _, g) = suite::load(&b, "ranker");
    let ordered = |inputs: &[Tensor]| -> Vec<Tensor> {
        model
            .io()
            .inputs
            .iter()
            .map(|s| inputs.iter().find(|t| t.name == s.name).unwrap().clone())
            .collect()
    };
    let all = ordered(&g.inputs);
    let e = model.check_inputs(&all).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidArgument, "{e}");
    assert!(
        e.message.contains("'ids'") && e.message.contains("32-bit"),
        "{e}"
    );
    assert_eq!(
        model.execute(&all).unwrap_err().code,
        ErrorCode::InvalidArgument
    );
    let out = model
        .execute(&ordered(&ranker_rows_within_32_bits()))
        .unwrap();
    let want = first_rows(&g.outputs[0], 2);
    assert_close(
        "openvino ranker rows 0-1",
        &out[0],
        &want,
        golden_tolerance(want.dtype),
    );
}

/// Every data type: the golden inputs hold 64-bit values beyond 32 bits and are refused; with
/// those replaced by values within, every output matches (FP64 to FP32 precision, in which the
/// plugin computes it), and batched equals one by one.
#[test]
fn golden_dtypes_within_32_bits() {
    let Some(b) = openvino_backend() else { return };
    let (model, _, g) = suite::load(&b, "dtypes");
    let golden: Vec<Tensor> = model
        .io()
        .inputs
        .iter()
        .map(|spec| {
            g.inputs
                .iter()
                .find(|t| t.name == spec.name)
                .unwrap()
                .clone()
        })
        .collect();
    let e = model.execute(&golden).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidArgument, "{e}");
    let rows = golden[0].rows() as i64;
    let small: Vec<i64> = (0..rows * 3).map(|i| (i - 4) * 1_000_003).collect();
    let inputs: Vec<Tensor> = golden
        .iter()
        .map(|t| match t.dtype {
            DataType::Int64 => Tensor::from_vec(&t.name, t.shape.clone(), &small),
            DataType::Uint64 => {
                let u: Vec<u64> = small.iter().map(|v| v.unsigned_abs()).collect();
                Tensor::from_vec(&t.name, t.shape.clone(), &u)
            }
            _ => t.clone(),
        })
        .collect();
    let out = model.execute(&inputs).unwrap();
    for want in &g.outputs {
        let got = out.iter().find(|t| t.name == want.name).unwrap();
        match want.dtype {
            DataType::Int64 => {
                let plus7: Vec<i64> = small.iter().map(|v| v + 7).collect();
                assert_eq!(got.to_vec::<i64>().unwrap(), plus7, "out_int64");
            }
            DataType::Uint64 => {
                let same: Vec<u64> = small.iter().map(|v| v.unsigned_abs()).collect();
                assert_eq!(got.to_vec::<u64>().unwrap(), same, "out_uint64");
            }
            DataType::Fp64 => assert_close(
                "openvino dtypes",
                got,
                want,
                golden_tolerance(DataType::Fp32),
            ),
            _ => assert_close("openvino dtypes", got, want, golden_tolerance(want.dtype)),
        }
    }
    suite::batched_equals_one_by_one(&b, "dtypes", Some(inputs));
}

/// Models with string tensors are refused at load with a message naming the tensor and what
/// to use instead.
#[test]
fn string_tensors_are_a_clear_load_error() {
    let Some(b) = openvino_backend() else { return };
    let dir = model_dir("strings");
    let config = suite::config_of(&dir);
    suite::expect_load_error(
        &b,
        "strings",
        &dir.join("1"),
        &config,
        &["'text'", "BYTES", "onnxruntime"],
    );
}
