//! The gRPC API's metadata and management end to end: ServerLive, ServerReady, ModelReady,
//! ServerMetadata, ModelMetadata, ModelConfig, ModelStatistics, RepositoryIndex,
//! RepositoryModelLoad and RepositoryModelUnload, and the standard gRPC health service.

mod common;

use common::*;
use kiln_protocol::inference as pb;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metadata() {
    let s = TestServer::examples().await;
    let mut c = s.grpc().await;
    assert!(
        c.server_live(pb::ServerLiveRequest {})
            .await
            .unwrap()
            .into_inner()
            .live
    );
    assert!(
        c.server_ready(pb::ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    let ready = |name: &str, version: &str| pb::ModelReadyRequest {
        name: name.into(),
        version: version.into(),
    };
    for (name, version, want) in [
        ("mlp", "", true),
        ("mlp", "1", true),
        ("ranker", "", true),
        ("mlp", "2", false),
        ("nope", "", false),
    ] {
        let got = c
            .model_ready(ready(name, version))
            .await
            .unwrap()
            .into_inner()
            .ready;
        assert_eq!(got, want, "ModelReady {name} {version:?}");
    }

    let meta = c
        .server_metadata(pb::ServerMetadataRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(meta.name, "kiln");
    assert_eq!(meta.version, env!("CARGO_PKG_VERSION"));
    assert!(
        meta.extensions.iter().any(|e| e == "binary_tensor_data"),
        "{:?}",
        meta.extensions
    );

    let m = c
        .model_metadata(pb::ModelMetadataRequest {
            name: "ranker".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m.name, "ranker");
    assert_eq!(m.versions, ["1"]);
    assert!(m.platform.ends_with("_onnx"), "{}", m.platform);
    let shapes: Vec<(&str, &str, &[i64])> = m
        .inputs
        .iter()
        .map(|t| (t.name.as_str(), t.datatype.as_str(), t.shape.as_slice()))
        .collect();
    assert_eq!(
        shapes,
        [
            ("ids", "INT64", &[-1i64, 8][..]),
            ("dense", "FP32", &[-1, 13][..])
        ]
    );
    assert_eq!(m.outputs[0].name, "score");
    assert_eq!(m.outputs[0].shape, [-1, 1]);

    let e = c
        .model_metadata(pb::ModelMetadataRequest {
            name: "nope".into(),
            version: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains("nope"), "{e:?}");
    let e = c
        .model_metadata(pb::ModelMetadataRequest {
            name: "mlp".into(),
            version: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    // The standard health service.
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let mut h = HealthClient::new(s.channel().await);
    for service in ["", "inference.GRPCInferenceService"] {
        let r = h
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status(), ServingStatus::Serving, "health of {service:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_statistics_and_repository() {
    let s = TestServer::start_at(examples(), None, Options::explicit_all()).await;
    let mut c = s.grpc().await;

    let cfg = c
        .model_config(pb::ModelConfigRequest {
            name: "mlp".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .config
        .expect("config");
    assert_eq!(cfg.name, "mlp");
    assert_eq!(cfg.max_batch_size, 64);
    assert_eq!(cfg.input.len(), 1);
    assert_eq!(
        (
            cfg.input[0].name.as_str(),
            cfg.input[0].data_type,
            cfg.input[0].dims.as_slice()
        ),
        ("x", pb::DataType::TypeFp32 as i32, &[256i64][..])
    );
    assert_eq!(
        (
            cfg.output[0].name.as_str(),
            cfg.output[0].data_type,
            cfg.output[0].dims.as_slice()
        ),
        ("y", pb::DataType::TypeFp32 as i32, &[1i64][..])
    );
    let db = cfg.dynamic_batching.expect("dynamic_batching");
    assert_eq!(db.max_queue_delay_microseconds, 100);
    assert_eq!(db.preferred_batch_size, [64]);
    let cfg = c
        .model_config(pb::ModelConfigRequest {
            name: "ranker".into(),
            version: "1".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .config
        .unwrap();
    assert_eq!(cfg.input[0].data_type, pb::DataType::TypeInt64 as i32);
    assert_eq!(
        c.model_config(pb::ModelConfigRequest {
            name: "nope".into(),
            version: String::new()
        })
        .await
        .unwrap_err()
        .code(),
        Code::NotFound
    );

    let stats = |name: &str| pb::ModelStatisticsRequest {
        name: name.into(),
        version: String::new(),
    };
    let before = c
        .model_statistics(stats("mlp"))
        .await
        .unwrap()
        .into_inner()
        .model_stats;
    assert_eq!(before.len(), 1);
    assert_eq!(
        (
            before[0].name.as_str(),
            before[0].version.as_str(),
            before[0].inference_count
        ),
        ("mlp", "1", 0)
    );
    c.model_infer(grpc_mlp(&[row(1), row(2), row(3)], ""))
        .await
        .unwrap();
    c.model_infer(grpc_mlp(&[row(4)], "")).await.unwrap();
    let after = c
        .model_statistics(stats("mlp"))
        .await
        .unwrap()
        .into_inner()
        .model_stats;
    assert_eq!(after[0].inference_count, 4);
    let inf = after[0].inference_stats.as_ref().unwrap();
    assert_eq!(inf.success.as_ref().unwrap().count, 2);
    assert!(after[0].execution_count >= 1 && after[0].last_inference > 0);
    assert!(!after[0].batch_stats.is_empty());
    let all = c
        .model_statistics(stats(""))
        .await
        .unwrap()
        .into_inner()
        .model_stats;
    let mut names: Vec<&str> = all.iter().map(|m| m.name.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "coarse_rank",
            "ctr_wide",
            "dlrm_small",
            "fine_rank",
            "mlp",
            "ranker",
            "recommend",
            "user_tower"
        ]
    );
    assert_eq!(
        c.model_statistics(stats("nope")).await.unwrap_err().code(),
        Code::NotFound
    );

    let index = |ready| pb::RepositoryIndexRequest {
        repository_name: String::new(),
        ready,
    };
    let idx = c
        .repository_index(index(false))
        .await
        .unwrap()
        .into_inner()
        .models;
    for model in ["mlp", "ranker"] {
        let e = idx
            .iter()
            .find(|e| e.name == model)
            .unwrap_or_else(|| panic!("{model} missing"));
        assert_eq!((e.version.as_str(), e.state.as_str()), ("1", "READY"));
    }

    c.repository_model_unload(pb::RepositoryModelUnloadRequest {
        model_name: "mlp".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(
        !c.model_ready(pb::ModelReadyRequest {
            name: "mlp".into(),
            version: String::new()
        })
        .await
        .unwrap()
        .into_inner()
        .ready
    );
    let e = c.model_infer(grpc_mlp(&[row(1)], "")).await.unwrap_err();
    assert!(
        matches!(e.code(), Code::NotFound | Code::Unavailable),
        "{e:?}"
    );
    let idx = c
        .repository_index(index(false))
        .await
        .unwrap()
        .into_inner()
        .models;
    let mlp = idx
        .iter()
        .find(|e| e.name == "mlp")
        .expect("mlp stays listed");
    assert_eq!(mlp.state, "UNAVAILABLE");
    let ready_only = c
        .repository_index(index(true))
        .await
        .unwrap()
        .into_inner()
        .models;
    let names: Vec<&str> = ready_only.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "coarse_rank",
            "ctr_wide",
            "dlrm_small",
            "fine_rank",
            "ranker",
            "recommend",
            "user_tower"
        ]
    );

    c.repository_model_load(pb::RepositoryModelLoadRequest {
        model_name: "mlp".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(
        c.model_ready(pb::ModelReadyRequest {
            name: "mlp".into(),
            version: String::new()
        })
        .await
        .unwrap()
        .into_inner()
        .ready
    );
    let r = c
        .model_infer(grpc_mlp(&[row(1)], "again"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.id, "again");
    let e = c
        .repository_model_load(pb::RepositoryModelLoadRequest {
            model_name: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = c
        .repository_model_load(pb::RepositoryModelLoadRequest {
            model_name: "../mlp".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
}
