//! The OpenVINO backend's own checks: OpenVINO IR models, the model file it picks, its settings
//! and devices, and its metadata. Skipped (with a message) where the library is absent, unless
//! `CI` is set.

mod common;

use common::openvino_backend;
use kiln_backend_conformance::golden::{self, assert_close, golden_tolerance, Tolerance};
use kiln_backend_conformance::repo_root;
use kiln_backend_conformance::suite::{expect_load_error, model_dir, scratch_model};
use kiln_core::backend::{Backend, LoadedModel};
use kiln_core::{ModelConfig, Tensor};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn describe(model: &dyn LoadedModel) -> BTreeMap<String, String> {
    model.describe().into_iter().collect()
}

/// An IR test model directory (`tests/openvino/models`, written by tests/openvino/gen_ir.py).
fn ir_dir(name: &str) -> PathBuf {
    repo_root().join("tests/openvino/models").join(name)
}

fn config(dir: &Path) -> ModelConfig {
    kiln_backend_conformance::suite::config_of(dir)
}

/// The golden inputs of `name` (first `rows` rows) in `model`'s order, and its golden outputs.
fn golden_rows(model: &dyn LoadedModel, name: &str, rows: usize) -> (Vec<Tensor>, Vec<Tensor>) {
    let g = golden::read(&model_dir(name).join("expected.json"));
    let first = |t: &Tensor| {
        let n = t.rows();
        t.split_rows(&[rows, n - rows]).unwrap().remove(0)
    };
    let inputs = model
        .io()
        .inputs
        .iter()
        .map(|s| first(g.inputs.iter().find(|t| t.name == s.name).unwrap()))
        .collect();
    (inputs, g.outputs.iter().map(first).collect())
}

fn check_outputs(context: &str, got: &[Tensor], want: &[Tensor], tol: Option<Tolerance>) {
    for w in want {
        let g = got
            .iter()
            .find(|t| t.name == w.name)
            .unwrap_or_else(|| panic!("{context}: no output '{}'", w.name));
        assert_close(context, g, w, tol.unwrap_or(golden_tolerance(w.dtype)));
    }
}

#[test]
fn ir_models_load_and_match_the_onnx_golden_outputs() {
    let Some(b) = openvino_backend() else { return };
    for (ir, onnx, rows) in [("ranker_ir", "ranker", 2), ("multi_io_ir", "multi_io", 4)] {
        let dir = ir_dir(ir);
        let model = b.load(&dir.join("1"), &config(&dir)).unwrap();
        assert_eq!(describe(model.as_ref())["model_format"], "ir");
        let (inputs, want) = golden_rows(model.as_ref(), onnx, rows);
        let got = model.execute(&inputs).unwrap();
        check_outputs(ir, &got, &want, None);
    }
}

#[test]
fn model_xml_is_found_by_default_and_by_name_and_needs_its_weights() {
    let Some(b) = openvino_backend() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let vdir = tmp.path().join("ranker_ir/1");
    std::fs::create_dir_all(&vdir).unwrap();
    for f in ["model.xml", "model.bin"] {
        std::fs::copy(ir_dir("ranker_ir").join("1").join(f), vdir.join(f)).unwrap();
    }
    let defaults = ModelConfig::parse("max_batch_size = 8", "ranker_ir").unwrap();
    b.load(&vdir, &defaults)
        .expect("model.xml when model.onnx is absent");
    let named = ModelConfig::parse(
        "max_batch_size = 8\ndefault_model_filename = \"model.xml\"",
        "ranker_ir",
    )
    .unwrap();
    b.load(&vdir, &named)
        .expect("default_model_filename = model.xml");
    std::fs::remove_file(vdir.join("model.bin")).unwrap();
    expect_load_error(
        &b,
        "missing weights",
        &vdir,
        &named,
        &["model.bin", "missing"],
    );
}

