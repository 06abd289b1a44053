//! `POST /initialize` and `GET /sessions/{request_id}`.

use crate::{
    auth::Caller,
    error::{ApiError, ApiResult},
    extract::JsonObject,
    session::{self, Session},
    AppState,
};
use axum::{
    extract::{Path, State},
    http::HeaderMap,
    routing::{get, post},
    Json, Router,
};
use chrono::{DateTime, Utc};
use schemas::{
    codec, script_hash, CompileRequest, CompileResult, ErrorCode, Language, LanguageTitle,
    LanguageTitleError,
};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::time::Duration;
use uuid::Uuid;

/// How long initialize waits for a worker to compile Rust source.
const RUST_COMPILE_WAIT: Duration = Duration::from_secs(75);
/// How long initialize waits for a worker to check a wasm module.
const WASM_COMPILE_WAIT: Duration = Duration::from_secs(10);

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/initialize", post(initialize))
        .route("/sessions/{request_id}", get(get_session))
}

#[derive(Deserialize, utoipa::ToSchema)]
struct InitializeBody {
    /// Passed to the script; `timeout_ms`, `memory_mb`, `retain_session`
    /// and `compile_options` (Rust) set the session's limits.
    #[serde(default)]
    context: Option<Value>,
    /// The script; may be omitted when the Language-Title is registered.
    #[serde(default)]
    script_content: Option<String>,
}

#[utoipa::path(
    post,
    path = "/api/v1/initialize",
    tag = "sessions",
    summary = "Register a script and open a session",
    params(("Language-Title" = String, Header, example = "nodejs-calculator",
        description = "`<language>-<title>`: language nodejs, python, rust or wasm; title [A-Za-z0-9_-]{1,64}")),
    request_body = InitializeBody,
    responses(
        (status = 200, description = "The session", body = super::openapi::bodies::Initialized),
        (status = 400, description = "INVALID_REQUEST (header, body, context) or COMPILE_ERROR (diagnostics in details)", body = super::openapi::ErrorBody),
        (status = 404, description = "Unknown language, or nothing registered under that Language-Title", body = super::openapi::ErrorBody),
        (status = 413, description = "Script over MAX_SCRIPT_SIZE or body over MAX_BODY_SIZE", body = super::openapi::ErrorBody),
        (status = 503, description = "No worker compiled the script, or the database is unavailable", body = super::openapi::ErrorBody),
    )
)]
#[tracing::instrument(skip_all, fields(language_title))]
async fn initialize(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    JsonObject(body): JsonObject<InitializeBody>,
) -> ApiResult<Json<Value>> {
    let language_title = language_title(&headers)?;
    tracing::Span::current().record("language_title", language_title.to_string());
    caller.require_execute(language_title.language)?;
    let context = match body.context {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(map)) => map,
        Some(_) => return Err(ApiError::invalid_request("context must be a JSON object")),
    };
    let limits = Limits::from_context(&context, &state)?;
    let owner = caller.owner.as_str();
    let lt = language_title.to_string();

    let (script, registers) = match body.script_content {
        Some(script) => {
            if script.len() > state.config.max_script_size {
                return Err(ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    format!(
                        "script_content is {} bytes; MAX_SCRIPT_SIZE is {}",
                        script.len(),
                        state.config.max_script_size
                    ),
                ));
            }
            if script.trim().is_empty() {
                return Err(ApiError::invalid_request("script_content is empty"));
            }
            (script, true)
        }
        None => {
            let registered: Option<String> = sqlx::query_scalar(
                "SELECT sc.content FROM functions f JOIN scripts sc ON sc.hash = f.script_hash
                 WHERE f.language_title = $1 AND f.owner IN ($2, '')
                 ORDER BY f.owner DESC LIMIT 1",
            )
            .bind(&lt)
            .bind(owner)
            .fetch_optional(&state.db)
            .await?;
            let script = registered.ok_or_else(|| {
                ApiError::not_found(format!(
                    "no function is registered as {lt}; send script_content to register one"
                ))
            })?;
            (script, false)
        }
    };
    let language = language_title.language;
    let hash = script_hash(language, &script);
    compile(&state, owner, language, &hash, &script, &context).await?;
    let now = Utc::now();
    let session = Session {
        request_id: Uuid::now_v7(),
        owner: owner.to_owned(),
        language,
        language_title: lt,
        script_hash: hash,
        script,
        context_json: Value::Object(context).to_string(),
        timeout_ms: limits.timeout_ms,
        memory_mb: limits.memory_mb,
        retain: limits.retain,
        created_at: now,
        expires_at: now + chrono::Duration::seconds(state.config.session_expiry_seconds as i64),
    };

    let mut tx = state.db.begin().await?;
    // Touching an existing script locks it until the session refers to it,
    // so that the dispatcher cannot remove it as unused in between.
    sqlx::query(
        "INSERT INTO scripts (hash, language, content) VALUES ($1, $2, $3)
         ON CONFLICT (hash) DO UPDATE SET created_at = now()",
    )
    .bind(&session.script_hash)
    .bind(language.as_str())
    .bind(&session.script)
    .execute(&mut *tx)
    .await?;
    if registers {
        sqlx::query(
            "INSERT INTO functions (owner, language_title, language, title, kind, script_hash)
             VALUES ($1, $2, $3, $4, 'dynamic', $5)
             ON CONFLICT (owner, language_title)
             DO UPDATE SET script_hash = EXCLUDED.script_hash, updated_at = now()",
        )
        .bind(owner)
        .bind(&session.language_title)
        .bind(language.as_str())
        .bind(&language_title.title)
        .bind(&session.script_hash)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query(
        "INSERT INTO sessions (request_id, owner, language_title, language, script_hash,
                               context, timeout_ms, memory_mb, retain, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6::json, $7, $8, $9, $10, $11)",
    )
    .bind(session.request_id)
    .bind(&session.owner)
    .bind(&session.language_title)
    .bind(language.as_str())
    .bind(&session.script_hash)
    .bind(&session.context_json)
    .bind(session.timeout_ms as i64)
    .bind(session.memory_mb as i32)
    .bind(session.retain)
    .bind(session.created_at)
    .bind(session.expires_at)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;

    state.metrics.session_created(language);
    session::remember(&state.cache, state.subjects.prefix(), &session).await;
    Ok(Json(json!({
        "request_id": session.request_id,
        "status": "initialized",
        "expires_at": session.expires_at,
    })))
}

