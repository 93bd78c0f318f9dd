//! HTTP inference end to end: JSON and binary tensors (Triton's binary extension) in and out,
//! golden outputs of the example models, nested data, explicit versions, a full batch,
//! requested output subsets, per-output and request-level binary choice, and request ids.

mod common;

use common::*;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_outputs_over_json() {
    let s = TestServer::examples().await;
    for model in ["mlp", "ranker"] {
        let g = golden(model);
        let id = format!("golden-{model}");
        let resp = s
            .infer_ok(model, &json!({ "id": id, "inputs": g["inputs"] }))
            .await;
        assert_eq!(resp["model_name"], model);
        assert_eq!(resp["model_version"], "1");
        assert_eq!(resp["id"], id.as_str());
        for want in g["outputs"].as_array().unwrap() {
            let name = want["name"].as_str().unwrap();
            let got = output(&resp, name);
            assert_eq!(got["datatype"], want["datatype"]);
            assert_eq!(got["shape"], want["shape"]);
            assert_close(
                &floats(&got["data"]),
                &floats(&want["data"]),
                GOLDEN_TOL,
                &format!("{model}.{name}"),
            );
        }
    }
    // Nested data arrays, and an explicit version in the path.
    let g = golden("ranker");
    let mut inputs = g["inputs"].clone();
    for i in inputs.as_array_mut().unwrap() {
        let width = i["shape"][1].as_u64().unwrap() as usize;
        let flat = i["data"].as_array().unwrap().clone();
        i["data"] = Value::Array(
            flat.chunks(width)
                .map(|r| Value::Array(r.to_vec()))
                .collect(),
        );
    }
    let (status, resp) = s
        .post(
            "/v2/models/ranker/versions/1/infer",
            &json!({ "inputs": inputs }),
        )
        .await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["model_version"], "1");
    assert_close(
        &output_floats(&resp, "score"),
        &floats(&g["outputs"][0]["data"]),
        GOLDEN_TOL,
        "nested ranker",
    );

    // A full batch of max_batch_size rows.
    let rows: Vec<Vec<f32>> = (0..64).map(row).collect();
    let resp = s.infer_ok("mlp", &mlp_request(&rows)).await;
    assert_eq!(output(&resp, "y")["shape"], json!([64, 1]));

    // Without an id, none is echoed.
    let resp = s.infer_ok("mlp", &mlp_request(&[row(1)])).await;
    assert!(resp.get("id").is_none(), "{resp}");
}

