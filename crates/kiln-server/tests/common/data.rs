//! Request builders, answer readers and numeric comparisons shared by the integration tests.

use super::examples;
use kiln_protocol::inference as pb;
use serde_json::{json, Value};

/// A deterministic mlp input row (256 values in [-2, 2)).
pub fn row(seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..256)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect()
}

/// A JSON mlp request with these rows.
pub fn mlp_request(rows: &[Vec<f32>]) -> Value {
    let data: Vec<f32> = rows.iter().flatten().copied().collect();
    json!({ "inputs": [{ "name": "x", "datatype": "FP32", "shape": [rows.len(), 256], "data": data }] })
}

/// The named output of a JSON response.
pub fn output<'a>(resp: &'a Value, name: &str) -> &'a Value {
    resp["outputs"]
        .as_array()
        .unwrap_or_else(|| panic!("no outputs in {resp}"))
        .iter()
        .find(|o| o["name"] == name)
        .unwrap_or_else(|| panic!("no output '{name}' in {resp}"))
}

/// A JSON number array as floats.
pub fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap_or_else(|| panic!("not a number: {x}")) as f32)
        .collect()
}

/// The `data` of a JSON response's output as floats.
pub fn output_floats(resp: &Value, name: &str) -> Vec<f32> {
    floats(&output(resp, name)["data"])
}

/// Asserts `got` equals `want` element by element within `tol`.
pub fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: {} values, expected {}",
        got.len(),
        want.len()
    );
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol,
            "{what}[{i}]: {g} differs from {w} by more than {tol}"
        );
    }
}

/// `examples/models/<model>/expected.json`.
pub fn golden(model: &str) -> Value {
    let p = examples().join(model).join("expected.json");
    serde_json::from_str(&std::fs::read_to_string(&p).expect("read expected.json"))
        .expect("expected.json")
}

/// Little-endian bytes of floats.
pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Floats from little-endian bytes.
pub fn f32_from(b: &[u8]) -> Vec<f32> {
    assert_eq!(
        b.len() % 4,
        0,
        "{} bytes are not whole FP32 values",
        b.len()
    );
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect()
}

/// A body of the binary tensor extension: the JSON part, then `tail`; and the JSON length.
pub fn binary_body(json: &Value, tail: &[u8]) -> (Vec<u8>, usize) {
    let mut body = serde_json::to_vec(json).expect("json");
    let n = body.len();
    body.extend_from_slice(tail);
    (body, n)
}

/// Splits a binary-extension response into its JSON part and its binary tail.
pub fn split_binary(headers: &reqwest::header::HeaderMap, body: &[u8]) -> (Value, Vec<u8>) {
    let n: usize = headers
        .get("inference-header-content-length")
        .expect("inference-header-content-length header")
        .to_str()
        .expect("ascii")
        .parse()
        .expect("a number");
    assert!(
        n <= body.len(),
        "header length {n} exceeds the body's {}",
        body.len()
    );
    let json = serde_json::from_slice(&body[..n]).expect("json part");
    (json, body[n..].to_vec())
}

/// A gRPC mlp request with `rows` as raw FP32 contents.
pub fn grpc_mlp(rows: &[Vec<f32>], id: &str) -> pb::ModelInferRequest {
    let data: Vec<f32> = rows.iter().flatten().copied().collect();
    pb::ModelInferRequest {
        model_name: "mlp".into(),
        id: id.into(),
        inputs: vec![pb::model_infer_request::InferInputTensor {
            name: "x".into(),
            datatype: "FP32".into(),
            shape: vec![rows.len() as i64, 256],
            ..Default::default()
        }],
        raw_input_contents: vec![f32_bytes(&data).into()],
        ..Default::default()
    }
}

/// Output `i` of a gRPC response as floats, from raw or typed contents.
pub fn grpc_floats(r: &pb::ModelInferResponse, i: usize) -> Vec<f32> {
    match r.raw_output_contents.get(i) {
        Some(raw) => f32_from(raw),
        None => r.outputs[i]
            .contents
            .as_ref()
            .expect("typed contents")
            .fp32_contents
            .clone(),
    }
}
