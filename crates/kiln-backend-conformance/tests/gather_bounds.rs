//! A raw `Gather` over an INT64 input (the kiln-server fixture `gather`: ids [N,3] -> rows of a
//! 10-row table, table[i] = [i, -10 i]): on every backend an id outside -10..=9 is a 400 naming
//! the input, the value and the range, found before compute, and the model keeps answering.
//! On tract, the old behaviour was a panic inside the engine.

use kiln_backend_conformance::{ort_backend, repo_root};
use kiln_backend_tract::TractBackend;
use kiln_core::backend::{Backend, LoadedModel};
use kiln_core::{ErrorCode, ModelConfig, Tensor};
use std::sync::Arc;

fn load(backend: &dyn Backend) -> Arc<dyn LoadedModel> {
    let dir = repo_root().join("crates/kiln-server/tests/fixtures/models/gather");
    let config = ModelConfig::from_file(&dir.join("config.toml"), "gather").expect("config");
    backend.load(&dir.join("1"), &config).expect("gather loads")
}

fn ids(values: &[i64]) -> Tensor {
    Tensor::from_vec("ids", vec![(values.len() / 3) as i64, 3], values)
}

fn check(backend: &dyn Backend) {
    let model = load(backend);
    for (bad, at) in [(10i64, 1usize), (-11, 2), (i64::MAX, 4)] {
        let mut v = vec![0, 1, 2, 3, 4, 5];
        v[at] = bad;
        let t = ids(&v);
        let e = model
            .check_inputs(std::slice::from_ref(&t))
            .expect_err("checked before compute");
        assert_eq!(e.code, ErrorCode::InvalidArgument, "{}", e.message);
        for part in [
            "input 'ids'".to_string(),
            format!("value {bad} at element {at}"),
            "-10..=9".to_string(),
        ] {
            assert!(e.message.contains(&part), "{part:?} in {}", e.message);
        }
        // execute checks too, so a direct call never reaches the engine with it
        let e = model.execute(&[t]).expect_err("refused");
        assert_eq!(e.code, ErrorCode::InvalidArgument, "{}", e.message);
    }
    let out = model
        .execute(&[ids(&[0, 9, -1, 3, -10, 5])])
        .expect("valid ids");
    assert_eq!(out[0].shape, [2, 3, 2]);
    assert_eq!(
        out[0].to_vec::<f32>().unwrap(),
        [0., 0., 9., -90., 9., -90., 3., -30., 0., 0., 5., -50.]
    );
}

#[test]
fn tract_refuses_ids_outside_the_table() {
    check(&TractBackend);
}

#[test]
fn onnxruntime_refuses_ids_outside_the_table() {
    let Some(b) = ort_backend() else { return };
    check(&b);
}
