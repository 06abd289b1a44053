//! Request and error logs in PostgreSQL: written off the request path, with
//! secrets masked, through PostgreSQL outages, and removed after their retention.

use crate::support::{admin_url, Options, Stack, ADD};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;
use std::time::Duration;

const EXECUTE_ROUTE: &str = "/api/v1/execute/{request_id}";

/// Polls `sql` (a count) until it reaches `at_least` (15 s at most).
async fn wait_count(db: &PgPool, sql: &str, at_least: i64) -> i64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let n: i64 = sqlx::query_scalar(sql).fetch_one(db).await.expect(sql);
        if n >= at_least {
            return n;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {n} rows for {sql}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn db_name(stack: &Stack) -> String {
    stack.database_url.rsplit('/').next().unwrap().to_owned()
}

#[tokio::test]
async fn requests_are_logged_with_their_secrets_masked() {
    let stack = Stack::start().await;
    let db = PgPool::connect(&stack.database_url).await.unwrap();
    let id = stack.session("nodejs-calculator", ADD).await;
    let (s, body) = stack.execute(&id, json!({"a": 2, "b": 3})).await;
    assert_eq!(s, StatusCode::OK, "{body}");

    let secrets = [
        "tok-SECRET-1",
        "key-SECRET-2",
        "cbpass-SECRET-3",
        "qtok-SECRET-4",
    ];
    let response = stack
        .http
        .post(stack.url(&format!(
            "/api/v1/execute/{id}?async=true&token=qtok-SECRET-4"
        )))
        .header("Authorization", "Bearer tok-SECRET-1")
        .header("X-API-Key", "key-SECRET-2")
        .header(
            "X-Callback-Url",
            "http://cbuser:cbpass-SECRET-3@127.0.0.1:9/hook",
        )
        .header("User-Agent", "request-log-test/1.0")
        .json(&json!({"params": {"a": 1, "b": 1}}))
        .send()
        .await
        .unwrap();
    let masked_status = response.status().as_u16() as i32;
    let (s, _) = stack
        .get(&format!("/api/v1/sessions/{}", uuid::Uuid::now_v7()))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let route = format!("SELECT count(*) FROM request_logs WHERE route = '{EXECUTE_ROUTE}'");
    wait_count(&db, &route, 2).await;
    wait_count(
        &db,
        "SELECT count(*) FROM request_logs WHERE error_code = 'NOT_FOUND'",
        1,
    )
    .await;

    // Nothing in either table holds a secret.
    for table in ["request_logs", "error_logs"] {
        let rows: Vec<String> =
            sqlx::query_scalar(&format!("SELECT row_to_json(t)::text FROM {table} t"))
                .fetch_all(&db)
                .await
                .unwrap();
        for row in &rows {
            for secret in secrets {
                assert!(!row.contains(secret), "{secret} in {table}: {row}");
            }
        }
    }

    // The masked request is there, with what a reader needs.
    let (path, status, headers, agent, request_id): (
        String,
        i32,
        Value,
        Option<String>,
        Option<uuid::Uuid>,
    ) = sqlx::query_as(
        "SELECT path, status_code, request_headers, user_agent, request_id
             FROM request_logs WHERE path LIKE '%async=true%'",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(path, format!("/api/v1/execute/{id}?async=true&token=***"));
    assert_eq!(status, masked_status);
    assert_eq!(headers["authorization"], "Bearer ***");
    assert_eq!(headers["x-api-key"], "***");
    assert_eq!(
        headers["x-callback-url"],
        "http://cbuser:***@127.0.0.1:9/hook"
    );
    assert_eq!(agent.as_deref(), Some("request-log-test/1.0"));
    assert_eq!(request_id.map(|u| u.to_string()), Some(id.clone()));

    // The synchronous execute: session, language and latency as the seed's query reads them.
    let (method, lt, status, ms, ip, owner): (
        String,
        Option<String>,
        i32,
        f64,
        Option<String>,
        Option<String>,
    ) = sqlx::query_as(
        "SELECT method, language_title, status_code, duration_ms, client_ip, owner
             FROM request_logs WHERE route = $1 AND path NOT LIKE '%async%'",
    )
    .bind(EXECUTE_ROUTE)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(method, "POST");
    assert_eq!(lt.as_deref(), Some("nodejs-calculator"));
    assert_eq!(status, 200);
    assert!(ms > 0.0, "{ms}");
    assert_eq!(ip.as_deref(), Some("127.0.0.1"));
    assert!(owner.is_some());

    // initialize names the session it created.
    let initialized: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM request_logs
         WHERE route = '/api/v1/initialize' AND request_id::text = $1
           AND language_title = 'nodejs-calculator' AND status_code = 200",
    )
    .bind(&id)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(initialized, 1);
    // A 404 is logged with its error but is no server error.
    let server_errors: i64 = sqlx::query_scalar("SELECT count(*) FROM error_logs")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(server_errors, 0);
    db.close().await;
    stack.stop().await;
}

#[tokio::test]
async fn a_script_error_reaches_error_logs_with_its_detail() {
    let stack = Stack::start().await;
    let db = PgPool::connect(&stack.database_url).await.unwrap();
    let id = stack
        .session("nodejs-thrower", "throw new Error('kaboom-42');")
        .await;
    let (s, body) = stack.execute(&id, json!({})).await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR, "{body}");

    wait_count(&db, "SELECT count(*) FROM error_logs", 1).await;
    let (code, message, details, status, rid): (
        String,
        String,
        Option<Value>,
        i32,
        Option<uuid::Uuid>,
    ) = sqlx::query_as(
        "SELECT e.error_code, e.error_message, e.details, r.status_code, r.request_id
             FROM error_logs e JOIN request_logs r ON r.id = e.request_log_id",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(code, "RUNTIME_ERROR");
    assert!(message.contains("kaboom-42"), "{message}");
    assert_eq!(status, 500);
    assert_eq!(rid.map(|u| u.to_string()), Some(id));
    assert_eq!(details, Some(body["error"]["details"].clone()));
    let (code, message): (Option<String>, Option<String>) = sqlx::query_as(
        "SELECT error_code, error_message FROM request_logs WHERE status_code = 500",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(code.as_deref(), Some("RUNTIME_ERROR"));
    assert!(message.unwrap_or_default().contains("kaboom-42"));
    db.close().await;
    stack.stop().await;
}

/// Refuses (or again accepts) connections to the stack's database, closing
/// the open ones: PostgreSQL is away as far as the stack can tell.
async fn set_postgres_reachable(stack: &Stack, reachable: bool) {
    let admin = PgPool::connect(&admin_url()).await.unwrap();
    let name = db_name(stack);
    sqlx::query(&format!(
        "ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS {reachable}"
    ))
    .execute(&admin)
    .await
    .unwrap();
    if !reachable {
        sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
            .bind(&name)
            .execute(&admin)
            .await
            .unwrap();
    }
    admin.close().await;
}

async fn dropped(stack: &Stack) -> f64 {
    let text = stack
        .http
        .get(stack.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("lambda_request_logs_dropped_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no dropped counter in {text}"))
}

#[tokio::test]
async fn executions_go_on_while_postgres_is_away_and_their_logs_arrive_after() {
    const BUFFER: usize = 8;
    const SENT: usize = 30;
    let stack = Stack::start_with(Options {
        request_log_buffer: BUFFER,
        ..Options::default()
    })
    .await;
    let id = stack.session("nodejs-calculator", ADD).await;
    let db = PgPool::connect(&stack.database_url).await.unwrap();
    let initialized = "SELECT count(*) FROM request_logs WHERE route = '/api/v1/initialize'";
    wait_count(&db, initialized, 1).await;
    db.close().await;
    assert_eq!(dropped(&stack).await, 0.0);

    set_postgres_reachable(&stack, false).await;
    for seq in 0..SENT {
        let (s, body) = stack
            .post_json(
                &format!("/api/v1/execute/{id}?seq={seq}"),
                &[],
                json!({"params": {"a": seq, "b": 1}}),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{body}");
        assert_eq!(body["result"], seq + 1);
    }
    set_postgres_reachable(&stack, true).await;

    let db = PgPool::connect(&stack.database_url).await.unwrap();
    let last = format!(
        "SELECT count(*) FROM request_logs WHERE path LIKE '%seq={}'",
        SENT - 1
    );
    wait_count(&db, &last, 1).await;
    let logged: i64 =
        sqlx::query_scalar("SELECT count(*) FROM request_logs WHERE path LIKE '%seq=%'")
            .fetch_one(&db)
            .await
            .unwrap();
    // The buffer kept the newest entries; the others were dropped and counted.
    assert!(logged >= 1 && logged as usize <= BUFFER, "{logged} logged");
    assert_eq!(dropped(&stack).await as i64 + logged, SENT as i64);
    db.close().await;
    stack.stop().await;
}

#[tokio::test]
async fn request_logs_past_their_retention_are_removed() {
    let stack = Stack::start_with(Options {
        worker: false,
        reap_interval_seconds: 1,
        ..Options::default()
    })
    .await;
    let db = PgPool::connect(&stack.database_url).await.unwrap();
    for (days, status) in [(8, 500), (6, 200)] {
        // One statement: the dispatcher may clean up between two.
        sqlx::query(
            "WITH r AS (
                 INSERT INTO request_logs (id, created_at, method, route, path, status_code,
                                           duration_ms)
                 VALUES ($1, now() - make_interval(days => $2), 'GET', '/x', '/x', $3, 1)
             )
             INSERT INTO error_logs (id, request_log_id, created_at, error_code, error_message)
             VALUES ($4, $1, now() - make_interval(days => $2), 'INTERNAL_ERROR', 'x')",
        )
        .bind(uuid::Uuid::now_v7())
        .bind(days)
        .bind(status)
        .bind(uuid::Uuid::now_v7())
        .execute(&db)
        .await
        .unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let statuses: Vec<i32> = sqlx::query_scalar("SELECT status_code FROM request_logs")
            .fetch_all(&db)
            .await
            .unwrap();
        if statuses == [200] {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{statuses:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let errors: i64 = sqlx::query_scalar("SELECT count(*) FROM error_logs")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(errors, 1);
    db.close().await;
    stack.stop().await;
}
