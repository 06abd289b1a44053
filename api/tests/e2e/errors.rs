//! Every row of the error table that applies: each answered with the
//! contract's JSON error, and the service keeps serving afterwards.

use crate::support::{assert_error, Options, Stack, ADD};
use reqwest::StatusCode;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn bad_initialize_requests() {
    let stack = Stack::start().await;
    let init = "/api/v1/initialize";
    let script = json!({"script_content": ADD}).to_string();

    let (s, b) = stack
        .post_raw(
            init,
            &[("Language-Title", "nodejs-calc")],
            "{\"script_content\":",
        )
        .await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    let (s, b) = stack
        .post_raw(init, &[("Language-Title", "nodejs-calc")], "[1,2]")
        .await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    let (s, b) = stack
        .post_raw(init, &[("Language-Title", "nodejs-calc")], "\"text\"")
        .await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    let (s, b) = stack.post_raw(init, &[], script.clone()).await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    for bad in ["nodejs", "nodejs-", "nodejs-has space", "-calc"] {
        let (s, b) = stack
            .post_raw(init, &[("Language-Title", bad)], script.clone())
            .await;
        assert_error(s, &b, StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    }
    let (s, b) = stack
        .post_raw(init, &[("Language-Title", "ruby-calc")], script.clone())
        .await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "NOT_FOUND");
    let (s, b) = stack
        .initialize("nodejs-calc", ADD, json!("not an object"))
        .await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    let (s, b) = stack
        .initialize("nodejs-calc", ADD, json!({"timeout_ms": -5}))
        .await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    let (s, b) = stack.initialize("nodejs-calc", "   ", json!({})).await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    let (s, b) = stack
        .post_raw(init, &[("Language-Title", "nodejs-neverregistered")], "{}")
        .await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "NOT_FOUND");

    // Nothing half-written: none of the refused titles became a function.
    let (s, b) = stack
        .post_raw(init, &[("Language-Title", "nodejs-calc")], "{}")
        .await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "NOT_FOUND");

    // Still serving.
    let id = stack.session("nodejs-calc", ADD).await;
    let (s, b) = stack.execute(&id, json!({"a": 1, "b": 2})).await;
    assert_eq!((s, &b["result"]), (StatusCode::OK, &json!(3)), "{b}");
    stack.stop().await;
}

#[tokio::test]
async fn oversized_scripts_and_bodies_are_413() {
    let stack = Stack::start_with(Options {
        max_script_size: 64 * 1024,
        ..Options::default()
    })
    .await;
    let big = format!("return 1; // {}", "x".repeat(64 * 1024));
    let (s, b) = stack.initialize("nodejs-big", &big, json!({})).await;
    assert_error(s, &b, StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE");
    let huge = format!("{{\"script_content\":\"{}\"}}", "y".repeat(5 * 1024 * 1024));
    let (s, b) = stack
        .post_raw(
            "/api/v1/initialize",
            &[("Language-Title", "nodejs-huge")],
            huge,
        )
        .await;
    assert_error(s, &b, StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE");
    let (s, b) = stack
        .post_raw(
            "/api/v1/initialize",
            &[("Language-Title", "nodejs-big")],
            "{}",
        )
        .await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "NOT_FOUND");
    stack.stop().await;
}

#[tokio::test]
async fn bad_execute_requests() {
    let stack = Stack::start().await;
    let id = stack.session("nodejs-calc", ADD).await;
    let path = format!("/api/v1/execute/{id}");

    let (s, b) = stack.post_raw(&path, &[], "{\"params\":").await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    let (s, b) = stack.post_raw(&path, &[], "[]").await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    let (s, b) = stack.post_raw(&path, &[], "{\"params\":[1,2]}").await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "INVALID_PARAMS");
    let (s, b) = stack.post_raw(&path, &[], "{\"params\":\"a=1\"}").await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "INVALID_PARAMS");

    let unknown = uuid::Uuid::new_v4();
    let (s, b) = stack.execute(&unknown.to_string(), json!({})).await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "NOT_FOUND");
    let (s, b) = stack.execute("not-a-session", json!({})).await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "NOT_FOUND");
    let (s, b) = stack.get(&format!("/api/v1/sessions/{unknown}")).await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "NOT_FOUND");

    let (s, b) = stack.get("/api/v1/nothing-here").await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "NOT_FOUND");
    let (s, b) = stack.get(&path).await;
    assert_error(s, &b, StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED");

    let (s, b) = stack.execute(&id, json!({"a": 2, "b": 2})).await;
    assert_eq!((s, &b["result"]), (StatusCode::OK, &json!(4)), "{b}");
    let (_, session) = stack.get(&format!("/api/v1/sessions/{id}")).await;
    assert_eq!(
        session["execution_count"], 1,
        "refused requests are not executions"
    );
    stack.stop().await;
}

