//! Bad requests end to end: each one gets the right HTTP status (or gRPC code) and a message
//! naming the problem, and the server keeps answering correctly afterwards. Covers wrong
//! shapes and datatypes, unknown models, versions, inputs and outputs, missing inputs, batches
//! over `max_batch_size`, malformed JSON, truncated binary payloads, oversized bodies and
//! model names that try to leave the repository directory.

mod common;

use common::*;
use kiln_protocol::inference as pb;
use serde_json::{json, Value};
use tonic::Code;

fn x_input(shape: Value, datatype: &str, data: Value) -> Value {
    json!({ "inputs": [{ "name": "x", "datatype": datatype, "shape": shape, "data": data }] })
}

/// Asserts the server still computes the mlp golden batch correctly.
async fn still_serving(s: &TestServer) {
    let g = golden("mlp");
    let resp = s.infer_ok("mlp", &json!({ "inputs": g["inputs"] })).await;
    assert_close(
        &output_floats(&resp, "y"),
        &floats(&g["outputs"][0]["data"]),
        GOLDEN_TOL,
        "mlp after errors",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_json_requests_are_named() {
    let s = TestServer::examples().await;
    let zeros = |n: usize| json!(vec![0.0f32; n]);
    let ranker_ids_only = json!({ "inputs": [{ "name": "ids", "datatype": "INT64", "shape": [1, 8], "data": [1, 2, 3, 4, 5, 6, 7, 8] }] });
    let mut with_z = mlp_request(&[row(1)]);
    with_z["inputs"]
        .as_array_mut()
        .unwrap()
        .push(json!({ "name": "z", "datatype": "FP32", "shape": [1, 1], "data": [0] }));
    let cases: Vec<(&str, &str, Value, u16, &[&str])> = vec![
        (
            "wrong shape",
            "mlp",
            x_input(json!([1, 255]), "FP32", zeros(255)),
            400,
            &["'x'", "got [1,255]", "Expected [-1,256]"],
        ),
        (
            "wrong rank",
            "mlp",
            x_input(json!([1, 16, 16]), "FP32", zeros(256)),
            400,
            &["'x'", "got [1,16,16]"],
        ),
        (
            "wrong datatype",
            "mlp",
            x_input(json!([1, 256]), "FP64", zeros(256)),
            400,
            &["'x'", "FP64", "FP32"],
        ),
        (
            "unknown datatype",
            "mlp",
            x_input(json!([1, 256]), "FP33", zeros(256)),
            400,
            &["'x'", "FP33"],
        ),
        (
            "too few values",
            "mlp",
            x_input(json!([1, 256]), "FP32", zeros(10)),
            400,
            &["'x'", "256", "10"],
        ),
        (
            "non-numeric data",
            "mlp",
            x_input(json!([1, 2]), "FP32", json!(["a", "b"])),
            400,
            &["'x'"],
        ),
        (
            "batch over max",
            "mlp",
            x_input(json!([65, 256]), "FP32", zeros(65 * 256)),
            400,
            &["'x'", "65", "max_batch_size 64"],
        ),
        (
            "unknown input",
            "mlp",
            with_z,
            400,
            &["'z'", "not an input"],
        ),
        (
            "missing input",
            "ranker",
            ranker_ids_only,
            400,
            &["'dense'", "missing"],
        ),
        (
            "no inputs",
            "mlp",
            json!({ "inputs": [] }),
            400,
            &["'x'", "missing"],
        ),
        (
            "unknown output",
            "mlp",
            json!({ "inputs": mlp_request(&[row(1)])["inputs"], "outputs": [{ "name": "q" }] }),
            400,
            &["'q'"],
        ),
        (
            "bad timeout",
            "mlp",
            json!({ "inputs": mlp_request(&[row(1)])["inputs"], "parameters": { "timeout": "soon" } }),
            400,
            &["timeout"],
        ),
        (
            "bad priority",
            "mlp",
            json!({ "inputs": mlp_request(&[row(1)])["inputs"], "parameters": { "priority": 9 } }),
            400,
            &["priority", "9"],
        ),
        (
            "unknown model",
            "nope",
            mlp_request(&[row(1)]),
            404,
            &["'nope'"],
        ),
    ];
    for (what, model, body, status, needles) in cases {
        let (got, resp) = s.post(&format!("/v2/models/{model}/infer"), &body).await;
        assert_eq!(got, status, "{what}: {resp}");
        let msg = error_of(&resp);
        for n in needles {
            assert!(
                msg.contains(n),
                "{what}: message {msg:?} does not mention {n:?}"
            );
        }
    }

    let (status, resp) = s
        .post("/v2/models/mlp/versions/7/infer", &mlp_request(&[row(1)]))
        .await;
    assert_eq!(status, 404, "{resp}");
    assert!(error_of(&resp).contains("version 7"), "{resp}");
    let (status, resp) = s
        .post("/v2/models/mlp/versions/one/infer", &mlp_request(&[row(1)]))
        .await;
    assert_eq!(status, 400, "{resp}");
    assert!(error_of(&resp).contains("'one'"), "{resp}");

    for (what, body) in [
        ("truncated", "{\"inputs\": [{\"name\": \"x\""),
        ("not json", "hello"),
        ("trailing", "{} {}"),
    ] {
        let (status, _, bytes) = s
            .post_bytes("/v2/models/mlp/infer", body.as_bytes().to_vec(), None)
            .await;
        assert_eq!(status, 400, "{what}");
        let msg = error_of(&serde_json::from_slice(&bytes).unwrap());
        assert!(msg.contains("malformed json"), "{what}: {msg}");
    }
    still_serving(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_binary_payloads_are_named() {
    let s = TestServer::examples().await;
    let x = f32_bytes(&row(1));
    let header = |size: usize| json!({ "inputs": [{ "name": "x", "datatype": "FP32", "shape": [1, 256], "parameters": { "binary_data_size": size } }] });

    // The announced size runs past the end of the body.
    let (body, n) = binary_body(&header(1024), &x[..1000]);
    let (status, _, bytes) = s.post_bytes("/v2/models/mlp/infer", body, Some(n)).await;
    assert_eq!(status, 400);
    let msg = error_of(&serde_json::from_slice(&bytes).unwrap());
    assert!(
        msg.contains("'x'") && msg.contains("binary_data_size"),
        "{msg}"
    );

    // The size does not fit the shape.
    let (body, n) = binary_body(&header(1000), &x[..1000]);
    let (status, _, bytes) = s.post_bytes("/v2/models/mlp/infer", body, Some(n)).await;
    assert_eq!(status, 400);
    let msg = error_of(&serde_json::from_slice(&bytes).unwrap());
    assert!(msg.contains("'x'") && msg.contains("1024"), "{msg}");

    // Bytes left over after the last input.
    let (body, n) = binary_body(&header(1024), &[x.as_slice(), &[0u8; 8]].concat());
    let (status, _, bytes) = s.post_bytes("/v2/models/mlp/infer", body, Some(n)).await;
    assert_eq!(status, 400);
    assert!(error_of(&serde_json::from_slice(&bytes).unwrap()).contains("8 bytes"));

    // A header length beyond the body, and one that is not a number.
    let (body, _) = binary_body(&header(1024), &x);
    let len = body.len();
    let (status, _, bytes) = s
        .post_bytes("/v2/models/mlp/infer", body.clone(), Some(len + 1))
        .await;
    assert_eq!(status, 400);
    assert!(error_of(&serde_json::from_slice(&bytes).unwrap())
        .contains("inference-header-content-length"));
    let r = s
        .client
        .post(s.url("/v2/models/mlp/infer"))
        .header("Inference-Header-Content-Length", "lots")
        .body(body)
        .send()
        .await
        .unwrap();
    let (status, resp) = read_json(r).await;
    assert_eq!(status, 400);
    assert!(
        error_of(&resp).contains("inference-header-content-length"),
        "{resp}"
    );

    // Binary data announced without the header.
    let (status, resp) = s.post("/v2/models/mlp/infer", &header(1024)).await;
    assert_eq!(status, 400);
    assert!(error_of(&resp).contains("'x'"), "{resp}");
    still_serving(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_grpc_requests_have_codes() {
    let s = TestServer::examples().await;
    let mut c = s.grpc().await;
    let mut wrong_dtype = grpc_mlp(&[row(1)], "");
    wrong_dtype.inputs[0].datatype = "FP16".into();
    wrong_dtype.raw_input_contents = vec![vec![0u8; 512].into()];
    let mut short_raw = grpc_mlp(&[row(1)], "");
    short_raw.raw_input_contents = vec![vec![0u8; 1000].into()];
    let mut too_big = grpc_mlp(&vec![row(1); 65], "");
    too_big.id = "big".into();
    let mut no_version = grpc_mlp(&[row(1)], "");
    no_version.model_version = "3".into();
    let mut bad_name = grpc_mlp(&[row(1)], "");
    bad_name.model_name = "../examples/mlp".into();
    let mut mixed = grpc_mlp(&[row(1)], "");
    mixed.inputs[0].contents = Some(pb::InferTensorContents {
        fp32_contents: row(1),
        ..Default::default()
    });
    let mut bad_output = grpc_mlp(&[row(1)], "");
    bad_output.outputs = vec![pb::model_infer_request::InferRequestedOutputTensor {
        name: "q".into(),
        ..Default::default()
    }];
    let cases: Vec<(&str, pb::ModelInferRequest, Code, &str)> = vec![
        ("unknown output", bad_output, Code::InvalidArgument, "'q'"),
        ("wrong datatype", wrong_dtype, Code::InvalidArgument, "FP16"),
        (
            "short raw contents",
            short_raw,
            Code::InvalidArgument,
            "'x'",
        ),
        (
            "batch over max",
            too_big,
            Code::InvalidArgument,
            "max_batch_size",
        ),
        ("unknown version", no_version, Code::NotFound, "version 3"),
        (
            "name with a slash",
            bad_name,
            Code::InvalidArgument,
            "invalid model name",
        ),
        (
            "raw and typed contents",
            mixed,
            Code::InvalidArgument,
            "'x'",
        ),
    ];
    for (what, req, code, needle) in cases {
        let e = c.model_infer(req).await.expect_err(what);
        assert_eq!(e.code(), code, "{what}: {e:?}");
        assert!(
            e.message().contains(needle),
            "{what}: {:?} does not mention {needle:?}",
            e.message()
        );
    }
    let r = c
        .model_infer(grpc_mlp(&[row(1)], "ok"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.id, "ok");
    still_serving(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_refused() {
    let opts = Options {
        max_request_bytes: 4096,
        ..Options::default()
    };
    let s = TestServer::start_at(examples(), None, opts).await;
    let json_header = |rows: usize| json!({ "inputs": [{ "name": "x", "datatype": "FP32", "shape": [rows, 256], "parameters": { "binary_data_size": rows * 1024 } }] });
    let rows: Vec<Vec<f32>> = (0..8).map(row).collect();
    let (body, n) = binary_body(&json_header(8), &f32_bytes(&rows.concat()));
    let (status, _, bytes) = s.post_bytes("/v2/models/mlp/infer", body, Some(n)).await;
    assert_eq!(status, 413);
    let msg = error_of(&serde_json::from_slice(&bytes).unwrap());
    assert!(msg.contains("too large"), "{msg}");

    // gRPC refuses the same message with RESOURCE_EXHAUSTED, as gRPC's core libraries do.
    let mut c = s.grpc().await;
    let e = c.model_infer(grpc_mlp(&rows, "")).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("too large"), "{e:?}");

    // One row fits and is answered.
    let (body, n) = binary_body(&json_header(1), &f32_bytes(&rows[0]));
    let (status, _, bytes) = s.post_bytes("/v2/models/mlp/infer", body, Some(n)).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
    let r = c
        .model_infer(grpc_mlp(&rows[..1], "small"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.outputs[0].shape, [1, 1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_names_cannot_leave_the_repository() {
    // A repository next to a directory that holds a loadable model and a readable file.
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("repo");
    copy_dir(&examples().join("mlp"), &root.join("mlp"));
    copy_dir(
        &examples().join("mlp"),
        &base.path().join("outside").join("mlp"),
    );
    std::fs::write(base.path().join("secret.txt"), "root:x:0:0:secret").unwrap();
    let s = TestServer::start_at(root, None, Options::explicit_all()).await;
    let body = serde_json::to_string(&mlp_request(&[row(1)])).unwrap();

    let attempts = [
        ("POST", "/v2/models/..%2F..%2Fetc/infer"),
        ("POST", "/v2/models/..%2Foutside%2Fmlp/infer"),
        ("POST", "/v2/models/..%2Foutside%2Fmlp/versions/1/infer"),
        ("POST", "/v2/models/%2E%2E/infer"),
        ("GET", "/v2/models/..%2Fsecret.txt"),
        ("GET", "/v2/models/..%2Fsecret.txt/config"),
        ("GET", "/v2/models/mlp%2F1/ready"),
        ("GET", "/v2/models/..%5Csecret.txt/stats"),
        ("GET", "/v2/models/../../secret.txt"),
        ("POST", "/v2/repository/models/..%2Foutside%2Fmlp/load"),
        ("POST", "/v2/repository/models/..%2Foutside/load"),
        ("POST", "/v2/repository/models/..%2Foutside%2Fmlp/unload"),
        ("POST", "/v2/repository/models/%2E%2E/load"),
    ];
    for (method, path) in attempts {
        let (status, text) = raw_http(s.http_addr, method, path, &body).await;
        assert!(
            status == 400 || status == 404,
            "{method} {path}: {status} {text}"
        );
        assert!(
            !text.contains("root:x"),
            "{method} {path} leaked a file: {text}"
        );
        if status == 400 {
            assert!(
                text.contains("invalid model name"),
                "{method} {path}: {text}"
            );
        }
    }
    // Nothing outside the repository was loaded.
    let index = http_index(&s).await;
    let names: Vec<&str> = index
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["mlp"], "{index}");
    assert_eq!(s.repo.serving().len(), 1);
    still_serving(&s).await;
}

/// Bytes in and out, so a test can send what no protobuf encoder would.
#[derive(Clone, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        buf: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(buf, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        buf: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        let n = bytes::Buf::remaining(buf);
        Ok(Some(bytes::Buf::copy_to_bytes(buf, n).to_vec()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_protobuf_is_invalid_argument() {
    use tonic::codegen::http::uri::PathAndQuery;
    let s = TestServer::examples().await;
    // field 1 as a varint that never ends
    let garbage = vec![0x08u8, 0xff, 0xff, 0xff];
    let mut g = tonic::client::Grpc::new(s.channel().await);
    g.ready().await.expect("ready");
    let e = g
        .unary(
            tonic::Request::new(garbage.clone()),
            PathAndQuery::from_static("/inference.GRPCInferenceService/ModelInfer"),
            RawCodec,
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("not valid protobuf"), "{e:?}");

    g.ready().await.expect("ready");
    let stream = g
        .streaming(
            tonic::Request::new(tokio_stream::iter(vec![garbage])),
            PathAndQuery::from_static("/inference.GRPCInferenceService/ModelStreamInfer"),
            RawCodec,
        )
        .await;
    let status = match stream {
        Err(e) => e,
        Ok(resp) => {
            let mut body = resp.into_inner();
            loop {
                match body.message().await {
                    Err(e) => break e,
                    Ok(Some(_)) => continue,
                    Ok(None) => panic!("the stream ended without an error"),
                }
            }
        }
    };
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    still_serving(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_json_objects_in_protocol_terms() {
    let s = TestServer::examples().await;
    for body in ["[]", "[{}]", "[null, {}]", "7"] {
        let (st, text) = raw_http(s.http_addr, "POST", "/v2/models/mlp/infer", body).await;
        assert_eq!(st, 400, "{body}: {text}");
        assert!(text.contains("expected a JSON object"), "{body}: {text}");
    }
    for body in [
        r#""x""#,
        r#"{"inputs":[1]}"#,
        r#"{"inputs":[{"name":"x","shape":["a"],"datatype":"FP32","data":[1]}]}"#,
        r#"{"outputs":{}}"#,
    ] {
        let (st, text) = raw_http(s.http_addr, "POST", "/v2/models/mlp/infer", body).await;
        assert_eq!(st, 400, "{body}: {text}");
        for word in ["struct", "Json", "i64", "sequence"] {
            assert!(!text.contains(word), "{body}: {word:?} in {text}");
        }
    }
    still_serving(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lowercase_datatypes_are_refused_over_http_and_grpc() {
    let s = TestServer::examples().await;
    let (st, v) = s
        .post(
            "/v2/models/mlp/infer",
            &x_input(json!([1, 256]), "fp32", json!(row(1))),
        )
        .await;
    assert_eq!(st, 400, "{v}");
    assert!(error_of(&v).contains("unknown datatype 'fp32'"), "{v}");
    let mut req = grpc_mlp(&[row(1)], "");
    req.inputs[0].datatype = "fp32".into();
    let e = s.grpc().await.model_infer(req).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("unknown datatype 'fp32'"), "{e:?}");
    still_serving(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_finite_numbers_are_strings_in_json() {
    // pair: scaled = 2 * x, total = sum(x)
    let s = TestServer::temp(copy_models(&["pair"]), Options::default()).await;
    let body = json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4],
                                  "data": ["NaN", "Infinity", "-Infinity", 1.5]}]});
    let r = s
        .client
        .post(s.url("/v2/models/pair/infer"))
        .json(&body)
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    // strict JSON: a bare NaN token would not parse
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(
        output(&v, "scaled")["data"],
        json!(["NaN", "Infinity", "-Infinity", 3.0]),
        "{text}"
    );
    assert_eq!(output(&v, "total")["data"], json!(["NaN"]), "{text}");
}
