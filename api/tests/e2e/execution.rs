//! The seed's quick start and the ordinary ways of running scripts.

use crate::support::{Stack, ADD};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn quick_start_answers_8_and_15_and_counts_executions() {
    let stack = Stack::start().await;
    let (status, init) = stack
        .initialize("nodejs-calculator", ADD, json!({"env": "production"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{init}");
    assert_eq!(init["status"], "initialized");
    assert!(init["expires_at"].is_string());
    let id = init["request_id"].as_str().unwrap();

    let (status, body) = stack.execute(id, json!({"a": 5, "b": 3})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["result"], 8);
    assert_eq!(body["request_id"], id);
    assert_eq!(body["language_title"], "nodejs-calculator");
    assert_eq!(body["cached"], false);
    assert!(
        body["execution_time"].as_f64().is_some_and(|t| t >= 0.0),
        "{body}"
    );

    let (_, body) = stack.execute(id, json!({"a": 10, "b": 5})).await;
    assert_eq!(body["result"], 15);

    let (status, session) = stack.get(&format!("/api/v1/sessions/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{session}");
    assert_eq!(session["request_id"], id);
    assert_eq!(session["language_title"], "nodejs-calculator");
    assert_eq!(session["status"], "active");
    assert_eq!(session["execution_count"], 2);
    assert!(session["last_executed_at"].is_string());
    assert!(session["created_at"].is_string());
    stack.stop().await;
}

#[tokio::test]
async fn ten_executions_on_one_session() {
    let stack = Stack::start().await;
    let id = stack
        .session("nodejs-square", "return event.params.n * event.params.n;")
        .await;
    for n in 0..10 {
        let (status, body) = stack.execute(&id, json!({"n": n})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["result"], n * n);
    }
    let (_, session) = stack.get(&format!("/api/v1/sessions/{id}")).await;
    assert_eq!(session["execution_count"], 10);
    stack.stop().await;
}

#[tokio::test]
async fn five_sessions_in_parallel_keep_their_own_scripts_and_context() {
    let stack = Stack::start().await;
    let mut ids = Vec::new();
    for k in 0..5 {
        let script = format!("return event.params.x * {k} + event.context.offset;");
        let (status, init) = stack
            .initialize(
                &format!("nodejs-mul{k}"),
                &script,
                json!({"offset": 100 * k}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{init}");
        ids.push(init["request_id"].as_str().unwrap().to_owned());
    }
    let runs = ids.iter().enumerate().flat_map(|(k, id)| {
        let stack = &stack;
        (0..4).map(move |x| async move {
            let (status, body) = stack.execute(id, json!({"x": x})).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            assert_eq!(body["result"], x * k as i64 + 100 * k as i64, "session {k}");
        })
    });
    futures::future::join_all(runs).await;
    for id in &ids {
        let (_, session) = stack.get(&format!("/api/v1/sessions/{id}")).await;
        assert_eq!(session["execution_count"], 4);
    }
    stack.stop().await;
}

#[tokio::test]
async fn module_and_handler_forms_and_async_scripts() {
    let stack = Stack::start().await;
    let cases = [
        ("nodejs-module", "module.exports = async (event) => event.params.a * 2;", json!({"a": 21}), json!(42)),
        (
            "nodejs-lambda",
            "exports.handler = async (event, context) => ({greeting: `hi ${event.params.name}`, env: context.env});",
            json!({"name": "ann"}),
            json!({"greeting": "hi ann", "env": "test"}),
        ),
        (
            "nodejs-await",
            "await new Promise(r => setTimeout(r, 20)); return [event.params.v, typeof event.context];",
            json!({"v": "x"}),
            json!(["x", "object"]),
        ),
        ("nodejs-void", "const x = 1;", json!({}), json!(null)),
    ];
    for (title, script, params, expected) in cases {
        let (status, init) = stack
            .initialize(title, script, json!({"env": "test"}))
            .await;
        assert_eq!(status, StatusCode::OK, "{init}");
        let id = init["request_id"].as_str().unwrap();
        let (status, body) = stack.execute(id, params).await;
        assert_eq!(status, StatusCode::OK, "{title}: {body}");
        assert_eq!(body["result"], expected, "{title}");
    }
    stack.stop().await;
}

#[tokio::test]
async fn a_registered_function_needs_no_script_on_later_initialize() {
    let stack = Stack::start().await;
    stack
        .session("nodejs-reuse", "return 'v1:' + event.params.s;")
        .await;
    let (status, init) = stack
        .post_raw(
            "/api/v1/initialize",
            &[("Language-Title", "nodejs-reuse")],
            r#"{"context":{}}"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{init}");
    let (_, body) = stack
        .execute(init["request_id"].as_str().unwrap(), json!({"s": "a"}))
        .await;
    assert_eq!(body["result"], "v1:a");
    stack.stop().await;
}

#[tokio::test]
async fn health_reports_every_component() {
    let stack = Stack::start().await;
    let (status, health) = stack.get("/health").await;
    assert_eq!(status, StatusCode::OK, "{health}");
    assert_eq!(health["status"], "ok");
    assert!(health["version"].is_string());
    let components = &health["components"];
    assert_eq!(components["postgres"], "ok");
    assert_eq!(components["redis"], "ok");
    assert_eq!(components["nats"], "ok");
    assert_eq!(components["runtimes"]["nodejs"]["status"], "ok");
    assert_eq!(components["runtimes"]["nodejs"]["capacity"], 2);
    assert_eq!(components["runtimes"]["python"]["status"], "unavailable");
    stack.stop().await;
}
