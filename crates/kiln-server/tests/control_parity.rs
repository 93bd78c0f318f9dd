//! HTTP and gRPC answer the same control-plane questions with the same content: for every model
//! of the example repository, its metadata, Triton model configuration and statistics, plus the
//! repository index and the server metadata, are fetched over both front ends and compared
//! field by field. The HTTP JSON is read back into the protobuf messages here, by hand and
//! refusing keys it does not know, so a field one side has and the other lacks (or renders
//! differently) fails the comparison.

mod common;
mod control_json;

use common::*;
use control_json::{
    config_from_json, index_from_json, list, metadata_from_json, object, stats_from_json, text,
};
use kiln_protocol::inference as pb;
use pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use tonic::transport::Channel;
use tonic::Code;

type Grpc = GrpcInferenceServiceClient<Channel>;

/// The models of the example repository: every directory with a `config.toml`.
fn example_models() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(examples())
        .expect("read examples/models")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.join("config.toml").is_file())
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(names.len() >= 3, "examples: {names:?}");
    names
}

async fn http_ok(s: &TestServer, path: &str) -> Value {
    let (status, v) = s.get(path).await;
    assert_eq!(status, 200, "GET {path}: {v}");
    v
}

/// The paths of one model (`version` empty: the unversioned routes).
fn model_path(model: &str, version: &str) -> String {
    if version.is_empty() {
        format!("/v2/models/{model}")
    } else {
        format!("/v2/models/{model}/versions/{version}")
    }
}

