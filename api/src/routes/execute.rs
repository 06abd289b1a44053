//! `POST /execute/{request_id}`: runs a session's script with new parameters
//! and answers with its result.

use super::{jobs, sessions::parse_session_id};
use crate::{
    auth::Caller,
    error::{ApiError, ApiResult},
    extract::JsonObject,
    result_cache::{self, Directive},
    session, AppState,
};
use axum::{
    extract::{Path, Query, State},
    http::{header, HeaderMap},
    response::{IntoResponse, Response},
    routing::post,
    Router,
};
use chrono::Utc;
use schemas::{ErrorCode, Job};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use uuid::Uuid;

pub(super) fn router() -> Router<AppState> {
    Router::new().route("/execute/{request_id}", post(execute))
}

#[derive(Deserialize, utoipa::ToSchema)]
struct ExecuteBody {
    /// The script's `params`: a JSON object.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    params: Option<Box<RawValue>>,
}

/// `?async=true` asks for a job handle instead of the result.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ExecuteQuery {
    /// `true` answers `202` with a job instead of the result.
    #[serde(default, rename = "async")]
    asynchronous: Option<String>,
}

impl ExecuteQuery {
    /// Whether the caller asked for `202` and a job (`?async=true` or
    /// `Prefer: respond-async`).
    fn wants_async(&self, headers: &HeaderMap) -> bool {
        let query = matches!(self.asynchronous.as_deref(), Some("true" | "1" | ""));
        let prefer = headers.get_all("prefer").iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|p| p.trim().eq_ignore_ascii_case("respond-async"))
            })
        });
        query || prefer
    }
}

#[derive(Serialize)]
struct ExecuteResponse<'a> {
    request_id: Uuid,
    language_title: &'a str,
    execution_time: f64,
    cached: bool,
    result: &'a RawValue,
}

