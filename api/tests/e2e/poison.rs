//! Results no store or reader could take: every result a script can produce
//! is either kept as it was given or answered with a clear error, for
//! synchronous and asynchronous jobs alike, and the jobs behind it finish.

use crate::support::{Options, Stack};
use reqwest::StatusCode;
use schemas::Language;
use serde_json::{json, Value};
use std::time::Duration;

/// A Node.js result and log line holding NUL characters, with the params.
const NUL_NODE: &str = "console.log('log\\u0000line');
return {s: 'a\\u0000b', params: event.params};";

/// `6 * params.n`.
const TIMES_SIX: &str = "return 6 * event.params.n;";

/// A WebAssembly module that writes `text` on stdout.
fn wat_writing(text: &str) -> String {
    let data = text.replace('\\', "\\\\").replace('"', "\\\"");
    format!(
        r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "{data}")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const {len}))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16)))))"#,
        len = text.len()
    )
}

/// Submits `params` to `session` asynchronously; returns the job id.
async fn submit(stack: &Stack, session: &str, params: Value) -> String {
    let (status, body) = stack
        .post_json(
            &format!("/api/v1/execute/{session}?async=true"),
            &[],
            json!({ "params": params }),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    body["job_id"].as_str().unwrap().to_owned()
}

async fn finished(stack: &Stack, job_id: &str) -> Value {
    stack
        .wait_job(job_id, Duration::from_secs(20), |job| {
            !matches!(job["status"].as_str(), Some("queued" | "running"))
        })
        .await
}

#[tokio::test]
async fn nul_characters_are_kept_and_hold_back_no_job() {
    let stack = Stack::start().await;
    let poison = stack.session("nodejs-nul", NUL_NODE).await;
    let six = stack.session("nodejs-six", TIMES_SIX).await;

    let (status, body) = stack.execute(&poison, json!({"q": "x\u{0}y"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["result"]["s"], "a\u{0}b", "{body}");
    assert_eq!(body["result"]["params"]["q"], "x\u{0}y", "{body}");

    // Asynchronously, with eight jobs submitted after it.
    let poisoned = submit(&stack, &poison, json!({"q": "x\u{0}y"})).await;
    let mut behind = Vec::new();
    for n in 0..8 {
        behind.push((n, submit(&stack, &six, json!({ "n": n })).await));
    }
    let job = finished(&stack, &poisoned).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["result"]["s"], "a\u{0}b", "{job}");
    assert_eq!(job["result"]["params"]["q"], "x\u{0}y", "{job}");
    assert!(job["logs"].to_string().contains("log\\u0000line"), "{job}");
    for (n, id) in behind {
        let job = finished(&stack, &id).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        assert_eq!(job["result"], 6 * n, "{job}");
    }
    // Listed with the others, as stored.
    let (status, list) = stack.get("/api/v1/jobs?per_page=1000").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list["total"], 9, "{list}");
    stack.stop().await;
}

#[tokio::test]
async fn results_no_reader_could_decode_are_clear_errors() {
    let stack = Stack::start_with(Options {
        languages: vec![Language::Nodejs, Language::Python, Language::Wasm],
        ..Options::default()
    })
    .await;
    let deep = format!("{}1{}", "[".repeat(150), "]".repeat(150));
    let cases = [
        (
            "nodejs-lone",
            "return 'a\\ud800';".to_owned(),
            "lone surrogate",
        ),
        (
            "nodejs-deep",
            "let v = 1; for (let i = 0; i < 150; i++) v = [v]; return v;".to_owned(),
            "nested too deeply",
        ),
        (
            "python-lone",
            "result = 'a\\ud800'".to_owned(),
            "not JSON-serialisable",
        ),
        (
            "python-deep",
            "v = 1\nfor _ in range(150):\n    v = [v]\nresult = v".to_owned(),
            "nested too deeply",
        ),
        ("wasm-lone", wat_writing(r#""a\ud800""#), "lone surrogate"),
        ("wasm-deep", wat_writing(&deep), "nested too deeply"),
    ];
    for (title, script, why) in cases {
        let session = stack.session(title, &script).await;
        let (status, body) = stack.execute(&session, json!({})).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{title}: {body}");
        assert_eq!(body["error"]["code"], "RUNTIME_ERROR", "{title}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(why), "{title}: {message}");

        let job = finished(&stack, &submit(&stack, &session, json!({})).await).await;
        assert_eq!(job["status"], "failed", "{title}: {job}");
        assert_eq!(job["error"]["code"], "RUNTIME_ERROR", "{title}: {job}");
    }
    // A wasm result with a NUL escape is kept as given.
    let nul = stack
        .session("wasm-nul", &wat_writing(r#""a\u0000b""#))
        .await;
    let (status, body) = stack.execute(&nul, json!({})).await;
    assert_eq!(
        (status, &body["result"]),
        (StatusCode::OK, &json!("a\u{0}b"))
    );
    let job = finished(&stack, &submit(&stack, &nul, json!({})).await).await;
    assert_eq!(job["result"], "a\u{0}b", "{job}");
    stack.stop().await;
}
