//! Stand-alone `kiln cache` for tests and benchmarks before the `kiln` binary wires it in:
//! `kiln-cache mount|warmup|refresh|stats ...` behaves like `kiln cache ...`.

use clap::Parser;

#[derive(Parser)]
#[command(name = "kiln-cache", about = "kiln dataset cache")]
struct Cli {
    #[command(subcommand)]
    cmd: kiln_datacache::CacheCommand,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,foyer=warn,fuser=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    kiln_datacache::run(Cli::parse().cmd).await
}
