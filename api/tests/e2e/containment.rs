//! Results at the edge of what travels: a result (with its logs) as large
//! as the limits allow either arrives whole or is answered with a clear
//! error at once, and the script runs once — never a timeout and a rerun.
//! And a tenant compiling slow sources holds back no other tenant's.

use crate::support::{client, Options, Stack};
use reqwest::StatusCode;
use schemas::Language;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Characters of a string result whose JSON is 1,048,560 bytes: just under
/// the documented 1 MiB output limit.
const JUST_UNDER: usize = 1_048_560 - 2;

/// Returns `params.n` characters, after logging `params.log` characters.
const LARGE: &str = "if (event.params.log) console.log('l'.repeat(event.params.log));
return 'x'.repeat(event.params.n);";

/// Scripts the worker has run so far, whatever their outcome.
async fn runs(stack: &Stack) -> f64 {
    let url = stack.worker_metrics.clone().expect("a worker");
    let text = stack
        .http
        .get(url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with("lambda_worker_executions_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The result arrived whole, or a clear `RUNTIME_ERROR` says it was too large.
fn whole_or_too_large(status: StatusCode, body: &Value, n: usize) {
    if status == StatusCode::OK {
        assert_eq!(body["result"].as_str().map(str::len), Some(n));
    } else {
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
        assert_eq!(body["error"]["code"], "RUNTIME_ERROR", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("too large"), "{message}");
    }
}

#[tokio::test]
async fn a_result_just_under_the_limit_runs_once_and_answers_at_once() {
    let stack = Stack::start().await;
    let id = stack.session("nodejs-large", LARGE).await;
    for params in [
        json!({"n": JUST_UNDER}),
        // With as many bytes of logs: the logs give way, not the result.
        json!({"n": 600_000, "log": 600_000}),
    ] {
        let before = runs(&stack).await;
        let started = Instant::now();
        let (status, body) = stack.execute(&id, params.clone()).await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "answered after {:?}: {body:.300}",
            started.elapsed()
        );
        let n = params["n"].as_u64().unwrap() as usize;
        whole_or_too_large(status, &body, n);
        if params["log"].is_u64() {
            assert_eq!(status, StatusCode::OK, "{body:.300}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(runs(&stack).await - before, 1.0, "ran once: {params}");
    }

    // Asynchronously: the job ends at once, after one attempt.
    let before = runs(&stack).await;
    let (status, body) = stack
        .post_json(
            &format!("/api/v1/execute/{id}?async=true"),
            &[],
            json!({"params": {"n": JUST_UNDER}}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let job_id = body["job_id"].as_str().unwrap().to_owned();
    let job = stack
        .wait_job(&job_id, Duration::from_secs(5), |job| {
            !matches!(job["status"].as_str(), Some("queued" | "running"))
        })
        .await;
    assert_eq!(job["attempts"], 1, "{job:.300}");
    match job["status"].as_str() {
        Some("succeeded") => assert_eq!(job["result"].as_str().map(str::len), Some(JUST_UNDER)),
        _ => {
            assert_eq!(job["error"]["code"], "RUNTIME_ERROR", "{job:.300}");
            assert!(job["error"]["message"]
                .as_str()
                .unwrap()
                .contains("too large"));
        }
    }
    assert_eq!(runs(&stack).await - before, 1.0, "the async job ran once");

    // The worker serves the next job normally.
    let small = stack.execute(&id, json!({"n": 3})).await;
    assert_eq!(small.1["result"], "xxx", "{}", small.1);
    stack.stop().await;
}

/// A Rust handler whose compilation takes seconds: thousands of functions
/// to optimise. `tag` makes each source (and its cache key) distinct.
fn slow_rust(tag: &str) -> String {
    let padding: String = (0..4000)
        .map(|i| format!("pub fn pad{i}(x: u64) -> u64 {{ let v = [x, {i}, x * {i}]; v.iter().map(|y| y.wrapping_mul({i}) ^ x).sum::<u64>() }}\n"))
        .collect();
    format!("// {tag}\nfn handler(_p: Value, _c: Value) -> Result<Value, String> {{ Ok(json!(1)) }}\n{padding}")
}

#[tokio::test]
async fn slow_compiles_of_one_tenant_do_not_hold_back_another() {
    let stack = Stack::start_with(Options {
        languages: vec![Language::Rust],
        ..Options::default()
    })
    .await;
    let initialize = |owner: &str, title: String, source: String| {
        let http = client(Some(stack.token(owner, &["execute:all"])));
        let url = stack.url("/api/v1/initialize");
        let started = Instant::now();
        tokio::spawn(async move {
            let response = http
                .post(url)
                .header("Language-Title", title)
                .header("Content-Type", "application/json")
                .body(json!({"script_content": source}).to_string())
                .send()
                .await
                .unwrap();
            let status = response.status();
            let body: Value = response.json().await.unwrap();
            (status, body, started.elapsed())
        })
    };
    let tag = uuid::Uuid::new_v4().to_string();
    // Mallory sends two slow sources at once: as many as there are slots.
    let slow: Vec<_> = (0..2)
        .map(|n| {
            initialize(
                "mallory",
                format!("rust-slow-{n}"),
                slow_rust(&format!("{tag} {n}")),
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let quick = initialize(
        "alice",
        "rust-quick".to_owned(),
        format!("// {tag}\nfn handler(p: Value, _c: Value) -> Result<Value, String> {{ Ok(p) }}"),
    );
    let (status, body, alice_took) = quick.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    for task in slow {
        let (status, body, mallory_took) = task.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body:.300}");
        assert!(
            alice_took + Duration::from_millis(500) < mallory_took,
            "alice waited {alice_took:?}, behind mallory's compile of {mallory_took:?}"
        );
    }
    stack.stop().await;
}

/// Sleeps 30 s in a WASI host call (`poll_oneoff` on the monotonic clock),
/// where epoch interruption does not reach.
const WAT_SLEEP: &str = r#"(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (i32.store (i32.const 16) (i32.const 1))
    (i64.store (i32.const 24) (i64.const 30000000000))
    (drop (call $poll (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128)))))"#;

/// Writes `1` on stdout.
const WAT_ONE: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "1")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 1))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16)))))"#;

