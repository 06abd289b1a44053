//! Session life: expiry, the dispatcher's clean-up, `retain_session`, and
//! sessions outliving restarts of every process.

use crate::support::{assert_error, Options, Stack, ADD};
use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;
use std::time::Duration;

/// Polls `GET /sessions/{id}` until `check` holds on (status, body) (15 s at most).
async fn wait_session(
    stack: &Stack,
    id: &str,
    what: &str,
    check: impl Fn(StatusCode, &Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = stack.get(&format!("/api/v1/sessions/{id}")).await;
        if check(status, &body) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "session {id} never became {what}: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn time(value: &Value) -> DateTime<Utc> {
    value.as_str().expect("a time").parse().expect("RFC 3339")
}

async fn script_count(db: &PgPool, hash: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM scripts WHERE hash = $1")
        .bind(hash)
        .fetch_one(db)
        .await
        .unwrap()
}

#[tokio::test]
async fn an_expired_session_answers_404_and_is_removed_with_its_unused_script() {
    let stack = Stack::start_with(Options {
        session_expiry_seconds: 2,
        session_retention_seconds: 2,
        reap_interval_seconds: 1,
        ..Options::default()
    })
    .await;
    let db = PgPool::connect(&stack.database_url).await.unwrap();
    let first = stack.session("nodejs-once", "return 'first';").await;
    // Registering a new script under the title leaves the first one to the session alone.
    let second = stack.session("nodejs-once", "return 'second';").await;
    let hash = |id: String| {
        let db = db.clone();
        async move {
            sqlx::query_scalar::<_, String>(
                "SELECT script_hash FROM sessions WHERE request_id::text = $1",
            )
            .bind(id)
            .fetch_one(&db)
            .await
            .unwrap()
        }
    };
    let (first_hash, second_hash) = (hash(first.clone()).await, hash(second.clone()).await);
    let (s, body) = stack.execute(&first, json!({})).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["result"], "first");

    let expired = wait_session(&stack, &first, "expired", |s, b| {
        s == StatusCode::OK && b["status"] == "expired"
    })
    .await;
    assert_eq!(expired["execution_count"], 1);
    let (s, body) = stack.execute(&first, json!({})).await;
    assert_error(s, &body, StatusCode::NOT_FOUND, "NOT_FOUND");

    wait_session(&stack, &first, "removed", |s, _| s == StatusCode::NOT_FOUND).await;
    let (s, body) = stack.execute(&first, json!({})).await;
    assert_error(s, &body, StatusCode::NOT_FOUND, "NOT_FOUND");
    wait_session(&stack, &second, "removed", |s, _| {
        s == StatusCode::NOT_FOUND
    })
    .await;
    // The first script served only the removed session; the second is registered.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while script_count(&db, &first_hash).await != 0 {
        assert!(tokio::time::Instant::now() < deadline, "script kept");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(script_count(&db, &second_hash).await, 1);
    // The registered function still initializes without script_content.
    let (s, init) = stack
        .post_json(
            "/api/v1/initialize",
            &[("Language-Title", "nodejs-once")],
            json!({"context": {}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{init}");
    let again = init["request_id"].as_str().unwrap();
    let (s, body) = stack.execute(again, json!({})).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["result"], "second");
    db.close().await;
    stack.stop().await;
}

#[tokio::test]
async fn a_retained_session_lives_while_it_is_used() {
    let stack = Stack::start_with(Options {
        session_expiry_seconds: 2,
        session_retention_seconds: 1,
        reap_interval_seconds: 1,
        ..Options::default()
    })
    .await;
    let (s, init) = stack
        .initialize("nodejs-kept", ADD, json!({"retain_session": true}))
        .await;
    assert_eq!(s, StatusCode::OK, "{init}");
    let kept = init["request_id"].as_str().unwrap().to_owned();
    let first_expiry = time(&init["expires_at"]);
    let plain = stack.session("nodejs-plain", ADD).await;

    // Used for twice its expiry: it stays; the unused one goes.
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut runs = 0;
    while tokio::time::Instant::now() < until {
        let (s, body) = stack.execute(&kept, json!({"a": runs, "b": 1})).await;
        assert_eq!(s, StatusCode::OK, "after {runs} runs: {body}");
        runs += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (s, body) = stack.execute(&plain, json!({"a": 1, "b": 1})).await;
    assert_error(s, &body, StatusCode::NOT_FOUND, "NOT_FOUND");
    let session = wait_session(&stack, &kept, "active", |s, _| s == StatusCode::OK).await;
    assert_eq!(session["status"], "active", "{session}");
    assert_eq!(session["execution_count"], runs);
    assert!(
        time(&session["expires_at"]) > first_expiry + chrono::Duration::seconds(2),
        "{session} vs {first_expiry}"
    );

    // Left unused, it expires like any other, and is removed.
    wait_session(&stack, &kept, "expired or removed", |s, b| {
        s == StatusCode::NOT_FOUND || b["status"] == "expired"
    })
    .await;
    let (s, body) = stack.execute(&kept, json!({"a": 1, "b": 1})).await;
    assert_error(s, &body, StatusCode::NOT_FOUND, "NOT_FOUND");
    wait_session(&stack, &kept, "removed", |s, _| s == StatusCode::NOT_FOUND).await;
    stack.stop().await;
}

#[tokio::test]
async fn sessions_outlive_a_restart_of_every_process() {
    let mut stack = Stack::start_with(Options {
        redis_url: None,
        ..Options::default()
    })
    .await;
    let id = stack.session("nodejs-calculator", ADD).await;
    let (s, body) = stack.execute(&id, json!({"a": 5, "b": 3})).await;
    assert_eq!(s, StatusCode::OK, "{body}");

    stack.restart().await;
    // A fresh in-process cache: the session can only come from PostgreSQL.
    let (s, body) = stack.execute(&id, json!({"a": 10, "b": 5})).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["result"], 15);
    let (s, session) = stack.get(&format!("/api/v1/sessions/{id}")).await;
    assert_eq!(s, StatusCode::OK, "{session}");
    assert_eq!(session["status"], "active");
    assert_eq!(session["execution_count"], 2);
    let metrics = stack
        .http
        .get(stack.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"lambda_cache_lookups_total{cache="session",result="miss"} 1"#),
        "{metrics}"
    );
    stack.stop().await;
}
