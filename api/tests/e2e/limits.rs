//! Rate limits (token buckets per caller and route class) and the result cache.

use crate::support::{assert_error, free_port, Options, PrivateRedis, Stack, ADD};
use reqwest::{header::HeaderMap, RequestBuilder, StatusCode};
use serde_json::{json, Value};
use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

async fn metrics(stack: &Stack) -> String {
    let response = stack.http.get(stack.url("/metrics")).send().await.unwrap();
    response.text().await.unwrap()
}

async fn send(request: RequestBuilder) -> (StatusCode, HeaderMap, Value) {
    let response = request.send().await.expect("request");
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{status}: {text}"));
    (status, headers, body)
}

fn header(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.parse().ok()
}

/// A client whose requests come from another loopback address.
fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

fn execute_request(
    client: &reqwest::Client,
    stack: &Stack,
    id: &str,
    params: Value,
) -> RequestBuilder {
    client
        .post(stack.url(&format!("/api/v1/execute/{id}")))
        .header("Content-Type", "application/json")
        .body(json!({"params": params}).to_string())
}

/// Asserts a 429 with the contract's body, `Retry-After` and the limit
/// headers (`X-RateLimit-Remaining` 0); returns `Retry-After`.
fn assert_limited(status: StatusCode, headers: &HeaderMap, body: &Value, limit: u64) -> u64 {
    assert_refused(status, headers, body, limit, 0)
}

