//! HTTP and gRPC answer the same control-plane questions with the same content: for every model
//! of the example repository, its metadata, Triton model configuration and statistics, plus the
//! repository index and the server metadata, are fetched over both front ends and compared
//! field by field. The HTTP JSON is read back into the protobuf messages here, by hand and
//! refusing keys it does not know, so a field one side has and the other lacks (or renders
//! differently) fails the comparison.

mod common;

use common::*;
use kiln_protocol::inference as pb;
use pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use serde_json::{json, Map, Value};
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

/// The JSON object `v`, after checking it has no key outside `known`.
fn object<'a>(v: &'a Value, known: &[&str], what: &str) -> &'a Map<String, Value> {
    let o = v
        .as_object()
        .unwrap_or_else(|| panic!("{what}: not an object: {v}"));
    for k in o.keys() {
        assert!(
            known.contains(&k.as_str()),
            "{what}: key '{k}' has no counterpart in the protobuf message: {v}"
        );
    }
    o
}

fn text(o: &Map<String, Value>, k: &str) -> String {
    o.get(k).map_or_else(String::new, |v| {
        v.as_str()
            .unwrap_or_else(|| panic!("'{k}' is not a string: {v}"))
            .to_string()
    })
}

fn uint(o: &Map<String, Value>, k: &str) -> u64 {
    o.get(k).map_or(0, |v| {
        v.as_u64()
            .unwrap_or_else(|| panic!("'{k}' is not an unsigned number: {v}"))
    })
}

fn int(o: &Map<String, Value>, k: &str) -> i64 {
    o.get(k).map_or(0, |v| {
        v.as_i64()
            .unwrap_or_else(|| panic!("'{k}' is not a number: {v}"))
    })
}

fn flag(o: &Map<String, Value>, k: &str) -> bool {
    o.get(k).is_some_and(|v| {
        v.as_bool()
            .unwrap_or_else(|| panic!("'{k}' is not a bool: {v}"))
    })
}

fn list<'a>(o: &'a Map<String, Value>, k: &str) -> &'a [Value] {
    o.get(k).map_or(&[], |v| {
        v.as_array()
            .unwrap_or_else(|| panic!("'{k}' is not an array: {v}"))
    })
}

fn ints(o: &Map<String, Value>, k: &str) -> Vec<i64> {
    list(o, k)
        .iter()
        .map(|v| v.as_i64().unwrap_or_else(|| panic!("'{k}': {v}")))
        .collect()
}

/// The value of an enum written by name; an absent field is the enum's zero value.
fn named(o: &Map<String, Value>, k: &str, parse: fn(&str) -> Option<i32>) -> i32 {
    o.get(k).map_or(0, |v| {
        let name = v
            .as_str()
            .unwrap_or_else(|| panic!("'{k}' is not a name: {v}"));
        parse(name).unwrap_or_else(|| panic!("'{k}': unknown name {name}"))
    })
}

fn data_type(name: &str) -> Option<i32> {
    pb::DataType::from_str_name(name).map(|d| d as i32)
}

fn metadata_from_json(v: &Value) -> pb::ModelMetadataResponse {
    let o = object(
        v,
        &["name", "versions", "platform", "inputs", "outputs"],
        "metadata",
    );
    let tensors = |k: &str| {
        list(o, k)
            .iter()
            .map(|t| {
                let t = object(t, &["name", "datatype", "shape"], "tensor metadata");
                pb::model_metadata_response::TensorMetadata {
                    name: text(t, "name"),
                    datatype: text(t, "datatype"),
                    shape: ints(t, "shape"),
                }
            })
            .collect()
    };
    pb::ModelMetadataResponse {
        name: text(o, "name"),
        versions: list(o, "versions")
            .iter()
            .map(|v| v.as_str().expect("version string").to_string())
            .collect(),
        platform: text(o, "platform"),
        inputs: tensors("inputs"),
        outputs: tensors("outputs"),
    }
}