#[test]
fn settings_reach_the_compiled_model_and_metadata() {
    let Some(b) = openvino_backend() else { return };
    let text =
        "max_batch_size = 64\n[parameters]\ndevice = \"cpu\"\nthreads = 1\nnum_streams = 1\n\
                performance_hint = \"throughput\"\ninference_precision = \"f32\"\n";
    let (_tmp, vdir, config) = scratch_model("mlp", text, None);
    let model = b.load(&vdir, &config).unwrap();
    let d = describe(model.as_ref());
    assert_eq!(d["engine"], "openvino");
    assert_eq!(d["device"], "CPU");
    assert_eq!(d["model_format"], "onnx");
    assert_eq!(d["threads"], "1");
    assert_eq!(d["num_streams"], "1");
    assert_eq!(d["performance_hint"], "THROUGHPUT");
    assert_eq!(d["inference_precision"], "f32");
    assert!(d["openvino_library"].contains("openvino_c"), "{d:?}");
    assert!(d["openvino_version"].starts_with("20"), "{d:?}");
}

#[test]
fn instances_get_a_stream_each_by_default() {
    let Some(b) = openvino_backend() else { return };
    let text = "max_batch_size = 64\n[instance_group]\ncount = 2\nthreads = 1\n";
    let (_tmp, vdir, config) = scratch_model("mlp", text, None);
    let model = b.load(&vdir, &config).unwrap();
    let d = describe(model.as_ref());
    assert_eq!(
        (d["num_streams"].as_str(), d["threads"].as_str()),
        ("2", "2"),
        "{d:?}"
    );
}

#[test]
fn bf16_precision_is_close_to_the_golden_outputs() {
    let Some(b) = openvino_backend() else { return };
    let text = "max_batch_size = 64\n[parameters]\ninference_precision = \"bf16\"\n";
    let (_tmp, vdir, config) = scratch_model("mlp", text, None);
    let model: Arc<dyn LoadedModel> = b.load(&vdir, &config).unwrap();
    // bf16 where the CPU computes it (AVX-512-BF16, AMX); OpenVINO keeps f32 elsewhere
    let precision = describe(model.as_ref())["inference_precision"].clone();
    assert!(["bf16", "f32"].contains(&precision.as_str()), "{precision}");
    let (inputs, want) = golden_rows(model.as_ref(), "mlp", 4);
    let got = model.execute(&inputs).unwrap();
    // bf16 keeps 8 bits of mantissa: the sigmoid output within 1e-2
    check_outputs(
        "bf16",
        &got,
        &want,
        Some(Tolerance {
            abs: 1e-2,
            rel: 1e-2,
        }),
    );
}

#[test]
fn absent_devices_are_a_clear_load_error_and_auto_loads() {
    let Some(b) = openvino_backend() else { return };
    for device in ["GPU", "NPU"] {
        let text = format!("max_batch_size = 8\n[parameters]\ndevice = \"{device}\"\n");
        let (_tmp, vdir, config) = scratch_model("mlp", &text, None);
        match b.load(&vdir, &config) {
            // a machine with the device and its plugin
            Ok(m) => assert_eq!(describe(m.as_ref())["device"], device),
            Err(e) => {
                for needle in ["parameters.device", device, "model.onnx"] {
                    assert!(e.message.contains(needle), "missing {needle:?} in: {e}");
                }
            }
        }
    }
    let text = "max_batch_size = 8\n[parameters]\ndevice = \"AUTO\"\n";
    let (_tmp, vdir, config) = scratch_model("mlp", text, None);
    let model = b.load(&vdir, &config).unwrap();
    let (inputs, want) = golden_rows(model.as_ref(), "mlp", 4);
    check_outputs("AUTO", &model.execute(&inputs).unwrap(), &want, None);
}

#[test]
fn worker_instances_each_run_their_own_request() {
    let Some(b) = openvino_backend() else { return };
    let (_tmp, vdir, config) = scratch_model("mlp", "max_batch_size = 64\n", None);
    let model = b.load(&vdir, &config).unwrap();
    let (inputs, want) = golden_rows(model.as_ref(), "mlp", 4);
    let mut instances: Vec<_> = (0..3)
        .map(|_| model.create_instance().unwrap().unwrap())
        .collect();
    std::thread::scope(|s| {
        for inst in instances.iter_mut() {
            let (inputs, want) = (&inputs, &want);
            s.spawn(move || {
                for _ in 0..20 {
                    check_outputs("instance", &inst.execute(inputs).unwrap(), want, None);
                }
            });
        }
    });
    // execute builds another request once the load-time one went to an instance
    check_outputs("execute", &model.execute(&inputs).unwrap(), &want, None);
}
