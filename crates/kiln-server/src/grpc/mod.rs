//! The gRPC front end: `inference.GRPCInferenceService` (KServe v2 plus Triton's extensions).
//! Inference lives in [`infer`]; this file answers health, metadata, configuration,
//! statistics and repository calls.

mod infer;
mod sparse;

pub use sparse::AdminService;

use crate::error::to_status;
use crate::state::{caller, extensions, AppState, SERVER_NAME, SERVER_VERSION};
use crate::views;
use kiln_protocol::inference as pb;
use kiln_protocol::inference::grpc_inference_service_server::GrpcInferenceService;
use kiln_runtime::stats::CountNs;
use kiln_runtime::ServedVersion;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The service; cheap to clone.
#[derive(Clone)]
pub struct Service {
    /// Shared server state.
    pub state: Arc<AppState>,
}

type Rpc<T> = Result<Response<T>, Status>;

/// Checks a call's `authorization` metadata with [`AppState::authorize`]; returns the caller's
/// address as the audit log shows it.
pub fn authorize<T>(st: &AppState, r: &Request<T>) -> Result<String, Status> {
    let token = r
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    st.authorize(token).map_err(to_status)?;
    Ok(caller(r.remote_addr()))
}

/// tonic answers a message over `max_decoding_message_size` with OUT_OF_RANGE; gRPC's core
/// implementations, and so Triton, answer RESOURCE_EXHAUSTED for a message over the receive
/// limit, which is the code clients handle. The refusal is a trailers-only response (the
/// status in its headers, the message percent-encoded), rewritten here; every other response
/// passes untouched.
pub fn oversize_is_resource_exhausted<B>(
    mut resp: axum::http::Response<B>,
) -> axum::http::Response<B> {
    let h = resp.headers_mut();
    let oversize = h.get("grpc-status").is_some_and(|v| v == "11")
        && h.get("grpc-message")
            .and_then(|m| m.to_str().ok())
            .is_some_and(|m| m.replace("%20", " ").contains("message length too large"));
    if oversize {
        h.insert(
            "grpc-status",
            axum::http::HeaderValue::from_static("8"), // RESOURCE_EXHAUSTED
        );
    }
    resp
}

fn stat(c: CountNs) -> Option<pb::StatisticDuration> {
    Some(pb::StatisticDuration {
        count: c.count,
        ns: c.ns,
    })
}

