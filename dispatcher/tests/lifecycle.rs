//! The dispatcher's job life cycle, one step at a time: events recorded
//! exactly once, lost jobs republished, exhausted ones buried.

mod support;

use futures::StreamExt;
use schemas::{ErrorCode, JobError, JobResult};
use std::time::Duration;
use support::Harness;

const WAIT: Duration = Duration::from_millis(300);

#[tokio::test]
async fn a_job_reported_many_times_commits_exactly_one_result() {
    let h = Harness::new().await;
    let app = h.app().await;
    let recorder = app.event_recorder();
    let id = h.insert_job(4).await;
    let mut results = h
        .client
        .subscribe(h.subjects.results(support::TITLE))
        .await
        .unwrap();
    h.client.flush().await.unwrap();

    h.report(id, 1, None).await;
    assert_eq!(recorder.process_next(WAIT).await.unwrap(), 1);
    let running = h.record(id).await;
    assert_eq!(running["status"], "running", "{running}");
    assert!(running["started_at"].is_string());

    // A redelivered job ran twice and both runs reported, plus a late start.
    h.report(
        id,
        1,
        Some(JobResult::success(id, "8".into(), 1.5, vec!["log".into()])),
    )
    .await;
    h.report(
        id,
        2,
        Some(JobResult::success(id, "999".into(), 2.0, vec![])),
    )
    .await;
    h.report(id, 2, None).await;
    while recorder.process_next(WAIT).await.unwrap() > 0 {}
    let done = h.record(id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["result"], 8, "the first result wins: {done}");
    assert_eq!(done["logs"], serde_json::json!(["log"]));
    assert_eq!(done["execution_time"], 1.5);

    // A failure reported afterwards changes nothing either.
    let failure = JobResult::failure(id, JobError::new(ErrorCode::RuntimeError, "x"), 1.0, vec![]);
    h.report(id, 3, Some(failure)).await;
    while recorder.process_next(WAIT).await.unwrap() > 0 {}
    assert_eq!(h.record(id).await, done);

    let published = tokio::time::timeout(Duration::from_secs(5), results.next())
        .await
        .expect("the terminal record is published")
        .unwrap();
    let record: serde_json::Value = serde_json::from_slice(&published.payload).unwrap();
    assert_eq!(record, done);
    h.stop().await;
}

