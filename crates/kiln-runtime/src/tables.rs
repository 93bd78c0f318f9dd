//! Online-updatable embedding tables of served models: apply a delta to a live model and list
//! its tables.
//!
//! These are repository operations, not server ones, so that anything holding the
//! [`ModelRepository`] (the HTTP and gRPC admin endpoints, a delta-topic subscriber, an
//! in-process learner) applies deltas the same way. Authorization and audit logging belong to
//! the caller.

use crate::repository::{check_model_name, ModelRepository, VersionState};
use crate::version::{ServedVersion, VersionTables};
use kiln_core::{DeltaAck, Error, ErrorCode, Result, SparseTableInfo};
use std::sync::Arc;

/// The outcome of a delta on one addressed version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionDeltaAck {
    /// The model version.
    pub version: u64,
    /// What the delta did to that version's table.
    pub ack: DeltaAck,
}

/// Rows of one table of one model version, read by key.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionRows {
    /// The model version read.
    pub version: u64,
    /// Elements per row.
    pub dim: usize,
    /// One entry per requested key, in order: its row, or `None` when the table has no row for
    /// it (the default row a lookup would use is not materialized).
    pub rows: Vec<Option<Vec<f32>>>,
}

/// One table of one addressed version.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionTable {
    /// The model version.
    pub version: u64,
    /// The table.
    pub table: SparseTableInfo,
}

impl ModelRepository {
    /// Applies one encoded delta (the embedding store's binary delta format) to `table` of
    /// `model`: of `version`, or of every serving version when `None`.
    ///
    /// Every addressed version is checked to have the table before any is changed, so an
    /// unknown table changes nothing. Versions sharing one table see the delta once: the later
    /// ones report it as already applied (`applied: false`). Errors name the model, version and
    /// table. Decoding and writing rows is CPU work: call it off the async runtime's threads.
    pub fn apply_delta(
        &self,
        model: &str,
        version: Option<u64>,
        table: &str,
        delta: &[u8],
    ) -> Result<Vec<VersionDeltaAck>> {
        let versions = self.addressed(model, version)?;
        let mut checked = Vec::with_capacity(versions.len());
        for v in &versions {
            let sparse = sparse_of(v)?;
            if !sparse.tables().iter().any(|t| t.name == table) {
                return Err(Error::not_found(format!(
                    "{} has no table '{table}'",
                    label(v)
                )));
            }
            checked.push((v, sparse));
        }
        checked
            .into_iter()
            .map(|(v, sparse)| {
                let ack = sparse.apply_delta(table, delta).map_err(|e| {
                    // the backend's message may name the table already
                    let which = if e.message.contains(table) {
                        label(v)
                    } else {
                        format!("{} table '{table}'", label(v))
                    };
                    Error::new(e.code, format!("{which}: {}", e.message))
                })?;
                Ok(VersionDeltaAck {
                    version: v.version,
                    ack,
                })
            })
            .collect()
    }

    /// The rows of `keys` in `table` of `model` `version` (`None`: the version requests without
    /// a version go to), so an operator can compare a replica with its trainer. An absent row
    /// is `None`. Errors name the model, version and table.
    pub fn rows(
        &self,
        model: &str,
        version: Option<u64>,
        table: &str,
        keys: &[u64],
    ) -> Result<VersionRows> {
        check_model_name(model)?;
        let v = self.get(model, version)?;
        let sparse = sparse_of(&v)?;
        let Some(info) = sparse.tables().into_iter().find(|t| t.name == table) else {
            return Err(Error::not_found(format!(
                "{} has no table '{table}'",
                label(&v)
            )));
        };
        let rows = sparse.rows(table, keys).map_err(|e| {
            Error::new(
                e.code,
                format!("{} table '{table}': {}", label(&v), e.message),
            )
        })?;
        Ok(VersionRows {
            version: v.version,
            dim: info.dim,
            rows,
        })
    }

    /// The embedding tables of `model`: of `version`, or of every serving version when `None`.
    /// A model without tables is an `Unsupported` error naming it.
    pub fn tables(&self, model: &str, version: Option<u64>) -> Result<Vec<VersionTable>> {
        let mut out = Vec::new();
        for v in self.addressed(model, version)? {
            let sparse = sparse_of(&v)?;
            out.extend(sparse.tables().into_iter().map(|table| VersionTable {
                version: v.version,
                table,
            }));
        }
        Ok(out)
    }

    /// The versions a table operation addresses: `version` if given, else every serving one
    /// (ascending). Unknown and not-ready models are errors that say so.
    fn addressed(&self, model: &str, version: Option<u64>) -> Result<Vec<Arc<ServedVersion>>> {
        check_model_name(model)?;
        let latest = self.get(model, version)?;
        if version.is_some() {
            return Ok(vec![latest]);
        }
        let serving: Vec<Arc<ServedVersion>> = self
            .index()
            .into_iter()
            .filter(|e| e.name == model && e.state == VersionState::Ready)
            .filter_map(|e| e.version)
            .filter_map(|v| self.get(model, Some(v)).ok())
            .collect();
        Ok(if serving.is_empty() {
            vec![latest]
        } else {
            serving
        })
    }
}

/// `model 'name' version v`, how the errors here name a version.
fn label(v: &ServedVersion) -> String {
    format!("model '{}' version {}", v.name, v.version)
}

/// The version's embedding tables, or an error naming the version and its backend.
fn sparse_of(v: &ServedVersion) -> Result<VersionTables<'_>> {
    v.sparse().ok_or_else(|| {
        Error::new(
            ErrorCode::Unsupported,
            format!(
                "{} has no embedding tables (backend {:?})",
                label(v),
                v.config.backend.as_deref().unwrap_or("default")
            ),
        )
    })
}
