//! Rate limits: a token bucket per caller and route class.
//!
//! Every `/api/v1` request belongs to a [`Class`]; each caller has a bucket per
//! class that holds a minute's worth of requests and refills continuously, so a
//! caller may burst up to the limit and then goes on at the limit's pace. An
//! authenticated caller is identified by its owner, an anonymous one by its
//! client address. A request finding its bucket empty is answered `429
//! RATE_LIMITED` with `Retry-After`; every limited answer carries
//! `X-RateLimit-Limit` and `X-RateLimit-Remaining`.
//!
//! With Redis the buckets live there and one Lua script refills and takes
//! atomically on Redis's clock, so every API instance shares them; without
//! Redis they live in this process. When Redis cannot be asked, requests are
//! served unlimited (`RATE_LIMIT_FAIL_OPEN=true`, the default) or answered 503.

use crate::{auth::Caller, cache::Cache, config::Config, error::ApiError, AppState};
use axum::{
    body::{Body, Bytes},
    extract::{ConnectInfo, FromRequest, MatchedPath, Request, State},
    http::{HeaderMap, HeaderValue, Method},
    middleware::Next,
    response::{IntoResponse, Response},
};
use schemas::ErrorCode;
use serde::Deserialize;
use serde_json::json;
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

const MINUTE_MS: f64 = 60_000.0;
const LOCAL_CAPACITY: usize = 100_000;
const WARN_EVERY_MS: u64 = 10_000;

/// Refills the bucket `KEYS[1]` at `ARGV[1]` tokens per minute (also its
/// size) on Redis's clock, then takes `ARGV[2]` tokens if it holds them.
/// Answers `{allowed (0|1), tokens left (floored), ms until the cost is there}`.
const TOKEN_BUCKET: &str = r"
local limit = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local per_ms = limit / 60000
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1])
local at = tonumber(state[2])
if tokens == nil or at == nil then
  tokens = limit
  at = now
end
if now > at then
  tokens = math.min(limit, tokens + (now - at) * per_ms)
  at = now
end
local allowed = 0
local wait = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  wait = math.ceil((cost - tokens) / per_ms)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', at)
redis.call('PEXPIRE', KEYS[1], 61000)
return {allowed, math.floor(tokens), wait}
";

/// What a request is limited as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// `initialize`, `execute`, job submission (single and batch) and retry.
    Execute,
    /// `GET /functions` and `GET /functions/{language_title}`.
    Functions,
    /// Reads of sessions and jobs, and cancels.
    Read,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Execute => "execute",
            Self::Functions => "functions",
            Self::Read => "read",
        }
    }

    /// The class of a request by its method and route template (with or
    /// without the `/api/v1` prefix).
    pub fn of(method: &Method, route: &str) -> Self {
        let route = route.strip_prefix("/api/v1").unwrap_or(route);
        if route == "/functions" || route.starts_with("/functions/") {
            Self::Functions
        } else if method == Method::POST {
            Self::Execute
        } else {
            Self::Read
        }
    }
}

/// The outcome of taking from a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Whole tokens left in the bucket.
    pub remaining: u64,
    /// When refused: how long until the request's cost is in the bucket.
    pub wait_ms: u64,
}

impl Decision {
    /// Whole seconds a refused caller should wait, at least 1.
    pub fn retry_after_seconds(&self) -> u64 {
        self.wait_ms.div_ceil(1000).max(1)
    }
}

/// A bucket kept in this process.
#[derive(Debug, Clone, Copy)]
struct LocalBucket {
    tokens: f64,
    at: Instant,
}

/// The limits of this API and the buckets of this process.
pub struct RateLimiter {
    disabled: bool,
    execute: u32,
    anonymous_execute: u32,
    functions: u32,
    read: u32,
    fail_open: bool,
    trust_forwarded_for: bool,
    script: redis::Script,
    local: Mutex<HashMap<String, LocalBucket>>,
    last_warning_ms: AtomicU64,
    started: Instant,
}

