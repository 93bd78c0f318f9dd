//! The gRPC front end: `inference.GRPCInferenceService` (KServe v2 plus Triton's extensions).
//! Inference lives in [`infer`]; this file answers health, metadata, configuration,
//! statistics and repository calls as a thin adapter over [`crate::control`], which the HTTP
//! front end answers from too.

mod extensions;
mod infer;
mod rollout;
mod sparse;

pub use sparse::AdminService;

use crate::control;
use crate::error::to_status;
use crate::state::{caller, AppState};
use kiln_protocol::inference as pb;
use kiln_protocol::inference::grpc_inference_service_server::GrpcInferenceService;
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

/// The parameters of a repository load or unload call; one without a value is left out.
fn params(
    p: std::collections::HashMap<String, pb::ModelRepositoryParameter>,
) -> Vec<(String, control::repository::Param)> {
    use control::repository::Param;
    use pb::model_repository_parameter::ParameterChoice as C;
    p.into_iter()
        .filter_map(|(k, v)| {
            let v = match v.parameter_choice? {
                C::BoolParam(b) => Param::Bool(b),
                C::Int64Param(_) => Param::Int,
                C::StringParam(s) => Param::Str(s),
                C::BytesParam(b) => Param::Bytes(b),
            };
            Some((k, v))
        })
        .collect()
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
        let ready = control::model_ready(&self.state, &r.name, &r.version).is_ok();
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Rpc<pb::ServerMetadataResponse> {
        Ok(Response::new(control::server_metadata(&self.state)))
    }

    async fn model_metadata(
        &self,
        r: Request<pb::ModelMetadataRequest>,
    ) -> Rpc<pb::ModelMetadataResponse> {
        let r = r.into_inner();
        control::model_metadata(&self.state, &r.name, &r.version)
            .map(Response::new)
            .map_err(to_status)
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
        let config = control::model_config(&self.state, &r.name, &r.version).map_err(to_status)?;
        Ok(Response::new(pb::ModelConfigResponse {
            config: Some(config),
        }))
    }

    async fn model_statistics(
        &self,
        r: Request<pb::ModelStatisticsRequest>,
    ) -> Rpc<pb::ModelStatisticsResponse> {
        let r = r.into_inner();
        control::model_statistics(&self.state, &r.name, &r.version)
            .map(Response::new)
            .map_err(to_status)
    }

    async fn repository_index(
        &self,
        r: Request<pb::RepositoryIndexRequest>,
    ) -> Rpc<pb::RepositoryIndexResponse> {
        let ready_only = r.into_inner().ready;
        Ok(Response::new(control::repository_index(
            &self.state,
            ready_only,
        )))
    }

    async fn repository_model_load(
        &self,
        r: Request<pb::RepositoryModelLoadRequest>,
    ) -> Rpc<pb::RepositoryModelLoadResponse> {
        let from = authorize(&self.state, &r)?;
        let r = r.into_inner();
        let m = r.model_name;
        let res = control::repository::load(&self.state, &m, params(r.parameters)).await;
        tracing::info!(caller = %from, model = %m.escape_debug(), ok = res.is_ok(), "repository load");
        res.map_err(to_status)?;
        Ok(Response::new(pb::RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        r: Request<pb::RepositoryModelUnloadRequest>,
    ) -> Rpc<pb::RepositoryModelUnloadResponse> {
        let from = authorize(&self.state, &r)?;
        let r = r.into_inner();
        let m = r.model_name;
        let res = control::repository::unload(&self.state, &m, params(r.parameters)).await;
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

    async fn cuda_shared_memory_status(
        &self,
        r: Request<pb::CudaSharedMemoryStatusRequest>,
    ) -> Rpc<pb::CudaSharedMemoryStatusResponse> {
        extensions::cuda_status(r)
    }

    async fn cuda_shared_memory_register(
        &self,
        r: Request<pb::CudaSharedMemoryRegisterRequest>,
    ) -> Rpc<pb::CudaSharedMemoryRegisterResponse> {
        extensions::cuda_register(&self.state, r)
    }

    async fn cuda_shared_memory_unregister(
        &self,
        r: Request<pb::CudaSharedMemoryUnregisterRequest>,
    ) -> Rpc<pb::CudaSharedMemoryUnregisterResponse> {
        extensions::cuda_unregister(&self.state, r)
    }

    async fn trace_setting(
        &self,
        r: Request<pb::TraceSettingRequest>,
    ) -> Rpc<pb::TraceSettingResponse> {
        extensions::trace_setting(&self.state, r)
    }

    async fn log_settings(
        &self,
        r: Request<pb::LogSettingsRequest>,
    ) -> Rpc<pb::LogSettingsResponse> {
        extensions::log_settings(&self.state, r)
    }
}
