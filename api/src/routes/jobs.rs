//! Asynchronous jobs: `POST /jobs`, `POST /jobs/batch`, `GET /jobs`,
//! `GET /jobs/{job_id}`, `DELETE /jobs/{job_id}` and `POST /jobs/{job_id}/retry`.
//!
//! A batch accepts its valid items and rejects the invalid ones, each with its
//! index and reason; only a batch with no valid item at all is refused (400).

mod resolve;

use crate::{
    auth::Caller,
    error::{ApiError, ApiResult},
    extract::JsonObject,
    jobs::{self, NewJob, MAX_BATCH},
    AppState,
};
use axum::{
    extract::{Path, Query, State},
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use resolve::{JobSpec, Resolver};
use schemas::{ErrorCode, JobStatus};
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

pub(super) use resolve::{header_text, session_job};

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/jobs", post(submit).get(list))
        .route("/jobs/batch", post(submit_batch))
        .route("/jobs/{job_id}", get(show).delete(cancel))
        .route("/jobs/{job_id}/retry", post(retry))
}

/// Stores and publishes one job; `202` with its handle, or `200` with the
/// first job's record when its `Idempotency-Key` was used in the last 24 h.
pub(super) async fn accept(state: &AppState, job: NewJob) -> ApiResult<Response> {
    let (job_id, new) = jobs::insert_idempotent(&state.db, &job).await?;
    if !new {
        let record = jobs::record(&state.db, &job.owner, job_id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("job {job_id} not found")))?;
        return Ok((StatusCode::OK, Json(record)).into_response());
    }
    let js = async_nats::jetstream::new(state.nats.clone());
    jobs::publish(&js, &state.subjects, &state.db, std::slice::from_ref(&job)).await;
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, format!("/api/v1/jobs/{job_id}"))],
        Json(json!({"job_id": job_id, "status": "queued"})),
    )
        .into_response())
}

#[utoipa::path(
    post,
    path = "/api/v1/jobs",
    operation_id = "submit_job",
    tag = "jobs",
    summary = "Submit one job",
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "A repeat within 24 h answers the first job (200)"),
        ("X-Callback-Url" = Option<String>, Header, description = "Where the terminal job record is POSTed"),
    ),
    request_body = JobSpec,
    responses(
        (status = 202, description = "The job", body = super::openapi::bodies::JobAccepted,
            headers(("Location" = String, description = "/api/v1/jobs/{job_id}"))),
        (status = 200, description = "The first job of this Idempotency-Key", body = super::openapi::bodies::JobRecord),
        (status = 400, description = "INVALID_REQUEST or INVALID_PARAMS", body = super::openapi::ErrorBody),
        (status = 404, description = "No such session or function", body = super::openapi::ErrorBody),
        (status = 503, description = "The database is unavailable", body = super::openapi::ErrorBody),
    )
)]
#[tracing::instrument(skip_all)]
async fn submit(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    JsonObject(spec): JsonObject<JobSpec>,
) -> ApiResult<Response> {
    let mut resolver = Resolver::new(&state, &caller, &headers)?;
    let mut job = resolver.resolve(spec, None).await?;
    job.idempotency_key = header_text(&headers, "idempotency-key")?;
    accept(&state, job).await
}

#[derive(Deserialize, utoipa::ToSchema)]
struct BatchBody {
    /// At most 10,000.
    #[schema(value_type = Vec<JobSpec>)]
    jobs: Vec<Value>,
}

