//! The `rust` and `wasm` languages through REST: compiled at initialize (a
//! script that does not compile is refused there, with the diagnostics, and
//! nothing is stored), then executed in the worker's wasmtime engine.

use crate::support::{assert_error, Options, Stack};
use reqwest::StatusCode;
use schemas::Language;
use serde_json::json;

const RUST_ADD: &str = r#"fn handler(params: Value, _context: Value) -> Result<Value, String> {
    Ok(json!(params["a"].as_i64().unwrap() + params["b"].as_i64().unwrap()))
}"#;

/// Echoes the event it reads on stdin.
const WAT_ECHO: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (func (export "_start")
    (local $total i32) (local $n i32)
    (loop $read
      (i32.store (i32.const 0) (i32.add (i32.const 1024) (local.get $total)))
      (i32.store (i32.const 4) (i32.sub (i32.const 100000) (local.get $total)))
      (i32.store (i32.const 16) (i32.const 0))
      (drop (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 16)))
      (local.set $n (i32.load (i32.const 16)))
      (local.set $total (i32.add (local.get $total) (local.get $n)))
      (br_if $read (i32.gt_u (local.get $n) (i32.const 0))))
    (i32.store (i32.const 0) (i32.const 1024))
    (i32.store (i32.const 4) (local.get $total))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16)))))"#;

/// A stack whose worker serves `wasm` and `rust` (and `nodejs`).
async fn stack() -> Stack {
    Stack::start_with(Options {
        languages: vec![Language::Nodejs, Language::Wasm, Language::Rust],
        ..Options::default()
    })
    .await
}

#[tokio::test]
async fn rust_source_compiles_at_initialize_and_runs() {
    let stack = stack().await;
    let health = stack
        .wait_for("the wasm and rust runtimes to be announced", |h| {
            h["components"]["runtimes"]["rust"]["status"] == "ok"
                && h["components"]["runtimes"]["wasm"]["status"] == "ok"
        })
        .await;
    assert_eq!(health["components"]["runtimes"]["rust"]["capacity"], 2);
    let request_id = stack.session("rust-adder", RUST_ADD).await;
    let (status, body) = stack.execute(&request_id, json!({"a": 5, "b": 3})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["result"], 8);
    assert_eq!(body["language_title"], "rust-adder");

    // A failing handler is the script's error.
    let failing = r#"fn handler(_p: Value, _c: Value) -> Result<Value, String> {
        Err("bad input".to_string())
    }"#;
    let request_id = stack.session("rust-failing", failing).await;
    let (status, body) = stack.execute(&request_id, json!({})).await;
    assert_error(
        status,
        &body,
        StatusCode::INTERNAL_SERVER_ERROR,
        "RUNTIME_ERROR",
    );
    assert_eq!(body["error"]["message"], "bad input");
    stack.stop().await;
}

#[tokio::test]
async fn rust_that_does_not_compile_is_refused_at_initialize_and_not_stored() {
    let stack = stack().await;
    let broken =
        "fn handler(params: Value, context: Value) -> Result<Value, String> { Ok(params + ) }";
    let (status, body) = stack.initialize("rust-broken", broken, json!({})).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "COMPILE_ERROR");
    let diagnostics = body["error"]["details"]["diagnostics"].as_str().unwrap();
    assert!(diagnostics.contains("expected expression"), "{diagnostics}");

    // Nothing was registered under that title.
    let (status, body) = stack
        .post_raw(
            "/api/v1/initialize",
            &[
                ("Language-Title", "rust-broken"),
                ("Content-Type", "application/json"),
            ],
            r#"{"context":{}}"#,
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "NOT_FOUND");

    // Only allow-listed compile options are accepted.
    let (status, body) = stack
        .initialize(
            "rust-adder",
            RUST_ADD,
            json!({"compile_options": {"opt_level": "3 -C linker=/bin/sh"}}),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "COMPILE_ERROR");
    stack.stop().await;
}

#[tokio::test]
async fn wat_modules_compile_at_initialize_and_run() {
    let stack = stack().await;
    let request_id = stack.session("wasm-echo", WAT_ECHO).await;
    let (status, body) = stack.execute(&request_id, json!({"x": [1, 2]})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["result"],
        json!({"params": {"x": [1, 2]}, "context": {}})
    );

    let (status, body) = stack
        .initialize("wasm-broken", "(module (func $f (result i32)))", json!({}))
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "COMPILE_ERROR");
    assert!(
        body["error"]["details"]["diagnostics"]
            .as_str()
            .is_some_and(|d| !d.is_empty()),
        "{body}"
    );
    stack.stop().await;
}

#[tokio::test]
async fn without_a_compiling_worker_initialize_is_503_and_stores_nothing() {
    let stack = Stack::start_with(Options {
        languages: vec![Language::Nodejs],
        ..Options::default()
    })
    .await;
    let response = stack
        .http
        .post(stack.url("/api/v1/initialize"))
        .header("Language-Title", "rust-adder")
        .header("Content-Type", "application/json")
        .body(json!({"context": {}, "script_content": RUST_ADD}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "UNAVAILABLE", "{body}");

    let (status, body) = stack
        .post_raw(
            "/api/v1/initialize",
            &[
                ("Language-Title", "rust-adder"),
                ("Content-Type", "application/json"),
            ],
            "{}",
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "NOT_FOUND");
    stack.stop().await;
}

#[tokio::test]
async fn the_predefined_rust_validator_compiles_and_answers_its_example() {
    let stack = stack().await;
    let (status, body) = stack
        .post_raw(
            "/api/v1/initialize",
            &[
                ("Language-Title", "rust-validator"),
                ("Content-Type", "application/json"),
            ],
            r#"{"context":{}}"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let request_id = body["request_id"].as_str().unwrap();
    let params = json!({
        "data": {"name": "Ann", "age": 17},
        "rules": {
            "name": {"required": true, "type": "string", "min_length": 2},
            "age": {"type": "integer", "min": 18},
            "email": {"required": true}
        }
    });
    let (status, body) = stack.execute(request_id, params).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["result"],
        json!({"valid": false, "errors": [
            {"field": "age", "rule": "min", "message": "age must be at least 18"},
            {"field": "email", "rule": "required", "message": "email is required"}
        ]})
    );
    stack.stop().await;
}