fn assert_refused(
    status: StatusCode,
    headers: &HeaderMap,
    body: &Value,
    limit: u64,
    remaining: u64,
) -> u64 {
    assert_error(status, body, StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED");
    assert_eq!(header(headers, "x-ratelimit-limit"), Some(limit), "{body}");
    assert_eq!(
        header(headers, "x-ratelimit-remaining"),
        Some(remaining),
        "{body}"
    );
    let retry_after = header(headers, "retry-after").expect("Retry-After");
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
    retry_after
}

#[tokio::test]
async fn an_empty_bucket_answers_429_with_retry_after_and_refills() {
    // 30 a minute: a burst of 30, then one every two seconds.
    let stack = Stack::start_with(Options {
        rate_limit_functions_per_minute: 30,
        ..Options::default()
    })
    .await;
    let functions = || stack.http.get(stack.url("/api/v1/functions"));
    for n in 1..=30u64 {
        let (status, headers, body) = send(functions()).await;
        assert_eq!(status, StatusCode::OK, "request {n}: {body}");
        assert_eq!(header(&headers, "x-ratelimit-limit"), Some(30));
        assert_eq!(header(&headers, "x-ratelimit-remaining"), Some(30 - n));
    }
    let (status, headers, body) = send(functions()).await;
    let retry_after = assert_limited(status, &headers, &body, 30);
    assert!(retry_after <= 2, "one token comes every 2 s: {retry_after}");
    assert_eq!(body["error"]["details"]["class"], "functions", "{body}");
    let (status, _, _) = send(
        stack
            .http
            .get(stack.url("/api/v1/functions/nodejs-calculator")),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "one bucket per class"
    );

    // After Retry-After the bucket holds a token again, and only one.
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let (status, headers, body) = send(functions()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(header(&headers, "x-ratelimit-remaining"), Some(0));
    let (status, headers, body) = send(functions()).await;
    assert_limited(status, &headers, &body, 30);

    // Other classes have buckets of their own.
    let id = stack.session("nodejs-add", ADD).await;
    let (status, body) = stack.execute(&id, json!({"a": 1, "b": 2})).await;
    assert_eq!(
        (status, &body["result"]),
        (StatusCode::OK, &json!(3)),
        "{body}"
    );
    let (status, _) = stack.get(&format!("/api/v1/sessions/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    stack.stop().await;
}

#[tokio::test]
async fn anonymous_callers_have_a_bucket_per_client_address() {
    let stack = Stack::start_with(Options {
        // Callers without credentials.
        auth_disabled: true,
        rate_limit_anonymous_execute_per_minute: 3,
        ..Options::default()
    })
    .await;
    // initialize and two executes take the three tokens.
    let id = stack.session("nodejs-add", ADD).await;
    for a in 0..2 {
        let (status, body) = stack.execute(&id, json!({"a": a, "b": 1})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let local = &stack.http;
    let (status, headers, body) = send(execute_request(local, &stack, &id, json!({"a": 9}))).await;
    let retry_after = assert_limited(status, &headers, &body, 3);
    assert!(retry_after >= 15, "one token every 20 s: {retry_after}");

    // A forged X-Forwarded-For does not get a caller a new bucket by default.
    let forged = execute_request(local, &stack, &id, json!({"a": 9}))
        .header("X-Forwarded-For", "203.0.113.50");
    let (status, _, _) = send(forged).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);

    // Another client address has its own bucket.
    let other = client_from("127.0.0.2");
    let (status, headers, body) = send(execute_request(
        &other,
        &stack,
        &id,
        json!({"a": 4, "b": 4}),
    ))
    .await;
    assert_eq!(
        (status, &body["result"]),
        (StatusCode::OK, &json!(8)),
        "{body}"
    );
    assert_eq!(header(&headers, "x-ratelimit-remaining"), Some(2));
    stack.stop().await;
}

#[tokio::test]
async fn behind_a_trusted_proxy_callers_are_told_apart_by_x_forwarded_for() {
    let stack = Stack::start_with(Options {
        // Callers without credentials.
        auth_disabled: true,
        worker: false,
        rate_limit_functions_per_minute: 2,
        rate_limit_trust_forwarded_for: true,
        ..Options::default()
    })
    .await;
    let from = |client: &str| {
        stack
            .http
            .get(stack.url("/api/v1/functions"))
            .header("X-Forwarded-For", format!("198.51.100.77, {client}"))
    };
    for _ in 0..2 {
        assert_eq!(send(from("203.0.113.1")).await.0, StatusCode::OK);
    }
    let (status, headers, body) = send(from("203.0.113.1")).await;
    assert_limited(status, &headers, &body, 2);
    let (status, headers, _) = send(from("203.0.113.2")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&headers, "x-ratelimit-remaining"), Some(1));
    stack.stop().await;
}

#[tokio::test]
async fn a_batch_costs_a_token_per_job_and_at_most_a_full_bucket() {
    let stack = Stack::start_with(Options {
        // Callers without credentials.
        auth_disabled: true,
        rate_limit_anonymous_execute_per_minute: 5,
        ..Options::default()
    })
    .await;
    let job = json!({"language_title": "nodejs-calculator", "params": {"operation": "add", "values": [1, 2]}});
    let batch = |client: &reqwest::Client, n: usize| {
        client
            .post(stack.url("/api/v1/jobs/batch"))
            .header("Content-Type", "application/json")
            .body(json!({"jobs": vec![job.clone(); n]}).to_string())
    };
    let (status, headers, body) = send(batch(&stack.http, 3)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["jobs"].as_array().map(Vec::len), Some(3), "{body}");
    assert_eq!(header(&headers, "x-ratelimit-remaining"), Some(2));
    let (status, headers, body) = send(batch(&stack.http, 3)).await;
    assert_refused(status, &headers, &body, 5, 2);
    // Nothing of a refused batch was accepted.
    let batches: Value = stack.get("/api/v1/jobs?per_page=1000").await.1;
    assert_eq!(batches["total"], 3, "{batches}");

    // A batch larger than the bucket empties it instead of being refused forever.
    let other = client_from("127.0.0.3");
    let (status, headers, body) = send(batch(&other, 40)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(header(&headers, "x-ratelimit-remaining"), Some(0));
    let (status, _, _) = send(batch(&other, 1)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    stack.stop().await;
}

#[tokio::test]
async fn when_redis_stops_requests_are_served_without_limits() {
    let mut redis = PrivateRedis::start();
    let stack = Stack::start_with(Options {
        redis_url: Some(redis.url.clone()),
        rate_limit_functions_per_minute: 2,
        ..Options::default()
    })
    .await;
    let functions = || stack.http.get(stack.url("/api/v1/functions"));
    for _ in 0..2 {
        assert_eq!(send(functions()).await.0, StatusCode::OK);
    }
    let (status, headers, body) = send(functions()).await;
    assert_limited(status, &headers, &body, 2);

    redis.stop();
    for _ in 0..5 {
        let (status, headers, body) = send(functions()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(headers.get("x-ratelimit-remaining").is_none());
    }
    let id = stack.session("nodejs-add", ADD).await;
    let (status, body) = stack.execute(&id, json!({"a": 2, "b": 5})).await;
    assert_eq!(
        (status, &body["result"]),
        (StatusCode::OK, &json!(7)),
        "{body}"
    );
    stack.stop().await;
}

#[tokio::test]
async fn failing_closed_without_redis_answers_503() {
    let stack = Stack::start_with(Options {
        worker: false,
        redis_url: Some(format!("redis://127.0.0.1:{}", free_port())),
        rate_limit_fail_open: false,
        ..Options::default()
    })
    .await;
    let (status, headers, body) = send(stack.http.get(stack.url("/api/v1/functions"))).await;
    assert_error(
        status,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "UNAVAILABLE",
    );
    assert!(headers.get("retry-after").is_some());
    let (status, _) = stack.get("/health").await;
    assert_eq!(status, StatusCode::OK, "health is not rate limited");
    stack.stop().await;
}

/// Sleeps, then answers the sum and the time it ran: a real run is slow and
/// has a new `at`, a cached answer is fast and repeats the old one.
const SLOW_SUM: &str = "await new Promise(r => setTimeout(r, 300)); \
    if (event.params.fail) throw new Error('asked to fail'); \
    return {sum: event.params.a + event.params.b, at: Date.now()};";

async fn timed_execute(
    stack: &Stack,
    id: &str,
    params: Value,
    cache_control: Option<&str>,
) -> (Value, Duration) {
    let mut request = execute_request(&stack.http, stack, id, params);
    if let Some(value) = cache_control {
        request = request.header("X-Cache-Control", value);
    }
    let started = Instant::now();
    let (status, _, body) = send(request).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    (body, started.elapsed())
}

#[tokio::test]
async fn an_identical_execute_is_answered_from_the_result_cache() {
    let stack = Stack::start_with(Options {
        cache_ttl_seconds: 60,
        ..Options::default()
    })
    .await;
    let id = stack.session("nodejs-slow-sum", SLOW_SUM).await;
    let (first, took) = timed_execute(&stack, &id, json!({"a": 1, "b": 2}), None).await;
    assert_eq!(first["cached"], false, "{first}");
    assert_eq!(first["result"]["sum"], 3);
    assert!(took >= Duration::from_millis(300));

    // The same params, in any key order: the stored result, fast.
    let (hit, took) = timed_execute(&stack, &id, json!({"b": 2, "a": 1}), None).await;
    assert_eq!(hit["cached"], true, "{hit}");
    assert_eq!(hit["result"], first["result"]);
    assert_eq!(hit["execution_time"], first["execution_time"]);
    assert!(took < Duration::from_millis(250), "a hit took {took:?}");

    // Another session of the same script and context shares the entry.
    let twin = stack.session("nodejs-slow-sum", SLOW_SUM).await;
    let (shared, _) = timed_execute(&stack, &twin, json!({"a": 1, "b": 2}), None).await;
    assert_eq!(shared["cached"], true, "{shared}");
    assert_eq!(shared["request_id"], twin.as_str());

    // Other params miss.
    let (other, _) = timed_execute(&stack, &id, json!({"a": 2, "b": 2}), None).await;
    assert_eq!(
        (&other["cached"], &other["result"]["sum"]),
        (&json!(false), &json!(4))
    );

    // no-cache runs the script and refreshes the entry.
    let (fresh, took) = timed_execute(&stack, &id, json!({"a": 1, "b": 2}), Some("no-cache")).await;
    assert_eq!(fresh["cached"], false, "{fresh}");
    assert!(took >= Duration::from_millis(300));
    assert_ne!(fresh["result"]["at"], first["result"]["at"]);
    let (hit, _) = timed_execute(&stack, &id, json!({"a": 1, "b": 2}), None).await;
    assert_eq!(hit["result"], fresh["result"], "the entry was refreshed");

    // max-age: an entry younger than it is taken, an older one is not.
    let (young, _) = timed_execute(&stack, &id, json!({"a": 1, "b": 2}), Some("max-age=60")).await;
    assert_eq!(young["cached"], true, "{young}");
    let (zero, _) = timed_execute(&stack, &id, json!({"a": 1, "b": 2}), Some("max-age=0")).await;
    assert_eq!(zero["cached"], false, "{zero}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (stale, _) = timed_execute(&stack, &id, json!({"a": 1, "b": 2}), Some("max-age=1")).await;
    assert_eq!(
        stale["cached"], false,
        "an entry over a second old: {stale}"
    );
    let (bad_status, bad) = stack
        .post_json(
            &format!("/api/v1/execute/{id}"),
            &[("X-Cache-Control", "max-age=soon")],
            json!({"params": {"a": 1, "b": 2}}),
        )
        .await;
    assert_error(bad_status, &bad, StatusCode::BAD_REQUEST, "INVALID_REQUEST");

    // Hits count as executions of the session, and as cache hits.
    let (_, session) = stack.get(&format!("/api/v1/sessions/{id}")).await;
    assert_eq!(session["execution_count"], 8, "{session}");
    let metrics = metrics(&stack).await;
    for line in [
        r#"lambda_cache_lookups_total{cache="result",result="hit"} 4"#,
        r#"lambda_cache_lookups_total{cache="result",result="miss"} 4"#,
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }

    // Asynchronous executions always run.
    let (status, queued) = stack
        .post_json(
            &format!("/api/v1/execute/{id}?async=true"),
            &[],
            json!({"params": {"a": 1, "b": 2}}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{queued}");
    let job = queued["job_id"].as_str().expect("job_id");
    let done = stack
        .wait_job(job, Duration::from_secs(10), |j| j["status"] == "succeeded")
        .await;
    assert_ne!(done["result"]["at"], fresh["result"]["at"], "{done}");
    stack.stop().await;
}

#[tokio::test]
async fn entries_expire_after_cache_ttl() {
    let stack = Stack::start_with(Options {
        cache_ttl_seconds: 1,
        ..Options::default()
    })
    .await;
    let id = stack.session("nodejs-slow-sum", SLOW_SUM).await;
    let (first, _) = timed_execute(&stack, &id, json!({"a": 1, "b": 1}), None).await;
    let stored = Instant::now();
    assert_eq!(first["cached"], false);
    let (hit, _) = timed_execute(&stack, &id, json!({"a": 1, "b": 1}), None).await;
    assert_eq!(hit["cached"], true, "{hit}");
    loop {
        let (answer, _) = timed_execute(&stack, &id, json!({"a": 1, "b": 1}), None).await;
        if answer["cached"] == false {
            assert_ne!(answer["result"]["at"], first["result"]["at"]);
            break;
        }
        assert!(
            stored.elapsed() < Duration::from_millis(1500),
            "entry outlived its TTL"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        stored.elapsed() >= Duration::from_millis(900),
        "expired early"
    );
    stack.stop().await;
}

#[tokio::test]
async fn failures_are_not_cached_and_a_zero_ttl_caches_nothing() {
    let stack = Stack::start_with(Options {
        cache_ttl_seconds: 60,
        ..Options::default()
    })
    .await;
    let id = stack.session("nodejs-slow-sum", SLOW_SUM).await;
    for _ in 0..2 {
        let (status, body) = stack
            .execute(&id, json!({"a": 1, "b": 1, "fail": true}))
            .await;
        assert_error(
            status,
            &body,
            StatusCode::INTERNAL_SERVER_ERROR,
            "RUNTIME_ERROR",
        );
    }
    let metrics = metrics(&stack).await;
    assert!(
        metrics.contains(r#"lambda_executions_total{language="nodejs",outcome="RUNTIME_ERROR"} 2"#),
        "both failures ran: {metrics}"
    );
    stack.stop().await;

    let stack = Stack::start().await;
    let id = stack.session("nodejs-slow-sum", SLOW_SUM).await;
    for _ in 0..2 {
        let (answer, _) = timed_execute(&stack, &id, json!({"a": 1, "b": 1}), None).await;
        assert_eq!(answer["cached"], false, "{answer}");
    }
    stack.stop().await;
}

#[tokio::test]
async fn when_redis_stops_executions_go_on_uncached() {
    let mut redis = PrivateRedis::start();
    let stack = Stack::start_with(Options {
        redis_url: Some(redis.url.clone()),
        cache_ttl_seconds: 60,
        ..Options::default()
    })
    .await;
    let id = stack.session("nodejs-slow-sum", SLOW_SUM).await;
    let params = json!({"a": 5, "b": 5});
    let (first, _) = timed_execute(&stack, &id, params.clone(), None).await;
    let (hit, _) = timed_execute(&stack, &id, params.clone(), None).await;
    assert_eq!(
        (&first["cached"], &hit["cached"]),
        (&json!(false), &json!(true))
    );

    redis.stop();
    for _ in 0..2 {
        let (answer, took) = timed_execute(&stack, &id, params.clone(), None).await;
        assert_eq!(answer["cached"], false, "{answer}");
        assert_eq!(answer["result"]["sum"], 10);
        assert!(took >= Duration::from_millis(300));
    }
    stack.stop().await;
}

#[tokio::test]
async fn without_redis_limits_and_results_live_in_process() {
    let stack = Stack::start_with(Options {
        redis_url: None,
        cache_ttl_seconds: 60,
        rate_limit_functions_per_minute: 2,
        ..Options::default()
    })
    .await;
    let id = stack.session("nodejs-slow-sum", SLOW_SUM).await;
    let (first, _) = timed_execute(&stack, &id, json!({"a": 0, "b": 0}), None).await;
    let (hit, _) = timed_execute(&stack, &id, json!({"a": 0, "b": 0}), None).await;
    assert_eq!(
        (&first["cached"], &hit["cached"]),
        (&json!(false), &json!(true))
    );
    assert_eq!(hit["result"], first["result"]);

    let functions = || stack.http.get(stack.url("/api/v1/functions"));
    for _ in 0..2 {
        assert_eq!(send(functions()).await.0, StatusCode::OK);
    }
    let (status, headers, body) = send(functions()).await;
    assert_limited(status, &headers, &body, 2);
    stack.stop().await;
}

#[tokio::test]
async fn authenticated_callers_have_a_bucket_per_owner() {
    let stack = Stack::start_with(Options {
        worker: false,
        rate_limit_functions_per_minute: 2,
        ..Options::default()
    })
    .await;
    let scopes = ["read:functions"];
    let alice = crate::support::client(Some(stack.token("alice", &scopes)));
    let alice_again = crate::support::client(Some(stack.token("alice", &scopes)));
    let bob = crate::support::client(Some(stack.token("bob", &scopes)));
    let functions = |client: &reqwest::Client| client.get(stack.url("/api/v1/functions"));
    for _ in 0..2 {
        let (status, _, body) = send(functions(&alice)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    // A new token of the same owner shares the owner's bucket.
    let (status, headers, body) = send(functions(&alice_again)).await;
    assert_limited(status, &headers, &body, 2);
    let (status, headers, body) = send(functions(&bob)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(header(&headers, "x-ratelimit-remaining"), Some(1));
    stack.stop().await;
}
