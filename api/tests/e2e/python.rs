//! Python scripts through the REST API: the seed's text processor, the
//! `handle` and `lambda_handler` contracts, and script failures.

use crate::support::{assert_error, Options, Stack};
use reqwest::StatusCode;
use schemas::Language;
use serde_json::json;

async fn stack() -> Stack {
    Stack::start_with(Options {
        languages: vec![Language::Nodejs, Language::Python],
        ..Options::default()
    })
    .await
}

#[tokio::test]
async fn python_scripts_run_in_every_contract() {
    let stack = stack().await;
    let (status, init) = stack
        .initialize(
            "python-textprocessor",
            "result = len(params[\"text\"].split())",
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{init}");
    let id = init["request_id"].as_str().unwrap();
    let (status, body) = stack.execute(id, json!({"text": "Hello World"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["result"], 2);
    assert_eq!(body["language_title"], "python-textprocessor");
    let (_, body) = stack
        .execute(id, json!({"text": "the quick brown fox"}))
        .await;
    assert_eq!(body["result"], 4, "{body}");

    let handle = "def handle(params):\n    words = params['text'].split()\n    \
                  return {'words': len(words), 'upper': params['text'].upper()}\n";
    let id = stack.session("python-handle", handle).await;
    let (status, body) = stack.execute(&id, json!({"text": "a b c"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["result"], json!({"words": 3, "upper": "A B C"}));

    let lambda = "def lambda_handler(event, context):\n    \
                  return f\"{context['greeting']}, {event['params']['name']}\"\n";
    let (status, init) = stack
        .initialize("python-lambda", lambda, json!({"greeting": "Hello"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{init}");
    let id = init["request_id"].as_str().unwrap();
    let (status, body) = stack.execute(id, json!({"name": "Ada"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["result"], "Hello, Ada");
    stack.stop().await;
}

#[tokio::test]
async fn a_raising_python_script_is_a_runtime_error_with_its_line() {
    let stack = stack().await;
    let script = "total = 0\n\ndef handle(params):\n    \
                  return total / params['n']\n";
    let id = stack.session("python-divide", script).await;
    let (s, b) = stack.execute(&id, json!({"n": 0})).await;
    assert_error(s, &b, StatusCode::INTERNAL_SERVER_ERROR, "RUNTIME_ERROR");
    assert_eq!(
        b["error"]["message"], "ZeroDivisionError: division by zero",
        "{b}"
    );
    let details = &b["error"]["details"];
    assert_eq!(details["name"], "ZeroDivisionError", "{b}");
    assert_eq!(details["line"], 4, "{b}");
    assert!(
        details["stack"]
            .as_str()
            .is_some_and(|s| s.contains("line 4, in handle")),
        "{b}"
    );

    let hog = stack
        .session("python-hog", "hog = bytearray(1024 * 1024 * 1024)")
        .await;
    let (s, b) = stack.execute(&hog, json!({})).await;
    assert_error(s, &b, StatusCode::INSUFFICIENT_STORAGE, "MEMORY_LIMIT");

    // The same session still answers when the script does not fail.
    let (s, b) = stack.execute(&id, json!({"n": 2})).await;
    assert_eq!((s, &b["result"]), (StatusCode::OK, &json!(0.0)), "{b}");
    stack.stop().await;
}
