//! Faults around the dispatcher: every reported job ends with exactly one result.

mod support;

use schemas::JobResult;
use std::time::Duration;
use support::{services::PrivatePostgres, Harness};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const JOBS: i64 = 2000;

/// `count` queued jobs of `nodejs-double` (params `n` = 1..=count).
async fn insert_jobs(h: &Harness, count: i64) -> Vec<Uuid> {
    sqlx::query_scalar(
        "INSERT INTO jobs (job_id, owner, language, language_title, script_hash, params, context,
                           timeout_ms, memory_mb)
         SELECT gen_random_uuid(), 'anonymous', 'nodejs', 'nodejs-double', hash,
                jsonb_build_object('n', i), '{}', 5000, 128
         FROM generate_series(1, $1::bigint) AS i, (SELECT hash FROM scripts LIMIT 1) AS s
         ORDER BY i RETURNING job_id",
    )
    .bind(count)
    .fetch_all(&h.db)
    .await
    .unwrap()
}

async fn succeeded(h: &Harness) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status = 'succeeded'")
        .fetch_one(&h.db)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_dispatcher_restarted_mid_batch_records_every_result_once() {
    let mut h = Harness::new().await;
    h.config.events_batch = 50;
    let ids = insert_jobs(&h, JOBS).await;
    // Every job reported twice (a redelivered job that ran again).
    for round in 1..=2u32 {
        for (i, id) in ids.iter().enumerate() {
            let result =
                JobResult::success(*id, format!("{}", i * 10 + round as usize), 1.0, vec![]);
            h.report(*id, round, Some(result)).await;
        }
    }

    let first = CancellationToken::new();
    let running = tokio::spawn(h.app().await.run(first.clone()));
    support::eventually("some results recorded", Duration::from_secs(20), || async {
        succeeded(&h).await > 0
    })
    .await;
    first.cancel();
    running.await.unwrap().unwrap();
    let before = succeeded(&h).await;
    assert!(before < JOBS, "stopped mid-batch ({before} recorded)");

    let second = CancellationToken::new();
    let running = tokio::spawn(h.app().await.run(second.clone()));
    support::eventually("every result recorded", Duration::from_secs(30), || async {
        succeeded(&h).await == JOBS
    })
    .await;
    second.cancel();
    running.await.unwrap().unwrap();

    let rows: Vec<(Uuid, serde_json::Value)> = sqlx::query_as("SELECT job_id, result FROM jobs")
        .fetch_all(&h.db)
        .await
        .unwrap();
    let index: std::collections::HashMap<Uuid, usize> =
        ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    for (id, result) in rows {
        assert_eq!(
            result,
            serde_json::json!(index[&id] * 10 + 1),
            "the first report wins"
        );
    }
    h.stop().await;
}

#[tokio::test]
async fn events_wait_out_a_postgresql_outage() {
    let pg = PrivatePostgres::start().await;
    let h = Harness::on(support::nats_url(), pg.admin_url()).await;
    let ids = insert_jobs(&h, 300).await;
    let app = h.app().await;
    let events = h.js.get_stream(h.subjects.events_stream()).await.unwrap();
    pg.pause();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(app.run(shutdown.clone()));
    for (i, id) in ids.iter().enumerate() {
        h.report(
            *id,
            1,
            Some(JobResult::success(
                *id,
                format!("{}", 2 * (i + 1)),
                1.0,
                vec![],
            )),
        )
        .await;
    }
    // The dispatcher tried, failed, and gave the events back.
    support::eventually("a failed attempt", Duration::from_secs(20), || async {
        let info = events
            .consumer_info(h.subjects.events_consumer())
            .await
            .unwrap();
        info.num_redelivered > 0
    })
    .await;
    pg.resume().await;
    support::eventually("every result recorded", Duration::from_secs(30), || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM jobs WHERE status = 'succeeded'")
            .fetch_one(&h.db)
            .await
            .is_ok_and(|n| n == 300)
    })
    .await;
    let wrong: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE result::jsonb <> to_jsonb((params->>'n')::int * 2)",
    )
    .fetch_one(&h.db)
    .await
    .unwrap();
    assert_eq!(wrong, 0);
    shutdown.cancel();
    running.await.unwrap().unwrap();
    h.stop().await;
}

#[tokio::test]
async fn fire_and_forget_submissions_wait_out_a_postgresql_outage() {
    let pg = PrivatePostgres::start().await;
    let h = Harness::on(support::nats_url(), pg.admin_url()).await;
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(h.app().await.run(shutdown.clone()));
    h.until_submissions_answered().await;
    // A burst published without a reply subject, half of it while
    // PostgreSQL is down: nobody could be told to submit again.
    let publish = |from: i64, to: i64| {
        let h = &h;
        async move {
            for n in from..to {
                let body = serde_json::json!({"params": {"n": n}}).to_string();
                h.client
                    .publish(h.subjects.submit(support::TITLE), body.into())
                    .await
                    .unwrap();
            }
            h.client.flush().await.unwrap();
        }
    };
    publish(0, 500).await;
    pg.pause();
    publish(500, 1000).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    pg.resume().await;
    support::eventually(
        "every submission stored",
        Duration::from_secs(60),
        || async {
            sqlx::query_scalar::<_, i64>("SELECT count(DISTINCT params->>'n') FROM jobs")
                .fetch_one(&h.db)
                .await
                .is_ok_and(|n| n == 1000)
        },
    )
    .await;
    let refused: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM rejected_submissions WHERE subject LIKE '%nodejs-double'",
    )
    .fetch_one(&h.db)
    .await
    .unwrap();
    assert_eq!(refused, 0, "none was refused for the outage");
    shutdown.cancel();
    running.await.unwrap().unwrap();
    h.stop().await;
}
