//! The repository extension as Triton implements it, and Triton's error texts, over HTTP and
//! gRPC: the index lists every model of the repository in every control mode (a model never
//! loaded by name only, a version still answering requests after its unload `UNLOADING`);
//! load and unload are refused outside the explicit mode; load takes a JSON `config` override
//! and `file:<version>/<name>` model files, and a malformed one changes nothing; unload follows
//! `unload_dependents`; the texts clients match on are Triton's, with Kiln's status codes.

mod common;
mod pipeline_common;

use common::*;
use kiln_protocol::inference as pb;
use kiln_protocol::inference::model_repository_parameter::ParameterChoice as P;
use pipeline_common::{repo_of, tower_step, write_pipeline, x_pipeline};
use serde_json::{json, Value};
use std::collections::HashMap;
use tonic::Code;

const CONTROL_DISABLED: &str = "explicit model load / unload is not allowed if polling is enabled";
const PAIR_X: [f32; 4] = [1.0, -2.0, 0.5, 4.0];

fn explicit(models: &[&str]) -> Options {
    Options {
        mode: kiln_runtime::ControlMode::Explicit,
        startup_models: models.iter().map(|m| m.to_string()).collect(),
        ..Options::default()
    }
}

fn pair_request() -> Value {
    json!({ "inputs": [{ "name": "x", "datatype": "FP32", "shape": [1, 4], "data": PAIR_X }] })
}

fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn param(p: P) -> pb::ModelRepositoryParameter {
    pb::ModelRepositoryParameter {
        parameter_choice: Some(p),
    }
}

fn grpc_load(model: &str, params: Vec<(&str, P)>) -> pb::RepositoryModelLoadRequest {
    pb::RepositoryModelLoadRequest {
        model_name: model.into(),
        parameters: params
            .into_iter()
            .map(|(k, v)| (k.to_string(), param(v)))
            .collect::<HashMap<_, _>>(),
        ..Default::default()
    }
}

