//! Asynchronous jobs: submit, poll, list, cancel, batches, idempotency.

use crate::support::{assert_error, Options, Stack, ADD};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::{collections::HashMap, time::Duration};

const WAIT: Duration = Duration::from_secs(20);

fn terminal(job: &Value) -> bool {
    !matches!(job["status"].as_str(), Some("queued" | "running"))
}

#[tokio::test]
async fn execute_async_answers_202_and_the_job_completes() {
    let stack = Stack::start().await;
    let id = stack.session("nodejs-calculator", ADD).await;
    let response = stack
        .http
        .post(stack.url(&format!("/api/v1/execute/{id}")))
        .header("Prefer", "respond-async")
        .body(json!({"params": {"a": 5, "b": 3}}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "queued");
    let job_id = body["job_id"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/api/v1/jobs/{job_id}"));

    let job = stack.wait_job(&job_id, WAIT, terminal).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["result"], 8);
    assert_eq!(job["attempts"], 1);
    assert_eq!(job["request_id"], id.as_str());
    assert!(
        job["started_at"].is_string() && job["finished_at"].is_string(),
        "{job}"
    );
    assert!(
        job["execution_time"].as_f64().is_some_and(|t| t >= 0.0),
        "{job}"
    );
    // A quick job reports only its result; its start is still recorded.
    let at =
        |field: &str| chrono::DateTime::parse_from_rfc3339(job[field].as_str().unwrap()).unwrap();
    assert!(
        at("created_at") <= at("started_at") && at("started_at") <= at("finished_at"),
        "{job}"
    );

    let (status, body) = stack
        .post_json(
            &format!("/api/v1/execute/{id}?async=true"),
            &[],
            json!({"params": {"a": 1, "b": 2}}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let job = stack
        .wait_job(body["job_id"].as_str().unwrap(), WAIT, terminal)
        .await;
    assert_eq!(job["result"], 3, "{job}");
    stack.stop().await;
}

#[tokio::test]
async fn failures_and_timeouts_are_terminal_with_their_error() {
    let stack = Stack::start().await;
    let (s, init) = stack
        .initialize("nodejs-throws", "throw new Error('boom');", json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{init}");
    let (_, thrown) = stack
        .post_json(
            "/api/v1/jobs",
            &[],
            json!({"language_title": "nodejs-throws"}),
        )
        .await;
    let job = stack
        .wait_job(thrown["job_id"].as_str().unwrap(), WAIT, terminal)
        .await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["code"], "RUNTIME_ERROR", "{job}");
    assert!(
        job["error"]["message"].as_str().unwrap().contains("boom"),
        "{job}"
    );
    assert_eq!(job["attempts"], 1, "script errors are not retried: {job}");

    let (s, init) = stack
        .initialize(
            "nodejs-sleepy",
            "await new Promise(r => setTimeout(r, 5000)); return 1;",
            json!({"timeout_ms": 300}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{init}");
    let (_, sleepy) = stack
        .post_json(
            "/api/v1/jobs",
            &[],
            json!({"request_id": init["request_id"]}),
        )
        .await;
    let job = stack
        .wait_job(sleepy["job_id"].as_str().unwrap(), WAIT, terminal)
        .await;
    assert_eq!(job["status"], "timed_out", "{job}");
    assert_eq!(job["error"]["code"], "TIMEOUT", "{job}");
    stack.stop().await;
}

#[tokio::test]
async fn a_batch_accepts_valid_jobs_rejects_invalid_ones_and_lists_them() {
    let stack = Stack::start().await;
    let session = stack
        .session("nodejs-double", "return event.params.n * 2;")
        .await;
    let jobs = json!([
        {"language_title": "nodejs-double", "params": {"n": 1}},
        {"request_id": session, "params": {"n": 2}},
        {"language_title": "nodejs-missing", "params": {}},
        {"params": {"n": 3}},
        {"request_id": session, "params": [1]},
        {"request_id": session, "params": {"n": 4}, "callback_url": "ftp://x"},
        "not an object",
    ]);
    let (status, body) = stack
        .post_json("/api/v1/jobs/batch", &[], json!({"jobs": jobs}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let batch_id = body["batch_id"].as_str().unwrap().to_owned();
    let accepted: Vec<u64> = body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["index"].as_u64().unwrap())
        .collect();
    assert_eq!(accepted, [0, 1]);
    let rejected: Vec<(u64, &str)> = body["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["index"].as_u64().unwrap(), r["code"].as_str().unwrap()))
        .collect();
    assert_eq!(
        rejected,
        [
            (2, "NOT_FOUND"),
            (3, "INVALID_REQUEST"),
            (4, "INVALID_PARAMS"),
            (5, "INVALID_REQUEST"),
            (6, "INVALID_REQUEST")
        ]
    );
    for (job, n) in body["jobs"].as_array().unwrap().iter().zip([2, 4]) {
        let done = stack
            .wait_job(job["job_id"].as_str().unwrap(), WAIT, terminal)
            .await;
        assert_eq!(done["result"], n, "{done}");
        assert_eq!(done["batch_id"], batch_id.as_str());
    }
    let (status, list) = stack
        .get(&format!(
            "/api/v1/jobs?batch_id={batch_id}&status=succeeded"
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list["total"], 2, "{list}");
    assert_eq!(list["jobs"].as_array().unwrap().len(), 2);
    let (status, body) = stack
        .get(&format!("/api/v1/jobs?batch_id={batch_id}&status=bogus"))
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "INVALID_REQUEST");

    let (status, body) = stack
        .post_json("/api/v1/jobs/batch", &[], json!({"jobs": [{"params": {}}]}))
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    let too_many: Vec<Value> = (0..10_001).map(|_| json!({})).collect();
    let (status, body) = stack
        .post_json("/api/v1/jobs/batch", &[], json!({"jobs": too_many}))
        .await;
    assert_error(
        status,
        &body,
        StatusCode::PAYLOAD_TOO_LARGE,
        "PAYLOAD_TOO_LARGE",
    );
    stack.stop().await;
}

#[tokio::test]
async fn ten_thousand_jobs_in_one_request_all_complete_correctly() {
    let stack = Stack::start().await;
    stack
        .session("nodejs-square", "return event.params.i * event.params.i;")
        .await;
    let jobs: Vec<Value> = (0..10_000)
        .map(|i| json!({"language_title": "nodejs-square", "params": {"i": i}}))
        .collect();
    let (status, body) = stack
        .post_json("/api/v1/jobs/batch", &[], json!({"jobs": jobs}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(body["rejected"], json!([]));
    let expected: HashMap<String, u64> = body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            let i = j["index"].as_u64().unwrap();
            (j["job_id"].as_str().unwrap().to_owned(), i * i)
        })
        .collect();
    assert_eq!(expected.len(), 10_000);
    let batch = body["batch_id"].as_str().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        let (_, list) = stack
            .get(&format!(
                "/api/v1/jobs?batch_id={batch}&status=succeeded&per_page=1"
            ))
            .await;
        if list["total"] == 10_000 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not all jobs finished: {}",
            list["total"]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut seen = 0;
    for page in 1..=10 {
        let (_, list) = stack
            .get(&format!(
                "/api/v1/jobs?batch_id={batch}&page={page}&per_page=1000"
            ))
            .await;
        for job in list["jobs"].as_array().unwrap() {
            let id = job["job_id"].as_str().unwrap();
            assert_eq!(job["result"], expected[id], "{job}");
            assert_eq!(job["attempts"], 1, "{job}");
            seen += 1;
        }
    }
    assert_eq!(seen, 10_000);
    stack.stop().await;
}

#[tokio::test]
async fn an_idempotency_key_returns_the_first_job() {
    let stack = Stack::start().await;
    stack.session("nodejs-calculator", ADD).await;
    let body = json!({"language_title": "nodejs-calculator", "params": {"a": 1, "b": 1}});
    let (status, first) = stack
        .post_json("/api/v1/jobs", &[("Idempotency-Key", "k-1")], body.clone())
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    let (status, again) = stack
        .post_json("/api/v1/jobs", &[("Idempotency-Key", "k-1")], body.clone())
        .await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["job_id"], first["job_id"]);
    let (_, other) = stack
        .post_json("/api/v1/jobs", &[("Idempotency-Key", "k-2")], body.clone())
        .await;
    assert_ne!(other["job_id"], first["job_id"]);
    let (_, list) = stack.get("/api/v1/jobs").await;
    assert_eq!(list["total"], 2, "{list}");

    // A key first used more than 24 h ago starts a new job.
    let db = sqlx::PgPool::connect(&stack.database_url).await.unwrap();
    sqlx::query("UPDATE jobs SET created_at = created_at - interval '25 hours' WHERE job_id = $1")
        .bind(
            first["job_id"]
                .as_str()
                .unwrap()
                .parse::<uuid::Uuid>()
                .unwrap(),
        )
        .execute(&db)
        .await
        .unwrap();
    db.close().await;
    let (status, later) = stack
        .post_json("/api/v1/jobs", &[("Idempotency-Key", "k-1")], body)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{later}");
    assert_ne!(later["job_id"], first["job_id"]);
    stack.stop().await;
}

#[tokio::test]
async fn cancelling_stops_queued_and_running_jobs() {
    let stack = Stack::start().await;
    let slow = stack
        .session(
            "nodejs-slow",
            "await new Promise(r => setTimeout(r, 20000)); return 'late';",
        )
        .await;
    let (_, running) = stack
        .post_json("/api/v1/jobs", &[], json!({"request_id": slow}))
        .await;
    let running = running["job_id"].as_str().unwrap().to_owned();
    stack
        .wait_job(&running, WAIT, |j| j["status"] == "running")
        .await;
    let pids = stack.node_pids();
    let (status, record) = stack.delete(&format!("/api/v1/jobs/{running}")).await;
    assert_eq!(status, StatusCode::OK, "{record}");
    assert_eq!(record["status"], "cancelled");
    // The instance running it is killed and replaced, so the pool is free again.
    let deadline = tokio::time::Instant::now() + WAIT;
    while stack.node_pids().iter().all(|p| pids.contains(p)) || stack.node_pids().len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the running instance was not replaced"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, job) = stack.get(&format!("/api/v1/jobs/{running}")).await;
    assert_eq!(job["status"], "cancelled", "{job}");
    assert!(job.get("result").is_none(), "{job}");

    let (status, again) = stack.delete(&format!("/api/v1/jobs/{running}")).await;
    assert_eq!(
        (status, &again["status"]),
        (StatusCode::OK, &json!("cancelled"))
    );
    let (status, body) = stack
        .delete(&format!("/api/v1/jobs/{}", uuid::Uuid::now_v7()))
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "NOT_FOUND");
    let (status, body) = stack.get("/api/v1/jobs/not-a-uuid").await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "NOT_FOUND");
    stack.stop().await;
}

#[tokio::test]
async fn a_queued_job_cancelled_before_any_worker_takes_it_never_runs() {
    let stack = Stack::start_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    stack.session("nodejs-calculator", ADD).await;
    let (status, body) = stack
        .post_json(
            "/api/v1/jobs",
            &[],
            json!({"language_title": "nodejs-calculator", "params": {"a": 1, "b": 2}}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = body["job_id"].as_str().unwrap();
    let (_, job) = stack.get(&format!("/api/v1/jobs/{id}")).await;
    assert_eq!(job["status"], "queued", "{job}");
    let (status, record) = stack.delete(&format!("/api/v1/jobs/{id}")).await;
    assert_eq!(
        (status, &record["status"]),
        (StatusCode::OK, &json!("cancelled")),
        "{record}"
    );
    stack.stop().await;
}

#[tokio::test]
async fn private_callback_urls_are_refused_unless_allowed() {
    let stack = Stack::start_with(Options {
        callback_allow_private: false,
        worker: false,
        ..Options::default()
    })
    .await;
    stack.session("nodejs-calculator", ADD).await;
    for url in [
        "http://127.0.0.1:9/x",
        "http://169.254.169.254/latest",
        "http://localhost/",
    ] {
        let (status, body) = stack
            .post_json(
                "/api/v1/jobs",
                &[("X-Callback-Url", url)],
                json!({"language_title": "nodejs-calculator"}),
            )
            .await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    }
    let (_, list) = stack.get("/api/v1/jobs").await;
    assert_eq!(list["total"], 0, "refused jobs are not stored: {list}");
    stack.stop().await;
}

#[tokio::test]
async fn only_dead_jobs_can_be_retried_and_a_retry_runs_them_again() {
    let stack = Stack::start().await;
    stack.session("nodejs-calculator", ADD).await;
    let (_, body) = stack
        .post_json(
            "/api/v1/jobs",
            &[],
            json!({"language_title": "nodejs-calculator", "params": {"a": 2, "b": 2}}),
        )
        .await;
    let id = body["job_id"].as_str().unwrap().to_owned();
    stack.wait_job(&id, WAIT, terminal).await;
    let (status, body) = stack
        .post_json(&format!("/api/v1/jobs/{id}/retry"), &[], json!({}))
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "INVALID_REQUEST");

    // As the dispatcher leaves a job JetStream gave up on.
    let db = sqlx::PgPool::connect(&stack.database_url).await.unwrap();
    sqlx::query("UPDATE jobs SET status = 'dead', result = NULL WHERE job_id = $1")
        .bind(id.parse::<uuid::Uuid>().unwrap())
        .execute(&db)
        .await
        .unwrap();
    db.close().await;
    let (_, dead) = stack.get(&format!("/api/v1/jobs/{id}")).await;
    assert_eq!(dead["status"], "dead");
    let (status, body) = stack
        .post_json(&format!("/api/v1/jobs/{id}/retry"), &[], json!({}))
        .await;
    assert_eq!(
        (status, &body["status"]),
        (StatusCode::ACCEPTED, &json!("queued")),
        "{body}"
    );
    let job = stack.wait_job(&id, WAIT, terminal).await;
    assert_eq!(
        (&job["status"], &job["result"]),
        (&json!("succeeded"), &json!(4)),
        "{job}"
    );
    let (status, body) = stack
        .post_json(
            &format!("/api/v1/jobs/{}/retry", uuid::Uuid::now_v7()),
            &[],
            json!({}),
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "NOT_FOUND");
    stack.stop().await;
}

#[tokio::test]
async fn the_terminal_record_is_posted_to_the_callback_url() {
    use axum::{body::Bytes, routing::post, Router};
    let stack = Stack::start().await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    let app = Router::new().route(
        "/hook",
        post(move |body: Bytes| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(body);
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let id = stack.session("nodejs-calculator", ADD).await;
    let response = stack
        .http
        .post(stack.url(&format!("/api/v1/execute/{id}?async=true")))
        .header("X-Callback-Url", &hook)
        .body(json!({"params": {"a": 20, "b": 22}}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let job_id = response.json::<Value>().await.unwrap()["job_id"].clone();
    let body = tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("the callback arrives")
        .unwrap();
    let record: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(record["job_id"], job_id);
    assert_eq!(
        (&record["status"], &record["result"]),
        (&json!("succeeded"), &json!(42))
    );
    let (_, stored) = stack
        .get(&format!("/api/v1/jobs/{}", job_id.as_str().unwrap()))
        .await;
    assert_eq!(record, stored);
    server.abort();
    stack.stop().await;
}

#[tokio::test]
async fn jobs_published_on_nats_belong_to_the_submit_owner() {
    let stack = Stack::start().await;
    // Registered by the default caller, who is also SUBMIT_OWNER here.
    stack
        .session("nodejs-double", "return event.params.n * 2;")
        .await;
    let nats = async_nats::connect(crate::support::nats_url())
        .await
        .unwrap();
    let subject = schemas::Subjects::new(&stack.prefix).submit("nodejs-double");
    let reply = nats
        .request(subject, json!({"params": {"n": 21}}).to_string().into())
        .await
        .expect("the dispatcher answers");
    let reply: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(reply["status"], "queued", "{reply}");
    let job_id = reply["job_id"].as_str().unwrap().to_owned();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let job = loop {
        let (status, job) = stack.get(&format!("/api/v1/jobs/{job_id}")).await;
        assert_eq!(status, StatusCode::OK, "its owner reads it: {job}");
        if job["status"] == "succeeded" {
            break job;
        }
        assert!(tokio::time::Instant::now() < deadline, "{job}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(job["result"], 42);
    let other = crate::support::client(Some(stack.token("bob", &["execute:all"])));
    let status = other
        .get(stack.url(&format!("/api/v1/jobs/{job_id}")))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "another owner does not see it"
    );
    stack.stop().await;
}