/// For `rust` and `wasm`: has one worker compile the script (it keeps the
/// result, so the first execute is warm); a script that does not compile is
/// refused here with the diagnostics, and nothing is stored.
async fn compile(
    state: &AppState,
    owner: &str,
    language: Language,
    hash: &str,
    script: &str,
    context: &Map<String, Value>,
) -> ApiResult<()> {
    let wait = match language {
        Language::Rust => RUST_COMPILE_WAIT,
        Language::Wasm => WASM_COMPILE_WAIT,
        Language::Nodejs | Language::Python => return Ok(()),
    };
    let options = match context.get("compile_options") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(options @ Value::Object(_)) => options.clone(),
        Some(_) => {
            return Err(ApiError::invalid_request(
                "context.compile_options must be a JSON object",
            ))
        }
    };
    let request = CompileRequest {
        script_hash: hash.to_owned(),
        language,
        script: script.to_owned(),
        options_json: options.to_string(),
        owner: owner.to_owned(),
    };
    let payload = codec::encode(&request).map_err(ApiError::internal)?;
    let unavailable = |why: String| {
        tracing::warn!(%language, "compile request failed: {why}");
        ApiError::unavailable(
            format!("no {language} worker compiled the script: {why}"),
            5,
        )
    };
    let request = async_nats::Request::new()
        .payload(payload.into())
        .timeout(Some(wait));
    let reply = state
        .queue
        .client()
        .send_request(state.subjects.compile(language), request)
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let result: CompileResult = codec::decode(&reply.payload).map_err(ApiError::internal)?;
    if result.ok {
        return Ok(());
    }
    Err(ApiError::new(ErrorCode::CompileError, result.message)
        .with_details(json!({ "diagnostics": result.diagnostics })))
}

