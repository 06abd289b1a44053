//! Request and error logs in PostgreSQL (`request_logs`, `error_logs`),
//! written off the request path.
//!
//! The [`record`] middleware notes each request — method, route template,
//! path, status, latency, caller, session or job, client, and the error of a
//! response >= 400 — with every secret masked ([`schemas::redact`]), and hands
//! it to a bounded channel without waiting: when the channel is full the
//! entry is dropped and counted. Server-side failures (5xx, internal errors,
//! panics) also get an `error_logs` row with their detail. The [`writer`]
//! inserts what arrives in batches and rides out PostgreSQL outages with a
//! bounded buffer; nothing on the request path ever waits for it.

mod entry;
mod writer;

use crate::{auth::Caller, metrics::Metrics};
use axum::{
    extract::{MatchedPath, Request, State},
    middleware::Next,
    response::Response,
};
use entry::{Entry, Notes};
use sqlx::PgPool;
use std::{cell::RefCell, fmt::Display, sync::Arc, time::Instant};
use tokio::sync::mpsc;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

tokio::task_local! {
    /// What inner layers and handlers learn about the request being logged.
    static NOTES: RefCell<Notes>;
}

/// Paths not logged: probes that would drown the log.
const UNLOGGED: &[&str] = &["/health", "/metrics"];

/// Where requests are logged; cheap to clone.
#[derive(Clone)]
pub struct RequestLog {
    sender: Option<mpsc::Sender<Entry>>,
    metrics: Arc<Metrics>,
}

impl RequestLog {
    /// Starts the background writer: at most `capacity` entries wait in the
    /// channel and as many in the writer's buffer while PostgreSQL is away.
    pub fn start(
        db: PgPool,
        capacity: usize,
        metrics: Arc<Metrics>,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        let capacity = capacity.max(1);
        let (sender, receiver) = mpsc::channel(capacity);
        tracker.spawn(writer::run(
            receiver,
            db,
            capacity,
            metrics.clone(),
            shutdown,
        ));
        Self {
            sender: Some(sender),
            metrics,
        }
    }

    /// A log that records nothing (`REQUEST_LOG_ENABLED=false`).
    pub fn disabled(metrics: Arc<Metrics>) -> Self {
        Self {
            sender: None,
            metrics,
        }
    }

    fn push(&self, entry: Entry) {
        let Some(sender) = &self.sender else { return };
        if sender.try_send(entry).is_err() {
            self.metrics.request_logs_dropped(1);
        }
    }
}

/// Records every request; the outermost layer, so that it sees the answer
/// whatever produced it (a handler, a rejection, a caught panic).
pub async fn record(State(log): State<RequestLog>, request: Request, next: Next) -> Response {
    if log.sender.is_none() || UNLOGGED.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let mut entry = Entry::begin(&request, route);
    let (response, notes) = NOTES
        .scope(RefCell::new(Notes::default()), async move {
            let response = next.run(request).await;
            (response, NOTES.with(RefCell::take))
        })
        .await;
    entry.duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    let response = entry.finish(response, notes).await;
    log.push(entry);
    response
}

/// Notes the request's [`Caller`]; layered inside authentication.
pub async fn note_caller(request: Request, next: Next) -> Response {
    if let Some(caller) = request.extensions().get::<Caller>() {
        let owner = caller.owner.clone();
        let _ = NOTES.try_with(|notes| notes.borrow_mut().owner = Some(owner));
    }
    next.run(request).await
}

/// Notes the detail of a server-side failure (an internal error's cause, a
/// panic's message) for the request's `error_logs` row; outside a logged
/// request it does nothing.
pub fn note_failure(detail: impl Display) {
    let _ = NOTES.try_with(|notes| notes.borrow_mut().failure = Some(detail.to_string()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ApiError;
    use axum::{
        body::Body,
        http::{Request as HttpRequest, StatusCode},
        response::IntoResponse,
        routing::get,
        Router,
    };
    use tower::ServiceExt;
    use tower_http::catch_panic::CatchPanicLayer;
    use uuid::Uuid;

    /// A router with the logging layers as the API stacks them, and the
    /// channel the entries land in.
    fn app() -> (Router, mpsc::Receiver<Entry>) {
        let (sender, receiver) = mpsc::channel(8);
        let log = RequestLog {
            sender: Some(sender),
            metrics: Arc::new(Metrics::new()),
        };
        let router = Router::new()
            .route(
                "/boom/{request_id}",
                get(|| async {
                    if true {
                        panic!("kaboom");
                    }
                    "unreachable"
                }),
            )
            .route(
                "/broken",
                get(|| async {
                    Err::<(), _>(ApiError::internal(anyhow::anyhow!(
                        "lost postgres://app:hunter2@db/x"
                    )))
                }),
            )
            .route("/ok", get(|| async { "fine" }))
            .layer(axum::middleware::from_fn(note_caller))
            .layer(axum::middleware::from_fn(
                |mut request: Request, next: Next| async move {
                    request.extensions_mut().insert(Caller::anonymous());
                    next.run(request).await
                },
            ))
            .layer(CatchPanicLayer::custom(|_| {
                note_failure("panic: kaboom");
                StatusCode::INTERNAL_SERVER_ERROR.into_response()
            }))
            .layer(axum::middleware::from_fn_with_state(log, record));
        (router, receiver)
    }

    async fn call(router: Router, uri: &str) -> StatusCode {
        let request = HttpRequest::get(uri)
            .header("authorization", "Bearer t0ken")
            .body(Body::empty())
            .unwrap();
        router.oneshot(request).await.unwrap().status()
    }

    #[tokio::test]
    async fn a_panic_is_logged_as_a_server_error_with_its_message() {
        let (router, mut entries) = app();
        let id = Uuid::now_v7();
        let status = call(router, &format!("/boom/{id}?token=abc")).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        let entry = entries.try_recv().expect("an entry");
        assert_eq!(entry.route, "/boom/{request_id}");
        assert_eq!(entry.path, format!("/boom/{id}?token=***"));
        assert_eq!(entry.request_id, Some(id));
        assert_eq!(entry.status, 500);
        assert_eq!(entry.owner.as_deref(), Some("anonymous"));
        assert!(
            !entry.headers_json.contains("t0ken"),
            "{}",
            entry.headers_json
        );
        let error = entry.error.expect("an error");
        assert!(error.server_side);
        assert_eq!(error.stack.as_deref(), Some("panic: kaboom"));
    }

    #[tokio::test]
    async fn an_internal_error_is_logged_with_its_masked_cause() {
        let (router, mut entries) = app();
        assert_eq!(
            call(router, "/broken").await,
            StatusCode::INTERNAL_SERVER_ERROR
        );
        let error = entries
            .try_recv()
            .expect("an entry")
            .error
            .expect("an error");
        assert_eq!(error.code, "INTERNAL_ERROR");
        assert_eq!(error.message, "internal error");
        assert_eq!(error.stack.as_deref(), Some("lost postgres://app:***@db/x"));
    }

    #[tokio::test]
    async fn a_success_has_no_error() {
        let (router, mut entries) = app();
        assert_eq!(call(router, "/ok").await, StatusCode::OK);
        let entry = entries.try_recv().expect("an entry");
        assert!(entry.error.is_none());
        assert!(entry.duration_ms >= 0.0);
    }
}
