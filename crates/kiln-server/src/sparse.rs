//! The server's side of the sparse-model control plane shared by HTTP and gRPC: version
//! parsing and the audit log around [`ModelRepository::apply_delta`] and
//! [`ModelRepository::tables`], and the version parsing of [`ModelRepository::rows`]. All are
//! guarded by [`AppState::authorize`] in the front ends.
//!
//! [`ModelRepository::apply_delta`]: kiln_runtime::ModelRepository::apply_delta
//! [`ModelRepository::tables`]: kiln_runtime::ModelRepository::tables
//! [`ModelRepository::rows`]: kiln_runtime::ModelRepository::rows

use crate::state::{caller, parse_version, AppState};
use kiln_core::Result;
use kiln_runtime::tables::VersionRows;
use kiln_runtime::{VersionDeltaAck, VersionTable};
use std::net::SocketAddr;

/// Applies `delta` to `table` of `model` (`version` empty: every serving version), logs each
/// applied delta at info with the caller's address `from`, and stamps the model's
/// `kiln_delta_last_applied_timestamp_seconds` when a version applied it. Blocking.
pub fn apply_delta(
    state: &AppState,
    from: Option<SocketAddr>,
    model: &str,
    version: &str,
    table: &str,
    delta: &[u8],
) -> Result<Vec<VersionDeltaAck>> {
    let acks = state
        .repo
        .apply_delta(model, parse_version(version)?, table, delta)
        .inspect_err(|e| {
            tracing::debug!(caller = %caller(from), model, version, table, error = %e,
                "embedding delta refused");
        })?;
    if acks.iter().any(|a| a.ack.applied) {
        state.repo.metrics().record_delta_applied(model);
    }
    for VersionDeltaAck { version, ack } in &acks {
        if ack.applied {
            tracing::info!(
                caller = %caller(from),
                model,
                version,
                table,
                rows = ack.rows,
                inserted = ack.inserted,
                removed = ack.removed,
                seq = ack.last_sequence,
                "embedding delta applied"
            );
        } else {
            tracing::debug!(caller = %caller(from), model, version, table,
                seq = ack.last_sequence, "duplicate delta ignored");
        }
    }
    Ok(acks)
}

/// The tables of `model` (`version` empty: every serving version).
pub fn tables(state: &AppState, model: &str, version: &str) -> Result<Vec<VersionTable>> {
    state.repo.tables(model, parse_version(version)?)
}

/// The rows of `keys` in `table` of `model` (`version` empty: the version requests without one
/// go to); `None` for a key without a row.
pub fn rows(
    state: &AppState,
    model: &str,
    version: &str,
    table: &str,
    keys: &[u64],
) -> Result<VersionRows> {
    state.repo.rows(model, parse_version(version)?, table, keys)
}
