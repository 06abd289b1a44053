//! `/metrics` on `WORKER_METRICS_ADDR`: executions, kills, acknowledgements
//! and the pool's instances, after real jobs from JetStream.

use futures::StreamExt;
use schemas::{codec, script_hash, Job, JobResult, Language, Subjects};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use workers::{App, Config};

const WAIT: Duration = Duration::from_secs(20);

fn job(script: &str, timeout_ms: u64, reply_to: &str) -> Job {
    Job {
        job_id: Uuid::now_v7(),
        request_id: None,
        language: Language::Nodejs,
        language_title: "nodejs-metered".into(),
        owner: "anonymous".into(),
        script_hash: script_hash(Language::Nodejs, script),
        script: script.into(),
        params_json: r#"{"a":2,"b":3}"#.into(),
        context_json: "{}".into(),
        timeout_ms,
        memory_mb: 128,
        deadline_ms: 0,
        reply_to: Some(reply_to.into()),
        report_events: false,
    }
}

/// `GET /metrics` over a plain connection; returns the status line and body.
async fn scrape(port: u16) -> (String, String) {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let request = "GET /metrics HTTP/1.1\r\nHost: worker\r\nConnection: close\r\n\r\n";
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("a response");
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

/// The value of the series `name{labels}` (labels in sorted order).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Every instance started is either stopped or alive: starts minus stops
/// is the warm and busy instances (and at least the prewarmed one, the
/// recycled one's and the killed one's replacements were started).
fn accounted(text: &str) -> bool {
    let sum = |prefix: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let started = sum("lambda_worker_runtime_starts_total{");
    let stopped = sum("lambda_worker_runtime_stops_total{");
    let alive = sum("lambda_worker_runtimes{");
    started >= 3.0 && started - stopped == alive
}

#[tokio::test]
async fn metrics_count_executions_kills_acks_and_pool_instances() {
    let mut config = Config::from_env();
    config.nats_prefix = format!("t{}", Uuid::new_v4().simple());
    config.languages = vec![Language::Nodejs];
    config.nodejs_pool_size = 1;
    config.max_uses = 2;
    // No spare: the count of processes below stays exact.
    config.spare_processes = 0;
    config.worker_id = format!("metered-{}", config.nats_prefix);
    config.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
    let subjects = Subjects::new(config.nats_prefix.clone());
    let client = async_nats::connect(&config.nats_url).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let replies = subjects.replies("metrics");
    let mut results = client.subscribe(replies.clone()).await.unwrap();
    let worker_id = config.worker_id.clone();

    let app = App::build(config).await.unwrap();
    let port = app.metrics_port().expect("metrics are served");
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(app.run(shutdown.clone()));
    let (status, text) = scrape(port).await;
    assert!(status.ends_with("200 OK"), "{status}");
    let nodejs = r#"language="nodejs""#;
    let series = |name: &str, extra: &str| format!("{name}{{{nodejs}{extra}}}");
    let acks = |kind: &str| format!(r#"lambda_worker_job_acks_total{{kind="{kind}",{nodejs}}}"#);
    assert_eq!(
        value(&text, &series("lambda_worker_runtime_starts_total", "")),
        Some(1.0),
        "the prewarmed process:\n{text}"
    );

    // Two results (then the process has run max_uses jobs), a script error,
    // a script killed at its timeout, and a message nobody can decode.
    let add = "return event.params.a + event.params.b;";
    let jobs = [
        job(add, 5_000, &replies),
        job(add, 5_000, &replies),
        job("throw new Error('no');", 5_000, &replies),
        job("while (true) {}", 300, &replies),
    ];
    for job in &jobs {
        js.publish(
            subjects.jobs(Language::Nodejs),
            codec::encode(job).unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    js.publish(subjects.jobs(Language::Nodejs), "garbage".into())
        .await
        .unwrap()
        .await
        .unwrap();
    for _ in &jobs {
        let message = tokio::time::timeout(WAIT, results.next())
            .await
            .expect("every job is answered")
            .unwrap();
        codec::decode::<JobResult>(&message.payload).unwrap();
    }

    let expected = [
        (
            series("lambda_worker_executions_total", r#",outcome="ok""#),
            2.0,
        ),
        (
            series(
                "lambda_worker_executions_total",
                r#",outcome="RUNTIME_ERROR""#,
            ),
            1.0,
        ),
        (
            series("lambda_worker_executions_total", r#",outcome="TIMEOUT""#),
            1.0,
        ),
        (
            series("lambda_worker_execution_duration_seconds_count", ""),
            4.0,
        ),
        (
            series("lambda_worker_sandbox_kills_total", r#",reason="timeout""#),
            1.0,
        ),
        (
            series("lambda_worker_sandbox_kills_total", r#",reason="memory""#),
            0.0,
        ),
        (acks("ack"), 4.0),
        (acks("term"), 1.0),
        (acks("nak"), 0.0),
        // Recycled after two jobs, evicted for the looping script (another
        // function than the throwing one), replaced after the kill.
        (
            series("lambda_worker_runtime_stops_total", r#",reason="evicted""#),
            1.0,
        ),
        (
            series("lambda_worker_runtime_stops_total", r#",reason="recycled""#),
            1.0,
        ),
        (
            series("lambda_worker_runtime_stops_total", r#",reason="replaced""#),
            1.0,
        ),
        (series("lambda_worker_runtimes", r#",state="warm""#), 1.0),
        (series("lambda_worker_runtimes", r#",state="busy""#), 0.0),
        (series("lambda_worker_runtime_capacity", ""), 1.0),
    ];
    let deadline = tokio::time::Instant::now() + WAIT;
    let text = loop {
        let (_, text) = scrape(port).await;
        let wrong: Vec<_> = expected
            .iter()
            .filter(|(series, n)| value(&text, series) != Some(*n))
            .collect();
        if wrong.is_empty() && accounted(&text) {
            break text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{wrong:?} never held, or instances are unaccounted for:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!text.contains(&worker_id), "no worker id in labels");
    assert!(!text.contains("metered"), "no Language-Title in labels");
    for job in &jobs {
        assert!(
            !text.contains(&job.job_id.to_string()),
            "no job id in labels"
        );
    }

    shutdown.cancel();
    tokio::time::timeout(WAIT, running).await.unwrap().unwrap();
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err(),
        "the endpoint closes with the worker"
    );
    js.delete_stream(subjects.jobs_stream()).await.unwrap();
}
