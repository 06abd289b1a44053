use clap::Parser;
use dispatcher::{App, Config};

/// jemalloc: the hot paths allocate many small, short-lived buffers.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    schemas::service::init_tracing();
    let app = App::build(Config::parse()).await?;
    app.run(schemas::service::shutdown_token()).await
}