async fn grpc_index(s: &TestServer, ready: bool) -> Vec<pb::repository_index_response::ModelIndex> {
    s.grpc()
        .await
        .repository_index(pb::RepositoryIndexRequest {
            ready,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .models
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_lists_every_model_in_every_mode_and_control_needs_explicit_mode() {
    // explicit, mlp loaded at start: ranker is listed by name only
    let s = TestServer::temp(copy_models(&["mlp", "ranker"]), explicit(&["mlp"])).await;
    let index = http_index(&s).await;
    assert_eq!(
        index_row(&index, "mlp", Some("1")).unwrap()["state"],
        "READY"
    );
    assert_eq!(
        index_row(&index, "ranker", None).unwrap(),
        &json!({ "name": "ranker" }),
        "{index}"
    );
    let (status, ready) = s
        .post("/v2/repository/index", &json!({ "ready": true }))
        .await;
    assert_eq!(status, 200);
    assert_eq!(ready.as_array().unwrap().len(), 1, "{ready}");
    let rows = grpc_index(&s, false).await;
    let ranker = rows.iter().find(|r| r.name == "ranker").unwrap();
    assert_eq!((ranker.version.as_str(), ranker.state.as_str()), ("", ""));
    assert_eq!(grpc_index(&s, true).await.len(), 1);

    // none and poll: the index works, load and unload are refused with Triton's text
    for mode in [
        kiln_runtime::ControlMode::None,
        kiln_runtime::ControlMode::Poll(std::time::Duration::from_secs(3600)),
    ] {
        let opts = Options {
            mode,
            ..Options::default()
        };
        let s = TestServer::temp(copy_models(&["mlp"]), opts).await;
        let index = http_index(&s).await;
        assert_eq!(
            index_row(&index, "mlp", Some("1")).unwrap()["state"],
            "READY"
        );
        for action in ["load", "unload"] {
            let (status, body) = s
                .post(&format!("/v2/repository/models/mlp/{action}"), &json!({}))
                .await;
            assert_eq!(status, 503, "{mode:?} {action}: {body}");
            assert_eq!(error_of(&body), CONTROL_DISABLED);
        }
        let mut c = s.grpc().await;
        let e = c
            .repository_model_load(grpc_load("mlp", vec![]))
            .await
            .unwrap_err();
        assert_eq!(
            (e.code(), e.message()),
            (Code::Unavailable, CONTROL_DISABLED)
        );
        let e = c
            .repository_model_unload(pb::RepositoryModelUnloadRequest {
                model_name: "mlp".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(
            (e.code(), e.message()),
            (Code::Unavailable, CONTROL_DISABLED)
        );
        assert_eq!(s.get("/v2/models/mlp/ready").await.0, 200, "still serving");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_model_load_and_unloading_state() {
    let s = TestServer::temp(copy_models(&["mlp"]), explicit(&["mlp"])).await;
    let want = "failed to load 'nope', failed to poll from model repository";
    let (status, body) = s.post("/v2/repository/models/nope/load", &json!({})).await;
    assert_eq!((status, error_of(&body).as_str()), (404, want));
    let e = s
        .grpc()
        .await
        .repository_model_load(grpc_load("nope", vec![]))
        .await
        .unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::NotFound, want));

    // a version held by a request in flight shows UNLOADING after its unload, until released
    let held = s.repo.get("mlp", None).unwrap();
    let (status, body) = s.post("/v2/repository/models/mlp/unload", &json!({})).await;
    assert_eq!(status, 200, "{body}");
    let index = http_index(&s).await;
    assert_eq!(
        index_row(&index, "mlp", Some("1")).unwrap()["state"],
        "UNLOADING",
        "{index}"
    );
    let rows = grpc_index(&s, false).await;
    assert!(
        rows.iter()
            .any(|r| r.name == "mlp" && r.state == "UNLOADING"),
        "{rows:?}"
    );
    drop(held);
    let index = http_index(&s).await;
    let row = index_row(&index, "mlp", None).unwrap();
    assert_eq!(
        (&row["state"], &row["reason"]),
        (&json!("UNAVAILABLE"), &json!("unloaded"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_override_applies_and_a_malformed_one_changes_nothing() {
    let s = TestServer::temp(copy_models(&["pair"]), explicit(&["pair"])).await;
    let config = |max: u32| json!({ "max_batch_size": max }).to_string();
    let (status, body) = s
        .post(
            "/v2/repository/models/pair/load",
            &json!({ "parameters": { "config": config(4) } }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(s.get("/v2/models/pair/config").await.1["max_batch_size"], 4);
    let mut c = s.grpc().await;
    c.repository_model_load(grpc_load(
        "pair",
        vec![("config", P::StringParam(config(2)))],
    ))
    .await
    .unwrap();
    assert_eq!(s.get("/v2/models/pair/config").await.1["max_batch_size"], 2);

    let files_before = std::fs::read_dir(s.root.join("pair")).unwrap().count();
    for bad in [
        json!("{"),
        json!(r#"{"max_batch_size": "many"}"#),
        json!(r#"{"no_such_field": 1}"#),
        json!(r#"{"max_batch_size": -1}"#),
        json!(r#"{"platform": "tensorrt_plan"}"#),
        json!(7),
    ] {
        let (status, body) = s
            .post(
                "/v2/repository/models/pair/load",
                &json!({ "parameters": { "config": bad } }),
            )
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
        let e = c
            .repository_model_load(grpc_load(
                "pair",
                vec![("config", P::StringParam(bad.as_str().unwrap_or("7").into()))],
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad}: {e:?}");
    }
    let (_, body) = s
        .post(
            "/v2/repository/models/pair/load",
            &json!({ "parameters": { "config": "{" } }),
        )
        .await;
    assert!(
        error_of(&body).starts_with("failed to load 'pair', Invalid config override: "),
        "{body}"
    );
    let (status, body) = s
        .post(
            "/v2/repository/models/pair/load",
            &json!({ "parameters": { "bogus": true } }),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        error_of(&body),
        "Unrecognized load parameter 'bogus' with type 'bool'"
    );
    // nothing changed: the same files, the last good configuration, still serving
    assert_eq!(
        std::fs::read_dir(s.root.join("pair")).unwrap().count(),
        files_before
    );
    assert_eq!(s.get("/v2/models/pair/config").await.1["max_batch_size"], 2);
    s.infer_ok("pair", &pair_request()).await;
    // a load without the parameter goes back to the file's configuration
    let (status, _) = s.post("/v2/repository/models/pair/load", &json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(s.get("/v2/models/pair/config").await.1["max_batch_size"], 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_files_in_the_request_are_written_after_checks() {
    let s = TestServer::temp(copy_models(&["pair"]), explicit(&[])).await;
    let v2 = std::fs::read(fixture_file("pair_v2.onnx")).unwrap();
    let v1 = std::fs::read(s.root.join("pair/1/model.onnx")).unwrap();
    let config = json!({ "max_batch_size": 8 }).to_string();

    // refused: a file path that is not <version>/<name>, files without config, bad base64
    for params in [
        json!({ "config": config, "file:../escape.onnx": base64(&v2) }),
        json!({ "config": config, "file:model.onnx": base64(&v2) }),
        json!({ "file:1/model.onnx": base64(&v2) }),
        json!({ "config": config, "file:1/model.onnx": "not base64!" }),
        json!({ "config": "{", "file:1/model.onnx": base64(&v2) }),
    ] {
        let (status, body) = s
            .post(
                "/v2/repository/models/uploaded/load",
                &json!({ "parameters": params }),
            )
            .await;
        assert_eq!(status, 400, "{params}: {body}");
        assert!(!s.root.join("uploaded").exists(), "{params} wrote files");
    }

    // over HTTP, base64: a new model
    let (status, body) = s
        .post(
            "/v2/repository/models/uploaded/load",
            &json!({ "parameters": { "config": config, "file:1/model.onnx": base64(&v2) } }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        std::fs::read(s.root.join("uploaded/1/model.onnx")).unwrap(),
        v2
    );
    let out = s.infer_ok("uploaded", &pair_request()).await;
    let want: Vec<f32> = PAIR_X.iter().map(|x| x * 3.0).collect();
    assert_eq!(output_floats(&out, "scaled"), want);

    // over gRPC, bytes: version 2 of pair beside its version 1
    s.grpc()
        .await
        .repository_model_load(grpc_load(
            "pair",
            vec![
                (
                    "config",
                    P::StringParam(
                        json!({ "max_batch_size": 8, "version_policy": { "all": {} } }).to_string(),
                    ),
                ),
                ("file:2/model.onnx", P::BytesParam(v2.clone())),
            ],
        ))
        .await
        .unwrap();
    assert_eq!(std::fs::read(s.root.join("pair/1/model.onnx")).unwrap(), v1);
    let index = http_index(&s).await;
    for v in ["1", "2"] {
        assert_eq!(
            index_row(&index, "pair", Some(v)).unwrap()["state"],
            "READY",
            "{index}"
        );
    }
    let out = s.infer_ok("pair", &pair_request()).await;
    assert_eq!(out["model_version"], "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unload_dependents_unloads_the_pipeline_members() {
    let dir = repo_of(&["user_tower"]);
    write_pipeline(
        dir.path(),
        "embed",
        &x_pipeline("FP32", &[1, 16], &tower_step("")),
    );
    let s = TestServer::temp(dir, Options::explicit_all()).await;
    let ready = |m: &'static str| {
        let s = &s;
        async move { s.get(&format!("/v2/models/{m}/ready")).await.0 == 200 }
    };
    assert!(ready("embed").await && ready("user_tower").await);

    // without the parameter: the pipeline alone
    let (status, body) = s
        .post("/v2/repository/models/embed/unload", &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(!ready("embed").await && ready("user_tower").await);

    // with it (HTTP, then gRPC): the members too
    let (status, _) = s.post("/v2/repository/models/embed/load", &json!({})).await;
    assert_eq!(status, 200);
    let (status, body) = s
        .post(
            "/v2/repository/models/embed/unload",
            &json!({ "parameters": { "unload_dependents": true } }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(!ready("embed").await && !ready("user_tower").await);

    let mut c = s.grpc().await;
    for m in ["user_tower", "embed"] {
        c.repository_model_load(grpc_load(m, vec![])).await.unwrap();
    }
    assert!(ready("embed").await && ready("user_tower").await);
    c.repository_model_unload(pb::RepositoryModelUnloadRequest {
        model_name: "embed".into(),
        parameters: [("unload_dependents".to_string(), param(P::BoolParam(true)))].into(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(!ready("embed").await && !ready("user_tower").await);
    let (_, meta) = s.get("/v2").await;
    assert!(
        meta["extensions"]
            .as_array()
            .unwrap()
            .contains(&json!("model_repository(unload_dependents)")),
        "{meta}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_texts_are_tritons_over_http_and_grpc() {
    let s = TestServer::temp(copy_models(&["mlp"]), Options::default()).await;
    let mut c = s.grpc().await;
    let http = |path: &'static str, body: Value| {
        let s = &s;
        async move { s.post(path, &body).await }
    };
    let mlp = mlp_request(&[row(1)]);

    // unknown model, unknown version, a version that is not a number
    let cases = [
        (
            "/v2/models/nope/infer",
            404,
            "Request for unknown model: 'nope' is not found",
        ),
        (
            "/v2/models/mlp/versions/9/infer",
            404,
            "Request for unknown model: 'mlp' version 9 is not found",
        ),
        (
            "/v2/models/mlp/versions/one/infer",
            400,
            "failed to get model version from specified version string 'one'",
        ),
    ];
    for (path, status, text) in cases {
        let (st, body) = http(path, mlp.clone()).await;
        assert_eq!(st, status, "{path}: {body}");
        assert!(error_of(&body).starts_with(text), "{path}: {body}");
    }
    for (model, version, code, text) in [
        (
            "nope",
            "",
            Code::NotFound,
            "Request for unknown model: 'nope' is not found",
        ),
        (
            "mlp",
            "9",
            Code::NotFound,
            "Request for unknown model: 'mlp' version 9 is not found",
        ),
        (
            "mlp",
            "one",
            Code::InvalidArgument,
            "failed to get model version from specified version string 'one'",
        ),
    ] {
        let mut r = grpc_mlp(&[row(1)], "e");
        r.model_name = model.into();
        r.model_version = version.into();
        let e = c.model_infer(r).await.unwrap_err();
        assert_eq!(e.code(), code, "{e:?}");
        assert!(e.message().starts_with(text), "{e:?}");
    }

    // contents mixed with raw_input_contents (gRPC only)
    let mut r = grpc_mlp(&[row(1)], "mixed");
    r.inputs[0].contents = Some(pb::InferTensorContents {
        fp32_contents: row(1),
        ..Default::default()
    });
    let e = c.model_infer(r).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(
        e.message(),
        "contents field must not be specified when using raw_input_contents for 'x' for model 'mlp'"
    );

    // input count, shape, datatype, element count
    let input = |name: &str, dtype: &str, shape: Value, data: Value| json!({ "inputs": [{ "name": name, "datatype": dtype, "shape": shape, "data": data }] });
    let zeros = |n: usize| json!(vec![0.0f32; n]);
    let cases = [
        (
            json!({ "inputs": [] }),
            "expected 1 inputs but got 0 inputs for model 'mlp'. Got input(s) [], but missing \
             required input(s) ['x']. Please provide all required input(s).",
        ),
        (
            input("x", "FP32", json!([1, 255]), zeros(255)),
            "unexpected shape for input 'x' for model 'mlp'. Expected [-1,256], got [1,255]. NOTE",
        ),
        (
            input("x", "INT32", json!([1, 256]), json!(vec![0; 256])),
            "inference input 'x' data-type is 'INT32', but model 'mlp' expects 'FP32'",
        ),
        (
            input("x", "FP32", json!([1, 256]), zeros(255)),
            "expected 256 elements for inference input 'x', got 255",
        ),
    ];
    for (body, text) in cases {
        let (st, v) = s.post("/v2/models/mlp/infer", &body).await;
        assert_eq!(st, 400, "{body}: {v}");
        assert!(error_of(&v).starts_with(text), "{text}\n{v}");
    }
    let mut r = grpc_mlp(&[row(1)], "dtype");
    r.inputs[0].datatype = "INT32".into();
    let e = c.model_infer(r).await.unwrap_err();
    assert_eq!(
        e.message(),
        "inference input 'x' data-type is 'INT32', but model 'mlp' expects 'FP32'"
    );
    let mut r = grpc_mlp(&[row(1)], "shape");
    r.inputs[0].shape = vec![2, 128];
    let e = c.model_infer(r).await.unwrap_err();
    assert!(
        e.message().starts_with(
            "unexpected shape for input 'x' for model 'mlp'. Expected [-1,256], got [2,128]."
        ),
        "{e:?}"
    );
    let mut r = grpc_mlp(&[row(1)], "count");
    r.inputs.clear();
    r.raw_input_contents.clear();
    let e = c.model_infer(r).await.unwrap_err();
    assert!(
        e.message()
            .starts_with("expected 1 inputs but got 0 inputs"),
        "{e:?}"
    );
    let mut r = grpc_mlp(&[row(1)], "bytes");
    r.raw_input_contents[0] = r.raw_input_contents[0].slice(..1000);
    let e = c.model_infer(r).await.unwrap_err();
    assert!(
        e.message()
            .starts_with("input byte size mismatch for input 'x'. Expected 1024, got 1000"),
        "{e:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_memory_texts_are_tritons() {
    let opts = Options {
        allow_client_shm: true,
        ..Options::default()
    };
    let s = TestServer::temp(copy_models(&["mlp"]), opts).await;
    let want = "Unable to find shared memory region: 'nope'";
    let (status, body) = s.get("/v2/systemsharedmemory/region/nope/status").await;
    assert_ne!(status, 200);
    assert_eq!(error_of(&body), want);
    let e = s
        .grpc()
        .await
        .system_shared_memory_status(pb::SystemSharedMemoryStatusRequest {
            name: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.message(), want);
}
