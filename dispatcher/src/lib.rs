//! The dispatcher owns what happens to jobs and sessions off the request path.
//!
//! It applies the database migrations and creates the JetStream objects on
//! start, then runs:
//! - [`events`]: records what workers report (started, finished) in PostgreSQL,
//!   in batches, and publishes terminal records ([`records`]).
//! - [`sweeper`]: republishes jobs whose message was lost ([`publish`]) and
//!   buries those JetStream gave up on.
//! - [`dead`]: follows JetStream's max-deliveries advisories: those jobs are `dead`.
//! - [`callbacks`]: POSTs terminal records to callback URLs, signed, with retries.
//! - [`submit`]: jobs producers publish straight onto `<prefix>.submit.<language_title>`.
//! - [`reaper`]: removes sessions that expired longer ago than the retention,
//!   the scripts nothing refers to any more, and request logs past their retention.
//! - [`metrics`]: Prometheus series of all of the above, served at `/metrics`
//!   on `DISPATCHER_METRICS_ADDR`.
//!
//! Build with [`App::build`], serve with [`App::run`]; every loop has a
//! one-step function (`process_next`, `sweep_once`, `handle_advisory`) tests drive.

pub mod callbacks;
pub mod config;
pub mod dead;
pub mod events;
pub mod metrics;
pub mod publish;
pub mod reaper;
pub mod records;
pub mod submit;
pub mod sweeper;
mod tasks;

pub use config::Config;

use anyhow::Context as _;
use async_nats::jetstream;
use callbacks::Callbacks;
use dead::DeadLetters;
use events::EventRecorder;
use metrics::Metrics;
use schemas::{service::metrics::MetricsEndpoint, Subjects};
use sqlx::{postgres::PgPoolOptions, PgPool};
use std::{sync::Arc, time::Duration};
use submit::Submissions;
use sweeper::Sweeper;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// Messages a subscription of this process holds before NATS counts it slow.
const SUBSCRIPTION_CAPACITY: usize = 65_536;
/// A connected dispatcher.
pub struct App {
    config: Config,
    db: PgPool,
    client: async_nats::Client,
    js: jetstream::Context,
    subjects: Subjects,
    events: async_nats::jetstream::consumer::PullConsumer,
    metrics: Arc<Metrics>,
    metrics_endpoint: Option<MetricsEndpoint>,
}

