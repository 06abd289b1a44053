//! `loadtest`: drives one of lambda-microservice's user flows at a fixed
//! concurrency for a fixed time and reports throughput, latency and errors.
//!
//! `cargo run -p loadtest --release -- sync --lang nodejs --concurrency 64 --duration 30s`

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(version, about)]
struct Config {
    #[command(subcommand)]
    flow: Flow,
}

#[derive(Debug, Subcommand)]
enum Flow {
    /// Initialize one session, then POST /api/v1/execute/{id} in a closed loop.
    Sync(loadtest::sync::SyncArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    match config.flow {
        Flow::Sync(args) => loadtest::sync::run(args).await?,
    };
    Ok(())
}
