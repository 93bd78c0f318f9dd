//! What the pipeline tests share: temporary repositories holding copies of the example
//! members (and the recommend pipeline) next to pipelines a test writes, the golden cases of
//! `examples/models/recommend/golden.json`, gRPC conversions, and the pipeline configurations
//! the repository must refuse.

#![allow(dead_code)]

use crate::common::*;
use kiln_protocol::inference as pb;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tempfile::TempDir;
use tokio::task::JoinHandle;

/// The example recommend pipeline and its member models.
pub const RECOMMEND: [&str; 4] = ["user_tower", "coarse_rank", "fine_rank", "recommend"];

/// A temporary repository holding copies of these example models.
pub fn repo_of(models: &[&str]) -> TempDir {
    copy_models(models)
}

/// Writes pipeline `name` into `root`: its `config.toml` and an empty version directory `1/`.
pub fn write_pipeline(root: &Path, name: &str, config: &str) {
    let dir = root.join(name);
    std::fs::create_dir_all(dir.join("1")).expect("pipeline version directory");
    std::fs::write(dir.join("config.toml"), config).expect("write pipeline config.toml");
}

/// A `user_tower` configuration (user_features FP32 [N,32] -> user_emb FP32 [N,16]) with these
/// scheduler settings.
pub fn tower_config(max_batch: u32, delay_us: u64, preferred: &[u32]) -> String {
    format!(
        "max_batch_size = {max_batch}\n\
         [[input]]\nname = \"user_features\"\ndata_type = \"FP32\"\ndims = [32]\n\
         [[output]]\nname = \"user_emb\"\ndata_type = \"FP32\"\ndims = [16]\n\
         [dynamic_batching]\nmax_queue_delay_us = {delay_us}\npreferred_batch_sizes = {preferred:?}\n\
         max_queue_size = 1024\n\
         [instance_group]\ncount = 1\nthreads = 1\n"
    )
}

/// The head of a pipeline configuration: FP32 inputs and outputs with these full shapes.
pub fn pipeline_head(inputs: &[(&str, &[i64])], outputs: &[(&str, &str, &[i64])]) -> String {
    let mut text = String::from("backend = \"pipeline\"\nmax_batch_size = 0\n");
    for (name, dims) in inputs {
        text += &format!("[[input]]\nname = \"{name}\"\ndata_type = \"FP32\"\ndims = {dims:?}\n");
    }
    for (name, dtype, dims) in outputs {
        text +=
            &format!("[[output]]\nname = \"{name}\"\ndata_type = \"{dtype}\"\ndims = {dims:?}\n");
    }
    text
}

/// A pipeline with one input `x` FP32 [1,32] whose `[[step]]`s follow, producing `out` as
/// `out_dtype` `out_dims`.
pub fn x_pipeline(out_dtype: &str, out_dims: &[i64], steps: &str) -> String {
    pipeline_head(&[("x", &[1, 32])], &[("out", out_dtype, out_dims)]) + steps
}

/// A deterministic row of the tower's 32 features.
pub fn tower_row(seed: u64) -> Vec<f32> {
    row(seed)[..32].to_vec()
}

/// A JSON request with one FP32 input of these values and shape.
pub fn f32_request(name: &str, shape: &[usize], data: &[f32]) -> Value {
    json!({ "inputs": [{ "name": name, "datatype": "FP32", "shape": shape, "data": data }] })
}

/// `request` with these request-level parameters.
pub fn with_parameters(mut request: Value, parameters: Value) -> Value {
    request["parameters"] = parameters;
    request
}

/// A JSON number array as integers.
pub fn ints(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_i64().unwrap_or_else(|| panic!("not an integer: {x}")))
        .collect()
}

/// One case of `golden.json`.
pub struct GoldenCase {
    /// The request's inputs, as written (JSON tensors).
    pub inputs: Value,
    /// Expected `item_ids`.
    pub ids: Vec<i64>,
    /// Expected `scores`.
    pub scores: Vec<f32>,
}

