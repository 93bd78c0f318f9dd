//! ModelInfer and ModelStreamInfer.

use crate::error::to_status;
use crate::state::AppState;
use kiln_protocol::inference as pb;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::Status;
use tracing::{field, Instrument};

/// The response stream of ModelStreamInfer.
pub type ResponseStream =
    Pin<Box<dyn Stream<Item = Result<pb::ModelStreamInferResponse, Status>> + Send>>;

/// One inference, in the request's span: the batch that computes it links to it. The span is
/// disabled, and free, unless a subscriber wants it (`--otlp-endpoint`, or a debug log filter).
async fn run(
    state: &AppState,
    req: pb::ModelInferRequest,
) -> kiln_core::Result<pb::ModelInferResponse> {
    // trace settings (`TraceSetting`) pick the requests that get a span
    let span = if crate::extensions::traced(state, &req.model_name) {
        tracing::debug_span!(
            "request",
            protocol = "grpc",
            model = req.model_name.as_str(),
            version = req.model_version.as_str(),
            id = field::Empty
        )
    } else {
        tracing::Span::none()
    };
    if !req.id.is_empty() {
        span.record("id", req.id.as_str());
    }
    run_in_span(state, req).instrument(span).await
}

async fn run_in_span(
    state: &AppState,
    req: pb::ModelInferRequest,
) -> kiln_core::Result<pb::ModelInferResponse> {
    let received = Instant::now();
    let model = req.model_name.clone();
    let version = req.model_version.clone();
    // admission before the tensors are converted (see `crate::admission`)
    let bytes = req.raw_input_contents.iter().map(|b| b.len()).sum();
    let _ticket = state
        .admission
        .admit(&*state.version(&model, &version)?, Some(bytes))?;
    let wire = kiln_protocol::request_from_grpc(req)?;
    let id = wire.request.id.clone();
    let done = crate::infer::infer(state, &model, &version, wire, received).await?;
    Ok(kiln_protocol::response_to_grpc(
        &done.version.name,
        &done.version.version.to_string(),
        id.as_deref(),
        &done.outputs,
    ))
}

/// One unary inference.
pub async fn unary(
    state: &AppState,
    req: pb::ModelInferRequest,
) -> Result<pb::ModelInferResponse, Status> {
    run(state, req).await.map_err(to_status)
}

/// Requests on one stream are computed concurrently (so they batch together); each answer, or
/// its error in `error_message`, goes out on the response stream as soon as it is ready. At
/// most `IN_FLIGHT` answers wait for the client to read them.
pub fn stream(
    state: Arc<AppState>,
    mut incoming: tonic::Streaming<pb::ModelInferRequest>,
) -> ResponseStream {
    const IN_FLIGHT: usize = 256;
    let (tx, rx) = tokio::sync::mpsc::channel(IN_FLIGHT);
    tokio::spawn(async move {
        while let Some(msg) = incoming.next().await {
            let req = match msg {
                Ok(r) => r,
                Err(s) => {
                    let _ = tx.send(Err(s)).await;
                    return;
                }
            };
            let permit = match tx.clone().reserve_owned().await {
                Ok(p) => p,
                Err(_) => return,
            };
            let state = state.clone();
            tokio::spawn(async move {
                let id = req.id.clone();
                let answer = match run(&state, req).await {
                    Ok(r) => pb::ModelStreamInferResponse {
                        error_message: String::new(),
                        infer_response: Some(r),
                    },
                    Err(e) => pb::ModelStreamInferResponse {
                        error_message: e.message,
                        infer_response: Some(pb::ModelInferResponse {
                            id,
                            ..Default::default()
                        }),
                    },
                };
                permit.send(Ok(answer));
            });
        }
    });
    Box::pin(ReceiverStream::new(rx))
}