fn stats_message(v: &ServedVersion) -> pb::ModelStatistics {
    let s = v.stats.snapshot();
    pb::ModelStatistics {
        name: v.name.clone(),
        version: v.version.to_string(),
        last_inference: s.last_inference_ms,
        inference_count: s.inference_count,
        execution_count: s.execution_count,
        inference_stats: Some(pb::InferStatistics {
            success: stat(s.success),
            fail: stat(s.fail),
            queue: stat(s.queue),
            compute_input: stat(s.compute_input),
            compute_infer: stat(s.compute_infer),
            compute_output: stat(s.compute_output),
            cache_hit: stat(CountNs::default()),
            cache_miss: stat(CountNs::default()),
        }),
        batch_stats: s
            .batches
            .iter()
            .map(|(size, b)| pb::InferBatchStatistics {
                batch_size: *size,
                compute_input: stat(b.compute_input),
                compute_infer: stat(b.compute_infer),
                compute_output: stat(b.compute_output),
            })
            .collect(),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for Service {
    async fn server_live(&self, _: Request<pb::ServerLiveRequest>) -> Rpc<pb::ServerLiveResponse> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Rpc<pb::ServerReadyResponse> {
        Ok(Response::new(pb::ServerReadyResponse {
            ready: self.state.ready(),
        }))
    }

    async fn model_ready(&self, r: Request<pb::ModelReadyRequest>) -> Rpc<pb::ModelReadyResponse> {
        let r = r.into_inner();
        let ready = self.state.ready() && self.state.version(&r.name, &r.version).is_ok();
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Rpc<pb::ServerMetadataResponse> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: SERVER_NAME.into(),
            version: SERVER_VERSION.into(),
            extensions: extensions(&self.state)
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }))
    }

    async fn model_metadata(
        &self,
        r: Request<pb::ModelMetadataRequest>,
    ) -> Rpc<pb::ModelMetadataResponse> {
        let r = r.into_inner();
        let v = self.state.version(&r.name, &r.version).map_err(to_status)?;
        let batched = v.config.max_batch_size > 0;
        let meta = |s: &kiln_core::TensorSpec| pb::model_metadata_response::TensorMetadata {
            name: s.name.clone(),
            datatype: s.data_type.as_str().into(),
            shape: if batched {
                std::iter::once(-1).chain(s.dims.iter().copied()).collect()
            } else {
                s.dims.clone()
            },
        };
        Ok(Response::new(pb::ModelMetadataResponse {
            name: v.name.clone(),
            versions: self
                .state
                .serving_versions(&v.name)
                .iter()
                .map(|x| x.to_string())
                .collect(),
            platform: views::platform(&v),
            inputs: v.io().inputs.iter().map(meta).collect(),
            outputs: v.io().outputs.iter().map(meta).collect(),
        }))
    }

    async fn model_infer(&self, r: Request<pb::ModelInferRequest>) -> Rpc<pb::ModelInferResponse> {
        infer::unary(&self.state, r.into_inner())
            .await
            .map(Response::new)
    }

    type ModelStreamInferStream = infer::ResponseStream;

    async fn model_stream_infer(
        &self,
        r: Request<tonic::Streaming<pb::ModelInferRequest>>,
    ) -> Rpc<Self::ModelStreamInferStream> {
        Ok(Response::new(infer::stream(
            self.state.clone(),
            r.into_inner(),
        )))
    }

    async fn model_config(
        &self,
        r: Request<pb::ModelConfigRequest>,
    ) -> Rpc<pb::ModelConfigResponse> {
        let r = r.into_inner();
        let v = self.state.version(&r.name, &r.version).map_err(to_status)?;
        let mut config =
            kiln_protocol::model_config_to_grpc(&v.config, v.io(), &views::platform(&v));
        config.name = v.name.clone();
        Ok(Response::new(pb::ModelConfigResponse {
            config: Some(config),
        }))
    }

    async fn model_statistics(
        &self,
        r: Request<pb::ModelStatisticsRequest>,
    ) -> Rpc<pb::ModelStatisticsResponse> {
        let r = r.into_inner();
        let model_stats = if r.name.is_empty() {
            self.state
                .repo
                .serving()
                .iter()
                .map(|v| stats_message(v))
                .collect()
        } else if r.version.is_empty() {
            self.state.version(&r.name, "").map_err(to_status)?;
            self.state
                .repo
                .serving()
                .iter()
                .filter(|v| v.name == r.name)
                .map(|v| stats_message(v))
                .collect()
        } else {
            vec![stats_message(
                self.state
                    .version(&r.name, &r.version)
                    .map_err(to_status)?
                    .as_ref(),
            )]
        };
        Ok(Response::new(pb::ModelStatisticsResponse { model_stats }))
    }

    async fn repository_index(
        &self,
        r: Request<pb::RepositoryIndexRequest>,
    ) -> Rpc<pb::RepositoryIndexResponse> {
        let ready_only = r.into_inner().ready;
        let models = self
            .state
            .repo
            .index()
            .into_iter()
            .filter(|e| !ready_only || e.state == kiln_runtime::VersionState::Ready)
            .map(|e| pb::repository_index_response::ModelIndex {
                name: e.name,
                version: e.version.map(|v| v.to_string()).unwrap_or_default(),
                state: e.state.as_str().into(),
                reason: e.reason,
            })
            .collect();
        Ok(Response::new(pb::RepositoryIndexResponse { models }))
    }

    async fn repository_model_load(
        &self,
        r: Request<pb::RepositoryModelLoadRequest>,
    ) -> Rpc<pb::RepositoryModelLoadResponse> {
        let from = authorize(&self.state, &r)?;
        let m = r.into_inner().model_name;
        let res = self.state.repo.load(&m).await;
        tracing::info!(caller = %from, model = %m.escape_debug(), ok = res.is_ok(), "repository load");
        res.map_err(to_status)?;
        Ok(Response::new(pb::RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        r: Request<pb::RepositoryModelUnloadRequest>,
    ) -> Rpc<pb::RepositoryModelUnloadResponse> {
        let from = authorize(&self.state, &r)?;
        let m = r.into_inner().model_name;
        let res = self.state.repo.unload(&m).await;
        tracing::info!(caller = %from, model = %m.escape_debug(), ok = res.is_ok(), "repository unload");
        res.map_err(to_status)?;
        Ok(Response::new(pb::RepositoryModelUnloadResponse {}))
    }

    async fn system_shared_memory_status(
        &self,
        r: Request<pb::SystemSharedMemoryStatusRequest>,
    ) -> Rpc<pb::SystemSharedMemoryStatusResponse> {
        let name = r.into_inner().name;
        let regions = self
            .state
            .shm
            .status(Some(name.as_str()).filter(|n| !n.is_empty()))
            .map_err(to_status)?;
        Ok(Response::new(pb::SystemSharedMemoryStatusResponse {
            regions: regions
                .into_iter()
                .map(|s| {
                    let status = pb::system_shared_memory_status_response::RegionStatus {
                        name: s.name.clone(),
                        key: s.key,
                        offset: s.offset,
                        byte_size: s.byte_size,
                    };
                    (s.name, status)
                })
                .collect(),
        }))
    }

    async fn system_shared_memory_register(
        &self,
        r: Request<pb::SystemSharedMemoryRegisterRequest>,
    ) -> Rpc<pb::SystemSharedMemoryRegisterResponse> {
        let from = authorize(&self.state, &r)?;
        let r = r.into_inner();
        self.state
            .shm
            .register(&r.name, &r.key, r.offset, r.byte_size)
            .map_err(to_status)?;
        tracing::info!(caller = %from, region = %r.name.escape_debug(), key = %r.key.escape_debug(),
            offset = r.offset, byte_size = r.byte_size, "shared memory region registered");
        Ok(Response::new(pb::SystemSharedMemoryRegisterResponse {}))
    }

    async fn system_shared_memory_unregister(
        &self,
        r: Request<pb::SystemSharedMemoryUnregisterRequest>,
    ) -> Rpc<pb::SystemSharedMemoryUnregisterResponse> {
        let from = authorize(&self.state, &r)?;
        let name = r.into_inner().name;
        self.state
            .shm
            .unregister(Some(name.as_str()).filter(|n| !n.is_empty()))
            .map_err(to_status)?;
        tracing::info!(caller = %from, region = %name.escape_debug(),
            "shared memory region unregistered (empty name: every region)");
        Ok(Response::new(pb::SystemSharedMemoryUnregisterResponse {}))
    }
}
