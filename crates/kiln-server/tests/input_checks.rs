//! Inputs checked against what the engine derives, warm-up and non-finite inputs, end to end:
//! a width the file leaves symbolic but the weights fix is served as fixed (metadata, config)
//! and another width is a 400 naming both shapes; warm-up sends BYTES a parsing model accepts,
//! fails a load with the shapes it tried and how to set explicit ones, and runs the
//! `[[model_warmup]]` samples of config.toml; `reject_non_finite_inputs` refuses NaN and
//! infinities with the input and the element's index. Fixtures: `tests/fixtures/checks`,
//! written by `tests/fixtures/gen_fixtures.py`.

mod common;

use common::*;
use kiln_protocol::inference as pb;
use serde_json::{json, Value};
use tempfile::TempDir;

/// A temporary repository with copies of the named `tests/fixtures/checks` models.
fn checks_repo(names: &[&str]) -> TempDir {
    let dir = tempfile::tempdir().expect("temporary directory");
    for name in names {
        copy_dir(&fixture_file("checks").join(name), &dir.path().join(name));
    }
    dir
}

fn x_request(rows: usize, width: usize, values: &[f32]) -> Value {
    json!({ "inputs": [{ "name": "x", "datatype": "FP32", "shape": [rows, width], "data": values }] })
}

