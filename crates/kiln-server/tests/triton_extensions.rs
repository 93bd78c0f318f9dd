//! Triton's extensions beyond inference, over HTTP and gRPC: trace settings (server-wide and per
//! model, the admin token required to change them), CUDA shared memory on a server without a
//! GPU (no regions, unregister a no-op, register refused), the logging extension without a log
//! handle, and `ModelStreamInfer` with many requests in flight on one stream, answered by id.

mod common;

use common::*;
use kiln_protocol::inference as pb;
use serde_json::{json, Value};
use std::collections::HashMap;
use tonic::Code;

const TOKEN: &str = "s3cret";

async fn with_token() -> TestServer {
    TestServer::temp(
        copy_models(&["mlp"]),
        Options {
            admin_token: Some(TOKEN.into()),
            ..Options::default()
        },
    )
    .await
}

async fn post_auth(s: &TestServer, path: &str, body: &Value) -> (u16, Value) {
    let r = s
        .client
        .post(s.url(path))
        .bearer_auth(TOKEN)
        .json(body)
        .send()
        .await
        .expect("POST");
    read_json(r).await
}

fn authed<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_settings_over_http() {
    let s = with_token().await;
    let (st, v) = s.get("/v2/trace/setting").await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["trace_level"], json!(["TIMESTAMPS"]));
    assert_eq!(v["trace_rate"], "1");
    assert_eq!(v["trace_count"], "-1");

    let change = json!({"trace_level": ["OFF"], "trace_rate": "10"});
    let (st, _) = s.post("/v2/models/mlp/trace/setting", &change).await;
    assert_eq!(st, 401, "changing trace settings needs the token");
    let (st, v) = post_auth(&s, "/v2/models/mlp/trace/setting", &change).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["trace_level"], json!(["OFF"]));
    assert_eq!(v["trace_rate"], "10");
    // the server-wide settings are unchanged; the model follows them for the rest
    let (_, g) = s.get("/v2/trace/setting").await;
    assert_eq!(g["trace_level"], json!(["TIMESTAMPS"]));
    let (st, v) = post_auth(&s, "/v2/trace/setting", &json!({"trace_count": "5"})).await;
    assert_eq!((st, v["trace_count"].clone()), (200, json!("5")));
    let (_, m) = s.get("/v2/models/mlp/trace/setting").await;
    assert_eq!(m["trace_count"], "5");
    // null returns the model's setting to the server-wide one
    let (_, v) = post_auth(
        &s,
        "/v2/models/mlp/trace/setting",
        &json!({"trace_level": null}),
    )
    .await;
    assert_eq!(v["trace_level"], json!(["TIMESTAMPS"]));
    assert_eq!(v["trace_rate"], "10");

    for (body, field) in [
        (json!({"trace_rate": "0"}), "trace_rate"),
        (json!({"trace_level": ["LOUD"]}), "trace_level"),
        (json!({"trace_count": "-7"}), "trace_count"),
        (json!({"trace_file": "/tmp/x.json"}), "trace_file"),
    ] {
        let (st, v) = post_auth(&s, "/v2/trace/setting", &body).await;
        assert_eq!(st, 400, "{body}: {v}");
        assert!(error_of(&v).contains(field), "{body}: {v}");
    }
    let (st, _) = s.get("/v2/models/nope/trace/setting").await;
    assert_eq!(st, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_and_log_settings_over_grpc() {
    let s = with_token().await;
    let mut c = s.grpc().await;
    let get = c
        .trace_setting(pb::TraceSettingRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(get.settings["trace_rate"].value, ["1"]);
    let value = |v: &[&str]| pb::trace_setting_request::SettingValue {
        value: v.iter().map(|s| s.to_string()).collect(),
    };
    let change = pb::TraceSettingRequest {
        settings: HashMap::from([("trace_level".to_string(), value(&["OFF"]))]),
        model_name: "mlp".into(),
    };
    let e = c.trace_setting(change.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let got = c.trace_setting(authed(change)).await.unwrap().into_inner();
    assert_eq!(got.settings["trace_level"].value, ["OFF"]);
    // an empty value clears the model's setting
    let clear = pb::TraceSettingRequest {
        settings: HashMap::from([("trace_level".to_string(), value(&[]))]),
        model_name: "mlp".into(),
    };
    let got = c.trace_setting(authed(clear)).await.unwrap().into_inner();
    assert_eq!(got.settings["trace_level"].value, ["TIMESTAMPS"]);
    let bad = pb::TraceSettingRequest {
        settings: HashMap::from([("trace_rate".to_string(), value(&["x"]))]),
        model_name: String::new(),
    };
    let e = c.trace_setting(authed(bad)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("trace_rate"), "{e:?}");

    // an in-process server has no log handle: the extension says so
    let e = c
        .log_settings(pb::LogSettingsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    let (st, v) = s.get("/v2/logging").await;
    assert_eq!(st, 503, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cuda_shared_memory_without_a_gpu() {
    let s = TestServer::examples().await;
    let (st, v) = s.get("/v2/cudasharedmemory/status").await;
    assert_eq!((st, v), (200, json!([])));
    let (st, v) = s.get("/v2/cudasharedmemory/region/r/status").await;
    assert_eq!(st, 404, "{v}");
    for path in [
        "/v2/cudasharedmemory/unregister",
        "/v2/cudasharedmemory/region/r/unregister",
    ] {
        let (st, v) = s.post(path, &Value::Null).await;
        assert_eq!(st, 200, "{path}: {v}");
    }
    let body = json!({"raw_handle": {"b64": "aGFuZGxl"}, "device_id": 0, "byte_size": 16});
    let (st, v) = s
        .post("/v2/cudasharedmemory/region/r/register", &body)
        .await;
    assert_eq!(st, 400, "{v}");
    assert!(error_of(&v).contains("no GPU"), "{v}");

    let mut c = s.grpc().await;
    let status = c
        .cuda_shared_memory_status(pb::CudaSharedMemoryStatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(status.regions.is_empty());
    c.cuda_shared_memory_unregister(pb::CudaSharedMemoryUnregisterRequest::default())
        .await
        .unwrap();
    let e = c
        .cuda_shared_memory_register(pb::CudaSharedMemoryRegisterRequest {
            name: "r".into(),
            raw_handle: b"handle".to_vec(),
            device_id: 0,
            byte_size: 16,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented);
    assert!(e.message().contains("'r'"), "{e:?}");
    let (_, meta) = s.get("/v2").await;
    let ext = meta["extensions"].as_array().unwrap();
    assert!(ext.contains(&json!("logging")) && ext.contains(&json!("trace")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_with_many_requests_in_flight_answers_each_by_id() {
    const N: usize = 300;
    let s = TestServer::examples().await;
    let mut c = s.grpc().await;
    // what each request must get, from unary calls
    let mut want = HashMap::new();
    for i in 0..N as u64 {
        let req = grpc_mlp(&[row(i)], &format!("r{i}"));
        let r = c.model_infer(req).await.unwrap().into_inner();
        want.insert(r.id.clone(), grpc_floats(&r, 0));
    }
    // every request is queued on the stream before any answer is read
    let (tx, rx) = tokio::sync::mpsc::channel(N);
    for i in 0..N as u64 {
        tx.send(grpc_mlp(&[row(i)], &format!("r{i}")))
            .await
            .unwrap();
    }
    let mut stream = c
        .model_stream_infer(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut seen = HashMap::new();
    while seen.len() < N {
        let msg = stream
            .message()
            .await
            .unwrap()
            .expect("the stream ended before every request was answered");
        assert!(msg.error_message.is_empty(), "{}", msg.error_message);
        let r = msg.infer_response.expect("infer_response");
        let got = grpc_floats(&r, 0);
        assert!(
            seen.insert(r.id.clone(), got).is_none(),
            "{} answered twice",
            r.id
        );
    }
    drop(tx);
    assert!(
        stream.message().await.unwrap().is_none(),
        "no answer beyond the requests"
    );
    for (id, got) in &seen {
        let w = want.get(id).unwrap_or_else(|| panic!("unknown id {id}"));
        assert_close(got, w, GOLDEN_TOL, id);
    }
}