/// The recommend pipeline's golden cases and their score tolerance.
pub fn recommend_golden() -> (Vec<GoldenCase>, f32) {
    let p = examples().join("recommend/golden.json");
    let g: Value = serde_json::from_str(&std::fs::read_to_string(&p).expect("read golden.json"))
        .expect("golden.json");
    let tol = g["score_tolerance"].as_f64().expect("score_tolerance") as f32;
    let cases = g["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| GoldenCase {
            inputs: c["inputs"].clone(),
            ids: ints(&output(c, "item_ids")["data"]),
            scores: floats(&output(c, "scores")["data"]),
        })
        .collect::<Vec<_>>();
    assert!(!cases.is_empty(), "golden.json has no cases");
    (cases, tol)
}

/// The golden case's JSON request.
pub fn golden_request(c: &GoldenCase) -> Value {
    json!({ "inputs": c.inputs })
}

/// Checks a recommend answer (item ids and scores) against a golden case.
pub fn check_recommend(ids: &[i64], scores: &[f32], want: &GoldenCase, tol: f32, what: &str) {
    assert_eq!(ids, want.ids.as_slice(), "{what}: item_ids");
    assert_close(scores, &want.scores, tol, &format!("{what}: scores"));
}

/// Checks a JSON recommend answer against a golden case.
pub fn check_recommend_json(resp: &Value, want: &GoldenCase, tol: f32, what: &str) {
    let ids = ints(&output(resp, "item_ids")["data"]);
    check_recommend(&ids, &output_floats(resp, "scores"), want, tol, what);
}

/// A gRPC request of `model` with JSON tensors (FP32 or INT64) sent as raw contents.
pub fn grpc_request(model: &str, inputs: &Value) -> pb::ModelInferRequest {
    let mut req = pb::ModelInferRequest {
        model_name: model.into(),
        ..Default::default()
    };
    for t in inputs.as_array().expect("input tensors") {
        let datatype = t["datatype"].as_str().expect("datatype").to_string();
        let raw: Vec<u8> = match datatype.as_str() {
            "FP32" => f32_bytes(&floats(&t["data"])),
            "INT64" => ints(&t["data"])
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
            other => panic!("no raw encoding for {other} in these tests"),
        };
        req.inputs.push(pb::model_infer_request::InferInputTensor {
            name: t["name"].as_str().expect("name").into(),
            datatype,
            shape: t["shape"]
                .as_array()
                .expect("shape")
                .iter()
                .map(|d| d.as_i64().expect("dim"))
                .collect(),
            ..Default::default()
        });
        req.raw_input_contents.push(raw.into());
    }
    req
}

/// The raw contents of output `name` of a gRPC response.
pub fn grpc_raw<'a>(r: &'a pb::ModelInferResponse, name: &str) -> &'a [u8] {
    let i = r
        .outputs
        .iter()
        .position(|o| o.name == name)
        .unwrap_or_else(|| panic!("no output '{name}' in {r:?}"));
    r.raw_output_contents
        .get(i)
        .unwrap_or_else(|| panic!("output '{name}' has no raw contents"))
}

/// INT64 values from little-endian bytes.
pub fn i64_from(b: &[u8]) -> Vec<i64> {
    assert_eq!(
        b.len() % 8,
        0,
        "{} bytes are not whole INT64 values",
        b.len()
    );
    b.chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect()
}

