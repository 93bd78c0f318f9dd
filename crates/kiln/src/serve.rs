//! `kiln serve`.

use anyhow::Context;
use clap::{Args, ValueEnum};
use kiln_runtime::delta_source::{DeltaSourceConfig, DeltaSourceMetrics, DeltaSubscriber};
use kiln_runtime::{Backends, ControlMode};
use kiln_server::{CompressionEncoding, Limits, ServerConfig, Settings};
use prometheus_client::registry::Registry;
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
    /// OpenVINO C library (`libopenvino_c.so.*`, >= 2025.1) for models with `backend =
    /// "openvino"`; when absent the Python `openvino` package's (`pip install openvino`).
    #[arg(long, env = "KILN_OPENVINO_LIBRARY")]
    openvino_library: Option<PathBuf>,
    /// Intel MKL (`libmkl_rt.so*`) for the recsys models' dense layers, or `off`; when absent the
    /// Python `mkl` package's (`pip install mkl`) is used, and without one the `gemm` crate.
    #[arg(long, env = "KILN_MKL_LIBRARY")]
    mkl_library: Option<PathBuf>,
    /// Worker threads of the async runtime (network and protocol work; compute has its own).
    #[arg(long, env = "KILN_IO_THREADS")]
    io_threads: Option<usize>,
    /// Nice value added to the compute (model worker) threads, 0-19: with a positive value the
    /// network threads preempt compute as soon as a request arrives, so refusals and admission
    /// stay fast when compute fills every core.
    #[arg(long, env = "KILN_COMPUTE_NICE", default_value_t = 0,
          value_parser = clap::value_parser!(i32).range(0..=19))]
    compute_nice: i32,
    /// Run every thread of the server (network, compute, the engines' own) under Linux's
    /// `SCHED_BATCH` policy: a thread woken up then waits for the running one to block or use
    /// up its time slice instead of preempting it. Where network and compute share cores this
    /// lets the network threads take their backlog between batches, at one wake-up for many
    /// requests rather than one each, and a request arriving mid-batch waits for that batch
    /// (or the scheduler's time slice) to end. See `bench/soak` and `bench/ort`.
    #[arg(long, env = "KILN_SCHED_BATCH")]
    sched_batch: bool,
    /// Memory for the response cache shared by every model that enables it
    /// (`[response_cache] enable = true`), in MiB; 0 turns the cache off.
    #[arg(long, env = "KILN_RESPONSE_CACHE_MB", default_value_t = 64)]
    response_cache_mb: u64,
    /// Token every state-changing endpoint requires as `Authorization: Bearer <token>` (gRPC:
    /// `authorization` metadata): repository load and unload, shared-memory register and
    /// unregister, embedding deltas (`/admin/v1`, `kiln.admin.v1`); without it they are open.
    #[arg(long, env = "KILN_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Let clients register system shared-memory regions and pass tensors through them
    /// (Triton's shared-memory extension; `perf_analyzer --shared-memory system`). Off by
    /// default: a client can then make the server map any shared-memory object it can open.
    #[arg(long, env = "KILN_ALLOW_CLIENT_SHM")]
    allow_client_shm: bool,
    /// The name server metadata reports (`GET /v2`, gRPC `ServerMetadata`). Clients written for
    /// Triton may check for `triton`.
    #[arg(long, env = "KILN_SERVER_NAME", default_value = "kiln")]
    server_name: String,
    /// Seconds a client has to send a request's headers over HTTP/1.1; the clock starts when
    /// the connection is ready for its next request, so it also closes idle keep-alive
    /// connections.
    #[arg(long, env = "KILN_HTTP_HEADER_TIMEOUT", default_value_t = 10.0)]
    http_header_timeout: f64,
    /// Seconds of grace for a request body, after which it must arrive at
    /// `--body-min-rate` on average (else 408 and the connection closes).
    #[arg(long, env = "KILN_BODY_READ_TIMEOUT", default_value_t = 10.0)]
    body_read_timeout: f64,
    /// Least average rate of a request body after `--body-read-timeout`, in bytes/s.
    #[arg(long, env = "KILN_BODY_MIN_RATE", default_value_t = 1024)]
    body_min_rate: u64,
    /// Seconds a connection may stay open with no request in flight (HTTP/2, gRPC; HTTP/1.1
    /// connections are also closed by `--http-header-timeout`).
    #[arg(long, env = "KILN_IDLE_TIMEOUT", default_value_t = 60.0)]
    idle_timeout: f64,
    /// Most open connections per listener (HTTP, gRPC, metrics); one more is refused at once
    /// (HTTP 503 then close; gRPC closed) and counted in `kiln_server_connections_refused_total`.
    #[arg(long, env = "KILN_MAX_CONNECTIONS", default_value_t = 1024)]
    max_connections: usize,
    /// Most inference requests in flight server-wide (HTTP and gRPC); more are refused with
    /// 429 / RESOURCE_EXHAUSTED before their body is read; 0 = no limit.
    #[arg(long, env = "KILN_MAX_INFLIGHT_REQUESTS", default_value_t = 0)]
    max_inflight_requests: usize,
    /// Most request bytes in flight server-wide (HTTP `Content-Length`, gRPC tensor bytes);
    /// more are refused with 429 before the body is read; 0 = no limit.
    #[arg(long, env = "KILN_MAX_INFLIGHT_BYTES", default_value_t = 1 << 30)]
    max_inflight_bytes: usize,
    /// Seconds between HTTP/2 keep-alive pings on gRPC connections; 0 sends none.
    #[arg(long, env = "KILN_GRPC_KEEPALIVE_INTERVAL", default_value_t = 0.0)]
    grpc_keepalive_interval: f64,
    /// Compress gRPC responses with this encoding for clients that accept it. Off by default,
    /// as in Triton: clients list every encoding they can read, so compressing whatever they
    /// accept would cost every response the compression. Compressed requests are always
    /// accepted.
    #[arg(long, env = "KILN_GRPC_RESPONSE_COMPRESSION", value_enum, default_value_t = Compression::None)]
    grpc_response_compression: Compression,
    /// HTTP/2 flow-control window of each gRPC stream, in bytes (HTTP/2's default is 65,535):
    /// a request larger than the window waits for the server's acknowledgement of each
    /// window's worth.
    #[arg(long, env = "KILN_GRPC_STREAM_WINDOW", default_value_t = 1 << 20)]
    grpc_stream_window: u32,
    /// HTTP/2 flow-control window of each gRPC connection, in bytes: the most request bytes
    /// one connection may have buffered in the server across its streams.
    #[arg(long, env = "KILN_GRPC_CONNECTION_WINDOW", default_value_t = 2 << 20)]
    grpc_connection_window: u32,
    /// Seconds a gRPC keep-alive ping may go unanswered before the connection closes.
    #[arg(long, env = "KILN_GRPC_KEEPALIVE_TIMEOUT", default_value_t = 20.0)]
    grpc_keepalive_timeout: f64,
    /// Seconds of silence before TCP keep-alive probes start on accepted sockets; 0 = off.
    #[arg(long, env = "KILN_TCP_KEEPALIVE", default_value_t = 60.0)]
    tcp_keepalive: f64,
    /// Once listening, write `{"http_port":..,"grpc_port":..,"metrics_port":..}` to this file.
    #[arg(long, env = "KILN_READY_FILE")]
    ready_file: Option<PathBuf>,
    /// Export each request's span, and the span of the batch that computed it, to this
    /// OpenTelemetry collector over OTLP/gRPC (e.g. `http://localhost:4317`). Off by default.
    #[arg(long, env = "KILN_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Follow Kafka delta topics, `kafka://HOST:PORT[,HOST:PORT...]`: every served model with
    /// embedding tables applies each delta of its topic `<--delta-topic-prefix><model>`
    /// (key: table name, value: a kiln-embed delta). Off by default.
    #[arg(long, env = "KILN_DELTA_SOURCE")]
    delta_source: Option<String>,
    /// Learner snapshots (`<dir>/<model>/LATEST`): the latest is restored into the served tables
    /// before the delta topic is read from the snapshot's offsets. Needs `--delta-source`.
    #[arg(long, env = "KILN_DELTA_SNAPSHOT_DIR")]
    delta_snapshot_dir: Option<PathBuf>,
    /// Prefix of the delta topics' names.
    #[arg(long, env = "KILN_DELTA_TOPIC_PREFIX", default_value = kiln_runtime::delta_source::DEFAULT_TOPIC_PREFIX)]
    delta_topic_prefix: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Compression {
    None,
    Gzip,
    Deflate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    None,
    Poll,
    Explicit,
}

