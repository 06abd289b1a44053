use clap::Parser;
use workers::{App, Config};

/// mimalloc: the hot paths allocate many small, short-lived buffers.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    schemas::service::init_tracing();
    let app = App::build(Config::parse()).await?;
    app.run(schemas::service::shutdown_token()).await;
    Ok(())
}
