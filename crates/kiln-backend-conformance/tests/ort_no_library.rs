//! Without a usable onnxruntime library, loading a model on the ONNX Runtime backend is a clear
//! error saying how to get the library, and tract models still load. Its own test binary (its
//! own process), since a process keeps the first library it loads.

use kiln_backend_conformance::suite::{model_dir, scratch_model};
use kiln_backend_ort::OrtBackend;
use kiln_core::backend::Backend;
use kiln_core::ErrorCode;

#[test]
fn missing_library_fails_the_load_with_a_hint_and_tract_still_serves() {
    let ort = OrtBackend::new(Some("/nonexistent/libonnxruntime.so.1.32.0".into()));
    assert!(!ort.is_available());
    let (_tmp, vdir, config) = scratch_model("mlp", "max_batch_size = 8\n", None);
    let err = match ort.load(&vdir, &config) {
        Ok(_) => panic!("loaded without a library"),
        Err(e) => e,
    };
    assert_eq!(err.code, ErrorCode::Unavailable, "{err}");
    for needle in [
        "/nonexistent/libonnxruntime.so.1.32.0",
        "pip install onnxruntime==1.32.0",
        "--ort-library",
        "model.onnx",
    ] {
        assert!(err.message.contains(needle), "missing {needle:?} in: {err}");
    }
    let tract = kiln_backend_tract::TractBackend;
    tract
        .load(&model_dir("mlp").join("1"), &config)
        .expect("tract loads without onnxruntime");
}
