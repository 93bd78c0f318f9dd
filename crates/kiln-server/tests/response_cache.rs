//! The response cache end to end, over a copy of the example repository where `mlp`,
//! `dlrm_small` and the `recommend` pipeline opt in (`[response_cache] enable = true`) and
//! `ranker` does not: a repeated request is a hit with byte-identical outputs that does not
//! execute the model; another input misses; a table delta (of the model, or of a pipeline's
//! member) and an unload drop the entries, so a stale answer is never served; the byte limit
//! holds under thousands of distinct requests.

mod common;

use common::*;
use kiln_protocol::inference as pb;
use safetensors::SafeTensors;
use serde_json::{json, Value};
use std::sync::Arc;
use tempfile::TempDir;

const TOKEN: &str = "cache-token";

/// The example models these tests serve, the cache enabled on all but `ranker`.
fn repo() -> TempDir {
    let dir = copy_models(&[
        "mlp",
        "dlrm_small",
        "ranker",
        "recommend",
        "user_tower",
        "coarse_rank",
        "fine_rank",
    ]);
    for model in ["mlp", "dlrm_small", "recommend"] {
        let path = dir.path().join(model).join("config.toml");
        let mut text = std::fs::read_to_string(&path).expect("read config.toml");
        text.push_str("\n[response_cache]\nenable = true\n");
        std::fs::write(&path, text).expect("write config.toml");
    }
    dir
}

async fn server(cache_bytes: u64) -> TestServer {
    let opts = Options {
        admin_token: Some(TOKEN.into()),
        response_cache_bytes: cache_bytes,
        // (unload and load are refused outside the explicit mode)
        ..Options::explicit_all()
    };
    TestServer::temp(repo(), opts).await
}

/// Cache hits, cache misses and executions of `model` from its statistics.
async fn counts(s: &TestServer, model: &str) -> (u64, u64, u64) {
    let st = http_stats(s, model).await;
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    (
        n(&st["inference_stats"]["cache_hit"]["count"]),
        n(&st["inference_stats"]["cache_miss"]["count"]),
        n(&st["execution_count"]),
    )
}

