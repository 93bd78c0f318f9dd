//! The driver of `bench/learn/freshness.sh`: the Kafka and HTTP sides of the freshness and
//! delta-rate benchmarks of `kiln learn` and `kiln serve --delta-source`.
//!
//! ```text
//! learn-probe stream --brokers B [--rate 1000] [--seconds 0]      # steady event stream
//! learn-probe probe  --brokers B --http URL [--count 100]         # freshness probes
//! learn-probe deltas --brokers B --metrics URL [--seconds 15]     # deltas as fast as applied
//! ```
//!
//! Events follow the learner's schema (impressions and clicks, JSON, on two topics) with the
//! features of `examples/models/ctr_wide`. Each subcommand prints one summary line prefixed
//! with its name and writes nothing else to stdout.

mod common;
mod deltas;
mod probe;
mod stream;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "learn-probe",
    about = "Freshness and delta-rate benchmark driver"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Produces a steady stream of impressions and clicks at a fixed rate.
    Stream(stream::StreamArgs),
    /// Produces probe events (a fresh item, its impression and a click) one after the other and
    /// measures how long each takes to change a served prediction.
    Probe(probe::ProbeArgs),
    /// Produces deltas to a model's delta topic as fast as a replica applies them.
    Deltas(deltas::DeltasArgs),
}

fn main() -> anyhow::Result<()> {
    // reqwest is built without a default TLS provider (see the workspace Cargo.toml)
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.cmd {
            Cmd::Stream(a) => stream::run(a).await,
            Cmd::Probe(a) => probe::run(a).await,
            Cmd::Deltas(a) => deltas::run(a).await,
        }
    })
}