impl RateLimiter {
    pub fn new(config: &Config) -> Self {
        if config.rate_limit_disabled {
            tracing::warn!("RATE_LIMIT_DISABLED: every caller may send requests without limit");
        }
        Self {
            disabled: config.rate_limit_disabled,
            execute: config.rate_limit_execute_per_minute,
            anonymous_execute: config.rate_limit_anonymous_execute_per_minute,
            functions: config.rate_limit_functions_per_minute,
            read: config.rate_limit_read_per_minute,
            fail_open: config.rate_limit_fail_open,
            trust_forwarded_for: config.rate_limit_trust_forwarded_for,
            script: redis::Script::new(TOKEN_BUCKET),
            local: Mutex::new(HashMap::new()),
            last_warning_ms: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    /// Requests per minute of `class` for a caller; 0 means unlimited.
    pub fn limit(&self, class: Class, authenticated: bool) -> u32 {
        if self.disabled {
            return 0;
        }
        match class {
            Class::Execute if authenticated => self.execute,
            Class::Execute => self.anonymous_execute,
            Class::Functions => self.functions,
            Class::Read => self.read,
        }
    }

    /// Takes `cost` tokens from bucket `key` holding `limit` per minute:
    /// `None` when Redis could not be asked.
    pub async fn take(&self, cache: &Cache, key: &str, limit: u32, cost: u32) -> Option<Decision> {
        match cache {
            Cache::Redis(redis) => self.take_redis(redis, key, limit, cost).await,
            Cache::Local(_) => Some(self.take_local(key, limit, cost)),
        }
    }

    async fn take_redis(
        &self,
        redis: &crate::cache::Redis,
        key: &str,
        limit: u32,
        cost: u32,
    ) -> Option<Decision> {
        let taken = redis
            .run(|mut conn| async move {
                self.script
                    .key(key)
                    .arg(limit)
                    .arg(cost)
                    .invoke_async::<(i64, i64, i64)>(&mut conn)
                    .await
            })
            .await;
        let error = match taken {
            Ok((allowed, remaining, wait_ms)) => {
                return Some(Decision {
                    allowed: allowed == 1,
                    remaining: u64::try_from(remaining).unwrap_or(0),
                    wait_ms: u64::try_from(wait_ms).unwrap_or(0),
                })
            }
            Err(err) => err,
        };
        self.warn_unavailable(&error);
        None
    }

    fn take_local(&self, key: &str, limit: u32, cost: u32) -> Decision {
        let now = Instant::now();
        let mut buckets = self.local.lock().expect("rate limit lock");
        if buckets.len() >= LOCAL_CAPACITY && !buckets.contains_key(key) {
            // A bucket idle for a minute is full again: forgetting it changes nothing.
            buckets.retain(|_, b| now.duration_since(b.at) < Duration::from_secs(60));
            if buckets.len() >= LOCAL_CAPACITY {
                buckets.clear();
            }
        }
        let bucket = buckets.entry(key.to_owned()).or_insert(LocalBucket {
            tokens: f64::from(limit),
            at: now,
        });
        let elapsed_ms = now.duration_since(bucket.at).as_secs_f64() * 1000.0;
        let (tokens, decision) = refill_and_take(bucket.tokens, elapsed_ms, limit, cost);
        *bucket = LocalBucket { tokens, at: now };
        decision
    }

    /// Logs that Redis is away, at most every ten seconds.
    fn warn_unavailable(&self, error: &str) {
        let now = self.started.elapsed().as_millis() as u64 + WARN_EVERY_MS;
        let last = self.last_warning_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= WARN_EVERY_MS
            && self
                .last_warning_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            if self.fail_open {
                tracing::warn!(error, "redis unavailable; serving without rate limits");
            } else {
                tracing::error!(error, "redis unavailable; refusing rate-limited requests");
            }
        }
    }

    /// Who a bucket belongs to: the owner of an authenticated caller, else
    /// the client address.
    pub fn caller_key(
        &self,
        caller: Option<&Caller>,
        headers: &HeaderMap,
        peer: Option<IpAddr>,
    ) -> String {
        if let Some(caller) = caller.filter(|c| c.authenticated) {
            return format!("owner:{}", caller.owner);
        }
        let forwarded = self
            .trust_forwarded_for
            .then(|| last_forwarded_for(headers))
            .flatten();
        match forwarded.or(peer) {
            Some(ip) => format!("ip:{ip}"),
            None => "ip:unknown".to_owned(),
        }
    }
}

/// The bucket math: `tokens` left `elapsed_ms` ago in a bucket of `limit` per
/// minute, refilled, then `cost` taken if there. Returns the tokens after.
fn refill_and_take(tokens: f64, elapsed_ms: f64, limit: u32, cost: u32) -> (f64, Decision) {
    let limit_f = f64::from(limit);
    let per_ms = limit_f / MINUTE_MS;
    let tokens = (tokens + elapsed_ms.max(0.0) * per_ms).min(limit_f);
    let cost = f64::from(cost);
    if tokens >= cost {
        let left = tokens - cost;
        let decision = Decision {
            allowed: true,
            remaining: left.floor() as u64,
            wait_ms: 0,
        };
        (left, decision)
    } else {
        let decision = Decision {
            allowed: false,
            remaining: tokens.floor() as u64,
            wait_ms: ((cost - tokens) / per_ms).ceil() as u64,
        };
        (tokens, decision)
    }
}

/// The address the nearest proxy saw: the last valid entry of `X-Forwarded-For`.
fn last_forwarded_for(headers: &HeaderMap) -> Option<IpAddr> {
    let last = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .next_back()?;
    last.trim().parse().ok()
}

/// The middleware: limits every `/api/v1` request by its caller's bucket of
/// its class. Layered inside [`crate::auth::authenticate`], so the caller is known.
pub async fn limit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map_or_else(
        || request.uri().path().to_owned(),
        |p| p.as_str().to_owned(),
    );
    let class = Class::of(request.method(), &route);
    let caller = request.extensions().get::<Caller>();
    let limiter = &state.rate_limits;
    let limit = limiter.limit(class, caller.is_some_and(|c| c.authenticated));
    if limit == 0 {
        return next.run(request).await;
    }
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let who = limiter.caller_key(caller, request.headers(), peer);
    let is_batch = class == Class::Execute && route.ends_with("/jobs/batch");
    let (request, cost) = if is_batch {
        match batch_cost(request, &state).await {
            Ok(buffered) => buffered,
            Err(refusal) => return refusal.into_response(),
        }
    } else {
        (request, 1)
    };
    let key = format!(
        "{}:ratelimit:{}:{who}",
        state.subjects.prefix(),
        class.as_str()
    );
    let decision = limiter
        .take(&state.cache, &key, limit, cost.clamp(1, limit))
        .await;
    match decision {
        Some(decision) if decision.allowed => {
            let mut response = next.run(request).await;
            limit_headers(response.headers_mut(), limit, decision.remaining);
            response
        }
        Some(decision) => {
            let seconds = decision.retry_after_seconds();
            let error = ApiError {
                retry_after: Some(seconds),
                ..ApiError::new(
                    ErrorCode::RateLimited,
                    format!(
                        "rate limit of {limit} {} requests per minute exceeded; retry in {seconds} s",
                        class.as_str()
                    ),
                )
                .with_details(json!({"class": class.as_str(), "limit": limit, "retry_after": seconds}))
            };
            let mut response = error.into_response();
            limit_headers(response.headers_mut(), limit, decision.remaining);
            response
        }
        None if limiter.fail_open => next.run(request).await,
        None => ApiError::unavailable("rate limits cannot be checked right now", 1).into_response(),
    }
}

