//! Wire behaviour Triton clients depend on: gzip and deflate request bodies and messages (with
//! the size limit on the inflated bytes, so a compression bomb is refused, and broken streams
//! refused), compressed responses, Triton's raw binary request, `binary_data_output` against
//! per-output `binary_data`, BYTES elements holding any byte on both ONNX backends, and
//! warm-up of BYTES models from explicit samples.

mod common;

use common::*;
use flate2::write::{GzEncoder, ZlibEncoder};
use flate2::Compression;
use kiln_protocol::inference as pb;
use pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use pb::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::sync::Arc;
use tonic::codec::CompressionEncoding;
use tonic::transport::Channel;
use tonic::Code;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::fast());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

fn deflate(data: &[u8]) -> Vec<u8> {
    let mut e = ZlibEncoder::new(Vec::new(), Compression::fast());
    e.write_all(data).expect("deflate");
    e.finish().expect("deflate")
}

fn inflate(encoding: &str, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match encoding {
        "gzip" => flate2::read::GzDecoder::new(data).read_to_end(&mut out),
        "deflate" => flate2::read::ZlibDecoder::new(data).read_to_end(&mut out),
        other => panic!("unexpected content-encoding {other}"),
    }
    .expect("inflate the response");
    out
}

/// POSTs `body` with `Content-Encoding: encoding` and extra headers; status, headers, body.
async fn post_encoded(
    s: &TestServer,
    path: &str,
    encoding: &str,
    body: Vec<u8>,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let mut r = s
        .client
        .post(s.url(path))
        .header("content-type", "application/json")
        .header("content-encoding", encoding)
        .body(body);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let resp = r.send().await.expect("POST");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.bytes().await.expect("body").to_vec())
}

