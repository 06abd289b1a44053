//! The whole worker against a real NATS server with JetStream: jobs in,
//! results and heartbeats out.

use futures::StreamExt;
use schemas::{codec, script_hash, Job, JobResult, Language, Subjects, WorkerHeartbeat};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use workers::{App, Config};

const WAIT: Duration = Duration::from_secs(20);

fn job(script: &str, params: &str, reply_to: String) -> Job {
    Job {
        job_id: Uuid::now_v7(),
        request_id: None,
        language: Language::Nodejs,
        language_title: "nodejs-calculator".into(),
        owner: "anonymous".into(),
        script_hash: script_hash(Language::Nodejs, script),
        script: script.into(),
        params_json: params.into(),
        context_json: "{}".into(),
        timeout_ms: 5_000,
        memory_mb: 128,
        deadline_ms: 0,
        reply_to: Some(reply_to),
        report_events: false,
    }
}

#[tokio::test]
async fn runs_jobs_from_jetstream_and_announces_itself() {
    let mut config = Config::from_env();
    config.nats_prefix = format!("t{}", Uuid::new_v4().simple());
    config.nodejs_pool_size = 2;
    config.heartbeat_ms = 200;
    let subjects = Subjects::new(config.nats_prefix.clone());
    let client = async_nats::connect(&config.nats_url).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let mut heartbeats = client.subscribe(subjects.heartbeat()).await.unwrap();
    let replies = subjects.replies("test");
    let mut results = client.subscribe(replies.clone()).await.unwrap();

    let app = App::build(config).await.unwrap();
    let handle = app.handle();
    assert_eq!(handle.runtime_pids(Language::Nodejs).len(), 2);
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(app.run(shutdown.clone()));

    let heartbeat = tokio::time::timeout(WAIT, heartbeats.next())
        .await
        .unwrap()
        .unwrap();
    let heartbeat: WorkerHeartbeat = codec::decode(&heartbeat.payload).unwrap();
    assert_eq!(heartbeat.worker_id, handle.worker_id());
    assert_eq!(heartbeat.runtimes[0].language, Language::Nodejs);
    assert_eq!(heartbeat.runtimes[0].capacity, 2);
    assert_eq!(heartbeat.ttl_ms, 600);
    assert!(!heartbeat.stopping);

    let add = job(
        "return event.params.a + event.params.b;",
        r#"{"a":5,"b":3}"#,
        replies.clone(),
    );
    let failing = job("throw new Error('no');", "{}", replies.clone());
    let mut expired = job("return 'too late';", "{}", replies.clone());
    expired.deadline_ms = 1;
    for job in [&expired, &add, &failing] {
        js.publish(
            subjects.jobs(Language::Nodejs),
            codec::encode(job).unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    // Undecodable jobs are dropped, and do not stop the worker.
    js.publish(subjects.jobs(Language::Nodejs), "garbage".into())
        .await
        .unwrap()
        .await
        .unwrap();

    let mut answers = Vec::new();
    while answers.len() < 2 {
        let message = tokio::time::timeout(WAIT, results.next())
            .await
            .unwrap()
            .unwrap();
        answers.push(codec::decode::<JobResult>(&message.payload).unwrap());
    }
    let answer = |id| answers.iter().find(|r| r.job_id == id).expect("answered");
    let added = answer(add.job_id);
    assert_eq!(added.result_json.as_deref(), Some("8"));
    assert_eq!(added.worker_id, handle.worker_id());
    assert!(added.execution_time_ms > 0.0);
    let error = answer(failing.job_id).error.as_ref().unwrap();
    assert_eq!(error.code, schemas::ErrorCode::RuntimeError);
    assert!(answers.iter().all(|r| r.job_id != expired.job_id));

    // The work queue is empty once every job was acked or terminated.
    let stream_name = subjects.jobs_stream();
    tokio::time::timeout(WAIT, async {
        loop {
            let mut stream = js.get_stream(&stream_name).await.unwrap();
            if stream.info().await.unwrap().state.messages == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("every job is settled");

    shutdown.cancel();
    tokio::time::timeout(WAIT, running).await.unwrap().unwrap();
    let last = tokio::time::timeout(WAIT, async {
        loop {
            let message = heartbeats.next().await.unwrap();
            let heartbeat: WorkerHeartbeat = codec::decode(&message.payload).unwrap();
            if heartbeat.stopping {
                return heartbeat;
            }
        }
    })
    .await
    .expect("a stopping heartbeat");
    assert_eq!(last.worker_id, handle.worker_id());
    assert!(handle.runtime_pids(Language::Nodejs).is_empty());

    js.delete_stream(&stream_name).await.unwrap();
}

#[tokio::test]
async fn refuses_runtimes_it_cannot_start() {
    let mut config = Config::from_env();
    config.languages = vec![Language::Nodejs, Language::Rust];
    config.rustc = "/no/such/rustc".to_owned();
    let error = App::build(config).await.err().expect("refused");
    assert!(
        format!("{error:#}").contains("WORKER_RUSTC=/no/such/rustc"),
        "{error:#}"
    );

    let mut config = Config::from_env();
    config.languages = vec![Language::Wasm];
    config.wasm_concurrency = 0;
    let error = App::build(config).await.err().expect("refused");
    assert!(
        error.to_string().contains("WORKER_WASM_CONCURRENCY"),
        "{error}"
    );
}
