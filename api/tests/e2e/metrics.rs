//! `/metrics`: Prometheus text with bounded labels.

use crate::support::{Stack, ADD};
use reqwest::StatusCode;
use serde_json::json;
use std::time::Duration;

async fn scrape(stack: &Stack) -> String {
    let response = stack.http.get(stack.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    response.text().await.unwrap()
}

/// The value of the series `name{labels}` (labels in Prometheus' order).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn metrics_count_requests_executions_and_sessions_by_bounded_labels() {
    let stack = Stack::start().await;
    let id = stack.session("nodejs-calculator", ADD).await;
    for (a, b) in [(5, 3), (10, 5)] {
        let (s, _) = stack.execute(&id, json!({"a": a, "b": b})).await;
        assert_eq!(s, StatusCode::OK);
    }
    let thrower = stack
        .session("nodejs-thrower", "throw new Error('x');")
        .await;
    let (s, _) = stack.execute(&thrower, json!({})).await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
    let (s, _) = stack.get("/no/such/route").await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let text = scrape(&stack).await;
    let execute = r#"route="/api/v1/execute/{request_id}""#;
    assert_eq!(
        value(
            &text,
            &format!(r#"lambda_http_requests_total{{method="POST",{execute},status="200"}}"#)
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            r#"lambda_http_requests_total{method="GET",route="unmatched",status="404"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            r#"lambda_executions_total{language="nodejs",outcome="ok"}"#
        ),
        Some(2.0)
    );
    assert_eq!(
        value(
            &text,
            r#"lambda_executions_total{language="nodejs",outcome="RUNTIME_ERROR"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&text, r#"lambda_sessions_created_total{language="nodejs"}"#),
        Some(2.0)
    );
    assert_eq!(
        value(&text, r#"lambda_runtime_capacity{language="nodejs"}"#),
        Some(2.0)
    );
    assert!(
        value(
            &text,
            r#"lambda_execution_duration_seconds_count{language="nodejs"}"#
        ) == Some(3.0)
    );
    assert!(text.contains("lambda_http_request_duration_seconds_bucket"));
    assert!(!text.contains(&id), "no session id may become a label");

    // The background gauges arrive within a refresh.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let text = scrape(&stack).await;
        let depth = value(&text, r#"lambda_queue_depth{language="nodejs"}"#);
        let active = value(&text, "lambda_active_sessions");
        if depth == Some(0.0) && active == Some(2.0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gauges never refreshed: {text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stack.stop().await;
}
