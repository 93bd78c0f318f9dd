//! Triton's classification extension: an output requested with `parameters.classification`
//! comes back as the top classes of each batch row, `"<value>:<index>[:<label>]"`, labelled
//! from the output's labels file (`[labels]`, Triton's `label_filename`), over HTTP and gRPC.

mod common;

use common::*;
use kiln_protocol::inference as pb;
use pb::infer_parameter::ParameterChoice;
use pb::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use serde_json::json;

/// `pair` (x FP32 [N,4] -> scaled = 2x, total = sum x) with a labels file for `scaled` that
/// names classes 0 to 2 only.
fn labelled_pair() -> tempfile::TempDir {
    let dir = copy_models(&["pair"]);
    let model = dir.path().join("pair");
    let config = std::fs::read_to_string(model.join("config.toml")).expect("read config");
    std::fs::write(
        model.join("config.toml"),
        format!("{config}\n[labels]\nscaled = \"labels.txt\"\n\n[input_format]\nx = \"NCHW\"\n"),
    )
    .expect("write config");
    std::fs::write(model.join("labels.txt"), "zero\none\ntwo\n").expect("write labels");
    dir
}

const ROWS: [f32; 8] = [1.0, 4.0, 3.0, 2.0, 0.5, 0.5, -1.0, 0.0];

#[tokio::test]
async fn http_returns_top_classes_with_labels() {
    let s = TestServer::temp(labelled_pair(), Options::default()).await;
    let v = s
        .infer_ok(
            "pair",
            &json!({
                "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4], "data": ROWS}],
                "outputs": [
                    {"name": "scaled", "parameters": {"classification": 2}},
                    {"name": "total"}
                ]
            }),
        )
        .await;
    let scaled = &v["outputs"][0];
    assert_eq!(scaled["name"], "scaled");
    assert_eq!(scaled["datatype"], "BYTES");
    assert_eq!(scaled["shape"], json!([2, 2]));
    // class 3 has no label line; equal values keep index order
    assert_eq!(
        scaled["data"],
        json!([
            "8.000000:1:one",
            "6.000000:2:two",
            "1.000000:0:zero",
            "1.000000:1:one"
        ])
    );
    assert_eq!(v["outputs"][1]["data"], json!([10.0, 0.0]));

    // more classes than the row has: all of them
    let v = s
        .infer_ok(
            "pair",
            &json!({
                "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": &ROWS[..4]}],
                "outputs": [{"name": "scaled", "parameters": {"classification": 9}}]
            }),
        )
        .await;
    assert_eq!(v["outputs"][0]["shape"], json!([1, 4]));
    assert_eq!(v["outputs"][0]["data"][3], "2.000000:0:zero");

    let (status, v) = s
        .post(
            "/v2/models/pair/infer",
            &json!({
                "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": &ROWS[..4]}],
                "outputs": [{"name": "scaled", "parameters": {"classification": "two"}}]
            }),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    assert!(
        error_of(&v).contains("output 'scaled': parameters.classification"),
        "{v}"
    );
}

#[tokio::test]
async fn config_and_metadata_show_labels_format_and_the_extension() {
    let s = TestServer::temp(labelled_pair(), Options::default()).await;
    let (status, c) = s.get("/v2/models/pair/config").await;
    assert_eq!(status, 200, "{c}");
    let scaled = c["output"]
        .as_array()
        .expect("outputs")
        .iter()
        .find(|o| o["name"] == "scaled")
        .expect("scaled in the config");
    assert_eq!(scaled["label_filename"], "labels.txt");
    assert_eq!(c["input"][0]["format"], "FORMAT_NCHW", "{c}");
    let (_, m) = s.get("/v2").await;
    assert!(
        m["extensions"]
            .as_array()
            .expect("extensions")
            .contains(&json!("classification")),
        "{m}"
    );
}

#[tokio::test]
async fn grpc_returns_top_classes() {
    let s = TestServer::temp(labelled_pair(), Options::default()).await;
    let raw: Vec<u8> = ROWS[..4].iter().flat_map(|f| f.to_le_bytes()).collect();
    let mut output = InferRequestedOutputTensor {
        name: "scaled".into(),
        ..Default::default()
    };
    output.parameters.insert(
        "classification".into(),
        pb::InferParameter {
            parameter_choice: Some(ParameterChoice::Int64Param(3)),
        },
    );
    let req = pb::ModelInferRequest {
        model_name: "pair".into(),
        inputs: vec![InferInputTensor {
            name: "x".into(),
            datatype: "FP32".into(),
            shape: vec![1, 4],
            ..Default::default()
        }],
        outputs: vec![output],
        raw_input_contents: vec![raw.into()],
        ..Default::default()
    };
    let r = s
        .grpc()
        .await
        .model_infer(req)
        .await
        .expect("infer")
        .into_inner();
    assert_eq!(r.outputs[0].datatype, "BYTES");
    assert_eq!(r.outputs[0].shape, vec![1, 3]);
    let strings = kiln_core::tensor::split_byte_elements(&r.raw_output_contents[0], "scaled")
        .expect("BYTES elements");
    assert_eq!(
        strings,
        [&b"8.000000:1:one"[..], b"6.000000:2:two", b"4.000000:3"]
    );
}

#[tokio::test]
async fn a_missing_labels_file_fails_the_load_naming_it() {
    let dir = labelled_pair();
    std::fs::remove_file(dir.path().join("pair/labels.txt")).expect("remove labels");
    let s = TestServer::temp(dir, Options::default()).await;
    let (status, v) = s.get("/v2/models/pair/ready").await;
    assert_ne!(status, 200, "{v}");
    let index = http_index(&s).await;
    let row = index_row(&index, "pair", None).expect("pair in the index");
    assert!(
        row["reason"]
            .as_str()
            .is_some_and(|r| r.contains("labels.scaled: pair/labels.txt")),
        "{row}"
    );
}
