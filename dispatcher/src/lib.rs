//! The dispatcher owns what happens to jobs and sessions off the request path.
//!
//! It applies the database migrations and creates the JetStream objects on
//! start, then runs its maintenance loops:
//! - [`reaper`]: removes sessions that expired longer ago than the retention.
//!
//! Build with [`App::build`], serve with [`App::run`].

pub mod config;
pub mod reaper;

pub use config::Config;

use anyhow::Context as _;
use schemas::Subjects;
use sqlx::{postgres::PgPoolOptions, PgPool};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A connected dispatcher.
pub struct App {
    config: Config,
    db: PgPool,
}

impl App {
    /// Connects to PostgreSQL (applying migrations) and NATS (creating streams).
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let db = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(3))
            .connect(&config.database_url)
            .await
            .context("connecting to PostgreSQL")?;
        sqlx::migrate!("../migrations")
            .run(&db)
            .await
            .context("applying migrations")?;
        let nats = async_nats::ConnectOptions::new()
            .name("lambda-dispatcher")
            .connect(&config.nats_url)
            .await
            .with_context(|| format!("connecting to NATS at {}", config.nats_url))?;
        let js = async_nats::jetstream::new(nats);
        schemas::jetstream::ensure_jobs_stream(&js, &Subjects::new(&config.nats_prefix)).await?;
        Ok(Self { config, db })
    }

    /// The database pool, for tests that drive one step at a time.
    pub fn db(&self) -> &PgPool {
        &self.db
    }

    /// Runs the maintenance loops until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!("dispatcher running");
        let retention = Duration::from_secs(self.config.session_retention_seconds);
        let mut tick = tokio::time::interval(Duration::from_secs(
            self.config.reap_interval_seconds.max(1),
        ));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            match reaper::reap_expired_sessions(&self.db, retention).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(sessions = n, "removed expired sessions"),
                Err(err) => tracing::warn!(error = %err, "session reaping failed; will retry"),
            }
        }
        Ok(())
    }
}
