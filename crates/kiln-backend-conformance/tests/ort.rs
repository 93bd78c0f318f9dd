//! The conformance suite against the ONNX Runtime backend, plus its own settings, execution
//! provider and metadata checks. Skipped (with a message) where the library is absent, unless
//! `CI` is set.

use kiln_backend_conformance::golden::{self, assert_close, golden_tolerance};
use kiln_backend_conformance::ort_backend;
use kiln_backend_conformance::suite::{expect_load_error, model_dir, scratch_model};
use kiln_core::backend::{Backend, LoadedModel};
use kiln_core::Tensor;
use std::collections::BTreeMap;
use std::sync::Arc;

kiln_backend_conformance::conformance_tests!(ort_backend());

const MLP_IO: &str = "max_batch_size = 64\n";

fn describe(model: &dyn LoadedModel) -> BTreeMap<String, String> {
    model.describe().into_iter().collect()
}

/// Runs the mlp golden rows through `model` and checks them.
fn check_mlp(model: &Arc<dyn LoadedModel>, context: &str) {
    let g = golden::read(&model_dir("mlp").join("expected.json"));
    let out = model
        .execute(&g.inputs)
        .unwrap_or_else(|e| panic!("{context}: {e}"));
    assert_close(
        context,
        &out[0],
        &g.outputs[0],
        golden_tolerance(g.outputs[0].dtype),
    );
}

#[test]
fn metadata_names_engine_provider_and_library() {
    let Some(b) = ort_backend() else { return };
    let (_tmp, vdir, config) = scratch_model("mlp", MLP_IO, None);
    let model = b.load(&vdir, &config).unwrap();
    let d = describe(model.as_ref());
    assert_eq!(d["engine"], "onnxruntime");
    assert_eq!(d["execution_provider"], "cpu");
    assert_eq!(d["graph_optimization_level"], "all");
    assert_eq!(d["intra_op_threads"], "1");
    assert!(d["onnxruntime_library"].contains("onnxruntime"), "{d:?}");
}

#[test]
fn unavailable_gpu_provider_is_a_load_error_without_fallback() {
    let Some(b) = ort_backend() else { return };
    for kind in ["cuda", "tensorrt"] {
        let config = format!("{MLP_IO}[parameters]\nexecution_providers = [{{ kind = \"{kind}\", device_id = 0 }}]\n");
        let (_tmp, vdir, config) = scratch_model("mlp", &config, None);
        // a CPU-only library refuses at once; a GPU build on a machine without a GPU at session creation
        expect_load_error(&b, kind, &vdir, &config, &[kind, "model.onnx"]);
    }
}

#[test]
fn unavailable_gpu_provider_falls_back_to_cpu_when_allowed() {
    let Some(b) = ort_backend() else { return };
    let config = format!(
        "{MLP_IO}[parameters]\nallow_cpu_fallback = true\nexecution_providers = [\n  \
         {{ kind = \"tensorrt\", device_id = 0, fp16 = true, cache_dir = \"/tmp/kiln-trt-cache\" }},\n  \
         {{ kind = \"cuda\", device_id = 0 }},\n  {{ kind = \"cpu\" }},\n]\n"
    );
    let (_tmp, vdir, config) = scratch_model("mlp", &config, None);
    let model = b.load(&vdir, &config).unwrap();
    let provider = describe(model.as_ref())["execution_provider"].clone();
    if provider.starts_with("cpu (") {
        assert!(
            provider.contains("tensorrt unavailable") && provider.contains("cuda unavailable"),
            "{provider}"
        );
    } else {
        // a GPU machine with a GPU build: the providers are in use
        assert!(provider.starts_with("tensorrt"), "{provider}");
    }
    check_mlp(&model, "fallback");
}

