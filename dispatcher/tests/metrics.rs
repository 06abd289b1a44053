//! `/metrics` on `DISPATCHER_METRICS_ADDR`: what the dispatcher did, by
//! bounded labels only.

mod support;

use axum::{http::StatusCode, routing::post, Router};
use schemas::{ErrorCode, JobError, JobResult};
use serde_json::json;
use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};
use support::Harness;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// A callback receiver that fails its first request with 503.
async fn flaky_receiver() -> String {
    let calls = Arc::new(AtomicUsize::new(0));
    let app = Router::new().route(
        "/hook",
        post(move || {
            let calls = Arc::clone(&calls);
            async move {
                match calls.fetch_add(1, Ordering::SeqCst) {
                    0 => StatusCode::SERVICE_UNAVAILABLE,
                    _ => StatusCode::NO_CONTENT,
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

/// The value of the series `name{labels}` (labels in sorted order).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

async fn scrape(url: &str) -> String {
    let response = reqwest::get(url).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.text().await.unwrap()
}

/// Scrapes until the series has the expected value.
async fn until(url: &str, series: &str, expected: f64) {
    support::eventually(series, Duration::from_secs(15), || async {
        value(&scrape(url).await, series) == Some(expected)
    })
    .await
}

/// Every label value of the exposition.
fn label_values(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| Some(&l[l.find('{')? + 1..l.rfind('}')?]))
        .flat_map(|labels| labels.split(',').filter_map(|kv| kv.split('"').nth(1)))
        .collect()
}

#[tokio::test]
async fn metrics_count_terminal_jobs_retries_dead_letters_callbacks_and_submissions() {
    let mut h = Harness::new().await;
    h.config.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
    // One sweep, at start; the test does the rest step by step.
    h.config.sweep_interval_ms = 3_600_000;
    h.config.callback_backoff_ms = 20;
    let lost = h.insert_job(1).await;
    let app = h.app().await;
    let url = format!("http://127.0.0.1:{}/metrics", app.metrics_port().unwrap());
    let dead_letters = app.dead_letters();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(app.run(shutdown.clone()));
    // The first sweep finds the job whose message was never published.
    until(&url, "lambda_jobs_republished_total", 1.0).await;

    // It is delivered twice (a redelivery) and succeeds.
    h.report(lost, 1, None).await;
    h.report(lost, 2, None).await;
    let ok = JobResult::success(lost, "2".into(), 1.0, vec![]);
    h.report(lost, 2, Some(ok)).await;
    let nodejs = r#"language="nodejs""#;
    let redelivered = format!("lambda_job_redeliveries_total{{{nodejs}}}");
    let succeeded = format!(r#"lambda_jobs_finished_total{{{nodejs},status="succeeded"}}"#);
    until(&url, &succeeded, 1.0).await;
    assert_eq!(value(&scrape(&url).await, &redelivered), Some(1.0));

    // A job that fails, with a callback answered on the second attempt.
    let failing = h.insert_job(2).await;
    sqlx::query("UPDATE jobs SET callback_url = $2 WHERE job_id = $1")
        .bind(failing)
        .bind(flaky_receiver().await)
        .execute(&h.db)
        .await
        .unwrap();
    let error = JobError::new(ErrorCode::RuntimeError, "boom");
    let failed = JobResult::failure(failing, error, 1.0, vec![]);
    h.report(failing, 1, Some(failed)).await;
    until(&url, r#"lambda_callbacks_total{outcome="delivered"}"#, 1.0).await;

    // A job JetStream gave up on.
    let exhausted = h.insert_job(3).await;
    assert!(dead_letters.bury(exhausted, 5).await.unwrap());

    // Two submissions straight onto NATS: one accepted, one refused.
    let subject = h.subjects.submit(support::TITLE);
    let submission = json!({"params": {"n": 4}, "job_id": Uuid::now_v7()}).to_string();
    support::eventually(
        "the submit subscription",
        Duration::from_secs(10),
        || async {
            // No responder yet: refused at once, nothing is delivered.
            h.client
                .request(subject.clone(), submission.clone().into())
                .await
                .is_ok()
        },
    )
    .await;
    h.client
        .request(subject, "{".into())
        .await
        .expect("a refusal");

    let text = scrape(&url).await;
    for (series, expected) in [
        (succeeded, 1.0),
        (
            format!(r#"lambda_jobs_finished_total{{{nodejs},status="failed"}}"#),
            1.0,
        ),
        (
            format!(r#"lambda_jobs_finished_total{{{nodejs},status="dead"}}"#),
            1.0,
        ),
        (
            format!(r#"lambda_jobs_finished_total{{{nodejs},status="timed_out"}}"#),
            0.0,
        ),
        (format!("lambda_dead_letters_total{{{nodejs}}}"), 1.0),
        (redelivered, 1.0),
        ("lambda_jobs_republished_total".into(), 1.0),
        (r#"lambda_callbacks_total{outcome="failed"}"#.into(), 0.0),
        (
            r#"lambda_callback_attempts_total{result="error"}"#.into(),
            1.0,
        ),
        (r#"lambda_callback_attempts_total{result="ok"}"#.into(), 1.0),
        (
            r#"lambda_submissions_total{outcome="accepted"}"#.into(),
            1.0,
        ),
        (
            r#"lambda_submissions_total{outcome="INVALID_REQUEST"}"#.into(),
            1.0,
        ),
    ] {
        assert_eq!(value(&text, &series), Some(expected), "{series}:\n{text}");
    }
    for label in label_values(&text) {
        assert!(label.parse::<Uuid>().is_err(), "{label}");
        assert!(!label.contains("double"), "no Language-Title: {label}");
    }

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(15), running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(reqwest::get(&url).await.is_err(), "the endpoint closes");
    h.stop().await;
}
