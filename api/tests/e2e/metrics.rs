//! `/metrics`: Prometheus text with bounded labels, from the API, the
//! dispatcher and the worker (each serves its own).

use crate::support::{Options, Stack, ADD};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::{collections::BTreeMap, time::Duration};
use uuid::Uuid;

async fn scrape(stack: &Stack) -> String {
    scrape_url(stack, &stack.url("/metrics")).await
}

async fn scrape_url(stack: &Stack, url: &str) -> String {
    let response = stack.http.get(url).send().await.unwrap();
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
    assert_eq!(
        value(&text, r#"lambda_errors_total{code="RUNTIME_ERROR"}"#),
        Some(1.0)
    );
    assert_eq!(
        value(&text, r#"lambda_errors_total{code="NOT_FOUND"}"#),
        Some(1.0)
    );
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

/// One sample of the text exposition.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the text exposition format (comments skipped).
fn parse(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let name_end = line.find(['{', ' ']).expect("a sample line");
        let name = line[..name_end].to_owned();
        let mut labels = BTreeMap::new();
        let mut rest = &line[name_end..];
        if let Some(inner) = rest.strip_prefix('{') {
            let mut chars = inner.char_indices();
            let (mut key, mut value, mut in_value) = (String::new(), String::new(), false);
            loop {
                let (i, c) = chars.next().expect("closed labels");
                match (in_value, c) {
                    (false, '}') => {
                        rest = &inner[i + 1..];
                        break;
                    }
                    (false, ',') => {}
                    (false, '=') => {
                        assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{line}");
                        in_value = true;
                    }
                    (false, c) => key.push(c),
                    (true, '\\') => value.push(chars.next().expect("escaped").1),
                    (true, '"') => {
                        labels.insert(std::mem::take(&mut key), std::mem::take(&mut value));
                        in_value = false;
                    }
                    (true, c) => value.push(c),
                }
            }
        }
        let value = rest.trim().parse().unwrap_or_else(|_| panic!("{line}"));
        samples.push(Sample {
            name,
            labels,
            value,
        });
    }
    samples
}

/// The sum of the samples of `name` whose labels include `labels`; `None`
/// when there is no such series.
fn sum(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<f64> = samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .collect();
    (!matching.is_empty()).then(|| matching.iter().sum())
}

/// Scrapes `url` until `check` holds on its samples (15 s at most).
async fn scrape_until(
    stack: &Stack,
    url: &str,
    what: &str,
    check: impl Fn(&[Sample]) -> bool,
) -> Vec<Sample> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let text = scrape_url(stack, url).await;
        let samples = parse(&text);
        if check(&samples) {
            return samples;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} never showed at {url}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_status(stack: &Stack, job_id: &str, status: &str) {
    let job = stack
        .wait_job(job_id, Duration::from_secs(20), |j| {
            j["status"] != "queued" && j["status"] != "running"
        })
        .await;
    assert_eq!(job["status"], status, "{job}");
}

#[tokio::test]
async fn every_process_exports_its_series_after_real_work_with_bounded_labels() {
    // Jobs published straight onto NATS belong to the anonymous owner.
    let stack = Stack::start_with(Options {
        auth_disabled: true,
        ..Options::default()
    })
    .await;
    let adder = stack.session("nodejs-adder", ADD).await;
    let thrower = stack
        .session("nodejs-thrower", "throw new Error('x');")
        .await;
    let (s, body) = stack
        .initialize(
            "nodejs-spinner",
            "while (true) {}",
            json!({"timeout_ms": 300}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let spinner = body["request_id"].as_str().unwrap().to_owned();

    // Synchronous: two results, a script error, a timeout.
    for (a, b) in [(1, 2), (3, 4)] {
        let (s, _) = stack.execute(&adder, json!({"a": a, "b": b})).await;
        assert_eq!(s, StatusCode::OK);
    }
    let (s, _) = stack.execute(&thrower, json!({})).await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
    let (s, _) = stack.execute(&spinner, json!({})).await;
    assert_eq!(s, StatusCode::GATEWAY_TIMEOUT);

    // Asynchronous: one job succeeds, one fails.
    let mut job_ids = Vec::new();
    for (session, status) in [(&adder, "succeeded"), (&thrower, "failed")] {
        let (s, body) = stack
            .post_json(
                "/api/v1/jobs",
                &[],
                json!({"request_id": session, "params": {"a": 1, "b": 1}}),
            )
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{body}");
        let id = body["job_id"].as_str().unwrap().to_owned();
        wait_status(&stack, &id, status).await;
        job_ids.push(id);
    }

    // Straight onto NATS: one accepted (and run), one refused.
    let nats = async_nats::connect(crate::support::nats_url())
        .await
        .unwrap();
    let subject = format!("{}.submit.nodejs-calculator", stack.prefix);
    let payload = json!({"params": {"operation": "add", "values": [5, 3]}}).to_string();
    let reply = nats.request(subject.clone(), payload.into()).await.unwrap();
    let reply: Value = serde_json::from_slice(&reply.payload).unwrap();
    let id = reply["job_id"].as_str().expect("accepted").to_owned();
    wait_status(&stack, &id, "succeeded").await;
    job_ids.push(id);
    let reply = nats.request(subject, "not json".into()).await.unwrap();
    let reply: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(reply["error"]["code"], "INVALID_REQUEST", "{reply}");

    // The API: requests, errors, executions.
    let api = parse(&scrape(&stack).await);
    let execute = [
        ("route", "/api/v1/execute/{request_id}"),
        ("method", "POST"),
    ];
    assert_eq!(sum(&api, "lambda_http_requests_total", &execute), Some(4.0));
    for code in ["RUNTIME_ERROR", "TIMEOUT"] {
        assert_eq!(
            sum(&api, "lambda_errors_total", &[("code", code)]),
            Some(1.0),
            "{code}"
        );
    }
    assert_eq!(
        sum(
            &api,
            "lambda_executions_total",
            &[("language", "nodejs"), ("outcome", "TIMEOUT")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sum(
            &api,
            "lambda_http_requests_total",
            &[("route", "/api/v1/jobs"), ("status", "202")]
        ),
        Some(2.0)
    );
    let api = scrape_until(&stack, &stack.url("/metrics"), "open jobs", |s| {
        sum(s, "lambda_jobs_open", &[("status", "queued")]) == Some(0.0)
            && sum(s, "lambda_jobs_open", &[("status", "running")]) == Some(0.0)
            && sum(s, "lambda_active_sessions", &[]) == Some(3.0)
    })
    .await;

    // The dispatcher: terminal jobs by status, submissions.
    let nodejs = ("language", "nodejs");
    let dispatcher = scrape_until(&stack, &stack.dispatcher_metrics, "finished jobs", |s| {
        sum(
            s,
            "lambda_jobs_finished_total",
            &[nodejs, ("status", "succeeded")],
        ) == Some(2.0)
            && sum(
                s,
                "lambda_jobs_finished_total",
                &[nodejs, ("status", "failed")],
            ) == Some(1.0)
    })
    .await;
    for (outcome, n) in [("accepted", 1.0), ("INVALID_REQUEST", 1.0)] {
        assert_eq!(
            sum(
                &dispatcher,
                "lambda_submissions_total",
                &[("outcome", outcome)]
            ),
            Some(n),
            "{outcome}"
        );
    }
    assert_eq!(
        sum(&dispatcher, "lambda_dead_letters_total", &[nodejs]),
        Some(0.0)
    );

    // The worker: 4 + 3 scripts run, one killed for its timeout, 7 acks.
    let url = stack.worker_metrics.clone().expect("a worker");
    let worker = scrape_until(&stack, &url, "worker counts", |s| {
        sum(
            s,
            "lambda_worker_job_acks_total",
            &[nodejs, ("kind", "ack")],
        ) == Some(7.0)
    })
    .await;
    let executions = |outcome| {
        sum(
            &worker,
            "lambda_worker_executions_total",
            &[nodejs, ("outcome", outcome)],
        )
    };
    assert_eq!(executions("ok"), Some(4.0));
    assert_eq!(executions("RUNTIME_ERROR"), Some(2.0));
    assert_eq!(executions("TIMEOUT"), Some(1.0));
    assert_eq!(
        sum(
            &worker,
            "lambda_worker_execution_duration_seconds_count",
            &[nodejs]
        ),
        Some(7.0)
    );
    assert_eq!(
        sum(
            &worker,
            "lambda_worker_sandbox_kills_total",
            &[nodejs, ("reason", "timeout")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sum(
            &worker,
            "lambda_worker_runtime_stops_total",
            &[nodejs, ("reason", "replaced")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sum(&worker, "lambda_worker_runtime_capacity", &[nodejs]),
        Some(2.0)
    );
    // The killed process is replaced (two prewarmed, at least one more
    // started), and every instance started is stopped or alive: the two
    // the pool runs jobs on, and the spare kept for the next function.
    let worker = scrape_until(&stack, &url, "the replacement", |s| {
        let started = sum(s, "lambda_worker_runtime_starts_total", &[nodejs]).unwrap_or(0.0);
        let stopped = sum(s, "lambda_worker_runtime_stops_total", &[nodejs]).unwrap_or(0.0);
        let warm = sum(s, "lambda_worker_runtimes", &[nodejs, ("state", "warm")]);
        started >= 3.0
            && matches!(warm, Some(w) if (2.0..=3.0).contains(&w) && started - stopped == w)
            && sum(s, "lambda_worker_runtimes", &[nodejs, ("state", "busy")]) == Some(0.0)
    })
    .await;

    // No id, title or worker name ever becomes a label value.
    let mut secrets: Vec<String> = vec![
        adder,
        thrower,
        spinner,
        stack.prefix.clone(),
        "adder".into(),
        "thrower".into(),
        "spinner".into(),
        "calculator".into(),
    ];
    secrets.extend(job_ids);
    for sample in api.iter().chain(&dispatcher).chain(&worker) {
        for (label, value) in &sample.labels {
            assert!(
                value.parse::<Uuid>().is_err()
                    && !secrets.iter().any(|s| value.contains(s.as_str())),
                "unbounded label {label}={value} on {}",
                sample.name
            );
            if label == "language" {
                assert!(
                    ["nodejs", "python", "rust", "wasm", "unknown"].contains(&value.as_str()),
                    "{value}"
                );
            }
        }
    }
    stack.stop().await;
}