async fn compare_model(s: &TestServer, c: &mut Grpc, model: &str, version: &str) {
    let at = format!("{model} (version '{version}')");
    let path = model_path(model, version);

    let http = metadata_from_json(&http_ok(s, &path).await);
    let grpc = c
        .model_metadata(pb::ModelMetadataRequest {
            name: model.into(),
            version: version.into(),
        })
        .await
        .unwrap_or_else(|e| panic!("gRPC metadata of {at}: {e}"))
        .into_inner();
    assert_eq!(http, grpc, "metadata of {at}");
    assert_eq!(http.name, model);
    assert!(
        !http.inputs.is_empty() && !http.outputs.is_empty(),
        "{http:?}"
    );

    let http = config_from_json(&http_ok(s, &format!("{path}/config")).await);
    let grpc = c
        .model_config(pb::ModelConfigRequest {
            name: model.into(),
            version: version.into(),
        })
        .await
        .unwrap_or_else(|e| panic!("gRPC config of {at}: {e}"))
        .into_inner()
        .config
        .expect("config");
    assert_eq!(http, grpc, "config of {at}");
    assert_eq!(http.name, model);
    if http.platform == "ensemble" {
        // a pipeline reads as Triton shows an ensemble: no backend, its model steps listed
        let steps = http
            .ensemble_scheduling
            .as_ref()
            .map_or(0, |e| e.step.len());
        assert!(
            http.backend.is_empty() && steps > 0,
            "ensemble {at}: {http:?}"
        );
    } else {
        assert!(!http.backend.is_empty(), "backend of {at}: {http:?}");
    }

    let http = stats_from_json(&http_ok(s, &format!("{path}/stats")).await);
    let grpc = c
        .model_statistics(pb::ModelStatisticsRequest {
            name: model.into(),
            version: version.into(),
        })
        .await
        .unwrap_or_else(|e| panic!("gRPC statistics of {at}: {e}"))
        .into_inner();
    assert_eq!(http, grpc, "statistics of {at}");
    assert!(
        !http.model_stats.is_empty() && http.model_stats.iter().all(|m| m.name == model),
        "{http:?}"
    );

    assert_eq!(s.get(&format!("{path}/ready")).await.0, 200, "{at}");
    assert!(
        c.model_ready(pb::ModelReadyRequest {
            name: model.into(),
            version: version.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .ready,
        "{at}"
    );
}

async fn http_index_of(
    s: &TestServer,
    ready: Option<bool>,
) -> Vec<pb::repository_index_response::ModelIndex> {
    let body = ready.map_or_else(|| json!({}), |r| json!({ "ready": r }));
    let (status, v) = s.post("/v2/repository/index", &body).await;
    assert_eq!(status, 200, "index: {v}");
    index_from_json(&v)
}

async fn grpc_index_of(
    c: &mut Grpc,
    ready: bool,
) -> Vec<pb::repository_index_response::ModelIndex> {
    c.repository_index(pb::RepositoryIndexRequest {
        repository_name: String::new(),
        ready,
    })
    .await
    .expect("gRPC index")
    .into_inner()
    .models
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_and_grpc_answer_the_same_for_every_example_model() {
    let s = TestServer::examples().await;
    let mut c = s.grpc().await;
    let models = example_models();

    // some traffic first, so the statistics are not all zero
    s.infer_ok("mlp", &mlp_request(&[row(1), row(2)])).await;
    c.model_infer(grpc_mlp(&[row(3)], ""))
        .await
        .expect("gRPC infer");
    let g = golden("ranker");
    s.infer_ok("ranker", &json!({ "inputs": g["inputs"] }))
        .await;

    let index = grpc_index_of(&mut c, false).await;
    assert_eq!(http_index_of(&s, None).await, index, "repository index");
    let indexed: BTreeSet<&str> = index.iter().map(|e| e.name.as_str()).collect();
    for m in &models {
        assert!(indexed.contains(m.as_str()), "{m} missing from {index:?}");
    }
    for ready in [false, true] {
        assert_eq!(
            http_index_of(&s, Some(ready)).await,
            grpc_index_of(&mut c, ready).await,
            "repository index, ready {ready}"
        );
    }

    for model in &models {
        compare_model(&s, &mut c, model, "").await;
        let versions: Vec<&str> = index
            .iter()
            .filter(|e| &e.name == model && e.state == "READY")
            .map(|e| e.version.as_str())
            .collect();
        assert!(
            !versions.is_empty(),
            "{model}: no serving version in {index:?}"
        );
        for v in versions {
            compare_model(&s, &mut c, model, v).await;
        }
    }

    let http = stats_from_json(&http_ok(&s, "/v2/models/stats").await);
    let grpc = c
        .model_statistics(pb::ModelStatisticsRequest::default())
        .await
        .expect("gRPC statistics")
        .into_inner();
    assert_eq!(http, grpc, "statistics of every model");
    let mlp = http.model_stats.iter().find(|m| m.name == "mlp").unwrap();
    assert_eq!(mlp.inference_count, 3, "{mlp:?}");

    let v = http_ok(&s, "/v2").await;
    let o = object(&v, &["name", "version", "extensions"], "server metadata");
    let grpc = c
        .server_metadata(pb::ServerMetadataRequest {})
        .await
        .expect("gRPC server metadata")
        .into_inner();
    assert_eq!(
        pb::ServerMetadataResponse {
            name: text(o, "name"),
            version: text(o, "version"),
            extensions: list(o, "extensions")
                .iter()
                .map(|e| e.as_str().unwrap().to_string())
                .collect(),
        },
        grpc,
        "server metadata"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_and_grpc_refuse_the_same_way() {
    let s = TestServer::examples().await;
    let mut c = s.grpc().await;
    for (model, version, code, status) in [
        ("nope", "", Code::NotFound, 404),
        ("mlp", "9", Code::NotFound, 404),
        ("mlp", "x", Code::InvalidArgument, 400),
    ] {
        let path = model_path(model, version);
        let at = format!("{model} version '{version}'");
        let name = || model.to_string();
        let ver = || version.to_string();
        for suffix in ["", "/config", "/stats"] {
            assert_eq!(
                s.get(&format!("{path}{suffix}")).await.0,
                status,
                "{at}{suffix}"
            );
        }
        let e = c
            .model_metadata(pb::ModelMetadataRequest {
                name: name(),
                version: ver(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), code, "metadata of {at}: {e:?}");
        let e = c
            .model_config(pb::ModelConfigRequest {
                name: name(),
                version: ver(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), code, "config of {at}: {e:?}");
        let e = c
            .model_statistics(pb::ModelStatisticsRequest {
                name: name(),
                version: ver(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), code, "statistics of {at}: {e:?}");
    }
    let (status, body) = s.post("/v2/repository/index", &json!({ "ready": 3 })).await;
    assert_eq!(status, 400, "a malformed index request is refused: {body}");
    assert!(error_of(&body).contains("ready"), "{body}");
}
