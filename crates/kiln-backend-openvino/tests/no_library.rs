//! Without a usable OpenVINO library, loading a model on the OpenVINO backend is a clear error
//! naming the flag and the environment variable, and tract models still load. Its own test
//! binary (its own process), since a process keeps the first library it loads.

use kiln_backend_conformance::suite::{model_dir, scratch_model};
use kiln_backend_openvino::OpenVinoBackend;
use kiln_core::backend::Backend;
use kiln_core::ErrorCode;

fn expect_unavailable(backend: &OpenVinoBackend, needles: &[&str]) {
    assert!(!backend.is_available());
    let (_tmp, vdir, config) = scratch_model("mlp", "max_batch_size = 8\n", None);
    let err = match backend.load(&vdir, &config) {
        Ok(_) => panic!("loaded without a library"),
        Err(e) => e,
    };
    assert_eq!(err.code, ErrorCode::Unavailable, "{err}");
    for needle in needles.iter().chain(&[
        "pip install openvino==2026.4.1",
        "--openvino-library",
        "KILN_OPENVINO_LIBRARY",
        "model.onnx",
    ]) {
        assert!(err.message.contains(needle), "missing {needle:?} in: {err}");
    }
}

#[test]
fn missing_library_fails_the_load_with_a_hint_and_tract_still_serves() {
    let missing = "/nonexistent/libopenvino_c.so.2641";
    expect_unavailable(&OpenVinoBackend::new(Some(missing.into())), &[missing]);
    expect_unavailable(&OpenVinoBackend::new(None), &["not found"]);
    let (_tmp, _vdir, config) = scratch_model("mlp", "max_batch_size = 8\n", None);
    kiln_backend_tract::TractBackend
        .load(&model_dir("mlp").join("1"), &config)
        .expect("tract loads without openvino");
}
