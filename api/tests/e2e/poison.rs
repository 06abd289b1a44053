//! Results no store or reader could take: every result a script can produce
//! is either kept as it was given or answered with a clear error, for
//! synchronous and asynchronous jobs alike, and the jobs behind it finish.

use crate::support::Stack;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

/// A Node.js result and log line holding NUL characters, with the params.
const NUL_NODE: &str = "console.log('log\\u0000line');
return {s: 'a\\u0000b', params: event.params};";

/// `6 * params.n`.
const TIMES_SIX: &str = "return 6 * event.params.n;";

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
