//! `loadtest`: drives one of lambda-microservice's user flows and reports
//! throughput, latency percentiles and errors.
//!
//! ```text
//! cargo run -p loadtest --release -- sync --lang nodejs --concurrency 64 --duration 30s
//! cargo run -p loadtest --release -- batch --lang nodejs --jobs 100000 --batch-size 10000
//! cargo run -p loadtest --release -- nats --lang nodejs --jobs 50000
//! ```

use clap::Parser as _;

/// jemalloc: the hot paths allocate many small, short-lived buffers.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    loadtest::cli::Cli::parse().run().await
}
