//! One request as it is logged: what the request said, what the answer was,
//! every text masked and bounded before it leaves the request path.

use axum::{
    body::{Body, HttpBody},
    extract::{ConnectInfo, Request},
    http::{header, HeaderMap},
    response::Response,
};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::net::SocketAddr;
use uuid::Uuid;

/// JSON answers up to this size are read for the session, job and error they name.
const SNIFF_LIMIT: usize = 16 * 1024;
const MAX_PATH: usize = 2048;
const MAX_HEADER_VALUE: usize = 1024;
const MAX_HEADERS: usize = 64;
const MAX_MESSAGE: usize = 4096;
const MAX_STACK: usize = 16 * 1024;

/// What inner layers noted while the request ran.
#[derive(Default)]
pub(super) struct Notes {
    pub(super) owner: Option<String>,
    pub(super) failure: Option<String>,
}

/// A `request_logs` row, with its `error_logs` row when it failed server-side.
pub(super) struct Entry {
    pub(super) id: Uuid,
    pub(super) created_at: DateTime<Utc>,
    pub(super) method: String,
    pub(super) route: String,
    pub(super) path: String,
    pub(super) status: i32,
    pub(super) duration_ms: f64,
    pub(super) owner: Option<String>,
    pub(super) request_id: Option<Uuid>,
    pub(super) job_id: Option<Uuid>,
    pub(super) language_title: Option<String>,
    pub(super) client_ip: Option<String>,
    pub(super) user_agent: Option<String>,
    pub(super) headers_json: String,
    pub(super) error: Option<ErrorEntry>,
}

/// The error of an answer >= 400.
pub(super) struct ErrorEntry {
    /// The `error_logs` row's id, fixed here so that a retried write is idempotent.
    pub(super) id: Uuid,
    pub(super) code: String,
    pub(super) message: String,
    /// Whether it also goes to `error_logs` (5xx, internal error, panic).
    pub(super) server_side: bool,
    pub(super) stack: Option<String>,
    pub(super) details_json: Option<String>,
}

/// The fields of a small JSON answer that say what it was about.
#[derive(Deserialize, Default)]
struct Sniffed {
    request_id: Option<Value>,
    job_id: Option<Value>,
    language_title: Option<Value>,
    error: Option<SniffedError>,
}

#[derive(Deserialize)]
struct SniffedError {
    code: Option<String>,
    message: Option<String>,
    details: Option<Value>,
}

impl Entry {
    /// What the request itself says.
    pub(super) fn begin(request: &Request, route: String) -> Self {
        let headers = request.headers();
        let path = request
            .uri()
            .path_and_query()
            .map_or_else(|| request.uri().path(), |p| p.as_str());
        let params = path_params(&route, request.uri().path());
        let param = |name: &str| params.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
        Self {
            id: Uuid::now_v7(),
            created_at: Utc::now(),
            method: request.method().as_str().to_owned(),
            path: clean(path, MAX_PATH),
            request_id: param("request_id").and_then(|v| v.parse().ok()),
            job_id: param("job_id").and_then(|v| v.parse().ok()),
            language_title: text_header(headers, "language-title"),
            route,
            status: 0,
            duration_ms: 0.0,
            owner: None,
            client_ip: request
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip().to_string()),
            user_agent: text_header(headers, header::USER_AGENT.as_str()),
            headers_json: headers_json(headers),
            error: None,
        }
    }

    /// Completes the entry from the answer, which it gives back unchanged.
    pub(super) async fn finish(&mut self, response: Response, notes: Notes) -> Response {
        self.status = i32::from(response.status().as_u16());
        self.owner = notes.owner;
        let (response, sniffed) = sniff(response).await;
        let sniffed = sniffed.unwrap_or_default();
        let uuid = |v: Option<Value>| v.and_then(|v| v.as_str()?.parse::<Uuid>().ok());
        self.request_id = self.request_id.or(uuid(sniffed.request_id));
        self.job_id = self.job_id.or(uuid(sniffed.job_id));
        if let Some(Value::String(lt)) = sniffed.language_title {
            self.language_title.get_or_insert(clean(&lt, 256));
        }
        let server_side = self.status >= 500 || notes.failure.is_some();
        if self.status >= 400 || server_side {
            let error = sniffed.error;
            let details = error.as_ref().and_then(|e| e.details.clone());
            let stack = notes.failure.or_else(|| {
                details
                    .as_ref()
                    .and_then(|d| d.get("stack"))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            });
            self.error = Some(ErrorEntry {
                id: Uuid::now_v7(),
                code: error
                    .as_ref()
                    .and_then(|e| e.code.clone())
                    .unwrap_or_else(|| format!("HTTP_{}", self.status)),
                message: clean(
                    error
                        .as_ref()
                        .and_then(|e| e.message.as_deref())
                        .unwrap_or_default(),
                    MAX_MESSAGE,
                ),
                server_side,
                stack: stack.map(|s| clean(&s, MAX_STACK)),
                details_json: details.and_then(|d| details_json(&d)),
            });
        }
        response
    }
}

