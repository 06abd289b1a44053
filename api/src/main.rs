use api::{App, Config};
use clap::Parser;

/// jemalloc: the hot paths allocate many small, short-lived buffers.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if let Some(admin) = api::auth::admin::from_args() {
        return admin.run().await;
    }
    schemas::service::init_tracing();
    let app = App::build(Config::parse()).await?;
    app.run(schemas::service::shutdown_token()).await
}
