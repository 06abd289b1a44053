use clap::Parser;
use workers::{App, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    schemas::service::init_tracing();
    let app = App::build(Config::parse()).await?;
    app.run(schemas::service::shutdown_token()).await;
    Ok(())
}