/// Infers `body` with binary outputs; the JSON part and the outputs' bytes.
async fn infer_binary(s: &TestServer, model: &str, body: &Value) -> (Value, Vec<u8>) {
    let mut body = body.clone();
    body["parameters"] = json!({ "binary_data_output": true });
    let (status, headers, bytes) = s
        .post_bytes(
            &format!("/v2/models/{model}/infer"),
            serde_json::to_vec(&body).expect("json"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
    split_binary(&headers, &bytes)
}

/// The value of the sample `series` (name and labels, exactly), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

async fn admin_post(s: &TestServer, path: &str, body: Vec<u8>) -> (u16, Value) {
    let r = (s.client.post(s.url(path)))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .expect("POST");
    read_json(r).await
}

/// Applies a delta setting `keys` of `model`'s `table` to `value` in every dimension.
async fn delta(s: &TestServer, model: &str, table: &str, keys: Vec<u64>, value: f32) {
    let r = (s
        .client
        .get(s.url(&format!("/admin/v1/models/{model}/tables"))))
    .header("Authorization", format!("Bearer {TOKEN}"))
    .send()
    .await
    .expect("GET tables");
    let (st, tables) = read_json(r).await;
    assert_eq!(st, 200, "{tables}");
    let dim = (tables["tables"].as_array().expect("tables").iter())
        .find(|t| t["name"] == table)
        .unwrap_or_else(|| panic!("no table {table} in {tables}"))["dim"]
        .as_u64()
        .expect("dim") as usize;
    let d = kiln_embed::Delta {
        source: "cache-test".into(),
        seq: 1,
        dim,
        values: vec![value; keys.len() * dim],
        keys,
        ..Default::default()
    };
    let path = format!("/admin/v1/models/{model}/tables/{table}/deltas");
    let (st, v) = admin_post(s, &path, d.encode()).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["versions"][0]["applied"], true, "{v}");
}

/// The golden request of `dlrm_small` (all its rows) and the ids of its `sparse_0`.
fn dlrm_request() -> (Value, Vec<i64>) {
    let bytes = std::fs::read(examples().join("dlrm_small/golden.safetensors")).expect("golden");
    let st = SafeTensors::deserialize(&bytes).expect("golden safetensors");
    let dense = f32_from(st.tensor("dense").expect("dense").data());
    let rows = dense.len() / 13;
    let mut inputs =
        vec![json!({ "name": "dense", "datatype": "FP32", "shape": [rows, 13], "data": dense })];
    let mut ids0 = Vec::new();
    for i in 0..4 {
        let name = format!("sparse_{i}");
        let ids: Vec<i64> = (st.tensor(&name).expect("sparse").data().chunks_exact(8))
            .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
            .collect();
        if i == 0 {
            ids0 = ids.clone();
        }
        inputs.push(json!({ "name": name, "datatype": "INT64", "shape": [rows, ids.len() / rows], "data": ids }));
    }
    (json!({ "inputs": inputs }), ids0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_request_is_a_hit_with_identical_bytes() {
    let s = server(64 << 20).await;
    let body = mlp_request(&[row(1), row(2)]);
    let (json_miss, miss) = infer_binary(&s, "mlp", &body).await;
    let (_, _, executed) = counts(&s, "mlp").await;
    let (json_hit, hit) = infer_binary(&s, "mlp", &body).await;
    assert_eq!(hit, miss, "the hit's output bytes differ from the miss's");
    assert_eq!(json_hit["outputs"], json_miss["outputs"]);
    assert_eq!(counts(&s, "mlp").await, (1, 1, executed), "hit not counted");

    // gRPC raw contents, and a request asking for the output by name: the same entry
    let mut c = s.grpc().await;
    let req = grpc_mlp(&[row(1), row(2)], "g");
    let raw = c.model_infer(req.clone()).await.expect("grpc").into_inner();
    assert_eq!(raw.raw_output_contents[0].as_ref(), &miss[..]);
    let mut named = req.clone();
    named.outputs = vec![pb::model_infer_request::InferRequestedOutputTensor {
        name: "y".into(),
        ..Default::default()
    }];
    let raw = c.model_infer(named).await.expect("grpc").into_inner();
    assert_eq!(raw.raw_output_contents[0].as_ref(), &miss[..]);
    assert_eq!(counts(&s, "mlp").await, (3, 1, executed));

    // a model that does not opt in never looks the cache up
    let g = golden("ranker");
    let ranker = json!({ "inputs": g["inputs"] });
    let first = s.infer_ok("ranker", &ranker).await;
    let second = s.infer_ok("ranker", &ranker).await;
    assert_eq!(first["outputs"], second["outputs"]);
    let (hits, misses, executions) = counts(&s, "ranker").await;
    assert_eq!((hits, misses), (0, 0), "ranker did not opt in");
    assert_eq!(executions, 2);

    let text = metrics_text(&s).await;
    let mlp = "{model=\"mlp\",version=\"1\"}";
    assert_eq!(
        sample(&text, &format!("kiln_response_cache_hits_total{mlp}")),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, &format!("kiln_response_cache_misses_total{mlp}")),
        Some(1.0)
    );
    let ranker = "{model=\"ranker\",version=\"1\"}";
    let ranker_hits = sample(&text, &format!("kiln_response_cache_hits_total{ranker}"));
    assert_eq!(ranker_hits.unwrap_or(0.0), 0.0, "{text}");
    assert!(
        text.contains("# TYPE kiln_response_cache_bytes gauge"),
        "{text}"
    );
    assert!(sample(&text, "kiln_response_cache_entries").is_some_and(|n| n >= 1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_input_misses() {
    let s = server(64 << 20).await;
    let one = s.infer_ok("mlp", &mlp_request(&[row(1)])).await;
    // other values, and the same row twice (same values per row, another shape)
    let other = s.infer_ok("mlp", &mlp_request(&[row(4)])).await;
    assert_ne!(output_floats(&other, "y"), output_floats(&one, "y"));
    let twice = s.infer_ok("mlp", &mlp_request(&[row(1), row(1)])).await;
    assert_eq!(output_floats(&twice, "y").len(), 2);
    assert_eq!(counts(&s, "mlp").await.0, 0, "nothing was repeated");
    assert_eq!(counts(&s, "mlp").await.1, 3);
    // the same bytes under a shape the model refuses are refused, never answered from the
    // entry (the lookup runs after validation)
    let bad = json!({ "inputs": [{ "name": "x", "datatype": "FP32", "shape": [2, 128], "data": row(1) }] });
    let (status, v) = s.post("/v2/models/mlp/infer", &bad).await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(counts(&s, "mlp").await.0, 0);
    let again = s.infer_ok("mlp", &mlp_request(&[row(1)])).await;
    assert_eq!(again["outputs"], one["outputs"]);
    assert_eq!(counts(&s, "mlp").await.0, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_delta_drops_the_entries_of_its_model() {
    let s = server(64 << 20).await;
    let (body, ids) = dlrm_request();
    let (_, before) = infer_binary(&s, "dlrm_small", &body).await;
    let (_, cached) = infer_binary(&s, "dlrm_small", &body).await;
    assert_eq!(cached, before);
    assert_eq!(counts(&s, "dlrm_small").await.0, 1);

    let mut keys: Vec<u64> = ids.iter().filter(|&&k| k >= 0).map(|&k| k as u64).collect();
    keys.sort_unstable();
    keys.dedup();
    delta(&s, "dlrm_small", "emb.0", keys, 0.5).await;

    let (_, after) = infer_binary(&s, "dlrm_small", &body).await;
    let (hits, misses, _) = counts(&s, "dlrm_small").await;
    assert_eq!(
        (hits, misses),
        (1, 2),
        "the request after the delta must miss"
    );
    assert_ne!(
        after, before,
        "the stale prediction was served after the delta"
    );
    // the new answer is cached in turn
    let (_, again) = infer_binary(&s, "dlrm_small", &body).await;
    assert_eq!(again, after);
    assert_eq!(counts(&s, "dlrm_small").await.0, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unload_drops_the_entries_of_the_version() {
    let s = server(64 << 20).await;
    let body = mlp_request(&[row(7)]);
    let (_, first) = infer_binary(&s, "mlp", &body).await;
    infer_binary(&s, "mlp", &body).await;
    assert_eq!(counts(&s, "mlp").await.0, 1);
    for op in ["unload", "load"] {
        let path = format!("/v2/repository/models/mlp/{op}");
        let (st, v) = admin_post(&s, &path, b"{}".to_vec()).await;
        assert_eq!(st, 200, "{op}: {v}");
    }
    // a fresh instance: its first request computes
    let (_, reloaded) = infer_binary(&s, "mlp", &body).await;
    assert_eq!(reloaded, first, "same model, same answer");
    let (hits, misses, executions) = counts(&s, "mlp").await;
    assert_eq!(
        (hits, misses),
        (0, 1),
        "the reloaded version hit an old entry"
    );
    assert_eq!(executions, 1);
    infer_binary(&s, "mlp", &body).await;
    assert_eq!(counts(&s, "mlp").await, (1, 1, 1), "a hit executes nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_byte_limit_holds() {
    const LIMIT: u64 = 256 << 10;
    const REQUESTS: u64 = 4000;
    const CLIENTS: u64 = 4;
    let s = Arc::new(server(LIMIT).await);
    let usage = |text: &str| {
        let bytes = sample(text, "kiln_response_cache_bytes").expect("bytes gauge");
        let entries = sample(text, "kiln_response_cache_entries").expect("entries gauge");
        (entries, bytes)
    };
    for round in 0..4 {
        let mut clients = Vec::new();
        for c in 0..CLIENTS {
            let s = s.clone();
            clients.push(tokio::spawn(async move {
                for i in 0..REQUESTS / CLIENTS / 4 {
                    let seed = 1_000 + (round * REQUESTS + c * REQUESTS / CLIENTS + i);
                    let mut c = s.grpc().await;
                    let rows = [row(seed), row(seed + 1)];
                    let r = c.model_infer(grpc_mlp(&rows, "")).await.expect("infer");
                    assert_eq!(r.into_inner().raw_output_contents[0].len(), 8);
                }
            }));
        }
        for c in clients {
            c.await.expect("client");
        }
        let (entries, bytes) = usage(&metrics_text(&s).await);
        assert!(
            bytes <= LIMIT as f64,
            "round {round}: {bytes} bytes > {LIMIT}"
        );
        assert!(
            entries < REQUESTS as f64,
            "round {round}: {entries} entries"
        );
    }
    let (hits, misses, _) = counts(&s, "mlp").await;
    assert_eq!(hits + misses, REQUESTS);
    let cache = s.repo.response_cache().expect("a cache");
    let (entries, bytes) = cache.usage();
    assert!(bytes <= LIMIT, "{bytes} > {LIMIT}");
    assert!(entries > 0 && entries < REQUESTS, "{entries} entries");
    // it did fill: more than a quarter of the limit is in use
    assert!(
        bytes > LIMIT / 4,
        "{bytes} bytes after {REQUESTS} distinct answers"
    );
}

/// The first golden case of the `recommend` pipeline.
fn recommend_request() -> Value {
    let text = std::fs::read_to_string(examples().join("recommend/golden.json")).expect("golden");
    let g: Value = serde_json::from_str(&text).expect("golden.json");
    json!({ "inputs": g["cases"][0]["inputs"] })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_answer_is_cached_until_a_member_changes() {
    let s = server(64 << 20).await;
    let body = recommend_request();
    let (json_miss, miss) = infer_binary(&s, "recommend", &body).await;
    let (json_hit, hit) = infer_binary(&s, "recommend", &body).await;
    assert_eq!(hit, miss, "the hit's output bytes differ from the miss's");
    assert_eq!(json_hit["outputs"], json_miss["outputs"]);
    assert_eq!(counts(&s, "recommend").await.0, 1);
    // one output of the two: served from the same entry
    let mut scores_only = body.clone();
    scores_only["outputs"] = json!([{ "name": "scores" }]);
    let v = s.infer_ok("recommend", &scores_only).await;
    let all = s.infer_ok("recommend", &body).await;
    assert_eq!(v["outputs"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(output(&v, "scores"), output(&all, "scores"));
    assert_eq!(counts(&s, "recommend").await.0, 3);

    // a delta to the fine ranker's user table changes every score: the pipeline must miss
    let user = body["inputs"]
        .as_array()
        .expect("inputs")
        .iter()
        .find(|i| i["name"] == "user_id")
        .expect("user_id")["data"][0]
        .as_u64()
        .expect("user id");
    delta(&s, "fine_rank", "emb.1", vec![user % 10_000], 0.75).await;
    let after = s.infer_ok("recommend", &body).await;
    let (hits, misses, _) = counts(&s, "recommend").await;
    assert_eq!(
        (hits, misses),
        (3, 2),
        "the request after the member's delta must miss"
    );
    assert_ne!(
        output_floats(&after, "scores"),
        output_floats(&all, "scores"),
        "the stale answer was served after the member's delta"
    );
}
