//! What both front ends do for one inference: find the version, run the request, and pick the
//! outputs the client asked for (as top classes where it asked for a classification).

use crate::state::AppState;
use kiln_core::classification::classify;
use kiln_core::{Error, Result, Tensor};
use kiln_protocol::{Delivery, WireRequest};
use kiln_runtime::ServedVersion;
use std::sync::Arc;
use std::time::Instant;

/// The answer of one inference: the version that computed it and the selected outputs, each
/// with how it goes back (outputs bound for shared memory are already written there).
pub struct Inferred {
    /// The version that served the request.
    pub version: Arc<ServedVersion>,
    /// Outputs in the order the client asked for them (model order if it asked for none).
    pub outputs: Vec<(Tensor, Delivery)>,
}

/// Runs `req` on `model` / `version` (empty: the model's traffic split, sticky by the request
/// parameter `routing_key`, else the latest), received at `received`. The caller's
/// request span, if it entered one, follows the request into the batch that computes it.
pub async fn infer(
    state: &AppState,
    model: &str,
    version: &str,
    mut req: WireRequest,
    received: Instant,
) -> Result<Inferred> {
    let routing_key = req.request.parameters.get("routing_key");
    let served = state.route(model, version, routing_key.map(String::as_str))?;
    state.shm.resolve_inputs(&mut req)?;
    // Check requested outputs before computing anything.
    let io = served.io();
    for o in &req.outputs {
        if !io.outputs.iter().any(|s| s.name == o.name) {
            return Err(Error::invalid(format!(
                "output '{}' is not an output of model '{}' (outputs: {:?})",
                o.name,
                served.name,
                io.outputs
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
            )));
        }
    }
    let WireRequest {
        mut request,
        outputs: requested,
        binary_data_output,
        ..
    } = req;
    request.received = received;
    let all = served.infer(request).await.inspect_err(|e| {
        tracing::debug!(error = %e.report(), "request failed");
    })?;
    let default = if binary_data_output {
        Delivery::Binary
    } else {
        Delivery::Inline
    };
    let outputs: Vec<(Tensor, Delivery)> = if requested.is_empty() {
        all.into_iter().map(|t| (t, default.clone())).collect()
    } else {
        let mut all: Vec<Option<Tensor>> = all.into_iter().map(Some).collect();
        requested
            .iter()
            .map(|o| {
                let i = io
                    .outputs
                    .iter()
                    .position(|s| s.name == o.name)
                    .expect("checked above");
                let mut t = all[i].take().ok_or_else(|| {
                    Error::invalid(format!("output '{}' is requested more than once", o.name))
                })?;
                if let Some(n) = o.classification {
                    let labels = served.config.label_data.get(&o.name).map(|l| &l[..]);
                    t = classify(&t, served.config.max_batch_size > 0, n, labels)?;
                }
                let delivery = match (&o.shared_memory, o.binary_data) {
                    (Some(r), _) => Delivery::SharedMemory(r.clone()),
                    (None, Some(true)) => Delivery::Binary,
                    (None, Some(false)) => Delivery::Inline,
                    (None, None) => default.clone(),
                };
                Ok((t, delivery))
            })
            .collect::<Result<_>>()?
    };
    for (t, d) in &outputs {
        if let Delivery::SharedMemory(r) = d {
            state
                .shm
                .write(r, &t.data, &format_args!("output '{}'", t.name))?;
        }
    }
    Ok(Inferred {
        version: served,
        outputs,
    })
}