#[test]
fn settings_are_applied_and_do_not_change_results() {
    let Some(b) = ort_backend() else { return };
    for level in ["disable", "basic", "extended", "all"] {
        let config = format!(
            "{MLP_IO}[parameters]\ngraph_optimization_level = \"{level}\"\nintra_op_threads = 2\ninter_op_threads = 2\n"
        );
        let (_tmp, vdir, config) = scratch_model("mlp", &config, None);
        let model = b.load(&vdir, &config).unwrap();
        let d = describe(model.as_ref());
        assert_eq!(
            (
                d["graph_optimization_level"].as_str(),
                d["intra_op_threads"].as_str()
            ),
            (level, "2")
        );
        assert_eq!(d["inter_op_threads"], "2");
        check_mlp(&model, level);
    }
    // intra_op_threads defaults to instance_group.threads
    let (_tmp, vdir, config) = scratch_model(
        "mlp",
        &format!("{MLP_IO}[instance_group]\nthreads = 2\n"),
        None,
    );
    assert_eq!(
        describe(b.load(&vdir, &config).unwrap().as_ref())["intra_op_threads"],
        "2"
    );
}

#[test]
fn unknown_or_bad_parameters_name_the_field() {
    let Some(b) = ort_backend() else { return };
    let cases = [
        ("intra_op_thread = 2", "intra_op_thread"),
        (
            "graph_optimization_level = \"max\"",
            "graph_optimization_level",
        ),
        (
            "execution_providers = [{ kind = \"cuda\", gpu = 0 }]",
            "gpu",
        ),
        ("execution_providers = [{ kind = \"npu\" }]", "npu"),
        ("intra_op_threads = 0", "intra_op_threads"),
    ];
    for (param, needle) in cases {
        let (_tmp, vdir, config) =
            scratch_model("mlp", &format!("{MLP_IO}[parameters]\n{param}\n"), None);
        let err = expect_load_error(&b, param, &vdir, &config, &[needle]);
        assert!(err.starts_with("parameters"), "{param}: {err}");
    }
}

#[test]
fn every_instance_owns_a_working_session() {
    let Some(b) = ort_backend() else { return };
    let (_tmp, vdir, config) = scratch_model("mlp", MLP_IO, None);
    let model = b.load(&vdir, &config).unwrap();
    let g = golden::read(&model_dir("mlp").join("expected.json"));
    let mut instances: Vec<_> = (0..3)
        .map(|_| model.create_instance().unwrap().unwrap())
        .collect();
    let handles: Vec<_> = instances
        .drain(..)
        .map(|mut inst| {
            let inputs: Vec<Tensor> = g.inputs.clone();
            std::thread::spawn(move || {
                (0..20)
                    .map(|_| inst.execute(&inputs).unwrap())
                    .last()
                    .unwrap()
            })
        })
        .collect();
    for h in handles {
        let out = h.join().unwrap();
        assert_close(
            "instance",
            &out[0],
            &g.outputs[0],
            golden_tolerance(g.outputs[0].dtype),
        );
    }
    // execute after every load-time session was handed out builds another
    check_mlp(&model, "execute after instances");
}

#[test]
fn unaligned_input_buffers_are_copied() {
    let Some(b) = ort_backend() else { return };
    let (_tmp, vdir, config) = scratch_model("mlp", MLP_IO, None);
    let model = b.load(&vdir, &config).unwrap();
    let g = golden::read(&model_dir("mlp").join("expected.json"));
    let x = &g.inputs[0];
    let mut raw = vec![0u8];
    raw.extend_from_slice(&x.data);
    let shifted = bytes::Bytes::from(raw).slice(1..);
    let odd = Tensor {
        data: shifted,
        ..x.clone()
    };
    let out = model.execute(&[odd]).unwrap();
    assert_close(
        "unaligned",
        &out[0],
        &g.outputs[0],
        golden_tolerance(g.outputs[0].dtype),
    );
}

#[test]
fn a_width_the_graph_cannot_multiply_is_invalid_argument() {
    let Some(b) = ort_backend() else { return };
    // run directly, past the served dims' check: onnxruntime's own refusal is a 400 too
    let (_tmp, vdir, config) = scratch_model("pinned", "max_batch_size = 8\n", None);
    let model = b.load(&vdir, &config).unwrap();
    let rows =
        |name: &str, w: usize| Tensor::from_vec(name, vec![2, w as i64], &vec![0.5f32; 2 * w]);
    for (x, z) in [(3, 5), (4, 4)] {
        let e = match model.execute(&[rows("x", x), rows("z", z)]) {
            Ok(out) => panic!("x {x}, z {z}: computed {out:?}"),
            Err(e) => e,
        };
        assert_eq!(
            e.code,
            kiln_core::ErrorCode::InvalidArgument,
            "x {x}, z {z}: {e}"
        );
    }
}
