//! The result cache of synchronous executions.
//!
//! A successful result is kept for `CACHE_TTL` seconds under a key derived
//! from what decides it: the owner, the script (by hash), the parameters and
//! the session's context, both as canonical JSON (keys sorted), so two
//! sessions of the same script and context share results and key order never
//! matters. `X-Cache-Control: no-cache` skips the lookup (the fresh result
//! replaces the entry); `max-age=N` accepts only an entry stored less than N
//! seconds ago. The entries live in the [`Cache`] (Redis, else in-process);
//! when Redis is away every lookup misses and execution goes on uncached.

use crate::{cache::Cache, error::ApiError, session::Session};
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::{value::RawValue, Value};
use sha2::{Digest, Sha256};
use std::{
    fmt::Write as _,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// Results larger than this are not cached (the in-process cache counts entries, not bytes).
pub const MAX_CACHED_BYTES: usize = 256 * 1024;

/// What the caller asked of the cache with `X-Cache-Control`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Directive {
    /// Any entry still in the cache.
    Any,
    /// No lookup: run the script and store the fresh result.
    NoCache,
    /// Only an entry stored less than this many seconds ago.
    MaxAge(u64),
}

impl Directive {
    /// Reads `X-Cache-Control` (`no-cache`, `max-age=N`; unknown directives
    /// are ignored, `no-cache` wins). A malformed `max-age` is a 400.
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, ApiError> {
        let mut directive = Self::Any;
        for value in headers.get_all("x-cache-control") {
            let value = value
                .to_str()
                .map_err(|_| ApiError::invalid_request("X-Cache-Control must be ASCII"))?;
            for part in value.split(',').map(str::trim) {
                if part.eq_ignore_ascii_case("no-cache") {
                    return Ok(Self::NoCache);
                }
                let Some((name, seconds)) = part.split_once('=') else {
                    continue;
                };
                if name.trim().eq_ignore_ascii_case("max-age") {
                    let seconds = seconds.trim().parse::<u64>().map_err(|_| {
                        ApiError::invalid_request(format!(
                            "X-Cache-Control max-age must be a whole number of seconds, not {seconds:?}"
                        ))
                    })?;
                    directive = match directive {
                        Self::MaxAge(other) => Self::MaxAge(other.min(seconds)),
                        _ => Self::MaxAge(seconds),
                    };
                }
            }
        }
        Ok(directive)
    }
}

/// A cached result.
#[derive(Serialize, Deserialize)]
pub struct Entry {
    /// The result JSON, as the worker answered it.
    pub result: Box<RawValue>,
    /// The execution time, in milliseconds, of the run that produced it.
    pub execution_time: f64,
    /// When it was stored, in milliseconds since the Unix epoch.
    pub stored_at_ms: u64,
}

/// The cache key of running `session`'s script with `params_json`.
pub fn key(prefix: &str, session: &Session, params_json: &str) -> Result<String, ApiError> {
    let params: Value = serde_json::from_str(params_json)
        .map_err(|e| ApiError::invalid_request(format!("malformed params: {e}")))?;
    let context: Value = serde_json::from_str(&session.context_json).map_err(ApiError::internal)?;
    let mut material = String::new();
    for part in [&session.owner, &session.script_hash] {
        material.push_str(part);
        material.push('\n');
    }
    canonical(&params, &mut material);
    material.push('\n');
    canonical(&context, &mut material);
    let digest = Sha256::digest(material.as_bytes());
    Ok(format!("{prefix}:result:{digest:x}"))
}

/// Looks `key` up as `directive` allows; counts the lookup as a hit or a miss.
pub async fn lookup(
    cache: &Cache,
    metrics: &crate::metrics::Metrics,
    key: &str,
    directive: Directive,
) -> Option<Entry> {
    if directive == Directive::NoCache {
        return None;
    }
    let entry = cache
        .get(key)
        .await
        .and_then(|bytes| serde_json::from_slice::<Entry>(&bytes).ok())
        .filter(|entry| match directive {
            Directive::MaxAge(seconds) => {
                unix_ms().saturating_sub(entry.stored_at_ms) < seconds.saturating_mul(1000)
            }
            _ => true,
        });
    metrics.cache_lookup("result", entry.is_some());
    entry
}

/// Stores a successful result for `ttl` (nothing when `ttl` is zero or the
/// result is larger than [`MAX_CACHED_BYTES`]) without waiting for the
/// cache's answer: the write is queued on the shared connection before this
/// returns, so a later lookup of the same key comes after it, and the rest
/// of it finishes in the background.
pub async fn store(
    cache: &Arc<Cache>,
    key: String,
    result: &RawValue,
    execution_time: f64,
    ttl: Duration,
) {
    if ttl.is_zero() || result.get().len() > MAX_CACHED_BYTES {
        return;
    }
    let entry = EntryRef {
        result,
        execution_time,
        stored_at_ms: unix_ms(),
    };
    let Ok(bytes) = serde_json::to_vec(&entry) else {
        return;
    };
    let cache = Arc::clone(cache);
    let mut write = Box::pin(async move { cache.set(&key, bytes, ttl).await });
    if futures::poll!(write.as_mut()).is_pending() {
        tokio::spawn(write);
    }
}

#[derive(Serialize)]
struct EntryRef<'a> {
    result: &'a RawValue,
    execution_time: f64,
    stored_at_ms: u64,
}

/// Writes `value` as JSON with every object's keys sorted.
fn canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{}:", Value::String(key.clone()));
                canonical(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        scalar => {
            let _ = write!(out, "{scalar}");
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use schemas::ErrorCode;

    fn directive(values: &[&str]) -> Result<Directive, ApiError> {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append("x-cache-control", HeaderValue::from_str(v).unwrap());
        }
        Directive::from_headers(&headers)
    }

    #[test]
    fn directives() {
        assert_eq!(directive(&[]).unwrap(), Directive::Any);
        assert_eq!(directive(&["no-cache"]).unwrap(), Directive::NoCache);
        assert_eq!(directive(&["No-Cache"]).unwrap(), Directive::NoCache);
        assert_eq!(directive(&["max-age=30"]).unwrap(), Directive::MaxAge(30));
        assert_eq!(directive(&["max-age=0"]).unwrap(), Directive::MaxAge(0));
        assert_eq!(
            directive(&["max-age=30, no-cache"]).unwrap(),
            Directive::NoCache
        );
        assert_eq!(
            directive(&["max-age=30", "max-age=5"]).unwrap(),
            Directive::MaxAge(5)
        );
        assert_eq!(directive(&["private, x=1"]).unwrap(), Directive::Any);
        let err = directive(&["max-age=soon"]).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidRequest);
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let a: Value =
            serde_json::from_str(r#"{"b":1,"a":{"y":[1,{"d":2,"c":"x"}],"x":null}}"#).unwrap();
        let b: Value =
            serde_json::from_str(r#"{ "a": {"x": null, "y": [1, {"c": "x", "d": 2}]}, "b": 1 }"#)
                .unwrap();
        let (mut ca, mut cb) = (String::new(), String::new());
        canonical(&a, &mut ca);
        canonical(&b, &mut cb);
        assert_eq!(ca, r#"{"a":{"x":null,"y":[1,{"c":"x","d":2}]},"b":1}"#);
        assert_eq!(ca, cb);
    }
}
