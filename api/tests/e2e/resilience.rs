//! The system keeps serving when parts of it fail.

use crate::support::{Options, PrivateRedis, Stack, ADD};
use reqwest::StatusCode;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn a_runtime_killed_mid_job_fails_that_job_and_the_pool_recovers() {
    let stack = Stack::start().await;
    let (s, init) = stack
        .initialize(
            "nodejs-slow",
            "await new Promise(r => setTimeout(r, 20000)); return 'finished';",
            json!({"timeout_ms": 25000}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{init}");
    let slow = init["request_id"].as_str().unwrap().to_owned();
    let ok = stack.session("nodejs-ok", ADD).await;

    let in_flight = {
        let http = stack.http.clone();
        let url = stack.url(&format!("/api/v1/execute/{slow}"));
        tokio::spawn(async move { http.post(url).body("{}").send().await.unwrap() })
    };
    stack
        .wait_for("the slow job to be running", |h| {
            h["components"]["runtimes"]["nodejs"]["busy"] == 1
        })
        .await;
    let pids = stack.node_pids();
    assert_eq!(pids.len(), 2);
    for pid in &pids {
        let killed = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status();
        assert!(killed.unwrap().success());
    }
    let response = tokio::time::timeout(Duration::from_secs(10), in_flight)
        .await
        .expect("the killed job is answered promptly")
        .unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "RUNTIME_ERROR", "{body}");

    let (s, b) = stack.execute(&ok, json!({"a": 5, "b": 3})).await;
    assert_eq!((s, &b["result"]), (StatusCode::OK, &json!(8)), "{b}");
    // The pool's two processes, and perhaps the spare it keeps.
    let fresh = stack.node_pids();
    assert!((2..=3).contains(&fresh.len()), "{fresh:?}");
    assert!(
        fresh.iter().all(|p| !pids.contains(p)),
        "killed children were replaced"
    );
    stack.stop().await;
}

#[tokio::test]
async fn execution_goes_on_when_redis_stops() {
    let mut redis = PrivateRedis::start();
    let stack = Stack::start_with(Options {
        redis_url: Some(redis.url.clone()),
        ..Options::default()
    })
    .await;
    let before = stack.session("nodejs-cached", ADD).await;
    let (s, b) = stack.execute(&before, json!({"a": 1, "b": 2})).await;
    assert_eq!((s, &b["result"]), (StatusCode::OK, &json!(3)), "{b}");

    redis.stop();
    let health = stack
        .wait_for("redis to be reported down", |h| {
            h["components"]["redis"] == "unavailable"
        })
        .await;
    assert_eq!(health["status"], "degraded");

    let (s, b) = stack.execute(&before, json!({"a": 2, "b": 2})).await;
    assert_eq!((s, &b["result"]), (StatusCode::OK, &json!(4)), "{b}");
    let after = stack.session("nodejs-nocache", ADD).await;
    let (s, b) = stack.execute(&after, json!({"a": 3, "b": 3})).await;
    assert_eq!((s, &b["result"]), (StatusCode::OK, &json!(6)), "{b}");
    stack.stop().await;
}

#[tokio::test]
async fn without_redis_an_in_process_cache_serves() {
    let stack = Stack::start_with(Options {
        redis_url: None,
        ..Options::default()
    })
    .await;
    let (_, health) = stack.get("/health").await;
    assert_eq!(health["components"]["redis"], "disabled");
    let id = stack.session("nodejs-local", ADD).await;
    let (s, b) = stack.execute(&id, json!({"a": 20, "b": 22})).await;
    assert_eq!((s, &b["result"]), (StatusCode::OK, &json!(42)), "{b}");
    stack.stop().await;
}