pub fn run(args: ServeArgs, log: Arc<dyn kiln_server::LogControl>) -> anyhow::Result<()> {
    raise_nofile(args.max_connections);
    if args.sched_batch {
        // before any thread starts: threads inherit their creator's policy
        sched_batch().context("--sched-batch")?;
    }
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all().thread_name("kiln-io");
    if let Some(n) = args.io_threads {
        rt.worker_threads(n.max(1));
    }
    rt.build()
        .context("cannot start the async runtime")?
        .block_on(serve(args, log))
}

async fn serve(args: ServeArgs, log: Arc<dyn kiln_server::LogControl>) -> anyhow::Result<()> {
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
    let delta_source = delta_source(&args)?;
    let mut registry = prometheus_client::registry::Registry::default();
    crate::process_metrics::ProcessCollector::register(&mut registry);
    let delta_metrics = Arc::new(DeltaSourceMetrics::default());
    if delta_source.is_some() {
        delta_metrics.register(&mut registry);
    }
    let backends = backends(&args, &mut registry)?;
    let addr = |port| SocketAddr::new(args.host, port);
    let settings = Settings {
        model_repository: args.model_repository.clone(),
        control_mode: mode,
        startup_models: args.load_model.clone(),
        compute_nice: args.compute_nice,
        response_cache_bytes: args.response_cache_mb << 20,
        server: ServerConfig {
            http_addr: addr(args.http_port),
            grpc_addr: addr(args.grpc_port),
            metrics_addr: (!args.no_metrics).then(|| addr(args.metrics_port)),
            max_request_bytes: args.max_request_bytes,
            admin_token: args.admin_token.clone().filter(|t| !t.is_empty()),
            allow_client_shm: args.allow_client_shm,
            limits: limits(&args)?,
            grpc_response_compression: match args.grpc_response_compression {
                Compression::None => None,
                Compression::Gzip => Some(CompressionEncoding::Gzip),
                Compression::Deflate => Some(CompressionEncoding::Deflate),
            },
        },
    };
    // One shutdown for the server and the delta subscriber: a signal, or the server stopping.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let on_signal = stop_tx.clone();
    tokio::spawn(async move {
        crate::signal::shutdown_signal().await;
        on_signal.send_replace(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    // Serves health probes while the models load; readiness turns true once they are loaded.
    let assembled = kiln_server::assemble(settings, backends, registry).await?;
    assembled.set_log_control(log);
    assembled.set_server_name(args.server_name.clone());
    let running = assembled
        .start(stopped(stop_rx.clone()))
        .await
        .with_context(|| format!("--model-repository {}", args.model_repository.display()))?;
    let subscriber = match delta_source {
        Some(config) => {
            // not ready until the snapshots are restored into the served tables
            running.starter.set_started(false);
            let s = DeltaSubscriber::start(running.repo.clone(), config, delta_metrics).await;
            running.starter.set_started(true);
            Some(s)
        }
        None => None,
    };
    let ports = (running.http_addr, running.grpc_addr, running.metrics_addr);
    if let Some(path) = &args.ready_file {
        let body = serde_json_ports(ports.0.port(), ports.1.port(), ports.2.map(|a| a.port()));
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, body)
            .and_then(|_| std::fs::rename(&tmp, path))
            .with_context(|| format!("--ready-file {}", path.display()))?;
    }
    tracing::info!(http = %ports.0, grpc = %ports.1, metrics = ?ports.2, "kiln serve ready");
    let server = async {
        let done = running.task.await;
        stop_tx.send_replace(true);
        done
    };
    let subscriber = async {
        if let Some(s) = subscriber {
            stopped(stop_rx).await;
            s.shutdown().await;
        }
    };
    let (done, ()) = tokio::join!(server, subscriber);
    done.context("server task failed")??;
    Ok(())
}

/// The delta subscriber's settings from the `--delta-*` flags; a bad URL is refused here,
/// before anything starts.
fn delta_source(args: &ServeArgs) -> anyhow::Result<Option<DeltaSourceConfig>> {
    let Some(url) = args.delta_source.as_deref().filter(|u| !u.is_empty()) else {
        if args.delta_snapshot_dir.is_some() {
            anyhow::bail!("--delta-snapshot-dir needs --delta-source");
        }
        return Ok(None);
    };
    let mut config = DeltaSourceConfig::from_url(url).context("--delta-source")?;
    if args.delta_topic_prefix.is_empty() {
        anyhow::bail!("--delta-topic-prefix must not be empty");
    }
    config.topic_prefix = args.delta_topic_prefix.clone();
    config.snapshot_dir = args.delta_snapshot_dir.clone();
    Ok(Some(config))
}

/// The backends `kiln serve` is built with: tract, ONNX Runtime (cargo feature `ort`), OpenVINO
/// (cargo feature `openvino`) and recsys, whose metrics go into `registry`.
fn backends(args: &ServeArgs, registry: &mut Registry) -> anyhow::Result<Backends> {
    let mut backends = Backends::new();
    backends.register(Arc::new(kiln_backend_tract::TractBackend));
    crate::onnx::configure(
        &mut backends,
        args.ort_library.clone(),
        &args.default_onnx_backend,
    )?;
    crate::openvino::register(&mut backends, args.openvino_library.clone())?;
    let recsys = Arc::new(kiln_recsys::RecsysBackend::with_options(
        crate::mkl::recsys_options(args.mkl_library.clone()),
    ));
    recsys.collector().register(registry);
    backends.register(recsys);
    Ok(backends)
}

fn serde_json_ports(http: u16, grpc: u16, metrics: Option<u16>) -> String {
    let metrics = metrics
        .map(|p| p.to_string())
        .unwrap_or_else(|| "null".into());
    format!("{{\"http_port\":{http},\"grpc_port\":{grpc},\"metrics_port\":{metrics}}}\n")
}

/// A flag's seconds as a duration; `zero_off` maps 0 to `None`.
fn secs(flag: &str, v: f64, zero_off: bool) -> anyhow::Result<Option<Duration>> {
    if !(v >= 0.0 && v.is_finite()) || (v == 0.0 && !zero_off) {
        anyhow::bail!("--{flag} must be a positive number of seconds");
    }
    Ok((v > 0.0).then(|| Duration::from_secs_f64(v)))
}

fn limits(a: &ServeArgs) -> anyhow::Result<Limits> {
    let on = |flag: &str, v: f64| -> anyhow::Result<Duration> {
        Ok(secs(flag, v, false)?.unwrap_or_default())
    };
    if a.max_connections == 0 {
        anyhow::bail!("--max-connections must be at least 1");
    }
    Ok(Limits {
        header_read_timeout: on("http-header-timeout", a.http_header_timeout)?,
        body_read_timeout: secs("body-read-timeout", a.body_read_timeout, true)?
            .unwrap_or_default(),
        body_min_rate: a.body_min_rate,
        idle_timeout: on("idle-timeout", a.idle_timeout)?,
        max_connections: a.max_connections,
        max_inflight_requests: a.max_inflight_requests,
        max_inflight_bytes: a.max_inflight_bytes,
        grpc_keepalive_interval: secs("grpc-keepalive-interval", a.grpc_keepalive_interval, true)?,
        grpc_keepalive_timeout: on("grpc-keepalive-timeout", a.grpc_keepalive_timeout)?,
        tcp_keepalive: secs("tcp-keepalive", a.tcp_keepalive, true)?,
        grpc_stream_window: window("grpc-stream-window", a.grpc_stream_window)?,
        grpc_connection_window: window("grpc-connection-window", a.grpc_connection_window)?,
    })
}

/// An HTTP/2 flow-control window: at least the protocol's initial 65,535 bytes, at most its
/// largest, 2^31 - 1 (RFC 9113, 6.9.1).
fn window(flag: &str, bytes: u32) -> anyhow::Result<u32> {
    if !(65_535..=i32::MAX as u32).contains(&bytes) {
        anyhow::bail!("--{flag} must be between 65535 and 2147483647 bytes, not {bytes}");
    }
    Ok(bytes)
}

/// Puts the calling thread under `SCHED_BATCH`; the threads it starts afterwards inherit it.
/// Any thread may lower its own policy to `SCHED_BATCH`, so no privilege is needed.
fn sched_batch() -> anyhow::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: sched_setscheduler reads the struct passed; pid 0 is the calling thread.
        if unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) } != 0 {
            return Err(std::io::Error::last_os_error())
                .context("cannot set the SCHED_BATCH scheduling policy");
        }
        tracing::info!(
            "threads run under SCHED_BATCH: a woken thread does not preempt a running one"
        );
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    anyhow::bail!("SCHED_BATCH is a Linux scheduling policy")
}

