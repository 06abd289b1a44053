//! `GET /functions` and `GET /functions/{language_title}`: the catalogue of
//! predefined functions and the caller's own registered ones.

use crate::{
    auth::{Caller, SCOPE_READ_FUNCTIONS},
    error::{ApiError, ApiResult},
    AppState,
};
use axum::{
    extract::{Path, Query, State},
    routing::get,
    Json, Router,
};
use chrono::{DateTime, Utc};
use schemas::Language;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

const MAX_PER_PAGE: u32 = 100;

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/functions", get(list))
        .route("/functions/{language_title}", get(detail))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// nodejs, python, rust or wasm.
    language: Option<String>,
    /// predefined or dynamic.
    #[serde(rename = "type")]
    kind: Option<String>,
    /// From 1.
    page: Option<u32>,
    /// 1 to 100, default 20.
    per_page: Option<u32>,
}

#[derive(Serialize, sqlx::FromRow)]
struct FunctionSummary {
    language: String,
    title: String,
    language_title: String,
    description: Option<String>,
    #[serde(rename = "type")]
    #[sqlx(rename = "kind")]
    kind: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

#[utoipa::path(
    get,
    path = "/api/v1/functions",
    operation_id = "list_functions",
    tag = "functions",
    summary = "The predefined functions and the caller's registered ones",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of functions", body = super::openapi::bodies::FunctionList),
        (status = 400, description = "A bad query", body = super::openapi::ErrorBody),
    )
)]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    caller.require_scope(SCOPE_READ_FUNCTIONS)?;
    let Query(query) =
        query.map_err(|e| ApiError::invalid_request(format!("invalid query: {e}")))?;
    if let Some(language) = &query.language {
        language
            .parse::<Language>()
            .map_err(|e| ApiError::invalid_request(e.to_string()))?;
    }
    if let Some(kind) = &query.kind {
        if kind != "predefined" && kind != "dynamic" {
            return Err(ApiError::invalid_request(
                "type must be predefined or dynamic",
            ));
        }
    }
    let page = query.page.unwrap_or(1).max(1);
    let per_page = query.per_page.unwrap_or(20).clamp(1, MAX_PER_PAGE);
    let visible = "(owner = '' OR owner = $1) AND ($2::text IS NULL OR language = $2)
                   AND ($3::text IS NULL OR kind = $3)";
    let total: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM functions WHERE {visible}"))
        .bind(&caller.owner)
        .bind(&query.language)
        .bind(&query.kind)
        .fetch_one(&state.db)
        .await?;
    let functions = sqlx::query_as::<_, FunctionSummary>(&format!(
        "SELECT language, title, language_title, description, kind, created_at, updated_at
         FROM functions WHERE {visible}
         ORDER BY language_title, owner LIMIT $4 OFFSET $5"
    ))
    .bind(&caller.owner)
    .bind(&query.language)
    .bind(&query.kind)
    .bind(i64::from(per_page))
    .bind(i64::from(page - 1) * i64::from(per_page))
    .fetch_all(&state.db)
    .await?;
    Ok(Json(json!({
        "total": total,
        "page": page,
        "per_page": per_page,
        "functions": functions,
    })))
}

#[derive(sqlx::FromRow)]
struct FunctionRow {
    #[sqlx(flatten)]
    summary: FunctionSummary,
    script_content: String,
    params_schema: Option<Value>,
    examples: Option<Value>,
}

#[utoipa::path(
    get,
    path = "/api/v1/functions/{language_title}",
    operation_id = "get_function",
    tag = "functions",
    summary = "One function, with its script",
    params(("language_title" = String, Path, example = "nodejs-calculator")),
    responses(
        (status = 200, description = "The function", body = super::openapi::bodies::FunctionDetail),
        (status = 404, description = "Nothing registered under that Language-Title", body = super::openapi::ErrorBody),
    )
)]
async fn detail(
    State(state): State<AppState>,
    caller: Caller,
    Path(language_title): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require_scope(SCOPE_READ_FUNCTIONS)?;
    // The caller's own function comes before a predefined one of that name.
    let row = sqlx::query_as::<_, FunctionRow>(
        "SELECT f.language, f.title, f.language_title, f.description, f.kind, f.created_at,
                f.updated_at, sc.content AS script_content, f.params_schema, f.examples
         FROM functions f JOIN scripts sc ON sc.hash = f.script_hash
         WHERE f.language_title = $1 AND f.owner IN ('', $2)
         ORDER BY f.owner DESC LIMIT 1",
    )
    .bind(&language_title)
    .bind(&caller.owner)
    .fetch_optional(&state.db)
    .await?
    .ok_or_else(|| ApiError::not_found(format!("no function is registered as {language_title}")))?;
    let mut body = serde_json::to_value(&row.summary).map_err(ApiError::internal)?;
    body["script_content"] = row.script_content.into();
    body["params_schema"] = row.params_schema.unwrap_or(Value::Null);
    body["examples"] = row.examples.unwrap_or(Value::Null);
    Ok(Json(body))
}
