//! Generates the gRPC messages, server and client from `proto/` with a pure-Rust protobuf
//! compiler, so building needs no system `protoc`.
//!
//! The control-plane answers (model metadata, model configuration, statistics, repository
//! index) also derive `serde::Serialize`, so the HTTP front end renders the very message the
//! gRPC front end sends, as Triton renders its protobuf model configuration to JSON: field
//! names as in the `.proto`, enums by their names, the version policy's oneof as its chosen
//! field, unset messages left out.
//!
//! The descriptor set of `model_config.proto` is written to `OUT_DIR/model_config.fds`, against
//! which `config.pbtxt` files are parsed.

/// Messages (with their nested types) that HTTP renders as JSON.
const JSON_MESSAGES: &[&str] = &[
    ".inference.ServerMetadataResponse",
    ".inference.ModelMetadataResponse",
    ".inference.ModelConfig",
    ".inference.ModelRateLimiter",
    ".inference.ModelInstanceGroup",
    ".inference.ModelTensorReshape",
    ".inference.ModelInput",
    ".inference.ModelOutput",
    ".inference.ModelQueuePolicy",
    ".inference.ModelDynamicBatching",
    ".inference.ModelEnsembling",
    ".inference.ModelParameter",
    ".inference.ModelTransactionPolicy",
    ".inference.ModelResponseCache",
    ".inference.ModelStatisticsResponse",
    ".inference.ModelStatistics",
    ".inference.StatisticDuration",
    ".inference.InferStatistics",
    ".inference.InferResponseStatistics",
    ".inference.InferBatchStatistics",
    ".inference.MemoryUsage",
    ".inference.RepositoryIndexResponse",
];

/// Enum fields of those messages, with the function (in `grpc_convert::json`) that writes the
/// enum's name.
const ENUM_FIELDS: &[(&str, &str)] = &[
    (".inference.ModelInput.data_type", "data_type"),
    (".inference.ModelOutput.data_type", "data_type"),
    (".inference.ModelInput.format", "input_format"),
    (".inference.ModelInstanceGroup.kind", "instance_kind"),
    (
        ".inference.ModelInstanceGroup.SecondaryDevice.kind",
        "secondary_device_kind",
    ),
    (
        ".inference.ModelQueuePolicy.timeout_action",
        "timeout_action",
    ),
];

/// Optional message fields, left out of the JSON when unset (as protobuf's JSON mapping does).
const OPTIONAL_MESSAGES: &[&str] = &[
    ".inference.ModelConfig.version_policy",
    ".inference.ModelConfig.dynamic_batching",
    ".inference.ModelConfig.ensemble_scheduling",
    ".inference.ModelConfig.model_transaction_policy",
    ".inference.ModelConfig.response_cache",
    ".inference.ModelInput.reshape",
    ".inference.ModelOutput.reshape",
    ".inference.ModelInstanceGroup.rate_limiter",
    ".inference.ModelDynamicBatching.default_queue_policy",
];

/// Fields of Triton's model configuration that Kiln's answers never fill (they are declared so
/// that `config.pbtxt` files parse and a setting Kiln does not implement is refused by name):
/// left out of the JSON, so the HTTP and gRPC answers stay the same message.
const UNSERVED_FIELDS: &[&str] = &[
    ".inference.ModelConfig.batch_input",
    ".inference.ModelConfig.batch_output",
    ".inference.ModelConfig.optimization",
    ".inference.ModelConfig.sequence_batching",
    ".inference.ModelConfig.model_warmup",
    ".inference.ModelConfig.model_operations",
    ".inference.ModelConfig.model_repository_agents",
    ".inference.ModelConfig.model_metrics",
];

/// String fields of the repository index left out when empty, as Triton's HTTP index does.
const OPTIONAL_STRINGS: &[&str] = &[
    ".inference.RepositoryIndexResponse.ModelIndex.version",
    ".inference.RepositoryIndexResponse.ModelIndex.reason",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/grpc_service.proto",
        "proto/model_config.proto",
        "proto/kiln_admin.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    // the model configuration's descriptors, for reading `config.pbtxt` (protobuf text format)
    let mut config = protox::Compiler::new(["proto"])?;
    config
        .include_imports(true)
        .open_file("model_config.proto")?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("model_config.fds"),
        config.encode_file_descriptor_set(),
    )?;
    let mut b = tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .codec_path("crate::codec::ProtoCodec")
        .bytes(".inference.ModelInferRequest.raw_input_contents")
        .bytes(".inference.ModelInferResponse.raw_output_contents")
        .bytes(".kiln.admin.v1.ApplyDeltaRequest.delta")
        // sorted maps, so a configuration renders the same way every time
        .btree_map(".inference.ModelConfig");
    for m in JSON_MESSAGES {
        b = b.type_attribute(m, "#[derive(serde::Serialize)]");
    }
    b = b.field_attribute(
        ".inference.ModelConfig.version_policy",
        "#[serde(serialize_with = \"crate::grpc_convert::json::version_policy\")]",
    );
    for (field, f) in ENUM_FIELDS {
        b = b.field_attribute(
            field,
            format!("#[serde(serialize_with = \"crate::grpc_convert::json::{f}\")]"),
        );
    }
    for field in OPTIONAL_MESSAGES {
        b = b.field_attribute(field, "#[serde(skip_serializing_if = \"Option::is_none\")]");
    }
    for field in UNSERVED_FIELDS {
        b = b.field_attribute(field, "#[serde(skip)]");
    }
    for field in OPTIONAL_STRINGS {
        b = b.field_attribute(
            field,
            "#[serde(skip_serializing_if = \"String::is_empty\")]",
        );
    }
    b.compile_fds(fds)?;
    Ok(())
}
