//! gRPC inference end to end: ModelInfer with raw and typed contents (FP32 and INT64) against
//! the golden outputs, requested outputs, error codes, and ModelStreamInfer with several
//! requests on one stream answered by id (errors included).

mod common;

use common::*;
use kiln_protocol::inference as pb;
use pb::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use serde_json::Value;
use tonic::Code;

fn golden_data(g: &Value, io: &str, i: usize) -> Vec<f32> {
    floats(&g[io][i]["data"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infer_with_raw_and_typed_contents() {
    let s = TestServer::examples().await;
    let mut c = s.grpc().await;

    // mlp, raw contents.
    let g = golden("mlp");
    let x = golden_data(&g, "inputs", 0);
    let rows: Vec<Vec<f32>> = x.chunks(256).map(|r| r.to_vec()).collect();
    let mut req = grpc_mlp(&rows, "raw-1");
    req.outputs = vec![InferRequestedOutputTensor {
        name: "y".into(),
        ..Default::default()
    }];
    let r = c.model_infer(req).await.unwrap().into_inner();
    assert_eq!(
        (
            r.model_name.as_str(),
            r.model_version.as_str(),
            r.id.as_str()
        ),
        ("mlp", "1", "raw-1")
    );
    assert_eq!(r.outputs.len(), 1);
    assert_eq!(
        (r.outputs[0].name.as_str(), r.outputs[0].datatype.as_str()),
        ("y", "FP32")
    );
    assert_eq!(r.outputs[0].shape, [4, 1]);
    assert_close(
        &grpc_floats(&r, 0),
        &golden_data(&g, "outputs", 0),
        GOLDEN_TOL,
        "mlp raw",
    );

    // mlp, typed contents.
    let req = pb::ModelInferRequest {
        model_name: "mlp".into(),
        model_version: "1".into(),
        inputs: vec![InferInputTensor {
            name: "x".into(),
            datatype: "FP32".into(),
            shape: vec![4, 256],
            contents: Some(pb::InferTensorContents {
                fp32_contents: x.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    let r = c.model_infer(req).await.unwrap().into_inner();
    assert!(r.id.is_empty());
    assert_close(
        &grpc_floats(&r, 0),
        &golden_data(&g, "outputs", 0),
        GOLDEN_TOL,
        "mlp typed",
    );

    // ranker, typed contents: INT64 ids and FP32 dense.
    let g = golden("ranker");
    let ids: Vec<i64> = g["inputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    let req = pb::ModelInferRequest {
        model_name: "ranker".into(),
        id: "typed-ranker".into(),
        inputs: vec![
            InferInputTensor {
                name: "ids".into(),
                datatype: "INT64".into(),
                shape: vec![4, 8],
                contents: Some(pb::InferTensorContents {
                    int64_contents: ids.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            InferInputTensor {
                name: "dense".into(),
                datatype: "FP32".into(),
                shape: vec![4, 13],
                contents: Some(pb::InferTensorContents {
                    fp32_contents: golden_data(&g, "inputs", 1),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let r = c.model_infer(req.clone()).await.unwrap().into_inner();
    assert_eq!(r.id, "typed-ranker");
    assert_eq!(r.outputs[0].name, "score");
    assert_close(
        &grpc_floats(&r, 0),
        &golden_data(&g, "outputs", 0),
        GOLDEN_TOL,
        "ranker typed",
    );

    // ranker, raw contents.
    let mut raw = req;
    raw.raw_input_contents = vec![
        ids.iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>()
            .into(),
        f32_bytes(&golden_data(&g, "inputs", 1)).into(),
    ];
    for i in &mut raw.inputs {
        i.contents = None;
    }
    let r = c.model_infer(raw).await.unwrap().into_inner();
    assert_close(
        &grpc_floats(&r, 0),
        &golden_data(&g, "outputs", 0),
        GOLDEN_TOL,
        "ranker raw",
    );

    // Errors carry their codes.
    let mut bad = grpc_mlp(&[row(1)], "bad");
    bad.inputs[0].shape = vec![1, 255];
    bad.raw_input_contents = vec![f32_bytes(&row(1)[..255]).into()];
    let e = c.model_infer(bad).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("'x'"), "{e:?}");
    let mut unknown = grpc_mlp(&[row(1)], "");
    unknown.model_name = "nope".into();
    assert_eq!(
        c.model_infer(unknown).await.unwrap_err().code(),
        Code::NotFound
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_infer_answers_every_request_by_id() {
    let s = TestServer::examples().await;
    let mut c = s.grpc().await;
    let g = golden("mlp");
    let x = golden_data(&g, "inputs", 0);
    let y = golden_data(&g, "outputs", 0);
    let mut reqs: Vec<pb::ModelInferRequest> = x
        .chunks(256)
        .enumerate()
        .map(|(i, r)| grpc_mlp(&[r.to_vec()], &format!("g{i}")))
        .collect();
    let both: Vec<Vec<f32>> = x.chunks(256).take(2).map(|r| r.to_vec()).collect();
    reqs.push(grpc_mlp(&both, "pair"));
    let mut bad = grpc_mlp(&[row(1)], "bad");
    bad.inputs[0].datatype = "INT32".into();
    reqs.push(bad);
    let n = reqs.len();

    let mut stream = c
        .model_stream_infer(tokio_stream::iter(reqs))
        .await
        .unwrap()
        .into_inner();
    let mut seen = std::collections::BTreeMap::new();
    while let Some(msg) = stream.message().await.unwrap() {
        let r = msg.infer_response.clone().expect("infer_response");
        assert!(
            seen.insert(r.id.clone(), msg).is_none(),
            "id {} answered twice",
            r.id
        );
        if seen.len() == n {
            break;
        }
    }
    assert_eq!(
        seen.len(),
        n,
        "answers: {:?}",
        seen.keys().collect::<Vec<_>>()
    );
    for i in 0..4 {
        let msg = &seen[&format!("g{i}")];
        assert!(msg.error_message.is_empty(), "{}", msg.error_message);
        let r = msg.infer_response.as_ref().unwrap();
        assert_eq!(r.model_version, "1");
        assert_close(
            &grpc_floats(r, 0),
            &y[i..i + 1],
            GOLDEN_TOL,
            &format!("stream g{i}"),
        );
    }
    let r = seen["pair"].infer_response.as_ref().unwrap();
    assert_eq!(r.outputs[0].shape, [2, 1]);
    assert_close(&grpc_floats(r, 0), &y[..2], GOLDEN_TOL, "stream pair");
    let bad = &seen["bad"];
    assert!(
        bad.error_message.contains("'x'") && bad.error_message.contains("INT32"),
        "{}",
        bad.error_message
    );
}
