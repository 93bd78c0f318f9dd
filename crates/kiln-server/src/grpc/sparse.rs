//! `kiln.admin.v1.SparseAdmin`: embedding deltas and table listings over gRPC.

use super::authorize;
use crate::error::to_status;
use crate::sparse;
use crate::state::AppState;
use kiln_protocol::admin as pb;
use kiln_protocol::admin::sparse_admin_server::SparseAdmin;
use kiln_runtime::{VersionDeltaAck, VersionTable};
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The service; cheap to clone.
#[derive(Clone)]
pub struct AdminService {
    /// Shared server state.
    pub state: Arc<AppState>,
}

#[tonic::async_trait]
impl SparseAdmin for AdminService {
    async fn apply_delta(
        &self,
        r: Request<pb::ApplyDeltaRequest>,
    ) -> Result<Response<pb::ApplyDeltaResponse>, Status> {
        authorize(&self.state, &r)?;
        let from = r.remote_addr();
        let req = r.into_inner();
        let st = self.state.clone();
        let results = tokio::task::spawn_blocking(move || {
            sparse::apply_delta(
                &st,
                from,
                &req.model_name,
                &req.model_version,
                &req.table,
                &req.delta,
            )
        })
        .await
        .map_err(|e| Status::internal(format!("delta task: {e}")))?
        .map_err(to_status)?;
        Ok(Response::new(pb::ApplyDeltaResponse {
            results: results
                .into_iter()
                .map(|VersionDeltaAck { version, ack: a }| pb::DeltaResult {
                    version,
                    applied: a.applied,
                    rows: a.rows,
                    inserted: a.inserted,
                    removed: a.removed,
                    evicted: a.evicted,
                    last_sequence: a.last_sequence,
                    gap_expected: a.gap.map_or(0, |g| g.0),
                    gap_got: a.gap.map_or(0, |g| g.1),
                })
                .collect(),
        }))
    }

    async fn list_tables(
        &self,
        r: Request<pb::ListTablesRequest>,
    ) -> Result<Response<pb::ListTablesResponse>, Status> {
        authorize(&self.state, &r)?;
        let req = r.into_inner();
        let tables =
            sparse::tables(&self.state, &req.model_name, &req.model_version).map_err(to_status)?;
        Ok(Response::new(pb::ListTablesResponse {
            tables: tables
                .into_iter()
                .map(|VersionTable { version, table: t }| pb::TableInfo {
                    version,
                    name: t.name,
                    dim: t.dim as u64,
                    rows: t.rows,
                    bytes: t.bytes,
                    sources: t
                        .sources
                        .into_iter()
                        .map(|(source, last_sequence)| pb::SourceSequence {
                            source,
                            last_sequence,
                        })
                        .collect(),
                })
                .collect(),
        }))
    }
}
