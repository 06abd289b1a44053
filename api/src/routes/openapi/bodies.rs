//! The shapes of the JSON bodies the handlers answer with, for the OpenAPI
//! document only: the handlers build their answers directly, and the e2e
//! tests check real answers against these schemas.

#![allow(dead_code)] // described, never constructed

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use utoipa::ToSchema;
use uuid::Uuid;

/// Every error answer.
#[derive(ToSchema)]
pub(crate) struct ErrorBody {
    error: ErrorDetail,
}

#[derive(ToSchema)]
pub(crate) struct ErrorDetail {
    code: ErrorCode,
    message: String,
    /// More about the error: the compiler's diagnostics, a script's
    /// `{name, message, line, stack}`, a batch's rejected items; often null.
    details: Value,
}

/// The error codes of the contract, each answered with one HTTP status.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub(crate) enum ErrorCode {
    InvalidRequest,
    InvalidParams,
    CompileError,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    PayloadTooLarge,
    RateLimited,
    RuntimeError,
    MemoryLimit,
    Unavailable,
    Timeout,
    InternalError,
}

/// Exhaustive, so that a new code of the contract cannot be left out here.
impl From<schemas::ErrorCode> for ErrorCode {
    fn from(code: schemas::ErrorCode) -> Self {
        use schemas::ErrorCode as C;
        match code {
            C::InvalidRequest => Self::InvalidRequest,
            C::InvalidParams => Self::InvalidParams,
            C::CompileError => Self::CompileError,
            C::Unauthorized => Self::Unauthorized,
            C::Forbidden => Self::Forbidden,
            C::NotFound => Self::NotFound,
            C::MethodNotAllowed => Self::MethodNotAllowed,
            C::PayloadTooLarge => Self::PayloadTooLarge,
            C::RateLimited => Self::RateLimited,
            C::RuntimeError => Self::RuntimeError,
            C::MemoryLimit => Self::MemoryLimit,
            C::Unavailable => Self::Unavailable,
            C::Timeout => Self::Timeout,
            C::InternalError => Self::InternalError,
        }
    }
}

/// `initialize`'s answer.
#[derive(ToSchema)]
pub(crate) struct Initialized {
    request_id: Uuid,
    #[schema(example = "initialized")]
    status: String,
    expires_at: DateTime<Utc>,
}

/// A synchronous execution's answer.
#[derive(ToSchema)]
pub(crate) struct ExecuteResult {
    request_id: Uuid,
    #[schema(example = "nodejs-calculator")]
    language_title: String,
    /// Milliseconds the script ran.
    execution_time: f64,
    cached: bool,
    /// What the script returned.
    result: Value,
}

/// A job handle: `202`, with `Location: /api/v1/jobs/{job_id}`.
#[derive(ToSchema)]
pub(crate) struct JobAccepted {
    job_id: Uuid,
    #[schema(example = "queued")]
    status: String,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum SessionState {
    Active,
    Expired,
}

/// A session.
#[derive(ToSchema)]
pub(crate) struct SessionStatus {
    request_id: Uuid,
    language_title: String,
    status: SessionState,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    execution_count: i64,
    last_executed_at: Option<DateTime<Utc>>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Language {
    Nodejs,
    Python,
    Rust,
    Wasm,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum FunctionKind {
    Predefined,
    Dynamic,
}

/// A function of the catalogue.
#[derive(Serialize, ToSchema)]
pub(crate) struct FunctionSummary {
    language: Language,
    title: String,
    language_title: String,
    description: Option<String>,
    #[serde(rename = "type")]
    kind: FunctionKind,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// A page of the catalogue.
#[derive(ToSchema)]
pub(crate) struct FunctionList {
    total: i64,
    page: u32,
    per_page: u32,
    functions: Vec<FunctionSummary>,
}

/// One function, with its script.
#[derive(Serialize, ToSchema)]
pub(crate) struct FunctionDetail {
    #[serde(flatten)]
    summary: FunctionSummary,
    script_content: String,
    /// JSON Schema of the params (predefined functions).
    params_schema: Option<Value>,
    examples: Option<Value>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
    Dead,
}

/// Why a job failed.
#[derive(ToSchema)]
pub(crate) struct JobError {
    code: ErrorCode,
    message: String,
    details: Value,
}

/// A job, as polled, published on `<prefix>.results.<language_title>` and
/// POSTed to callbacks.
#[derive(ToSchema)]
pub(crate) struct JobRecord {
    job_id: Uuid,
    batch_id: Option<Uuid>,
    request_id: Option<Uuid>,
    language_title: String,
    status: JobStatus,
    /// Deliveries to a worker so far.
    attempts: i32,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    /// Milliseconds the script ran.
    execution_time: Option<f64>,
    /// What the script returned (succeeded jobs).
    result: Option<Value>,
    error: Option<JobError>,
    /// What the script printed, bounded.
    logs: Option<Vec<String>>,
}

/// A page of jobs.
#[derive(ToSchema)]
pub(crate) struct JobList {
    total: i64,
    page: i64,
    per_page: i64,
    jobs: Vec<JobRecord>,
}

/// An accepted item of a batch.
#[derive(ToSchema)]
pub(crate) struct BatchItem {
    index: usize,
    job_id: Uuid,
}

/// A refused item of a batch.
#[derive(ToSchema)]
pub(crate) struct BatchRejection {
    index: usize,
    code: ErrorCode,
    message: String,
}

/// A batch's answer: the valid items are accepted, the others listed.
#[derive(ToSchema)]
pub(crate) struct BatchAccepted {
    batch_id: Uuid,
    jobs: Vec<BatchItem>,
    rejected: Vec<BatchRejection>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum HealthState {
    Ok,
    Degraded,
    Unavailable,
}

/// A language's runtimes over the live workers.
#[derive(ToSchema)]
pub(crate) struct RuntimeHealth {
    #[schema(example = "ok")]
    status: String,
    workers: u32,
    capacity: u32,
    busy: u32,
}

#[derive(ToSchema)]
pub(crate) struct HealthComponents {
    #[schema(example = "ok")]
    postgres: String,
    /// `ok`, `unavailable`, or `disabled` (in-process cache).
    #[schema(example = "ok")]
    redis: String,
    #[schema(example = "ok")]
    nats: String,
    /// By language.
    runtimes: BTreeMap<String, RuntimeHealth>,
}

/// `/health`: 200 while PostgreSQL and NATS answer, 503 otherwise.
#[derive(ToSchema)]
pub(crate) struct Health {
    status: HealthState,
    version: String,
    components: HealthComponents,
}
