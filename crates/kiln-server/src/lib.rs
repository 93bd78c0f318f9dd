//! Kiln's server: the KServe v2 / Triton protocol over HTTP (axum) and gRPC (tonic), plus a
//! Prometheus `/metrics` endpoint, over a [`ModelRepository`].
//!
//! [`Server::bind`] binds every port first (port 0 picks a free one, which tests use), then
//! [`Server::serve`] runs until the shutdown future resolves: readiness turns false, listeners
//! stop accepting, in-flight requests drain, and it returns. [`assemble`] puts a whole server
//! together (metrics, model repository, listeners) for the binary and the tests alike.

mod admission;
mod assemble;
mod body;
mod control;
mod error;
mod extensions;
mod grpc;
mod http;
mod infer;
mod limits;
mod listen;
mod listen_grpc;
mod metrics_http;
mod rollout;
pub mod shm;
mod sparse;
mod state;

pub use admission::Admission;
pub use assemble::{assemble, Assembled, Running, Settings};
pub use error::to_status;
pub use extensions::{LogControl, LogSettings};
pub use limits::Limits;
pub use state::AppState;
/// The gRPC compression encodings ([`ServerConfig::grpc_response_compression`]).
pub use tonic::codec::CompressionEncoding;

use kiln_protocol::inference::grpc_inference_service_server::GrpcInferenceServiceServer;
use kiln_runtime::ModelRepository;
use prometheus_client::registry::Registry;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Listener addresses and limits.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// HTTP (KServe REST) address.
    pub http_addr: SocketAddr,
    /// gRPC address.
    pub grpc_addr: SocketAddr,
    /// Prometheus metrics address; `None` disables the endpoint.
    pub metrics_addr: Option<SocketAddr>,
    /// Largest HTTP request body and gRPC message accepted, in bytes.
    pub max_request_bytes: usize,
    /// Token required by the control plane (embedding deltas); `None` leaves it open.
    pub admin_token: Option<String>,
    /// Whether clients may register system shared-memory regions (Triton's
    /// `--allow-client-shm`): off by default, since a region maps any shared-memory object
    /// the server can open.
    pub allow_client_shm: bool,
    /// Timeouts, connection caps and the in-flight budget.
    pub limits: Limits,
    /// gRPC responses are compressed with this encoding for clients that accept it; `None`
    /// sends them uncompressed, as Triton does by default. Compressed requests are accepted
    /// either way.
    pub grpc_response_compression: Option<CompressionEncoding>,
}

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A port could not be bound.
    #[error("cannot bind {what} address {addr}: {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The model repository cannot be served (its directory does not exist).
    #[error(transparent)]
    Repository(kiln_core::Error),
    /// A listener failed while serving.
    #[error("{what} server failed: {source}")]
    Serve {
        /// Which listener.
        what: &'static str,
        /// The cause.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Sets whether start-up loading is done (see [`Server::starter`]).
#[derive(Clone)]
pub struct Starter(Arc<AppState>);

impl Starter {
    /// `false` while start-up models load, `true` once they are loaded.
    pub fn set_started(&self, done: bool) {
        self.0.started.store(done, Ordering::Relaxed);
    }
}

/// A bound, not yet serving, server.
pub struct Server {
    state: Arc<AppState>,
    registry: Arc<Registry>,
    conn_metrics: limits::ConnMetrics,
    config: ServerConfig,
    http: TcpListener,
    grpc: TcpListener,
    metrics: Option<TcpListener>,
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { what, addr, source })
}

impl Server {
    /// Binds every listener. `registry` holds the metrics `/metrics` serves.
    pub async fn bind(
        config: ServerConfig,
        repo: Arc<ModelRepository>,
        registry: Registry,
    ) -> Result<Self, ServerError> {
        let http = bind("http", config.http_addr).await?;
        let grpc = bind("grpc", config.grpc_addr).await?;
        state::warn_open_endpoints(&config);
        let metrics = match config.metrics_addr {
            Some(a) => Some(bind("metrics", a).await?),
            None => None,
        };
        let mut registry = registry;
        let mut state = AppState::new(repo, config.admin_token.clone(), config.allow_client_shm);
        let admission = Admission::new(
            config.limits.max_inflight_requests,
            config.limits.max_inflight_bytes,
        );
        admission.register(&mut registry);
        Arc::get_mut(&mut state)
            .expect("state not shared before serving")
            .admission = admission;
        let conn_metrics = limits::ConnMetrics::default();
        conn_metrics.register(&mut registry);
        Ok(Server {
            state,
            registry: Arc::new(registry),
            conn_metrics,
            config,
            http,
            grpc,
            metrics,
        })
    }

