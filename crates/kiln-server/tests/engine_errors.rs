//! A bad request never takes a model down. The fixtures `gather` (ids INT64 [N,3] straight into
//! a Gather over a 10-row table, table[i] = [i, -10 i]) and `gather_offset` (the same lookup of
//! ids + 1, which no check before compute sees) served with tract: an id outside the table is a
//! 400 naming the input, the value and the range; an engine panic fails its batch with a 500
//! naming the model; either way the next request is answered right, the model stays ready and
//! nothing is left in the queue.

mod common;

use common::*;
use serde_json::{json, Value};

fn ids_request(ids: &[i64]) -> Value {
    json!({
        "inputs": [{ "name": "ids", "datatype": "INT64", "shape": [ids.len() / 3, 3], "data": ids }]
    })
}

fn rows_of(resp: &Value) -> Vec<f64> {
    resp["outputs"][0]["data"]
        .as_array()
        .expect("output data")
        .iter()
        .map(|v| v.as_f64().expect("number"))
        .collect()
}

async fn gather_server() -> TestServer {
    let dir = tempfile::tempdir().expect("temporary directory");
    for name in ["gather", "gather_offset"] {
        copy_dir(&fixtures().join(name), &dir.path().join(name));
    }
    TestServer::temp(dir, Options::default()).await
}

/// The model answers a valid request right, reports ready and has nothing queued.
async fn still_serving(s: &TestServer, model: &str, offset: i64) {
    let ids = [0i64, 3, -1];
    let resp = s.infer_ok(model, &ids_request(&ids)).await;
    let want: Vec<f64> = ids
        .iter()
        .flat_map(|&i| {
            let r = (i + offset).rem_euclid(10) as f64;
            [r, -10.0 * r]
        })
        .collect();
    assert_eq!(rows_of(&resp), want, "{model} answers right");
    let (status, _) = s.get(&format!("/v2/models/{model}/ready")).await;
    assert_eq!(status, 200, "{model} still ready");
    let index = http_index(s).await;
    let row = index_row(&index, model, Some("1")).expect("index row");
    assert_eq!(row["state"], "READY", "{row}");
    let queued = s.repo.get(model, None).expect("serving").queue_len();
    assert_eq!(queued, 0, "{model}: nothing held in the queue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_outside_the_table_are_a_400_and_the_model_keeps_serving() {
    let s = gather_server().await;
    still_serving(&s, "gather", 0).await;
    for (ids, bad) in [
        ([0i64, 10, 1], 10i64),
        ([-11, 0, 1], -11),
        ([0, 1, i64::MAX], i64::MAX),
    ] {
        let (status, body) = s.post("/v2/models/gather/infer", &ids_request(&ids)).await;
        assert_eq!(status, 400, "{body}");
        let msg = error_of(&body);
        for part in [
            "model 'gather'".to_string(),
            "input 'ids'".to_string(),
            format!("value {bad}"),
            "-10..=9".to_string(),
        ] {
            assert!(msg.contains(&part), "{part:?} in {msg}");
        }
        still_serving(&s, "gather", 0).await;
    }

    // gRPC says INVALID_ARGUMENT.
    let mut client = s.grpc().await;
    let req = kiln_protocol::inference::ModelInferRequest {
        model_name: "gather".into(),
        inputs: vec![
            kiln_protocol::inference::model_infer_request::InferInputTensor {
                name: "ids".into(),
                datatype: "INT64".into(),
                shape: vec![1, 3],
                contents: Some(kiln_protocol::inference::InferTensorContents {
                    int64_contents: vec![1, 2, 99],
                    ..Default::default()
                }),
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let e = client.model_infer(req).await.expect_err("refused");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    assert!(e.message().contains("value 99"), "{e}");
    still_serving(&s, "gather", 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_panic_fails_its_batch_and_the_model_keeps_serving() {
    let s = gather_server().await;
    still_serving(&s, "gather_offset", 1).await;
    for _ in 0..3 {
        // 9 + 1 is past the table: tract panics inside its Gather.
        let (status, body) = s
            .post("/v2/models/gather_offset/infer", &ids_request(&[0, 9, 1]))
            .await;
        assert_eq!(status, 500, "{body}");
        let msg = error_of(&body);
        assert!(
            msg.contains("model 'gather_offset' version 1") && msg.contains("backend panicked"),
            "{msg}"
        );
        still_serving(&s, "gather_offset", 1).await;
    }
}