fn language_title(headers: &HeaderMap) -> ApiResult<LanguageTitle> {
    let value = headers
        .get("language-title")
        .ok_or_else(|| ApiError::invalid_request("the Language-Title header is required"))?
        .to_str()
        .map_err(|_| ApiError::invalid_request("Language-Title must be ASCII"))?;
    value
        .trim()
        .parse()
        .map_err(|err: LanguageTitleError| match err {
            LanguageTitleError::UnknownLanguage(_) => ApiError::not_found(err.to_string()),
            _ => ApiError::invalid_request(err.to_string()),
        })
}

/// The limits a context asks for, checked against the server's maxima.
pub(in crate::routes) struct Limits {
    pub(in crate::routes) timeout_ms: u64,
    pub(in crate::routes) memory_mb: u32,
    pub(in crate::routes) retain: bool,
}

impl Limits {
    pub(in crate::routes) fn from_context(
        context: &Map<String, Value>,
        state: &AppState,
    ) -> ApiResult<Self> {
        let config = &state.config;
        let max_timeout_ms = config.max_timeout_seconds * 1000;
        let timeout_ms = match context.get("timeout_ms") {
            None | Some(Value::Null) => config.default_timeout().as_millis() as u64,
            Some(v) => v
                .as_u64()
                .filter(|ms| (1..=max_timeout_ms).contains(ms))
                .ok_or_else(|| {
                    ApiError::invalid_request(format!(
                        "context.timeout_ms must be an integer from 1 to {max_timeout_ms}"
                    ))
                })?,
        };
        let memory_mb = match context.get("memory_mb") {
            None | Some(Value::Null) => config.runtime_memory_mb,
            Some(v) => v
                .as_u64()
                .filter(|mb| (16..=u64::from(config.max_memory_mb)).contains(mb))
                .map(|mb| mb as u32)
                .ok_or_else(|| {
                    ApiError::invalid_request(format!(
                        "context.memory_mb must be an integer from 16 to {}",
                        config.max_memory_mb
                    ))
                })?,
        };
        let retain = match context.get("retain_session") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(ApiError::invalid_request(
                    "context.retain_session must be a boolean",
                ))
            }
        };
        Ok(Self {
            timeout_ms,
            memory_mb,
            retain,
        })
    }
}

#[derive(sqlx::FromRow)]
struct SessionStatusRow {
    request_id: Uuid,
    language_title: String,
    retain: bool,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    execution_count: i64,
    last_executed_at: Option<DateTime<Utc>>,
}

#[utoipa::path(
    get,
    path = "/api/v1/sessions/{request_id}",
    tag = "sessions",
    summary = "A session's status",
    params(("request_id" = String, Path, description = "The session's id")),
    responses(
        (status = 200, description = "The session", body = super::openapi::bodies::SessionStatus),
        (status = 404, description = "No such session", body = super::openapi::ErrorBody),
    )
)]
async fn get_session(
    State(state): State<AppState>,
    caller: Caller,
    Path(request_id): Path<String>,
) -> ApiResult<Json<Value>> {
    let id = parse_session_id(&request_id)?;
    let row = sqlx::query_as::<_, SessionStatusRow>(
        "SELECT request_id, language_title, retain, created_at, expires_at,
                execution_count, last_executed_at
         FROM sessions WHERE request_id = $1 AND owner = $2",
    )
    .bind(id)
    .bind(&caller.owner)
    .fetch_optional(&state.db)
    .await?
    .ok_or_else(|| ApiError::not_found(format!("session {request_id} not found")))?;
    let mut count = row.execution_count;
    let mut last = row.last_executed_at;
    if let Some((n, at)) = state.executions.unwritten(id) {
        count += n;
        last = last.max(Some(at));
    }
    let mut expires_at = row.expires_at;
    if row.retain {
        if let Some(until) = state.executions.extended_until(id) {
            expires_at = expires_at.max(until);
        }
    }
    let active = expires_at > Utc::now();
    Ok(Json(json!({
        "request_id": row.request_id,
        "language_title": row.language_title,
        "status": if active { "active" } else { "expired" },
        "created_at": row.created_at,
        "expires_at": expires_at,
        "execution_count": count,
        "last_executed_at": last,
    })))
}

/// A session id from a path; anything that is not a UUID names no session.
pub(super) fn parse_session_id(raw: &str) -> ApiResult<Uuid> {
    raw.parse()
        .map_err(|_| ApiError::not_found(format!("session {raw} not found")))
}
