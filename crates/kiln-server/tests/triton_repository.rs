//! A model repository in Triton's layout, `config.pbtxt` files only (`examples/triton_models`,
//! written by examples/gen_triton_models.py): an ONNX model, a second one named by
//! `default_model_filename`, and an ensemble over both, served unchanged and checked against
//! the outputs onnxruntime computes (`expected.json`); their configurations read back as Triton
//! shows them. Broken `config.pbtxt` files (truncated, wrong types, unknown fields, unsupported
//! settings) are refused with a message naming the file, load nothing, and leave a serving
//! version serving.

mod common;

use common::*;
use kiln_protocol::inference as pb;
use kiln_runtime::ControlMode;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

fn triton_models() -> PathBuf {
    kiln_testkit::repo_root().join("examples/triton_models")
}

fn expected() -> Value {
    let text = std::fs::read_to_string(triton_models().join("expected.json"))
        .expect("examples/triton_models/expected.json");
    serde_json::from_str(&text).expect("expected.json is JSON")
}

/// The onnxruntime backend when its library is here; `None` after saying why the test skips.
fn ort(test: &str) -> Option<Arc<dyn kiln_core::backend::Backend>> {
    let path = kiln_testkit::ort_library(test)?;
    let b = kiln_backend_ort::OrtBackend::new(Some(path));
    match b.probe() {
        Ok(_) => Some(Arc::new(b)),
        Err(why) => {
            kiln_testkit::skip(test, format!("onnxruntime library unusable: {why}"));
            None
        }
    }
}

/// A server over a copy of the Triton example repository; polls only when a test asks.
async fn server(test: &str) -> Option<TestServer> {
    let dir = tempfile::tempdir().expect("temporary directory");
    copy_dir(&triton_models(), dir.path());
    let opts = Options {
        mode: ControlMode::Poll(Duration::from_secs(3600)),
        extra_backends: vec![ort(test)?],
        ..Options::default()
    };
    Some(TestServer::temp(dir, opts).await)
}

/// The request of one `expected.json` case, and its expected outputs by name.
fn case(model: &str) -> (Value, Vec<(String, Vec<f32>)>) {
    let e = &expected()[model];
    let request = json!({ "inputs": e["inputs"] });
    let outputs = e["outputs"]
        .as_array()
        .expect("outputs")
        .iter()
        .map(|o| (o["name"].as_str().unwrap().to_string(), floats(&o["data"])))
        .collect();
    (request, outputs)
}