#[tokio::test]
async fn a_throwing_script_is_a_runtime_error_with_its_stack() {
    let stack = Stack::start().await;
    let id = stack
        .session(
            "nodejs-thrower",
            "const x = 1;\nthrow new Error('boom ' + event.params.n);",
        )
        .await;
    let (s, b) = stack.execute(&id, json!({"n": 7})).await;
    assert_error(s, &b, StatusCode::INTERNAL_SERVER_ERROR, "RUNTIME_ERROR");
    assert!(
        b["error"]["message"].as_str().unwrap().contains("boom 7"),
        "{b}"
    );
    let details = &b["error"]["details"];
    assert_eq!(details["line"], 2, "{b}");
    assert!(
        details["stack"]
            .as_str()
            .is_some_and(|s| s.contains("boom 7")),
        "{b}"
    );

    let ok = stack.session("nodejs-fine", ADD).await;
    let (s, b) = stack.execute(&ok, json!({"a": 1, "b": 1})).await;
    assert_eq!((s, &b["result"]), (StatusCode::OK, &json!(2)), "{b}");
    stack.stop().await;
}

#[tokio::test]
async fn an_endless_loop_times_out_and_the_pool_serves_the_next_job() {
    let stack = Stack::start().await;
    let (s, init) = stack
        .initialize("nodejs-spin", "while (true) {}", json!({"timeout_ms": 500}))
        .await;
    assert_eq!(s, StatusCode::OK, "{init}");
    let spin = init["request_id"].as_str().unwrap().to_owned();
    let ok = stack.session("nodejs-after", ADD).await;

    for _ in 0..3 {
        let (s, b) = stack.execute(&spin, json!({})).await;
        assert_error(s, &b, StatusCode::GATEWAY_TIMEOUT, "TIMEOUT");
    }
    let (s, b) = stack.execute(&ok, json!({"a": 4, "b": 4})).await;
    assert_eq!((s, &b["result"]), (StatusCode::OK, &json!(8)), "{b}");
    stack
        .wait_for("the pool to be back at full size", |h| {
            h["components"]["runtimes"]["nodejs"]["capacity"] == 2
        })
        .await;
    stack.stop().await;
}

#[tokio::test]
async fn a_language_without_a_worker_is_503_with_retry_after() {
    let stack = Stack::start_with(Options {
        languages: vec![schemas::Language::Nodejs],
        ..Options::default()
    })
    .await;
    let (s, init) = stack
        .initialize(
            "python-words",
            "result = len(params['text'].split())",
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{init}");
    let response = stack
        .http
        .post(stack.url(&format!(
            "/api/v1/execute/{}",
            init["request_id"].as_str().unwrap()
        )))
        .body(r#"{"params":{}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "UNAVAILABLE");
    stack.stop().await;
}

#[tokio::test]
async fn an_expired_session_is_404_and_reads_as_expired() {
    let stack = Stack::start_with(Options {
        session_expiry_seconds: 1,
        ..Options::default()
    })
    .await;
    let id = stack.session("nodejs-brief", ADD).await;
    let (s, _) = stack.execute(&id, json!({"a": 1, "b": 1})).await;
    assert_eq!(s, StatusCode::OK);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (s, b) = stack.execute(&id, json!({"a": 1, "b": 1})).await;
        if s == StatusCode::NOT_FOUND {
            assert_error(s, &b, StatusCode::NOT_FOUND, "NOT_FOUND");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "session never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (s, session) = stack.get(&format!("/api/v1/sessions/{id}")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(session["status"], "expired");
    stack.stop().await;
}
