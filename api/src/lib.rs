//! The REST front of lambda-microservice.
//!
//! `initialize` stores a session (script, context, limits) in PostgreSQL and
//! the cache; `execute` publishes the session's script with new parameters as a
//! job on the language's JetStream subject and answers with the worker's result.
//!
//! - [`config`]: flags and environment.
//! - [`auth`]: the [`auth::Caller`] of every `/api/v1` request.
//! - [`routes`]: the HTTP routes; [`error`] and [`extract`] keep every answer JSON.
//! - [`catalogue`]: the predefined functions, loaded from `FUNCTIONS_DIR` at start.
//! - [`session`]: sessions in PostgreSQL behind the [`cache`] (Redis or in-process).
//! - [`queue`]: publishes jobs and routes results back to waiting requests.
//! - [`runtimes`]: which languages live workers serve, from their heartbeats.
//! - [`metrics`]: Prometheus metrics at `/metrics`.
//! - [`jobs`]: asynchronous jobs, committed to PostgreSQL before `202` and then published.
//! - [`executions`]: execution counts, written to PostgreSQL off the request path.
//! - [`ratelimit`]: token buckets per caller and route class, in Redis.
//! - [`result_cache`]: synchronous results by script, params and context.
//! - [`request_log`]: request and error logs, written to PostgreSQL off the request path.

pub mod auth;
pub mod cache;
pub mod catalogue;
pub mod config;
pub mod error;
pub mod executions;
pub mod extract;
pub mod jobs;
pub mod metrics;
pub mod queue;
pub mod ratelimit;
pub mod request_log;
pub mod result_cache;
pub mod routes;
pub mod runtimes;
pub mod session;

pub use config::Config;

use anyhow::Context as _;
use cache::Cache;
use executions::ExecutionCounts;
use metrics::Metrics;
use queue::Queue;
use runtimes::Runtimes;
use schemas::Subjects;
use sqlx::{postgres::PgPoolOptions, PgPool};
use std::{sync::Arc, time::Duration};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// The owner of everything when authentication is disabled (`AUTH_DISABLED`).
pub const OWNER_ANONYMOUS: &str = "anonymous";

/// What every handler shares; cloning it (every handler and middleware
/// does) copies one pointer.
#[derive(Clone)]
pub struct AppState(Arc<State>);

impl std::ops::Deref for AppState {
    type Target = State;

    fn deref(&self) -> &State {
        &self.0
    }
}

/// The contents of [`AppState`].
pub struct State {
    pub config: Arc<Config>,
    pub db: PgPool,
    pub cache: Arc<Cache>,
    pub queue: Queue,
    pub runtimes: Runtimes,
    pub executions: ExecutionCounts,
    pub subjects: Subjects,
    pub metrics: Arc<Metrics>,
    /// Sessions this process read recently.
    pub sessions: Arc<session::LocalSessions>,
    /// The NATS connection, for publishing asynchronous jobs and cancellations.
    pub nats: async_nats::Client,
    /// The rate limits and this process's buckets.
    pub rate_limits: Arc<ratelimit::RateLimiter>,
    /// Where requests are logged.
    pub request_log: request_log::RequestLog,
    /// Checks the credentials of every `/api/v1` request.
    pub auth: Arc<auth::Authenticator>,
}

/// A built API, listening but not yet serving.
pub struct App {
    listener: TcpListener,
    router: axum::Router,
    tracker: TaskTracker,
    background: CancellationToken,
}

impl App {
    /// Connects to PostgreSQL (applying migrations), Redis and NATS, and binds.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let db = connect_db(&config.database_url).await?;
        let predefined = catalogue::read_dir(&config.functions_dir)?;
        catalogue::register(&db, &predefined)
            .await
            .context("registering the predefined functions")?;
        let cache = Cache::new(config.redis_url.as_deref()).context("configuring Redis")?;
        let nats = async_nats::ConnectOptions::new()
            .name("lambda-api")
            .connect(&config.nats_url)
            .await
            .with_context(|| {
                format!(
                    "connecting to NATS at {}",
                    schemas::redact::text(&config.nats_url)
                )
            })?;
        let subjects = Subjects::new(&config.nats_prefix);
        let tracker = TaskTracker::new();
        let background = CancellationToken::new();
        let queue =
            Queue::start(nats.clone(), subjects.clone(), &tracker, background.clone()).await?;
        let runtimes = Runtimes::follow(&nats, &subjects, &tracker, background.clone()).await?;
        let executions = ExecutionCounts::default();
        executions.spawn_writer(db.clone(), &tracker, background.clone());
        let metrics = Arc::new(Metrics::new());
        metrics.spawn_refresher(db.clone(), queue.clone(), &tracker, background.clone());
        let request_log = if config.request_log_enabled {
            request_log::RequestLog::start(
                db.clone(),
                config.request_log_buffer,
                metrics.clone(),
                &tracker,
                background.clone(),
            )
        } else {
            request_log::RequestLog::disabled(metrics.clone())
        };
        let auth = Arc::new(auth::Authenticator::from_config(&config, db.clone())?);
        let listener = TcpListener::bind(config.bind_addr)
            .await
            .with_context(|| format!("binding {}", config.bind_addr))?;
        let rate_limits = Arc::new(ratelimit::RateLimiter::new(&config));
        let sessions = Arc::new(session::LocalSessions::new(
            config.session_memory_cache_mb.saturating_mul(1 << 20),
        ));
        let state = AppState(Arc::new(State {
            config: Arc::new(config),
            db,
            cache: Arc::new(cache),
            queue,
            runtimes,
            executions,
            subjects,
            metrics,
            sessions,
            nats,
            rate_limits,
            request_log,
            auth,
        }));
        Ok(Self {
            listener,
            router: routes::router(state),
            tracker,
            background,
        })
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// Serves until `shutdown`, then finishes in-flight requests and writes
    /// what is still buffered.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(addr = ?self.listener.local_addr().ok(), "api listening");
        let service = self
            .router
            .into_make_service_with_connect_info::<std::net::SocketAddr>();
        axum::serve(self.listener, service)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await?;
        self.background.cancel();
        self.tracker.close();
        if tokio::time::timeout(Duration::from_secs(10), self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("background tasks did not finish in time");
        }
        Ok(())
    }
}

/// Connects to PostgreSQL and applies the migrations in `migrations/`.
pub async fn connect_db(url: &str) -> anyhow::Result<PgPool> {
    let db = PgPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(Duration::from_secs(3))
        .connect(url)
        .await
        .context("connecting to PostgreSQL")?;
    sqlx::migrate!("../migrations")
        .run(&db)
        .await
        .context("applying migrations")?;
    Ok(db)
}
