//! Hot reload in poll mode on a temporary repository: a new version takes over without a failed
//! request, a corrupt newer version is indexed UNAVAILABLE with its reason while the previous
//! one keeps serving, a removed model directory unloads the model; and configuration files with
//! unknown fields are refused with the field named (at load, through the load API, and on a
//! serving model whose file changes).

mod common;

use common::*;
use kiln_protocol::inference as pb;
use kiln_runtime::ControlMode;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tonic::Code;

const POLL: Duration = Duration::from_millis(200);
const X: [f32; 4] = [1.0, -2.0, 0.5, 4.0];

fn poll_opts() -> Options {
    Options {
        mode: ControlMode::Poll(POLL),
        ..Options::default()
    }
}

fn pair_request() -> Value {
    json!({ "inputs": [{ "name": "x", "datatype": "FP32", "shape": [1, 4], "data": X }] })
}

/// Puts `file` in as `<model>/<version>/model.onnx` in one rename, so a poll never sees it
/// half written.
fn install_version(root: &Path, model: &str, version: u64, contents: &[u8]) {
    let staging = root.join(model).join(format!(".staging-{version}"));
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::write(staging.join("model.onnx"), contents).unwrap();
    std::fs::rename(&staging, root.join(model).join(version.to_string())).unwrap();
}

/// The served version and the `scaled` output of one pair request.
async fn pair_answer(s: &TestServer) -> (u16, String, Vec<f32>) {
    let (status, v) = s.post("/v2/models/pair/infer", &pair_request()).await;
    if status != 200 {
        return (status, error_of(&v), vec![]);
    }
    (
        status,
        v["model_version"].as_str().unwrap().to_string(),
        output_floats(&v, "scaled"),
    )
}

