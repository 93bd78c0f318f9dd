//! The sparse-model control plane shared by HTTP and gRPC: apply embedding deltas to a live
//! model and list its tables. Both are guarded by [`AppState::authorize`] in the front ends.

use crate::state::{caller, AppState};
use kiln_core::{DeltaAck, Error, ErrorCode, Result, SparseTableInfo};
use kiln_runtime::ServedVersion;
use std::net::SocketAddr;
use std::sync::Arc;

/// The versions a control-plane call addresses: `version` if given, else every serving one.
fn targets(state: &AppState, model: &str, version: &str) -> Result<Vec<Arc<ServedVersion>>> {
    if !version.is_empty() {
        return Ok(vec![state.version(model, version)?]);
    }
    let first = state.version(model, "")?; // name checks and a clear error when not ready
    let mut out: Vec<Arc<ServedVersion>> = state
        .serving_versions(model)
        .into_iter()
        .filter_map(|v| state.repo.get(model, Some(v)).ok())
        .collect();
    if out.is_empty() {
        out.push(first);
    }
    Ok(out)
}

fn no_tables(v: &ServedVersion) -> Error {
    Error::new(
        ErrorCode::Unsupported,
        format!(
            "model '{}' version {} has no embedding tables (backend {:?})",
            v.name,
            v.version,
            v.config.backend.as_deref().unwrap_or("default")
        ),
    )
}

/// Applies `delta` to `table` of the addressed versions. Versions sharing one table see the
/// delta once: the later ones report it as already applied. Each applied delta is logged at
/// info with the caller's address `from`.
pub fn apply_delta(
    state: &AppState,
    from: Option<SocketAddr>,
    model: &str,
    version: &str,
    table: &str,
    delta: &[u8],
) -> Result<Vec<(u64, DeltaAck)>> {
    let versions = targets(state, model, version)?;
    // check every version before changing any
    for v in &versions {
        let sp = v.model.sparse().ok_or_else(|| no_tables(v))?;
        if !sp.tables().iter().any(|t| t.name == table) {
            return Err(Error::not_found(format!(
                "model '{}' version {} has no table '{table}'",
                v.name, v.version
            )));
        }
    }
    let mut out = Vec::new();
    for v in &versions {
        let sp = v.model.sparse().ok_or_else(|| no_tables(v))?;
        let ack = sp.apply_delta(table, delta)?;
        if ack.applied {
            tracing::info!(
                caller = %caller(from),
                model,
                version = v.version,
                table,
                rows = ack.rows,
                inserted = ack.inserted,
                removed = ack.removed,
                seq = ack.last_sequence,
                "embedding delta applied"
            );
        } else {
            tracing::debug!(caller = %caller(from), model, version = v.version, table,
                seq = ack.last_sequence, "duplicate delta ignored");
        }
        out.push((v.version, ack));
    }
    Ok(out)
}

/// The tables of the addressed versions.
pub fn list_tables(
    state: &AppState,
    model: &str,
    version: &str,
) -> Result<Vec<(u64, SparseTableInfo)>> {
    let mut out = Vec::new();
    for v in targets(state, model, version)? {
        let sp = v.model.sparse().ok_or_else(|| no_tables(&v))?;
        out.extend(sp.tables().into_iter().map(|t| (v.version, t)));
    }
    Ok(out)
}