#[tokio::test]
async fn sleeping_wasm_jobs_give_their_instances_back_at_their_timeout() {
    let stack = Stack::start_with(Options {
        languages: vec![Language::Wasm],
        ..Options::default()
    })
    .await;
    let (status, body) = stack
        .initialize("wasm-sleeper", WAT_SLEEP, json!({"timeout_ms": 300}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let sleeper = body["request_id"].as_str().unwrap().to_owned();
    let one = stack.session("wasm-one", WAT_ONE).await;
    // Four times the worker's wasm concurrency, all at once.
    let sleeping: Vec<_> = (0..16)
        .map(|n| {
            let (http, url) = (
                stack.http.clone(),
                stack.url(&format!("/api/v1/execute/{sleeper}")),
            );
            tokio::spawn(async move {
                let started = Instant::now();
                let response = http
                    .post(url)
                    .header("Content-Type", "application/json")
                    .body(json!({"params": {"n": n}}).to_string())
                    .send()
                    .await
                    .unwrap();
                let status = response.status();
                let body: Value = response.json().await.unwrap();
                (status, body, started.elapsed())
            })
        })
        .collect();
    for task in sleeping {
        let (status, body, took) = task.await.unwrap();
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
        assert_eq!(body["error"]["code"], "TIMEOUT", "{body}");
        assert!(took < Duration::from_secs(10), "answered after {took:?}");
    }
    // Every instance is free again: another tenant's job runs at once.
    let started = Instant::now();
    let (status, body) = stack.execute(&one, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["result"], 1);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    stack.stop().await;
}