/// Raises the soft open-file limit to the hard one (the soft one is often 1,024 while the
/// hard one is far higher), logs both, and warns when three listeners at `max_connections`
/// could still exhaust it.
fn raise_nofile(max_connections: usize) {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit only read and write the struct passed.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
            tracing::warn!(error = %std::io::Error::last_os_error(), "cannot read RLIMIT_NOFILE");
            return;
        }
        let before = lim.rlim_cur;
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            // SAFETY: as above.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
                lim = raised;
            } else {
                tracing::warn!(
                    error = %std::io::Error::last_os_error(),
                    soft = before,
                    hard = lim.rlim_max,
                    "cannot raise the open-file limit"
                );
            }
        }
        tracing::info!(
            before,
            now = lim.rlim_cur,
            hard = lim.rlim_max,
            "open-file limit (RLIMIT_NOFILE)"
        );
        let needed = (3 * max_connections as u64).saturating_add(256);
        if lim.rlim_cur != libc::RLIM_INFINITY && lim.rlim_cur < needed {
            tracing::warn!(
                limit = lim.rlim_cur,
                max_connections,
                "the open-file limit is below three listeners at --max-connections: lower \
                 --max-connections or raise the hard limit"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    fn nofile() -> libc::rlimit {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the struct passed.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        lim
    }

    #[cfg(unix)]
    #[test]
    fn the_soft_open_file_limit_is_raised_to_the_hard_one() {
        let hard = nofile().rlim_max;
        let low = libc::rlimit {
            rlim_cur: hard.min(256),
            rlim_max: hard,
        };
        // SAFETY: setrlimit reads the struct passed; lowering the soft limit needs no privilege.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &low) }, 0);
        raise_nofile(64);
        assert_eq!(nofile().rlim_cur, hard);
    }

    #[test]
    fn limit_flags_reach_the_server_config() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeArgs,
        }
        let cli = <Cli as clap::Parser>::try_parse_from([
            "kiln",
            "--http-header-timeout",
            "2.5",
            "--max-connections",
            "7",
            "--body-read-timeout",
            "0",
            "--body-min-rate",
            "0",
            "--grpc-keepalive-interval",
            "30",
        ])
        .expect("flags parse");
        let l = limits(&cli.serve).expect("valid limits");
        assert_eq!(l.header_read_timeout, Duration::from_millis(2500));
        assert_eq!(l.max_connections, 7);
        assert_eq!(l.body_read_timeout, Duration::ZERO);
        assert_eq!(l.grpc_keepalive_interval, Some(Duration::from_secs(30)));
        assert_eq!(l.idle_timeout, Duration::from_secs(60));
        let bad = <Cli as clap::Parser>::try_parse_from(["kiln", "--idle-timeout", "0"])
            .expect("flags parse");
        assert!(limits(&bad.serve).is_err());
    }
}
