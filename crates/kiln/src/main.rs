//! `kiln`: one binary, one subcommand per subsystem. Thin: parsing, logging, wiring.

mod cache;
mod learn;
mod mkl;
mod onnx;
mod openvino;
mod process_metrics;
mod pylib;
mod serve;
mod signal;
mod telemetry;

use clap::{Parser, Subcommand, ValueEnum};

/// Kiln: inference serving for recommendation, search and content-understanding models.
#[derive(Parser, Debug)]
#[command(name = "kiln", version, about)]
struct Cli {
    /// Log output format.
    #[arg(long, env = "KILN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    /// Log filter (tracing env-filter syntax, e.g. `info` or `kiln_runtime=debug`).
    #[arg(long, env = "KILN_LOG", default_value = "info", global = true)]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve models over the KServe v2 / Triton protocol (HTTP and gRPC).
    Serve(serve::ServeArgs),
    /// Learn online from impressions and actions (Kafka or JSONL) and publish embedding deltas
    /// to the serving replicas.
    Learn(learn::LearnArgs),
    /// Dataset cache: mount a remote dataset read-only through FUSE, warm it up, inspect it.
    Cache {
        #[command(subcommand)]
        cmd: cache::CacheCommand,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let otlp = match &cli.command {
        Command::Serve(a) => a.otlp_endpoint.as_deref(),
        _ => None,
    };
    let _telemetry = telemetry::init(&cli.log, matches!(cli.log_format, LogFormat::Json), otlp)?;
    match cli.command {
        Command::Serve(args) => serve::run(args, _telemetry.log_control()),
        Command::Learn(args) => learn::run(args),
        Command::Cache { cmd } => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("kiln-cache")
            .build()?
            .block_on(cache::run(cmd)),
    }
}
