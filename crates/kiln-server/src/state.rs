//! State shared by the HTTP and gRPC front ends.

use kiln_core::{Error, Result};
use kiln_protocol::shm::Regions;
use kiln_runtime::{check_model_name, ModelRepository, ServedVersion};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The protocol extensions this server implements, as `GET /v2` lists them.
pub const EXTENSIONS: &[&str] = &[
    "binary_tensor_data",
    "parameters",
    "model_repository",
    "model_configuration",
    "statistics",
    "schedule_policy",
];

/// The extensions listed, with `system_shared_memory` when clients may register regions.
pub fn extensions(state: &AppState) -> Vec<&'static str> {
    let mut e = EXTENSIONS.to_vec();
    if state.shm.allowed() {
        e.push("system_shared_memory");
    }
    e
}

/// What every handler needs.
pub struct AppState {
    /// The models.
    pub repo: Arc<ModelRepository>,
    /// False once shutdown has begun, so readiness probes fail while requests drain.
    pub accepting: AtomicBool,
    /// False while the start-up models load, so readiness probes wait for them.
    pub started: AtomicBool,
    /// Token the control plane (`/admin/...`, `kiln.admin.v1`) requires; `None` = open.
    pub admin_token: Option<String>,
    /// Registered system shared-memory regions.
    pub shm: Regions,
    /// Early refusal of inference requests and the server-wide in-flight budget.
    pub admission: crate::admission::Admission,
}

impl AppState {
    /// State over `repo`, accepting traffic; `allow_shm` lets clients register system
    /// shared-memory regions.
    pub fn new(
        repo: Arc<ModelRepository>,
        admin_token: Option<String>,
        allow_shm: bool,
    ) -> Arc<Self> {
        Arc::new(AppState {
            repo,
            accepting: AtomicBool::new(true),
            started: AtomicBool::new(true),
            admin_token,
            shm: Regions::new(allow_shm),
            admission: Default::default(),
        })
    }

    /// Server readiness: start-up loading done and not shutting down.
    pub fn ready(&self) -> bool {
        self.started.load(Ordering::Relaxed) && self.accepting.load(Ordering::Relaxed)
    }

    /// Serving versions of `model`, ascending.
    pub fn serving_versions(&self, model: &str) -> Vec<u64> {
        self.repo
            .index()
            .into_iter()
            .filter(|e| e.name == model && e.state == kiln_runtime::VersionState::Ready)
            .filter_map(|e| e.version)
            .collect()
    }

    /// The served version of `model` (`version` empty = latest), with name checks.
    pub fn version(&self, model: &str, version: &str) -> Result<Arc<ServedVersion>> {
        check_model_name(model)?;
        let v = parse_version(version)?;
        self.repo.get(model, v)
    }
}

/// Parses a version string; empty means "latest".
pub fn parse_version(v: &str) -> Result<Option<u64>> {
    if v.is_empty() {
        return Ok(None);
    }
    v.parse::<u64>().map(Some).map_err(|_| {
        Error::invalid(format!(
            "invalid model version '{}': must be a number",
            v.escape_debug()
        ))
    })
}

/// Server name and version as `GET /v2` reports them.
pub const SERVER_NAME: &str = "kiln";
/// Server version.
pub const SERVER_VERSION: &str = env!("CARGO_PKG_VERSION");
