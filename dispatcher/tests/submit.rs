//! Direct NATS producers: `<prefix>.submit.<language_title>`.

mod support;

use async_nats::HeaderMap;
use serde_json::{json, Value};
use std::time::Duration;
use support::Harness;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

async fn request(h: &Harness, title: &str, headers: HeaderMap, payload: Vec<u8>) -> Value {
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        h.client
            .request_with_headers(h.subjects.submit(title), headers, payload.into()),
    )
    .await
    .expect("a reply")
    .expect("a responder");
    serde_json::from_slice(&reply.payload).unwrap()
}

#[tokio::test]
async fn submissions_are_stored_published_deduplicated_and_refusals_recorded() {
    let h = Harness::new().await;
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(h.app().await.run(shutdown.clone()));
    h.until_submissions_answered().await;

    let json_body = json!({"params": {"n": 21}}).to_string().into_bytes();
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", "order-17");
    let first = request(&h, support::TITLE, headers.clone(), json_body.clone()).await;
    assert_eq!(first["status"], "queued", "{first}");
    let job_id: Uuid = first["job_id"].as_str().unwrap().parse().unwrap();
    let again = request(&h, support::TITLE, headers, json_body).await;
    assert_eq!(
        again["job_id"], first["job_id"],
        "a repeated Nats-Msg-Id is the same job"
    );

    // MessagePack, with the producer's own job id, submitted twice.
    let own = Uuid::now_v7();
    let packed = schemas::codec::encode(&schemas::submit::SubmitRequest {
        params: Some(json!({"n": 1})),
        job_id: Some(own),
        request_id: None,
        script_content: Some("return 'packed';".into()),
        callback_url: None,
        context: Some(json!({"timeout_ms": 2000})),
    })
    .unwrap();
    let mut msgpack = HeaderMap::new();
    msgpack.insert("Content-Type", "application/msgpack");
    for _ in 0..2 {
        let reply = request(&h, "nodejs-packed", msgpack.clone(), packed.clone()).await;
        assert_eq!(reply["job_id"], own.to_string(), "{reply}");
    }
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&h.db)
        .await
        .unwrap();
    assert_eq!(total, 2);
    let stored = h.record(own).await;
    assert_eq!(stored["language_title"], "nodejs-packed");
    assert_eq!(h.record(job_id).await["status"], "queued");
    assert_eq!(h.jobs_in_stream().await, 2, "each job is published once");

    for (title, payload, code) in [
        (support::TITLE, "not json", "INVALID_REQUEST"),
        (support::TITLE, r#"{"params": [1]}"#, "INVALID_PARAMS"),
        (support::TITLE, r#"{"parms": {}}"#, "INVALID_REQUEST"),
        ("nodejs-unknown", r#"{"params": {}}"#, "NOT_FOUND"),
        ("cobol-x", r#"{"params": {}}"#, "INVALID_REQUEST"),
    ] {
        let reply = request(&h, title, HeaderMap::new(), payload.into()).await;
        assert_eq!(reply["error"]["code"], code, "{payload}: {reply}");
    }
    let refused: Vec<(String, Vec<u8>)> =
        sqlx::query_as("SELECT code, payload FROM rejected_submissions ORDER BY id")
            .fetch_all(&h.db)
            .await
            .unwrap();
    // The first refusal was the readiness probe above.
    let codes: Vec<&str> = refused.iter().skip(1).map(|(c, _)| c.as_str()).collect();
    assert_eq!(
        codes,
        [
            "INVALID_REQUEST",
            "INVALID_PARAMS",
            "INVALID_REQUEST",
            "NOT_FOUND",
            "INVALID_REQUEST"
        ]
    );
    assert_eq!(refused[1].1, b"not json");

    shutdown.cancel();
    running.await.unwrap().unwrap();
    h.stop().await;
}