/// The sum of the samples of `metric` whose labels contain every one of `labels`.
pub fn metric_sum(text: &str, metric: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// The pipelines the repository must refuse: (name, config.toml, the step as the reason
/// quotes it, what else the reason says). Members: copies of `user_tower` and `coarse_rank`.
pub fn refused_pipelines() -> Vec<(&'static str, String, &'static str, &'static str)> {
    let reshape = |name: &str, from: &str, to: &str| {
        format!(
            "[[step]]\nname = \"{name}\"\nop = \"reshape\"\nshape = [1, 32]\n\
             input_map = {{ input = \"{from}\" }}\noutput_map = {{ output = \"{to}\" }}\n"
        )
    };
    let tower = |name: &str, model: &str, from: &str| {
        format!(
            "[[step]]\nname = \"{name}\"\nmodel = \"{model}\"\n\
             input_map = {{ user_features = \"{from}\" }}\noutput_map = {{ user_emb = \"out\" }}\n"
        )
    };
    vec![
        (
            "cycle",
            x_pipeline(
                "FP32",
                &[1, 32],
                &(reshape("spin", "back", "out") + &reshape("spin_back", "out", "back")),
            ),
            "\"spin_back\"",
            "cycle",
        ),
        (
            "unknown_model",
            x_pipeline("FP32", &[1, 16], &tower("embed", "no_such_tower", "x")),
            "'embed'",
            "no_such_tower",
        ),
        (
            "unproduced_tensor",
            x_pipeline("FP32", &[1, 16], &tower("embed", "user_tower", "ghost")),
            "'embed'",
            "'ghost', which no step produces",
        ),
        (
            // topk's indices are INT64; the tower takes FP32
            "dtype_mismatch",
            pipeline_head(&[("x", &[1, 40])], &[("out", "FP32", &[1, 16])])
                + "[[step]]\nname = \"best\"\nop = \"topk\"\nk = 32\n\
                   input_map = { input = \"x\" }\noutput_map = { indices = \"positions\" }\n"
                + &tower("embed", "user_tower", "positions"),
            "'embed'",
            "INT64",
        ),
        (
            // 1000 rows into a member that takes at most 64 per request
            "shape_mismatch",
            pipeline_head(&[("x", &[1, 32])], &[("out", "FP32", &[1000, 16])])
                + "[[step]]\nname = \"fan_out\"\nop = \"repeat\"\ntimes = 1000\n\
                   input_map = { input = \"x\" }\noutput_map = { output = \"rows\" }\n"
                + &tower("embed", "user_tower", "rows"),
            "'embed'",
            "max_batch_size",
        ),
        (
            "unknown_op",
            x_pipeline(
                "FP32",
                &[1, 32],
                "[[step]]\nname = \"order\"\nop = \"sort\"\n\
                 input_map = { input = \"x\" }\noutput_map = { output = \"out\" }\n",
            ),
            "'order'",
            "unknown operation 'sort'",
        ),
        (
            "field_not_applying",
            x_pipeline(
                "INT64",
                &[1, 4],
                "[[step]]\nname = \"best\"\nop = \"topk\"\nk = 4\ntimes = 2\n\
                 input_map = { input = \"x\" }\noutput_map = { indices = \"out\" }\n",
            ),
            "'best'",
            "times: does not apply to a topk step",
        ),
    ]
}

/// Asserts an error or index reason of `pipeline` names `step` and says `why`.
pub fn names_step(text: &str, pipeline: &str, step: &str, why: &str) {
    assert!(
        text.contains(step) && text.contains(why),
        "{pipeline}: should name step '{step}' and say '{why}': {text}"
    );
}

/// A step `tower`: `user_tower` from pipeline tensor `x` to `out`, with `extra` lines
/// (e.g. `timeout_ms = 1\n`).
pub fn tower_step(extra: &str) -> String {
    format!(
        "[[step]]\nname = \"tower\"\nmodel = \"user_tower\"\n{extra}\
         input_map = {{ user_features = \"x\" }}\noutput_map = {{ user_emb = \"out\" }}\n"
    )
}

/// Built-in operations only: `pick` gathers rows `idx` of `data` (4x3), `top` takes the
/// positions of the 3 best of `scores` (any length).
pub const LOOKUP: &str = "backend = \"pipeline\"\nmax_batch_size = 0\n\
     [[input]]\nname = \"data\"\ndata_type = \"FP32\"\ndims = [4, 3]\n\
     [[input]]\nname = \"idx\"\ndata_type = \"INT64\"\ndims = [2]\n\
     [[input]]\nname = \"scores\"\ndata_type = \"FP32\"\ndims = [-1]\n\
     [[output]]\nname = \"rows\"\ndata_type = \"FP32\"\ndims = [2, 3]\n\
     [[output]]\nname = \"best\"\ndata_type = \"INT64\"\ndims = [3]\n\
     [[step]]\nname = \"pick\"\nop = \"gather\"\n\
     input_map = { data = \"data\", indices = \"idx\" }\noutput_map = { output = \"rows\" }\n\
     [[step]]\nname = \"top\"\nop = \"topk\"\nk = 3\n\
     input_map = { input = \"scores\" }\noutput_map = { indices = \"best\" }\n";

/// A request of the [`LOOKUP`] pipeline: rows `idx` of the table 0..12, the top 3 of `scores`.
pub fn lookup_request(idx: &[i64], scores: &[f32]) -> Value {
    let data: Vec<f32> = (0..12).map(|v| v as f32).collect();
    json!({ "inputs": [
        { "name": "data", "datatype": "FP32", "shape": [4, 3], "data": data },
        { "name": "idx", "datatype": "INT64", "shape": [idx.len()], "data": idx },
        { "name": "scores", "datatype": "FP32", "shape": [scores.len()], "data": scores },
    ] })
}

/// A repository with `pair` (doubles x FP32 [N,4]), `pair3` (pair's second version served as
/// a model of its own: triples it) and the pipeline `choose`, whose switch `ranker` runs
/// `by_two` (pair) or `by_three` (pair3) by the request parameter `ranker`.
pub fn switch_repo() -> TempDir {
    let dir = copy_models(&["pair"]);
    copy_dir(&dir.path().join("pair"), &dir.path().join("pair3"));
    std::fs::copy(
        fixture_file("pair_v2.onnx"),
        dir.path().join("pair3/1/model.onnx"),
    )
    .expect("pair3 model file");
    let step = |name: &str, model: &str| {
        format!(
            "[[step]]\nname = \"{name}\"\nmodel = \"{model}\"\n\
             input_map = {{ x = \"x\" }}\noutput_map = {{ scaled = \"out\" }}\n"
        )
    };
    let config = pipeline_head(&[("x", &[1, 4])], &[("out", "FP32", &[1, 4])])
        + "[[step]]\nname = \"ranker\"\nop = \"switch\"\nparameter = \"ranker\"\n\
           cases = { double = [\"by_two\"], triple = [\"by_three\"] }\n"
        + &step("by_two", "pair")
        + &step("by_three", "pair3");
    write_pipeline(dir.path(), "choose", &config);
    dir
}

/// A gRPC request parameter.
pub fn grpc_parameter(choice: pb::infer_parameter::ParameterChoice) -> pb::InferParameter {
    pb::InferParameter {
        parameter_choice: Some(choice),
    }
}

/// `POST /v2/repository/models/<name>/load`: the status and the body.
pub async fn load_model(s: &TestServer, name: &str) -> (u16, Value) {
    s.post(&format!("/v2/repository/models/{name}/load"), &json!({}))
        .await
}

/// Requests the golden cases of the recommend pipeline one after another until `stop`,
/// counting each in `answered`; returns a line for every request that failed or answered
/// other items than the reference.
pub fn recommend_traffic(
    s: Arc<TestServer>,
    cases: Arc<Vec<GoldenCase>>,
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicUsize>,
) -> JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut failures = Vec::new();
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            let case = &cases[i % cases.len()];
            let (status, body) = s
                .post("/v2/models/recommend/infer", &golden_request(case))
                .await;
            if status != 200 {
                failures.push(format!("{status}: {body}"));
            } else if ints(&output(&body, "item_ids")["data"]) != case.ids {
                failures.push(format!("case {}: other items {body}", i % cases.len()));
            }
            answered.fetch_add(1, Ordering::Relaxed);
            i += 1;
        }
        failures
    })
}