async fn check_outputs(s: &TestServer, model: &str) {
    let (request, want) = case(model);
    let got = s.infer_ok(model, &request).await;
    for (name, values) in want {
        assert_close(
            &output_floats(&got, &name),
            &values,
            GOLDEN_TOL,
            &format!("{model} {name}"),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_a_triton_repository_unchanged() {
    let Some(s) = server("triton_repository serves").await else {
        return;
    };
    for model in ["linear", "scale", "linear_scale"] {
        check_outputs(&s, model).await;
    }

    // the ensemble over gRPC too
    let (request, want) = case("linear_scale");
    let x = floats(&request["inputs"][0]["data"]);
    let mut c = s.grpc().await;
    let r = c
        .model_infer(pb::ModelInferRequest {
            model_name: "linear_scale".into(),
            inputs: vec![pb::model_infer_request::InferInputTensor {
                name: "x".into(),
                datatype: "FP32".into(),
                shape: vec![4, 4],
                contents: Some(pb::InferTensorContents {
                    fp32_contents: x,
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .expect("gRPC ensemble inference")
        .into_inner();
    assert_close(
        &grpc_floats(&r, 0),
        &want[0].1,
        GOLDEN_TOL,
        "gRPC linear_scale",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configurations_read_back_as_triton_shows_them() {
    let Some(s) = server("triton_repository config").await else {
        return;
    };
    let (status, c) = s.get("/v2/models/linear/config").await;
    assert_eq!(status, 200, "{c}");
    assert_eq!(c["name"], "linear");
    assert_eq!(c["platform"], "onnxruntime_onnx");
    assert_eq!(c["backend"], "onnxruntime");
    assert_eq!(c["max_batch_size"], 8);
    assert_eq!(
        c["version_policy"],
        json!({ "latest": { "num_versions": 1 } })
    );
    assert_eq!(c["input"][0]["name"], "INPUT0");
    assert_eq!(c["input"][0]["data_type"], "TYPE_FP32");
    assert_eq!(c["input"][0]["dims"], json!([4]));
    assert_eq!(c["output"][0]["dims"], json!([3]));
    let db = &c["dynamic_batching"];
    assert_eq!(db["preferred_batch_size"], json!([4, 8]));
    assert_eq!(db["max_queue_delay_microseconds"], 100);
    assert_eq!(db["default_queue_policy"]["max_queue_size"], 64);
    assert_eq!(
        db["default_queue_policy"]["default_timeout_microseconds"],
        5_000_000
    );
    assert_eq!(c["instance_group"][0]["count"], 2);
    assert_eq!(c["instance_group"][0]["kind"], "KIND_CPU");
    assert_eq!(c["default_model_filename"], "model.onnx");

    let (_, c) = s.get("/v2/models/scale/config").await;
    assert_eq!(c["default_model_filename"], "scale.onnx");
    assert_eq!(
        c["parameters"]["intra_op_threads"],
        json!({ "string_value": "1" })
    );

    let (_, c) = s.get("/v2/models/linear_scale/config").await;
    assert_eq!(c["platform"], "ensemble");
    let steps = &c["ensemble_scheduling"]["step"];
    assert_eq!(steps[0]["model_name"], "linear");
    assert_eq!(steps[0]["model_version"], -1);
    assert_eq!(steps[0]["input_map"], json!({ "INPUT0": "x" }));
    assert_eq!(steps[1]["model_name"], "scale");
    assert_eq!(steps[1]["model_version"], 1);
    assert_eq!(steps[1]["output_map"], json!({ "OUTPUT0": "y" }));
    let (_, m) = s.get("/v2/models/linear_scale").await;
    assert_eq!(m["inputs"][0]["shape"], json!([-1, 4]), "{m}");
}

/// Broken configurations, each with a piece of the message it must be refused with.
const BROKEN: &[(&str, &str)] = &[
    ("name: \"linear\"\nmax_batch_size: 8\ninput [ { name: \"INPUT0\"", "end of input"),
    ("max_batch_size: \"eight\"", "2:17"),
    ("max_batch_size: 8\nmax_batch_sise: 8", "max_batch_sise"),
    ("max_batch_size: 8\nsequence_batching { }", "sequence_batching"),
    ("platform: \"tensorrt_plan\"", "platform"),
    (
        "max_batch_size: 8\ninstance_group [ { kind: KIND_GPU } ]",
        "instance_group[0].kind",
    ),
    (
        "input [ { name: \"INPUT0\" data_type: TYPE_FP32 dims: [ 4 ] optional: true } ]",
        "input[0].optional",
    ),
    (
        "optimization { execution_accelerators { cpu_execution_accelerator [ { name: \"openvino\" } ] } }",
        "optimization.execution_accelerators",
    ),
];

fn write_pbtxt(root: &Path, model: &str, text: &str) {
    // a first line, so that line numbers in messages are those of the file
    std::fs::write(
        root.join(model).join("config.pbtxt"),
        format!("# broken on purpose\n{text}"),
    )
    .expect("write config.pbtxt");
}

fn reason(s: &TestServer, model: &str) -> String {
    s.repo
        .index()
        .into_iter()
        .filter(|e| e.name == model)
        .map(|e| e.reason)
        .collect::<Vec<_>>()
        .join("; ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_config_pbtxt_loads_nothing_and_keeps_the_serving_version() {
    let Some(s) = server("triton_repository broken").await else {
        return;
    };
    // a new model with a broken file: refused, nothing loaded
    let fresh = s.root.join("fresh");
    copy_dir(&s.root.join("linear"), &fresh);
    for (text, wanted) in BROKEN {
        write_pbtxt(&s.root, "fresh", text);
        s.repo.poll().await;
        assert!(
            s.repo.get("fresh", None).is_err(),
            "{text}: loaded a broken configuration"
        );
        let why = reason(&s, "fresh");
        assert!(
            why.contains("fresh/config.pbtxt") && why.contains(wanted),
            "{text}\n  -> {why}\n  (expected {wanted:?})"
        );
    }
    // both files: refused
    std::fs::write(fresh.join("config.toml"), "max_batch_size = 8\n").expect("config.toml");
    std::fs::copy(
        s.root.join("linear/config.pbtxt"),
        fresh.join("config.pbtxt"),
    )
    .expect("copy config.pbtxt");
    s.repo.poll().await;
    assert!(s.repo.get("fresh", None).is_err());
    assert!(
        reason(&s, "fresh").contains("both config.toml and config.pbtxt"),
        "{}",
        reason(&s, "fresh")
    );

    // a serving model whose config.pbtxt breaks keeps serving the version it has
    let good = std::fs::read_to_string(s.root.join("linear/config.pbtxt")).expect("read");
    for (text, wanted) in BROKEN {
        write_pbtxt(&s.root, "linear", text);
        s.repo.poll().await;
        check_outputs(&s, "linear").await;
        check_outputs(&s, "linear_scale").await;
        let why = reason(&s, "linear");
        assert!(
            why.contains("linear/config.pbtxt") && why.contains(wanted),
            "{text}\n  -> {why}\n  (expected {wanted:?})"
        );
    }
    std::fs::write(s.root.join("linear/config.pbtxt"), good).expect("restore");
    s.repo.poll().await;
    check_outputs(&s, "linear").await;
}
