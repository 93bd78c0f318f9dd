//! The model control plane, built once for both front ends: server and model metadata,
//! readiness, model configuration, statistics and the repository index. Each answer is the
//! `inference` protobuf message; gRPC sends it and HTTP renders the same message as JSON (its
//! `serde::Serialize`, see kiln-protocol's `build.rs`), as Triton renders its protobuf model
//! configuration for HTTP. The front ends (`http/models.rs`, `grpc/mod.rs`) only unpack the
//! request and pack the answer.

mod config;
pub mod repository;

use crate::state::{extensions, AppState, SERVER_VERSION};
use kiln_core::{Error, Result, TensorSpec};
use kiln_protocol::inference as pb;
use kiln_runtime::stats::CountNs;
use kiln_runtime::ServedVersion;

pub use config::{config_message, platform};

/// The server's name, version and the protocol extensions it supports.
pub fn server_metadata(st: &AppState) -> pb::ServerMetadataResponse {
    pb::ServerMetadataResponse {
        name: st.server_name().into(),
        version: SERVER_VERSION.into(),
        extensions: extensions(st).iter().map(|s| s.to_string()).collect(),
    }
}

/// `Ok` if `model` (`version` empty: the latest) serves and the server takes requests; else
/// why not (unknown model or version, or shutting down).
pub fn model_ready(st: &AppState, model: &str, version: &str) -> Result<()> {
    st.version(model, version)?;
    if st.ready() {
        Ok(())
    } else {
        Err(Error::unavailable("server is shutting down"))
    }
}

/// KServe v2 model metadata of `model` (`version` empty: the latest); `versions` lists every
/// serving version.
pub fn model_metadata(
    st: &AppState,
    model: &str,
    version: &str,
) -> Result<pb::ModelMetadataResponse> {
    let v = st.version(model, version)?;
    let batched = v.config.max_batch_size > 0;
    let io = v.io();
    Ok(pb::ModelMetadataResponse {
        name: v.name.clone(),
        versions: st
            .serving_versions(&v.name)
            .iter()
            .map(u64::to_string)
            .collect(),
        platform: platform(&v.config, &v.describe()),
        inputs: io.inputs.iter().map(|s| tensor(s, batched)).collect(),
        outputs: io.outputs.iter().map(|s| tensor(s, batched)).collect(),
    })
}

/// A tensor as metadata shows it ([`TensorSpec::client_shape`]).
fn tensor(spec: &TensorSpec, batched: bool) -> pb::model_metadata_response::TensorMetadata {
    pb::model_metadata_response::TensorMetadata {
        name: spec.name.clone(),
        datatype: spec.data_type.as_str().into(),
        shape: spec.client_shape(batched),
    }
}

/// Triton's model configuration of `model` (`version` empty: the latest).
pub fn model_config(st: &AppState, model: &str, version: &str) -> Result<pb::ModelConfig> {
    let v = st.version(model, version)?;
    let mut c = config_message(&v.name, &v.config, v.io(), &v.describe());
    if let Some(p) = v.pipeline_body() {
        config::ensemble(&mut c, p);
    }
    // canary weights (`1=95,2=5`), as they are now
    if let Some(w) = st.repo.routes().get(&v.name) {
        let string_value = w.to_string();
        c.parameters
            .insert("traffic".into(), pb::ModelParameter { string_value });
    }
    Ok(c)
}

/// Triton's statistics: of every serving version (`model` empty), of every serving version of
/// `model` (`version` empty), or of one version.
pub fn model_statistics(
    st: &AppState,
    model: &str,
    version: &str,
) -> Result<pb::ModelStatisticsResponse> {
    let model_stats = if model.is_empty() {
        st.repo.serving().iter().map(|v| stats(v)).collect()
    } else if version.is_empty() {
        // names the model in the error if it does not serve
        st.version(model, "")?;
        st.repo
            .serving()
            .iter()
            .filter(|v| v.name == model)
            .map(|v| stats(v))
            .collect()
    } else {
        vec![stats(st.version(model, version)?.as_ref())]
    };
    Ok(pb::ModelStatisticsResponse { model_stats })
}

fn duration(c: CountNs) -> Option<pb::StatisticDuration> {
    Some(pb::StatisticDuration {
        count: c.count,
        ns: c.ns,
    })
}

/// The statistics of one version.
fn stats(v: &ServedVersion) -> pb::ModelStatistics {
    let s = v.stats.snapshot();
    pb::ModelStatistics {
        name: v.name.clone(),
        version: v.version.to_string(),
        last_inference: s.last_inference_ms,
        inference_count: s.inference_count,
        execution_count: s.execution_count,
        inference_stats: Some(pb::InferStatistics {
            success: duration(s.success),
            fail: duration(s.fail),
            queue: duration(s.queue),
            compute_input: duration(s.compute_input),
            compute_infer: duration(s.compute_infer),
            compute_output: duration(s.compute_output),
            cache_hit: duration(s.cache_hit),
            cache_miss: duration(s.cache_miss),
        }),
        batch_stats: s
            .batches
            .iter()
            .map(|(size, b)| pb::InferBatchStatistics {
                batch_size: *size,
                compute_input: duration(b.compute_input),
                compute_infer: duration(b.compute_infer),
                compute_output: duration(b.compute_output),
            })
            .collect(),
        ..Default::default()
    }
}

/// The repository index ([`repository::index`]).
pub fn repository_index(st: &AppState, ready_only: bool) -> pb::RepositoryIndexResponse {
    repository::index(st, ready_only)
}