fn limit_headers(headers: &mut HeaderMap, limit: u32, remaining: u64) {
    headers.insert("x-ratelimit-limit", HeaderValue::from(limit));
    headers.insert("x-ratelimit-remaining", HeaderValue::from(remaining));
}

/// A batch costs one token per job it holds (at most a full bucket, so no
/// batch is refused for its size alone): reads the body to count them and
/// hands back the request with the body restored.
async fn batch_cost(request: Request, state: &AppState) -> Result<(Request, u32), ApiError> {
    #[derive(Deserialize)]
    struct Batch {
        jobs: Vec<serde::de::IgnoredAny>,
    }
    let (parts, body) = request.into_parts();
    let bytes = Bytes::from_request(Request::from_parts(parts.clone(), body), state)
        .await
        .map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(ErrorCode::PayloadTooLarge, "request body is too large")
            } else {
                ApiError::invalid_request(format!("cannot read request body: {rejection}"))
            }
        })?;
    let jobs = serde_json::from_slice::<Batch>(&bytes).map_or(1, |b| b.jobs.len());
    let cost = u32::try_from(jobs).unwrap_or(u32::MAX);
    Ok((Request::from_parts(parts, Body::from(bytes)), cost))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(trust_forwarded_for: bool) -> RateLimiter {
        let mut config = Config::from_defaults();
        config.rate_limit_trust_forwarded_for = trust_forwarded_for;
        RateLimiter::new(&config)
    }

    #[test]
    fn routes_fall_into_classes() {
        let cases = [
            (Method::POST, "/api/v1/initialize", Class::Execute),
            (Method::POST, "/api/v1/execute/{request_id}", Class::Execute),
            (Method::POST, "/api/v1/jobs", Class::Execute),
            (Method::POST, "/api/v1/jobs/batch", Class::Execute),
            (Method::POST, "/api/v1/jobs/{job_id}/retry", Class::Execute),
            (Method::GET, "/api/v1/functions", Class::Functions),
            (
                Method::GET,
                "/api/v1/functions/{language_title}",
                Class::Functions,
            ),
            (Method::GET, "/api/v1/sessions/{request_id}", Class::Read),
            (Method::GET, "/api/v1/jobs/{job_id}", Class::Read),
            (Method::GET, "/api/v1/jobs", Class::Read),
            (Method::DELETE, "/api/v1/jobs/{job_id}", Class::Read),
        ];
        for (method, route, class) in cases {
            assert_eq!(Class::of(&method, route), class, "{method} {route}");
        }
    }

    #[test]
    fn seed_defaults() {
        let limiter = limiter(false);
        assert_eq!(limiter.limit(Class::Execute, true), 100);
        assert_eq!(limiter.limit(Class::Execute, false), 10);
        assert_eq!(limiter.limit(Class::Functions, false), 60);
        assert_eq!(limiter.limit(Class::Functions, true), 60);
        let mut config = Config::from_defaults();
        config.rate_limit_disabled = true;
        assert_eq!(RateLimiter::new(&config).limit(Class::Execute, false), 0);
    }

    #[test]
    fn settings_parse() {
        use clap::Parser as _;
        let config = Config::parse_from([
            "api",
            "--rate-limit-fail-open",
            "false",
            "--rate-limit-disabled",
            "--rate-limit-functions-per-minute",
            "0",
        ]);
        assert!(!config.rate_limit_fail_open);
        assert!(config.rate_limit_disabled);
        assert_eq!(config.rate_limit_functions_per_minute, 0);
        assert!(Config::from_defaults().rate_limit_fail_open);
        assert_eq!(Config::from_defaults().cache_ttl, 300);
    }

    #[test]
    fn authenticated_callers_are_keyed_by_owner_others_by_address() {
        let peer: IpAddr = "192.0.2.7".parse().unwrap();
        let mut forwarded = HeaderMap::new();
        forwarded.insert(
            "x-forwarded-for",
            "203.0.113.9, 198.51.100.3".parse().unwrap(),
        );
        let alice = Caller {
            owner: "alice".into(),
            scopes: vec![],
            authenticated: true,
        };
        let anonymous = Caller::anonymous();

        let untrusting = limiter(false);
        assert_eq!(
            untrusting.caller_key(Some(&alice), &forwarded, Some(peer)),
            "owner:alice"
        );
        assert_eq!(
            untrusting.caller_key(Some(&anonymous), &forwarded, Some(peer)),
            "ip:192.0.2.7"
        );
        assert_eq!(
            untrusting.caller_key(None, &HeaderMap::new(), None),
            "ip:unknown"
        );

        let trusting = limiter(true);
        assert_eq!(
            trusting.caller_key(Some(&anonymous), &forwarded, Some(peer)),
            "ip:198.51.100.3"
        );
        let mut garbage = HeaderMap::new();
        garbage.insert("x-forwarded-for", "not-an-address".parse().unwrap());
        assert_eq!(
            trusting.caller_key(Some(&anonymous), &garbage, Some(peer)),
            "ip:192.0.2.7"
        );
    }

    #[test]
    fn a_bucket_bursts_to_its_limit_then_refills_at_its_pace() {
        // 60 per minute: one token per second.
        let (tokens, d) = refill_and_take(60.0, 0.0, 60, 60);
        assert!(d.allowed);
        assert_eq!((tokens, d.remaining), (0.0, 0));
        let (tokens, d) = refill_and_take(tokens, 0.0, 60, 1);
        assert!(!d.allowed);
        assert_eq!(d.wait_ms, 1000);
        assert_eq!(d.retry_after_seconds(), 1);
        let (tokens, d) = refill_and_take(tokens, 500.0, 60, 1);
        assert!(!d.allowed);
        assert_eq!(d.wait_ms, 500);
        let (_, d) = refill_and_take(tokens, 500.0, 60, 1);
        assert!(d.allowed);
        let (tokens, _) = refill_and_take(0.0, 3_600_000.0, 60, 0);
        assert_eq!(tokens, 60.0, "a bucket never holds more than its limit");
        let (_, d) = refill_and_take(0.0, 0.0, 10, 1);
        assert_eq!(d.retry_after_seconds(), 6);
    }

    #[test]
    fn the_in_process_buckets_are_separate_per_key() {
        let limiter = limiter(false);
        assert!(limiter.take_local("a", 2, 2).allowed);
        assert!(!limiter.take_local("a", 2, 1).allowed);
        assert!(limiter.take_local("b", 2, 1).allowed);
    }
}