    /// Installs the handle through which `v2/logging` and gRPC `LogSettings` read and change
    /// the process's log; without one they answer UNAVAILABLE. Only the first handle counts.
    pub fn set_log_control(&self, log: Arc<dyn LogControl>) {
        let _ = self.state.extensions.log.set(log);
    }

    /// Marks start-up loading as in progress (`false`) or done (`true`); the server is ready
    /// only when done. Lets the binary serve health probes while models load.
    pub fn starter(&self) -> Starter {
        Starter(self.state.clone())
    }

    /// The bound HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http.local_addr().expect("bound listener")
    }

    /// The bound gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc.local_addr().expect("bound listener")
    }

    /// The bound metrics address, if enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics
            .as_ref()
            .map(|l| l.local_addr().expect("bound listener"))
    }

    /// Serves until `shutdown` resolves, then drains in-flight requests and returns.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let addrs = (self.http_addr(), self.grpc_addr(), self.metrics_addr());
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let state = self.state.clone();
        tokio::spawn(async move {
            shutdown.await;
            tracing::info!("shutting down: no new connections, draining in-flight requests");
            state.accepting.store(false, Ordering::Relaxed);
            let _ = stop_tx.send(true);
        });
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let limits = self.config.limits.clone();
        let max_body = self.config.max_request_bytes;
        let gate =
            |name| listen::Gate::new(name, limits.max_connections, self.conn_metrics.clone());

        let app = http::router(self.state.clone(), max_body);
        let http = listen::serve_http(
            self.http,
            app,
            gate("http"),
            limits.clone(),
            max_body,
            stop_rx.clone(),
        );

        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<GrpcInferenceServiceServer<grpc::Service>>()
            .await;
        let svc = GrpcInferenceServiceServer::new(grpc::Service {
            state: self.state.clone(),
        })
        .max_decoding_message_size(max_body)
        .max_encoding_message_size(usize::MAX)
        // gzip and deflate messages in (the size limit counts inflated bytes, so a bomb is
        // refused with RESOURCE_EXHAUSTED); out only as configured, below
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Deflate);
        // clients list every encoding they can read in `grpc-accept-encoding` (grpc-core
        // always does), so compressing whatever they accept would deflate every response
        let svc = match self.config.grpc_response_compression {
            Some(encoding) => svc.send_compressed(encoding),
            None => svc,
        };
        let admin =
            kiln_protocol::admin::sparse_admin_server::SparseAdminServer::new(grpc::AdminService {
                state: self.state.clone(),
            })
            .max_decoding_message_size(max_body);
        let traffic = kiln_protocol::admin::traffic_admin_server::TrafficAdminServer::new(
            grpc::AdminService {
                state: self.state.clone(),
            },
        );
        let incoming = listen_grpc::incoming(
            self.grpc,
            gate("grpc"),
            limits.idle_timeout,
            limits.tcp_keepalive,
            stop_rx.clone(),
        );
        let grpc = tonic::transport::Server::builder()
            .http2_keepalive_interval(limits.grpc_keepalive_interval)
            .http2_keepalive_timeout(Some(limits.grpc_keepalive_timeout))
            .initial_stream_window_size(limits.grpc_stream_window)
            .initial_connection_window_size(limits.grpc_connection_window)
            .layer(listen_grpc::TrackLayer)
            .layer(tower::util::MapResponseLayer::new(
                grpc::oversize_is_resource_exhausted,
            ))
            .add_service(health_service)
            .add_service(svc)
            .add_service(admin)
            .add_service(traffic)
            .serve_with_incoming_shutdown(incoming, stopped(stop_rx.clone()));

        let metrics = self.metrics.map(|l| {
            let app = metrics_http::router(self.registry.clone());
            listen::serve_http(
                l,
                app,
                gate("metrics"),
                limits.clone(),
                max_body,
                stop_rx.clone(),
            )
        });

        tracing::info!(http = %addrs.0, grpc = %addrs.1, metrics = ?addrs.2, "serving");
        let metrics_fut = async move {
            if let Some(m) = metrics {
                m.await;
            }
        };
        let ((), g, ()) = tokio::join!(http, grpc, metrics_fut);
        g.map_err(|e| ServerError::Serve {
            what: "grpc",
            source: Box::new(e),
        })?;
        tracing::info!("server stopped");
        Ok(())
    }
}