#[tokio::test]
async fn a_result_postgresql_would_refuse_holds_back_no_other_job() {
    let h = Harness::new().await;
    let recorder = h.app().await.event_recorder();
    let mut ids = Vec::new();
    for n in 0..8 {
        ids.push(h.insert_job(n).await);
    }
    let (nul, broken) = (h.insert_job(100).await, h.insert_job(101).await);
    // Valid JSON that jsonb refuses, in the result and in the logs.
    let with_nul = JobResult::success(nul, r#"{"s":"a\u0000b"}"#.into(), 1.0, vec!["x\0y".into()]);
    h.report(nul, 1, Some(with_nul)).await;
    // Not JSON at all: a worker that is not ours published it.
    h.report(
        broken,
        1,
        Some(JobResult::success(broken, "{".into(), 1.0, vec![])),
    )
    .await;
    for (n, id) in ids.iter().enumerate() {
        let result = JobResult::success(*id, (2 * n).to_string(), 1.0, vec![]);
        h.report(*id, 1, Some(result)).await;
    }
    tokio::time::timeout(Duration::from_secs(10), async {
        while recorder.process_next(WAIT).await.unwrap() > 0 {}
    })
    .await
    .expect("the events are recorded");

    for (n, id) in ids.iter().enumerate() {
        let record = h.record(*id).await;
        assert_eq!(record["status"], "succeeded", "{record}");
        assert_eq!(record["result"], 2 * n, "{record}");
    }
    let kept = h.record(nul).await;
    assert_eq!(kept["status"], "succeeded", "{kept}");
    assert_eq!(kept["result"]["s"], "a\0b", "stored as given: {kept}");
    assert_eq!(kept["logs"][0], "x\0y", "{kept}");
    let refused = h.record(broken).await;
    assert_eq!(refused["status"], "failed", "{refused}");
    assert_eq!(refused["error"]["code"], "RUNTIME_ERROR", "{refused}");
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(message.contains("could not be stored"), "{message}");
    h.stop().await;
}

#[tokio::test]
async fn timeouts_and_script_errors_are_terminal_statuses() {
    let h = Harness::new().await;
    let recorder = h.app().await.event_recorder();
    let (slow, broken) = (h.insert_job(1).await, h.insert_job(2).await);
    let timeout = JobError::new(ErrorCode::Timeout, "timed out after 5000 ms");
    h.report(
        slow,
        1,
        Some(JobResult::failure(slow, timeout, 5000.0, vec![])),
    )
    .await;
    let thrown = JobError::new(ErrorCode::RuntimeError, "boom")
        .with_details(&serde_json::json!({"line": 1}));
    h.report(
        broken,
        1,
        Some(JobResult::failure(broken, thrown, 3.0, vec![])),
    )
    .await;
    while recorder.process_next(WAIT).await.unwrap() > 0 {}
    let slow = h.record(slow).await;
    assert_eq!(
        (slow["status"].as_str(), slow["error"]["code"].as_str()),
        (Some("timed_out"), Some("TIMEOUT"))
    );
    let broken = h.record(broken).await;
    assert_eq!(broken["status"], "failed");
    assert_eq!(broken["error"]["details"]["line"], 1, "{broken}");
    h.stop().await;
}

#[tokio::test]
async fn the_sweeper_republishes_lost_jobs_once_and_buries_exhausted_ones() {
    let h = Harness::new().await;
    let app = h.app().await;
    let mut sweeper = app.sweeper();
    let lost = h.insert_job(1).await;

    let swept = sweeper.sweep_once().await.unwrap();
    assert_eq!(swept.republished, 1, "{swept:?}");
    assert_eq!(h.jobs_in_stream().await, 1);
    // Its message is now in the stream: the next sweeps leave it to JetStream.
    sqlx::query("UPDATE jobs SET updated_at = now() - interval '1 hour'")
        .execute(&h.db)
        .await
        .unwrap();
    let swept = sweeper.sweep_once().await.unwrap();
    assert_eq!((swept.republished, swept.waiting), (0, 1), "{swept:?}");
    assert_eq!(h.jobs_in_stream().await, 1, "no duplicate publish");

    // The job used up its deliveries without a worker finishing it.
    sqlx::query(
        "UPDATE jobs SET status = 'running', attempts = 5, updated_at = now() - interval '1 hour'",
    )
    .execute(&h.db)
    .await
    .unwrap();
    let swept = sweeper.sweep_once().await.unwrap();
    assert_eq!(swept.dead, 1, "{swept:?}");
    let dead = h.record(lost).await;
    assert_eq!(dead["status"], "dead", "{dead}");
    assert_eq!(dead["error"]["code"], "INTERNAL_ERROR");
    assert_eq!(h.jobs_in_stream().await, 0, "its message is removed");
    h.stop().await;
}

#[tokio::test]
async fn events_that_keep_coming_delay_a_sweep_but_do_not_stop_it() {
    let h = Harness::new().await;
    let app = h.app().await;
    let mut sweeper = app.sweeper();
    sweeper.after = Duration::from_secs(1);
    h.insert_job(1).await;
    // An event nobody has recorded yet: the lost job's result could be it.
    h.report(uuid::Uuid::now_v7(), 1, None).await;
    let swept = sweeper.sweep_once().await.unwrap();
    assert_eq!(
        swept.republished, 0,
        "waits for the events first: {swept:?}"
    );
    assert_eq!(h.jobs_in_stream().await, 0);
    // The events are still there a sweep interval later: it sweeps anyway.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let swept = sweeper.sweep_once().await.unwrap();
    assert_eq!(swept.republished, 1, "{swept:?}");
    assert_eq!(h.jobs_in_stream().await, 1);
    h.stop().await;
}

#[tokio::test]
async fn a_max_deliveries_advisory_makes_the_job_dead() {
    let h = Harness::new().await;
    let app = h.app().await;
    let id = h.insert_job(1).await;
    assert_eq!(app.sweeper().sweep_once().await.unwrap().republished, 1);
    let seq: i64 = sqlx::query_scalar("SELECT published_seq FROM jobs WHERE job_id = $1")
        .bind(id)
        .fetch_one(&h.db)
        .await
        .unwrap();
    let advisory = serde_json::json!({
        "type": "io.nats.jetstream.advisory.v1.max_deliver",
        "stream": h.subjects.jobs_stream(), "consumer": "workers-nodejs",
        "stream_seq": seq, "deliveries": 5,
    });
    app.dead_letters()
        .handle_advisory(advisory.to_string().as_bytes())
        .await
        .unwrap();
    let dead = h.record(id).await;
    assert_eq!(
        (dead["status"].as_str(), dead["attempts"].as_i64()),
        (Some("dead"), Some(5)),
        "{dead}"
    );
    assert_eq!(h.jobs_in_stream().await, 0);
    h.stop().await;
}
