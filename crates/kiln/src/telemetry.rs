//! The process's one tracing subscriber: logs on stderr and, when asked, the request and batch
//! spans exported to an OpenTelemetry collector over OTLP/gRPC.
//!
//! The request spans (`request`, with the request id, model and version) and the batch spans
//! (`batch`, linked to the requests they computed) are at debug level. With the default log
//! filter nothing listens to them, so they are disabled at their call sites and cost nothing;
//! `--otlp-endpoint` adds a layer that wants them (and Kiln's events at info and above, which
//! become span events) without changing what the log shows.

use anyhow::Context;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::{Level, Metadata};
use tracing_subscriber::filter::{filter_fn, EnvFilter, FilterFn, LevelFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, Layer};

mod log_control;

pub use log_control::LogHandle;

/// What [`init`] started; dropping it flushes the spans not yet exported.
pub struct Telemetry {
    /// The span pipeline, when exporting.
    provider: Option<SdkTracerProvider>,
    /// The runtime the OTLP client's connection runs on, independent of the server's, so that
    /// spans still leave after the server's runtime has stopped.
    runtime: Option<tokio::runtime::Runtime>,
    /// Reads and changes the log's level and format at run time.
    log: std::sync::Arc<LogHandle>,
}

impl Telemetry {
    /// The handle the server's logging extension (`v2/logging`) uses.
    pub fn log_control(&self) -> std::sync::Arc<dyn kiln_server::LogControl> {
        self.log.clone()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            if let Err(e) = p.shutdown() {
                eprintln!("kiln: flushing spans to the OTLP endpoint failed: {e}");
            }
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Installs the subscriber: logs filtered by `log` (env-filter syntax), as JSON when `json`,
/// and, when `otlp_endpoint` is given (`http://host:4317`), span export to that collector.
pub fn init(log: &str, json: bool, otlp_endpoint: Option<&str>) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_new(log).map_err(|e| anyhow::anyhow!("--log '{log}': {e}"))?;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // One text and one JSON log, each behind a filter that can be swapped at run time: the one
    // not chosen filters everything out. The log's filters apply to the log only, so that the
    // exporter's spans stay off it.
    let off = || EnvFilter::new("off");
    let (text_filter, json_filter) = if json {
        (off(), filter)
    } else {
        (filter, off())
    };
    let (text_filter, text) = reload::Layer::new(text_filter);
    let (json_filter, json_handle) = reload::Layer::new(json_filter);
    let text_log = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .with_filter(text_filter);
    let json_log = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .json()
        .with_filter(json_filter);
    let log_handle = LogHandle::new(
        log,
        json,
        Box::new(move |f| text.reload(f).map_err(|e| e.to_string())),
        Box::new(move |f| json_handle.reload(f).map_err(|e| e.to_string())),
    );
    let mut telemetry = Telemetry {
        provider: None,
        runtime: None,
        log: std::sync::Arc::new(log_handle),
    };
    let otel = match otlp_endpoint {
        None => None,
        Some(endpoint) => {
            let (provider, runtime) = otlp_provider(endpoint)?;
            let layer = tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("kiln"))
                .with_filter(kiln_spans());
            telemetry.provider = Some(provider);
            telemetry.runtime = Some(runtime);
            Some(layer)
        }
    };
    tracing_subscriber::registry()
        .with(text_log)
        .with(json_log)
        .with(otel)
        .try_init()
        .context("cannot install the log subscriber")?;
    if let Some(endpoint) = otlp_endpoint {
        tracing::info!(%endpoint, "exporting request spans over OTLP");
    }
    Ok(telemetry)
}

/// What the exporter takes: Kiln's spans down to debug level (request and batch spans) and
/// Kiln's events at info and above. It depends on the call site alone, so each site is asked once.
fn kiln_spans() -> FilterFn {
    filter_fn(wanted as fn(&Metadata<'_>) -> bool).with_max_level_hint(LevelFilter::DEBUG)
}

/// See [`kiln_spans`].
fn wanted(m: &Metadata<'_>) -> bool {
    m.target().starts_with("kiln")
        && if m.is_span() {
            *m.level() <= Level::DEBUG
        } else {
            *m.level() <= Level::INFO
        }
}

/// A span pipeline batching spans to the OTLP/gRPC collector at `endpoint`, and the runtime its
/// client runs on.
fn otlp_provider(endpoint: &str) -> anyhow::Result<(SdkTracerProvider, tokio::runtime::Runtime)> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("kiln-otlp")
        .enable_all()
        .build()
        .context("cannot start the OTLP exporter's runtime")?;
    // the client's connection task is spawned on the runtime it is built in
    let exporter = runtime
        .block_on(async {
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()
        })
        .with_context(|| format!("--otlp-endpoint {endpoint}"))?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name("kiln").build())
        .build();
    Ok((provider, runtime))
}