/// Checks the statistics of pipeline `name` after `n` requests, as Triton reports an
/// ensemble: one inference and one execution per request, every `inference_stats` duration,
/// and all executions in the `batch_size` 1 entry of `batch_stats`.
pub fn assert_ensemble_stats(stats: &Value, name: &str, n: u64) {
    assert_eq!(stats["name"], name, "{stats}");
    assert_eq!(stats["version"], "1", "{stats}");
    assert_eq!(stats["inference_count"], n, "{stats}");
    assert_eq!(stats["execution_count"], n, "{stats}");
    for field in [
        "success",
        "fail",
        "queue",
        "compute_input",
        "compute_infer",
        "compute_output",
    ] {
        assert!(
            stats["inference_stats"][field]["count"].is_u64()
                && stats["inference_stats"][field]["ns"].is_u64(),
            "inference_stats.{field} missing: {stats}"
        );
    }
    assert!(stats["inference_stats"]["success"]["ns"].as_u64().unwrap() > 0);
    let batch = stats["batch_stats"]
        .as_array()
        .expect("batch_stats")
        .iter()
        .find(|b| b["batch_size"] == 1)
        .unwrap_or_else(|| panic!("no batch_size 1 entry: {stats}"));
    assert_eq!(batch["compute_infer"]["count"], n, "{stats}");
}