fn json_of(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_and_deflate_requests_are_inflated_and_responses_compressed_on_request() {
    let s = TestServer::examples().await;
    let rows = vec![row(1), row(2)];
    let body = serde_json::to_vec(&mlp_request(&rows)).expect("json");
    let plain = s.infer_ok("mlp", &mlp_request(&rows)).await;
    let want = output_floats(&plain, "y");

    for (encoding, compressed) in [("gzip", gzip(&body)), ("deflate", deflate(&body))] {
        // inflated request, plain response
        let (status, headers, got) = post_encoded(
            &s,
            "/v2/models/mlp/infer",
            encoding,
            compressed.clone(),
            &[],
        )
        .await;
        assert_eq!(status, 200, "{encoding}: {}", String::from_utf8_lossy(&got));
        assert!(headers.get("content-encoding").is_none());
        assert_close(&output_floats(&json_of(&got), "y"), &want, 0.0, encoding);

        // the response compressed as Accept-Encoding asks
        let (status, headers, got) = post_encoded(
            &s,
            "/v2/models/mlp/infer",
            encoding,
            compressed,
            &[("accept-encoding", encoding)],
        )
        .await;
        assert_eq!(status, 200);
        let used = headers
            .get("content-encoding")
            .unwrap_or_else(|| panic!("{encoding}: response not compressed"))
            .to_str()
            .expect("ascii");
        assert_eq!(used, encoding);
        let v = json_of(&inflate(encoding, &got));
        assert_close(&output_floats(&v, "y"), &want, 0.0, encoding);
    }

    // a binary-extension response is compressed whole; the header still gives the JSON length
    let (status, headers, got) = post_encoded(
        &s,
        "/v2/models/mlp/infer",
        "gzip",
        gzip(
            &serde_json::to_vec(&json!({
                "inputs": mlp_request(&rows)["inputs"],
                "parameters": {"binary_data_output": true}
            }))
            .expect("json"),
        ),
        &[("accept-encoding", "gzip")],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-encoding"], "gzip");
    let (head, tail) = split_binary(&headers, &inflate("gzip", &got));
    assert_eq!(output(&head, "y")["parameters"]["binary_data_size"], 8);
    assert_close(&f32_from(&tail), &want, 0.0, "binary gzip");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_bomb_is_refused_at_the_inflated_limit() {
    const LIMIT: usize = 1 << 20;
    let opts = Options {
        max_request_bytes: LIMIT,
        ..Options::default()
    };
    let s = TestServer::start_at(examples(), None, opts).await;
    // 256 MiB of zeros compress to a few hundred KiB, well under the limit
    let mut e = GzEncoder::new(Vec::new(), Compression::default());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..256 {
        e.write_all(&zeros).expect("gzip");
    }
    let bomb = e.finish().expect("gzip");
    assert!(bomb.len() < LIMIT, "bomb is {} bytes", bomb.len());
    let (status, _, got) = post_encoded(&s, "/v2/models/mlp/infer", "gzip", bomb, &[]).await;
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&got));
    let msg = error_of(&json_of(&got));
    assert!(msg.contains("--max-request-bytes"), "{msg}");
    // the server still answers
    s.infer_ok("mlp", &mlp_request(&[row(3)])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_and_corrupt_streams_are_refused() {
    let s = TestServer::examples().await;
    let body = serde_json::to_vec(&mlp_request(&[row(1), row(2), row(3)])).expect("json");
    let d = deflate(&body);
    let g = gzip(&body);
    let cases: [(&str, Vec<u8>); 4] = [
        ("deflate", d[..d.len() / 2].to_vec()),
        ("gzip", g[..g.len() - 6].to_vec()),
        ("deflate", b"this is not a deflate stream".to_vec()),
        (
            "gzip",
            vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 0xff, 0xff, 0xff],
        ),
    ];
    for (i, (encoding, broken)) in cases.into_iter().enumerate() {
        let (status, _, got) =
            post_encoded(&s, "/v2/models/mlp/infer", encoding, broken, &[]).await;
        assert_eq!(status, 400, "case {i}: {}", String::from_utf8_lossy(&got));
        assert!(!error_of(&json_of(&got)).is_empty());
    }
    s.infer_ok("mlp", &mlp_request(&[row(3)])).await;
}

/// The encoding of a gRPC response (`None`: uncompressed).
fn response_encoding<T>(r: &tonic::Response<T>) -> Option<String> {
    r.metadata()
        .get("grpc-encoding")
        .map(|v| v.to_str().expect("ascii").to_string())
}

/// An mlp request of `rows` sent compressed with `encoding` by a client that accepts it
/// back; the client and the answer.
async fn compressed_infer(
    s: &TestServer,
    encoding: CompressionEncoding,
    rows: &[Vec<f32>],
) -> (
    GrpcInferenceServiceClient<Channel>,
    tonic::Response<pb::ModelInferResponse>,
) {
    let mut c = s
        .grpc()
        .await
        .send_compressed(encoding)
        .accept_compressed(encoding);
    let r = c
        .model_infer(grpc_mlp(rows, "compressed"))
        .await
        .unwrap_or_else(|e| panic!("{encoding:?}: {e}"));
    (c, r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_gzip_and_deflate_both_ways_and_the_inflated_limit() {
    const LIMIT: usize = 1 << 20;
    let rows = vec![row(4), row(5)];
    for encoding in [CompressionEncoding::Gzip, CompressionEncoding::Deflate] {
        let opts = Options {
            max_request_bytes: LIMIT,
            grpc_response_compression: Some(encoding),
            ..Options::default()
        };
        let s = TestServer::start_at(examples(), None, opts).await;
        let mut plain = s.grpc().await;
        let want = grpc_floats(
            &plain
                .model_infer(grpc_mlp(&rows, "plain"))
                .await
                .expect("plain")
                .into_inner(),
            0,
        );
        let (mut c, r) = compressed_infer(&s, encoding, &rows).await;
        assert_eq!(
            response_encoding(&r).as_deref(),
            Some(encoding.to_string().as_str())
        );
        assert_close(
            &grpc_floats(&r.into_inner(), 0),
            &want,
            0.0,
            "grpc compressed",
        );

        // 8 MiB of zeros: a small compressed message, over the limit once inflated
        let mut big = grpc_mlp(&[row(6)], "bomb");
        big.raw_input_contents = vec![vec![0u8; 8 << 20].into()];
        big.inputs[0].shape = vec![(8 << 20) / 1024, 256];
        let e = c.model_infer(big).await.expect_err("over the limit");
        assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    }
}

/// By default, as in Triton, responses go out uncompressed even to a client that accepts
/// (and sends) compressed messages: clients list every encoding they can read, so following
/// that list would compress every response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_responses_are_uncompressed_by_default() {
    let s = TestServer::examples().await;
    let rows = vec![row(4), row(5)];
    for encoding in [CompressionEncoding::Gzip, CompressionEncoding::Deflate] {
        let (_, r) = compressed_infer(&s, encoding, &rows).await;
        assert_eq!(response_encoding(&r), None, "{encoding:?}");
        assert_eq!(grpc_floats(&r.into_inner(), 0).len(), 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_binary_request_takes_the_body_as_the_single_input() {
    let s = TestServer::examples().await;
    let rows = vec![row(7), row(8), row(9)];
    let want = output_floats(&s.infer_ok("mlp", &mlp_request(&rows)).await, "y");
    let data: Vec<f32> = rows.iter().flatten().copied().collect();
    let (status, headers, body) = s
        .post_bytes("/v2/models/mlp/infer", f32_bytes(&data), Some(0))
        .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    // every output comes back as binary data
    let (head, tail) = split_binary(&headers, &body);
    let y = output(&head, "y");
    assert_eq!(y["shape"], json!([3, 1]));
    assert_eq!(y["parameters"]["binary_data_size"], 12);
    assert_close(&f32_from(&tail), &want, 0.0, "raw binary");

    // bytes that make no whole row, and a model with two inputs, are refused naming why
    let (status, _, body) = s
        .post_bytes("/v2/models/mlp/infer", vec![0u8; 1000], Some(0))
        .await;
    assert_eq!(status, 400);
    let msg = error_of(&json_of(&body));
    assert!(msg.contains("input 'x'"), "{msg}");
    let (status, _, body) = s
        .post_bytes("/v2/models/ranker/infer", vec![0u8; 64], Some(0))
        .await;
    assert_eq!(status, 400);
    let msg = error_of(&json_of(&body));
    assert!(msg.contains("exactly one input"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_data_output_yields_to_each_outputs_own_binary_data() {
    let s = TestServer::examples().await;
    let rows = vec![row(10)];
    let inputs = mlp_request(&rows)["inputs"].clone();
    let want = output_floats(&s.infer_ok("mlp", &mlp_request(&rows)).await, "y");

    // the output says JSON: JSON, whatever the request-level default
    let req = json!({
        "inputs": inputs,
        "parameters": {"binary_data_output": true},
        "outputs": [{"name": "y", "parameters": {"binary_data": false}}]
    });
    let (status, headers, body) = s
        .post_bytes(
            "/v2/models/mlp/infer",
            serde_json::to_vec(&req).unwrap(),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert!(headers.get("inference-header-content-length").is_none());
    assert_close(&output_floats(&json_of(&body), "y"), &want, 0.0, "json");

    // the output names itself without binary_data: the default applies
    for (default, binary) in [(true, true), (false, false)] {
        let req = json!({
            "inputs": inputs,
            "parameters": {"binary_data_output": default},
            "outputs": [{"name": "y"}]
        });
        let (status, headers, _) = s
            .post_bytes(
                "/v2/models/mlp/infer",
                serde_json::to_vec(&req).unwrap(),
                None,
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(
            headers.get("inference-header-content-length").is_some(),
            binary
        );
    }

    // the output says binary: binary, even with the default off
    let req = json!({
        "inputs": inputs,
        "parameters": {"binary_data_output": false},
        "outputs": [{"name": "y", "parameters": {"binary_data": true}}]
    });
    let (status, headers, body) = s
        .post_bytes(
            "/v2/models/mlp/infer",
            serde_json::to_vec(&req).unwrap(),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (_, tail) = split_binary(&headers, &body);
    assert_close(&f32_from(&tail), &want, 0.0, "binary");
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

/// A repository with the conformance `strings` model (BYTES identity, `text` [-1, 2] to
/// `text_out`) on `backend`, with extra config lines and warm-up files.
fn strings_repo(backend: &str, extra: &str, files: &[(&str, &[u8])]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temporary directory");
    let model = dir.path().join("strings");
    copy_dir(
        &kiln_testkit::repo_root().join("tests/conformance/models/strings"),
        &model,
    );
    std::fs::write(
        model.join("config.toml"),
        format!("backend = \"{backend}\"\nmax_batch_size = 8\n{extra}"),
    )
    .expect("config");
    if !files.is_empty() {
        std::fs::create_dir_all(model.join("warmup")).expect("warmup dir");
        for (name, data) in files {
            std::fs::write(model.join("warmup").join(name), data).expect("warmup file");
        }
    }
    dir
}

async fn strings_server(backend: &str, extra: &str, files: &[(&str, &[u8])]) -> Option<TestServer> {
    let mut opts = Options::default();
    if backend == "onnxruntime" {
        opts.extra_backends
            .push(ort("triton_wire onnxruntime BYTES")?);
    }
    Some(TestServer::temp(strings_repo(backend, extra, files), opts).await)
}

/// BYTES elements in the binary layout: 4-byte length, then the bytes.
fn bytes_elements(elems: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in elems {
        out.extend_from_slice(&(e.len() as u32).to_le_bytes());
        out.extend_from_slice(e);
    }
    out
}

/// One HTTP binary request of `elems` (a [n/2, 2] BYTES tensor) with the output as binary.
async fn http_bytes(s: &TestServer, elems: &[&[u8]]) -> (u16, Vec<u8>) {
    let data = bytes_elements(elems);
    let req = json!({
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [elems.len() / 2, 2],
                    "parameters": {"binary_data_size": data.len()}}],
        "outputs": [{"name": "text_out", "parameters": {"binary_data": true}}]
    });
    let (body, n) = binary_body(&req, &data);
    let (status, headers, got) = s
        .post_bytes("/v2/models/strings/infer", body, Some(n))
        .await;
    if status != 200 {
        return (status, got.to_vec());
    }
    let (_, tail) = split_binary(&headers, &got);
    (status, tail)
}

const ODD: [&[u8]; 4] = [b"nul\0inside", b"\xff\xfe not utf-8 \xc3", b"", b"\0"];
const NUL_ONLY: [&[u8]; 2] = [b"a\0b", b"\0\0"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onnxruntime_bytes_round_trip_exactly_over_http_and_grpc() {
    let Some(s) = strings_server("onnxruntime", "", &[]).await else {
        return;
    };
    let (status, got) = http_bytes(&s, &ODD).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&got));
    assert_eq!(got, bytes_elements(&ODD));

    let mut c = s.grpc().await;
    let req = pb::ModelInferRequest {
        model_name: "strings".into(),
        inputs: vec![InferInputTensor {
            name: "text".into(),
            datatype: "BYTES".into(),
            shape: vec![2, 2],
            ..Default::default()
        }],
        outputs: vec![InferRequestedOutputTensor {
            name: "text_out".into(),
            ..Default::default()
        }],
        raw_input_contents: vec![bytes_elements(&ODD).into()],
        ..Default::default()
    };
    let r = c.model_infer(req).await.expect("grpc").into_inner();
    assert_eq!(&r.raw_output_contents[0][..], &bytes_elements(&ODD)[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tract_keeps_nul_and_refuses_bytes_that_are_not_utf8() {
    let s = strings_server("tract", "", &[]).await.expect("tract");
    let (status, got) = http_bytes(&s, &NUL_ONLY).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&got));
    assert_eq!(got, bytes_elements(&NUL_ONLY));

    let (status, got) = http_bytes(&s, &ODD).await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&got));
    let msg = error_of(&json_of(&got));
    assert!(
        msg.contains("input 'text'") && msg.contains("UTF-8"),
        "{msg}"
    );

    let mut c = s.grpc().await;
    let req = pb::ModelInferRequest {
        model_name: "strings".into(),
        inputs: vec![InferInputTensor {
            name: "text".into(),
            datatype: "BYTES".into(),
            shape: vec![2, 2],
            ..Default::default()
        }],
        raw_input_contents: vec![bytes_elements(&ODD).into()],
        ..Default::default()
    };
    let e = c.model_infer(req).await.expect_err("not UTF-8");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("input 'text'"), "{}", e.message());
}

/// A warm-up sample from a file of BYTES elements with a NUL in them.
const WARMUP: &str = "[[model_warmup]]\nname = \"nul\"\nbatch_size = 1\ncount = 2\n\
                      [model_warmup.inputs.text]\ndims = [2]\ninput_data_file = \"text.bin\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_models_warm_up_from_their_samples_on_both_backends() {
    let sample = bytes_elements(&NUL_ONLY);
    for backend in ["tract", "onnxruntime"] {
        let Some(s) = strings_server(backend, WARMUP, &[("text.bin", &sample)]).await else {
            continue;
        };
        let (status, _) = s.get("/v2/models/strings/ready").await;
        assert_eq!(
            status, 200,
            "{backend}: strings not ready after its warm-up"
        );
        let (status, got) = http_bytes(&s, &NUL_ONLY).await;
        assert_eq!(status, 200, "{backend}");
        assert_eq!(got, bytes_elements(&NUL_ONLY), "{backend}");
    }
}
