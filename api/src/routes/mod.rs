//! The HTTP routes, one module per domain.

mod execute;
mod functions;
mod health;
mod jobs;
mod openapi;
mod sessions;

use crate::{error::ApiError, AppState};
use axum::extract::DefaultBodyLimit;
use axum::{http::StatusCode, response::IntoResponse, Router};
use schemas::ErrorCode;
use std::any::Any;
use tower_http::catch_panic::CatchPanicLayer;

/// The whole API.
pub fn router(state: AppState) -> Router {
    let body_limit = state.config.max_body_size;
    Router::new()
        .merge(health::router())
        .route("/metrics", axum::routing::get(crate::metrics::serve))
        .merge(openapi::router())
        .nest(
            "/api/v1",
            Router::new()
                .merge(sessions::router())
                .merge(execute::router())
                .merge(functions::router())
                .merge(jobs::router())
                .layer(axum::middleware::from_fn(crate::request_log::note_caller))
                .layer(axum::middleware::from_fn_with_state(
                    state.clone(),
                    crate::ratelimit::limit,
                ))
                .layer(axum::middleware::from_fn_with_state(
                    state.clone(),
                    crate::auth::authenticate,
                )),
        )
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                ErrorCode::MethodNotAllowed,
                "method not allowed on this route",
            )
        })
        // Bodies over the limit are refused by the extractor, as JSON (413).
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            crate::metrics::track,
        ))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(axum::middleware::from_fn_with_state(
            state.request_log.clone(),
            crate::request_log::record,
        ))
        .with_state(state)
}

fn panic_response(panic: Box<dyn Any + Send + 'static>) -> axum::response::Response {
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown");
    tracing::error!(panic = message, "handler panicked");
    crate::request_log::note_failure(format_args!("panic: {message}"));
    let mut response = ApiError::new(ErrorCode::InternalError, "internal error").into_response();
    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    response
}
