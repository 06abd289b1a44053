//! `GET /health`: whether this instance can serve, component by component.

use crate::{cache::CacheHealth, AppState};
use axum::{extract::State, http::StatusCode, routing::get, Json, Router};
use serde_json::{json, Value};
use std::time::Duration;

pub(super) fn router() -> Router<AppState> {
    Router::new().route("/health", get(health))
}

/// 200 while PostgreSQL and NATS answer (Redis and runtimes may be degraded),
/// 503 otherwise.
#[utoipa::path(
    get,
    path = "/health",
    tag = "operations",
    security(()),
    responses(
        (status = 200, description = "Able to serve (status ok or degraded)", body = super::openapi::bodies::Health),
        (status = 503, description = "PostgreSQL or NATS is unreachable", body = super::openapi::bodies::Health),
    )
)]
async fn health(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let postgres = tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&state.db),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    let nats = state.queue.connected();
    let redis = state.cache.health().await;
    let runtimes = state.runtimes.summary();
    let any_runtime = runtimes.values().any(|r| r.status == "ok");

    let (code, status) = if !postgres || !nats {
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    } else if redis == CacheHealth::Unavailable || !any_runtime {
        (StatusCode::OK, "degraded")
    } else {
        (StatusCode::OK, "ok")
    };
    let up = |ok: bool| if ok { "ok" } else { "unavailable" };
    let redis = match redis {
        CacheHealth::Ok => "ok",
        CacheHealth::Unavailable => "unavailable",
        CacheHealth::InProcess => "disabled",
    };
    (
        code,
        Json(json!({
            "status": status,
            "version": env!("CARGO_PKG_VERSION"),
            "components": {
                "postgres": up(postgres),
                "redis": redis,
                "nats": up(nats),
                "runtimes": runtimes,
            }
        })),
    )
}
