//! The sparse-model control plane shared by HTTP and gRPC: apply embedding deltas to a live
//! model, list its tables, and the optional admin token that guards both.

use crate::state::AppState;
use kiln_core::{DeltaAck, Error, ErrorCode, Result, SparseTableInfo};
use kiln_runtime::ServedVersion;
use std::sync::Arc;

/// Checks a presented credential (`Bearer <token>` or the bare token) against the server's
/// admin token; with no token configured every caller is allowed.
pub fn authorize(state: &AppState, presented: Option<&str>) -> Result<()> {
    let Some(expected) = state.admin_token.as_deref() else {
        return Ok(());
    };
    let got = presented
        .map(|h| h.strip_prefix("Bearer ").unwrap_or(h).trim())
        .unwrap_or("");
    // compare every byte so the time taken does not reveal the matching prefix
    let same = got.len() == expected.len()
        && got
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if same {
        Ok(())
    } else if got.is_empty() {
        Err(Error::new(
            ErrorCode::Unauthenticated,
            "admin token required: send 'Authorization: Bearer <token>'",
        ))
    } else {
        Err(Error::new(
            ErrorCode::Unauthenticated,
            "admin token is wrong",
        ))
    }
}

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
/// delta once: the later ones report it as already applied.
pub fn apply_delta(
    state: &AppState,
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
        tracing::debug!(
            model,
            version = v.version,
            table,
            applied = ack.applied,
            rows = ack.rows,
            seq = ack.last_sequence,
            "delta"
        );
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
