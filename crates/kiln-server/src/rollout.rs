//! The server's side of canary releases shared by HTTP and gRPC: the weights request's
//! parsing and the audit log around [`ModelRepository::set_traffic`] and
//! [`ModelRepository::traffic`]. Setting weights is guarded by [`AppState::authorize`] in the
//! front ends; reading them is open, as the model configuration that shows them is.
//!
//! [`ModelRepository::set_traffic`]: kiln_runtime::ModelRepository::set_traffic
//! [`ModelRepository::traffic`]: kiln_runtime::ModelRepository::traffic

use crate::state::{caller, AppState};
use kiln_core::{Error, Result};
use kiln_runtime::traffic::Weights;
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// Weights keyed by version number as text (JSON object keys, protobuf map keys), checked.
pub fn parse_weights<'a>(
    weights: impl IntoIterator<Item = (&'a str, u32)>,
) -> Result<BTreeMap<u64, u32>> {
    weights
        .into_iter()
        .map(|(v, w)| {
            v.trim().parse::<u64>().map(|v| (v, w)).map_err(|_| {
                Error::invalid(format!(
                    "weights.{}: a key must be a version number",
                    v.escape_debug()
                ))
            })
        })
        .collect()
}

/// Sets `model`'s traffic weights for requests that name no version, and logs the change at
/// info with the caller's address `from`.
pub fn set_traffic(
    state: &AppState,
    from: Option<SocketAddr>,
    model: &str,
    weights: BTreeMap<u64, u32>,
) -> Result<Weights> {
    let asked = format!("{weights:?}");
    let w = state.repo.set_traffic(model, weights).inspect_err(|e| {
        tracing::debug!(caller = %caller(from), model, weights = %asked, error = %e,
            "traffic weights refused");
    })?;
    tracing::info!(caller = %caller(from), model, weights = %w, "traffic weights set");
    Ok(w)
}

/// `model`'s traffic weights; `None` when it has none.
pub fn traffic(state: &AppState, model: &str) -> Result<Option<Weights>> {
    state.repo.traffic(model)
}
