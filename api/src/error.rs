//! `ApiError`: the one way this API answers with an error.
//!
//! Every error is `{"error":{"code","message","details"}}` with the status of its
//! code; internal failures are logged with their cause and answered without it.

use axum::{
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use schemas::{ErrorCode, JobError};
use serde_json::{json, Value};

/// An error answered to the caller.
#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub details: Value,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: Value::Null,
            retry_after: None,
        }
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }

    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    /// 503 with a `Retry-After` of `seconds`.
    pub fn unavailable(message: impl Into<String>, seconds: u64) -> Self {
        Self {
            retry_after: Some(seconds),
            ..Self::new(ErrorCode::Unavailable, message)
        }
    }

    /// A failure of ours: logged with its cause chain, answered as 500 without it.
    pub fn internal(err: impl Into<anyhow::Error>) -> Self {
        let err = err.into();
        tracing::error!(error = format!("{err:#}"), "internal error");
        crate::request_log::note_failure(format_args!("{err:#}"));
        Self::new(ErrorCode::InternalError, "internal error")
    }
}

impl From<JobError> for ApiError {
    fn from(err: JobError) -> Self {
        let details = err
            .details_json
            .as_deref()
            .and_then(|d| serde_json::from_str(d).ok())
            .unwrap_or(Value::Null);
        Self::new(err.code, err.message).with_details(details)
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        match err {
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
                tracing::error!(error = %err, "database unreachable");
                Self::unavailable("the database is unavailable", 5)
            }
            other => Self::internal(other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = json!({
            "error": {"code": self.code, "message": self.message, "details": self.details}
        });
        let mut response = (status, Json(body)).into_response();
        // For the metrics middleware: error answers are counted by code.
        response.extensions_mut().insert(self.code);
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// Result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;
