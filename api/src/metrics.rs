//! The API's Prometheus metrics, served at `GET /metrics`.
//!
//! Request counts and latencies come from a middleware (labelled by route
//! template, never by a raw path), and so do error answers by code (read
//! from the [`ErrorCode`] that `ApiError` leaves in the response's
//! extensions); execution outcomes and times from `execute`; queue depth and
//! pending acks per language from JetStream, active sessions and open jobs
//! from PostgreSQL, refreshed in the background; runtime
//! capacity and load from worker heartbeats, read at scrape time. Every label
//! value is bounded: routes, methods, status codes, languages, error codes.

use crate::{queue::Queue, runtimes::Runtimes};
use axum::{
    extract::{MatchedPath, Request, State},
    http::header,
    middleware::Next,
    response::{IntoResponse, Response},
};
use prometheus::{HistogramVec, IntCounterVec, IntGauge, IntGaugeVec};
use schemas::{
    service::metrics::{encode, Registrar, CONTENT_TYPE},
    ErrorCode, JobStatus, Language,
};
use sqlx::PgPool;
use std::{sync::Arc, time::Duration};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

const REFRESH_EVERY: Duration = Duration::from_secs(5);

/// Every series of this process.
pub struct Metrics {
    registrar: Registrar,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    errors: IntCounterVec,
    executions: IntCounterVec,
    execution_duration: HistogramVec,
    sessions_created: IntCounterVec,
    active_sessions: IntGauge,
    jobs_open: IntGaugeVec,
    queue_depth: IntGaugeVec,
    queue_pending_acks: IntGaugeVec,
    queue_redelivered: IntGaugeVec,
    runtime_capacity: IntGaugeVec,
    runtime_busy: IntGaugeVec,
    cache_lookups: IntCounterVec,
    request_logs_dropped: prometheus::IntCounter,
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registrar::new();
        let metrics = Self {
            http_requests: r.counter(
                "http_requests_total",
                "HTTP requests by route template, method and status",
                &["route", "method", "status"],
            ),
            http_duration: r.seconds(
                "http_request_duration_seconds",
                "HTTP request latency by route template",
                &["route"],
            ),
            errors: r.counter("errors_total", "Error answers by error code", &["code"]),
            executions: r.counter(
                "executions_total",
                "Executions answered by a worker, by language and outcome (ok or an error code)",
                &["language", "outcome"],
            ),
            execution_duration: r.seconds(
                "execution_duration_seconds",
                "Time scripts ran, as measured by the worker, by language",
                &["language"],
            ),
            sessions_created: r.counter(
                "sessions_created_total",
                "Sessions created by initialize, by language",
                &["language"],
            ),
            active_sessions: r.single_gauge("active_sessions", "Sessions not expired"),
            jobs_open: r.gauge(
                "jobs_open",
                "Asynchronous jobs not finished yet, by status (queued or running)",
                &["status"],
            ),
            queue_depth: r.gauge(
                "queue_depth",
                "Jobs waiting in JetStream for a worker, by language",
                &["language"],
            ),
            queue_pending_acks: r.gauge(
                "queue_pending_acks",
                "Jobs delivered to a worker and not yet acknowledged, by language",
                &["language"],
            ),
            queue_redelivered: r.gauge(
                "queue_redelivered",
                "Jobs delivered more than once and not yet acknowledged, by language",
                &["language"],
            ),
            runtime_capacity: r.gauge(
                "runtime_capacity",
                "Jobs live workers can run at once, by language",
                &["language"],
            ),
            runtime_busy: r.gauge(
                "runtime_busy",
                "Jobs running now, by language",
                &["language"],
            ),
            cache_lookups: r.counter(
                "cache_lookups_total",
                "Cache lookups by cache and result (hit or miss)",
                &["cache", "result"],
            ),
            request_logs_dropped: r.single_counter(
                "request_logs_dropped_total",
                "Request log entries dropped: buffer full while PostgreSQL was away, or refused",
            ),
            registrar: r,
        };
        for status in [JobStatus::Queued, JobStatus::Running] {
            metrics.jobs_open.with_label_values(&[status.as_str()]);
        }
        metrics
    }

    /// Full names of every series this process exports.
    pub fn names(&self) -> Vec<String> {
        self.registrar.names()
    }

    /// Counts an execution a worker answered.
    pub fn execution(&self, language: Language, outcome: &str, seconds: f64) {
        let language = language.as_str();
        self.executions
            .with_label_values(&[language, outcome])
            .inc();
        self.execution_duration
            .with_label_values(&[language])
            .observe(seconds);
    }

    pub fn session_created(&self, language: Language) {
        self.sessions_created
            .with_label_values(&[language.as_str()])
            .inc();
    }

    /// Counts a lookup in `cache` (`session`, `result`).
    pub fn cache_lookup(&self, cache: &str, hit: bool) {
        let result = if hit { "hit" } else { "miss" };
        self.cache_lookups.with_label_values(&[cache, result]).inc();
    }

    /// Refreshes the queue and session gauges until `shutdown`.
    pub fn spawn_refresher(
        self: &Arc<Self>,
        db: PgPool,
        queue: Queue,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) {
        let metrics = Arc::clone(self);
        tracker.spawn(async move {
            let mut tick = tokio::time::interval(REFRESH_EVERY);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                metrics.refresh(&db, &queue).await;
            }
        });
    }

    async fn refresh(&self, db: &PgPool, queue: &Queue) {
        let active =
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM sessions WHERE expires_at > now()")
                .fetch_one(db)
                .await;
        match active {
            Ok(n) => self.active_sessions.set(n),
            Err(err) => tracing::debug!(error = %err, "active sessions not counted"),
        }
        // The partial index `jobs_open` keeps this to the unfinished jobs.
        let open = sqlx::query_as::<_, (String, i64)>(
            "SELECT status, count(*) FROM jobs WHERE status IN ('queued', 'running')
             GROUP BY status",
        )
        .fetch_all(db)
        .await;
        match open {
            Ok(rows) => {
                for status in [JobStatus::Queued, JobStatus::Running] {
                    let n = rows
                        .iter()
                        .find(|(s, _)| s == status.as_str())
                        .map_or(0, |(_, n)| *n);
                    self.jobs_open.with_label_values(&[status.as_str()]).set(n);
                }
            }
            Err(err) => tracing::debug!(error = %err, "open jobs not counted"),
        }
        for language in Language::ALL {
            if let Some(stats) = queue.consumer_stats(language).await {
                let label = [language.as_str()];
                self.queue_depth
                    .with_label_values(&label)
                    .set(stats.pending);
                self.queue_pending_acks
                    .with_label_values(&label)
                    .set(stats.ack_pending);
                self.queue_redelivered
                    .with_label_values(&label)
                    .set(stats.redelivered);
            }
        }
    }

    /// The text exposition, with the runtime gauges as of now.
    fn render(&self, runtimes: &Runtimes) -> String {
        for (language, summary) in runtimes.summary() {
            let label = [language.as_str()];
            self.runtime_capacity
                .with_label_values(&label)
                .set(i64::from(summary.capacity));
            self.runtime_busy
                .with_label_values(&label)
                .set(i64::from(summary.busy));
        }
        encode(self.registrar.registry())
    }

    /// Counts request log entries that will never be written.
    pub fn request_logs_dropped(&self, n: u64) {
        self.request_logs_dropped.inc_by(n);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// `GET /metrics`.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "operations",
    security(()),
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain"))
)]
pub async fn serve(State(state): State<crate::AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        state.metrics.render(&state.runtimes),
    )
        .into_response()
}

/// Counts every request by its route template and times it.
pub async fn track(State(metrics): State<Arc<Metrics>>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    metrics
        .http_duration
        .with_label_values(&[&route])
        .observe(started.elapsed().as_secs_f64());
    metrics
        .http_requests
        .with_label_values(&[route.as_str(), method.as_str(), response.status().as_str()])
        .inc();
    if let Some(code) = response.extensions().get::<ErrorCode>() {
        metrics.errors.with_label_values(&[code.as_str()]).inc();
    }
    response
}
