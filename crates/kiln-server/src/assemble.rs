//! Putting a server together: the one wiring of `kiln serve` and of the in-process test
//! harness (runtime metrics, model repository, listeners), so that neither repeats the other.
//!
//! The caller brings what differs between them: the [`Backends`] it is built with (and their
//! metrics, already in the registry) and how shutdown is signalled.

use crate::{Server, ServerConfig, ServerError, Starter};
use kiln_runtime::{Backends, ControlMode, ModelRepository, RuntimeMetrics};
use prometheus_client::registry::Registry;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::task::JoinHandle;

/// Everything a server is assembled from, except the backends and the metrics registry.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The model repository directory.
    pub model_repository: PathBuf,
    /// How models get loaded.
    pub control_mode: ControlMode,
    /// Models to load at start in [`ControlMode::Explicit`].
    pub startup_models: Vec<String>,
    /// Nice value added to the compute (model worker) threads.
    pub compute_nice: i32,
    /// Byte limit of the response cache shared by the models that enable it; 0 = no cache.
    pub response_cache_bytes: u64,
    /// Listener addresses and limits.
    pub server: ServerConfig,
}

impl Settings {
    /// Settings that load every model under `model_repository` at start, with the compute
    /// threads at the process's priority.
    pub fn new(model_repository: impl Into<PathBuf>, server: ServerConfig) -> Self {
        Settings {
            model_repository: model_repository.into(),
            control_mode: ControlMode::None,
            startup_models: Vec::new(),
            compute_nice: 0,
            response_cache_bytes: 64 << 20,
            server,
        }
    }
}

/// A server bound by [`assemble`] over a repository with no model loaded yet.
pub struct Assembled {
    server: Server,
    repo: Arc<ModelRepository>,
    control_mode: ControlMode,
    startup_models: Vec<String>,
}

/// A server that [`Assembled::start`] has started, serving its loaded models.
pub struct Running {
    /// The model repository it serves.
    pub repo: Arc<ModelRepository>,
    /// Turns readiness off and on again (see [`Server::starter`]).
    pub starter: Starter,
    /// The bound HTTP address.
    pub http_addr: SocketAddr,
    /// The bound gRPC address.
    pub grpc_addr: SocketAddr,
    /// The bound metrics address, if enabled.
    pub metrics_addr: Option<SocketAddr>,
    /// The serving task: resolves once shutdown has drained every request.
    pub task: JoinHandle<Result<(), ServerError>>,
}

/// Builds the runtime metrics (registered in `registry`) and the model repository over
/// `backends`, and binds every listener of `settings.server` (port 0 picks a free one). Serves
/// nothing until [`Assembled::start`].
pub async fn assemble(
    settings: Settings,
    backends: Backends,
    mut registry: Registry,
) -> Result<Assembled, ServerError> {
    let metrics = Arc::new(RuntimeMetrics::default());
    metrics.register(&mut registry);
    let repo = ModelRepository::new(&settings.model_repository, backends, metrics);
    repo.set_worker_nice(settings.compute_nice);
    repo.set_response_cache(settings.response_cache_bytes);
    let server = Server::bind(settings.server, repo.clone(), registry).await?;
    Ok(Assembled {
        server,
        repo,
        control_mode: settings.control_mode,
        startup_models: settings.startup_models,
    })
}

impl Assembled {
    /// The bound HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.server.http_addr()
    }

    /// The bound gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.server.grpc_addr()
    }

    /// The bound metrics address, if enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.server.metrics_addr()
    }

    /// Installs the process's log handle (see [`Server::set_log_control`]).
    pub fn set_log_control(&self, log: Arc<dyn crate::LogControl>) {
        self.server.set_log_control(log);
    }

    /// Sets the name server metadata reports (`GET /v2`, gRPC `ServerMetadata`) instead of
    /// `kiln`; only the first name counts.
    pub fn set_server_name(&self, name: String) {
        let _ = self.server.state.server_name.set(name);
    }

    /// The model repository the server will serve.
    pub fn repo(&self) -> &Arc<ModelRepository> {
        &self.repo
    }

    /// Starts serving until `shutdown` resolves, and loads the start-up models meanwhile:
    /// health probes answer at once, readiness turns true once loading is done, which is when
    /// this returns. Models that fail to load are logged and indexed, not fatal; a repository
    /// directory that does not exist stops the server and is the error.
    pub async fn start(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<Running, ServerError> {
        let starter = self.server.starter();
        let (http_addr, grpc_addr, metrics_addr) =
            (self.http_addr(), self.grpc_addr(), self.metrics_addr());
        starter.set_started(false);
        let task = tokio::spawn(self.server.serve(shutdown));
        if let Err(e) = self
            .repo
            .start(self.control_mode, &self.startup_models)
            .await
        {
            task.abort();
            return Err(ServerError::Repository(e));
        }
        starter.set_started(true);
        Ok(Running {
            repo: self.repo,
            starter,
            http_addr,
            grpc_addr,
            metrics_addr,
            task,
        })
    }
}