/// Reads a small JSON answer (already in memory) and rebuilds it.
async fn sniff(response: Response) -> (Response, Option<Sniffed>) {
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let small = response
        .body()
        .size_hint()
        .exact()
        .is_some_and(|n| n <= SNIFF_LIMIT as u64);
    if !is_json || !small {
        return (response, None);
    }
    let (mut parts, body) = response.into_parts();
    match axum::body::to_bytes(body, SNIFF_LIMIT).await {
        Ok(bytes) => {
            let sniffed = serde_json::from_slice(&bytes).ok();
            (Response::from_parts(parts, Body::from(bytes)), sniffed)
        }
        Err(err) => {
            tracing::warn!(error = %err, "answer body unreadable");
            parts.headers.remove(header::CONTENT_LENGTH);
            (Response::from_parts(parts, Body::empty()), None)
        }
    }
}

/// The values of the `{name}` segments of a route template in a path.
fn path_params<'a>(template: &'a str, path: &'a str) -> Vec<(&'a str, &'a str)> {
    template
        .split('/')
        .zip(path.split('/'))
        .filter_map(|(t, p)| Some((t.strip_prefix('{')?.strip_suffix('}')?, p)))
        .collect()
}

/// Masks secrets, drops NULs (PostgreSQL text cannot hold them) and bounds the length.
fn clean(text: &str, max: usize) -> String {
    let masked = schemas::redact::text(text);
    let mut out: String = masked.chars().filter(|c| *c != '\0').collect();
    if out.len() > max {
        let mut end = max;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
    }
    out
}

fn text_header(headers: &HeaderMap, name: &str) -> Option<String> {
    let value = headers.get(name)?.to_str().ok()?;
    Some(clean(
        &schemas::redact::header(name, value),
        MAX_HEADER_VALUE,
    ))
}

/// The request headers as a JSON object, credentials masked.
fn headers_json(headers: &HeaderMap) -> String {
    let mut object = Map::new();
    for name in headers.keys().take(MAX_HEADERS) {
        let values: Vec<String> = headers
            .get_all(name)
            .iter()
            .map(|v| schemas::redact::header(name.as_str(), &String::from_utf8_lossy(v.as_bytes())))
            .collect();
        let value = clean(&values.join(", "), MAX_HEADER_VALUE);
        object.insert(name.as_str().to_owned(), Value::String(value));
    }
    Value::Object(object).to_string()
}

/// An error's details as stored: masked, valid JSON, bounded (else dropped).
fn details_json(details: &Value) -> Option<String> {
    if details.is_null() {
        return None;
    }
    let text = details.to_string();
    let masked = schemas::redact::text(&text);
    // Masking may leave a bare `***` where a number was: store that as text.
    let value: Value =
        serde_json::from_str(&masked).unwrap_or_else(|_| Value::String(masked.into_owned()));
    let json = value.to_string();
    (json.len() <= MAX_STACK && !json.contains("\\u0000")).then_some(json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_params_follow_the_template() {
        assert_eq!(
            path_params("/api/v1/execute/{request_id}", "/api/v1/execute/abc"),
            vec![("request_id", "abc")]
        );
        assert!(path_params("unmatched", "/x/y").is_empty());
    }

    #[test]
    fn headers_are_masked_and_kept_as_json() {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", "Bearer tok-1".parse().unwrap());
        headers.insert("x-api-key", "key-2".parse().unwrap());
        headers.insert("x-callback-url", "http://u:pw-3@h/x".parse().unwrap());
        let json = headers_json(&headers);
        for secret in ["tok-1", "key-2", "pw-3"] {
            assert!(!json.contains(secret), "{json}");
        }
        let value: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["authorization"], "Bearer ***");
    }

    #[test]
    fn details_stay_valid_json_after_masking() {
        let json = details_json(&serde_json::json!({"token": 12345, "line": 3})).unwrap();
        assert!(!json.contains("12345"), "{json}");
        serde_json::from_str::<Value>(&json).unwrap();
    }

    #[test]
    fn clean_bounds_on_a_char_boundary() {
        assert_eq!(clean("ééé", 3), "é");
        assert_eq!(clean("a\0b", 10), "ab");
    }
}
