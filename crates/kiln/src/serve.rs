//! `kiln serve`.

use anyhow::Context;
use clap::{Args, ValueEnum};
use kiln_runtime::{Backends, ControlMode, ModelRepository, RuntimeMetrics};
use kiln_server::{Server, ServerConfig};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Flags of `kiln serve`; each one can also be set by its `KILN_` environment variable.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Model repository: `<dir>/<model>/config.toml` and `<dir>/<model>/<version>/model.onnx`.
    #[arg(long, env = "KILN_MODEL_REPOSITORY", default_value = "examples/models")]
    model_repository: PathBuf,
    /// Address to listen on.
    #[arg(long, env = "KILN_HOST", default_value = "0.0.0.0")]
    host: IpAddr,
    /// HTTP port (KServe v2 REST); 0 picks a free port.
    #[arg(long, env = "KILN_HTTP_PORT", default_value_t = 8000)]
    http_port: u16,
    /// gRPC port; 0 picks a free port.
    #[arg(long, env = "KILN_GRPC_PORT", default_value_t = 8001)]
    grpc_port: u16,
    /// Prometheus metrics port; 0 picks a free port.
    #[arg(long, env = "KILN_METRICS_PORT", default_value_t = 8002)]
    metrics_port: u16,
    /// Turn the metrics endpoint off.
    #[arg(long, env = "KILN_NO_METRICS")]
    no_metrics: bool,
    /// How models are loaded: `none` loads all at start, `poll` also rescans the repository,
    /// `explicit` loads only `--load-model` names (others through the repository API).
    #[arg(long, env = "KILN_MODEL_CONTROL_MODE", value_enum, default_value_t = Mode::None)]
    model_control_mode: Mode,
    /// Rescan interval in seconds for `poll` mode; setting it selects `poll` mode.
    #[arg(long, env = "KILN_POLL_INTERVAL")]
    poll_interval: Option<f64>,
    /// Models to load at start in `explicit` mode (repeatable).
    #[arg(long = "load-model", env = "KILN_LOAD_MODEL", value_delimiter = ',')]
    load_model: Vec<String>,
    /// Largest request body (HTTP) or message (gRPC) accepted, in bytes.
    #[arg(long, env = "KILN_MAX_REQUEST_BYTES", default_value_t = 64 << 20)]
    max_request_bytes: usize,
    /// Backend for `.onnx` models whose config names none: `onnxruntime`, `tract`, or `auto`
    /// (onnxruntime when its library is found, else tract).
    #[arg(long, env = "KILN_DEFAULT_ONNX_BACKEND", default_value = "auto")]
    default_onnx_backend: String,
    /// ONNX Runtime shared library (`libonnxruntime.so.*`, >= 1.31); when absent `ORT_DYLIB_PATH`,
    /// then the Python `onnxruntime` package (`pip install onnxruntime`) is used.
    #[arg(long, env = "KILN_ORT_LIBRARY")]
    ort_library: Option<PathBuf>,
    /// Worker threads of the async runtime (network and protocol work; compute has its own).
    #[arg(long, env = "KILN_IO_THREADS")]
    io_threads: Option<usize>,
    /// Token the control plane (embedding deltas under `/admin/v1`, gRPC `kiln.admin.v1`)
    /// requires as `Authorization: Bearer <token>`; without it the control plane is open.
    #[arg(long, env = "KILN_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Let clients register system shared-memory regions and pass tensors through them
    /// (Triton's shared-memory extension; `perf_analyzer --shared-memory system`). Off by
    /// default: a client can then make the server map any shared-memory object it can open.
    #[arg(long, env = "KILN_ALLOW_CLIENT_SHM")]
    allow_client_shm: bool,
    /// Once listening, write `{"http_port":..,"grpc_port":..,"metrics_port":..}` to this file.
    #[arg(long, env = "KILN_READY_FILE")]
    ready_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    None,
    Poll,
    Explicit,
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all().thread_name("kiln-io");
    if let Some(n) = args.io_threads {
        rt.worker_threads(n.max(1));
    }
    rt.build()
        .context("cannot start the async runtime")?
        .block_on(serve(args))
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mode = match (args.model_control_mode, args.poll_interval) {
        (Mode::Explicit, Some(_)) => {
            anyhow::bail!("--poll-interval cannot be combined with --model-control-mode explicit")
        }
        (_, Some(s)) if !(s > 0.0 && s.is_finite()) => {
            anyhow::bail!("--poll-interval must be a positive number of seconds")
        }
        (_, Some(s)) => ControlMode::Poll(Duration::from_secs_f64(s)),
        (Mode::Poll, None) => ControlMode::Poll(Duration::from_secs(5)),
        (Mode::Explicit, None) => ControlMode::Explicit,
        (Mode::None, None) => ControlMode::None,
    };
    let mut backends = Backends::default();
    crate::onnx::configure(
        &mut backends,
        args.ort_library.clone(),
        &args.default_onnx_backend,
    )?;
    let metrics = Arc::new(RuntimeMetrics::default());
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let recsys = Arc::new(kiln_recsys::RecsysBackend::new());
    recsys.collector().register(&mut registry);
    backends.register(recsys);
    let repo = ModelRepository::new(&args.model_repository, backends, metrics);

    let addr = |port| SocketAddr::new(args.host, port);
    let config = ServerConfig {
        http_addr: addr(args.http_port),
        grpc_addr: addr(args.grpc_port),
        metrics_addr: (!args.no_metrics).then(|| addr(args.metrics_port)),
        max_request_bytes: args.max_request_bytes,
        admin_token: args.admin_token.clone().filter(|t| !t.is_empty()),
        allow_client_shm: args.allow_client_shm,
    };
    let server = Server::bind(config, repo.clone(), registry).await?;
    let ports = (
        server.http_addr(),
        server.grpc_addr(),
        server.metrics_addr(),
    );
    // Serve health probes while the models load; readiness turns true once they are loaded.
    let starter = server.starter();
    starter.set_started(false);
    let serving = tokio::spawn(server.serve(shutdown_signal()));
    repo.start(mode, &args.load_model)
        .await
        .with_context(|| format!("--model-repository {}", args.model_repository.display()))?;
    starter.set_started(true);
    if let Some(path) = &args.ready_file {
        let body = serde_json_ports(ports.0.port(), ports.1.port(), ports.2.map(|a| a.port()));
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, body)
            .and_then(|_| std::fs::rename(&tmp, path))
            .with_context(|| format!("--ready-file {}", path.display()))?;
    }
    tracing::info!(http = %ports.0, grpc = %ports.1, metrics = ?ports.2, "kiln serve ready");
    serving.await.context("server task failed")??;
    Ok(())
}

fn serde_json_ports(http: u16, grpc: u16, metrics: Option<u16>) -> String {
    let metrics = metrics
        .map(|p| p.to_string())
        .unwrap_or_else(|| "null".into());
    format!("{{\"http_port\":{http},\"grpc_port\":{grpc},\"metrics_port\":{metrics}}}\n")
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