#[utoipa::path(
    post,
    path = "/api/v1/jobs/batch",
    tag = "jobs",
    summary = "Submit up to 10,000 jobs at once",
    params(("X-Callback-Url" = Option<String>, Header, description = "Callback of the jobs that name none")),
    request_body = BatchBody,
    responses(
        (status = 202, description = "The accepted jobs and the rejected items", body = super::openapi::bodies::BatchAccepted),
        (status = 400, description = "No job of the batch is valid (rejected items in details)", body = super::openapi::ErrorBody),
        (status = 413, description = "More than 10,000 jobs", body = super::openapi::ErrorBody),
    )
)]
#[tracing::instrument(skip_all, fields(jobs))]
async fn submit_batch(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    JsonObject(body): JsonObject<BatchBody>,
) -> ApiResult<Response> {
    tracing::Span::current().record("jobs", body.jobs.len());
    if body.jobs.len() > MAX_BATCH {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "a batch holds at most {MAX_BATCH} jobs; this one has {}",
                body.jobs.len()
            ),
        ));
    }
    if body.jobs.is_empty() {
        return Err(ApiError::invalid_request("jobs must not be empty"));
    }
    let batch_id = Uuid::now_v7();
    let mut resolver = Resolver::new(&state, &caller, &headers)?;
    let mut accepted = Vec::with_capacity(body.jobs.len());
    let mut rejected = Vec::new();
    let mut forbidden = 0;
    for (index, item) in body.jobs.into_iter().enumerate() {
        let resolved = match serde_json::from_value::<JobSpec>(item) {
            Ok(spec) => resolver.resolve(spec, Some(batch_id)).await,
            Err(e) => Err(ApiError::invalid_request(format!("invalid job: {e}"))),
        };
        match resolved {
            Ok(job) => accepted.push((index, job)),
            Err(e) => {
                forbidden += usize::from(e.code == ErrorCode::Forbidden);
                rejected.push(json!({"index": index, "code": e.code, "message": e.message}))
            }
        }
    }
    if accepted.is_empty() && forbidden == rejected.len() {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "the credentials may run none of the batch's jobs",
        )
        .with_details(json!({"rejected": rejected})));
    }
    if accepted.is_empty() {
        return Err(ApiError::invalid_request("no job of the batch is valid")
            .with_details(json!({"rejected": rejected})));
    }
    let (indexes, new_jobs): (Vec<usize>, Vec<NewJob>) = accepted.into_iter().unzip();
    jobs::insert(&state.db, &new_jobs).await?;
    let js = async_nats::jetstream::new(state.nats.clone());
    jobs::publish(&js, &state.subjects, &state.db, &new_jobs).await;
    let handles: Vec<Value> = indexes
        .iter()
        .zip(&new_jobs)
        .map(|(index, job)| json!({"index": index, "job_id": job.job_id}))
        .collect();
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"batch_id": batch_id, "jobs": handles, "rejected": rejected})),
    )
        .into_response())
}

#[utoipa::path(
    get,
    path = "/api/v1/jobs/{job_id}",
    operation_id = "get_job",
    tag = "jobs",
    summary = "A job",
    params(("job_id" = String, Path)),
    responses(
        (status = 200, description = "The job", body = super::openapi::bodies::JobRecord),
        (status = 404, description = "No such job", body = super::openapi::ErrorBody),
    )
)]
async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(job_id): Path<String>,
) -> ApiResult<Json<Value>> {
    let id = parse_job_id(&job_id)?;
    jobs::record(&state.db, &caller.owner, id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("job {job_id} not found")))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    batch_id: Option<Uuid>,
    /// queued, running, succeeded, failed, timed_out, cancelled or dead.
    status: Option<String>,
    page: Option<i64>,
    per_page: Option<i64>,
}

#[utoipa::path(
    get,
    path = "/api/v1/jobs",
    operation_id = "list_jobs",
    tag = "jobs",
    summary = "Jobs, by batch and status",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of jobs (per_page at most 1000, default 100)", body = super::openapi::bodies::JobList),
        (status = 400, description = "A bad query", body = super::openapi::ErrorBody),
    )
)]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    let Query(query) = query.map_err(|e| ApiError::invalid_request(e.body_text()))?;
    let status = match &query.status {
        None => None,
        Some(s) => Some(s.parse::<JobStatus>().map_err(ApiError::invalid_request)?),
    };
    let page = query.page.unwrap_or(1).max(1);
    let per_page = query.per_page.unwrap_or(100).clamp(1, 1000);
    let filter = "owner = $1 AND ($2::uuid IS NULL OR batch_id = $2)
                  AND ($3::text IS NULL OR status = $3)";
    let total: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM jobs WHERE {filter}"))
        .bind(&caller.owner)
        .bind(query.batch_id)
        .bind(status.map(JobStatus::as_str))
        .fetch_one(&state.db)
        .await?;
    let records: Vec<Value> = sqlx::query_scalar(&format!(
        "SELECT job_record(j) FROM jobs j WHERE {filter}
         ORDER BY created_at, job_id LIMIT $4 OFFSET $5"
    ))
    .bind(&caller.owner)
    .bind(query.batch_id)
    .bind(status.map(JobStatus::as_str))
    .bind(per_page)
    .bind((page - 1) * per_page)
    .fetch_all(&state.db)
    .await?;
    Ok(Json(
        json!({"total": total, "page": page, "per_page": per_page, "jobs": records}),
    ))
}