fn config_from_json(v: &Value) -> pb::ModelConfig {
    let o = object(
        v,
        &[
            "name",
            "platform",
            "backend",
            "runtime",
            "version_policy",
            "max_batch_size",
            "input",
            "output",
            "dynamic_batching",
            "instance_group",
            "default_model_filename",
            "cc_model_filenames",
            "metric_tags",
            "parameters",
        ],
        "config",
    );
    let tensor_keys = [
        "name",
        "data_type",
        "format",
        "dims",
        "is_shape_tensor",
        "allow_ragged_batch",
        "optional",
        "is_non_linear_format_io",
    ];
    let input = list(o, "input")
        .iter()
        .map(|t| {
            let t = object(t, &tensor_keys, "config input");
            pb::ModelInput {
                name: text(t, "name"),
                data_type: named(t, "data_type", data_type),
                format: named(t, "format", |n| {
                    pb::model_input::Format::from_str_name(n).map(|f| f as i32)
                }),
                dims: ints(t, "dims"),
                reshape: None,
                is_shape_tensor: flag(t, "is_shape_tensor"),
                allow_ragged_batch: flag(t, "allow_ragged_batch"),
                optional: flag(t, "optional"),
                is_non_linear_format_io: flag(t, "is_non_linear_format_io"),
            }
        })
        .collect();
    let output = list(o, "output")
        .iter()
        .map(|t| {
            let t = object(
                t,
                &[
                    "name",
                    "data_type",
                    "dims",
                    "label_filename",
                    "is_shape_tensor",
                    "is_non_linear_format_io",
                ],
                "config output",
            );
            pb::ModelOutput {
                name: text(t, "name"),
                data_type: named(t, "data_type", data_type),
                dims: ints(t, "dims"),
                reshape: None,
                label_filename: text(t, "label_filename"),
                is_shape_tensor: flag(t, "is_shape_tensor"),
                is_non_linear_format_io: flag(t, "is_non_linear_format_io"),
            }
        })
        .collect();
    let version_policy = o.get("version_policy").map(|p| {
        use pb::model_version_policy::{All, Latest, PolicyChoice, Specific};
        let p = object(p, &["latest", "all", "specific"], "version_policy");
        assert_eq!(p.len(), 1, "one choice of version policy: {p:?}");
        let choice = if let Some(l) = p.get("latest") {
            let l = object(l, &["num_versions"], "latest");
            PolicyChoice::Latest(Latest {
                num_versions: uint(l, "num_versions") as u32,
            })
        } else if let Some(a) = p.get("all") {
            object(a, &[], "all");
            PolicyChoice::All(All {})
        } else {
            let s = object(&p["specific"], &["versions"], "specific");
            PolicyChoice::Specific(Specific {
                versions: ints(s, "versions"),
            })
        };
        pb::ModelVersionPolicy {
            policy_choice: Some(choice),
        }
    });
    let dynamic_batching = o.get("dynamic_batching").map(|d| {
        let d = object(
            d,
            &[
                "preferred_batch_size",
                "max_queue_delay_microseconds",
                "preserve_ordering",
                "priority_levels",
                "default_priority_level",
                "default_queue_policy",
                "priority_queue_policy",
            ],
            "dynamic_batching",
        );
        assert!(
            d.get("priority_queue_policy")
                .is_none_or(|p| p == &json!({})),
            "{d:?}"
        );
        pb::ModelDynamicBatching {
            preferred_batch_size: ints(d, "preferred_batch_size")
                .into_iter()
                .map(|b| b as i32)
                .collect(),
            max_queue_delay_microseconds: uint(d, "max_queue_delay_microseconds"),
            preserve_ordering: flag(d, "preserve_ordering"),
            priority_levels: uint(d, "priority_levels"),
            default_priority_level: uint(d, "default_priority_level"),
            default_queue_policy: d.get("default_queue_policy").map(|q| {
                let q = object(
                    q,
                    &[
                        "timeout_action",
                        "default_timeout_microseconds",
                        "allow_timeout_override",
                        "max_queue_size",
                    ],
                    "default_queue_policy",
                );
                pb::ModelQueuePolicy {
                    timeout_action: named(q, "timeout_action", |n| {
                        pb::model_queue_policy::TimeoutAction::from_str_name(n).map(|a| a as i32)
                    }),
                    default_timeout_microseconds: uint(q, "default_timeout_microseconds"),
                    allow_timeout_override: flag(q, "allow_timeout_override"),
                    max_queue_size: uint(q, "max_queue_size") as u32,
                }
            }),
            priority_queue_policy: Default::default(),
        }
    });
    let instance_group = list(o, "instance_group")
        .iter()
        .map(|g| {
            let g = object(
                g,
                &[
                    "name",
                    "kind",
                    "count",
                    "gpus",
                    "secondary_devices",
                    "profile",
                    "passive",
                    "host_policy",
                ],
                "instance_group",
            );
            assert!(list(g, "secondary_devices").is_empty(), "{g:?}");
            pb::ModelInstanceGroup {
                name: text(g, "name"),
                kind: named(g, "kind", |n| {
                    pb::model_instance_group::Kind::from_str_name(n).map(|k| k as i32)
                }),
                count: int(g, "count") as i32,
                rate_limiter: None,
                gpus: ints(g, "gpus").into_iter().map(|x| x as i32).collect(),
                secondary_devices: Vec::new(),
                profile: list(g, "profile")
                    .iter()
                    .map(|p| p.as_str().expect("profile").to_string())
                    .collect(),
                passive: flag(g, "passive"),
                host_policy: text(g, "host_policy"),
            }
        })
        .collect();
    let strings = |k: &str| {
        o.get(k).map_or_else(Default::default, |m| {
            object(m, &[], k);
            Default::default()
        })
    };
    let parameters = o
        .get("parameters")
        .map(|p| {
            p.as_object()
                .expect("parameters object")
                .iter()
                .map(|(k, v)| {
                    let v = object(v, &["string_value"], "parameter");
                    (
                        k.clone(),
                        pb::ModelParameter {
                            string_value: text(v, "string_value"),
                        },
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    pb::ModelConfig {
        name: text(o, "name"),
        platform: text(o, "platform"),
        backend: text(o, "backend"),
        runtime: text(o, "runtime"),
        version_policy,
        max_batch_size: int(o, "max_batch_size") as i32,
        input,
        output,
        dynamic_batching,
        instance_group,
        default_model_filename: text(o, "default_model_filename"),
        cc_model_filenames: strings("cc_model_filenames"),
        metric_tags: strings("metric_tags"),
        parameters,
        model_transaction_policy: None,
        response_cache: None,
    }
}

fn duration(v: Option<&Value>, what: &str) -> Option<pb::StatisticDuration> {
    let d = object(v?, &["count", "ns"], what);
    Some(pb::StatisticDuration {
        count: uint(d, "count"),
        ns: uint(d, "ns"),
    })
}

fn stats_from_json(v: &Value) -> pb::ModelStatisticsResponse {
    let o = object(v, &["model_stats"], "statistics");
    let model_stats = list(o, "model_stats")
        .iter()
        .map(|m| {
            let m = object(
                m,
                &[
                    "name",
                    "version",
                    "last_inference",
                    "inference_count",
                    "execution_count",
                    "inference_stats",
                    "batch_stats",
                    "memory_usage",
                    "response_stats",
                ],
                "model_stats",
            );
            assert!(list(m, "memory_usage").is_empty(), "{m:?}");
            assert!(
                m.get("response_stats").is_none_or(|r| r == &json!({})),
                "{m:?}"
            );
            let inference_stats = m.get("inference_stats").map(|s| {
                let keys = [
                    "success",
                    "fail",
                    "queue",
                    "compute_input",
                    "compute_infer",
                    "compute_output",
                    "cache_hit",
                    "cache_miss",
                ];
                let s = object(s, &keys, "inference_stats");
                let d = |k: &str| duration(s.get(k), k);
                pb::InferStatistics {
                    success: d("success"),
                    fail: d("fail"),
                    queue: d("queue"),
                    compute_input: d("compute_input"),
                    compute_infer: d("compute_infer"),
                    compute_output: d("compute_output"),
                    cache_hit: d("cache_hit"),
                    cache_miss: d("cache_miss"),
                }
            });
            let batch_stats = list(m, "batch_stats")
                .iter()
                .map(|b| {
                    let b = object(
                        b,
                        &[
                            "batch_size",
                            "compute_input",
                            "compute_infer",
                            "compute_output",
                        ],
                        "batch_stats",
                    );
                    pb::InferBatchStatistics {
                        batch_size: uint(b, "batch_size"),
                        compute_input: duration(b.get("compute_input"), "compute_input"),
                        compute_infer: duration(b.get("compute_infer"), "compute_infer"),
                        compute_output: duration(b.get("compute_output"), "compute_output"),
                    }
                })
                .collect();
            pb::ModelStatistics {
                name: text(m, "name"),
                version: text(m, "version"),
                last_inference: uint(m, "last_inference"),
                inference_count: uint(m, "inference_count"),
                execution_count: uint(m, "execution_count"),
                inference_stats,
                batch_stats,
                memory_usage: Vec::new(),
                response_stats: Default::default(),
            }
        })
        .collect();
    pb::ModelStatisticsResponse { model_stats }
}

/// Triton's HTTP index is a JSON array; an entry without `version` or `reason` has them empty.
fn index_from_json(v: &Value) -> Vec<pb::repository_index_response::ModelIndex> {
    v.as_array()
        .unwrap_or_else(|| panic!("index is not an array: {v}"))
        .iter()
        .map(|e| {
            let e = object(e, &["name", "version", "state", "reason"], "index entry");
            pb::repository_index_response::ModelIndex {
                name: text(e, "name"),
                version: text(e, "version"),
                state: text(e, "state"),
                reason: text(e, "reason"),
            }
        })
        .collect()
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
    assert!(!http.backend.is_empty(), "backend of {at}: {http:?}");

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