/// The index row of `model`, which must be UNAVAILABLE; its reason.
async fn load_failure(s: &TestServer, model: &str) -> String {
    let index = http_index(s).await;
    let row = index_row(&index, model, None).unwrap_or_else(|| panic!("{model}: {index}"));
    assert_eq!(row["state"], "UNAVAILABLE", "{index}");
    row["reason"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_width_fixed_by_the_weights_is_served_and_checked() {
    let s = TestServer::temp(checks_repo(&["widths"]), Options::default()).await;
    let (status, meta) = s.get("/v2/models/widths").await;
    assert_eq!(status, 200, "{meta}");
    assert_eq!(meta["inputs"][0]["shape"], json!([-1, 4]), "{meta}");
    let (status, config) = s.get("/v2/models/widths/config").await;
    assert_eq!(status, 200, "{config}");
    assert_eq!(config["input"][0]["dims"], json!([4]), "{config}");

    for width in [3usize, 5] {
        let (status, body) = s
            .post(
                "/v2/models/widths/infer",
                &x_request(2, width, &vec![1.0; 2 * width]),
            )
            .await;
        assert_eq!(status, 400, "width {width}: {body}");
        let msg = error_of(&body);
        for needle in ["'x'", &format!("got [2,{width}]"), "Expected [-1,4]"] {
            assert!(msg.contains(needle), "width {width}: {needle} in {msg}");
        }
    }
    // W = [[0, 1], [2, 3], [4, 5], [6, 7]]: a row of ones gives the column sums
    let resp = s.infer_ok("widths", &x_request(2, 4, &[1.0; 8])).await;
    assert_eq!(output_floats(&resp, "y"), vec![12.0, 16.0, 12.0, 16.0]);

    // gRPC: the same dims in metadata, the same refusal
    let mut grpc = s.grpc().await;
    let meta = grpc
        .model_metadata(pb::ModelMetadataRequest {
            name: "widths".into(),
            version: String::new(),
        })
        .await
        .expect("metadata")
        .into_inner();
    assert_eq!(meta.inputs[0].shape, vec![-1, 4]);
    let mut req = grpc_mlp(&[vec![1.0; 3]], "narrow");
    req.model_name = "widths".into();
    req.inputs[0].shape = vec![1, 3];
    let e = grpc.model_infer(req).await.expect_err("width 3 refused");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("Expected [-1,4]"), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_up_sends_bytes_a_parsing_model_accepts() {
    let s = TestServer::temp(checks_repo(&["parse"]), Options::default()).await;
    let body = json!({ "inputs": [{ "name": "text", "datatype": "BYTES", "shape": [2, 1], "data": ["2.5", "-1"] }] });
    let resp = s.infer_ok("parse", &body).await;
    assert_eq!(output_floats(&resp, "y"), vec![2.5, -1.0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_warm_up_names_the_shapes_and_the_fix() {
    let s = TestServer::temp(checks_repo(&["halves"]), Options::default()).await;
    let reason = load_failure(&s, "halves").await;
    for needle in ["warm-up", "x [1, 1]", "[[model_warmup]]", "warmup = false"] {
        assert!(reason.contains(needle), "{needle} in {reason}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_up_samples_of_config_toml_are_run() {
    let dir = checks_repo(&["halves", "widths"]);
    let root = dir.path().to_path_buf();
    let sample = |name: &str, dims: &str, data: &str| {
        format!(
            "[[model_warmup]]\nname = \"{name}\"\nbatch_size = 2\ncount = 2\n\
             [model_warmup.inputs.x]\ndims = {dims}\ndata_type = \"FP32\"\n{data}\n"
        )
    };
    let config = format!(
        "max_batch_size = 8\n{}{}",
        sample("zeros", "[4]", "zero_data = true"),
        sample("from file", "[4]", "input_data_file = \"x.bin\"")
    );
    write_config(&root, "halves", &config);
    std::fs::create_dir_all(root.join("halves/warmup")).unwrap();
    std::fs::write(root.join("halves/warmup/x.bin"), f32_bytes(&[0.5; 8])).unwrap();
    // a sample the graph cannot run fails the load, naming the sample and its shapes
    write_config(
        &root,
        "widths",
        &format!(
            "max_batch_size = 8\n{}",
            sample("odd", "[3]", "random_data = true")
        ),
    );
    let s = TestServer::temp(dir, Options::default()).await;
    let resp = s
        .infer_ok("halves", &x_request(1, 4, &[1.0, 2.0, 3.0, 4.0]))
        .await;
    assert_eq!(output_floats(&resp, "y"), vec![-2.0, -2.0]);
    let reason = load_failure(&s, "widths").await;
    for needle in ["model_warmup 'odd'", "'x'", "[2, 3]", "[-1, 4]"] {
        assert!(reason.contains(needle), "{needle} in {reason}");
    }
}

/// A binary-extension request of `x` FP32 [1, 4] holding `values`.
fn binary_x(values: &[f32]) -> (Vec<u8>, usize) {
    let header = json!({ "inputs": [{ "name": "x", "datatype": "FP32", "shape": [1, 4],
        "parameters": { "binary_data_size": 16 } }] });
    binary_body(&header, &f32_bytes(values))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_finite_inputs_are_refused_when_the_model_asks() {
    let dir = copy_models(&["pair"]);
    let root = dir.path().to_path_buf();
    copy_dir(&root.join("pair"), &root.join("strict"));
    write_config(
        &root,
        "strict",
        "max_batch_size = 8\nreject_non_finite_inputs = true\n",
    );
    let s = TestServer::temp(dir, Options::default()).await;
    let cases = [
        (f32::NAN, "NaN"),
        (f32::INFINITY, "Infinity"),
        (f32::NEG_INFINITY, "-Infinity"),
    ];
    for (bad, name) in cases {
        let (body, len) = binary_x(&[1.0, 2.0, bad, 4.0]);
        let (status, _, answer) = s
            .post_bytes("/v2/models/strict/infer", body.clone(), Some(len))
            .await;
        let answer: Value = serde_json::from_slice(&answer).unwrap_or(Value::Null);
        assert_eq!(status, 400, "{name}: {answer}");
        let msg = error_of(&answer);
        for needle in ["'x'", "element 2", name, "reject_non_finite_inputs"] {
            assert!(msg.contains(needle), "{needle} in {msg}");
        }
        // without the option the same request is computed
        let (status, _, _) = s.post_bytes("/v2/models/pair/infer", body, Some(len)).await;
        assert_eq!(status, 200, "{name} on pair");
    }
    let (body, len) = binary_x(&[1.0, 2.0, 3.0, 4.0]);
    let (status, _, _) = s
        .post_bytes("/v2/models/strict/infer", body, Some(len))
        .await;
    assert_eq!(status, 200);
}
