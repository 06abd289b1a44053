//! Callbacks: the terminal record arrives once, signed, after retries.

mod support;

use axum::{body::Bytes, http::HeaderMap, http::StatusCode, routing::post, Router};
use schemas::JobResult;
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};
use support::Harness;
use tokio_util::sync::CancellationToken;

type Received = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

/// A receiver that fails its first `failures` requests with 503.
async fn receiver(failures: usize) -> (String, Received) {
    let received = Received::default();
    let seen = received.clone();
    let app = Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: Bytes| {
            let seen = seen.clone();
            async move {
                let mut seen = seen.lock().unwrap();
                seen.push((headers, body));
                if seen.len() <= failures {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::NO_CONTENT
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, received)
}

#[tokio::test]
async fn the_terminal_record_is_delivered_once_signed_after_retries() {
    let mut h = Harness::new().await;
    h.config.callback_secret = Some("s3cret".into());
    h.config.callback_backoff_ms = 20;
    let (url, received) = receiver(2).await;
    let id = h.insert_job(5).await;
    sqlx::query("UPDATE jobs SET callback_url = $2 WHERE job_id = $1")
        .bind(id)
        .bind(&url)
        .execute(&h.db)
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(h.app().await.run(shutdown.clone()));
    h.report(
        id,
        1,
        Some(JobResult::success(id, "10".into(), 1.0, vec![])),
    )
    .await;

    support::eventually(
        "the callback to be delivered",
        Duration::from_secs(20),
        || async {
            let state: Option<String> =
                sqlx::query_scalar("SELECT callback_state FROM jobs WHERE job_id = $1")
                    .bind(id)
                    .fetch_one(&h.db)
                    .await
                    .unwrap();
            state.as_deref() == Some("delivered")
        },
    )
    .await;
    shutdown.cancel();
    running.await.unwrap().unwrap();

    let received = received.lock().unwrap().clone();
    assert_eq!(received.len(), 3, "two failures, then one delivery");
    let record = h.record(id).await;
    for (headers, body) in &received {
        let sent: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(sent, record);
        assert_eq!(
            headers["x-lambda-signature"].to_str().unwrap(),
            dispatcher::callbacks::signature(b"s3cret", body)
        );
    }
    assert_eq!(record["result"], 10);
    let attempts: Vec<(i32, Option<i32>, bool)> = sqlx::query_as(
        "SELECT attempt, status_code, delivered FROM callback_attempts WHERE job_id = $1 ORDER BY attempt",
    )
    .bind(id)
    .fetch_all(&h.db)
    .await
    .unwrap();
    assert_eq!(
        attempts,
        [
            (1, Some(503), false),
            (2, Some(503), false),
            (3, Some(204), true)
        ]
    );
    h.stop().await;
}
