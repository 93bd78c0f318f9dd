//! State shared by the HTTP and gRPC front ends.

use crate::shm::Regions;
use kiln_core::{Error, ErrorCode, Result};
use kiln_runtime::{check_model_name, ModelRepository, ServedVersion};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The protocol extensions this server implements, as `GET /v2` lists them.
pub const EXTENSIONS: &[&str] = &[
    "binary_tensor_data",
    "classification",
    "parameters",
    "model_repository",
    "model_repository(unload_dependents)",
    "model_configuration",
    "statistics",
    "schedule_policy",
    "logging",
    "trace",
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
    /// Token every state-changing endpoint requires (see [`AppState::authorize`]); `None` =
    /// open.
    pub admin_token: Option<String>,
    /// Registered system shared-memory regions.
    pub shm: Regions,
    /// Early refusal of inference requests and the server-wide in-flight budget.
    pub admission: crate::admission::Admission,
    /// Log and trace settings (Triton's logging and trace extensions).
    pub extensions: crate::extensions::Extensions,
    /// The name server metadata reports, when set (see [`AppState::server_name`]).
    pub server_name: std::sync::OnceLock<String>,
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
            extensions: Default::default(),
            server_name: Default::default(),
        })
    }

    /// The name `GET /v2` and gRPC `ServerMetadata` report: the one set at start-up, else
    /// `SERVER_NAME`.
    pub fn server_name(&self) -> &str {
        self.server_name.get().map_or(SERVER_NAME, String::as_str)
    }

    /// Server readiness: start-up loading done and not shutting down.
    pub fn ready(&self) -> bool {
        self.started.load(Ordering::Relaxed) && self.accepting.load(Ordering::Relaxed)
    }

    /// The one gate of every endpoint that changes what the server serves: repository load and
    /// unload, shared-memory register and unregister, embedding deltas (and table listings),
    /// traffic weights.
    /// `presented` is the caller's `Authorization` value: `Bearer <token>` (the scheme matched
    /// case-insensitively, RFC 7235) or the bare token. With no token configured every caller
    /// is allowed.
    pub fn authorize(&self, presented: Option<&str>) -> Result<()> {
        let Some(expected) = self.admin_token.as_deref() else {
            return Ok(());
        };
        let got = presented.map(credential).unwrap_or("");
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

    /// The served version an inference request goes to, with name checks: `version` if given
    /// (always honoured), else the model's traffic split between its serving versions (sticky
    /// by `routing_key`), else the latest.
    pub fn route(
        &self,
        model: &str,
        version: &str,
        routing_key: Option<&str>,
    ) -> Result<Arc<ServedVersion>> {
        check_model_name(model)?;
        let v = parse_version(version)?;
        self.repo.route(model, v, routing_key)
    }
}

/// The token of an `Authorization` value: what follows a `Bearer` scheme (any case), else the
/// whole value; surrounding whitespace dropped.
fn credential(header: &str) -> &str {
    let h = header.trim();
    match h.split_once(|c: char| c.is_ascii_whitespace()) {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
        _ => h,
    }
}

/// A caller's address as the audit log shows it.
pub fn caller(addr: Option<SocketAddr>) -> String {
    addr.map_or_else(|| "unknown".to_string(), |a| a.to_string())
}

/// The state-changing endpoints a server listening on `http` and `grpc` leaves open to anyone
/// who reaches a non-loopback listener: empty when it has an admin token (`token`) or every
/// listener is on loopback. `shm`: clients may register shared memory.
pub fn open_endpoints(
    http: SocketAddr,
    grpc: SocketAddr,
    token: bool,
    shm: bool,
) -> Vec<&'static str> {
    if token || (http.ip().is_loopback() && grpc.ip().is_loopback()) {
        return Vec::new();
    }
    let mut open = vec![
        "POST /v2/repository/models/{model}/load",
        "POST /v2/repository/models/{model}/unload",
        "gRPC RepositoryModelLoad",
        "gRPC RepositoryModelUnload",
        "POST /admin/v1/models/{model}/tables/{table}/deltas",
        "gRPC kiln.admin.v1.SparseAdmin/ApplyDelta",
        "PUT /admin/v1/models/{model}/traffic",
        "gRPC kiln.admin.v1.TrafficAdmin/SetTraffic",
    ];
    if shm {
        open.extend([
            "POST /v2/systemsharedmemory/region/{name}/register",
            "POST /v2/systemsharedmemory[/region/{name}]/unregister",
            "gRPC SystemSharedMemoryRegister",
            "gRPC SystemSharedMemoryUnregister",
        ]);
    }
    open
}

/// Logs a warning at start when [`open_endpoints`] finds state-changing endpoints that anyone
/// who reaches the server can call.
pub fn warn_open_endpoints(config: &crate::ServerConfig) {
    let open = open_endpoints(
        config.http_addr,
        config.grpc_addr,
        config.admin_token.is_some(),
        config.allow_client_shm,
    );
    if !open.is_empty() {
        tracing::warn!(
            http = %config.http_addr,
            grpc = %config.grpc_addr,
            endpoints = %open.join(", "),
            "no --admin-token and listening beyond loopback: anyone who reaches the server can \
             call these state-changing endpoints"
        );
    }
}

/// Parses a version string; empty means "latest".
pub fn parse_version(v: &str) -> Result<Option<u64>> {
    if v.is_empty() {
        return Ok(None);
    }
    v.parse::<u64>().map(Some).map_err(|_| {
        Error::invalid(kiln_core::texts::bad_version_string(
            &v.escape_debug().to_string(),
        ))
    })
}

/// The server name `GET /v2` reports unless another is set (`kiln serve --server-name`).
pub const SERVER_NAME: &str = "kiln";
/// Server version.
pub const SERVER_VERSION: &str = env!("CARGO_PKG_VERSION");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        for h in [
            "Bearer s3cret",
            "bearer s3cret",
            "BEARER  s3cret ",
            "s3cret",
            "bEaReR\ts3cret",
        ] {
            assert_eq!(credential(h), "s3cret", "{h:?}");
        }
        assert_eq!(credential("Basic s3cret"), "Basic s3cret");
    }

    fn open(http: &str, grpc: &str, token: bool, shm: bool) -> Vec<&'static str> {
        open_endpoints(http.parse().unwrap(), grpc.parse().unwrap(), token, shm)
    }

    #[test]
    fn open_endpoints_are_named_only_beyond_loopback_without_a_token() {
        assert!(open("127.0.0.1:1", "[::1]:2", false, true).is_empty());
        assert!(open("0.0.0.0:1", "0.0.0.0:2", true, true).is_empty());
        let o = open("0.0.0.0:1", "127.0.0.1:2", false, false);
        assert!(
            o.contains(&"POST /v2/repository/models/{model}/unload"),
            "{o:?}"
        );
        assert!(!o.iter().any(|e| e.contains("sharedmemory")), "{o:?}");
        assert!(o.contains(&"PUT /admin/v1/models/{model}/traffic"), "{o:?}");
        let o = open("127.0.0.1:1", "0.0.0.0:2", false, true);
        assert!(o.contains(&"gRPC SystemSharedMemoryRegister"), "{o:?}");
    }
}
