use clap::Parser;
use tokio_util::sync::CancellationToken;
use workers::{App, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    schemas::service::init_tracing();
    let app = App::build(Config::parse()).await?;
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        schemas::service::shutdown_signal().await;
        signal.cancel();
    });
    app.run(shutdown).await;
    Ok(())
}
