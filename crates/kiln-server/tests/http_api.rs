//! The HTTP API's metadata and management end to end: health, server and model metadata,
//! readiness, Triton model configuration, statistics, the repository index with load and
//! unload, and the Prometheus endpoint on the metrics port.

mod common;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_server_metadata() {
    let s = TestServer::examples().await;
    assert_eq!(s.get("/v2/health/live").await.0, 200);
    assert_eq!(s.get("/v2/health/ready").await.0, 200);
    let (status, meta) = s.get("/v2").await;
    assert_eq!(status, 200);
    assert_eq!(meta["name"], "kiln");
    assert_eq!(meta["version"], env!("CARGO_PKG_VERSION"));
    let ext: Vec<&str> = meta["extensions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    for want in [
        "binary_tensor_data",
        "model_repository",
        "model_configuration",
        "statistics",
    ] {
        assert!(ext.contains(&want), "extension {want} missing from {ext:?}");
    }
    let (status, body) = s.get("/v2/no/such/endpoint").await;
    assert_eq!(status, 404);
    assert!(error_of(&body).contains("/v2/no/such/endpoint"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_metadata_and_readiness() {
    let s = TestServer::examples().await;
    for path in ["/v2/models/mlp", "/v2/models/mlp/versions/1"] {
        let (status, m) = s.get(path).await;
        assert_eq!(status, 200, "{path}: {m}");
        assert_eq!(m["name"], "mlp");
        assert_eq!(m["versions"], json!(["1"]));
        assert!(m["platform"].as_str().unwrap().ends_with("_onnx"), "{m}");
        assert_eq!(
            m["inputs"],
            json!([{ "name": "x", "datatype": "FP32", "shape": [-1, 256] }])
        );
        assert_eq!(
            m["outputs"],
            json!([{ "name": "y", "datatype": "FP32", "shape": [-1, 1] }])
        );
    }
    let (_, r) = s.get("/v2/models/ranker").await;
    assert_eq!(
        r["inputs"],
        json!([
            { "name": "ids", "datatype": "INT64", "shape": [-1, 8] },
            { "name": "dense", "datatype": "FP32", "shape": [-1, 13] }
        ])
    );
    assert_eq!(
        r["outputs"],
        json!([{ "name": "score", "datatype": "FP32", "shape": [-1, 1] }])
    );

    assert_eq!(s.get("/v2/models/mlp/ready").await.0, 200);
    assert_eq!(s.get("/v2/models/mlp/versions/1/ready").await.0, 200);
    assert_eq!(s.get("/v2/models/ranker/ready").await.0, 200);
    let (status, body) = s.get("/v2/models/mlp/versions/2/ready").await;
    assert_eq!(status, 404);
    assert!(error_of(&body).contains("version 2"), "{body}");
    let (status, body) = s.get("/v2/models/nope/ready").await;
    assert_eq!(status, 404);
    assert!(error_of(&body).contains("nope"), "{body}");
    let (status, body) = s.get("/v2/models/nope").await;
    assert_eq!(status, 404, "{body}");
}

/// A model input as Triton's HTTP configuration writes it: the protobuf message as JSON, with
/// its default fields.
fn config_input(name: &str, data_type: &str, dims: &[i64]) -> serde_json::Value {
    json!({
        "name": name, "data_type": data_type, "format": "FORMAT_NONE", "dims": dims,
        "is_shape_tensor": false, "allow_ragged_batch": false, "optional": false,
        "is_non_linear_format_io": false,
    })
}

/// A model output as Triton's HTTP configuration writes it.
fn config_output(name: &str, data_type: &str, dims: &[i64]) -> serde_json::Value {
    json!({
        "name": name, "data_type": data_type, "dims": dims, "label_filename": "",
        "is_shape_tensor": false, "is_non_linear_format_io": false,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_config_is_triton_json() {
    let s = TestServer::examples().await;
    for path in ["/v2/models/mlp/config", "/v2/models/mlp/versions/1/config"] {
        let (status, c) = s.get(path).await;
        assert_eq!(status, 200, "{path}: {c}");
        assert_eq!(c["name"], "mlp");
        assert_eq!(c["max_batch_size"], 64);
        assert_eq!(c["input"], json!([config_input("x", "TYPE_FP32", &[256])]));
        assert_eq!(c["output"], json!([config_output("y", "TYPE_FP32", &[1])]));
        assert_eq!(c["dynamic_batching"]["max_queue_delay_microseconds"], 100);
        assert_eq!(c["dynamic_batching"]["preferred_batch_size"], json!([64]));
        assert_eq!(
            c["dynamic_batching"]["default_queue_policy"],
            json!({
                "timeout_action": "REJECT",
                "default_timeout_microseconds": 0,
                "allow_timeout_override": true,
                "max_queue_size": 1024,
            })
        );
        assert_eq!(c["instance_group"][0]["kind"], "KIND_CPU");
        assert_eq!(c["instance_group"][0]["count"], 1);
        assert_eq!(
            c["version_policy"],
            json!({ "latest": { "num_versions": 1 } })
        );
    }
    let (_, c) = s.get("/v2/models/ranker/config").await;
    assert_eq!(c["input"][0], config_input("ids", "TYPE_INT64", &[8]));
    assert_eq!(c["input"][1], config_input("dense", "TYPE_FP32", &[13]));
    assert_eq!(c["output"][0], config_output("score", "TYPE_FP32", &[1]));
    // no backend is configured: the engine that serves the file is named, as Triton names the
    // backend it picked
    let engine = c["parameters"]["engine"]["string_value"].as_str().unwrap();
    assert_eq!(c["backend"], engine, "{c}");
    assert_eq!(c["platform"], format!("{engine}_onnx"), "{c}");
    assert_eq!(s.get("/v2/models/nope/config").await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statistics_grow_with_inferences() {
    let s = TestServer::examples().await;
    let before = http_stats(&s, "mlp").await;
    assert_eq!(before["name"], "mlp");
    assert_eq!(before["version"], "1");
    assert_eq!(before["inference_count"], 0);
    assert_eq!(before["inference_stats"]["success"]["count"], 0);
    for i in 0..3 {
        s.infer_ok("mlp", &mlp_request(&[row(i), row(i + 100)]))
            .await;
    }
    let after = http_stats(&s, "mlp").await;
    assert_eq!(after["inference_count"], 6, "rows computed: {after}");
    assert_eq!(after["inference_stats"]["success"]["count"], 3, "{after}");
    assert!(
        after["inference_stats"]["success"]["ns"].as_u64().unwrap() > 0,
        "{after}"
    );
    assert_eq!(after["inference_stats"]["queue"]["count"], 3, "{after}");
    let executions = after["execution_count"].as_u64().unwrap();
    assert!((1..=3).contains(&executions), "{after}");
    assert!(after["last_inference"].as_u64().unwrap() > 0, "{after}");
    let batches = after["batch_stats"].as_array().unwrap();
    let executed: u64 = batches
        .iter()
        .map(|b| b["compute_infer"]["count"].as_u64().unwrap())
        .sum();
    assert_eq!(executed, executions, "{after}");

    let (status, v) = s.get("/v2/models/mlp/versions/1/stats").await;
    assert_eq!(status, 200);
    assert_eq!(v["model_stats"][0]["inference_count"], 6);
    assert_eq!(s.get("/v2/models/mlp/versions/9/stats").await.0, 404);

    let (status, all) = s.get("/v2/models/stats").await;
    assert_eq!(status, 200);
    let names: Vec<&str> = all["model_stats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"mlp") && names.contains(&"ranker"), "{all}");
    let ranker = all["model_stats"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "ranker")
        .unwrap();
    assert_eq!(ranker["inference_count"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repository_index_load_and_unload() {
    let s = TestServer::start_at(examples(), None, Options::explicit_all()).await;
    let index = http_index(&s).await;
    for model in ["mlp", "ranker"] {
        let row =
            index_row(&index, model, Some("1")).unwrap_or_else(|| panic!("{model} not in {index}"));
        assert_eq!(row["state"], "READY", "{index}");
    }

    let (status, body) = s.post("/v2/repository/models/mlp/unload", &json!({})).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = s
        .post("/v2/models/mlp/infer", &mlp_request(&[row(1)]))
        .await;
    assert!(
        status == 404 || status == 503,
        "infer after unload: {status} {body}"
    );
    assert!(error_of(&body).contains("mlp"), "{body}");
    assert_ne!(s.get("/v2/models/mlp/ready").await.0, 200);
    let index = http_index(&s).await;
    let mlp = index_row(&index, "mlp", None).expect("mlp stays listed");
    assert_eq!(mlp["state"], "UNAVAILABLE", "{index}");
    assert_eq!(
        index_row(&index, "ranker", Some("1")).unwrap()["state"],
        "READY"
    );
    // The other model keeps serving.
    let g = golden("ranker");
    s.infer_ok("ranker", &json!({ "inputs": g["inputs"] }))
        .await;

    let (status, body) = s.post("/v2/repository/models/mlp/load", &json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(s.get("/v2/models/mlp/ready").await.0, 200);
    let g = golden("mlp");
    let resp = s.infer_ok("mlp", &json!({ "inputs": g["inputs"] })).await;
    assert_close(
        &output_floats(&resp, "y"),
        &floats(&g["outputs"][0]["data"]),
        GOLDEN_TOL,
        "mlp after load",
    );
    assert_eq!(
        index_row(&http_index(&s).await, "mlp", Some("1")).unwrap()["state"],
        "READY"
    );

    let (status, body) = s.post("/v2/repository/models/nope/load", &json!({})).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(
        error_of(&body),
        "failed to load 'nope', failed to poll from model repository"
    );
    // as Triton: unloading a model that is not loaded changes nothing and succeeds
    let (status, body) = s
        .post("/v2/repository/models/nope/unload", &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
}

/// The value of the sample line that starts with `prefix` (name and labels).
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_metrics() {
    let s = TestServer::examples().await;
    s.infer_ok("mlp", &mlp_request(&[row(1), row(2)])).await;
    s.infer_ok("mlp", &mlp_request(&[row(3)])).await;
    let (status, _) = s
        .post("/v2/models/mlp/infer", &json!({ "inputs": [] }))
        .await;
    assert_eq!(status, 400);

    let r = s
        .client
        .get(format!("{}/metrics", s.metrics))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .contains("text"),
        "{:?}",
        r.headers()
    );
    let text = r.text().await.unwrap();
    for name in [
        "kiln_inference_request_duration_seconds",
        "kiln_inference_batch_size_rows",
        "kiln_inference_queue_duration_seconds",
        "kiln_inference_compute_duration_seconds",
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} histogram")),
            "{name} missing:\n{text}"
        );
    }
    let labels = "{model=\"mlp\",version=\"1\"}";
    assert_eq!(
        sample(
            &text,
            &format!("kiln_inference_request_success_total{labels}")
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, &format!("kiln_inference_rows_total{labels}")),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            &format!("kiln_inference_request_duration_seconds_count{labels}")
        ),
        Some(3.0),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("kiln_inference_request_failure_total{")
                && l.contains("model=\"mlp\"")
                && l.contains("reason=\"invalid_argument\"")),
        "{text}"
    );
    // Process metrics are the binary's to register (crates/kiln/src/process_metrics.rs).
    assert!(text.trim_end().ends_with("# EOF"), "terminator missing");
    assert_eq!(text.matches("# EOF").count(), 1, "{text}");
    // The HTTP port does not serve metrics.
    assert_eq!(s.get("/metrics").await.0, 404);
}