/// Cancels a queued or running job (workers skip or stop it) and answers
/// with its record; a finished job is left as it is.
#[utoipa::path(
    delete,
    path = "/api/v1/jobs/{job_id}",
    operation_id = "cancel_job",
    tag = "jobs",
    summary = "Cancel a job",
    params(("job_id" = String, Path)),
    responses(
        (status = 200, description = "The job's record (a finished job unchanged)", body = super::openapi::bodies::JobRecord),
        (status = 404, description = "No such job", body = super::openapi::ErrorBody),
    )
)]
async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(job_id): Path<String>,
) -> ApiResult<Json<Value>> {
    let id = parse_job_id(&job_id)?;
    require_execute_job(&state, &caller, id, &job_id).await?;
    let cancelled: Option<(Value, String)> = sqlx::query_as(
        "UPDATE jobs SET status = 'cancelled', finished_at = now(), updated_at = now(),
                callback_state = CASE WHEN callback_url IS NULL THEN NULL ELSE 'pending' END,
                next_callback_at = now()
         WHERE job_id = $1 AND owner = $2 AND status IN ('queued', 'running')
         RETURNING job_record(jobs), language_title",
    )
    .bind(id)
    .bind(&caller.owner)
    .fetch_optional(&state.db)
    .await?;
    let Some((record, language_title)) = cancelled else {
        return show(State(state), caller, Path(job_id)).await;
    };
    let subject = state.subjects.cancel();
    if let Err(e) = state.nats.publish(subject, id.to_string().into()).await {
        tracing::warn!(error = %e, "cancellation not announced to workers");
    }
    let results = state.subjects.results(&language_title);
    if let Err(e) = state.nats.publish(results, record.to_string().into()).await {
        tracing::warn!(error = %e, "cancelled record not published");
    }
    Ok(Json(record))
}

/// Puts a dead job back in the queue.
#[utoipa::path(
    post,
    path = "/api/v1/jobs/{job_id}/retry",
    operation_id = "retry_job",
    tag = "jobs",
    summary = "Re-drive a dead job",
    params(("job_id" = String, Path)),
    responses(
        (status = 202, description = "The job, queued again", body = super::openapi::bodies::JobAccepted,
            headers(("Location" = String, description = "/api/v1/jobs/{job_id}"))),
        (status = 400, description = "The job is not dead", body = super::openapi::ErrorBody),
        (status = 404, description = "No such job", body = super::openapi::ErrorBody),
    )
)]
async fn retry(
    State(state): State<AppState>,
    caller: Caller,
    Path(job_id): Path<String>,
) -> ApiResult<Response> {
    let id = parse_job_id(&job_id)?;
    require_execute_job(&state, &caller, id, &job_id).await?;
    let requeued = sqlx::query(
        "UPDATE jobs SET status = 'queued', generation = generation + 1, published_seq = NULL,
                started_at = NULL, finished_at = NULL, result = NULL, error = NULL, logs = NULL,
                execution_time_ms = NULL, callback_state = NULL, updated_at = now()
         WHERE job_id = $1 AND owner = $2 AND status = 'dead'",
    )
    .bind(id)
    .bind(&caller.owner)
    .execute(&state.db)
    .await?
    .rows_affected();
    if requeued == 0 {
        let record = show(State(state), caller, Path(job_id)).await?;
        return Err(ApiError::invalid_request(format!(
            "only dead jobs can be retried; this one is {}",
            record.0["status"].as_str().unwrap_or("unknown")
        )));
    }
    if let Some(job) = jobs::load(&state.db, id).await? {
        let js = async_nats::jetstream::new(state.nats.clone());
        jobs::publish(&js, &state.subjects, &state.db, std::slice::from_ref(&job)).await;
    }
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, format!("/api/v1/jobs/{id}"))],
        Json(json!({"job_id": id, "status": "queued"})),
    )
        .into_response())
}

/// 404 unless the caller owns the job, 403 unless it may run the job's language.
async fn require_execute_job(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
    raw: &str,
) -> ApiResult<()> {
    let language: Option<String> =
        sqlx::query_scalar("SELECT language FROM jobs WHERE job_id = $1 AND owner = $2")
            .bind(id)
            .bind(&caller.owner)
            .fetch_optional(&state.db)
            .await?;
    let language = language.ok_or_else(|| ApiError::not_found(format!("job {raw} not found")))?;
    caller.require_execute(language.parse().map_err(ApiError::internal)?)
}

fn parse_job_id(raw: &str) -> ApiResult<Uuid> {
    raw.parse()
        .map_err(|_| ApiError::not_found(format!("job {raw} not found")))
}