#[utoipa::path(
    post,
    path = "/api/v1/execute/{request_id}",
    tag = "execute",
    summary = "Run a session's script with new params",
    params(
        ("request_id" = String, Path, description = "The session's id"),
        ExecuteQuery,
        ("Prefer" = Option<String>, Header, description = "`respond-async` answers `202` with a job"),
        ("X-Cache-Control" = Option<String>, Header, description = "`no-cache` runs the script even when a result is cached; `max-age=N` accepts only a result cached less than N seconds ago"),
        ("Idempotency-Key" = Option<String>, Header, description = "Asynchronous only: a repeat within 24 h answers the first job"),
        ("X-Callback-Url" = Option<String>, Header, description = "Asynchronous only: where the terminal job record is POSTed"),
    ),
    request_body = ExecuteBody,
    responses(
        (status = 200, description = "The script's result (or, asynchronous, the first job of a repeated Idempotency-Key)", body = super::openapi::bodies::ExecuteResult),
        (status = 202, description = "Asynchronous: the job", body = super::openapi::bodies::JobAccepted,
            headers(("Location" = String, description = "/api/v1/jobs/{job_id}"))),
        (status = 400, description = "INVALID_REQUEST or INVALID_PARAMS", body = super::openapi::ErrorBody),
        (status = 404, description = "No such session, or it expired", body = super::openapi::ErrorBody),
        (status = 413, description = "Body over MAX_BODY_SIZE", body = super::openapi::ErrorBody),
        (status = 500, description = "RUNTIME_ERROR: the script threw (name, message, line, stack in details)", body = super::openapi::ErrorBody),
        (status = 503, description = "No worker serves the language now (Retry-After)", body = super::openapi::ErrorBody),
        (status = 504, description = "The script or the wait ran past its timeout", body = super::openapi::ErrorBody),
        (status = 507, description = "The script exhausted its memory limit", body = super::openapi::ErrorBody),
    )
)]
#[tracing::instrument(skip_all, fields(request_id = %request_id))]
async fn execute(
    State(state): State<AppState>,
    caller: Caller,
    Path(request_id): Path<String>,
    Query(query): Query<ExecuteQuery>,
    headers: HeaderMap,
    JsonObject(body): JsonObject<ExecuteBody>,
) -> ApiResult<Response> {
    let id = parse_session_id(&request_id)?;
    let params_json = match body.params {
        None => "{}".to_owned(),
        Some(raw) if raw.get().starts_with('{') => raw.get().to_owned(),
        Some(_) => {
            return Err(ApiError::new(
                ErrorCode::InvalidParams,
                "params must be a JSON object",
            ))
        }
    };
    let session = session::load_active(&state, &caller.owner, id, &request_id).await?;
    caller.require_execute(session.language)?;
    if query.wants_async(&headers) {
        return execute_async(&state, session, params_json, &headers).await;
    }
    let directive = Directive::from_headers(&headers)?;
    let cache_ttl = Duration::from_secs(state.config.cache_ttl);
    let cache_key = if cache_ttl.is_zero() {
        None
    } else {
        Some(result_cache::key(
            state.subjects.prefix(),
            &session,
            &params_json,
        )?)
    };
    if let Some(key) = &cache_key {
        if let Some(hit) = result_cache::lookup(&state.cache, &state.metrics, key, directive).await
        {
            state.executions.record(session.request_id, Utc::now());
            return respond(&session, hit.execution_time, true, &hit.result);
        }
    }
    if !state.runtimes.available(session.language) {
        return Err(ApiError::unavailable(
            format!("no worker is running {} right now", session.language),
            5,
        ));
    }

    let wait = Duration::from_millis(session.timeout_ms + state.config.queue_wait_ms);
    let job = Job {
        job_id: Uuid::now_v7(),
        request_id: Some(session.request_id),
        language: session.language,
        language_title: session.language_title.clone(),
        owner: session.owner.clone(),
        script_hash: session.script_hash.clone(),
        script: session.script.clone(),
        params_json,
        context_json: session.context_json.clone(),
        timeout_ms: session.timeout_ms,
        memory_mb: session.memory_mb,
        deadline_ms: unix_ms() + wait.as_millis() as u64,
        reply_to: None,
        report_events: false,
    };
    let result = state.queue.execute(job, wait).await?;
    state.executions.record(session.request_id, Utc::now());
    let outcome = result.error.as_ref().map_or("ok", |e| e.code.as_str());
    state
        .metrics
        .execution(session.language, outcome, result.execution_time_ms / 1000.0);

    if let Some(error) = result.error {
        return Err(error.into());
    }
    let result_json = result.result_json.ok_or_else(|| {
        ApiError::internal(anyhow::anyhow!("worker sent neither result nor error"))
    })?;
    let result_raw = RawValue::from_string(result_json).map_err(ApiError::internal)?;
    let execution_time = (result.execution_time_ms * 1000.0).round() / 1000.0;
    if let Some(key) = cache_key {
        result_cache::store(&state.cache, key, &result_raw, execution_time, cache_ttl).await;
    }
    respond(&session, execution_time, false, &result_raw)
}

/// The synchronous answer: `{"request_id","language_title","execution_time","cached","result"}`.
fn respond(
    session: &session::Session,
    execution_time: f64,
    cached: bool,
    result: &RawValue,
) -> ApiResult<Response> {
    let body = serde_json::to_vec(&ExecuteResponse {
        request_id: session.request_id,
        language_title: &session.language_title,
        execution_time,
        cached,
        result,
    })
    .map_err(ApiError::internal)?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// The asynchronous branch: the job is stored and queued even when no worker
/// runs the language right now.
async fn execute_async(
    state: &AppState,
    session: session::Session,
    params_json: String,
    headers: &HeaderMap,
) -> ApiResult<Response> {
    let mut job = jobs::session_job(session, params_json);
    job.idempotency_key = jobs::header_text(headers, "idempotency-key")?;
    if let Some(url) = jobs::header_text(headers, "x-callback-url")? {
        crate::jobs::check_callback_url(&url, state.config.callback_allow_private).await?;
        job.callback_url = Some(url);
    }
    jobs::accept(state, job).await
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}