fn scaled(k: f32) -> Vec<f32> {
    X.iter().map(|x| x * k).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_mode_reloads_versions_and_unloads_removed_models() {
    let dir = copy_models(&["pair"]);
    let root = dir.path().to_path_buf();
    let s = Arc::new(TestServer::temp(dir, poll_opts()).await);
    assert_eq!(pair_answer(&s).await, (200, "1".to_string(), scaled(2.0)));

    // Traffic for the whole reload: every answer must be a success of version 1 or 2.
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let traffic = tokio::spawn({
        let (s, stop, answered) = (s.clone(), stop.clone(), answered.clone());
        async move {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                seen.push(pair_answer(&s).await);
                answered.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            seen
        }
    });

    // (a) A new version is loaded and takes over.
    install_version(
        &root,
        "pair",
        2,
        &std::fs::read(fixture_file("pair_v2.onnx")).unwrap(),
    );
    eventually("version 2 serves", || async {
        pair_answer(&s).await.1 == "2"
    })
    .await;
    assert_eq!(pair_answer(&s).await, (200, "2".to_string(), scaled(3.0)));
    let (_, meta) = s.get("/v2/models/pair").await;
    assert_eq!(meta["versions"], json!(["2"]), "{meta}");
    let index = http_index(&s).await;
    assert_eq!(
        index_row(&index, "pair", Some("2")).unwrap()["state"],
        "READY",
        "{index}"
    );
    assert!(
        index_row(&index, "pair", Some("1")).is_none(),
        "version 1 is retired: {index}"
    );

    // (b) A corrupt newer version: indexed unavailable with its reason, version 2 keeps serving.
    install_version(&root, "pair", 3, b"this is not an onnx model");
    eventually("version 3 is indexed", || async {
        index_row(&http_index(&s).await, "pair", Some("3")).is_some()
    })
    .await;
    let index = http_index(&s).await;
    let v3 = index_row(&index, "pair", Some("3")).unwrap();
    assert_eq!(v3["state"], "UNAVAILABLE", "{index}");
    assert!(
        v3["reason"].as_str().unwrap().contains("model.onnx"),
        "{index}"
    );
    assert_eq!(
        index_row(&index, "pair", Some("2")).unwrap()["state"],
        "READY",
        "{index}"
    );
    let (status, body) = s.get("/v2/models/pair/versions/3/ready").await;
    assert_eq!(status, 503, "{body}");
    assert!(error_of(&body).contains("version 3"), "{body}");
    assert_eq!(s.get("/v2/models/pair/versions/2/ready").await.0, 200);
    let mut c = s.grpc().await;
    let ready = |v: &str| pb::ModelReadyRequest {
        name: "pair".into(),
        version: v.into(),
    };
    assert!(!c.model_ready(ready("3")).await.unwrap().into_inner().ready);
    assert!(c.model_ready(ready("")).await.unwrap().into_inner().ready);
    // Several more polls pass while traffic goes on.
    let mark = answered.load(Ordering::Relaxed);
    eventually("traffic goes on", || async {
        answered.load(Ordering::Relaxed) >= mark + 20
    })
    .await;
    assert_eq!(pair_answer(&s).await, (200, "2".to_string(), scaled(3.0)));

    stop.store(true, Ordering::Relaxed);
    let seen = traffic.await.unwrap();
    assert!(
        seen.len() >= 20,
        "only {} requests during the reload",
        seen.len()
    );
    for (status, version, out) in &seen {
        assert_eq!(
            *status, 200,
            "a request failed during the reload: {version}"
        );
        match version.as_str() {
            "1" => assert_eq!(out, &scaled(2.0)),
            "2" => assert_eq!(out, &scaled(3.0)),
            other => panic!("answered by version {other}"),
        }
    }
    assert!(seen.iter().any(|a| a.1 == "2"));

    // (c) The model directory goes away: the model is unloaded.
    std::fs::remove_dir_all(root.join("pair")).unwrap();
    eventually("pair is unloaded", || async {
        s.get("/v2/models/pair/ready").await.0 == 404
    })
    .await;
    let (status, body) = s.post("/v2/models/pair/infer", &pair_request()).await;
    assert_eq!(status, 404, "{body}");
    assert!(error_of(&body).contains("pair"), "{body}");
    assert!(index_row(&http_index(&s).await, "pair", None).is_none());
}

const BAD_FIELD: &str = "max_batch_sise";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_config_fields_are_named() {
    let dir = copy_models(&["pair"]);
    let root = dir.path().to_path_buf();
    copy_dir(&root.join("pair"), &root.join("broken"));
    write_config(&root, "broken", &format!("{BAD_FIELD} = 8\n"));
    let s = TestServer::temp(dir, poll_opts()).await;

    // Refused at start: the index names the field.
    let index = http_index(&s).await;
    let row =
        index_row(&index, "broken", None).unwrap_or_else(|| panic!("broken not indexed: {index}"));
    assert_eq!(row["state"], "UNAVAILABLE");
    let reason = row["reason"].as_str().unwrap();
    assert!(
        reason.contains(BAD_FIELD) && reason.contains("config.toml"),
        "{reason}"
    );
    let (status, body) = s.post("/v2/models/broken/infer", &pair_request()).await;
    assert_eq!(status, 503, "{body}");
    assert!(error_of(&body).contains(BAD_FIELD), "{body}");

    // The load API is refused in the poll mode, as Triton refuses it; the runtime's load
    // answers what the index says.
    let refusal = "explicit model load / unload is not allowed if polling is enabled";
    let (status, body) = s
        .post("/v2/repository/models/broken/load", &json!({}))
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(error_of(&body), refusal);
    let e = s
        .grpc()
        .await
        .repository_model_load(pb::RepositoryModelLoadRequest {
            model_name: "broken".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert_eq!(e.message(), refusal);
    let e = s.repo.load("broken").await.unwrap_err();
    assert!(e.message.contains(BAD_FIELD), "{e:?}");

    // A serving model whose configuration gains an unknown field keeps serving, and says why
    // its new configuration is not used.
    write_config(
        &root,
        "pair",
        "max_batch_size = 8\n[dynamic_batching]\nmax_queue_delay = 5\n",
    );
    eventually("pair's configuration error is indexed", || async {
        let index = http_index(&s).await;
        index_row(&index, "pair", Some("1")).is_some_and(|r| {
            r["reason"]
                .as_str()
                .is_some_and(|m| m.contains("max_queue_delay"))
        })
    })
    .await;
    let index = http_index(&s).await;
    let row = index_row(&index, "pair", Some("1")).unwrap();
    assert_eq!(row["state"], "READY", "{index}");
    assert!(
        row["reason"].as_str().unwrap().contains("still serving"),
        "{index}"
    );
    assert_eq!(pair_answer(&s).await, (200, "1".to_string(), scaled(2.0)));

    // Fixed files are picked up by the next polls.
    write_config(&root, "broken", "max_batch_size = 4\n");
    write_config(&root, "pair", "max_batch_size = 2\n");
    eventually("broken serves once fixed", || async {
        s.get("/v2/models/broken/ready").await.0 == 200
    })
    .await;
    let resp = s.infer_ok("broken", &pair_request()).await;
    assert_eq!(output_floats(&resp, "scaled"), scaled(2.0));
    eventually("pair's new configuration is used", || async {
        let (_, c) = s.get("/v2/models/pair/config").await;
        c["max_batch_size"] == 2
    })
    .await;
    let index = http_index(&s).await;
    assert_eq!(
        index_row(&index, "pair", Some("1")).unwrap().get("reason"),
        None,
        "{index}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unloaded_models_stay_unloaded_across_polls() {
    let s = TestServer::temp(copy_models(&["pair"]), poll_opts()).await;
    // (the repository API is refused in the poll mode: the runtime's unload, as a control
    // plane embedding the runtime would call it)
    s.repo.unload("pair").await.unwrap();

    // A new version appears and several polls go by: the poller leaves the model unloaded.
    install_version(
        &s.root,
        "pair",
        2,
        &std::fs::read(fixture_file("pair_v2.onnx")).unwrap(),
    );
    // the polls themselves, called directly: deterministic, where a sleep may see none go by
    for _ in 0..5 {
        s.repo.poll().await;
    }
    assert_ne!(s.get("/v2/models/pair/ready").await.0, 200);
    let (status, body) = s.post("/v2/models/pair/infer", &pair_request()).await;
    assert!(status == 404 || status == 503, "{status} {body}");
    let index = http_index(&s).await;
    let row = index_row(&index, "pair", None).expect("pair stays listed");
    assert_eq!(row["state"], "UNAVAILABLE", "{index}");
    assert!(
        row["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("unloaded"),
        "{index}"
    );

    // Loading it again serves the newest version.
    s.repo.load("pair").await.unwrap();
    assert_eq!(pair_answer(&s).await, (200, "2".to_string(), scaled(3.0)));
}
