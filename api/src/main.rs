use api::{App, Config};
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if let Some(admin) = api::auth::admin::from_args() {
        return admin.run().await;
    }
    schemas::service::init_tracing();
    let app = App::build(Config::parse()).await?;
    app.run(schemas::service::shutdown_token()).await
}