impl App {
    /// Connects to PostgreSQL (applying migrations) and NATS (creating streams).
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let db = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(3))
            .connect(&config.database_url)
            .await
            .context("connecting to PostgreSQL")?;
        sqlx::migrate!("../migrations")
            .run(&db)
            .await
            .context("applying migrations")?;
        let client = async_nats::ConnectOptions::new()
            .name("lambda-dispatcher")
            // Direct submissions arrive in bursts on a core subscription: they
            // wait here, bounded, rather than being dropped as a slow consumer.
            .subscription_capacity(SUBSCRIPTION_CAPACITY)
            .connect(&config.nats_url)
            .await
            .with_context(|| {
                format!(
                    "connecting to NATS at {}",
                    schemas::redact::text(&config.nats_url)
                )
            })?;
        let js = jetstream::new(client.clone());
        let subjects = Subjects::new(&config.nats_prefix);
        schemas::jetstream::ensure_jobs_stream(&js, &subjects).await?;
        let events = events::consumer(&js, &subjects).await?;
        let metrics_endpoint = match config.metrics_addr {
            Some(addr) => Some(
                MetricsEndpoint::bind(addr)
                    .await
                    .with_context(|| format!("binding DISPATCHER_METRICS_ADDR {addr}"))?,
            ),
            None => None,
        };
        Ok(Self {
            config,
            db,
            client,
            js,
            subjects,
            events,
            metrics: Arc::new(Metrics::new()),
            metrics_endpoint,
        })
    }

    /// The database pool, for tests that drive one step at a time.
    pub fn db(&self) -> &PgPool {
        &self.db
    }

    /// This dispatcher's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The port `/metrics` is served on, when `metrics_addr` is set.
    pub fn metrics_port(&self) -> Option<u16> {
        self.metrics_endpoint.as_ref().map(MetricsEndpoint::port)
    }

    /// The event recorder, for tests that drive one batch at a time.
    pub fn event_recorder(&self) -> EventRecorder {
        EventRecorder::new(
            self.events.clone(),
            self.db.clone(),
            self.client.clone(),
            self.subjects.clone(),
            self.config.events_batch,
            Arc::clone(&self.metrics),
        )
    }

    /// The dead-letter handler.
    pub fn dead_letters(&self) -> DeadLetters {
        DeadLetters {
            db: self.db.clone(),
            js: self.js.clone(),
            client: self.client.clone(),
            subjects: self.subjects.clone(),
            metrics: Arc::clone(&self.metrics),
        }
    }

    /// The sweeper, for tests that drive one sweep at a time.
    pub fn sweeper(&self) -> Sweeper {
        Sweeper {
            db: self.db.clone(),
            js: self.js.clone(),
            subjects: self.subjects.clone(),
            events: self.events.clone(),
            dead: self.dead_letters(),
            after: Duration::from_secs(self.config.sweep_after_seconds),
            metrics: Arc::clone(&self.metrics),
            deferred_since: None,
        }
    }

    /// The handler of direct submissions.
    pub fn submissions(&self) -> Submissions {
        let c = &self.config;
        Submissions {
            db: self.db.clone(),
            js: self.js.clone(),
            client: self.client.clone(),
            subjects: self.subjects.clone(),
            limits: submit::Limits {
                default_timeout_ms: c.runtime_timeout_seconds * 1000,
                max_timeout_ms: c.max_timeout_seconds * 1000,
                default_memory_mb: c.runtime_memory_mb,
                max_memory_mb: c.max_memory_mb,
            },
            callback_allow_private: c.callback_allow_private,
            owner: c.submit_owner.clone(),
            metrics: Arc::clone(&self.metrics),
        }
    }

    /// The callback deliverer.
    pub fn callbacks(&self) -> anyhow::Result<Callbacks> {
        Ok(Callbacks {
            db: self.db.clone(),
            http: Callbacks::client()?,
            secret: self.config.callback_secret.clone().map(String::into_bytes),
            first_backoff: Duration::from_millis(self.config.callback_backoff_ms.max(1)),
            give_up_after: Duration::from_secs(self.config.callback_retry_seconds),
            metrics: Arc::clone(&self.metrics),
        })
    }

    /// Runs every loop until `shutdown`, then waits (bounded) for them.
    pub async fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!("dispatcher running");
        let tracker = TaskTracker::new();
        if let Some(endpoint) = self.metrics_endpoint.take() {
            let metrics = Arc::clone(&self.metrics);
            tracker.spawn(endpoint.serve(move || metrics.render(), shutdown.clone()));
        }
        tracker.spawn(tasks::record_events(
            self.event_recorder(),
            shutdown.clone(),
        ));
        tracker.spawn(tasks::sweep(
            self.sweeper(),
            Duration::from_millis(self.config.sweep_interval_ms.max(10)),
            shutdown.clone(),
        ));
        for subject in self.dead_letters().advisories() {
            let messages = self.client.subscribe(subject).await?;
            tracker.spawn(tasks::follow_dead_letters(
                self.dead_letters(),
                messages,
                shutdown.clone(),
            ));
        }
        let submissions = self
            .client
            .queue_subscribe(self.subjects.all_submit(), submit::QUEUE_GROUP.into())
            .await?;
        tracker.spawn(tasks::serve_submissions(
            self.submissions(),
            submissions,
            shutdown.clone(),
        ));
        if self.config.callback_secret.is_none() {
            tracing::warn!("CALLBACK_SECRET is not set: callbacks are sent unsigned");
        }
        tracker.spawn(tasks::deliver_callbacks(
            self.callbacks()?,
            shutdown.clone(),
        ));
        tracker.spawn(tasks::reap(
            self.db.clone(),
            self.config.clone(),
            shutdown.clone(),
        ));
        tracker.close();
        tracker.wait().await;
        Ok(())
    }
}