/// The golden inputs of `model` as a binary-extension request: each input's data as raw bytes.
fn golden_binary(model: &str, params: Value) -> (Vec<u8>, usize, Value) {
    let g = golden(model);
    let mut tail = Vec::new();
    let mut inputs = Vec::new();
    for i in g["inputs"].as_array().unwrap() {
        let bytes: Vec<u8> = match i["datatype"].as_str().unwrap() {
            "FP32" => f32_bytes(&floats(&i["data"])),
            "INT64" => i["data"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|v| v.as_i64().unwrap().to_le_bytes())
                .collect(),
            other => panic!("unexpected datatype {other}"),
        };
        inputs.push(json!({
            "name": i["name"], "datatype": i["datatype"], "shape": i["shape"],
            "parameters": { "binary_data_size": bytes.len() }
        }));
        tail.extend_from_slice(&bytes);
    }
    let (body, n) = binary_body(
        &json!({ "id": "bin", "inputs": inputs, "parameters": params }),
        &tail,
    );
    (body, n, g)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_inputs_and_outputs() {
    let s = TestServer::examples().await;
    for model in ["mlp", "ranker"] {
        // Binary in, JSON out.
        let (body, n, g) = golden_binary(model, json!({}));
        let (status, headers, bytes) = s
            .post_bytes(&format!("/v2/models/{model}/infer"), body, Some(n))
            .await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
        assert!(headers.get("inference-header-content-length").is_none());
        let resp: Value = serde_json::from_slice(&bytes).unwrap();
        let want = &g["outputs"][0];
        let name = want["name"].as_str().unwrap();
        assert_close(
            &output_floats(&resp, name),
            &floats(&want["data"]),
            GOLDEN_TOL,
            model,
        );

        // Binary in, binary out.
        let (body, n, _) = golden_binary(model, json!({ "binary_data_output": true }));
        let (status, headers, bytes) = s
            .post_bytes(&format!("/v2/models/{model}/infer"), body, Some(n))
            .await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
        assert_eq!(headers["content-type"], "application/octet-stream");
        let (json, tail) = split_binary(&headers, &bytes);
        assert_eq!(json["id"], "bin");
        let out = output(&json, name);
        assert!(
            out.get("data").is_none(),
            "binary output also has data: {out}"
        );
        assert_eq!(out["shape"], want["shape"]);
        assert_eq!(out["parameters"]["binary_data_size"], 16, "{out}");
        assert_close(&f32_from(&tail), &floats(&want["data"]), GOLDEN_TOL, model);
    }
    // JSON in, binary out requested per output.
    let g = golden("mlp");
    let req = json!({ "inputs": g["inputs"], "outputs": [{ "name": "y", "parameters": { "binary_data": true } }] });
    let (status, headers, bytes) = s
        .post_bytes(
            "/v2/models/mlp/infer",
            serde_json::to_vec(&req).unwrap(),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (json, tail) = split_binary(&headers, &bytes);
    assert_eq!(output(&json, "y")["parameters"]["binary_data_size"], 16);
    assert_close(
        &f32_from(&tail),
        &floats(&g["outputs"][0]["data"]),
        GOLDEN_TOL,
        "mlp per-output binary",
    );
}

fn pair_request(outputs: Value, params: Value) -> Value {
    json!({
        "id": "pair-1",
        "parameters": params,
        "inputs": [{ "name": "x", "datatype": "FP32", "shape": [2, 4], "data": [1, 2, 3, 4, -1, 0.5, 0, 8] }],
        "outputs": outputs,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_subsets_and_mixed_binary_outputs() {
    let s = TestServer::start_at(fixtures(), None, Options::default()).await;
    let scaled = [2.0, 4.0, 6.0, 8.0, -2.0, 1.0, 0.0, 16.0];
    let total = [10.0, 7.5];

    // Every output when none is named, in model order.
    let resp = s
        .infer_ok("pair", &pair_request(json!([]), json!({})))
        .await;
    let names: Vec<&str> = resp["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["scaled", "total"]);
    assert_close(&output_floats(&resp, "scaled"), &scaled, 0.0, "scaled");
    assert_close(&output_floats(&resp, "total"), &total, 1e-6, "total");
    assert_eq!(output(&resp, "total")["shape"], json!([2, 1]));

    // A subset: only what was asked for.
    let resp = s
        .infer_ok(
            "pair",
            &pair_request(json!([{ "name": "total" }]), json!({})),
        )
        .await;
    assert_eq!(resp["outputs"].as_array().unwrap().len(), 1, "{resp}");
    assert_close(&output_floats(&resp, "total"), &total, 1e-6, "total only");
    assert_eq!(resp["id"], "pair-1");

    // Both, in the asked order, one binary and one JSON.
    let req = pair_request(
        json!([{ "name": "total", "parameters": { "binary_data": true } }, { "name": "scaled" }]),
        json!({}),
    );
    let (status, headers, bytes) = s
        .post_bytes(
            "/v2/models/pair/infer",
            serde_json::to_vec(&req).unwrap(),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (json, tail) = split_binary(&headers, &bytes);
    assert_eq!(json["outputs"][0]["name"], "total");
    assert_eq!(json["outputs"][0]["parameters"]["binary_data_size"], 8);
    assert_close(&f32_from(&tail), &total, 1e-6, "binary total");
    assert_close(
        &floats(&json["outputs"][1]["data"]),
        &scaled,
        0.0,
        "json scaled",
    );

    // Request-level binary default, overridden for one output.
    let req = pair_request(
        json!([{ "name": "scaled", "parameters": { "binary_data": false } }, { "name": "total" }]),
        json!({ "binary_data_output": true }),
    );
    let (status, headers, bytes) = s
        .post_bytes(
            "/v2/models/pair/infer",
            serde_json::to_vec(&req).unwrap(),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (json, tail) = split_binary(&headers, &bytes);
    assert_close(&output_floats(&json, "scaled"), &scaled, 0.0, "json scaled");
    assert!(output(&json, "total").get("data").is_none());
    assert_close(&f32_from(&tail), &total, 1e-6, "binary total");

    // An output the model does not have.
    let (status, body) = s
        .post(
            "/v2/models/pair/infer",
            &pair_request(json!([{ "name": "nope" }]), json!({})),
        )
        .await;
    assert_eq!(status, 400);
    assert!(error_of(&body).contains("'nope'"), "{body}");
}
